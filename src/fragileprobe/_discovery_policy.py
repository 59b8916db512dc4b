"""What a discovery run decides, without I/O: the executor (``_discovery_run``) asks, does, and reports back.

No ``await``, no sockets, no clock (times come in as arguments), like h11's state machine beside its socket
loop, and ``_ramp.py`` here. The rules, in the order a host meets them:

1. **The host's session cap** (:func:`session_limit`): its model's stored ceiling when the inventory knows
   the model, else the lowest stored ceiling of any model (one session at least), else
   ``per_host_sessions``. A model whose stored ceiling is 0 is not probed at all: the host is reported from
   the inventory (:meth:`DiscoveryPolicy.left_alone`).
2. **The per-host plan** (:meth:`DiscoveryPolicy.start`): liveness ports first (``_hostpolicy``), then the
   rest; each port's probe (:func:`probe_kind`): connect and close on printer and client-speaks-first
   ports, one ``GET /`` on web ports, a banner read elsewhere.
3. **Feeding results back** (:meth:`HostProbing.record`): every probe's verdict goes to the host's
   :class:`~fragileprobe._hostpolicy.HostPolicy`, which says when the host is given up on; answers that
   measured a round trip train the host's and the network's timeouts (RFC 6298, ``_timing``).
4. **The host's conclusion** (:meth:`DiscoveryPolicy.conclude`): silent, alive, or given up on (including
   the hung device that accepted connections and answered nothing); then its Asset and groups
   (:func:`build_asset`) and whether it alerts (:meth:`DiscoveryPolicy.alert`).
5. **The report** (:func:`assemble_report`): inventory changes (:func:`inventory_changes`: new, gone,
   moved), notes about the run, everything sorted by address.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import ipaddress
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from fragileprobe._discovery import (
    CLIENT_FIRST_PORTS,
    PRINTER_PORTS,
    WEB_PORTS,
    Asset,
    DiscoveryProgress,
    DiscoveryReport,
    Move,
    Unresponsive,
)
from fragileprobe._fingerprint import (
    ServiceInfo,
    fingerprint_http,
    fingerprint_service,
    guess_os,
    model_key,
    model_key_digest,
    model_server_header,
)
from fragileprobe._groups import UNZONED, Alert, GroupMatch, Rules, Zones, alert_for
from fragileprobe._hostpolicy import HostPolicy, LivenessPlanner, ProbeKind, classify
from fragileprobe._probes import HttpResult, Outcome, Phase, ProbeResult
from fragileprobe._timing import BANNER_SERVICE_ALLOWANCE_S, RttEstimator
from fragileprobe._udp import UdpResult, fingerprint_udp

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

    from fragileprobe._discovery_settings import DiscoverySettings
    from fragileprobe._store import AssetRow

__all__ = [
    "DiscoveryPolicy",
    "Findings",
    "HostProbing",
    "PortProbe",
    "RunTally",
    "ScanPlan",
    "addr_key",
    "assemble_report",
    "build_asset",
    "connected",
    "estimate_remaining_s",
    "host_order",
    "inventory_changes",
    "probe_kind",
    "session_limit",
]

# Outcomes where the peer's stack answered our SYN, so the connect's latency is a round trip.
_ANSWERED: Final = frozenset({Outcome.OPEN, Outcome.CLOSED, Outcome.RESET, Outcome.PROTOCOL_ERROR})
# Outcomes where a session was established (the host has a listening port there).
_SESSION: Final = frozenset({Outcome.OPEN, Outcome.RESET, Outcome.PROTOCOL_ERROR})
# The note of an unresponsive host that kept none of its fallback groups.
_NO_FALLBACK_NOTE: Final = "in no fallback group: it stopped answering or never answered; investigate first"


# --- one probe --------------------------------------------------------------------------------------------


def _connect_timed_out(res: ProbeResult) -> bool:
    """The connect itself timed out (``http_get``/``grab_banner`` report TIMEOUT for a silent peer too,
    in the EXCHANGE phase)."""
    return res.outcome is Outcome.TIMEOUT and res.phase is Phase.CONNECT


def connected(res: ProbeResult) -> bool:
    """A session was established: an open port, whatever (or nothing) it said."""
    if res.outcome in _SESSION:
        return True
    # TIMEOUT is both a connect that timed out and a peer that accepted but never answered; only the first
    # means "not there".
    return res.outcome is Outcome.TIMEOUT and not _connect_timed_out(res)


def measures_rtt(res: ProbeResult) -> bool:
    """The probe's latency is a round trip of the host's stack (it answered our SYN)."""
    return res.outcome in _ANSWERED or (res.outcome is Outcome.TIMEOUT and not _connect_timed_out(res))


def probe_kind(port: int, hint: int) -> ProbeKind:
    """How ``port`` (well-known as ``hint``) is probed: connect only, ``GET /``, or a banner read."""
    if port in PRINTER_PORTS or hint in PRINTER_PORTS or hint in CLIENT_FIRST_PORTS:
        return ProbeKind.CONNECT
    if port in WEB_PORTS or hint in WEB_PORTS:
        return ProbeKind.HTTP
    return ProbeKind.BANNER


@dataclass(frozen=True, slots=True)
class PortProbe:
    """What to send to one port of one host.

    Attributes:
        port: The port.
        hint: Its well-known port (a port alias, else the port itself).
        kind: Connect only, ``GET /``, or a banner read.
        expects_banner: Silence there would be a stalled service (a strike).
    """

    port: int
    hint: int
    kind: ProbeKind
    expects_banner: bool


# --- the run's counters -----------------------------------------------------------------------------------


@dataclass(slots=True)
class RunTally:
    """What the hosts of one run share and count (the network's round-trip estimate included)."""

    network_rtt: RttEstimator = field(default_factory=RttEstimator)
    probes: int = 0
    probes_done: int = 0  # probes of the hosts already finished
    alive: int = 0
    silent: int = 0
    hosts_done: int = 0
    hosts_in_flight: int = 0
    peak_hosts_in_flight: int = 0
    unreachable: int = 0  # probes the local stack or a router refused (no route, no free port, no file)
    unreachable_error: str | None = None

    def host_started(self) -> None:
        """One more host in flight."""
        self.hosts_in_flight += 1
        self.peak_hosts_in_flight = max(self.peak_hosts_in_flight, self.hosts_in_flight)

    def host_stopped(self) -> None:
        """One host fewer in flight (finished or failed)."""
        self.hosts_in_flight -= 1


# --- one host ---------------------------------------------------------------------------------------------


@dataclass(slots=True)
class HostProbing:
    """One host in flight: its cap, its plan and state machine (``state``), its round trips, its results.

    Attributes:
        host: The address.
        limit: Sessions the host may hold from us at once.
        known: (model key, stored ceiling) when the inventory knows the host's model, else None.
        prior: The host's inventory row before this scan, or None.
        state: The liveness / give-up state machine (what to probe next, when to stop).
        aliases: Bound port -> well-known port.
    """

    host: str
    limit: int
    known: tuple[str, int | None] | None
    prior: AssetRow | None
    state: HostPolicy
    aliases: Mapping[int, int]
    rtt: RttEstimator = field(default_factory=RttEstimator)
    results: list[ProbeResult] = field(default_factory=list)
    udp: list[UdpResult] = field(default_factory=list)

    @property
    def left_alone(self) -> bool:
        """The host's model failed at its lowest measured level (stored ceiling 0): no probe at all."""
        return self.limit < 1 and self.prior is not None and self.known is not None

    @property
    def working(self) -> bool:
        """The host answered and was not given up on: its other ports (and UDP) are due."""
        return self.state.alive and self.state.gave_up is None

    def probe(self, port: int) -> PortProbe:
        """What ``port`` gets."""
        hint = self.aliases.get(port, port)
        return PortProbe(port, hint, probe_kind(port, hint), self.state.expects_banner(port, hint))

    def timeouts(self, settings: DiscoverySettings, network_rtt: RttEstimator) -> tuple[float, float]:
        """(connect, banner) timeouts for the next probe: from the host's round trips once it has some,
        else the network's; the two ceilings when adaptation is off."""
        if not settings.adaptive_timeouts:
            return settings.connect_bounds.ceiling_s, settings.banner_bounds.ceiling_s
        estimator = self.rtt if self.rtt.samples else network_rtt
        connect_t = estimator.timeout_s(settings.connect_bounds)
        return connect_t, settings.banner_bounds.clamp(connect_t + BANNER_SERVICE_ALLOWANCE_S)

    def udp_timeout(self, settings: DiscoverySettings) -> float:
        """The wait for a datagram's answer: an agent answers as fast as a stack answers a SYN (no
        application handshake first), so the host's connect timeout; silence costs that, once per port."""
        if not settings.adaptive_timeouts:
            return settings.banner_bounds.ceiling_s
        return self.rtt.timeout_s(settings.connect_bounds)

    def record(self, probe: PortProbe, res: ProbeResult, tally: RunTally) -> None:
        """Take one TCP probe's result: count it, learn its round trip, feed its verdict to ``state``."""
        self.results.append(res)
        if res.outcome is Outcome.UNREACHABLE:
            tally.unreachable += 1
            tally.unreachable_error = tally.unreachable_error or res.error
        if measures_rtt(res):
            self.rtt.observe(res.latency_s)
            tally.network_rtt.observe(res.latency_s)
        self.state.observe(probe.port, classify(res, probe.kind, expects_banner=probe.expects_banner))

    def unresponsive(self, reason: str) -> Unresponsive:
        """The record of this host left alone for ``reason``."""
        return Unresponsive(self.host, tuple(sorted(self.state.answered)), reason)


class Conclusion(enum.Enum):
    """What a host's probing came to."""

    SILENT = "silent"  # no liveness port answered: no asset
    ALIVE = "alive"  # answered somewhere (it may still have been given up on)


@dataclass(frozen=True, slots=True)
class ScanPlan:
    """The addresses of one call and what the store said about them.

    Attributes:
        hosts: Every target address.
        todo: The addresses this call works, in the order they are taken.
        done_before: Addresses a resumed scan had already finished.
        scan_id: The store's scan id, or None without a store.
        parallel: Hosts worked at once.
    """

    hosts: tuple[str, ...]
    todo: tuple[str, ...]
    done_before: frozenset[str]
    scan_id: int | None
    parallel: int


def host_order(hosts: Sequence[str], done_before: Iterable[str], seed: int | None) -> tuple[str, ...]:
    """The addresses still to do, shuffled (by ``seed``) so that no subnet is worked in a row."""
    done = set(done_before)
    todo = [h for h in hosts if h not in done]
    random.Random(seed).shuffle(todo)
    return tuple(todo)


def stored_floor(profiles: Mapping[str, tuple[str, int | None]]) -> int | None:
    """The lowest stored ceiling of any model (a ceiling not measured counts as 1), or None without any."""
    ceilings = [c if c is not None else 1 for _, c in profiles.values()]
    return min(ceilings) if ceilings else None


def known_from_inventory(
    row: AssetRow | None, profiles: Mapping[str, tuple[str, int | None]]
) -> tuple[str, int | None] | None:
    """(model key, stored ceiling) of the model the inventory last saw at this host, or None."""
    if row is None or not row.model_key:
        return None
    return profiles.get(model_key_digest(row.model_key))


def session_limit(
    prior_row: AssetRow | None,
    per_host_sessions: int,
    profiles: Mapping[str, tuple[str, int | None]],
    floor: int | None,
) -> tuple[int, tuple[str, int | None] | None]:
    """The host's session cap: its model's stored ceiling, else the lowest stored ceiling, and its model."""
    limit = per_host_sessions
    known = known_from_inventory(prior_row, profiles)
    if known is not None and known[1] is not None:
        limit = min(limit, known[1])
    elif floor is not None:
        # One session at a time is the gentlest a discovery can be, even under a stored ceiling of 0.
        limit = min(limit, max(1, floor))
    return limit, known


def spoke_before(row: AssetRow | None) -> frozenset[int]:
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


# --- the run ----------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Findings:
    """What a run found so far: assets and alerts by host, hosts left alone, notes for people."""

    assets: dict[str, Asset] = field(default_factory=dict)
    alerts: dict[str, Alert] = field(default_factory=dict)
    unresponsive: list[Unresponsive] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass(slots=True)
class DiscoveryPolicy:
    """The run-wide decisions: per-host plans, conclusions, assets, alerts (pure; the executor does I/O).

    Attributes:
        settings: The run's settings.
        rules: The group rules.
        zones: The network zones, or None (every host unzoned, no alerts).
        profiles: Model-key digest -> (model key, stored ceiling) of every stored profile.
        prior: The inventory before this scan, by host.
    """

    settings: DiscoverySettings
    rules: Rules
    zones: Zones | None = None
    profiles: Mapping[str, tuple[str, int | None]] = field(default_factory=dict)
    prior: Mapping[str, AssetRow] = field(default_factory=dict)
    planner: LivenessPlanner = field(init=False)
    floor: int | None = field(init=False)

    def __post_init__(self) -> None:
        s = self.settings
        self.planner = LivenessPlanner(s.ports, count=s.liveness_ports, hints=dict(s.port_aliases))
        self.floor = stored_floor(self.profiles)

    def start(self, host: str) -> HostProbing:
        """The plan for ``host``: its cap, its liveness ports (learned so far in this run), its state."""
        s = self.settings
        row = self.prior.get(host)
        limit, known = session_limit(row, s.per_host_sessions, self.profiles, self.floor)
        state = HostPolicy(
            ports=s.ports,
            liveness=self.planner.plan(),
            unresponsive_after=s.unresponsive_after,
            spoke_before=spoke_before(row),
        )
        return HostProbing(host, limit, known, row, state, s.port_aliases)

    def left_alone(self, probing: HostProbing) -> Asset:
        """The inventory's view of a host whose model has stored ceiling 0 (it is not probed at all)."""
        row, known = probing.prior, probing.known
        if row is None or known is None:
            raise ValueError(f"{probing.host} is probed, not left alone (no inventory row or stored model)")
        kept = asset_from_row(row, self.profiles, self.zones)
        return dataclasses.replace(
            kept, sessions_limit=0, notes=(f"stored profile {known[0]} has ceiling 0: not probed",)
        )

    def conclude(self, probing: HostProbing, tally: RunTally) -> tuple[Conclusion, Unresponsive | None]:
        """Whether the host was silent or alive, and the record if it was given up on (counted in ``tally``).

        A host that accepted connections, answered nothing, and left a request (``GET /``, a banner port)
        unanswered looks exactly like a hung device: it is given up on, never "safe to scan" on no evidence.
        """
        tally.probes_done += len(probing.results) + len(probing.udp)
        state = probing.state
        if not state.alive:
            tally.silent += 1
            return Conclusion.SILENT, None
        tally.alive += 1
        reason = state.conclude()
        return Conclusion.ALIVE, None if reason is None else probing.unresponsive(reason)

    def assess(self, probing: HostProbing, *, now_s: float) -> tuple[Asset | None, tuple[GroupMatch, ...]]:
        """The host's Asset and groups (``now_s``: Unix time of its last sighting)."""
        return build_asset(
            probing.host,
            probing.results,
            settings=self.settings,
            limit=probing.limit,
            zones=self.zones,
            rules=self.rules,
            profiles=self.profiles,
            prior=probing.prior,
            now_s=now_s,
            unresponsive=probing.state.gave_up is not None,
            filtered=probing.state.filtered,
            udp=probing.udp,
        )

    def learn(self, asset: Asset) -> None:
        """A live host's open ports train the liveness ports of the next addresses."""
        self.planner.learn(asset.open_ports)

    def alert(self, findings: Findings, asset: Asset, matches: Sequence[GroupMatch]) -> Alert | None:
        """The alert ``asset`` raises (at most one per host per run), or None."""
        if asset.host in findings.alerts:
            return None
        row = self.prior.get(asset.host)
        first_seen = row.first_seen_s if row is not None else asset.first_seen_s
        return alert_for(asset, matches, first_seen=_iso(first_seen))

    def restore(
        self,
        findings: Findings,
        rows: Iterable[AssetRow],
        alerts: Iterable[Mapping[str, Any]],
        plan: ScanPlan,
    ) -> None:
        """Take back the hosts the interrupted part of a resumed scan finished (from the store)."""
        for row in rows:
            ours = row.host in plan.done_before and row.scan_id == plan.scan_id
            if ours and row.host not in findings.assets:
                findings.assets[row.host] = asset_from_row(row, self.profiles, self.zones)
        for stored in alerts:
            host = stored.get("host")
            ours = stored.get("scan_id") == plan.scan_id and isinstance(host, str)
            if ours and host not in findings.alerts:
                findings.alerts[str(host)] = alert_from_dict(stored)

    def progress(
        self, tally: RunTally, findings: Findings, plan: ScanPlan, host: str, *, elapsed_s: float
    ) -> DiscoveryProgress:
        """The progress record after ``host`` finished, ``elapsed_s`` into the call."""
        s = self.settings
        total = len(plan.todo)
        eta = estimate_remaining_s(
            done=tally.hosts_done,
            total=total,
            elapsed_s=elapsed_s,
            probes_done=tally.probes_done,
            probes_sent=tally.probes,
            rate_per_s=s.global_rate,
            in_flight=min(plan.parallel, total),
            tail_s=2 * tally.network_rtt.timeout_s(s.connect_bounds),
        )
        return DiscoveryProgress(
            hosts_done=tally.hosts_done,
            hosts_total=total,
            assets_found=len(findings.assets),
            alerts=len(findings.alerts),
            host=host,
            hosts_alive=tally.alive,
            hosts_silent=tally.silent,
            probes_sent=tally.probes,
            elapsed_s=elapsed_s,
            eta_s=eta,
        )


def estimate_remaining_s(
    *,
    done: int,
    total: int,
    elapsed_s: float,
    probes_done: int,
    probes_sent: int,
    rate_per_s: float,
    tail_s: float,
    in_flight: int = 0,
) -> float | None:
    """Seconds a discovery still needs, counting silent space at its real (small) cost (pure).

    Most addresses of a large block are silent and cost their liveness probes only, so a per-host average
    taken from the live hosts would be far too long; and with thousands of addresses in flight, the
    addresses finished per second say little until the first wave is through. So the estimate is the
    connects still to send, at the global rate:

    * the connects a finished address needed on average (``probes_done / done``: the mix of silent and live
      addresses seen so far) times the addresses of the run, minus the connects already sent (those of the
      addresses in flight included), at ``rate_per_s``; plus ``tail_s``, the last addresses' own timeouts;
    * when the whole first wave is through (``done >= in_flight``), at least the time the remaining
      addresses take at the throughput seen so far (a scan bound by per-host work, not by the rate).

    Args:
        done: Addresses finished.
        total: Addresses in the run.
        elapsed_s: Seconds since the start.
        probes_done: Connects and datagrams sent to the finished addresses.
        probes_sent: Connects and datagrams sent so far (in-flight addresses' included).
        rate_per_s: The global connect rate.
        tail_s: Time the last address in flight still needs (a couple of connect timeouts).
        in_flight: Addresses worked at once.

    Returns:
        Seconds left, 0.0 when done, None before the first address finished.
    """
    if done >= total:
        return 0.0
    if done <= 0 or rate_per_s <= 0:
        return None
    per_address = max(probes_done, 1) / done
    to_send = max(0.0, total * per_address - probes_sent)
    estimate = to_send / rate_per_s + max(0.0, tail_s)
    if done >= max(in_flight, 1) and elapsed_s > 0:
        estimate = max(estimate, (total - done) * elapsed_s / done)
    return estimate


def run_notes(tally: RunTally, *, webhook_failures: int = 0, webhook_url: str | None = None) -> list[str]:
    """The notes about the run itself: alerts the webhook did not take, probes that never left."""
    notes: list[str] = []
    if webhook_failures:
        notes.append(
            f"{webhook_failures} alert(s) could not be delivered to the webhook {webhook_url} "
            "(logged as discovery.alert_webhook_failed; they are in the log, the store and the "
            "alert file)"
        )
    if tally.unreachable:
        # Not silence: the probe never reached the address (or a router refused it). An address whose
        # liveness probes all failed so is counted silent, so say it.
        notes.append(
            f"{tally.unreachable} probe(s) could not reach their address "
            f"({tally.unreachable_error}); addresses whose every liveness probe failed so were "
            "skipped as silent"
        )
    return notes


def assemble_report(
    findings: Findings,
    plan: ScanPlan,
    tally: RunTally,
    settings: DiscoverySettings,
    *,
    prior: Mapping[str, AssetRow],
    wall_time_s: float,
    icmp_only: tuple[str, ...] = (),
) -> DiscoveryReport:
    """The DiscoveryReport of a finished run: everything by address, groups, inventory changes."""
    ordered = tuple(sorted(findings.assets.values(), key=lambda a: addr_key(a.host)))
    groups: dict[str, list[Asset]] = {}
    for a in ordered:
        for g in a.groups:
            groups.setdefault(g, []).append(a)
    new, gone, moved = inventory_changes(plan.hosts, ordered, prior, plan.scan_id)
    return DiscoveryReport(
        assets=ordered,
        groups=groups,
        alerts=tuple(sorted(findings.alerts.values(), key=lambda a: addr_key(a.host))),
        unresponsive=tuple(sorted(findings.unresponsive, key=lambda u: addr_key(u.host))),
        new=new,
        gone=gone,
        moved=moved,
        icmp_only=icmp_only,
        hosts_scanned=len(plan.todo),
        hosts_resumed=len(plan.done_before),
        wall_time_s=wall_time_s,
        scan_id=plan.scan_id,
        notes=tuple(findings.notes),
        params=settings.params(),
        hosts_alive=tally.alive,
        probes_sent=tally.probes,
        max_hosts_in_parallel=plan.parallel,
        global_rate=float(settings.global_rate),
    )


# --- assets -----------------------------------------------------------------------------------------------


def _iso(ts_s: float) -> str:
    return dt.datetime.fromtimestamp(ts_s, tz=dt.UTC).isoformat(timespec="seconds")


def _services(
    open_results: Sequence[ProbeResult], aliases: Mapping[int, int]
) -> tuple[list[ServiceInfo], dict[int, bytes], dict[int, str]]:
    """What each open port revealed, and the banners and Server headers the model key rests on."""
    services: list[ServiceInfo] = []
    banners: dict[int, bytes] = {}
    servers: dict[int, str] = {}
    for r in open_results:
        hint = aliases.get(r.port, r.port)
        if isinstance(r, HttpResult) and (r.status is not None or r.data.startswith(b"HTTP/")):
            info = dataclasses.replace(fingerprint_http(r.status, r.headers, r.body, port=hint), port=r.port)
            if r.server:
                servers[r.port] = r.server
        else:
            info = dataclasses.replace(fingerprint_service(hint, r.data), port=r.port)
            if r.data:
                banners[r.port] = r.data
        services.append(info)
    return services, banners, servers


def _asset_notes(
    limit: int, per_host_sessions: int, filtered: Sequence[int], udp_services: Sequence[ServiceInfo]
) -> list[str]:
    notes: list[str] = []
    if limit < per_host_sessions:
        notes.append(f"sessions capped at {limit} (stored profile ceiling)")
    if filtered:
        notes.append(
            "filtered (no answer while the host answered on other ports): "
            + ", ".join(map(str, sorted(filtered)))
        )
    notes.extend(
        f"udp/{info.port} {info.service}: {info.product or info.detail or 'answered'}"
        for info in udp_services
    )
    return notes


def _without_fallback(
    asset: Asset, matches: tuple[GroupMatch, ...], rules: Rules
) -> tuple[Asset, tuple[GroupMatch, ...]]:
    """An unresponsive host keeps the groups its evidence earned, never a fallback group ("safe to scan")."""
    fallback_only = {r.name for r in rules if r.fallback} - {r.name for r in rules if not r.fallback}
    kept = tuple(m for m in matches if m.rule not in fallback_only)
    if len(kept) < len(matches):
        asset = dataclasses.replace(asset, notes=(*asset.notes, _NO_FALLBACK_NOTE))
    return asset, kept


def build_asset(
    host: str,
    results: Sequence[ProbeResult],
    *,
    settings: DiscoverySettings,
    limit: int,
    zones: Zones | None,
    rules: Rules,
    profiles: Mapping[str, tuple[str, int | None]],
    prior: AssetRow | None,
    now_s: float,
    unresponsive: bool = False,
    filtered: Sequence[int] = (),
    udp: Sequence[UdpResult] = (),
) -> tuple[Asset | None, tuple[GroupMatch, ...]]:
    """Turn one host's probe results into an Asset and its groups (None without an open port).

    An ``unresponsive`` host keeps the groups its evidence earned (medical, known model) but never lands in
    a fallback group ("safe to scan"): what it did not say is no evidence that it is sturdy. ``filtered``
    ports (no answer while the host answered elsewhere) and the UDP answers become notes and services; UDP
    services are not open TCP ports and do not change the model key.
    """
    open_results = sorted((r for r in results if connected(r)), key=lambda r: r.port)
    if not open_results:
        return None, ()
    services, banners, servers = _services(open_results, settings.port_aliases)
    udp_services = [info for info in (fingerprint_udp(u) for u in udp) if info is not None]
    os_guess = guess_os([*services, *udp_services])
    key = model_key(
        open_ports=[r.port for r in open_results], banners=banners, server_header=model_server_header(servers)
    )
    known = profiles.get(model_key_digest(key))
    zone = zones.zone_for(host) if zones is not None else None
    asset = Asset(
        host=host,
        open_ports=tuple(r.port for r in open_results),
        services=tuple(services) + tuple(udp_services),
        os_family=os_guess.family,
        os_evidence=os_guess.evidence,
        zone=zone.name if zone else UNZONED,
        zone_kind=zone.kind if zone else None,
        model_key=key,
        known_model=known[0] if known else None,
        ceiling=known[1] if known else None,
        first_seen_s=prior.first_seen_s if prior is not None else now_s,
        last_seen_s=now_s,
        sessions_limit=limit,
        notes=tuple(_asset_notes(limit, settings.per_host_sessions, filtered, udp_services)),
    )
    matches = rules.classify(asset)
    if unresponsive:
        asset, matches = _without_fallback(asset, matches, rules)
    medical = asset.known_model is not None or any(m.medical for m in matches)
    return dataclasses.replace(asset, groups=tuple(m.group for m in matches), medical=medical), matches


def asset_from_row(
    row: AssetRow, profiles: Mapping[str, tuple[str, int | None]], zones: Zones | None
) -> Asset:
    """The Asset the inventory holds for a host (a host finished before a resume, or left alone)."""
    services = []
    for d in row.services if isinstance(row.services, list) else []:
        if isinstance(d, dict):
            services.append(
                ServiceInfo(
                    port=int(d.get("port", 0)),
                    service=str(d.get("service", "unknown")),
                    product=d.get("product"),
                    version=d.get("version"),
                    detail=d.get("detail"),
                    title=d.get("title"),
                    server=d.get("server"),
                    protocol=str(d.get("protocol", "tcp")),
                )
            )
    known = profiles.get(model_key_digest(row.model_key or ""))
    zone = zones.zone_for(row.host) if zones is not None else None
    return Asset(
        host=row.host,
        open_ports=tuple(row.open_ports),
        services=tuple(services),
        os_family=row.os_family or "unknown",
        os_evidence=(),
        zone=row.zone or UNZONED,
        zone_kind=zone.kind if zone else None,
        model_key=row.model_key or "",
        known_model=known[0] if known else None,
        ceiling=known[1] if known else None,
        groups=tuple(row.groups),
        first_seen_s=row.first_seen_s,
        last_seen_s=row.last_seen_s,
        notes=("finished before resume",),
        medical=known is not None or "Medical Device?" in row.groups,
    )


def alert_from_dict(d: Mapping[str, Any]) -> Alert:
    """An Alert as the store keeps it."""
    return Alert(
        host=str(d["host"]),
        model=str(d.get("model", "")),
        zone=str(d.get("zone", "")),
        zone_kind=str(d.get("zone_kind", "")),
        evidence=tuple(d.get("evidence", ())),
        first_seen=str(d.get("first_seen", "")),
        groups=tuple(d.get("groups", ())),
    )


def apply_os_hints(assets: dict[str, Asset], hints: Mapping[str, Any]) -> None:
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


# --- the inventory ----------------------------------------------------------------------------------------


def _zone_before(row: AssetRow | None, scan_id: int) -> tuple[bool, str | None]:
    """(new, zone before this scan) of a host found now, from its inventory row."""
    if row is None:
        return True, None
    if row.scan_id == scan_id:
        # A row already written by the interrupted part of this same scan: compare with what it replaced.
        return row.previous_scan_id is None, row.previous_zone
    return False, row.zone


def inventory_changes(
    hosts: Sequence[str], found: Sequence[Asset], prior: Mapping[str, AssetRow], scan_id: int | None
) -> tuple[tuple[str, ...], tuple[str, ...], tuple[Move, ...]]:
    """New, gone and moved hosts relative to the inventory as it was before this scan (none without one)."""
    if scan_id is None:
        return (), (), ()
    new: list[str] = []
    moved: list[Move] = []
    for a in found:
        is_new, before_zone = _zone_before(prior.get(a.host), scan_id)
        if is_new:
            new.append(a.host)
        elif before_zone != a.zone:
            moved.append(Move(a.host, before_zone, a.zone))
    found_hosts = {a.host for a in found}
    targets = set(hosts)
    gone = [h for h in prior if h in targets and h not in found_hosts]
    return (
        tuple(sorted(new, key=addr_key)),
        tuple(sorted(gone, key=addr_key)),
        tuple(sorted(moved, key=lambda m: addr_key(m.host))),
    )


def addr_key(host: str) -> tuple[int, int]:
    """Sort key of an address: IPv4 before IPv6, numerically; anything else last."""
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return (9, 0)
    return (addr.version, int(addr))
