"""Discovery's records and constants; the scan itself is ``discover()`` of :mod:`fragileprobe._discovery_run`
(its decisions in :mod:`fragileprobe._discovery_policy`, its settings in
:mod:`fragileprobe._discovery_settings`).

What discovery does to each host, and why:

* Full TCP connects only (the probes module never sends a half-open SYN nor OS-detection packets).
* Every limit is per host: a :class:`~fragileprobe.ConcurrencyLimiter` per host caps the sessions held at
  once (``per_host_sessions``, default 1) and the connect rate (``rate_per_host`` connects/s, default 10,
  below runZero's 40 packets/s per host). Many hosts are worked in parallel (``max_hosts_in_parallel``,
  default: as many as the file-descriptor limit allows, at most 4,096), in shuffled order so no subnet is
  hammered, and all new connections together stay under ``global_rate`` (1,000/s, runZero's total). (nmap's
  ``--max-parallelism`` counts a whole host group, which is why it cannot protect one fragile device.)
* Liveness first (``fragileprobe._hostpolicy``): each address is tried on ``liveness_ports`` likely ports
  before the others; any answer (open or refused) works it on every port, and an address silent on all of
  them costs those few timeouts only. Timeouts follow measured round trips (``fragileprobe._timing``: RFC
  6298, per network and per host, within floors and the given ceilings).
* A host whose model has a stored profile is never probed above that profile's ceiling. A host not yet
  identified is held to the lowest stored ceiling of any model when ``per_host_sessions`` is above it, so
  the rule also holds before the host's model is known.
* On open ports: the banner is read (nothing is sent), except on printer ports 9100-9107, which print what
  they receive, and on ports of protocols where the client speaks first (SMB, RDP, TLS, databases, DICOM,
  HL7): there the probe is connect + close only. Web ports get one bounded ``GET /``.
* A host that stops answering mid-scan (``unresponsive_after`` strikes in a row after it spoke: a connect
  that succeeds and then yields nothing where an answer was due, a web port's ``GET /`` or a banner port) is
  left alone for the rest of the run and reported; nothing is retried harder. A connect that times out on a
  host that answers elsewhere is a filtered port, never a strike. A host that accepts connections but
  answers nothing, with a request timing out (a hung device), is reported the same way. Neither lands in a
  fallback group ("safe to scan"): silence is not evidence.
* UDP: one datagram per UDP port per live host (SNMP sysDescr, NTP, SSDP; ``fragileprobe._udp``), within the
  host's limits; answers become services (``protocol="udp"``) and notes, feeding the OS guess and the groups.
* Each finished host is written to the store at once (asset row, alert, "host done"), so a killed scan
  loses at most the hosts in flight, and ``resume=True`` continues the unfinished scan with the same
  targets and parameters.
"""

from __future__ import annotations

import collections.abc
import contextlib
import datetime as dt
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import structlog

from fragileprobe import _codec as codec
from fragileprobe import _validate
from fragileprobe._fingerprint import ServiceInfo
from fragileprobe._groups import Alert
from fragileprobe._scope import PORT_SETS, Target
from fragileprobe._timing import DEFAULT_GLOBAL_RATE

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "CLIENT_FIRST_PORTS",
    "DEFAULT_DISCOVERY_PORTS",
    "DEFAULT_GLOBAL_RATE",
    "PRINTER_PORTS",
    "WEB_PORTS",
    "Asset",
    "DiscoveryProgress",
    "DiscoveryReport",
    "Move",
    "Unresponsive",
]

log = structlog.get_logger(__name__)

DEFAULT_DISCOVERY_PORTS: Final = PORT_SETS["hospital"]
# Raw print ports (JetDirect/AppSocket, one per printer port on multi-port print servers): whatever arrives
# is printed, so discovery only connects and closes; nmap -sV excludes the same range by default.
PRINTER_PORTS: Final = frozenset(range(9100, 9108))
# Protocols where the client speaks first, so a banner read only holds a session on the device for the whole
# banner timeout and learns nothing: MS-RPC, NetBIOS, SMB, RDP, TLS (443/8443/5986), MS SQL, PostgreSQL,
# DICOM, HL7 MLLP, SNMP over TCP. Discovery connects and closes there (the port's name comes from the
# well-known port table). A speak-first service moved onto one of these ports would go unnamed.
CLIENT_FIRST_PORTS: Final = frozenset(
    {135, 139, 445, 3389, 443, 8443, 5986, 1433, 5432, 104, 11112, 2575, 161}
)
# Ports that get a GET / (plain HTTP). TLS ports (443, 8443) only get a connect and close: a TLS handshake
# is more than discovery needs and more than a fragile stack should be asked for.
WEB_PORTS: Final = frozenset({80, 631, 5985, 8000, 8008, 8080, 8081, 8888})
# Per-host connect rate default: a quarter of runZero's 40 packets/s per host, the gentlest default of the
# scanners we compared (see ANCHORS.md).
DEFAULT_RATE_PER_HOST: Final = 10.0
# Hosts worked at once where the file-descriptor limit cannot be read (not POSIX).
DEFAULT_MAX_HOSTS_IN_PARALLEL: Final = 64
# Most hosts worked at once when sized automatically: at the default global rate (1,000 connects/s) and a
# silent address's two sub-second timeouts, about 2,000 addresses are in flight at once; 4,096 leaves room
# for slow links, and each waiting host costs a task (a few KiB), not a socket.
MAX_HOSTS_IN_PARALLEL: Final = 4096
# Connect bound, the ceiling of the adaptive timeout: a slow embedded stack on a busy ward answers a SYN in
# well under a second.
DEFAULT_CONNECT_TIMEOUT_S: Final = 2.0
# Floor of the adaptive connect timeout: 2.5x the round trip of a hospital's WAN-linked site (~200 ms), plus
# event-loop delay on a loaded 2-core scanner. nmap's floor is 100 ms; a connect scan in Python cannot
# measure that finely under load.
CONNECT_TIMEOUT_FLOOR_S: Final = 0.5
# Connect timeout before any round trip was measured: just under the kernel's first SYN retransmission
# (1 s, RFC 6298's initial RTO), so an unanswered probe is one SYN.
CONNECT_TIMEOUT_INITIAL_S: Final = 0.9
# Banner wait ceiling: speak-first services greet within ~100 ms; silent ports (SMB, RDP, TLS) cost this much
# each, so it is kept short.
DEFAULT_BANNER_TIMEOUT_S: Final = 1.5
# Floor of the adaptive banner wait: the slowest emulated device answers in ~30 ms at one session, a busy
# embedded stack in ~100 ms; 0.5 s is 5x that.
BANNER_TIMEOUT_FLOOR_S: Final = 0.5
# Consecutive connect timeouts, after the host had answered, that mark it unresponsive for this run.
DEFAULT_UNRESPONSIVE_AFTER: Final = 3
# Body bytes kept from GET / (the <title> sits in the first few hundred bytes).
HTTP_BODY_BYTES: Final = 4096


# --- records ----------------------------------------------------------------------------------------------


def _iso(ts_s: float) -> str:
    return dt.datetime.fromtimestamp(ts_s, tz=dt.UTC).isoformat(timespec="seconds")


@dataclass(frozen=True, slots=True)
class Asset:
    """One host discovery found (at least one open port).

    Attributes:
        host: The address.
        open_ports: Open TCP ports, ascending.
        services: What each open port revealed.
        os_family: OS family guess ("generic unix", "windows", "embedded", "unknown").
        os_evidence: What the guess rests on.
        zone: The zone holding the host, or "unzoned".
        zone_kind: That zone's kind, or None when unzoned.
        model_key: The model key from what the host showed (see ``fragileprobe.model_key``).
        known_model: The stored profile's model key when the model has one, else None.
        ceiling: That profile's safe session ceiling, else None.
        groups: The asset groups the host landed in.
        first_seen_s: When the inventory first saw the host (Unix time).
        last_seen_s: When this scan finished the host (Unix time).
        sessions_limit: The per-host session cap this scan used for the host.
        notes: Anything worth knowing (a raw-probe note, a profile-ceiling cap).
        medical: The host landed in a medical group or its model has a stored profile.
    """

    host: str
    open_ports: tuple[int, ...]
    services: tuple[ServiceInfo, ...]
    os_family: str
    os_evidence: tuple[str, ...]
    zone: str
    zone_kind: str | None
    model_key: str
    known_model: str | None = None
    ceiling: int | None = None
    groups: tuple[str, ...] = ()
    first_seen_s: float = 0.0
    last_seen_s: float = 0.0
    sessions_limit: int = 1
    notes: tuple[str, ...] = ()
    medical: bool = False

    def service(self, port: int) -> ServiceInfo | None:
        """The ServiceInfo of ``port``, or None."""
        return next((s for s in self.services if s.port == port), None)

    def target(self, *, name: str | None = None) -> Target:
        """A characterization Target for this host: its open ports, heartbeat on its web port.

        Building the Target from the Asset keeps the open-port set, and so the model key, the same in
        discovery and characterization.
        """
        from fragileprobe._heartbeat import HttpHeartbeat, TcpHeartbeat

        web = [s.port for s in self.services if s.service == "http" and s.port not in PRINTER_PORTS]
        heartbeat: Any
        if 8080 in web:
            heartbeat = HttpHeartbeat(port=8080)
        elif web:
            heartbeat = HttpHeartbeat(port=web[0])
        else:
            tcp = [p for p in self.open_ports if p not in PRINTER_PORTS]
            heartbeat = TcpHeartbeat(port=tcp[0] if tcp else self.open_ports[0])
        return Target(self.host, ports=self.open_ports, heartbeat=heartbeat, name=name)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; ``first_seen_s``/``last_seen_s`` are written as ISO 8601 ``first_seen``/
        ``last_seen`` (to the second)."""
        return _ASSETS.encode(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Asset:
        """Rebuild from :meth:`to_dict` output (times to the second).

        Raises:
            ConfigError: A value of the wrong type or a missing key (``field`` names it).
        """
        return _ASSETS.decode(data)


@dataclass(frozen=True, slots=True)
class Unresponsive:
    """A host that stopped answering during the scan and was left alone.

    Attributes:
        host: The address.
        answered_ports: Ports that had answered before it went quiet.
        reason: What was seen ("3 consecutive connect timeouts after answering").
    """

    host: str
    answered_ports: tuple[int, ...]
    reason: str


@dataclass(frozen=True, slots=True)
class Move:
    """A host found in another zone than on its previous sighting."""

    host: str
    from_zone: str | None
    to_zone: str


@dataclass(frozen=True, slots=True)
class DiscoveryProgress:
    """Passed to the progress callback after each address.

    Attributes:
        hosts_done: Addresses finished (silent ones included).
        hosts_total: Addresses this call works.
        assets_found: Hosts with an open port so far.
        alerts: Alerts raised so far.
        host: The address just finished.
        hosts_alive: Addresses that answered (open or refused) so far.
        hosts_silent: Addresses skipped because no liveness port answered.
        probes_sent: Connects and datagrams sent so far.
        elapsed_s: Seconds since the call started.
        eta_s: Estimated seconds left (``_discovery_policy.estimate_remaining_s``), None at first.
    """

    hosts_done: int
    hosts_total: int
    assets_found: int
    alerts: int
    host: str
    hosts_alive: int = 0
    hosts_silent: int = 0
    probes_sent: int = 0
    elapsed_s: float = 0.0
    eta_s: float | None = None


@dataclass(frozen=True, slots=True)
class DiscoveryReport:
    """What a discovery run found.

    Attributes:
        assets: Every host with an open port, by address.
        groups: Group name -> assets in it (a host may be in several).
        alerts: Medical devices on non-medical segments (one per host per run).
        unresponsive: Hosts that stopped answering mid-scan and were left alone.
        new: Hosts seen for the first time (empty without a store).
        gone: Hosts of the inventory, among this run's targets, that showed no open port this time.
        moved: Hosts whose zone differs from their previous sighting.
        hosts_scanned: Target addresses probed by this call.
        hosts_resumed: Target addresses skipped because the resumed scan had already done them.
        wall_time_s: Duration of this call.
        scan_id: The store's scan id, or None without a store.
        notes: Things worth knowing that are not errors (e.g. raw probes unavailable).
        params: The parameters the scan ran with.
        icmp_only: With ``raw=True``: addresses without an open port that answered ICMP echo.
        hosts_alive: Addresses that answered on some port (open or refused), this call.
        probes_sent: Connects and datagrams sent by this call.
        max_hosts_in_parallel: Hosts worked at once (sized from the file-descriptor budget by default).
        global_rate: The run's total connect rate (connects and datagrams per second).
    """

    assets: tuple[Asset, ...]
    groups: Mapping[str, list[Asset]]
    alerts: tuple[Alert, ...]
    unresponsive: tuple[Unresponsive, ...]
    new: tuple[str, ...]
    gone: tuple[str, ...]
    moved: tuple[Move, ...]
    hosts_scanned: int
    hosts_resumed: int
    wall_time_s: float
    scan_id: int | None = None
    notes: tuple[str, ...] = ()
    params: Mapping[str, Any] = field(default_factory=dict)
    icmp_only: tuple[str, ...] = ()
    hosts_alive: int = 0
    probes_sent: int = 0
    max_hosts_in_parallel: int = 0
    global_rate: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: the fields, each group as the host names of its assets."""
        return _REPORTS.encode(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DiscoveryReport:
        """Rebuild from :meth:`to_dict` output (a group's hosts become its assets again).

        Raises:
            ConfigError: A value of the wrong type, a missing key, or a group naming a host that is not an
                asset (``field`` names it).
        """
        return _REPORTS.decode(data)

    def to_json(self, *, indent: int | None = 2) -> str:
        """The report as JSON."""
        return json.dumps(self.to_dict(), indent=indent, default=str)

    def to_dataframe(self) -> Any:
        """One row per asset (pandas is imported here, lazily; needs ``fragileprobe[report]``).

        Columns: one per field of :class:`Asset` in field order (lists joined: ports with ``,``, groups,
        evidence and notes with ``; ``; services as ``port/service product``), then ``alert`` (the host
        raised one in this run).
        """
        alerted = {al.host for al in self.alerts}
        rows = ({**_ASSETS.row(a), "alert": a.host in alerted} for a in self.assets)
        return codec.dataframe(rows, (*_ASSETS.columns(), "alert"))

    def _repr_html_(self) -> str:
        """A readable summary in Jupyter, drawn by the report layer.

        Jupyter's display protocol looks this method up on the object, so it stays here; it is one of the
        layering test's allowed upward imports.
        """
        from fragileprobe._report import discovery_repr_html

        return discovery_repr_html(self)

    def summary(self) -> str:
        """A few lines for people."""
        lines = [
            f"discovery: {len(self.assets)} assets on {self.hosts_scanned + self.hosts_resumed} addresses "
            f"in {self.wall_time_s:.1f} s"
            + (f" ({self.hosts_resumed} done before resume)" if self.hosts_resumed else "")
            + (f"; {self.hosts_alive} answered, {self.probes_sent} probes" if self.probes_sent else ""),
        ]
        for group, members in sorted(self.groups.items()):
            lines.append(f"  {group}: {len(members)}")
        if self.alerts:
            lines.append(f"alerts: {len(self.alerts)}")
            lines.extend(f"  {a.host} ({a.model}) in zone {a.zone} [{a.zone_kind}]" for a in self.alerts)
        if self.unresponsive:
            lines.append("stopped answering, left alone: " + ", ".join(u.host for u in self.unresponsive))
        if self.new or self.gone or self.moved:
            lines.append(f"inventory: {len(self.new)} new, {len(self.gone)} gone, {len(self.moved)} moved")
            lines.extend(f"  moved {m.host}: {m.from_zone} -> {m.to_zone}" for m in self.moved)
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)


# --- the codecs: the JSON layout and the DataFrame columns, from the fields -------------------------------


def _decode_iso(value: Any, path: str) -> float:
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            when = dt.datetime.fromisoformat(value)
            if when.tzinfo is not None:
                return when.timestamp()
    raise _validate.fail(path, "an ISO 8601 time with its offset", value)


def _services_cell(services: tuple[ServiceInfo, ...]) -> str:
    return ", ".join(f"{s.port}/{s.service}" + (f" {s.product}" if s.product else "") for s in services)


def _decode_groups(value: Any, path: str) -> dict[str, list[str]]:
    """A group -> host names object (the assets are put in by :func:`_resolve_groups`)."""
    groups = codec.JSON_OBJECT.decode(value, path)
    hosts = codec.tuple_of(codec.STR)
    return {g: list(hosts.decode(members, f"{path}.{g}")) for g, members in groups.items()}


def _resolve_groups(values: dict[str, Any], path: str) -> dict[str, Any]:
    by_host = {a.host: a for a in values["assets"]}
    groups: dict[str, list[Asset]] = {}
    for group, hosts in values["groups"].items():
        for i, host in enumerate(hosts):
            if host not in by_host:
                where = f"{path}.groups.{group}[{i}]" if path else f"groups.{group}[{i}]"
                raise _validate.fail(where, "the host of an asset of the report", host)
        groups[group] = [by_host[h] for h in hosts]
    return {**values, "groups": groups}


_ISO_TIME: Final = codec.Conv(encode=_iso, decode=_decode_iso)
# ServiceInfo.to_dict() leaves out a TCP service's protocol; the codec writes the same layout.
_SERVICES: Final = codec.Codec(
    ServiceInfo, label="service", fields={"protocol": codec.Field(omit_default=True)}
)
_ALERTS: Final = codec.Codec(Alert, label="alert")
_ASSETS: Final = codec.Codec(
    Asset,
    label="asset",
    fields={
        "services": codec.Field(cell=_services_cell),
        "os_evidence": codec.Field(cell="; ".join),
        "groups": codec.Field(cell="; ".join),
        "notes": codec.Field(cell="; ".join),
        "first_seen_s": codec.Field(key="first_seen", conv=_ISO_TIME),
        "last_seen_s": codec.Field(key="last_seen", conv=_ISO_TIME),
    },
)
_UNRESPONSIVE: Final = codec.Codec(Unresponsive, label="unresponsive host")
_MOVES: Final = codec.Codec(Move, label="move")
_REPORTS: Final = codec.Codec(
    DiscoveryReport,
    label="discovery report",
    fields={
        "groups": codec.Field(
            conv=codec.Conv(
                encode=lambda groups: {g: [a.host for a in members] for g, members in groups.items()},
                decode=_decode_groups,
            )
        ),
        "params": codec.Field(conv=codec.JSON_OBJECT),
    },
    resolve=_resolve_groups,
    localns={"Mapping": collections.abc.Mapping},
)
