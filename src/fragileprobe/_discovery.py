"""discover(): a slow, gentle discovery scan that sorts every host into asset groups.

What it does to each host, and why:

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
import dataclasses
import datetime as dt
import json
import math
import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import anyio
import structlog

from fragileprobe import _codec as codec
from fragileprobe import _validate
from fragileprobe._errors import ConfigError, FragileProbeError, RawUnavailableError
from fragileprobe._fingerprint import (
    ServiceInfo,
    fingerprint_http,
    fingerprint_service,
    guess_os,
    model_key,
    model_key_digest,
    model_server_header,
)
from fragileprobe._groups import (
    UNZONED,
    Alert,
    GroupMatch,
    JsonlAlertSink,
    Rules,
    WebhookAlertSink,
    Zones,
    alert_for,
    log_alert,
)
from fragileprobe._hostpolicy import (
    DEFAULT_LIVENESS_PORTS,
    HostPolicy,
    LivenessPlanner,
    ProbeKind,
    classify,
)
from fragileprobe._limiter import ConcurrencyLimiter
from fragileprobe._probes import (
    FD_HEADROOM,
    HttpResult,
    Outcome,
    ProbeResult,
    check_socket_budget,
    grab_banner,
    http_get,
    tcp_connect,
)
from fragileprobe._progress import estimate_remaining_s
from fragileprobe._scope import PORT_SETS, Target, parse_ports, parse_targets
from fragileprobe._sessions import DISCOVERY_LINGER_S, DeviceSessions, SessionPool, check_linger
from fragileprobe._timing import (
    BANNER_SERVICE_ALLOWANCE_S,
    DEFAULT_GLOBAL_RATE,
    PRIORITY_FIRST_LOOK,
    PRIORITY_LIVE,
    PRIORITY_LOOK_AGAIN,
    GlobalPacer,
    RttEstimator,
    TimeoutBounds,
)
from fragileprobe._udp import (
    DEFAULT_SNMP_COMMUNITY,
    DEFAULT_UDP_PORTS,
    UDP_PROBES,
    UdpResult,
    check_community,
    fingerprint_udp,
    udp_probe,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
    from pathlib import Path

    from fragileprobe._net import Network
    from fragileprobe._scope import Scope
    from fragileprobe._store import AssetRow, ProfileStore

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
    "discover",
    "discover_sync",
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
        eta_s: Estimated seconds left (see ``fragileprobe._progress.estimate_remaining_s``), None at first.
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
        "groups": codec.Field(conv=codec.Conv(
            encode=lambda groups: {g: [a.host for a in members] for g, members in groups.items()},
            decode=_decode_groups,
        )),
        "params": codec.Field(conv=codec.JSON_OBJECT),
    },
    resolve=_resolve_groups,
    localns={"Mapping": collections.abc.Mapping},
)


# --- the driver -------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _Settings:
    ports: tuple[int, ...]
    per_host_sessions: int
    rate_per_host: float
    connect_bounds: TimeoutBounds
    banner_bounds: TimeoutBounds
    adaptive: bool
    unresponsive_after: int
    port_aliases: Mapping[int, int]
    udp_ports: tuple[int, ...]
    snmp_community: str
    linger_s: float = DISCOVERY_LINGER_S
    network: Network | None = None


@dataclass(slots=True)
class _Run:
    """What the hosts of one run share: the global pacer, the network RTT, the liveness planner, counters."""

    settings: _Settings
    pacer: GlobalPacer
    planner: LivenessPlanner
    network_rtt: RttEstimator = field(default_factory=RttEstimator)
    probes: int = 0
    probes_done: int = 0  # probes of the hosts already finished
    alive: int = 0
    silent: int = 0
    peak_hosts_in_flight: int = 0
    hosts_in_flight: int = 0
    unreachable: int = 0  # probes the local stack or a router refused (no route, no free port, no file)
    unreachable_error: str | None = None


def _positive(name: str, value: float, *, integer: bool = False) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    if not ok or (integer and not isinstance(value, int)):
        kind = "a positive integer" if integer else "a positive number"
        raise ConfigError(f"{name} must be {kind}, got {value!r}")
    return value


def auto_hosts_in_parallel(hosts: int, per_host_sessions: int) -> int:
    """Hosts worked at once when not given: as many as the file-descriptor budget allows, at most
    :data:`MAX_HOSTS_IN_PARALLEL` and never more than there are hosts.

    Each host holds at most ``per_host_sessions`` sockets; :data:`~fragileprobe._probes.FD_HEADROOM`
    descriptors stay free for everything else (the store, logs, the event loop).
    """
    try:
        import resource

        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except ImportError:  # pragma: no cover - not POSIX
        soft = DEFAULT_MAX_HOSTS_IN_PARALLEL + FD_HEADROOM
    budget = MAX_HOSTS_IN_PARALLEL if soft == getattr(resource, "RLIM_INFINITY", -1) else (
        (soft - FD_HEADROOM) // per_host_sessions)
    return max(1, min(hosts, MAX_HOSTS_IN_PARALLEL, budget))


async def discover(
    targets: str | Iterable[str],
    *,
    scope: Scope,
    ports: str | int | Iterable[int | str] = DEFAULT_DISCOVERY_PORTS,
    zones: Zones | None = None,
    rules: Rules | None = None,
    store: ProfileStore | None = None,
    per_host_sessions: int = 1,
    rate_per_host: float = DEFAULT_RATE_PER_HOST,
    max_hosts_in_parallel: int | None = None,
    global_rate: float = DEFAULT_GLOBAL_RATE,
    liveness_ports: int = DEFAULT_LIVENESS_PORTS,
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
    banner_timeout_s: float = DEFAULT_BANNER_TIMEOUT_S,
    adaptive_timeouts: bool = True,
    unresponsive_after: int = DEFAULT_UNRESPONSIVE_AFTER,
    udp_ports: str | int | Iterable[int | str] = DEFAULT_UDP_PORTS,
    snmp_community: str = DEFAULT_SNMP_COMMUNITY,
    resume: bool = False,
    seed: int | None = None,
    alert_file: str | Path | None = None,
    webhook_url: str | None = None,
    progress: Callable[[DiscoveryProgress], None] | None = None,
    raw: bool = False,
    port_aliases: Mapping[int, int] | None = None,
    linger_s: float = DISCOVERY_LINGER_S,
    network: Network | None = None,
) -> DiscoveryReport:
    """Find the hosts among ``targets``, fingerprint them, group them and alert on misplaced devices.

    Args:
        targets: Target spec (``"10.1.0.0/24"``, ranges, lists); every address must lie inside ``scope``.
        scope: The authorized scope; targets outside raise ScopeError before anything is sent.
        ports: TCP ports to look at (a port spec; default the "hospital" set).
        zones: Network zones (default: none, every host "unzoned", no alerts).
        rules: Group rules (default ``Rules.default()``).
        store: ProfileStore for stored ceilings, the inventory and resume (default: none).
        per_host_sessions: Sessions held at once per host (default 1).
        rate_per_host: Connects (and datagrams) per second per host (default 10).
        max_hosts_in_parallel: Hosts worked at once (default: as many as the file-descriptor budget
            allows, at most 4,096); each stays within its own limits.
        global_rate: New connections (and datagrams) per second for the whole run (default 1,000, runZero's
            total rate).
        liveness_ports: Ports tried on an address before the rest (default 2); an address silent on all of
            them (every connect timed out) is skipped. 0 probes every port of every address.
        connect_timeout_s: Ceiling of the adaptive connect timeout (the fixed timeout without adaptation).
        banner_timeout_s: Ceiling of the adaptive wait for a banner or an HTTP answer.
        adaptive_timeouts: Follow measured round-trip times within floors and ceilings (default); False
            uses the two ceilings as fixed timeouts.
        unresponsive_after: Strikes in a row, after the host spoke, that make it left alone (see
            ``fragileprobe._hostpolicy``).
        udp_ports: UDP ports that get one datagram on each live host (SNMP 161, NTP 123, SSDP 1900 by
            default; ``()`` for none).
        snmp_community: The SNMP v2c community of the sysDescr request (default "public").
        resume: Continue the latest unfinished scan with the same targets and parameters (needs a store).
        seed: Seed for the host order shuffle (default: random).
        alert_file: JSON-lines file that alerts are appended to.
        webhook_url: URL each alert is POSTed to (bounded timeout; failures logged, not raised).
        progress: Called after each address with a DiscoveryProgress.
        raw: Also use the raw-packet extras (ICMP, passive OS hint) when available; else a note.
        port_aliases: Bound port -> well-known port, for services on non-standard ports (hints only).
        linger_s: Most seconds a session stays counted against its host after our close while the device
            has not closed its side (default 1 s: ``per_host_sessions`` counts sessions on the device's
            side, until it let go; see docs/guarantees.md).
        network: How connections are made (default: real sockets; ``fragileprobe.testing.FakeNetwork``).

    Returns:
        A DiscoveryReport.

    Raises:
        ConfigError: A bad parameter (named) or ``resume`` without a store.
        ScopeError: A target outside ``scope``; nothing was sent.
        StoreError: The store cannot be read or written.
    """
    started = time.monotonic()
    hosts = parse_targets(targets, scope=scope)
    try:
        port_list = parse_ports(ports)
    except ConfigError as exc:
        raise ConfigError(f"ports: {exc}") from exc
    try:
        udp_list = parse_ports(udp_ports) if udp_ports not in ((), [], "") else ()
    except ConfigError as exc:
        raise ConfigError(f"udp_ports: {exc}") from exc
    unknown_udp = [p for p in udp_list if p not in UDP_PROBES]
    if unknown_udp:
        raise ConfigError(f"udp_ports: no UDP probe is known for {unknown_udp} (known: {sorted(UDP_PROBES)})")
    _positive("per_host_sessions", per_host_sessions, integer=True)
    _positive("rate_per_host", rate_per_host)
    if max_hosts_in_parallel is not None:
        _positive("max_hosts_in_parallel", max_hosts_in_parallel, integer=True)
    _positive("global_rate", global_rate)
    if isinstance(liveness_ports, bool) or not isinstance(liveness_ports, int) or liveness_ports < 0:
        raise ConfigError(f"liveness_ports must be an integer of at least 0, got {liveness_ports!r}")
    _positive("connect_timeout_s", connect_timeout_s)
    _positive("banner_timeout_s", banner_timeout_s)
    _positive("unresponsive_after", unresponsive_after, integer=True)
    check_community(snmp_community)
    parallel = (max_hosts_in_parallel if max_hosts_in_parallel is not None
                else auto_hosts_in_parallel(len(hosts), per_host_sessions))
    check_socket_budget(
        min(len(hosts), parallel) * per_host_sessions,
        f"max_hosts_in_parallel x per_host_sessions ({min(len(hosts), parallel)} x {per_host_sessions})",
    )
    if resume and store is None:
        raise ConfigError("resume=True needs a store (the unfinished scan is kept there)")
    if zones is not None and not isinstance(zones, Zones):
        raise ConfigError(f"zones must be a Zones object, got {type(zones).__name__}")
    rules = Rules.default() if rules is None else rules
    if not isinstance(rules, Rules):
        raise ConfigError(f"rules must be a Rules object, got {type(rules).__name__}")
    aliases = dict(port_aliases or {})
    # The webhook first: it only checks its URL, while the alert file is created when it is opened, and
    # nothing may be created before every input that would use it has been validated.
    webhook = WebhookAlertSink(webhook_url) if webhook_url is not None else None
    sinks_file = JsonlAlertSink(alert_file) if alert_file is not None else None
    connect_t, banner_t = float(connect_timeout_s), float(banner_timeout_s)
    settings = _Settings(
        ports=port_list, per_host_sessions=per_host_sessions, rate_per_host=float(rate_per_host),
        connect_bounds=TimeoutBounds(floor_s=min(CONNECT_TIMEOUT_FLOOR_S, connect_t), ceiling_s=connect_t,
                                     initial_s=min(CONNECT_TIMEOUT_INITIAL_S, connect_t)),
        banner_bounds=TimeoutBounds(floor_s=min(BANNER_TIMEOUT_FLOOR_S, banner_t), ceiling_s=banner_t,
                                    initial_s=banner_t),
        adaptive=bool(adaptive_timeouts), unresponsive_after=unresponsive_after, port_aliases=aliases,
        udp_ports=udp_list, snmp_community=snmp_community, linger_s=check_linger(linger_s), network=network,
    )
    params = {
        "ports": list(port_list), "per_host_sessions": per_host_sessions, "rate_per_host": rate_per_host,
        "connect_timeout_s": connect_timeout_s, "banner_timeout_s": banner_timeout_s,
        "unresponsive_after": unresponsive_after, "udp_ports": list(udp_list),
        "liveness_ports": liveness_ports, "adaptive_timeouts": bool(adaptive_timeouts),
    }
    notes: list[str] = []
    raw_ok = False
    if raw:
        raw_ok, why = _raw_status()
        if not raw_ok:
            notes.append(f"raw extras (ICMP, passive OS hint) skipped: {why}")

    # --- what the store already knows ---
    profiles: dict[str, tuple[str, int | None]] = {}
    prior: dict[str, AssetRow] = {}
    scan_id: int | None = None
    done_before: set[str] = set()
    if store is not None:
        for profile in await anyio.to_thread.run_sync(store.profiles):
            profiles[model_key_digest(profile.model_key)] = (profile.model_key, profile.ceiling)
        prior = {a.host: a for a in await anyio.to_thread.run_sync(store.assets)}
        if resume:
            unfinished = await anyio.to_thread.run_sync(store.unfinished_scan, hosts, params)
            if unfinished is not None:
                scan_id = unfinished.scan_id
                done_before = await anyio.to_thread.run_sync(store.hosts_done, scan_id)
                notes.append(f"resumed scan {scan_id}: {len(done_before)} hosts were already done")
            else:
                notes.append("resume=True but no unfinished scan with these targets and parameters: "
                             "started a new one")
        if scan_id is None:
            scan_id = await anyio.to_thread.run_sync(store.start_scan, hosts, params)
    stored_ceilings = [c if c is not None else 1 for _, c in profiles.values()]
    floor = min(stored_ceilings) if stored_ceilings else None

    todo = [h for h in hosts if h not in done_before]
    random.Random(seed).shuffle(todo)
    run = _Run(settings=settings, pacer=GlobalPacer(global_rate),
               planner=LivenessPlanner(port_list, count=liveness_ports, hints=aliases))
    assets: dict[str, Asset] = {}
    alerts: dict[str, Alert] = {}
    unresponsive: list[Unresponsive] = []
    state = {"done": 0}
    log.info("discovery.start", hosts=len(hosts), todo=len(todo), ports=len(port_list), scan_id=scan_id,
             per_host_sessions=per_host_sessions, rate_per_host=rate_per_host,
             max_hosts_in_parallel=parallel, global_rate=global_rate, liveness_ports=liveness_ports)

    async def finish_host(host: str, asset: Asset | None, matches: Sequence[GroupMatch]) -> None:
        if asset is not None:
            assets[host] = asset
            if store is not None:
                await anyio.to_thread.run_sync(_store_asset, store, scan_id, asset)
            first_seen = prior[host].first_seen_s if host in prior else asset.first_seen_s
            alert = alert_for(asset, matches, first_seen=_iso(first_seen)) if host not in alerts else None
            if alert is not None:
                alerts[host] = alert
                log_alert(alert)
                if sinks_file is not None:
                    await anyio.to_thread.run_sync(sinks_file.write, alert)
                if store is not None:
                    record = {**alert.to_dict(), "scan_id": scan_id}
                    await anyio.to_thread.run_sync(store.record_alert, record)
                if webhook is not None:
                    await webhook.send(alert)
        if store is not None and scan_id is not None:
            await anyio.to_thread.run_sync(store.mark_host_done, scan_id, host)
        state["done"] += 1
        if progress is not None:
            elapsed = time.monotonic() - started
            progress(DiscoveryProgress(
                hosts_done=state["done"], hosts_total=len(todo), assets_found=len(assets), alerts=len(alerts),
                host=host, hosts_alive=run.alive, hosts_silent=run.silent, probes_sent=run.probes,
                elapsed_s=elapsed,
                eta_s=estimate_remaining_s(
                    done=state["done"], total=len(todo), elapsed_s=elapsed, probes_done=run.probes_done,
                    probes_sent=run.probes, rate_per_s=global_rate, in_flight=min(parallel, len(todo)),
                    tail_s=2 * run.network_rtt.timeout_s(settings.connect_bounds),
                ),
            ))

    queue = iter(todo)

    async def worker() -> None:
        for host in queue:  # shared iterator: each host is taken by exactly one worker
            run.hosts_in_flight += 1
            run.peak_hosts_in_flight = max(run.peak_hosts_in_flight, run.hosts_in_flight)
            try:
                await _work_host(host, run, prior.get(host), profiles, floor, zones, rules, unresponsive,
                                 finish_host)
            finally:
                run.hosts_in_flight -= 1

    observer: Any = None
    async with contextlib.AsyncExitStack() as stack:
        if raw_ok and todo:
            from fragileprobe._raw import syn_ack_observer

            try:
                # Watches the SYN-ACKs our own full connects receive; sends nothing.
                observer = await stack.enter_async_context(syn_ack_observer(todo))
            except RawUnavailableError as exc:
                notes.append(f"passive OS hint skipped: {exc}")
        try:
            async with anyio.create_task_group() as outer:
                outer.start_soon(run.pacer.run)
                async with anyio.create_task_group() as tg:
                    for _ in range(min(parallel, max(len(todo), 1))):
                        tg.start_soon(worker)
                outer.cancel_scope.cancel()  # every host is done: stop the pacer
        except ExceptionGroup as group:
            # A worker failed (the store could not be written, a progress callback raised): surface our
            # own error as itself rather than wrapped in the task group's ExceptionGroup.
            own = _first_own_error(group)
            if own is None:
                raise
            raise own from group
    if webhook is not None and webhook.failures:
        notes.append(f"{webhook.failures} alert(s) could not be delivered to the webhook {webhook.url} "
                     "(logged as discovery.alert_webhook_failed; they are in the log, the store and the "
                     "alert file)")
    if run.unreachable:
        # Not silence: the probe never reached the address (or a router refused it). An address whose
        # liveness probes all failed so is counted silent, so say it.
        notes.append(f"{run.unreachable} probe(s) could not reach their address ({run.unreachable_error}); "
                     "addresses whose every liveness probe failed so were skipped as silent")
    if observer is not None:
        _apply_os_hints(assets, observer.hints())
    icmp_only: tuple[str, ...] = ()
    if raw_ok:
        icmp_only = await _icmp_sweep([h for h in todo if h not in assets], scope, parallel, notes)

    # Assets finished by the interrupted part of a resumed scan come back from the store.
    if store is not None and done_before:
        for row in await anyio.to_thread.run_sync(store.assets):
            if row.host in done_before and row.scan_id == scan_id and row.host not in assets:
                assets[row.host] = _asset_from_row(row, profiles, zones)
        for stored_alert in await anyio.to_thread.run_sync(store.alerts):
            h = stored_alert.get("host")
            if stored_alert.get("scan_id") == scan_id and isinstance(h, str) and h not in alerts:
                alerts[h] = _alert_from_dict(stored_alert)
    if store is not None and scan_id is not None:
        await anyio.to_thread.run_sync(store.finish_scan, scan_id)

    ordered = tuple(sorted(assets.values(), key=lambda a: _addr_key(a.host)))
    groups: dict[str, list[Asset]] = {}
    for a in ordered:
        for g in a.groups:
            groups.setdefault(g, []).append(a)
    new, gone, moved = _inventory_changes(hosts, ordered, prior, scan_id)
    report = DiscoveryReport(
        assets=ordered, groups=groups,
        alerts=tuple(sorted(alerts.values(), key=lambda a: _addr_key(a.host))),
        unresponsive=tuple(sorted(unresponsive, key=lambda u: _addr_key(u.host))),
        new=new, gone=gone, moved=moved, icmp_only=icmp_only, hosts_scanned=len(todo),
        hosts_resumed=len(done_before),
        wall_time_s=time.monotonic() - started, scan_id=scan_id, notes=tuple(notes), params=params,
        hosts_alive=run.alive, probes_sent=run.probes, max_hosts_in_parallel=parallel,
        global_rate=float(global_rate),
    )
    log.info("discovery.done", assets=len(ordered), alerts=len(report.alerts),
             unresponsive=len(report.unresponsive), wall_time_s=round(report.wall_time_s, 3),
             hosts_alive=run.alive, probes_sent=run.probes, peak_hosts_in_flight=run.peak_hosts_in_flight)
    return report


def discover_sync(targets: str | Iterable[str], **kwargs: Any) -> DiscoveryReport:
    """Run :func:`discover` from synchronous code (also inside a running notebook loop)."""
    import importlib

    run_sync = importlib.import_module("fragileprobe._sync").run_sync
    result: DiscoveryReport = run_sync(discover, targets, **kwargs)
    return result


# --- per host ---------------------------------------------------------------------------------------------

def _session_limit(
    prior_row: AssetRow | None, per_host_sessions: int, profiles: Mapping[str, tuple[str, int | None]],
    floor: int | None,
) -> tuple[int, tuple[str, int | None] | None]:
    """The host's session cap: its model's stored ceiling, else the lowest stored ceiling (pure)."""
    limit = per_host_sessions
    known = _known_from_inventory(prior_row, profiles)
    if known is not None and known[1] is not None:
        limit = min(limit, known[1])
    elif floor is not None:
        # One session at a time is the gentlest a discovery can be, even under a stored ceiling of 0.
        limit = min(limit, max(1, floor))
    return limit, known


def _spoke_before(row: AssetRow | None) -> frozenset[int]:
    """Ports that said something on the previous sighting (a product, a banner detail, a web answer)."""
    if row is None or not isinstance(row.services, list):
        return frozenset()
    out = set()
    for d in row.services:
        if isinstance(d, dict) and any(d.get(k) for k in ("product", "version", "detail", "title", "server")):
            port = d.get("port")
            if isinstance(port, int) and not isinstance(port, bool):
                out.add(port)
    return frozenset(out)


async def _work_host(
    host: str,
    run: _Run,
    prior_row: AssetRow | None,
    profiles: Mapping[str, tuple[str, int | None]],
    floor: int | None,
    zones: Zones | None,
    rules: Rules,
    unresponsive: list[Unresponsive],
    finish_host: Callable[[str, Asset | None, Sequence[GroupMatch]], Awaitable[None]],
) -> None:
    """Probe one host under its own limits, decide what it is, and hand the result to ``finish_host``."""
    s = run.settings
    limit, known = _session_limit(prior_row, s.per_host_sessions, profiles, floor)
    if limit < 1 and prior_row is not None and known is not None:
        # The host's model failed at its lowest measured level (stored ceiling 0): not even one
        # session. Report what the inventory knows and leave the host alone.
        kept = _asset_from_row(prior_row, profiles, zones)
        kept = dataclasses.replace(kept, sessions_limit=0,
                                   notes=(f"stored profile {known[0]} has ceiling 0: not probed",))
        log.warning("discovery.host_left_alone", host=host, model_key=known[0], ceiling=0)
        await finish_host(host, kept, ())
        return
    policy = HostPolicy(ports=s.ports, liveness=run.planner.plan(), unresponsive_after=s.unresponsive_after,
                        spoke_before=_spoke_before(prior_row))
    try:
        results, udp = await _probe_host(host, run, limit, policy)
    except Exception as exc:
        # Our own code failed on this host's bytes: a result about this host (given up on, never "safe to
        # scan"), never the end of the scan.
        reason = _host_failed(host, "probing", exc)
        unresponsive.append(Unresponsive(host, tuple(sorted(policy.answered)), reason))
        await finish_host(host, None, ())
        return
    run.probes_done += len(results) + len(udp)
    if not policy.alive:
        run.silent += 1
        await finish_host(host, None, ())
        return
    run.alive += 1
    if policy.hung_without_a_word():
        # Accepted connections, answered nothing, and a request (GET /, a banner port) went unanswered: a
        # hung device looks exactly like this. Never call it "safe to scan" on no evidence.
        policy.gave_up = ("accepted connections but answered on no port (a request timed out): hung, "
                          "or every service is silent")
    if policy.gave_up is not None:
        unresponsive.append(Unresponsive(host, tuple(sorted(policy.answered)), policy.gave_up))
        log.warning("discovery.host_unresponsive", host=host, reason=policy.gave_up)
    try:
        asset, matches = _build_asset(
            host, results, settings=s, limit=limit, zones=zones, rules=rules, profiles=profiles,
            prior=prior_row, unresponsive=policy.gave_up is not None, filtered=policy.filtered, udp=udp,
        )
    except Exception as exc:
        reason = _host_failed(host, "fingerprinting", exc)
        if policy.gave_up is None:
            unresponsive.append(Unresponsive(host, tuple(sorted(policy.answered)), reason))
        asset, matches = None, ()
    if asset is not None:
        run.planner.learn(asset.open_ports)
    await finish_host(host, asset, matches)


def _probe_kind(port: int, hint: int) -> ProbeKind:
    if port in PRINTER_PORTS or hint in PRINTER_PORTS or hint in CLIENT_FIRST_PORTS:
        return ProbeKind.CONNECT
    if port in WEB_PORTS or hint in WEB_PORTS:
        return ProbeKind.HTTP
    return ProbeKind.BANNER


async def _probe_host(
    host: str, run: _Run, limit: int, policy: HostPolicy
) -> tuple[list[ProbeResult], list[UdpResult]]:
    """Probe one host through its own limiter: liveness ports one at a time, then the rest; stop if it goes
    quiet; then one datagram per UDP port if it is alive.

    Every TCP session is counted on the device's side: its slot stays charged until the host has let go of
    it (its FIN or RST, or ``linger_s``), so ``limit`` is what the host holds from us, not what we hold.
    """
    s = run.settings
    limiter = ConcurrencyLimiter(ceiling=limit, rate_per_s=s.rate_per_host)
    async with DeviceSessions(host, linger_s=s.linger_s, network=s.network) as sessions:
        return await _probe_host_sessions(host, run, limit, policy, limiter, sessions.pool(limiter))


async def _probe_host_sessions(
    host: str, run: _Run, limit: int, policy: HostPolicy, limiter: ConcurrencyLimiter, pool: SessionPool
) -> tuple[list[ProbeResult], list[UdpResult]]:
    s = run.settings
    host_rtt = RttEstimator()
    results: list[ProbeResult] = []

    async def one(port: int, cancel: anyio.CancelScope, priority: int = PRIORITY_LIVE) -> None:
        hint = s.port_aliases.get(port, port)
        kind = _probe_kind(port, hint)
        slot = await pool.slot()
        try:
            if policy.stopped():
                return
            await run.pacer.acquire(PRIORITY_LIVE if policy.alive else priority)
            estimator = host_rtt if host_rtt.samples else run.network_rtt
            connect_t = (estimator.timeout_s(s.connect_bounds) if s.adaptive else s.connect_bounds.ceiling_s)
            banner_t = (s.banner_bounds.clamp(connect_t + BANNER_SERVICE_ALLOWANCE_S) if s.adaptive
                        else s.banner_bounds.ceiling_s)
            run.probes += 1
            res = await _run_probe(host, port, kind, connect_t, banner_t, slot.network)
        finally:
            slot.release()  # its connection keeps the slot charged until the host let go of it
        results.append(res)
        if res.outcome is Outcome.UNREACHABLE:
            run.unreachable += 1
            run.unreachable_error = run.unreachable_error or res.error
        if res.outcome in (Outcome.OPEN, Outcome.CLOSED, Outcome.RESET, Outcome.PROTOCOL_ERROR) or (
            res.outcome is Outcome.TIMEOUT and not (res.error or "").startswith("connect timed out")
        ):
            host_rtt.observe(res.latency_s)
            run.network_rtt.observe(res.latency_s)
        policy.observe(port, classify(res, kind, expects_banner=policy.expects_banner(port, hint)))
        if policy.stopped():
            cancel.cancel()

    async def runner(cancel: anyio.CancelScope) -> None:
        while (port := policy.next_port()) is not None:
            await one(port, cancel)

    async with anyio.create_task_group() as tg:
        # Liveness ports one at a time: an address that turns out alive never sees more than one of our
        # sessions before its limits are known to apply.
        looks = 0
        while policy.in_liveness:
            port = policy.next_port()
            if port is None:
                break
            await one(port, tg.cancel_scope, PRIORITY_FIRST_LOOK if looks == 0 else PRIORITY_LOOK_AGAIN)
            looks += 1
        if policy.alive and policy.gave_up is None:
            # `limit` runners, not one task per port: memory stays O(limit) per host even for "1-65535".
            # The limiter admits them one session (and one rate slot) at a time.
            for _ in range(min(limit, len(s.ports))):
                tg.start_soon(runner, tg.cancel_scope)
    udp: list[UdpResult] = []
    if policy.alive and policy.gave_up is None and s.udp_ports:
        # An agent answers a datagram as fast as a stack answers a SYN (no application handshake first), so
        # the wait is the host's connect timeout: silence costs that, once per UDP port.
        timeout = (host_rtt.timeout_s(s.connect_bounds) if s.adaptive else s.banner_bounds.ceiling_s)
        for port in s.udp_ports:
            async with limiter.session():
                await run.pacer.acquire(PRIORITY_LIVE)
                run.probes += 1
                udp.append(await udp_probe(host, port, timeout_s=timeout, community=s.snmp_community))
    return results, udp


async def _run_probe(
    host: str, port: int, kind: ProbeKind, connect_t: float, banner_t: float, network: Network
) -> ProbeResult:
    if kind is ProbeKind.CONNECT:
        return await tcp_connect(host, port, timeout_s=connect_t, network=network)
    if kind is ProbeKind.HTTP:
        return await http_get(host, port, "/", timeout_s=connect_t, read_timeout_s=banner_t,
                              max_bytes=HTTP_BODY_BYTES, network=network)
    return await grab_banner(host, port, timeout_s=connect_t, read_timeout_s=banner_t,
                             total_timeout_s=connect_t + banner_t, network=network)


def _host_failed(host: str, stage: str, exc: Exception) -> str:
    """Log a failure of our own code on one host's bytes; the reason the host is reported with.

    Whatever a device sent, the scan of the other hosts goes on and their results stand (one bad host used
    to end discover() with an ExceptionGroup). The host is reported as given up on, so it is never grouped
    "safe to scan". Cancellation is a BaseException and is never caught here.
    """
    reason = f"{stage} it failed: {type(exc).__name__}: {str(exc)[:200]}"
    log.error("discovery.host_failed", host=host, stage=stage, error=reason, exc_info=exc)
    return reason


def _connected(res: ProbeResult) -> bool:
    if res.outcome in (Outcome.OPEN, Outcome.RESET, Outcome.PROTOCOL_ERROR):
        return True
    # http_get / grab_banner report TIMEOUT both for a connect that timed out and for a peer that accepted
    # but never answered; only the first means "not there".
    return res.outcome is Outcome.TIMEOUT and not (res.error or "").startswith("connect timed out")


def _build_asset(
    host: str,
    results: Sequence[ProbeResult],
    *,
    settings: _Settings,
    limit: int,
    zones: Zones | None,
    rules: Rules,
    profiles: Mapping[str, tuple[str, int | None]],
    prior: AssetRow | None,
    unresponsive: bool = False,
    filtered: Sequence[int] = (),
    udp: Sequence[UdpResult] = (),
) -> tuple[Asset | None, tuple[GroupMatch, ...]]:
    """Turn one host's probe results into an Asset and its groups (pure).

    An ``unresponsive`` host keeps the groups its evidence earned (medical, known model) but never lands in
    a fallback group ("safe to scan"): what it did not say is no evidence that it is sturdy. ``filtered``
    ports (no answer while the host answered elsewhere) and the UDP answers become notes and services; UDP
    services are not open TCP ports and do not change the model key.
    """
    open_results = sorted((r for r in results if _connected(r)), key=lambda r: r.port)
    if not open_results:
        return None, ()
    services: list[ServiceInfo] = []
    banners: dict[int, bytes] = {}
    servers: dict[int, str] = {}
    for r in open_results:
        hint = settings.port_aliases.get(r.port, r.port)
        if isinstance(r, HttpResult) and (r.status is not None or r.data.startswith(b"HTTP/")):
            info = dataclasses.replace(fingerprint_http(r.status, r.headers, r.body, port=hint), port=r.port)
            if r.server:
                servers[r.port] = r.server
        else:
            info = dataclasses.replace(fingerprint_service(hint, r.data), port=r.port)
            if r.data:
                banners[r.port] = r.data
        services.append(info)
    udp_services = [info for info in (fingerprint_udp(u) for u in udp) if info is not None]
    os_guess = guess_os([*services, *udp_services])
    server_header = model_server_header(servers)
    key = model_key(open_ports=[r.port for r in open_results], banners=banners, server_header=server_header)
    known = profiles.get(model_key_digest(key))
    zone = zones.zone_for(host) if zones is not None else None
    now = time.time()
    notes: list[str] = []
    if limit < settings.per_host_sessions:
        notes.append(f"sessions capped at {limit} (stored profile ceiling)")
    if filtered:
        notes.append("filtered (no answer while the host answered on other ports): "
                     + ", ".join(map(str, sorted(filtered))))
    notes.extend(f"udp/{info.port} {info.service}: {info.product or info.detail or 'answered'}"
                 for info in udp_services)
    asset = Asset(
        host=host, open_ports=tuple(r.port for r in open_results),
        services=tuple(services) + tuple(udp_services),
        os_family=os_guess.family, os_evidence=os_guess.evidence, zone=zone.name if zone else UNZONED,
        zone_kind=zone.kind if zone else None, model_key=key,
        known_model=known[0] if known else None, ceiling=known[1] if known else None,
        first_seen_s=prior.first_seen_s if prior is not None else now, last_seen_s=now,
        sessions_limit=limit, notes=tuple(notes),
    )
    matches = rules.classify(asset)
    if unresponsive:
        fallback_only = {r.name for r in rules if r.fallback} - {r.name for r in rules if not r.fallback}
        kept = tuple(m for m in matches if m.rule not in fallback_only)
        if len(kept) < len(matches):
            notes.append("in no fallback group: it stopped answering or never answered; investigate first")
            asset = dataclasses.replace(asset, notes=tuple(notes))
        matches = kept
    medical = asset.known_model is not None or any(m.medical for m in matches)
    return dataclasses.replace(asset, groups=tuple(m.group for m in matches), medical=medical), matches


def _known_from_inventory(
    row: AssetRow | None, profiles: Mapping[str, tuple[str, int | None]]
) -> tuple[str, int | None] | None:
    if row is None or not row.model_key:
        return None
    return profiles.get(model_key_digest(row.model_key))


def _store_asset(store: ProfileStore, scan_id: int | None, asset: Asset) -> None:
    store.upsert_asset(
        asset.host, scan_id=scan_id, seen_at_s=asset.last_seen_s, zone=asset.zone,
        model_key=asset.model_key, open_ports=asset.open_ports,
        services=[s.to_dict() for s in asset.services], os_family=asset.os_family, groups=asset.groups,
    )


def _asset_from_row(
    row: AssetRow, profiles: Mapping[str, tuple[str, int | None]], zones: Zones | None
) -> Asset:
    services = []
    for d in row.services if isinstance(row.services, list) else []:
        if isinstance(d, dict):
            services.append(ServiceInfo(
                port=int(d.get("port", 0)), service=str(d.get("service", "unknown")),
                product=d.get("product"), version=d.get("version"), detail=d.get("detail"),
                title=d.get("title"), server=d.get("server"), protocol=str(d.get("protocol", "tcp")),
            ))
    known = profiles.get(model_key_digest(row.model_key or ""))
    zone = zones.zone_for(row.host) if zones is not None else None
    return Asset(
        host=row.host, open_ports=tuple(row.open_ports), services=tuple(services),
        os_family=row.os_family or "unknown", os_evidence=(), zone=row.zone or UNZONED,
        zone_kind=zone.kind if zone else None, model_key=row.model_key or "",
        known_model=known[0] if known else None, ceiling=known[1] if known else None,
        groups=tuple(row.groups), first_seen_s=row.first_seen_s, last_seen_s=row.last_seen_s,
        notes=("finished before resume",),
        medical=known is not None or "Medical Device?" in row.groups,
    )


def _alert_from_dict(d: Mapping[str, Any]) -> Alert:
    return Alert(host=str(d["host"]), model=str(d.get("model", "")), zone=str(d.get("zone", "")),
                 zone_kind=str(d.get("zone_kind", "")), evidence=tuple(d.get("evidence", ())),
                 first_seen=str(d.get("first_seen", "")), groups=tuple(d.get("groups", ())))


def _inventory_changes(
    hosts: Sequence[str], found: Sequence[Asset], prior: Mapping[str, AssetRow], scan_id: int | None
) -> tuple[tuple[str, ...], tuple[str, ...], tuple[Move, ...]]:
    """New, gone and moved hosts relative to the inventory as it was before this scan."""
    if scan_id is None:
        return (), (), ()
    new: list[str] = []
    moved: list[Move] = []
    for a in found:
        row = prior.get(a.host)
        # A row already written by the interrupted part of this same scan: compare with what it replaced.
        before_zone: str | None
        if row is not None and row.scan_id == scan_id:
            if row.previous_scan_id is None:
                new.append(a.host)
                continue
            before_zone = row.previous_zone
        elif row is None:
            new.append(a.host)
            continue
        else:
            before_zone = row.zone
        if before_zone != a.zone:
            moved.append(Move(a.host, before_zone, a.zone))
    found_hosts = {a.host for a in found}
    targets = set(hosts)
    gone = [h for h in prior if h in targets and h not in found_hosts]
    return (tuple(sorted(new, key=_addr_key)), tuple(sorted(gone, key=_addr_key)),
            tuple(sorted(moved, key=lambda m: _addr_key(m.host))))


def _addr_key(host: str) -> tuple[int, int]:
    import ipaddress

    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return (9, 0)
    return (addr.version, int(addr))


def _first_own_error(group: BaseExceptionGroup[BaseException]) -> FragileProbeError | None:
    for exc in group.exceptions:
        if isinstance(exc, FragileProbeError):
            return exc
        if isinstance(exc, BaseExceptionGroup):
            found = _first_own_error(exc)
            if found is not None:
                return found
    return None


def _raw_status() -> tuple[bool, str]:
    """Whether the raw extras can run here (scapy installed, root/CAP_NET_RAW), without importing scapy."""
    try:
        from fragileprobe._raw import raw_available
    except ImportError:  # pragma: no cover - the module ships with fragileprobe
        return False, "fragileprobe._raw is not available"
    return raw_available()


def _apply_os_hints(assets: dict[str, Asset], hints: Mapping[str, Any]) -> None:
    """Add the passive OS hint (SYN-ACK TTL and window) to each asset's evidence and notes.

    The hint does not change ``os_family`` or the groups, which were decided (and stored) as each host
    finished; it is extra evidence for people.
    """
    for host, hint in hints.items():
        asset = assets.get(host)
        if asset is None or not getattr(hint, "observations", ()):
            continue
        text = f"passive OS hint: {hint.os_hint} (initial TTL {hint.initial_ttl})"
        if getattr(hint, "note", None):
            text += f"; {hint.note}"
        assets[host] = dataclasses.replace(
            asset, os_evidence=(*asset.os_evidence, f"SYN-ACK: {hint.os_family}"), notes=(*asset.notes, text)
        )


async def _icmp_sweep(hosts: Sequence[str], scope: Scope, parallel: int, notes: list[str]) -> tuple[str, ...]:
    """ICMP echo (one request each) to the hosts that showed no open port; return those that answered."""
    from fragileprobe._raw import icmp_reachable

    limiter = anyio.CapacityLimiter(max(1, min(parallel, 16)))  # each echo runs scapy in a worker thread
    alive: list[str] = []
    failed: list[str] = []

    async def one(host: str) -> None:
        async with limiter:
            try:
                result = await icmp_reachable(host, timeout_s=1.0, scope=scope)
            except RawUnavailableError as exc:
                failed.append(str(exc))
                return
        if result.reachable:
            alive.append(host)

    async with anyio.create_task_group() as tg:
        for host in hosts:
            tg.start_soon(one, host)
    if failed:
        notes.append(f"ICMP echo skipped for {len(failed)} host(s): {failed[0]}")
    if alive:
        notes.append(f"{len(alive)} address(es) without an open port answered ICMP echo")
    return tuple(sorted(alive, key=_addr_key))
