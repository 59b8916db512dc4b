"""DiscoverySettings: how gently :func:`~fragileprobe.discover` works, validated once (pure).

In the manner of httpx's ``Timeout`` and ``Limits`` (``httpx/_config.py``): a frozen, keyword-only value,
checked when it is built (through :mod:`fragileprobe._validate`, so every failure is a
:class:`~fragileprobe.ConfigError` whose ``field`` names the setting), with a repr that reads back::

    >>> DiscoverySettings(ports="21-23,80", per_host_sessions=2)
    DiscoverySettings(ports='21-23,80', per_host_sessions=2)

(the repr shows what differs from the defaults). ``discover(targets, scope=...,
settings=DiscoverySettings(...))`` and the flat keywords ``discover(targets, scope=..., per_host_sessions=2)``
are the same call; both at once is a ConfigError (``field="settings"``), as in ``characterize()``. The CLI
builds this object from its options.

What is *not* here: the targets and scope, where results go (store, alert file, webhook, progress) and the
network seam; they are arguments of :func:`~fragileprobe.discover`, not settings of a scan.
"""

from __future__ import annotations

import dataclasses
import functools
import types
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias, TypedDict

from fragileprobe import _validate
from fragileprobe._discovery import (
    BANNER_TIMEOUT_FLOOR_S,
    CONNECT_TIMEOUT_FLOOR_S,
    CONNECT_TIMEOUT_INITIAL_S,
    DEFAULT_BANNER_TIMEOUT_S,
    DEFAULT_CONNECT_TIMEOUT_S,
    DEFAULT_DISCOVERY_PORTS,
    DEFAULT_RATE_PER_HOST,
    DEFAULT_UNRESPONSIVE_AFTER,
)
from fragileprobe._errors import ConfigError
from fragileprobe._hostpolicy import DEFAULT_LIVENESS_PORTS
from fragileprobe._scope import parse_ports
from fragileprobe._sessions import DISCOVERY_LINGER_S
from fragileprobe._timing import DEFAULT_GLOBAL_RATE, TimeoutBounds
from fragileprobe._udp import (
    DEFAULT_SNMP_COMMUNITY,
    DEFAULT_UDP_PORTS,
    MAX_COMMUNITY_BYTES,
    UDP_PROBES,
    check_community,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

__all__ = ["DiscoveryOptions", "DiscoverySettings", "PortSpec", "port_spec_text"]

PortSpec: TypeAlias = "str | int | Iterable[int | str]"
"""What a port setting accepts: ``"21-23,8080"``, a named set (``"hospital"``), an int, or an iterable."""

# A udp_ports value meaning "no UDP probe at all" (the CLI's "none" becomes ()).
_NO_PORTS: tuple[object, ...] = ((), [], "")


class DiscoveryOptions(TypedDict, total=False):
    """The flat keywords of :func:`~fragileprobe.discover`: the fields of :class:`DiscoverySettings`."""

    ports: PortSpec
    udp_ports: PortSpec
    per_host_sessions: int
    rate_per_host: float
    max_hosts_in_parallel: int | None
    global_rate: float
    liveness_ports: int
    connect_timeout_s: float
    banner_timeout_s: float
    adaptive_timeouts: bool
    unresponsive_after: int
    snmp_community: str
    port_aliases: Mapping[int, int] | None
    linger_s: float
    seed: int | None
    raw: bool


@dataclass(frozen=True, slots=True, init=False, repr=False)
class DiscoverySettings:
    """How one discovery run probes: ports, per-host and global limits, timeouts, give-up rule, extras.

    Every argument is keyword-only and optional (the defaults are the gentle ones of ``discover``).

    Attributes:
        ports: TCP ports to look at, ascending (default the "hospital" set; any port spec is accepted).
        udp_ports: UDP ports that get one datagram on each live host, ascending (``()`` for none).
        per_host_sessions: Sessions held at once per host, counted on the device's side (default 1).
        rate_per_host: Connects (and datagrams) per second per host (default 10).
        max_hosts_in_parallel: Hosts worked at once; ``None`` sizes it to the file-descriptor budget.
        global_rate: New connections (and datagrams) per second for the whole run (default 1,000).
        liveness_ports: Ports tried on an address before the rest (default 2; 0: every port everywhere).
        connect_timeout_s: Ceiling of the adaptive connect timeout (the fixed timeout without adaptation).
        banner_timeout_s: Ceiling of the adaptive wait for a banner or an HTTP answer.
        adaptive_timeouts: Follow measured round trips within floors and ceilings (default True).
        unresponsive_after: Strikes in a row, after the host spoke, that make it left alone (default 3).
        snmp_community: The SNMP v2c community of the sysDescr request (default "public").
        port_aliases: Bound port -> well-known port, for services on moved ports (read-only mapping).
        linger_s: Most seconds a session stays counted after our close while the device holds it (1 s).
        seed: Seed of the shuffled host order (``None``: random).
        raw: Also use the raw-packet extras (ICMP, passive OS hint) when available.

    Raises:
        ConfigError: On construction, a value out of range; ``field`` names the setting.
    """

    ports: tuple[int, ...]
    udp_ports: tuple[int, ...]
    per_host_sessions: int
    rate_per_host: float
    max_hosts_in_parallel: int | None
    global_rate: float
    liveness_ports: int
    connect_timeout_s: float
    banner_timeout_s: float
    adaptive_timeouts: bool
    unresponsive_after: int
    snmp_community: str
    port_aliases: Mapping[int, int]
    linger_s: float
    seed: int | None
    raw: bool

    def __init__(
        self,
        *,
        ports: PortSpec = DEFAULT_DISCOVERY_PORTS,
        udp_ports: PortSpec = DEFAULT_UDP_PORTS,
        per_host_sessions: int = 1,
        rate_per_host: float = DEFAULT_RATE_PER_HOST,
        max_hosts_in_parallel: int | None = None,
        global_rate: float = DEFAULT_GLOBAL_RATE,
        liveness_ports: int = DEFAULT_LIVENESS_PORTS,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        banner_timeout_s: float = DEFAULT_BANNER_TIMEOUT_S,
        adaptive_timeouts: bool = True,
        unresponsive_after: int = DEFAULT_UNRESPONSIVE_AFTER,
        snmp_community: str = DEFAULT_SNMP_COMMUNITY,
        port_aliases: Mapping[int, int] | None = None,
        linger_s: float = DISCOVERY_LINGER_S,
        seed: int | None = None,
        raw: bool = False,
    ) -> None:
        # Numbers keep the type they were given (10, not 10.0): the parameters are stored with a scan, and
        # resume finds an unfinished scan by comparing them as canonical JSON.
        values: dict[str, object] = {
            "ports": _ports("ports", ports),
            "udp_ports": _udp_ports(udp_ports),
            "per_host_sessions": _validate.positive_int("per_host_sessions", per_host_sessions),
            "rate_per_host": _checked(_validate.positive, "rate_per_host", rate_per_host),
            "max_hosts_in_parallel": (
                None
                if max_hosts_in_parallel is None
                else _validate.positive_int("max_hosts_in_parallel", max_hosts_in_parallel)
            ),
            "global_rate": _checked(_validate.positive, "global_rate", global_rate),
            "liveness_ports": _validate.count("liveness_ports", liveness_ports),
            "connect_timeout_s": _checked(_validate.positive, "connect_timeout_s", connect_timeout_s),
            "banner_timeout_s": _checked(_validate.positive, "banner_timeout_s", banner_timeout_s),
            "adaptive_timeouts": bool(adaptive_timeouts),
            "unresponsive_after": _validate.positive_int("unresponsive_after", unresponsive_after),
            "snmp_community": _community(snmp_community),
            "port_aliases": _aliases(port_aliases),
            "linger_s": _checked(_validate.positive, "linger_s", linger_s),
            "seed": _seed(seed),
            "raw": bool(raw),
        }
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def __hash__(self) -> int:
        # The generated hash would fail on the aliases' read-only mapping: hash its items instead.
        return hash(
            tuple(
                (f.name, getattr(self, f.name)) for f in dataclasses.fields(self) if f.name != "port_aliases"
            )
            + tuple(self.port_aliases.items())
        )

    def replace(self, **changes: Any) -> DiscoverySettings:
        """A copy with ``changes`` (field names; validated like the constructor's arguments)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def merge(cls, settings: DiscoverySettings | None, options: Mapping[str, Any]) -> DiscoverySettings:
        """The run's settings: ``settings`` as given, or built from the flat ``options``; never both (as
        ``characterize()`` does: one place says what a run does).

        Raises:
            ConfigError: A bad value (``field`` names it), or ``settings`` together with flat keywords
                (``field="settings"``).
            TypeError: An option that is no setting.
        """
        unknown = sorted(set(options) - set(DiscoveryOptions.__annotations__))
        if unknown:
            raise TypeError(f"discover() got an unexpected keyword argument {unknown[0]!r}")
        if settings is None:
            return cls(**options)
        if not isinstance(settings, DiscoverySettings):
            raise _validate.fail("settings", "a DiscoverySettings", settings)
        if options:
            what = "given without the flat keywords it holds (set them in the settings)"
            raise _validate.fail("settings", what, sorted(options))
        return settings

    @property
    def connect_bounds(self) -> TimeoutBounds:
        """The adaptive connect timeout's floor, ceiling (``connect_timeout_s``) and starting value."""
        ceiling = float(self.connect_timeout_s)
        return TimeoutBounds(
            floor_s=min(CONNECT_TIMEOUT_FLOOR_S, ceiling),
            ceiling_s=ceiling,
            initial_s=min(CONNECT_TIMEOUT_INITIAL_S, ceiling),
        )

    @property
    def banner_bounds(self) -> TimeoutBounds:
        """The adaptive banner wait's floor, ceiling (``banner_timeout_s``) and starting value."""
        ceiling = float(self.banner_timeout_s)
        return TimeoutBounds(
            floor_s=min(BANNER_TIMEOUT_FLOOR_S, ceiling), ceiling_s=ceiling, initial_s=ceiling
        )

    def params(self) -> dict[str, Any]:
        """The parameters stored with a scan, which ``resume`` matches (keys and values as they were)."""
        return {
            "ports": list(self.ports),
            "per_host_sessions": self.per_host_sessions,
            "rate_per_host": self.rate_per_host,
            "connect_timeout_s": self.connect_timeout_s,
            "banner_timeout_s": self.banner_timeout_s,
            "unresponsive_after": self.unresponsive_after,
            "udp_ports": list(self.udp_ports),
            "liveness_ports": self.liveness_ports,
            "adaptive_timeouts": self.adaptive_timeouts,
        }

    def __repr__(self) -> str:
        """The fields that differ from the defaults, ports as a port spec: it reads back as equal settings."""
        default = _defaults()
        shown: list[str] = []
        for f in dataclasses.fields(self):
            value, usual = getattr(self, f.name), getattr(default, f.name)
            if value == usual and type(value) is type(usual):  # 10 is shown: params keep it an int
                continue
            if f.name in ("ports", "udp_ports"):
                shown.append(f"{f.name}={port_spec_text(value)!r}")
            elif f.name == "port_aliases":
                shown.append(f"port_aliases={dict(value)!r}")
            else:
                shown.append(f"{f.name}={value!r}")
        return f"DiscoverySettings({', '.join(shown)})"


@functools.cache
def _defaults() -> DiscoverySettings:
    return DiscoverySettings()


def port_spec_text(ports: Iterable[int]) -> str:
    """Ports as the shortest port spec that parses back to them (``"21-23,80"``; ``""`` for none)."""
    runs: list[list[int]] = []
    for port in sorted(set(ports)):
        if runs and port == runs[-1][1] + 1:
            runs[-1][1] = port
        else:
            runs.append([port, port])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def _named(field: str, check: Callable[[Any], Any], value: object) -> Any:
    """``check(value)``; its ConfigError re-raised as ``"<field>: ..."`` with ``field`` set."""
    try:
        return check(value)
    except ConfigError as exc:
        if exc.field is not None:
            raise
        text = str(exc)
        message = text if text.startswith(f"{field}:") else f"{field}: {text}"
        raise ConfigError(message, field=field) from exc


def _checked(check: Callable[[str, Any], object], field: str, value: Any) -> Any:
    """``value`` as given, once ``check(field, value)`` accepted it."""
    check(field, value)
    return value


def _ports(field: str, spec: PortSpec) -> tuple[int, ...]:
    parsed: tuple[int, ...] = _named(field, parse_ports, spec)
    return parsed


def _udp_ports(spec: PortSpec) -> tuple[int, ...]:
    if isinstance(spec, str | list | tuple) and spec in _NO_PORTS:
        return ()
    ports = _ports("udp_ports", spec)
    unknown = [p for p in ports if p not in UDP_PROBES]
    if unknown:
        known = ", ".join(map(str, sorted(UDP_PROBES)))
        raise _validate.fail("udp_ports", f"ports with a known UDP probe ({known})", unknown)
    return ports


def _aliases(aliases: Mapping[int, int] | None) -> Mapping[int, int]:
    if aliases is None:
        return types.MappingProxyType({})
    if not hasattr(aliases, "items"):
        raise _validate.fail("port_aliases", "a mapping of bound port -> well-known port", aliases)
    checked = {
        _validate.port("port_aliases", bound): _validate.port("port_aliases", known)
        for bound, known in aliases.items()
    }
    return types.MappingProxyType(dict(sorted(checked.items())))


def _community(community: str) -> str:
    """The SNMP community when ``check_community`` takes it (the rule lives with the SNMP code)."""
    try:
        return check_community(community)
    except ConfigError:
        shown = community[:40] + "..." if isinstance(community, str) and len(community) > 40 else community
        raise _validate.fail(
            "snmp_community", f"1-{MAX_COMMUNITY_BYTES} printable ASCII characters", shown
        ) from None


def _seed(seed: int | None) -> int | None:
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise _validate.fail("seed", "an integer or None", seed)
    return seed
