"""Authorized scope, target specs and port specs.

A :class:`Scope` is the list of address ranges the user is authorized to touch. Every probe path checks it
*before* a socket is created, so a typo (``10.0.0.0/8`` for ``10.0.0.0/24``) or a host name that resolves
somewhere unexpected raises :class:`~fragileprobe.ScopeError` and nothing is sent.

Spec grammar (comma separated, whitespace ignored):

==========================  ===================================================
``127.0.1.5``               one IPv4 or IPv6 address
``127.0.1.0/24``            a CIDR block (usable hosts: IPv4 network/broadcast are skipped)
``127.0.1.5-40``            an IPv4 last-octet range, inclusive
``127.0.1.5-127.0.1.40``    an address range, inclusive, same family
``pump-3.ward.example``     a host name: resolved with ``getaddrinfo``, then checked against the scope
==========================  ===================================================

Ports: ``"21-23,8080"``, ints, iterables of either, and the named sets in :data:`PORT_SETS`.
"""

from __future__ import annotations

import bisect
import ipaddress
import re
import socket
from dataclasses import KW_ONLY, dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, TypeAlias

from fragileprobe._errors import ConfigError, ScopeError
from fragileprobe._numbers import is_ascii_decimal

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Mapping

    from fragileprobe._heartbeat import Heartbeat

__all__ = [
    "LARGE_RANGE_HOSTS",
    "MAX_TARGET_HOSTS",
    "PORT_SETS",
    "Scope",
    "Target",
    "canonical_address",
    "canonical_host",
    "canonical_network",
    "parse_ports",
    "parse_targets",
]

IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address

# A /20 (4,096 addresses) is larger than any single clinical VLAN we have seen (those are /24 to /22), so
# anything bigger is far more likely a typo (/8 for /24, /16 for /26) than a plan. Bigger ranges need
# ``allow_large=True``, an explicit statement that the size is intended.
LARGE_RANGE_HOSTS = 4096

# Hard cap on how many addresses parse_targets will ever expand into a list, even with allow_large: a /16.
# It bounds memory (a list of 65,536 short strings is a few MB) and a scan of more hosts belongs in a tool
# built for it, not in a gentle prober.
MAX_TARGET_HOSTS = 65536

# Host names: RFC 1123 labels. Checked before resolving so junk never reaches the resolver. A name whose
# last label is a number ("127.0.0.300", "10.1", "2130706433", "0x7f.1") is a malformed or legacy-form
# address, not a host name (RFC 1123 2.1, RFC 3696 2: top-level labels are never all-numeric): the resolver
# would either send it to DNS or read it the inet_aton way as some other address.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_NUMERIC_LAST_LABEL = r"(?!(?:.*\.)?(?:[0-9]+|0[xX][0-9A-Fa-f]*)\.?$)"
_HOSTNAME_RE = re.compile(rf"^(?=.{{1,253}}$){_NUMERIC_LAST_LABEL}{_LABEL}(\.{_LABEL})*\.?$")

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
                    21, 22, 23,  # ftp, ssh, telnet: device maintenance consoles
                    80, 443, 8080, 8443,  # web UIs (devices and gateways)
                    104, 11112,  # DICOM (imaging modalities, PACS)
                    135, 139, 445,  # Windows RPC / SMB (workstations, modality consoles)
                    3389, 5985, 5986,  # RDP, WinRM (Windows hosts)
                    515, 631, 9100,  # printers: LPD, IPP, raw JetDirect (probed by connect only)
                    1433, 3306, 5432,  # MS SQL, MySQL, PostgreSQL (clinical databases)
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


# IPv4-mapped IPv6 addresses (RFC 4291 2.5.5.2): ::ffff:a.b.c.d is the IPv4 host a.b.c.d, reached through a
# dual-stack socket. Written either way it is one device, so it gets one identity.
_MAPPED_V4 = ipaddress.IPv6Network("::ffff:0:0/96")


def canonical_address(addr: IPAddress) -> IPAddress:
    """The one identity of an address: an IPv4-mapped IPv6 address is its IPv4 address.

    An IPv6 zone id (``fe80::1%eth0``) is kept: the same link-local address on another interface is another
    device (RFC 4007 6). Everything that names a host (scope checks, target lists, per-host limiters, the
    inventory and the store) uses this form, so one device is never counted as two.
    """
    if isinstance(addr, ipaddress.IPv6Address):
        mapped = addr.ipv4_mapped
        if mapped is not None:
            return mapped
    return addr


def canonical_host(host: str) -> str:
    """:func:`canonical_address` of an address string (other text, such as a host name, is only stripped)."""
    text = host.strip()
    addr = _parse_address(text)
    return text if addr is None else str(addr)


def _zone(addr: IPAddress) -> str | None:
    return addr.scope_id if isinstance(addr, ipaddress.IPv6Address) else None


def _parse_address(text: str) -> IPAddress | None:
    """An address in its canonical form (see :func:`canonical_address`), or None."""
    try:
        return canonical_address(ipaddress.ip_address(text))
    except ValueError:
        return None


def canonical_network(net: IPNetwork) -> IPNetwork:
    """A block inside ::ffff:0:0/96 is the IPv4 block it maps (its hosts are IPv4 hosts); others unchanged."""
    if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96 and net.subnet_of(_MAPPED_V4):
        return ipaddress.IPv4Network((int(net.network_address) & 0xFFFFFFFF, net.prefixlen - 96))
    return net


def _scope_network(text: str) -> IPNetwork:
    """Parse one scope entry; an entry with host bits set is refused, naming the network it would mean.

    ``127.0.79.5/24`` is either a typo for ``127.0.79.5`` or for ``127.0.79.0/24``: guessing the larger one
    (as ``strict=False`` does) would authorize 255 hosts nobody named.
    """
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError as exc:
        raise ConfigError(f"scope entry {text!r} is not an address or CIDR block: {exc}") from exc
    if "/" in text:
        given = ipaddress.ip_address(text.partition("/")[0].strip())
        if int(given) != int(net.network_address):
            raise ConfigError(
                f"scope entry {text!r} has host bits set: it would mean the network {net.with_prefixlen}; "
                f"write {net.with_prefixlen} for the whole block, or {given} for the one address"
            )
    return canonical_network(net)


def _resolve(name: str) -> list[IPAddress]:
    """Resolve a host name to its addresses (getaddrinfo order, duplicates removed)."""
    if not _HOSTNAME_RE.match(name):
        raise ConfigError(f"target {name!r} is neither an IP address, a range nor a valid host name")
    try:
        infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise ConfigError(f"host name {name!r} does not resolve: {exc}") from exc
    seen: dict[IPAddress, None] = {}
    for _family, _type, _proto, _canon, sockaddr in infos:
        addr = _parse_address(str(sockaddr[0]).split("%", 1)[0])
        if addr is not None:
            seen[addr] = None
    if not seen:
        raise ConfigError(f"host name {name!r} resolved to no usable address")
    return list(seen)


# Networks a Scope names in its str() (and so in a ScopeError message) before "... (N more)".
_STR_MAX_NETWORKS = 8


class Scope:
    """The address ranges the user is authorized to probe.

    Args:
        ranges: CIDR blocks and single addresses (IPv4 or IPv6), as one comma-separated string or an
            iterable of strings.
        allow_large: permit a range of more than :data:`LARGE_RANGE_HOSTS` addresses.

    Raises:
        ConfigError: the scope is empty, a range is malformed, or a range is large without ``allow_large``.
    """

    __slots__ = ("_index", "_networks")

    def __init__(self, ranges: str | Iterable[str], *, allow_large: bool = False) -> None:
        items = ranges.split(",") if isinstance(ranges, str) else list(ranges)
        networks: list[IPNetwork] = []
        for raw in items:
            if not isinstance(raw, str):
                raise ConfigError(f"scope entry {raw!r} must be a string like '127.0.1.0/24'")
            text = raw.strip()
            if not text:
                continue
            net = _scope_network(text)
            if net.num_addresses > LARGE_RANGE_HOSTS and not allow_large:
                raise ConfigError(
                    f"scope entry {text!r} covers {net.num_addresses} addresses, more than "
                    f"{LARGE_RANGE_HOSTS}; pass allow_large=True if that is really authorized"
                )
            networks.append(net)
        if not networks:
            raise ConfigError("scope is empty: give at least one authorized address or CIDR block")
        self._networks: tuple[IPNetwork, ...] = tuple(networks)
        # Per IP version: merged [first, last] address intervals, sorted, for a bisect lookup. A scope listing
        # thousands of single addresses (an asset list) is then checked in O(log n) per host, not O(n):
        # checking 5,000 targets against 5,000 entries took 5 s, 65,536 would take 15 minutes.
        # The key is (IP version, IPv6 zone id): a zone is part of an address's identity, so fe80::1%eth0 in
        # the scope never authorizes fe80::1%eth1 (another interface's neighbour) nor a zoneless fe80::1.
        index: dict[tuple[int, str | None], tuple[list[int], list[int]]] = {}
        keys = {(n.version, _zone(n.network_address)) for n in networks}
        for key in keys:
            spans = sorted((int(n.network_address), int(n.broadcast_address))
                           for n in networks if (n.version, _zone(n.network_address)) == key)  # fmt: skip
            starts: list[int] = []
            ends: list[int] = []
            for first, last in spans:
                if ends and first <= ends[-1] + 1:
                    ends[-1] = max(ends[-1], last)
                else:
                    starts.append(first)
                    ends.append(last)
            index[key] = (starts, ends)
        self._index = index

    @property
    def networks(self) -> tuple[IPNetwork, ...]:
        """The authorized networks, in the order given."""
        return self._networks

    def _contains_address(self, addr: IPAddress) -> bool:
        starts, ends = self._index.get((addr.version, _zone(addr)), ([], []))
        value = int(addr)
        i = bisect.bisect_right(starts, value) - 1
        return i >= 0 and value <= ends[i]

    def __contains__(self, host: object) -> bool:
        """True if ``host`` (an IP address string) is inside the scope; never raises, never resolves."""
        if not isinstance(host, str):
            return False
        addr = _parse_address(host.strip())
        return addr is not None and self._contains_address(addr)

    def check(self, host: str) -> str:
        """Return the address to connect to for ``host``, or raise if it is outside the scope.

        IP literals are checked directly; a host name is resolved and the first resolved address that lies
        inside the scope is returned (the caller connects to that address only, never to the name).

        Raises:
            ScopeError: the address (or every resolved address) lies outside the scope. Nothing was sent.
            ConfigError: ``host`` is neither an address nor a resolvable host name.
        """
        if not isinstance(host, str) or not host.strip():
            raise ConfigError(f"host {host!r} must be a non-empty string")
        text = host.strip()
        addr = _parse_address(text)
        candidates = [addr] if addr is not None else _resolve(text)
        for candidate in candidates:
            if self._contains_address(candidate):
                return str(candidate)
        shown = ", ".join(str(c) for c in candidates)
        what = text if addr is not None else f"{text} ({shown})"
        raise ScopeError(f"target {what} is outside the authorized scope {self}; nothing was sent")

    def __iter__(self) -> Iterator[IPNetwork]:
        return iter(self._networks)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Scope) and other._networks == self._networks

    def __hash__(self) -> int:
        return hash(self._networks)

    def __str__(self) -> str:
        # Shown in every ScopeError: a scope of thousands of entries must not make a 100 KB message.
        shown = ", ".join(str(n) for n in self._networks[:_STR_MAX_NETWORKS])
        more = len(self._networks) - _STR_MAX_NETWORKS
        return "[" + shown + (f", ... ({more} more)" if more > 0 else "") + "]"

    def __repr__(self) -> str:
        return f"Scope({[str(n) for n in self._networks]!r})"


def _is_range(text: str) -> bool:
    """``a-b`` where ``a`` is an address (host names may contain dashes, so the left side decides)."""
    left, sep, _ = text.partition("-")
    return bool(sep) and _parse_address(text) is None and _parse_address(left.strip()) is not None


def _expand_item(text: str, *, allow_large: bool, budget: int) -> list[IPAddress]:
    """Expand one target item into addresses, refusing sizes above the limits before expanding."""

    def size_check(count: int) -> None:
        if count > LARGE_RANGE_HOSTS and not allow_large:
            raise ConfigError(
                f"target range {text!r} has {count} addresses, more than {LARGE_RANGE_HOSTS}; "
                "pass allow_large=True if that is intended"
            )
        if count > budget:
            raise ConfigError(f"target spec expands to more than max_hosts addresses at {text!r}")

    if "/" in text:
        try:
            net = ipaddress.ip_network(text, strict=False)
        except ValueError as exc:
            raise ConfigError(f"target {text!r} is not a valid CIDR block: {exc}") from exc
        size_check(net.num_addresses)
        return list(net.hosts()) if net.num_addresses > 1 else [net.network_address]
    if _is_range(text):
        start_text, _, end_text = text.partition("-")
        start = _parse_address(start_text.strip())
        if start is None:  # unreachable: _is_range parsed it; kept for the type checker
            raise ConfigError(f"target range {text!r}: {start_text!r} is not an IP address")
        end_text = end_text.strip()
        end: IPAddress | None
        if is_ascii_decimal(end_text) and isinstance(start, ipaddress.IPv4Address):
            last = int(end_text)
            if last > 255:
                raise ConfigError(f"target range {text!r}: last octet {last} is above 255")
            end = ipaddress.IPv4Address((int(start) & 0xFFFFFF00) | last)
        else:
            end = _parse_address(end_text)
            if end is None:
                raise ConfigError(f"target range {text!r}: {end_text!r} is not an IP address or octet")
            if end.version != start.version:
                raise ConfigError(f"target range {text!r} mixes IPv4 and IPv6")
        if int(end) < int(start):
            raise ConfigError(f"target range {text!r} is reversed (ends before it starts)")
        count = int(end) - int(start) + 1
        size_check(count)
        cls = type(start)
        return [cls(i) for i in range(int(start), int(end) + 1)]
    addr = _parse_address(text)
    if addr is not None:
        return [addr]
    return _resolve(text)


def parse_targets(
    spec: str | Iterable[str],
    *,
    scope: Scope | None = None,
    max_hosts: int = MAX_TARGET_HOSTS,
    allow_large: bool = False,
) -> list[str]:
    """Expand a target spec into a list of IP address strings (order kept, duplicates removed).

    A host name becomes one address: the first resolved address inside ``scope`` (or simply the first one
    when no scope is given).

    Args:
        spec: a comma-separated string (see the module docstring) or an iterable of such strings.
        scope: when given, every address must lie inside it.
        max_hosts: refuse specs that expand to more addresses than this (memory bound).
        allow_large: permit single ranges of more than :data:`LARGE_RANGE_HOSTS` addresses.

    Raises:
        ConfigError: malformed, empty, reversed or oversized specs (the message names the item).
        ScopeError: an address lies outside ``scope``; nothing was sent.
    """
    if max_hosts < 1:
        raise ConfigError(f"max_hosts must be at least 1, got {max_hosts!r}")
    if isinstance(spec, str):
        items = spec.split(",")
    else:
        items = []
        for element in spec:
            if not isinstance(element, str):
                raise ConfigError(f"target {element!r} must be a string")
            items.extend(element.split(","))
    out: dict[str, None] = {}
    saw_item = False
    for raw in items:
        text = raw.strip()
        if not text:
            if saw_item or len(items) > 1:
                raise ConfigError(f"empty item in target spec {spec!r} (stray comma?)")
            continue
        saw_item = True
        is_name = "/" not in text and not _is_range(text) and _parse_address(text) is None
        if is_name and scope is not None:
            # A name means one host: the scope picks which of its addresses we may use.
            addrs: list[IPAddress] = [ipaddress.ip_address(scope.check(text))]
        else:
            addrs = _expand_item(text, allow_large=allow_large, budget=max_hosts - len(out))
            if is_name:
                addrs = addrs[:1]
        for addr in addrs:
            address = str(canonical_address(addr))  # one device, one entry: ::ffff:a.b.c.d is a.b.c.d
            if scope is not None and address not in scope:
                raise ScopeError(
                    f"target {address} (from {text!r}) is outside the authorized scope {scope}; "
                    "nothing was sent"
                )
            out[address] = None
        if len(out) > max_hosts:
            raise ConfigError(f"target spec expands to more than max_hosts={max_hosts} addresses")
    if not out:
        raise ConfigError("target spec is empty: give at least one address, range or host name")
    return list(out)


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
            if isinstance(element, bool) or not isinstance(element, int | str):
                raise ConfigError(f"port {element!r} in port spec must be an int or a string")
            if isinstance(element, int):
                ports.add(_port(element, spec))
            else:
                for piece in element.split(","):
                    ports.update(_parse_port_text(piece, element))
    if not ports:
        raise ConfigError(f"port spec {spec!r} is empty")
    return tuple(sorted(ports))


def _default_heartbeat() -> Heartbeat:
    from fragileprobe._heartbeat import HttpHeartbeat

    return HttpHeartbeat()


@dataclass(frozen=True, slots=True)
class Target:
    """One device to probe: its address or name, the ports to look at and its sign of life.

    Args:
        host: an IP address or host name (checked against the scope when a Guard opens, not here).
        ports: a port spec (see :func:`parse_ports`); stored as a sorted tuple. Default: the pump set.
        heartbeat: how the watchdog asks "still alive?" (default: ``HttpHeartbeat()``, GET / on 8080).
        name: an optional label for logs and reports.

    Raises:
        ConfigError: an empty or malformed host, a bad port spec, or a heartbeat without ``beat``.
    """

    host: str
    _: KW_ONLY
    ports: tuple[int, ...] = PORT_SETS["pump"]
    heartbeat: Heartbeat = field(default_factory=_default_heartbeat)
    name: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host.strip():
            raise ConfigError(f"Target.host must be a non-empty string, got {self.host!r}")
        host = self.host.strip()
        addr = _parse_address(host)
        if addr is None and not _HOSTNAME_RE.match(host):
            raise ConfigError(f"Target.host {host!r} is neither an IP address nor a valid host name")
        object.__setattr__(self, "host", host if addr is None else str(addr))
        try:
            ports = parse_ports(self.ports)
        except ConfigError as exc:
            raise ConfigError(f"Target.ports: {exc}") from exc
        object.__setattr__(self, "ports", ports)
        if not callable(getattr(self.heartbeat, "beat", None)):
            raise ConfigError(f"Target.heartbeat {self.heartbeat!r} has no beat(host) method")
        if self.name is not None and not isinstance(self.name, str):
            raise ConfigError(f"Target.name must be a string or None, got {self.name!r}")

    @property
    def label(self) -> str:
        """The name if given, else the host: what logs and messages call this target."""
        return self.name or self.host
