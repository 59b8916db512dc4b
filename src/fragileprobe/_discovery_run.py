"""discover(): the executor of a discovery run, the async part. It reads top to bottom.

:func:`discover` checks its inputs, loads what the store knows, works the hosts (each through its own
limiter and device-side session ledger, all under one global pacer), then assembles the report. Every
decision on the way (which port next, which probe, which timeout, when a host is given up on, what it is,
whether it alerts, what the report says) is asked of :mod:`fragileprobe._discovery_policy`, which does no
I/O; this module only does what it is told and feeds the results back. The module docstring of
:mod:`fragileprobe._discovery` tells what a scan does to each host, and why.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import structlog

from fragileprobe._discovery import DEFAULT_MAX_HOSTS_IN_PARALLEL, HTTP_BODY_BYTES, MAX_HOSTS_IN_PARALLEL
from fragileprobe._discovery_policy import (
    Conclusion,
    DiscoveryPolicy,
    Findings,
    HostProbing,
    PortProbe,
    RunTally,
    ScanPlan,
    addr_key,
    apply_os_hints,
    assemble_report,
    host_order,
    run_notes,
)
from fragileprobe._discovery_settings import DiscoveryOptions, DiscoverySettings
from fragileprobe._errors import ConfigError, FragileProbeError, RawUnavailableError
from fragileprobe._fingerprint import model_key_digest
from fragileprobe._groups import JsonlAlertSink, Rules, WebhookAlertSink, Zones, log_alert
from fragileprobe._hostpolicy import ProbeKind
from fragileprobe._limiter import ConcurrencyLimiter
from fragileprobe._probes import FD_HEADROOM, check_socket_budget, grab_banner, http_get, tcp_connect
from fragileprobe._scope import parse_targets
from fragileprobe._sessions import DeviceSessions
from fragileprobe._timing import PRIORITY_FIRST_LOOK, PRIORITY_LIVE, PRIORITY_LOOK_AGAIN, GlobalPacer
from fragileprobe._udp import udp_probe

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
    from pathlib import Path
    from typing import Unpack

    from fragileprobe._discovery import Asset, DiscoveryProgress, DiscoveryReport
    from fragileprobe._groups import Alert, GroupMatch
    from fragileprobe._net import Network
    from fragileprobe._probes import ProbeResult
    from fragileprobe._scope import Scope
    from fragileprobe._sessions import SessionPool
    from fragileprobe._store import AssetRow, ProfileStore

__all__ = ["auto_hosts_in_parallel", "discover", "discover_sync"]

log = structlog.get_logger(__name__)


async def discover(
    targets: str | Iterable[str],
    *,
    scope: Scope,
    settings: DiscoverySettings | None = None,
    zones: Zones | None = None,
    rules: Rules | None = None,
    store: ProfileStore | None = None,
    resume: bool = False,
    alert_file: str | Path | None = None,
    webhook_url: str | None = None,
    progress: Callable[[DiscoveryProgress], None] | None = None,
    network: Network | None = None,
    **options: Unpack[DiscoveryOptions],
) -> DiscoveryReport:
    """Find the hosts among ``targets``, fingerprint them, group them and alert on misplaced devices.

    Args:
        targets: Target spec (``"10.1.0.0/24"``, ranges, lists); every address must lie inside ``scope``.
        scope: The authorized scope; targets outside raise ScopeError before anything is sent.
        settings: How gently to scan (:class:`~fragileprobe.DiscoverySettings`; default: its defaults).
        zones: Network zones (default: none, every host "unzoned", no alerts).
        rules: Group rules (default ``Rules.default()``).
        store: ProfileStore for stored ceilings, the inventory and resume (default: none).
        resume: Continue the latest unfinished scan with the same targets and parameters (needs a store).
        alert_file: JSON-lines file that alerts are appended to.
        webhook_url: URL each alert is POSTed to (bounded timeout; failures logged, not raised).
        progress: Called after each address with a DiscoveryProgress.
        network: How connections are made (default: real sockets; ``fragileprobe.testing.FakeNetwork``).
        **options: Any field of :class:`~fragileprobe.DiscoverySettings` as a flat keyword (``ports``,
            ``per_host_sessions``, ``rate_per_host``, ``connect_timeout_s`` ...), when ``settings`` is
            not given.

    Returns:
        A DiscoveryReport.

    Raises:
        ConfigError: A bad parameter (``field`` names it), ``resume`` without a store, or ``settings``
            together with flat keywords.
        ScopeError: A target outside ``scope``; nothing was sent.
        StoreError: The store cannot be read or written.
        TypeError: A keyword that is neither an argument nor a setting.
    """
    started_s = anyio.current_time()
    hosts = parse_targets(targets, scope=scope)
    config = DiscoverySettings.merge(settings, options)
    parallel = _check_inputs(config, len(hosts), store=store, resume=resume, zones=zones, rules=rules)
    sinks = _AlertSinks.open(alert_file, webhook_url)
    raw_ok, notes = _raw_extras(config)
    inventory = _Inventory(store)
    known = await inventory.load(hosts, config.params(), resume=resume)
    policy = DiscoveryPolicy(
        config, Rules.default() if rules is None else rules, zones, known.profiles, known.prior
    )
    plan = ScanPlan(
        hosts=tuple(hosts),
        todo=host_order(hosts, known.done_before, config.seed),
        done_before=known.done_before,
        scan_id=known.scan_id,
        parallel=parallel,
    )
    run = _Run(
        policy,
        plan,
        inventory,
        sinks,
        GlobalPacer(config.global_rate),
        started_s,
        progress=progress,
        network=network,
        findings=Findings(notes=[*notes, *known.notes]),
    )
    log.info(
        "discovery.start",
        hosts=len(hosts),
        todo=len(plan.todo),
        ports=len(config.ports),
        scan_id=plan.scan_id,
        per_host_sessions=config.per_host_sessions,
        rate_per_host=config.rate_per_host,
        max_hosts_in_parallel=parallel,
        global_rate=config.global_rate,
        liveness_ports=config.liveness_ports,
    )
    observer = await _work_all(run, watch_syn_acks=raw_ok)
    report = await _wrap_up(run, observer, scope=scope, icmp=raw_ok)
    log.info(
        "discovery.done",
        assets=len(report.assets),
        alerts=len(report.alerts),
        unresponsive=len(report.unresponsive),
        wall_time_s=round(report.wall_time_s, 3),
        hosts_alive=run.tally.alive,
        probes_sent=run.tally.probes,
        peak_hosts_in_flight=run.tally.peak_hosts_in_flight,
    )
    return report


def discover_sync(targets: str | Iterable[str], **kwargs: Any) -> DiscoveryReport:
    """Run :func:`discover` from synchronous code (also inside a running notebook loop)."""
    import importlib

    run_sync = importlib.import_module("fragileprobe._sync").run_sync
    result: DiscoveryReport = run_sync(discover, targets, **kwargs)
    return result


def auto_hosts_in_parallel(hosts: int, per_host_sessions: int) -> int:
    """Hosts worked at once when not given: as many as the file-descriptor budget allows, at most
    :data:`~fragileprobe._discovery.MAX_HOSTS_IN_PARALLEL` and never more than there are hosts.

    Each host holds at most ``per_host_sessions`` sockets; :data:`~fragileprobe._probes.FD_HEADROOM`
    descriptors stay free for everything else (the store, logs, the event loop).
    """
    try:
        import resource

        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except ImportError:  # pragma: no cover - not POSIX
        soft = DEFAULT_MAX_HOSTS_IN_PARALLEL + FD_HEADROOM
    budget = (
        MAX_HOSTS_IN_PARALLEL
        if soft == getattr(resource, "RLIM_INFINITY", -1)
        else ((soft - FD_HEADROOM) // per_host_sessions)
    )
    return max(1, min(hosts, MAX_HOSTS_IN_PARALLEL, budget))


# --- before anything is sent ------------------------------------------------------------------------------


def _check_inputs(
    settings: DiscoverySettings,
    hosts: int,
    *,
    store: ProfileStore | None,
    resume: bool,
    zones: object,
    rules: object,
) -> int:
    """Check what the settings cannot check alone; return the hosts worked at once."""
    per_host = settings.per_host_sessions
    parallel = settings.max_hosts_in_parallel or auto_hosts_in_parallel(hosts, per_host)
    in_flight = min(hosts, parallel)
    check_socket_budget(
        in_flight * per_host, f"max_hosts_in_parallel x per_host_sessions ({in_flight} x {per_host})"
    )
    if resume and store is None:
        raise ConfigError("resume=True needs a store (the unfinished scan is kept there)", field="resume")
    if zones is not None and not isinstance(zones, Zones):
        raise ConfigError(f"zones: must be a Zones object, got {type(zones).__name__}", field="zones")
    if rules is not None and not isinstance(rules, Rules):
        raise ConfigError(f"rules: must be a Rules object, got {type(rules).__name__}", field="rules")
    return parallel


def _raw_extras(settings: DiscoverySettings) -> tuple[bool, list[str]]:
    """Whether the raw extras run, and the note when they were asked for and cannot."""
    if not settings.raw:
        return False, []
    raw_ok, why = _raw_status()
    return raw_ok, [] if raw_ok else [f"raw extras (ICMP, passive OS hint) skipped: {why}"]


def _raw_status() -> tuple[bool, str]:
    """Whether the raw extras can run here (scapy installed, root/CAP_NET_RAW), without importing scapy."""
    try:
        from fragileprobe._raw import raw_available
    except ImportError:  # pragma: no cover - the module ships with fragileprobe
        return False, "fragileprobe._raw is not available"
    return raw_available()


@dataclass(slots=True)
class _AlertSinks:
    """Where an alert goes besides the log and the store: a JSON-lines file, a webhook."""

    file: JsonlAlertSink | None = None
    webhook: WebhookAlertSink | None = None

    @classmethod
    def open(cls, alert_file: str | Path | None, webhook_url: str | None) -> _AlertSinks:
        # The webhook first: it only checks its URL, while the alert file is created when it is opened, and
        # nothing may be created before every input that would use it has been validated.
        webhook = WebhookAlertSink(webhook_url) if webhook_url is not None else None
        return cls(JsonlAlertSink(alert_file) if alert_file is not None else None, webhook)

    async def write(self, alert: Alert) -> None:
        if self.file is not None:
            await anyio.to_thread.run_sync(self.file.write, alert)

    async def send(self, alert: Alert) -> None:
        if self.webhook is not None:
            await self.webhook.send(alert)

    def notes(self, tally: RunTally) -> list[str]:
        webhook = self.webhook
        if webhook is None:
            return run_notes(tally)
        return run_notes(tally, webhook_failures=webhook.failures, webhook_url=webhook.url)


# --- the store ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Known:
    """What the store knew before this call."""

    profiles: dict[str, tuple[str, int | None]] = field(default_factory=dict)
    prior: Mapping[str, AssetRow] = field(default_factory=dict)
    scan_id: int | None = None
    done_before: frozenset[str] = frozenset()
    notes: tuple[str, ...] = ()


@dataclass(slots=True)
class _Inventory:
    """The store's side of a run (through ``store.aio``: each call in a worker thread, one at a time);
    without a store, nothing happens."""

    store: ProfileStore | None

    async def load(self, hosts: Sequence[str], params: Mapping[str, Any], *, resume: bool) -> _Known:
        """Stored ceilings, the inventory, and the scan this call writes (an unfinished one on resume)."""
        store = self.store
        if store is None:
            return _Known()
        profiles = {
            model_key_digest(p.model_key): (p.model_key, p.ceiling) for p in await store.aio.profiles()
        }
        prior = {a.host: a for a in await store.aio.assets()}
        scan_id: int | None = None
        done_before: frozenset[str] = frozenset()
        notes: tuple[str, ...] = ()
        if resume:
            scan_id, done_before, notes = await _resume(store, hosts, params)
        if scan_id is None:
            scan_id = await store.aio.start_scan(hosts, params)
        return _Known(profiles, prior, scan_id, done_before, notes)

    async def save_asset(self, scan_id: int | None, asset: Asset) -> None:
        if self.store is not None:
            await self.store.aio.upsert_asset(
                asset.host,
                scan_id=scan_id,
                seen_at_s=asset.last_seen_s,
                zone=asset.zone,
                model_key=asset.model_key,
                open_ports=asset.open_ports,
                services=[s.to_dict() for s in asset.services],
                os_family=asset.os_family,
                groups=asset.groups,
            )

    async def record_alert(self, scan_id: int | None, alert: Alert) -> None:
        if self.store is not None:
            await self.store.aio.record_alert({**alert.to_dict(), "scan_id": scan_id})

    async def host_done(self, scan_id: int | None, host: str) -> None:
        if self.store is not None and scan_id is not None:
            await self.store.aio.mark_host_done(scan_id, host)

    async def restore(self, policy: DiscoveryPolicy, findings: Findings, plan: ScanPlan) -> None:
        """The hosts the interrupted part of a resumed scan finished come back from the store."""
        if self.store is None or not plan.done_before:
            return
        rows = await self.store.aio.assets()
        policy.restore(findings, rows, await self.store.aio.alerts(), plan)

    async def finish(self, scan_id: int | None) -> None:
        if self.store is not None and scan_id is not None:
            await self.store.aio.finish_scan(scan_id)


async def _resume(
    store: ProfileStore, hosts: Sequence[str], params: Mapping[str, Any]
) -> tuple[int | None, frozenset[str], tuple[str, ...]]:
    """The unfinished scan with these targets and parameters: its id, its finished hosts, a note."""
    unfinished = await store.aio.unfinished_scan(hosts, params)
    if unfinished is None:
        return (
            None,
            frozenset(),
            ("resume=True but no unfinished scan with these targets and parameters: started a new one",),
        )
    done = frozenset(await store.aio.hosts_done(unfinished.scan_id))
    note = f"resumed scan {unfinished.scan_id}: {len(done)} hosts were already done"
    return unfinished.scan_id, done, (note,)


# --- the hosts ----------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Run:
    """One call's executor state: the policy it asks, where results go, the pacer, the clock's start."""

    policy: DiscoveryPolicy
    plan: ScanPlan
    inventory: _Inventory
    sinks: _AlertSinks
    pacer: GlobalPacer
    started_s: float
    progress: Callable[[DiscoveryProgress], None] | None = None
    network: Network | None = None
    findings: Findings = field(default_factory=Findings)
    tally: RunTally = field(default_factory=RunTally)


async def _work_all(run: _Run, *, watch_syn_acks: bool) -> Any:
    """Work every host (``parallel`` at once, under the global pacer); return the SYN-ACK observer if any."""
    observer: Any = None
    todo = run.plan.todo
    async with contextlib.AsyncExitStack() as stack:
        if watch_syn_acks and todo:
            observer = await _watch_syn_acks(stack, todo, run.findings.notes)
        try:
            async with anyio.create_task_group() as outer:
                outer.start_soon(run.pacer.run)
                queue = iter(todo)  # shared: each host is taken by exactly one worker
                async with anyio.create_task_group() as tg:
                    for _ in range(min(run.plan.parallel, max(len(todo), 1))):
                        tg.start_soon(_worker, run, queue)
                outer.cancel_scope.cancel()  # every host is done: stop the pacer
        except ExceptionGroup as group:
            # A worker failed (the store could not be written, a progress callback raised): surface our
            # own error as itself rather than wrapped in the task group's ExceptionGroup.
            own = _first_own_error(group)
            if own is None:
                raise
            raise own from group
    return observer


async def _watch_syn_acks(stack: contextlib.AsyncExitStack, todo: Sequence[str], notes: list[str]) -> Any:
    """The passive OS hint: watch the SYN-ACKs our own full connects receive (sends nothing)."""
    from fragileprobe._raw import syn_ack_observer

    try:
        return await stack.enter_async_context(syn_ack_observer(todo))
    except RawUnavailableError as exc:
        notes.append(f"passive OS hint skipped: {exc}")
        return None


async def _worker(run: _Run, queue: Iterator[str]) -> None:
    for host in queue:
        run.tally.host_started()
        try:
            await _work_host(run, host)
        finally:
            run.tally.host_stopped()


async def _work_host(run: _Run, host: str) -> None:
    """Probe one host under its own limits, ask what it is, and keep the answer."""
    policy = run.policy
    probing = policy.start(host)
    if probing.left_alone:
        # The host's model failed at its lowest measured level (stored ceiling 0): not even one session.
        kept = policy.left_alone(probing)
        log.warning("discovery.host_left_alone", host=host, model_key=kept.known_model, ceiling=0)
        await _finish_host(run, host, kept, ())
        return
    try:
        await _probe_host(run, probing)
    except Exception as exc:
        # Our own code failed on this host's bytes: a result about this host (given up on, never "safe to
        # scan"), never the end of the scan.
        run.findings.unresponsive.append(probing.unresponsive(_host_failed(host, "probing", exc)))
        await _finish_host(run, host, None, ())
        return
    conclusion, unresponsive = policy.conclude(probing, run.tally)
    if unresponsive is not None:
        run.findings.unresponsive.append(unresponsive)
        log.warning("discovery.host_unresponsive", host=host, reason=unresponsive.reason)
    if conclusion is Conclusion.SILENT:
        await _finish_host(run, host, None, ())
        return
    asset, matches = _assess(run, probing, given_up=unresponsive is not None)
    await _finish_host(run, host, asset, matches)


def _assess(
    run: _Run, probing: HostProbing, *, given_up: bool
) -> tuple[Asset | None, tuple[GroupMatch, ...]]:
    """The policy's Asset for the host; a failure of our own code is a result about this host."""
    try:
        asset, matches = run.policy.assess(probing, now_s=time.time())
    except Exception as exc:
        reason = _host_failed(probing.host, "fingerprinting", exc)
        if not given_up:
            run.findings.unresponsive.append(probing.unresponsive(reason))
        return None, ()
    if asset is not None:
        run.policy.learn(asset)
    return asset, matches


async def _probe_host(run: _Run, probing: HostProbing) -> None:
    """Probe one host through its own limiter: liveness ports one at a time, then the rest; stop if it goes
    quiet; then one datagram per UDP port if it is alive.

    Every TCP session is counted on the device's side: its slot stays charged until the host has let go of
    it (its FIN or RST, or ``linger_s``), so the host's limit is what it holds from us, not what we hold.
    """
    s = run.policy.settings
    limiter = ConcurrencyLimiter(ceiling=probing.limit, rate_per_s=s.rate_per_host)
    async with DeviceSessions(probing.host, linger_s=s.linger_s, network=run.network) as sessions:
        await _probe_tcp(run, probing, sessions.pool(limiter))
        if probing.working and s.udp_ports:
            await _probe_udp(run, probing, limiter)


async def _probe_tcp(run: _Run, probing: HostProbing, pool: SessionPool) -> None:
    state = probing.state
    async with anyio.create_task_group() as tg:
        # Liveness ports one at a time: an address that turns out alive never sees more than one of our
        # sessions before its limits are known to apply.
        priority = PRIORITY_FIRST_LOOK
        while state.in_liveness and (port := state.next_port()) is not None:
            await _probe_port(run, probing, pool, port, tg.cancel_scope, priority)
            priority = PRIORITY_LOOK_AGAIN
        if probing.working:
            # `limit` runners, not one task per port: memory stays O(limit) per host even for "1-65535".
            # The limiter admits them one session (and one rate slot) at a time.
            for _ in range(min(probing.limit, len(run.policy.settings.ports))):
                tg.start_soon(_runner, run, probing, pool, tg.cancel_scope)


async def _runner(run: _Run, probing: HostProbing, pool: SessionPool, cancel: anyio.CancelScope) -> None:
    while (port := probing.state.next_port()) is not None:
        await _probe_port(run, probing, pool, port, cancel)


async def _probe_port(
    run: _Run,
    probing: HostProbing,
    pool: SessionPool,
    port: int,
    cancel: anyio.CancelScope,
    priority: int = PRIORITY_LIVE,
) -> None:
    """One probe on one port: a slot, a pacer grant, the probe the policy chose; its result fed back."""
    probe = probing.probe(port)
    slot = await pool.slot()
    try:
        if probing.state.stopped():
            return
        await run.pacer.acquire(PRIORITY_LIVE if probing.state.alive else priority)
        connect_t, banner_t = probing.timeouts(run.policy.settings, run.tally.network_rtt)
        run.tally.probes += 1
        res = await _run_probe(probing.host, probe, connect_t, banner_t, slot.network)
    finally:
        slot.release()  # its connection keeps the slot charged until the host let go of it
    probing.record(probe, res, run.tally)
    if probing.state.stopped():
        cancel.cancel()


async def _run_probe(
    host: str, probe: PortProbe, connect_t: float, banner_t: float, network: Network
) -> ProbeResult:
    if probe.kind is ProbeKind.CONNECT:
        return await tcp_connect(host, probe.port, timeout_s=connect_t, network=network)
    if probe.kind is ProbeKind.HTTP:
        return await http_get(
            host,
            probe.port,
            "/",
            timeout_s=connect_t,
            read_timeout_s=banner_t,
            max_bytes=HTTP_BODY_BYTES,
            network=network,
        )
    return await grab_banner(
        host,
        probe.port,
        timeout_s=connect_t,
        read_timeout_s=banner_t,
        total_timeout_s=connect_t + banner_t,
        network=network,
    )


async def _probe_udp(run: _Run, probing: HostProbing, limiter: ConcurrencyLimiter) -> None:
    s = run.policy.settings
    timeout_s = probing.udp_timeout(s)
    for port in s.udp_ports:
        async with limiter.session():
            await run.pacer.acquire(PRIORITY_LIVE)
            run.tally.probes += 1
            probing.udp.append(
                await udp_probe(probing.host, port, timeout_s=timeout_s, community=s.snmp_community)
            )


def _host_failed(host: str, stage: str, exc: Exception) -> str:
    """Log a failure of our own code on one host's bytes; the reason the host is reported with.

    Whatever a device sent, the scan of the other hosts goes on and their results stand (one bad host used
    to end discover() with an ExceptionGroup). The host is reported as given up on, so it is never grouped
    "safe to scan". Cancellation is a BaseException and is never caught here.
    """
    reason = f"{stage} it failed: {type(exc).__name__}: {str(exc)[:200]}"
    log.error("discovery.host_failed", host=host, stage=stage, error=reason, exc_info=exc)
    return reason


async def _finish_host(run: _Run, host: str, asset: Asset | None, matches: Sequence[GroupMatch]) -> None:
    """Keep one finished host (in the store at once: a killed scan loses only the hosts in flight)."""
    if asset is not None:
        await _keep_asset(run, asset, matches)
    await run.inventory.host_done(run.plan.scan_id, host)
    run.tally.hosts_done += 1
    if run.progress is not None:
        elapsed_s = anyio.current_time() - run.started_s
        run.progress(run.policy.progress(run.tally, run.findings, run.plan, host, elapsed_s=elapsed_s))


async def _keep_asset(run: _Run, asset: Asset, matches: Sequence[GroupMatch]) -> None:
    run.findings.assets[asset.host] = asset
    await run.inventory.save_asset(run.plan.scan_id, asset)
    alert = run.policy.alert(run.findings, asset, matches)
    if alert is None:
        return
    run.findings.alerts[asset.host] = alert
    log_alert(alert)
    await run.sinks.write(alert)
    await run.inventory.record_alert(run.plan.scan_id, alert)
    await run.sinks.send(alert)


def _first_own_error(group: BaseExceptionGroup[BaseException]) -> FragileProbeError | None:
    for exc in group.exceptions:
        if isinstance(exc, FragileProbeError):
            return exc
        if isinstance(exc, BaseExceptionGroup):
            found = _first_own_error(exc)
            if found is not None:
                return found
    return None


# --- after every host ---------------------------------------------------------------------------------------


async def _wrap_up(run: _Run, observer: Any, *, scope: Scope, icmp: bool) -> DiscoveryReport:
    """Notes, the raw extras' findings, the resumed hosts from the store; the scan closed; the report."""
    findings, plan = run.findings, run.plan
    findings.notes.extend(run.sinks.notes(run.tally))
    if observer is not None:
        apply_os_hints(findings.assets, observer.hints())
    icmp_only: tuple[str, ...] = ()
    if icmp:
        silent = [h for h in plan.todo if h not in findings.assets]
        icmp_only = await _icmp_sweep(silent, scope, plan.parallel, findings.notes)
    await run.inventory.restore(run.policy, findings, plan)
    await run.inventory.finish(plan.scan_id)
    return assemble_report(
        findings,
        plan,
        run.tally,
        run.policy.settings,
        prior=run.policy.prior,
        wall_time_s=anyio.current_time() - run.started_s,
        icmp_only=icmp_only,
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
    return tuple(sorted(alive, key=addr_key))
