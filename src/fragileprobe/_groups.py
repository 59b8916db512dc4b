"""Asset-group rules, network zones and zone alerts.

Pure part (no I/O): :class:`Zone`/:class:`Zones` map addresses to named segments with a kind ("medical",
"general", "guest", ...); :class:`Rule`/:class:`Rules` sort a host into groups from what discovery saw
(open ports, services, products, versions, OS family, zone, whether its model has a stored profile);
:func:`alert_for` decides whether a host is a medical device sitting on a non-medical segment.

Edge part (I/O, kept small): alert sinks that write an :class:`Alert` to structlog, to a JSON-lines file and
to a webhook (HTTP POST with a bounded timeout).

Rules and zones come from TOML (:meth:`Rules.from_toml`, :meth:`Zones.from_toml`) or Python objects. A bad
file raises :class:`~fragileprobe.ConfigError` naming the file, the entry, the key (and its line when it can
be found) and what is wrong. The built-in rules ship as ``fragileprobe/data/default_rules.toml``::

    "Medical Device?"       FTP, SSH, Telnet and a web server on 8080, generic unix  (medical)
    "Medical Device?"       FTP, Telnet and a web UI on an embedded OS, not a printer (medical)
    "Medical Device?"       speaks HL7 (MLLP) or DICOM                               (medical)
    "{model}"               the host's model has a stored (fragile) profile          (medical)
    "safe to scan ({zone})" everything that matched no other rule                    (fallback)
"""

from __future__ import annotations

import collections.abc
import fnmatch
import ipaddress
import json
import re
import string
import tomllib
import urllib.parse
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Final, Protocol, TypeVar

import structlog

from fragileprobe import _validate
from fragileprobe._errors import ConfigError
from fragileprobe._files import read_bounded_text
from fragileprobe._fingerprint import OS_FAMILIES, WEB_SERVICES
from fragileprobe._scope import canonical_address, canonical_network

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

    from fragileprobe._fingerprint import ServiceInfo

__all__ = [
    "MEDICAL_KINDS",
    "Alert",
    "AlertRecord",
    "GroupMatch",
    "HostView",
    "JsonlAlertSink",
    "Rule",
    "Rules",
    "WebhookAlertSink",
    "Zone",
    "Zones",
    "alert_for",
    "log_alert",
]

log = structlog.get_logger(__name__)

# Zone kinds that count as "a medical device belongs here"; every other kind makes a medical host an alert.
MEDICAL_KINDS: Final = frozenset({"medical"})
# Zone name used for hosts that fall in no configured zone.
UNZONED: Final = "unzoned"
# A rules or zones file is a few KiB; 1 MiB stops a mistaken path (a disk image, a log) from being parsed.
MAX_CONFIG_BYTES: Final = 1 << 20
# Webhook: a receiver that does not answer within this many seconds is given up on (the alert is still in
# the log and the JSON-lines file), so a dead SIEM endpoint cannot stall a discovery run.
WEBHOOK_TIMEOUT_S: Final = 5.0
# Webhook response: only the status line matters; 4 KiB covers it and any sane header block.
WEBHOOK_MAX_RESPONSE_BYTES: Final = 4096

_NAME_FIELDS: Final = frozenset({"zone", "model"})


class HostView(Protocol):
    """What rules look at: a discovered host (``fragileprobe.Asset`` satisfies this)."""

    @property
    def host(self) -> str: ...
    @property
    def open_ports(self) -> tuple[int, ...]: ...
    @property
    def services(self) -> tuple[ServiceInfo, ...]: ...
    @property
    def os_family(self) -> str: ...
    @property
    def zone(self) -> str: ...
    @property
    def zone_kind(self) -> str | None: ...
    @property
    def model_key(self) -> str: ...
    @property
    def known_model(self) -> str | None: ...
    @property
    def ceiling(self) -> int | None: ...


# --- zones ------------------------------------------------------------------------------------------------

_Interval = tuple[int, int, int]  # (ip version, first address as int, last address as int)


def _parse_range(text: str, *, zone: str) -> _Interval:
    """Parse ``"10.1.0.0/24"``, ``"10.1.0.5"`` or ``"10.1.0.5-10.1.0.9"`` into an inclusive interval."""
    text = str(text).strip()
    try:
        if "-" in text:
            lo_s, hi_s = (p.strip() for p in text.split("-", 1))
            lo = canonical_address(ipaddress.ip_address(lo_s))
            hi = canonical_address(ipaddress.ip_address(hi_s))
            if lo.version != hi.version or int(lo) > int(hi):
                raise ValueError("range must run from low to high within one IP version")
            return lo.version, int(lo), int(hi)
        net = canonical_network(ipaddress.ip_network(text, strict=False))
    except ValueError as exc:
        what = f"CIDR blocks, addresses or 'a-b' ranges (zone {zone!r}: {exc})"
        raise _validate.fail("Zone.ranges", what, text) from exc
    return net.version, int(net.network_address), int(net.broadcast_address)


@dataclass(frozen=True, slots=True)
class Zone:
    """A named network segment.

    Attributes:
        name: Segment name shown in groups and alerts ("ICU devices", "Office LAN").
        ranges: CIDR blocks, single addresses or ``"a-b"`` ranges belonging to the segment.
        kind: What the segment is for: "medical" (devices belong here), "general", "guest", "server", ...
            Every kind except those in ``MEDICAL_KINDS`` makes a medical host found there an alert.
    """

    name: str
    ranges: tuple[str, ...]
    kind: str = "general"
    _intervals: tuple[_Interval, ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise _validate.fail("Zone.name", "a non-empty string", self.name)
        ranges: str | Iterable[str] = self.ranges  # a lone string is accepted as one range
        object.__setattr__(self, "ranges", (ranges,) if isinstance(ranges, str) else tuple(ranges))
        if not self.ranges:
            what = f"at least one address range (zone {self.name!r})"
            raise _validate.fail("Zone.ranges", what, self.ranges)
        if not isinstance(self.kind, str) or not re.fullmatch(r"[a-z][a-z0-9_\-]*", self.kind):
            what = f"a lower-case word like 'medical' or 'general' (zone {self.name!r})"
            raise _validate.fail("Zone.kind", what, self.kind)
        intervals = tuple(_parse_range(r, zone=self.name) for r in self.ranges)
        object.__setattr__(self, "_intervals", intervals)

    @property
    def medical(self) -> bool:
        """True when medical devices belong in this zone."""
        return self.kind in MEDICAL_KINDS

    def __contains__(self, host: object) -> bool:
        try:
            addr = canonical_address(ipaddress.ip_address(str(host)))
        except ValueError:
            return False
        value = int(addr)
        return any(v == addr.version and lo <= value <= hi for v, lo, hi in self._intervals)


class Zones:
    """An ordered set of non-overlapping zones.

    Args:
        zones: The zones; two zones may not share an address (ConfigError names both).
        source: Where they came from, for messages (a file name).

    Raises:
        ConfigError: Two zones overlap or share a name.
    """

    def __init__(self, zones: Iterable[Zone] = (), *, source: str = "zones") -> None:
        self._zones: tuple[Zone, ...] = tuple(zones)
        self.source = source
        names: set[str] = set()
        for z in self._zones:
            if not isinstance(z, Zone):
                raise ConfigError(f"{source}: expected Zone objects, got {type(z).__name__}")
            if z.name in names:
                raise ConfigError(f"{source}: zone name {z.name!r} is used twice", field="Zone.name")
            names.add(z.name)
        spans = sorted(
            (iv, z.name, r) for z in self._zones for iv, r in zip(z._intervals, z.ranges, strict=True)
        )
        # Sweep in address order, remembering the interval that reaches furthest so far: any later interval
        # that starts inside it overlaps it.
        reach: tuple[_Interval, str, str] | None = None
        for cur in spans:
            (version, start, end), zone_name, text = cur
            inside = reach is not None and reach[0][0] == version and start <= reach[0][2]
            if reach is not None and inside and reach[1] != zone_name:
                raise ConfigError(
                    f"{source}: zones {reach[1]!r} ({reach[2]}) and {zone_name!r} ({text}) overlap; "
                    "every address may belong to one zone only",
                    field="Zone.ranges",
                )
            if reach is None or reach[0][0] != version or end > reach[0][2]:
                reach = cur

    @classmethod
    def from_toml(cls, path: str | Path) -> Zones:
        """Load zones from a TOML file of ``[[zone]]`` tables (``name``, ``kind``, ``ranges``).

        Raises:
            ConfigError: The file is missing, not TOML, has unknown keys, bad values or overlapping zones;
                the message names the file, the entry and key (with its line when found).
        """
        text, src = _read_config(path)
        data = _loads(text, src)
        return cls.from_dict(data, source=src, text=text)

    @classmethod
    def from_dict(cls, data: Mapping[str, object], *, source: str = "zones", text: str = "") -> Zones:
        """Build zones from parsed TOML (``{"zone": [{"name":..., "kind":..., "ranges": [...]}, ...]}``)."""
        _check_keys(data, {"zone"}, where="top level", source=source, text=text)
        entries = data.get("zone", [])
        if not isinstance(entries, list):
            raise ConfigError(f"{source}: 'zone' must be an array of tables ([[zone]])", field="zone")
        zones = []
        for i, entry in enumerate(entries):
            where = f"zone #{i + 1}" + (f" ({entry.get('name')!r})" if isinstance(entry, dict) else "")
            if not isinstance(entry, dict):
                raise ConfigError(f"{source}: {where} must be a table", field="zone")
            _check_keys(entry, {"name", "kind", "ranges"}, where=where, source=source, text=text)
            for required in ("name", "ranges"):
                if required not in entry:
                    message = f"{source}: {where}: missing key {required!r}"
                    raise ConfigError(message, field=f"Zone.{required}")
            ranges = entry["ranges"]
            if isinstance(ranges, str):
                ranges = [ranges]
            if not isinstance(ranges, list) or not all(isinstance(r, str) for r in ranges):
                raise ConfigError(
                    f"{source}: {where}: key 'ranges'{_line_hint(text, 'ranges')} must be a list of strings",
                    field="Zone.ranges",
                )
            try:
                zone = Zone(name=entry["name"], ranges=tuple(ranges), kind=entry.get("kind", "general"))
            except ConfigError as exc:
                raise ConfigError(f"{source}: {where}: {exc}", field=exc.field) from exc
            zones.append(zone)
        return cls(zones, source=source)

    def zone_for(self, host: str) -> Zone | None:
        """Return the zone that holds ``host``, or None."""
        for z in self._zones:
            if host in z:
                return z
        return None

    def __iter__(self) -> Iterator[Zone]:
        return iter(self._zones)

    def __len__(self) -> int:
        return len(self._zones)

    def __repr__(self) -> str:
        return f"Zones({list(self._zones)!r}, source={self.source!r})"


# --- rules ------------------------------------------------------------------------------------------------

_Item = TypeVar("_Item", int, str)

_PORT_FIELDS: Final = ("ports_all", "ports_any", "ports_none")
_TEXT_FIELDS: Final = ("services", "services_any", "products", "versions", "os_family", "zone")
_FLAG_FIELDS: Final = ("medical", "fallback")
# A service condition: a lower-case service name as fingerprinting reports it, optionally pinned to a port.
_SERVICE_SPEC: Final = re.compile(r"[a-z0-9][a-z0-9_\-]*(@[0-9]{1,5})?")


def _tuple_of(value: object, kind: type[_Item], *, field_name: str, rule: str) -> tuple[_Item, ...]:
    """``value`` as a tuple of ``kind`` (a lone item, a list of them, or None for none)."""
    if value is None:
        return ()
    if isinstance(value, str | int) and not isinstance(value, bool):
        value = (value,)
    what = f"a list of {kind.__name__} (rule {rule!r})"
    if not isinstance(value, collections.abc.Iterable):
        raise _validate.fail(field_name, what, value)
    items: list[_Item] = []
    for item in value:
        if not isinstance(item, kind) or isinstance(item, bool):
            raise _validate.fail(field_name, what, item)
        items.append(item)
    return tuple(items)


def _ports_of(value: object, *, field_name: str, rule: str) -> tuple[int, ...]:
    ports = _tuple_of(value, int, field_name=field_name, rule=rule)
    bad = [p for p in ports if not 0 < p < 65536]
    if bad:
        raise _validate.fail(field_name, f"ports in 1-65535 (rule {rule!r})", bad)
    return ports


def _check_template(name: object) -> None:
    """A rule name: a non-empty format string using no placeholder but ``{zone}`` and ``{model}``."""
    if not isinstance(name, str) or not name.strip():
        raise _validate.fail("Rule.name", "a non-empty string", name)
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(name) if f is not None}
    except ValueError as exc:
        raise _validate.fail("Rule.name", f"a valid template ({exc})", name) from exc
    unknown = sorted(fields - _NAME_FIELDS)
    if unknown:
        what = f"a template using only {{zone}} and {{model}} (unknown placeholder(s) {unknown})"
        raise _validate.fail("Rule.name", what, name)


def _check_values(rule: Rule) -> None:
    """The checks that leave a rule's (already normalized) values as they are."""
    where = f"(rule {rule.name!r})"
    for fname in ("services", "services_any"):
        for spec in getattr(rule, fname):
            if not _SERVICE_SPEC.fullmatch(spec):
                what = f"a lower-case name, optionally '@port' (e.g. 'http@8080') {where}"
                raise _validate.fail(f"Rule.{fname}", what, spec)
    bad_os = [f for f in rule.os_family if f not in OS_FAMILIES]
    if bad_os:
        raise _validate.fail("Rule.os_family", f"families from {list(OS_FAMILIES)} {where}", bad_os)
    if rule.known_model is not None and not isinstance(rule.known_model, bool):
        raise _validate.fail("Rule.known_model", f"true, false or absent {where}", rule.known_model)
    for fname in _FLAG_FIELDS:
        if not isinstance(getattr(rule, fname), bool):
            raise _validate.fail(f"Rule.{fname}", f"true or false {where}", getattr(rule, fname))


@dataclass(frozen=True, slots=True)
class Rule:
    """One asset group and the conditions a host must meet to be in it (all given conditions must hold).

    Attributes:
        name: Group name; may use ``{zone}`` (the host's zone) and ``{model}`` (its stored model key, else
            its discovered one).
        ports_all: Every one of these ports is open.
        ports_any: At least one of these ports is open.
        ports_none: None of these ports is open.
        services: Every one of these services is seen; ``"http@8080"`` means "the service on port 8080 is
            http" (a web service matches "http" whether plain, TLS or IPP).
        services_any: At least one of these services is seen.
        products: Some service's product matches one of these globs (case-insensitive, ``"Open*SSH"``).
        versions: Some service's version matches one of these globs.
        os_family: The host's OS guess is one of these families.
        zone: The host's zone name or zone kind is one of these.
        known_model: True: the host's model has a stored profile; False: it has none; None: either.
        medical: Hosts in this group are medical devices (alert when found outside a medical zone).
        fallback: Match only hosts that matched no non-fallback rule ("everything else").
        description: Free text for people.
    """

    name: str
    ports_all: tuple[int, ...] = ()
    ports_any: tuple[int, ...] = ()
    ports_none: tuple[int, ...] = ()
    services: tuple[str, ...] = ()
    services_any: tuple[str, ...] = ()
    products: tuple[str, ...] = ()
    versions: tuple[str, ...] = ()
    os_family: tuple[str, ...] = ()
    zone: tuple[str, ...] = ()
    known_model: bool | None = None
    medical: bool = False
    fallback: bool = False
    description: str = ""

    def __post_init__(self) -> None:
        _check_template(self.name)
        for fname in _PORT_FIELDS:
            ports = _ports_of(getattr(self, fname), field_name=f"Rule.{fname}", rule=self.name)
            object.__setattr__(self, fname, ports)
        for fname in _TEXT_FIELDS:
            items = _tuple_of(getattr(self, fname), str, field_name=f"Rule.{fname}", rule=self.name)
            object.__setattr__(self, fname, items)
        _check_values(self)

    def match(self, host: HostView) -> tuple[str, ...] | None:
        """Return the evidence when ``host`` meets every condition, else None.

        The conditions are the rows of :data:`_CONDITIONS`, checked in order; one the rule does not set
        (an empty tuple, or None for ``known_model``) is skipped.
        """
        evidence: list[str] = []
        for fname, check in _CONDITIONS:
            wanted = getattr(self, fname)
            if wanted is None or wanted == ():
                continue
            found = check(self, host)
            if found is None:
                return None
            evidence.append(found)
        return tuple(evidence)

    def group_name(self, host: HostView) -> str:
        """The group name for ``host`` with ``{zone}`` and ``{model}`` filled in."""
        return self.name.format(zone=host.zone, model=host.known_model or host.model_key)


def _has_service(services: Sequence[ServiceInfo], spec: str) -> bool:
    name, _, port_s = spec.partition("@")
    for info in services:
        if port_s and info.port != int(port_s):
            continue
        if info.service == name or (name == "http" and info.service in WEB_SERVICES):
            return True
    return False


def _glob_any(value: str, patterns: Iterable[str]) -> bool:
    low = value.lower()
    return any(fnmatch.fnmatchcase(low, p.lower()) for p in patterns)


# --- the conditions of a rule, as data ----------------------------------------------------------------------
# One function per condition: the evidence when the host meets it, None when it does not. Rule.match runs
# only the ones the rule sets, in the order of _CONDITIONS (which is the order the evidence reads in).


def _ports_all_open(rule: Rule, host: HostView) -> str | None:
    if not set(rule.ports_all) <= set(host.open_ports):
        return None
    return "ports " + ",".join(map(str, rule.ports_all)) + " open"


def _ports_any_open(rule: Rule, host: HostView) -> str | None:
    hit = sorted(set(host.open_ports) & set(rule.ports_any))
    return "port(s) " + ",".join(map(str, hit)) + " open" if hit else None


def _ports_none_open(rule: Rule, host: HostView) -> str | None:
    if set(host.open_ports) & set(rule.ports_none):
        return None
    return "ports " + ",".join(map(str, rule.ports_none)) + " closed"


def _services_all_seen(rule: Rule, host: HostView) -> str | None:
    if not all(_has_service(host.services, s) for s in rule.services):
        return None
    return "services " + ", ".join(rule.services)


def _services_any_seen(rule: Rule, host: HostView) -> str | None:
    hit = [s for s in rule.services_any if _has_service(host.services, s)]
    return "service(s) " + ", ".join(hit) if hit else None


def _product_matches(rule: Rule, host: HostView) -> str | None:
    found = [i.product for i in host.services if i.product and _glob_any(i.product, rule.products)]
    return "product " + found[0] if found else None


def _version_matches(rule: Rule, host: HostView) -> str | None:
    found = [i.version for i in host.services if i.version and _glob_any(i.version, rule.versions)]
    return "version " + found[0] if found else None


def _os_family_is(rule: Rule, host: HostView) -> str | None:
    return f"OS {host.os_family}" if host.os_family in rule.os_family else None


def _zone_is(rule: Rule, host: HostView) -> str | None:
    inside = host.zone in rule.zone or (host.zone_kind or "") in rule.zone
    return f"zone {host.zone}" if inside else None


def _known_model_is(rule: Rule, host: HostView) -> str | None:
    if (host.known_model is not None) != rule.known_model:
        return None
    if host.known_model is None:
        return "model has no stored profile"
    ceiling = f" (ceiling {host.ceiling})" if host.ceiling is not None else ""
    return f"model {host.known_model} has a stored profile{ceiling}"


_CONDITIONS: Final[tuple[tuple[str, Callable[[Rule, HostView], str | None]], ...]] = (
    ("ports_all", _ports_all_open),
    ("ports_any", _ports_any_open),
    ("ports_none", _ports_none_open),
    ("services", _services_all_seen),
    ("services_any", _services_any_seen),
    ("products", _product_matches),
    ("versions", _version_matches),
    ("os_family", _os_family_is),
    ("zone", _zone_is),
    ("known_model", _known_model_is),
)


@dataclass(frozen=True, slots=True)
class GroupMatch:
    """One group a host landed in.

    Attributes:
        group: The group name (placeholders filled in).
        rule: The rule's name template.
        medical: The rule marks medical devices.
        evidence: Why the host matched.
    """

    group: str
    rule: str
    medical: bool
    evidence: tuple[str, ...]


_RULE_KEYS: Final = frozenset(
    {
        "name",
        "ports_all",
        "ports_any",
        "ports_none",
        "services",
        "services_any",
        "products",
        "versions",
        "os_family",
        "zone",
        "known_model",
        "medical",
        "fallback",
        "description",
    }
)


class Rules:
    """An ordered list of group rules; a host lands in every group whose rule it meets.

    Several rules may share a name: they are alternatives for one group (a host meeting any of them is in
    it, once).

    Args:
        rules: The rules, in order (order only affects the order groups are listed in).
        source: Where they came from, for messages.

    Raises:
        ConfigError: An element is not a Rule.
    """

    def __init__(self, rules: Iterable[Rule], *, source: str = "rules") -> None:
        self._rules: tuple[Rule, ...] = tuple(rules)
        self.source = source
        for r in self._rules:
            if not isinstance(r, Rule):
                raise ConfigError(f"{source}: expected Rule objects, got {type(r).__name__}")

    @classmethod
    def default(cls) -> Rules:
        """The built-in rules shipped as ``fragileprobe/data/default_rules.toml``."""
        res = resources.files("fragileprobe").joinpath("data/default_rules.toml")
        text = res.read_text(encoding="utf-8")
        return cls.from_dict(_loads(text, "default_rules.toml"), source="default_rules.toml", text=text)

    @classmethod
    def from_toml(cls, path: str | Path) -> Rules:
        """Load rules from a TOML file of ``[[rule]]`` tables.

        A top-level ``include_defaults = true`` puts the built-in rules first.

        Raises:
            ConfigError: The file is missing, not TOML, has unknown keys or bad values; the message names the
                file, the rule and the key (with its line when found).
        """
        text, src = _read_config(path)
        return cls.from_dict(_loads(text, src), source=src, text=text)

    @classmethod
    def from_dict(cls, data: Mapping[str, object], *, source: str = "rules", text: str = "") -> Rules:
        """Build rules from parsed TOML (``{"rule": [{...}, ...], "include_defaults": bool}``)."""
        _check_keys(data, {"rule", "include_defaults"}, where="top level", source=source, text=text)
        entries = data.get("rule", [])
        if not isinstance(entries, list):
            raise ConfigError(f"{source}: 'rule' must be an array of tables ([[rule]])", field="rule")
        include = data.get("include_defaults", False)
        if not isinstance(include, bool):
            raise ConfigError(
                f"{source}: include_defaults{_line_hint(text, 'include_defaults')} must be true or false",
                field="include_defaults",
            )
        rules: list[Rule] = list(cls.default()) if include else []
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict):
                raise ConfigError(f"{source}: rule #{i + 1} must be a table", field="rule")
            where = f"rule #{i + 1}" + (f" ({entry['name']!r})" if "name" in entry else "")
            _check_keys(entry, _RULE_KEYS, where=where, source=source, text=text)
            if "name" not in entry:
                raise ConfigError(f"{source}: {where}: missing key 'name'", field="Rule.name")
            try:
                rules.append(Rule(**entry))
            except (ConfigError, TypeError) as exc:
                raise ConfigError(f"{source}: {where}: {exc}", field=getattr(exc, "field", None)) from exc
        return cls(rules, source=source)

    def __iter__(self) -> Iterator[Rule]:
        return iter(self._rules)

    def __len__(self) -> int:
        return len(self._rules)

    def __add__(self, other: Rules) -> Rules:
        return Rules((*self._rules, *other._rules), source=f"{self.source}+{other.source}")

    def __repr__(self) -> str:
        return f"Rules({[r.name for r in self._rules]!r}, source={self.source!r})"

    def classify(self, host: HostView) -> tuple[GroupMatch, ...]:
        """Return every group ``host`` lands in (fallback rules only if no other rule matched)."""
        matches: list[GroupMatch] = []
        for rule in self._rules:
            if rule.fallback:
                continue
            ev = rule.match(host)
            if ev is not None:
                matches.append(GroupMatch(rule.group_name(host), rule.name, rule.medical, ev))
        if not matches:
            for rule in self._rules:
                if not rule.fallback:
                    continue
                ev = rule.match(host)
                if ev is not None:
                    matches.append(
                        GroupMatch(
                            rule.group_name(host), rule.name, rule.medical, (*ev, "matched no other rule")
                        )
                    )
        # One host, one entry per group even if two rules render the same name.
        unique: dict[str, GroupMatch] = {}
        for m in matches:
            unique.setdefault(m.group, m)
        return tuple(unique.values())


# --- alerts -----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Alert:
    """A medical device (by rule or by stored profile) found in a zone that is not a medical one.

    Attributes:
        host: The device's address.
        model: Its stored model key when known, else its discovered model key.
        zone: The zone it was found in.
        zone_kind: That zone's kind ("general", "guest", ...).
        evidence: Why it counts as a medical device and why the zone is wrong.
        first_seen: When the inventory first saw this host (ISO 8601, UTC).
        groups: The groups the host landed in.
    """

    host: str
    model: str
    zone: str
    zone_kind: str
    evidence: tuple[str, ...]
    first_seen: str
    groups: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready dict."""
        return {
            "host": self.host,
            "model": self.model,
            "zone": self.zone,
            "zone_kind": self.zone_kind,
            "evidence": list(self.evidence),
            "first_seen": self.first_seen,
            "groups": list(self.groups),
        }

    def to_json(self) -> str:
        """One line of JSON."""
        return json.dumps(self.to_dict(), sort_keys=True)


def alert_for(host: HostView, matches: Sequence[GroupMatch], *, first_seen: str) -> Alert | None:
    """Decide whether ``host`` is a medical device on a non-medical segment (pure).

    A host alerts when it is in a zone whose kind is not medical and it landed in a medical group or its model
    has a stored profile. Hosts outside every zone do not alert (there is no segment to call wrong).

    Args:
        host: The host.
        matches: The groups it landed in (from :meth:`Rules.classify`).
        first_seen: When the inventory first saw it (ISO 8601).

    Returns:
        An Alert, or None.
    """
    if host.zone_kind is None or host.zone_kind in MEDICAL_KINDS:
        return None
    reasons = [f"in medical group {m.group!r}: " + "; ".join(m.evidence) for m in matches if m.medical]
    if host.known_model is not None and not any(m.medical for m in matches):
        reasons.append(f"model {host.known_model} has a stored fragile profile")
    if not reasons:
        return None
    reasons.append(f"zone {host.zone!r} is of kind {host.zone_kind!r}, not medical")
    return Alert(
        host=host.host,
        model=host.known_model or host.model_key,
        zone=host.zone,
        zone_kind=host.zone_kind,
        evidence=tuple(reasons),
        first_seen=first_seen,
        groups=tuple(m.group for m in matches),
    )


class AlertRecord(Protocol):
    """What the file and webhook sinks need from an alert: a zone :class:`Alert`, or a shield trip."""

    @property
    def host(self) -> str: ...

    def to_json(self) -> str: ...


def log_alert(alert: Alert) -> None:
    """Send an alert to structlog as ``discovery.alert`` (warning level)."""
    log.warning(
        "discovery.alert",
        host=alert.host,
        model=alert.model,
        zone=alert.zone,
        zone_kind=alert.zone_kind,
        groups=list(alert.groups),
        first_seen=alert.first_seen,
        evidence=list(alert.evidence),
    )


class JsonlAlertSink:
    """Append alerts to a JSON-lines file, one object per line, flushed per alert.

    The file is opened for appending once at construction, so a path that cannot be written is a
    ``ConfigError`` before a discovery sends anything, not a crash at its first alert. A write that fails
    later (disk full) is logged as ``discovery.alert_file_failed`` and returned as False, like the webhook:
    the alert is already in the log and the store, and the scan goes on.

    Args:
        path: The file; created if missing, appended to otherwise.

    Raises:
        ConfigError: The file cannot be opened for appending (the message names it and says why).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            with self.path.open("a", encoding="utf-8"):
                pass
        except OSError as exc:
            message = f"alert file {self.path}: cannot append to it: {exc.strerror or exc}"
            raise ConfigError(message, field="alert_file") from exc

    def write(self, alert: AlertRecord) -> bool:
        """Append ``alert``; return False (and log) if the file could not be written."""
        try:
            with self.path.open("a", encoding="utf-8") as fh:
                fh.write(alert.to_json() + "\n")
                fh.flush()
        except OSError as exc:
            log.warning(
                "discovery.alert_file_failed",
                path=str(self.path),
                host=alert.host,
                error=exc.strerror or str(exc),
            )
            return False
        return True


class WebhookAlertSink:
    """POST each alert as JSON to an ``http://`` or ``https://`` URL, bounded in time.

    Failures (refused, timeout, non-2xx) are logged as ``discovery.alert_webhook_failed`` and returned as
    False, never raised: the alert already went to the log and file, and a dead receiver must not stall a
    discovery run.

    Args:
        url: Where to POST.
        timeout_s: Bound for connect, send and response together.

    Raises:
        ConfigError: The URL is not http(s) with a host, or ``timeout_s`` is not positive.
    """

    def __init__(self, url: str, *, timeout_s: float = WEBHOOK_TIMEOUT_S) -> None:
        if not isinstance(url, str) or any(c in url for c in "\r\n\t\0 "):
            raise _validate.fail("webhook_url", "an http:// or https:// URL without spaces", url)
        try:
            parts = urllib.parse.urlsplit(url)
            port = parts.port  # urllib checks the range only when asked, at the first alert: ask now
        except ValueError as exc:
            raise ConfigError(f"webhook_url {url!r}: {exc} (a port is 1-65535)", field="webhook_url") from exc
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise _validate.fail("webhook_url", "an http:// or https:// URL with a host", url)
        if port == 0:
            raise _validate.fail("webhook_url", "a URL whose port is in 1-65535", url)
        self.url = url
        self.timeout_s = _validate.positive("WebhookAlertSink.timeout_s", timeout_s)
        self._parts = parts
        # Alerts that could not be delivered (each logged as discovery.alert_webhook_failed); the scan goes
        # on regardless.
        self.failures = 0

    async def send(self, alert: AlertRecord) -> bool:
        """POST ``alert``; return True on a 2xx answer."""
        import anyio  # local: keeps `import fragileprobe._groups` free of the event-loop library
        import anyio.abc

        p = self._parts
        port = p.port or (443 if p.scheme == "https" else 80)
        path = (p.path or "/") + (f"?{p.query}" if p.query else "")
        body = alert.to_json().encode()
        request = (
            f"POST {path} HTTP/1.1\r\nHost: {p.netloc}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\nUser-Agent: fragileprobe\r\n\r\n"
        ).encode() + body
        status: int | None = None
        try:
            with anyio.fail_after(self.timeout_s):
                stream: anyio.abc.ByteStream
                if p.scheme == "https":
                    stream = await anyio.connect_tcp(p.hostname or "", port, tls=True)
                else:
                    stream = await anyio.connect_tcp(p.hostname or "", port)
                async with stream:
                    await stream.send(request)
                    data = b""
                    while b"\r\n" not in data and len(data) < WEBHOOK_MAX_RESPONSE_BYTES:
                        try:
                            chunk = await stream.receive(WEBHOOK_MAX_RESPONSE_BYTES)
                        except anyio.EndOfStream:
                            break
                        data += chunk
            m = re.match(rb"HTTP/\d\.\d (\d{3})", data)
            status = int(m.group(1)) if m else None
        except (OSError, TimeoutError, anyio.BrokenResourceError, UnicodeError, ValueError) as exc:
            # UnicodeError/ValueError: a host name the resolver's IDNA codec refuses (checked only here).
            self.failures += 1
            log.warning(
                "discovery.alert_webhook_failed",
                url=self.url,
                host=alert.host,
                error=repr(exc),
                failures=self.failures,
            )
            return False
        if status is None or not 200 <= status < 300:
            self.failures += 1
            log.warning(
                "discovery.alert_webhook_failed",
                url=self.url,
                host=alert.host,
                status=status,
                failures=self.failures,
            )
            return False
        return True


# --- TOML helpers -----------------------------------------------------------------------------------------


def _read_config(path: str | Path) -> tuple[str, str]:
    return read_bounded_text(path, max_bytes=MAX_CONFIG_BYTES), str(Path(path))


def _loads(text: str, source: str) -> dict[str, object]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message already says "(at line L, column C)".
        raise ConfigError(f"{source}: TOML syntax error: {exc}") from exc


def _line_hint(text: str, key: str) -> str:
    """`` (line N)`` for the first line that assigns ``key``, or ``""``."""
    m = re.search(rf"^[ \t]*{re.escape(key)}[ \t]*=", text, re.MULTILINE)
    if not m:
        m = re.search(rf"^[ \t]*\[+[ \t]*{re.escape(key)}[ \t]*\]+", text, re.MULTILINE)
    return f" (line {text.count(chr(10), 0, m.start()) + 1})" if m else ""


def _check_keys(
    entry: Mapping[str, object], allowed: Iterable[str], *, where: str, source: str, text: str
) -> None:
    allowed = frozenset(allowed)
    unknown = sorted(k for k in entry if k not in allowed)
    if unknown:
        key = unknown[0]
        close = [a for a in allowed if _similar(key, a)]
        hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(sorted(allowed))}"
        raise ConfigError(f"{source}: {where}: unknown key {key!r}{_line_hint(text, key)}{hint}", field=key)


def _similar(a: str, b: str) -> bool:
    import difflib

    return difflib.SequenceMatcher(None, a, b).ratio() >= 0.75
