"""sites.toml: the sites of a multi-site deployment, their networks and zones, the broker and the store.

Pure: reading and validating the file sends nothing. Everything is checked before the coordinator submits a
single job, and every message names the file, the entry and the key::

    broker = "redis://10.0.0.5:6379/0"                 # the one Celery broker (redis:// or rediss://)
    store = "postgresql://fragileprobe@10.0.0.6/fp"    # the one shared store (postgresql://)

    [discovery]                                        # optional: the discovery parameters of every site
    ports = "hospital"
    rate_per_host = 10.0
    shard_size = 32                                    # hosts per job (each host leased on its own)

    [[site]]
    name = "trauma"                                    # queue "fragileprobe.site.trauma"
    networks = ["10.1.0.0/16"]                         # what this site's agent may reach (its scope)
    targets = ["10.1.4.0/24"]                          # what to discover (default: the networks)
      [[site.zone]]
      name = "ICU"
      kind = "medical"
      ranges = ["10.1.4.0/25"]

Rules: site names are short lowercase slugs and unique; no address belongs to two sites (so every host has
exactly one owner); a site's targets and zones lie inside its networks.
"""

from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from fragileprobe._db import is_database_url
from fragileprobe._discovery import (
    DEFAULT_BANNER_TIMEOUT_S,
    DEFAULT_CONNECT_TIMEOUT_S,
    DEFAULT_DISCOVERY_PORTS,
    DEFAULT_MAX_HOSTS_IN_PARALLEL,
    DEFAULT_RATE_PER_HOST,
    DEFAULT_UNRESPONSIVE_AFTER,
)
from fragileprobe._errors import ConfigError, FragileProbeError
from fragileprobe._groups import Zone, Zones, _check_keys, _line_hint, _loads, _read_config
from fragileprobe._scope import PORT_SETS, Scope, parse_ports, parse_targets

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from pathlib import Path

__all__ = [
    "DEFAULT_LEASE_TTL_S",
    "DEFAULT_SHARD_SIZE",
    "MAX_SITE_HOSTS",
    "DiscoveryParams",
    "Site",
    "SitesConfig",
    "queue_for",
]

# Hosts per discovery job. One job per host would cost a broker round trip and a store transaction per
# address (65,536 per /16); 32 keeps a job to ~10-60 s at the default gentleness while a killed agent loses
# at most 32 hosts' worth of work in flight (each finished host is in the store at once).
DEFAULT_SHARD_SIZE: Final = 32
# A lease lives this long without renewal. Agents renew every third of it, so a live agent survives two
# missed renewals (a GC pause, a slow store); a SIGKILLed one frees its devices within 30 s.
DEFAULT_LEASE_TTL_S: Final = 30.0
# Addresses one site may ask to discover in one run: a /16 (the projection in docs/sites.md).
MAX_SITE_HOSTS: Final = 65_536
_SITE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")
_BROKER_SCHEMES: Final = ("redis://", "rediss://")
_TOP_KEYS: Final = frozenset({"broker", "store", "discovery", "site"})
_SITE_KEYS: Final = frozenset({"name", "networks", "targets", "zone"})
_DISCOVERY_KEYS: Final = frozenset(
    {
        "ports",
        "rate_per_host",
        "per_host_sessions",
        "max_hosts_in_parallel",
        "connect_timeout_s",
        "banner_timeout_s",
        "unresponsive_after",
        "shard_size",
        "lease_ttl_s",
        "port_aliases",
    }
)


def queue_for(site: str) -> str:
    """The Celery queue of a site (one queue per site: routing is by queue)."""
    return f"fragileprobe.site.{site}"


@dataclass(frozen=True, slots=True)
class DiscoveryParams:
    """The discovery parameters sent with every job (the same for every site of one run).

    The defaults are :func:`fragileprobe.discover`'s own, so a multi-site run is as gentle as a local one.
    """

    ports: tuple[int, ...] = DEFAULT_DISCOVERY_PORTS
    rate_per_host: float = DEFAULT_RATE_PER_HOST
    per_host_sessions: int = 1
    max_hosts_in_parallel: int = DEFAULT_MAX_HOSTS_IN_PARALLEL
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S
    banner_timeout_s: float = DEFAULT_BANNER_TIMEOUT_S
    unresponsive_after: int = DEFAULT_UNRESPONSIVE_AFTER
    port_aliases: Mapping[int, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (a job's payload)."""
        return {
            "ports": list(self.ports),
            "rate_per_host": self.rate_per_host,
            "per_host_sessions": self.per_host_sessions,
            "max_hosts_in_parallel": self.max_hosts_in_parallel,
            "connect_timeout_s": self.connect_timeout_s,
            "banner_timeout_s": self.banner_timeout_s,
            "unresponsive_after": self.unresponsive_after,
            "port_aliases": {str(k): v for k, v in self.port_aliases.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DiscoveryParams:
        """Rebuild from :meth:`to_dict` (an agent reading a job)."""
        return cls(
            ports=tuple(int(p) for p in data["ports"]),
            rate_per_host=float(data["rate_per_host"]),
            per_host_sessions=int(data["per_host_sessions"]),
            max_hosts_in_parallel=int(data["max_hosts_in_parallel"]),
            connect_timeout_s=float(data["connect_timeout_s"]),
            banner_timeout_s=float(data["banner_timeout_s"]),
            unresponsive_after=int(data["unresponsive_after"]),
            port_aliases={int(k): int(v) for k, v in dict(data.get("port_aliases", {})).items()},
        )


@dataclass(frozen=True, slots=True)
class Site:
    """One site: its name, the networks its agent may reach, what to discover, its zones.

    Attributes:
        name: A short slug; the site's queue is ``fragileprobe.site.<name>``.
        networks: The site's address space: its agent's scope, and the addresses it owns.
        targets: What a discovery looks at (default: the networks).
        zones: The site's network zones (alerts on medical devices outside medical zones).
    """

    name: str
    networks: tuple[str, ...]
    targets: tuple[str, ...]
    zones: Zones | None = None

    @property
    def queue(self) -> str:
        """This site's Celery queue."""
        return queue_for(self.name)

    @property
    def scope(self) -> Scope:
        """The site's networks as a Scope."""
        return Scope(self.networks, allow_large=True)

    def zones_dict(self) -> dict[str, Any]:
        """The zones in the TOML/dict form ``Zones.from_dict`` reads (a job's payload)."""
        zones = list(self.zones) if self.zones is not None else []
        return {"zone": [{"name": z.name, "kind": z.kind, "ranges": list(z.ranges)} for z in zones]}


@dataclass(frozen=True, slots=True)
class SitesConfig:
    """Every site of a deployment, the broker, the store and the discovery parameters.

    Build it with :meth:`from_toml` or :meth:`from_dict` (validated), or directly from checked parts.
    """

    broker: str
    store: str
    sites: tuple[Site, ...]
    discovery: DiscoveryParams = field(default_factory=DiscoveryParams)
    shard_size: int = DEFAULT_SHARD_SIZE
    lease_ttl_s: float = DEFAULT_LEASE_TTL_S
    source: str = "sites"

    def site(self, name: str) -> Site:
        """The site called ``name``.

        Raises:
            ConfigError: No such site.
        """
        for s in self.sites:
            if s.name == name:
                return s
        raise ConfigError(f"{self.source}: no site named {name!r} (sites: {', '.join(self.names)})")

    @property
    def names(self) -> tuple[str, ...]:
        """The site names, in file order."""
        return tuple(s.name for s in self.sites)

    def owner_of(self, host: str) -> Site | None:
        """The site whose networks hold ``host`` (at most one: sites never overlap), or None."""
        for s in self.sites:
            if host in s.scope:
                return s
        return None

    @classmethod
    def from_toml(cls, path: str | Path) -> SitesConfig:
        """Read and validate a sites.toml.

        Raises:
            ConfigError: The file is missing, not TOML, or any entry is wrong (the message names it).
        """
        text, source = _read_config(path)
        return cls.from_dict(_loads(text, source), source=source, text=text)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "sites", text: str = "") -> SitesConfig:
        """Validate parsed TOML (see the module docstring for the format)."""
        _check_keys(data, _TOP_KEYS, where="top level", source=source, text=text)
        broker = _url(data, "broker", _BROKER_SCHEMES, source=source, text=text)
        store = data.get("store")
        if not is_database_url(store):
            raise ConfigError(
                f"{source}: key 'store'{_line_hint(text, 'store')} must be a postgresql:// URL of the one "
                f"database every site shares, got {store!r}"
            )
        assert isinstance(store, str)
        disc, shard_size, ttl = _discovery(data.get("discovery", {}), source=source, text=text)
        entries = data.get("site")
        if not isinstance(entries, list) or not entries:
            raise ConfigError(f"{source}: needs at least one [[site]] table")
        sites = tuple(_site(e, i, source=source, text=text) for i, e in enumerate(entries))
        _check_distinct(sites, source=source)
        return cls(
            broker=broker,
            store=store,
            sites=sites,
            discovery=disc,
            shard_size=shard_size,
            lease_ttl_s=ttl,
            source=source,
        )


def _url(data: Mapping[str, Any], key: str, schemes: Iterable[str], *, source: str, text: str) -> str:
    value = data.get(key)
    schemes = tuple(schemes)
    if not isinstance(value, str) or not value.startswith(schemes):
        raise ConfigError(
            f"{source}: key {key!r}{_line_hint(text, key)} must be a URL starting with "
            f"{' or '.join(schemes)}, got {value!r}"
        )
    return value


def _number(
    section: Mapping[str, Any], key: str, default: float, *, integer: bool, source: str, text: str
) -> Any:
    value = section.get(key, default)
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    if not ok or (integer and not isinstance(value, int)):
        kind = "a positive integer" if integer else "a positive number"
        raise ConfigError(
            f"{source}: [discovery] key {key!r}{_line_hint(text, key)} must be {kind}, got {value!r}"
        )
    return value


def _discovery(section: Any, *, source: str, text: str) -> tuple[DiscoveryParams, int, float]:
    if not isinstance(section, dict):
        raise ConfigError(f"{source}: 'discovery' must be a table ([discovery])")
    _check_keys(section, _DISCOVERY_KEYS, where="[discovery]", source=source, text=text)
    ports_spec = section.get("ports", "hospital")
    try:
        ports = parse_ports(
            PORT_SETS.get(ports_spec, ports_spec) if isinstance(ports_spec, str) else ports_spec
        )
    except ConfigError as exc:
        raise ConfigError(f"{source}: [discovery] key 'ports'{_line_hint(text, 'ports')}: {exc}") from exc
    aliases_raw = section.get("port_aliases", {})
    if not isinstance(aliases_raw, dict):
        raise ConfigError(f"{source}: [discovery] key 'port_aliases' must be a table of BOUND = WELLKNOWN")
    aliases: dict[int, int] = {}
    for bound, known in aliases_raw.items():
        if not str(bound).isdigit() or not isinstance(known, int) or not 0 < known < 65536:
            raise ConfigError(
                f"{source}: [discovery] port_aliases: {bound!r} = {known!r} is not BOUND = WELLKNOWN (ports)"
            )
        aliases[int(bound)] = known
    kw = {"source": source, "text": text}
    params = DiscoveryParams(
        ports=ports,
        rate_per_host=float(_number(section, "rate_per_host", DEFAULT_RATE_PER_HOST, integer=False, **kw)),
        per_host_sessions=_number(section, "per_host_sessions", 1, integer=True, **kw),
        max_hosts_in_parallel=_number(
            section, "max_hosts_in_parallel", DEFAULT_MAX_HOSTS_IN_PARALLEL, integer=True, **kw
        ),
        connect_timeout_s=float(
            _number(section, "connect_timeout_s", DEFAULT_CONNECT_TIMEOUT_S, integer=False, **kw)
        ),
        banner_timeout_s=float(
            _number(section, "banner_timeout_s", DEFAULT_BANNER_TIMEOUT_S, integer=False, **kw)
        ),
        unresponsive_after=_number(
            section, "unresponsive_after", DEFAULT_UNRESPONSIVE_AFTER, integer=True, **kw
        ),
        port_aliases=aliases,
    )
    shard = _number(section, "shard_size", DEFAULT_SHARD_SIZE, integer=True, **kw)
    ttl = float(_number(section, "lease_ttl_s", DEFAULT_LEASE_TTL_S, integer=False, **kw))
    return params, shard, ttl


def _strings(entry: Mapping[str, Any], key: str, where: str, *, source: str, text: str) -> tuple[str, ...]:
    value = entry.get(key)
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ConfigError(
            f"{source}: {where}: key {key!r}{_line_hint(text, key)} must be a non-empty list of strings"
        )
    return tuple(value)


def _site(entry: Any, index: int, *, source: str, text: str) -> Site:
    where = f"site #{index + 1}" + (f" ({entry.get('name')!r})" if isinstance(entry, dict) else "")
    if not isinstance(entry, dict):
        raise ConfigError(f"{source}: {where} must be a table ([[site]])")
    _check_keys(entry, _SITE_KEYS, where=where, source=source, text=text)
    name = entry.get("name")
    if not isinstance(name, str) or not _SITE_NAME.match(name):
        raise ConfigError(
            f"{source}: {where}: key 'name' must be a lowercase slug (a-z, 0-9, '-', '_', at "
            f"most 40 characters), got {name!r}"
        )
    networks = _strings(entry, "networks", where, source=source, text=text)
    try:
        scope = Scope(networks, allow_large=True)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {where}: key 'networks': {exc}") from exc
    targets = _strings(entry, "targets", where, source=source, text=text) if "targets" in entry else networks
    try:
        parse_targets(targets, scope=scope, max_hosts=MAX_SITE_HOSTS, allow_large=True)
    except FragileProbeError as exc:  # ScopeError too: a target outside the site's own networks
        raise ConfigError(f"{source}: {where}: key 'targets': {exc}") from exc
    zones: Zones | None = None
    if "zone" in entry:
        try:
            zones = Zones.from_dict({"zone": entry["zone"]}, source=f"{source}: {where}", text=text)
        except ConfigError as exc:
            raise ConfigError(str(exc)) from exc
        for zone in zones:
            for r in zone.ranges:
                _inside(r, scope, f"{source}: {where}: zone {zone.name!r} range {r!r}")
    return Site(name=name, networks=networks, targets=targets, zones=zones)


def _inside(text: str, scope: Scope, what: str) -> None:
    try:
        net = ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        first, _, last = text.partition("-")
        ends = [first.strip(), last.strip() or first.strip()]
    else:
        ends = [str(net.network_address), str(net.broadcast_address)]
    if not all(e in scope for e in ends):
        raise ConfigError(f"{what} is outside the site's networks ({', '.join(str(n) for n in scope)})")


def _check_distinct(sites: tuple[Site, ...], *, source: str) -> None:
    seen: set[str] = set()
    for s in sites:
        if s.name in seen:
            raise ConfigError(f"{source}: site name {s.name!r} is used twice")
        seen.add(s.name)
    # Zones already refuses overlapping ranges: one zone per site's networks finds two sites sharing
    # an address.
    try:
        Zones([Zone(s.name, s.networks) for s in sites], source=source)
    except ConfigError as exc:
        raise ConfigError(
            str(exc).replace("zones", "sites", 1).replace("one zone only", "one site only")
        ) from exc
