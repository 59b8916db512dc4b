"""discover(): a slow, gentle discovery scan that sorts every host into asset groups.

What it does to each host, and why:

* Full TCP connects only (the probes module never sends a half-open SYN nor OS-detection packets).
* Every limit is per host: a :class:`~fragileprobe.ConcurrencyLimiter` per host caps the sessions held at
  once (``per_host_sessions``, default 1) and the connect rate (``rate_per_host`` connects/s, default 10,
  below runZero's 40 packets/s per host). Many hosts are worked in parallel under a global cap
  (``max_hosts_in_parallel``), in shuffled order so no subnet is hammered. (nmap's ``--max-parallelism``
  counts a whole host group, which is why it cannot protect one fragile device.)
* A host whose model has a stored profile is never probed above that profile's ceiling. A host not yet
  identified is held to the lowest stored ceiling of any model when ``per_host_sessions`` is above it, so
  the rule also holds before the host's model is known.
* On open ports: the banner is read (nothing is sent), except on printer ports 9100-9107, which print what
  they receive, and on ports of protocols where the client speaks first (SMB, RDP, TLS, databases, DICOM,
  HL7): there the probe is connect + close only. Web ports get one bounded ``GET /``.
* A host that stops answering mid-scan (``unresponsive_after`` consecutive timeouts, connect or HTTP, after it
  had answered on some port) is left alone for the rest of the run and reported; nothing is retried harder.
  A host that accepts connections but answers nothing, with a request timing out (a hung device), is
  reported the same way. Neither lands in a fallback group ("safe to scan"): silence is not evidence.
* Each finished host is written to the store at once (asset row, alert, "host done"), so a killed scan
  loses at most the hosts in flight, and ``resume=True`` continues the unfinished scan with the same
  targets and parameters.
"""

from __future__ import annotations

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
from fragileprobe._limiter import ConcurrencyLimiter
from fragileprobe._probes import (
    HttpResult,
    Outcome,
    ProbeResult,
    check_socket_budget,
    grab_banner,
    http_get,
    tcp_connect,
)
from fragileprobe._scope import PORT_SETS, Target, parse_ports, parse_targets

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence
    from pathlib import Path

    from fragileprobe._scope import Scope
    from fragileprobe._store import AssetRow, ProfileStore

__all__ = [
    "DEFAULT_DISCOVERY_PORTS",
    "CLIENT_FIRST_PORTS",
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
# Hosts worked at once. Each holds at most per_host_sessions sockets, so this also bounds our open sockets.
DEFAULT_MAX_HOSTS_IN_PARALLEL: Final = 64
# Connect bound: a slow embedded stack on a busy ward answers a SYN in well under a second.
DEFAULT_CONNECT_TIMEOUT_S: Final = 2.0
# Banner wait: speak-first services greet within ~100 ms; silent ports (SMB, RDP, TLS) cost this much each,
# so it is kept short.
DEFAULT_BANNER_TIMEOUT_S: Final = 1.5
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
        """A JSON-ready dict."""
        return {
            "host": self.host, "open_ports": list(self.open_ports),
            "services": [s.to_dict() for s in self.services], "os_family": self.os_family,
            "os_evidence": list(self.os_evidence), "zone": self.zone, "zone_kind": self.zone_kind,
            "model_key": self.model_key, "known_model": self.known_model, "ceiling": self.ceiling,
            "groups": list(self.groups), "first_seen": _iso(self.first_seen_s),
            "last_seen": _iso(self.last_seen_s), "sessions_limit": self.sessions_limit,
            "notes": list(self.notes), "medical": self.medical,
        }


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
    """Passed to the progress callback after each host."""

    hosts_done: int
    hosts_total: int
    assets_found: int
    alerts: int
    host: str


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

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "assets": [a.to_dict() for a in self.assets],
            "groups": {g: [a.host for a in members] for g, members in self.groups.items()},
            "alerts": [a.to_dict() for a in self.alerts],
            "unresponsive": [dataclasses.asdict(u) for u in self.unresponsive],
            "new": list(self.new), "gone": list(self.gone),
            "moved": [dataclasses.asdict(m) for m in self.moved],
            "hosts_scanned": self.hosts_scanned, "hosts_resumed": self.hosts_resumed,
            "wall_time_s": self.wall_time_s, "scan_id": self.scan_id, "notes": list(self.notes),
            "params": dict(self.params), "icmp_only": list(self.icmp_only),
        }

    def to_json(self, *, indent: int | None = 2) -> str:
        """The report as JSON."""
        return json.dumps(self.to_dict(), indent=indent, default=str)

    def to_dataframe(self) -> Any:
        """One row per asset (pandas is imported here, lazily; needs ``fragileprobe[report]``)."""
        import pandas as pd

        rows = []
        for a in self.assets:
            rows.append({
                "host": a.host, "zone": a.zone, "zone_kind": a.zone_kind, "os_family": a.os_family,
                "open_ports": ",".join(map(str, a.open_ports)), "model_key": a.model_key,
                "known_model": a.known_model, "ceiling": a.ceiling, "groups": "; ".join(a.groups),
                "services": ", ".join(f"{s.port}/{s.service}" + (f" {s.product}" if s.product else "")
                                      for s in a.services),
                "alert": any(al.host == a.host for al in self.alerts),
            })
        return pd.DataFrame(rows)

    def _repr_html_(self) -> str:
        """A readable summary in Jupyter (rendered by ``fragileprobe._report``)."""
        from fragileprobe._report import discovery_repr_html

        return discovery_repr_html(self)

    def summary(self) -> str:
        """A few lines for people."""
        lines = [
            f"discovery: {len(self.assets)} assets on {self.hosts_scanned + self.hosts_resumed} addresses "
            f"in {self.wall_time_s:.1f} s"
            + (f" ({self.hosts_resumed} done before resume)" if self.hosts_resumed else ""),
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


# --- the driver -------------------------------------------------------------------------------------------

@dataclass(slots=True)
class _HostState:
    answered: list[int] = field(default_factory=list)
    consecutive_timeouts: int = 0
    gave_up: str | None = None


@dataclass(frozen=True, slots=True)
class _Settings:
    ports: tuple[int, ...]
    per_host_sessions: int
    rate_per_host: float
    connect_timeout_s: float
    banner_timeout_s: float
    unresponsive_after: int
    port_aliases: Mapping[int, int]


def _positive(name: str, value: float, *, integer: bool = False) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    if not ok or (integer and not isinstance(value, int)):
        kind = "a positive integer" if integer else "a positive number"
        raise ConfigError(f"{name} must be {kind}, got {value!r}")
    return value


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
    max_hosts_in_parallel: int = DEFAULT_MAX_HOSTS_IN_PARALLEL,
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
    banner_timeout_s: float = DEFAULT_BANNER_TIMEOUT_S,
    unresponsive_after: int = DEFAULT_UNRESPONSIVE_AFTER,
    resume: bool = False,
    seed: int | None = None,
    alert_file: str | Path | None = None,
    webhook_url: str | None = None,
    progress: Callable[[DiscoveryProgress], None] | None = None,
    raw: bool = False,
    port_aliases: Mapping[int, int] | None = None,
) -> DiscoveryReport:
    """Find the hosts among ``targets``, fingerprint them, group them and alert on misplaced devices.

    Args:
        targets: Target spec (``"10.1.0.0/24"``, ranges, lists); every address must lie inside ``scope``.
        scope: The authorized scope; targets outside raise ScopeError before anything is sent.
        ports: Ports to look at (a port spec; default the "hospital" set).
        zones: Network zones (default: none, every host "unzoned", no alerts).
        rules: Group rules (default ``Rules.default()``).
        store: ProfileStore for stored ceilings, the inventory and resume (default: none).
        per_host_sessions: Sessions held at once per host (default 1).
        rate_per_host: Connects per second per host (default 10).
        max_hosts_in_parallel: Hosts worked at once (global cap).
        connect_timeout_s: Connect bound per probe.
        banner_timeout_s: How long to wait for a banner (and for an HTTP answer) per port.
        unresponsive_after: Consecutive connect timeouts, after answering, that make a host left alone.
        resume: Continue the latest unfinished scan with the same targets and parameters (needs a store).
        seed: Seed for the host order shuffle (default: random).
        alert_file: JSON-lines file that alerts are appended to.
        webhook_url: URL each alert is POSTed to (bounded timeout; failures logged, not raised).
        progress: Called after each host with a DiscoveryProgress.
        raw: Also use the raw-packet extras (ICMP, passive OS hint) when available; else a note.
        port_aliases: Bound port -> well-known port, for services on non-standard ports (hints only).

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
    _positive("per_host_sessions", per_host_sessions, integer=True)
    _positive("rate_per_host", rate_per_host)
    _positive("max_hosts_in_parallel", max_hosts_in_parallel, integer=True)
    _positive("connect_timeout_s", connect_timeout_s)
    _positive("banner_timeout_s", banner_timeout_s)
    _positive("unresponsive_after", unresponsive_after, integer=True)
    check_socket_budget(
        min(len(hosts), max_hosts_in_parallel) * per_host_sessions,
        f"max_hosts_in_parallel x per_host_sessions ({min(len(hosts), max_hosts_in_parallel)} x "
        f"{per_host_sessions})",
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
    settings = _Settings(
        ports=port_list, per_host_sessions=per_host_sessions, rate_per_host=float(rate_per_host),
        connect_timeout_s=float(connect_timeout_s), banner_timeout_s=float(banner_timeout_s),
        unresponsive_after=unresponsive_after, port_aliases=aliases,
    )
    params = {
        "ports": list(port_list), "per_host_sessions": per_host_sessions, "rate_per_host": rate_per_host,
        "connect_timeout_s": connect_timeout_s, "banner_timeout_s": banner_timeout_s,
        "unresponsive_after": unresponsive_after,
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
    assets: dict[str, Asset] = {}
    alerts: dict[str, Alert] = {}
    unresponsive: list[Unresponsive] = []
    state = {"done": 0}
    log.info("discovery.start", hosts=len(hosts), todo=len(todo), ports=len(port_list), scan_id=scan_id,
             per_host_sessions=per_host_sessions, rate_per_host=rate_per_host,
             max_hosts_in_parallel=max_hosts_in_parallel)

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
            progress(DiscoveryProgress(hosts_done=state["done"], hosts_total=len(todo),
                                       assets_found=len(assets), alerts=len(alerts), host=host))

    queue = iter(todo)

    async def worker() -> None:
        for host in queue:  # shared iterator: each host is taken by exactly one worker
            prior_row = prior.get(host)
            limit = per_host_sessions
            known = _known_from_inventory(prior_row, profiles)
            if known is not None and known[1] is not None:
                limit = min(limit, known[1])
            elif floor is not None:
                # One session at a time is the gentlest a discovery can be, even under a stored ceiling of 0.
                limit = min(limit, max(1, floor))
            if limit < 1 and prior_row is not None and known is not None:
                # The host's model failed at its lowest measured level (stored ceiling 0): not even one
                # session. Report what the inventory knows and leave the host alone.
                kept = _asset_from_row(prior_row, profiles, zones)
                kept = dataclasses.replace(kept, sessions_limit=0,
                                           notes=(f"stored profile {known[0]} has ceiling 0: not probed",))
                log.warning("discovery.host_left_alone", host=host, model_key=known[0], ceiling=0)
                await finish_host(host, kept, ())
                continue
            hs = _HostState()
            try:
                results = await _probe_host(host, settings, limit, hs)
            except Exception as exc:
                results = []
                hs.gave_up = _host_failed(host, "probing", exc)
            if hs.gave_up is None and not hs.answered and any(
                r.outcome is Outcome.TIMEOUT and _connected(r) for r in results
            ):
                # Accepted connections, answered nothing, and a request (GET /) went unanswered: a hung
                # device looks exactly like this. Never call it "safe to scan" on no evidence.
                hs.gave_up = ("accepted connections but answered on no port (a request timed out): hung, "
                              "or every service is silent")
            if hs.gave_up is not None:
                unresponsive.append(Unresponsive(host, tuple(sorted(hs.answered)), hs.gave_up))
                log.warning("discovery.host_unresponsive", host=host, reason=hs.gave_up)
            try:
                asset, matches = _build_asset(
                    host, results, settings=settings, limit=limit, zones=zones, rules=rules,
                    profiles=profiles, prior=prior_row, unresponsive=hs.gave_up is not None,
                )
            except Exception as exc:
                reason = _host_failed(host, "fingerprinting", exc)
                if hs.gave_up is None:
                    unresponsive.append(Unresponsive(host, tuple(sorted(hs.answered)), reason))
                asset, matches = None, ()
            await finish_host(host, asset, matches)

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
            async with anyio.create_task_group() as tg:
                for _ in range(min(max_hosts_in_parallel, max(len(todo), 1))):
                    tg.start_soon(worker)
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
    if observer is not None:
        _apply_os_hints(assets, observer.hints())
    icmp_only: tuple[str, ...] = ()
    if raw_ok:
        icmp_only = await _icmp_sweep([h for h in todo if h not in assets], scope, max_hosts_in_parallel,
                                      notes)

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
    )
    log.info("discovery.done", assets=len(ordered), alerts=len(report.alerts),
             unresponsive=len(report.unresponsive), wall_time_s=round(report.wall_time_s, 3))
    return report


def discover_sync(targets: str | Iterable[str], **kwargs: Any) -> DiscoveryReport:
    """Run :func:`discover` from synchronous code (also inside a running notebook loop)."""
    import importlib

    run_sync = importlib.import_module("fragileprobe._sync").run_sync
    result: DiscoveryReport = run_sync(discover, targets, **kwargs)
    return result


# --- per host ---------------------------------------------------------------------------------------------

async def _probe_host(host: str, s: _Settings, limit: int, hs: _HostState) -> list[ProbeResult]:
    """Probe every port of one host through its own limiter; stop early if it goes quiet."""
    limiter = ConcurrencyLimiter(ceiling=limit, rate_per_s=s.rate_per_host)
    results: list[ProbeResult] = []

    async def one(port: int, cancel: anyio.CancelScope) -> None:
        async with limiter.session():
            if hs.gave_up is not None:
                return
            hint = s.port_aliases.get(port, port)
            if port in PRINTER_PORTS or hint in PRINTER_PORTS or hint in CLIENT_FIRST_PORTS:
                res: ProbeResult = await tcp_connect(host, port, timeout_s=s.connect_timeout_s)
            elif port in WEB_PORTS or hint in WEB_PORTS:
                res = await http_get(host, port, "/", timeout_s=s.connect_timeout_s,
                                     read_timeout_s=s.banner_timeout_s, max_bytes=HTTP_BODY_BYTES)
            else:
                res = await grab_banner(host, port, timeout_s=s.connect_timeout_s,
                                        read_timeout_s=s.banner_timeout_s,
                                        total_timeout_s=s.connect_timeout_s + s.banner_timeout_s)
        results.append(res)
        spoke = bool(res.data) or (isinstance(res, HttpResult) and res.status is not None)
        if spoke:
            hs.answered.append(port)
            hs.consecutive_timeouts = 0
        elif res.outcome is Outcome.TIMEOUT:
            # A connect that timed out, or a web server that accepted and never answered GET /. A silent
            # banner port (SMB, RDP, TLS) and a refused port (RST from the stack) say nothing either way.
            hs.consecutive_timeouts += 1
            if hs.answered and hs.consecutive_timeouts >= s.unresponsive_after:
                hs.gave_up = (f"{hs.consecutive_timeouts} consecutive timeouts after answering on "
                              f"{len(hs.answered)} port(s)")
                cancel.cancel()

    ports = iter(s.ports)

    async def runner(cancel: anyio.CancelScope) -> None:
        for port in ports:  # shared iterator: each port is taken by exactly one runner, in port order
            await one(port, cancel)

    async with anyio.create_task_group() as tg:
        # `limit` runners, not one task per port: memory stays O(limit) per host even for "1-65535" (a
        # task per port held ~6 KB each while waiting, 1.7 GB for 4 hosts x 65,535 ports). The limiter
        # still admits them one session (and one rate slot) at a time, so a host never sees more than
        # `limit` of our connections at once.
        for _ in range(min(limit, len(s.ports))):
            tg.start_soon(runner, tg.cancel_scope)
    return results


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
) -> tuple[Asset | None, tuple[GroupMatch, ...]]:
    """Turn one host's probe results into an Asset and its groups (pure).

    An ``unresponsive`` host keeps the groups its evidence earned (medical, known model) but never lands in
    a fallback group ("safe to scan"): what it did not say is no evidence that it is sturdy.
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
    os_guess = guess_os(services)
    server_header = model_server_header(servers)
    key = model_key(open_ports=[r.port for r in open_results], banners=banners, server_header=server_header)
    known = profiles.get(model_key_digest(key))
    zone = zones.zone_for(host) if zones is not None else None
    now = time.time()
    notes: list[str] = []
    if limit < settings.per_host_sessions:
        notes.append(f"sessions capped at {limit} (stored profile ceiling)")
    asset = Asset(
        host=host, open_ports=tuple(r.port for r in open_results), services=tuple(services),
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
                title=d.get("title"), server=d.get("server"),
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
