"""Port specs: ``"21-23,8080"``, ints, iterables of either, and the named sets in :data:`PORT_SETS`.

Pure: a spec in, a sorted tuple of unique ports out, or a :class:`~fragileprobe.ConfigError` naming the
piece of the spec that is wrong.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import TYPE_CHECKING

from fragileprobe._errors import ConfigError
from fragileprobe._numbers import is_ascii_decimal

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

__all__ = ["PORT_SETS", "parse_ports"]

# Named port sets. "hospital" is a gentle default discovery set for a clinical network: the services
# medical devices and their neighbours actually expose, not a top-1000 list.
PORT_SETS: Mapping[str, tuple[int, ...]] = MappingProxyType(
    {
        # The emulated infusion pump's services: FTP, SSH, Telnet, web UI.
        "pump": (21, 22, 23, 8080),
        "web": (80, 443, 8080, 8443),
        "hospital": tuple(
            sorted(
                {
                    21,
                    22,
                    23,  # ftp, ssh, telnet: device maintenance consoles
                    80,
                    443,
                    8080,
                    8443,  # web UIs (devices and gateways)
                    104,
                    11112,  # DICOM (imaging modalities, PACS)
                    135,
                    139,
                    445,  # Windows RPC / SMB (workstations, modality consoles)
                    3389,
                    5985,
                    5986,  # RDP, WinRM (Windows hosts)
                    515,
                    631,
                    9100,  # printers: LPD, IPP, raw JetDirect (probed by connect only)
                    1433,
                    3306,
                    5432,  # MS SQL, MySQL, PostgreSQL (clinical databases)
                    2575,  # HL7 MLLP (interface engines, monitors, lab analyzers)
                    161,  # SNMP agents often expose TCP 161 too on embedded stacks
                    502,  # Modbus (building management, some gateways)
                }
            )
        ),
    }
)

_PORT_MIN = 1
_PORT_MAX = 65535


def _port(value: int, source: object) -> int:
    if not _PORT_MIN <= value <= _PORT_MAX:
        raise ConfigError(f"port {value} in {source!r} is outside {_PORT_MIN}-{_PORT_MAX}")
    return value


def _parse_port_text(text: str, source: object) -> list[int]:
    item = text.strip()
    if not item:
        raise ConfigError(f"empty item in port spec {source!r} (stray comma?)")
    named = PORT_SETS.get(item.lower())
    if named is not None:
        return list(named)
    if "-" in item:
        lo_text, _, hi_text = item.partition("-")
        lo_text, hi_text = lo_text.strip(), hi_text.strip()
        # ASCII digits only: '²'.isdigit() is True (and int() then fails), int('٢٢') is 22.
        if not (is_ascii_decimal(lo_text) and is_ascii_decimal(hi_text)):
            raise ConfigError(f"port range {item!r} in {source!r} must look like '21-23'")
        lo, hi = _port(int(lo_text), source), _port(int(hi_text), source)
        if hi < lo:
            raise ConfigError(f"port range {item!r} in {source!r} is reversed")
        return list(range(lo, hi + 1))
    if not is_ascii_decimal(item):
        if item.isascii() and item.isdigit():  # only ASCII digits, but more than FIELD_MAX_DIGITS of them
            raise ConfigError(f"port {item[:8]}... ({len(item)} digits) is outside {_PORT_MIN}-{_PORT_MAX}")
        known = ", ".join(sorted(PORT_SETS))
        raise ConfigError(f"port {item!r} in {source!r} is not a number, range or named set ({known})")
    return [_port(int(item), source)]


def _parse_port_element(element: object, spec: object) -> list[int]:
    """One element of an iterable port spec: an int, or a string spec of its own."""
    if isinstance(element, bool) or not isinstance(element, int | str):
        raise ConfigError(f"port {element!r} in port spec must be an int or a string")
    if isinstance(element, int):
        return [_port(element, spec)]
    return [port for piece in element.split(",") for port in _parse_port_text(piece, element)]


def parse_ports(spec: str | int | Iterable[int | str]) -> tuple[int, ...]:
    """Parse a port spec into a sorted tuple of unique ports.

    Args:
        spec: ``"21-23,8080"``, a named set from :data:`PORT_SETS` (``"pump"``, ``"hospital"``, ``"web"``),
            an int, or an iterable of ints and such strings.

    Raises:
        ConfigError: a port outside 1-65535, a reversed range, junk, or an empty spec (named in the message).
    """
    ports: set[int] = set()
    if isinstance(spec, bool):
        raise ConfigError(f"port spec {spec!r} is a bool, not a port")
    if isinstance(spec, int):
        ports.add(_port(spec, spec))
    elif isinstance(spec, str):
        for piece in spec.split(","):
            ports.update(_parse_port_text(piece, spec))
    else:
        try:
            elements = list(spec)
        except TypeError as exc:
            raise ConfigError(f"port spec {spec!r} is not a string, int or iterable") from exc
        for element in elements:
            ports.update(_parse_port_element(element, spec))
    if not ports:
        raise ConfigError(f"port spec {spec!r} is empty")
    return tuple(sorted(ports))
