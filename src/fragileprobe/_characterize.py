"""characterize(): measure how many concurrent sessions a device survives, and derive its safe ceiling.

The driver does the I/O; the decisions come from the pure :class:`~fragileprobe._ramp.RampStrategy`. One
:class:`~fragileprobe.Guard` holds the whole run (scope check, device-side session ledger, watchdog).

A level N is N sessions on the *device*, the heartbeat included: the same count as a Guard's ceiling, a
stored ceiling and an exported scanner setting. Per level:

1. the Guard's ceiling is set to N, and N minus the heartbeat's place workers start; each holds one session
   the way a scanner's check does, back to back: a full connect to the next service port (round-robin), a
   banner read (or a well-formed keep-alive ``HEAD`` on web ports), then it keeps the session open for
   ``hold_s`` while reading, so a session the device closes is reopened at once; a session's slot stays
   charged until the device has let go of it;
2. the main task follows the watchdog's beats for ``dwell_s``; each beat records how many sessions the
   device held at that moment (``LevelResult.held_at_beats``), and the level is credited only with the count
   actually held (``LevelResult.held``). It fails the moment the watchdog declares the device down (the Guard
   cancels every session at once); with early warning on, it is *warned* when the heartbeat latency stays
   above its limit;
3. after a failure the recovery hook runs, then ``healthy_beats`` good beats in a row are awaited (both
   within ``recovery_timeout_s``), the watchdog is re-armed and the ramp goes on.

Each finished trial is written to the store the moment it ends. A failed recovery stops the run with
``RecoveryError`` whose ``partial`` attribute holds every observation so far (also stored).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import statistics
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import structlog

from fragileprobe._errors import ConfigError, DeviceDownError, ProbeError, RecoveryError
from fragileprobe._guard import Guard, opens_session
from fragileprobe._heartbeat import HttpHeartbeat
from fragileprobe._probes import check_socket_budget
from fragileprobe._profile import (
    DEFAULT_MARGIN_FRACTION,
    DEFAULT_MARGIN_LEVELS,
    Characterization,
    LevelOutcome,
    LevelResult,
    TrialResult,
)
from fragileprobe._ramp import (
    DEFAULT_CRASH_BUDGET,
    DEFAULT_LADDER,
    DEFAULT_TRIALS,
    Done,
    Failed,
    NextTrial,
    OutOfTime,
    Passed,
    Proceed,
    RampConfig,
    RampStrategy,
    Recover,
    Recovered,
    TestLevel,
    Warned,
)
from fragileprobe._recovery import DEFAULT_RECOVERY_TIMEOUT_S, RecoveryContext, call_recovery
from fragileprobe._scope import Scope, Target
from fragileprobe._sync import run_sync

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator, Sequence

    from fragileprobe._heartbeat import Beat
    from fragileprobe._net import Network
    from fragileprobe._probes import ProbeStream
    from fragileprobe._store import ProfileStore
    from fragileprobe._watchdog import Watchdog

__all__ = [
    "EarlyWarning",
    "ProgressEvent",
    "characterize",
    "characterize_sync",
]

log = structlog.get_logger(__name__)

# Bytes a session reads before it stops reading and just holds the connection: a banner's first line or
# an HTTP response head fits; a device that floods cannot make the prober buffer more.
SESSION_READ_MAX_BYTES = 4096
# Ports on which a session sends a small HEAD request instead of waiting for a banner (HTTP servers speak
# second). The heartbeat port of an HttpHeartbeat is added per run.
WEB_PORTS = frozenset({80, 591, 631, 5985, 8000, 8008, 8080, 8081, 8888})
# After a failed connect a worker pauses this long before the next, so a refused port cannot spin the loop.
FAILED_SESSION_PAUSE_S = 0.02
# Beats (at most) to wait for the device to look idle again between levels.
SETTLE_BEATS = 10
# Settings that change what a level measures; resume refuses a run stored with other values (ConfigError
# naming both): its trials and the new ones would be merged into one ceiling. ``linger_s`` decides how
# long a closed session still counts as held by the device, so it changes what a level holds too.
RESUME_MUST_MATCH = (
    "ladder", "dwell_s", "hold_s", "ports", "heartbeat", "early_warning", "margin_fraction", "margin_levels",
    "linger_s",
)  # fmt: skip
_UNRECORDED = "<not recorded>"
# A well-formed HTTP/1.1 request that asks the server to keep the session open, so the session can be
# held without malformed traffic; a server that closes anyway gets a new session at once.
_HEAD_REQUEST = (
    "HEAD / HTTP/1.1\r\nHost: {host}\r\nConnection: keep-alive\r\n"
    "User-Agent: fragileprobe characterization\r\n\r\n"
)


@dataclass(frozen=True, slots=True, kw_only=True)
class EarlyWarning:
    """Stop climbing when the heartbeat slows down, before the device dies.

    A level is *warned* (and climbing stops there, with no crash) when ``consecutive_beats`` heartbeats in
    a row take longer than ``latency_factor`` times the idle baseline (measured before the ramp) and
    longer than ``min_latency_s``.

    Attributes:
        latency_factor: Multiple of the idle baseline that counts as slow (> 1).
        consecutive_beats: Slow beats in a row needed (one slow beat can be the prober's own hiccup).
        min_latency_s: Absolute floor: beats faster than this never count as slow.
    """

    latency_factor: float = 3.0
    consecutive_beats: int = 2
    min_latency_s: float = 0.0

    def __post_init__(self) -> None:
        f = self.latency_factor
        if isinstance(f, bool) or not isinstance(f, int | float) or not math.isfinite(f) or f <= 1.0:
            raise ConfigError(f"latency_factor: must be a number > 1, got {f!r}")
        n = self.consecutive_beats
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"consecutive_beats: must be an integer >= 1, got {n!r}")
        m = self.min_latency_s
        if isinstance(m, bool) or not isinstance(m, int | float) or not math.isfinite(m) or m < 0:
            raise ConfigError(f"min_latency_s: must be a number >= 0, got {m!r}")

    def limit_s(self, baseline_s: float) -> float:
        """The latency above which a beat counts as slow."""
        return max(self.latency_factor * baseline_s, self.min_latency_s)


@dataclass(frozen=True, slots=True)
class ProgressEvent:
    """What the ramp is doing, for a progress display.

    Attributes:
        kind: ``baseline``, ``level_start``, ``level_end``, ``recovering``, ``recovered``, ``trial_end``
            or ``done``.
        trial: 0-based trial.
        level: The level concerned (None for run-wide events).
        outcome: For ``level_end``: ``passed``, ``failed``, ``warned`` or ``aborted``.
        elapsed_s: Seconds since the run started.
    """

    kind: str
    trial: int
    level: int | None
    outcome: str | None
    elapsed_s: float


def _positive(name: str, value: float | None, *, allow_none: bool = False, allow_zero: bool = False) -> None:
    if value is None and allow_none:
        return
    ok = not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)
    if not ok or value is None or value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(
            f"{name}: must be a {'non-negative' if allow_zero else 'positive'} number, got {value!r}"
        )


def _count(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name}: must be an integer >= {minimum}, got {value!r}")


@dataclass(slots=True, kw_only=True)
class _Run:
    """What the level and recovery helpers of one characterize() call share."""

    guard: Guard
    watchdog: Watchdog
    reserve: int
    target: Target
    address: str
    web_ports: set[int]
    dwell_s: float
    hold_s: float
    read_timeout_s: float
    early_warning: EarlyWarning | None
    baseline: float
    deadline: float | None
    log: Any


async def characterize(
    target: Target | str,
    *,
    scope: Scope,
    ladder: Sequence[int] = DEFAULT_LADDER,
    dwell_s: float = 5.0,
    trials: int = DEFAULT_TRIALS,
    recovery: Callable[..., Awaitable[Any]] | None = None,
    refine: bool = True,
    crash_budget: int = DEFAULT_CRASH_BUDGET,
    time_budget_s: float | None = None,
    early_warning: EarlyWarning | None = None,
    margin_fraction: float = DEFAULT_MARGIN_FRACTION,
    hold_s: float = 0.5,
    store: ProfileStore | None = None,
    model_key: str | None = None,
    name: str | None = None,
    resume: bool = False,
    interval_s: float = 1.0,
    heartbeat_timeout_s: float | None = None,
    failures_to_down: int = 1,
    healthy_beats: int = 3,
    recovery_timeout_s: float = DEFAULT_RECOVERY_TIMEOUT_S,
    baseline_beats: int = 5,
    connect_timeout_s: float = 2.0,
    read_timeout_s: float = 1.0,
    progress: Callable[[ProgressEvent], None] | None = None,
    linger_s: float | None = None,
    network: Network | None = None,
) -> Characterization:
    """Find how many concurrent sessions ``target`` survives and recommend a safe ceiling.

    Args:
        target: The device (a :class:`~fragileprobe.Target`, or an address with the default pump ports and
            an HTTP heartbeat on 8080).
        scope: The authorized scope; the target must lie in it (``ScopeError`` before anything is sent).
        ladder: Levels (concurrent sessions) to climb, strictly increasing.
        dwell_s: How long each level is held.
        trials: Passes up the ramp (fragile devices fail in slightly different places each time).
        recovery: Async callable that brings a crashed device back (see ``fragileprobe._recovery``);
            None: wait for it to come back by itself.
        refine: Test the levels between a failure and the last pass, so the boundary is exact.
        crash_budget: Crashes allowed per trial (each may be a power cycle by hand).
        time_budget_s: Stop (with what was measured) after this long; None: no limit.
        early_warning: Stop climbing when the heartbeat slows (see :class:`EarlyWarning`).
        margin_fraction: Safety margin below the lowest failing level (default 15%).
        hold_s: How long each session stays open after its banner/response.
        store: Where each finished trial and the result are written (and resumed from).
        model_key: The device model's key; None: derived from what the device shows.
        name: A name for the device / model in reports.
        resume: Continue the latest unfinished run for this target and model in ``store``; every stored
            trial, finished or not, stays evidence (``ConfigError`` if a setting of ``RESUME_MUST_MATCH``
            differs from the stored run's).
        interval_s: Seconds between heartbeats.
        heartbeat_timeout_s: Overrides the heartbeat's own timeout.
        failures_to_down: Failed beats in a row that declare the device down.
        healthy_beats: Good beats in a row that count as recovered.
        recovery_timeout_s: Bound on one recovery (hook plus healthy beats).
        baseline_beats: Idle beats measured before the ramp (the latency baseline).
        connect_timeout_s: Bound on each session's connect.
        read_timeout_s: Bound on each session's banner/response read.
        progress: Called with a :class:`ProgressEvent` at every step (must not block).
        linger_s: Most seconds a session stays counted after our close while the device has not let go
            (default: the Guard's, see :class:`~fragileprobe.Guard`).
        network: How connections are made (default: real sockets; ``fragileprobe.testing.FakeNetwork``).

    Returns:
        The :class:`~fragileprobe.Characterization`.

    Raises:
        ConfigError: A bad argument (named in the message).
        ScopeError: The target is outside ``scope``.
        DeviceDownError: The device did not answer its heartbeat before the run started (already down, or
            the heartbeat port is not open); nothing else was sent.
        RecoveryError: A recovery failed or timed out; ``.partial`` holds the observations so far.
        StoreError: The store could not be written.
    """
    config = RampConfig(
        ladder=tuple(ladder), trials=trials, refine=refine, crash_budget=crash_budget,
        margin_fraction=margin_fraction,
    )  # fmt: skip
    check_socket_budget(config.max_level + 1, f"ladder: its top level {config.max_level} (and a heartbeat)")
    _positive("dwell_s", dwell_s)
    _positive("hold_s", hold_s, allow_zero=True)
    _positive("time_budget_s", time_budget_s, allow_none=True)
    _positive("interval_s", interval_s)
    _positive("heartbeat_timeout_s", heartbeat_timeout_s, allow_none=True)
    _positive("recovery_timeout_s", recovery_timeout_s)
    _positive("connect_timeout_s", connect_timeout_s)
    _positive("read_timeout_s", read_timeout_s)
    _count("healthy_beats", healthy_beats, 1)
    _count("baseline_beats", baseline_beats, 1)
    _count("failures_to_down", failures_to_down, 1)
    if early_warning is not None and not isinstance(early_warning, EarlyWarning):
        raise ConfigError(f"early_warning: must be an EarlyWarning or None, got {early_warning!r}")
    if recovery is not None and not callable(recovery):
        raise ConfigError(f"recovery: must be an async callable or None, got {recovery!r}")
    if resume and store is None:
        raise ConfigError("resume: needs a store to resume from")
    if not isinstance(scope, Scope):
        raise ConfigError(f"scope: must be a Scope, got {scope!r}")
    tgt = Target(target) if isinstance(target, str) else target
    if not isinstance(tgt, Target):
        raise ConfigError(f"target: must be a Target or an address string, got {target!r}")
    heartbeat = tgt.heartbeat
    if heartbeat_timeout_s is not None:
        try:
            heartbeat = dataclasses.replace(heartbeat, timeout_s=heartbeat_timeout_s)  # type: ignore[type-var]
        except TypeError as exc:
            raise ConfigError(f"heartbeat_timeout_s: cannot override the timeout of {heartbeat!r}") from exc
    if opens_session(heartbeat):
        # A level counts the heartbeat's session: level 1 would be the heartbeat alone (the idle baseline
        # measures exactly that), and the port and model checks before the ramp already hold one probe
        # beside it. So the ramp starts at 2, and never loads the device above the level it tests.
        kept = tuple(lv for lv in config.ladder if lv >= 2)
        if not kept:
            raise ConfigError(
                f"ladder: {config.ladder} holds only the heartbeat's session (a level counts it too); give "
                "levels of 2 or more, or a heartbeat that opens no session"
            )
        config = dataclasses.replace(config, ladder=kept, min_level=2)
    address = scope.check(tgt.host)  # ScopeError here: nothing has been sent
    web_ports = set(WEB_PORTS)
    if isinstance(heartbeat, HttpHeartbeat):
        web_ports.add(heartbeat.port)
    bound = log.bind(host=address, target=tgt.label)

    t0 = anyio.current_time()
    started_epoch = time.time()
    deadline = None if time_budget_s is None else t0 + time_budget_s

    def emit(kind: str, trial: int, level: int | None = None, outcome: str | None = None) -> None:
        if progress is not None:
            progress(ProgressEvent(kind, trial, level, outcome, anyio.current_time() - t0))

    # The first ceiling is only for the model-key and open-port probes (one session beside the heartbeat);
    # every level sets its own.
    guard = Guard(
        tgt, ceiling=2, scope=scope, heartbeat=heartbeat, interval_s=interval_s,
        failures_to_down=failures_to_down, connect_timeout_s=connect_timeout_s, linger_s=linger_s,
        network=network,
    )  # fmt: skip
    try:
        await guard.__aenter__()
    except DeviceDownError as exc:
        raise DeviceDownError(
            f"{tgt.label} did not answer its heartbeat ({type(heartbeat).__name__} on port {heartbeat.port}) "
            f"before the characterization started: it is already down, or that port is not open. "
            f"Nothing else was sent. ({exc})"
        ) from exc
    try:
        watchdog = guard.watchdog
        assert watchdog is not None  # the Guard runs its watchdog (watchdog=True is the default)
        baseline = await _baseline(watchdog, baseline_beats)
        if baseline is None:
            raise DeviceDownError(
                f"{tgt.label} stopped answering its heartbeat on port {heartbeat.port} while the idle "
                "baseline was measured, before any load; nothing else was sent"
            )
        emit("baseline", 0)
        if model_key is None:
            model_key, open_ports = await _derive_model_key(
                guard, tgt, heartbeat, web_ports, read_timeout_s, name
            )
        else:
            open_ports = await _open_ports(guard, tgt)
        bound = bound.bind(model_key=model_key)
        if not open_ports:
            # Sessions to closed ports hold nothing: every level would "pass" with no load on the device and
            # the result would recommend a ceiling that was never tested.
            raise ConfigError(
                f"target.ports: none of {', '.join(map(str, tgt.ports))} accepts a connection on "
                f"{tgt.label}; the ramp's sessions would hold nothing (give the device's open service ports)"
            )
        if len(open_ports) < len(tgt.ports):
            closed = [p for p in tgt.ports if p not in open_ports]
            bound.warning("characterize.ports_closed", closed=closed, used=open_ports)
            tgt = dataclasses.replace(tgt, ports=tuple(open_ports))  # sessions go to open ports only

        previous: list[TrialResult] = []  # every stored trial of a resumed run, finished or not
        run_id: str | None = None
        params = {
            "ladder": list(config.ladder), "trials": trials, "dwell_s": dwell_s, "crash_budget": crash_budget,
            "refine": refine, "margin_fraction": config.margin_fraction,
            "margin_levels": DEFAULT_MARGIN_LEVELS, "hold_s": hold_s, "ports": list(tgt.ports),
            "heartbeat": _heartbeat_params(heartbeat), "linger_s": linger_s,
            "early_warning": None if early_warning is None else dataclasses.asdict(early_warning),
        }  # fmt: skip
        if store is not None:
            row = store.unfinished_run(host=address, model_key=model_key) if resume else None
            if row is not None:
                # What a level measures must not change mid-run: trials measured otherwise would be merged
                # into one ceiling. A run stored without one of these settings cannot prove it was the same.
                changed = [k for k in RESUME_MUST_MATCH if row.params.get(k, _UNRECORDED) != params[k]]
                if changed:
                    was = ", ".join(f"{k}={row.params.get(k, _UNRECORDED)!r}" for k in changed)
                    now = ", ".join(f"{k}={params[k]!r}" for k in changed)
                    raise ConfigError(
                        f"resume: the unfinished run {row.run_id} was measured with {was}, not {now}; resume "
                        "with the same settings, or start a new run without resume"
                    )
                run_id = row.run_id
                # Every stored trial stays evidence (an unfinished one's crash too); the plan goes on after
                # the finished ones, and a redone trial gets a new index: stored trials are never replaced.
                previous = sorted(row.trials, key=lambda t: t.index)
                bound.info(
                    "characterize.resumed", run_id=run_id, finished_trials=sum(t.complete for t in previous),
                    unfinished_trials=sum(not t.complete for t in previous),
                )  # fmt: skip
            else:
                run_id = store.begin_run(host=address, model_key=model_key, name=name, params=params)
        next_index = max((t.index for t in previous), default=-1) + 1
        strategy = RampStrategy(
            config, previous_trials=[t.outcomes for t in previous if t.complete][: config.trials]
        )
        run = _Run(
            guard=guard, watchdog=watchdog, reserve=guard.heartbeat_reserved, target=tgt, address=address,
            web_ports=web_ports,
            dwell_s=dwell_s, hold_s=hold_s, read_timeout_s=read_timeout_s,
            early_warning=early_warning, baseline=baseline, deadline=deadline, log=bound,
        )  # fmt: skip

        finished: list[TrialResult] = list(previous)
        current: list[LevelResult] = []
        trial_started = anyio.current_time()
        recoveries = 0

        def build(trials_: Sequence[TrialResult], reason: str) -> Characterization:
            return Characterization.from_trials(
                host=address, model_key=model_key, name=name, ladder=config.ladder, trials=trials_,
                margin_fraction=config.margin_fraction, baseline_latency_s=baseline,
                early_warning_factor=None if early_warning is None else early_warning.latency_factor,
                wall_time_s=sum(t.wall_time_s for t in previous) + (anyio.current_time() - t0),
                stop_reason=reason, run_id=run_id, started_at_epoch_s=started_epoch,
            )  # fmt: skip

        while True:
            action = strategy.next_action()
            if isinstance(action, TestLevel):
                emit("level_start", action.trial, action.level)
                result = await _run_level(run, action.level)
                current.append(result)
                emit("level_end", action.trial, action.level, result.outcome.value)
                bound.info(
                    "characterize.level", trial=action.trial, level=action.level,
                    outcome=result.outcome.value, elapsed_s=round(result.elapsed_s, 4),
                    latency_median_s=result.latency_median_s, in_flight=result.in_flight_at_end,
                )  # fmt: skip
                if result.outcome is LevelOutcome.PASSED:
                    strategy.observe(Passed(action.level))
                elif result.outcome is LevelOutcome.WARNED:
                    strategy.observe(Warned(action.level))
                elif result.outcome is LevelOutcome.FAILED:
                    strategy.observe(Failed(action.level))
                else:
                    strategy.observe(OutOfTime())
                if (
                    deadline is not None
                    and anyio.current_time() >= deadline
                    and not isinstance(strategy.next_action(), Recover | Done)
                ):
                    strategy.observe(OutOfTime())
            elif isinstance(action, Recover):
                recoveries += 1
                emit("recovering", action.trial, action.level)
                ctx = RecoveryContext(
                    host=address,
                    heartbeat=heartbeat,
                    trial=action.trial,
                    level=action.level,
                    attempt=recoveries,
                )
                try:
                    await _recover(run, recovery, ctx, healthy_beats, recovery_timeout_s)
                except RecoveryError as exc:
                    # Kept as evidence under its own index: its crash bounds the ceiling of this run, of a
                    # resumed one and of the model's profile.
                    partial_trial = TrialResult(
                        index=next_index, levels=tuple(current),
                        wall_time_s=anyio.current_time() - trial_started, complete=False,
                    )  # fmt: skip
                    partial = build([*finished, partial_trial], "recovery_failed")
                    if store is not None and run_id is not None:
                        store.record_trial(run_id, partial_trial)
                        store.mark_run(run_id, "recovery_failed")
                    exc.partial = partial
                    bound.error("characterize.recovery_failed", level=action.level, error=str(exc))
                    raise
                emit("recovered", action.trial, action.level)
                strategy.observe(Recovered())
            elif isinstance(action, NextTrial):
                trial = TrialResult(
                    index=next_index, levels=tuple(current),
                    wall_time_s=anyio.current_time() - trial_started,
                )
                next_index += 1
                finished.append(trial)
                if store is not None and run_id is not None:
                    store.record_trial(run_id, trial)  # its own transaction: survives kill -9 from here on
                emit("trial_end", action.finished)
                bound.info("characterize.trial_done", trial=action.finished, crashes=trial.crashes)
                current = []
                trial_started = anyio.current_time()
                strategy.observe(Proceed())
            else:
                assert isinstance(action, Done)
                if current:  # a trial cut short by the time budget
                    finished.append(
                        TrialResult(
                            index=next_index,
                            levels=tuple(current),
                            wall_time_s=anyio.current_time() - trial_started,
                            complete=False,
                        )
                    )
                char = build(finished, action.reason)
                if store is not None and run_id is not None:
                    store.finish_run(run_id, char, status=action.reason)
                emit("done", strategy.trial)
                bound.info(
                    "characterize.done", safe_ceiling=char.safe_ceiling, failed_at=char.failed_at,
                    crashes=char.crashes, reason=action.reason,
                )  # fmt: skip
                return char
    finally:
        await guard.__aexit__(None, None, None)


def _heartbeat_params(heartbeat: Any) -> dict[str, Any]:
    """What a heartbeat measures with, for the run's params: its kind, port and (HTTP) path."""
    return {
        "kind": type(heartbeat).__name__,
        "port": getattr(heartbeat, "port", None),
        "path": getattr(heartbeat, "path", None),
    }


def characterize_sync(target: Target | str, **kwargs: Any) -> Characterization:
    """:func:`characterize` from synchronous code (scripts; see ``fragileprobe.run_sync``)."""
    return run_sync(characterize, target, **kwargs)


async def _baseline(watchdog: Watchdog, beats: int) -> float | None:
    """Median latency of ``beats`` idle heartbeats; None if the device went down meanwhile."""
    latencies: list[float] = []
    while len(latencies) < beats:
        beat = await watchdog.next_beat()
        if watchdog.down:
            return None
        if beat.ok:
            latencies.append(beat.latency_s)
    return statistics.median(latencies)


async def _open_ports(guard: Guard, target: Target) -> list[int]:
    """The target's ports that accept a connection (one connect each, one at a time)."""
    from fragileprobe._probes import Outcome

    return [p for p in target.ports if (await guard.tcp_connect(p)).outcome is Outcome.OPEN]


async def _derive_model_key(
    guard: Guard, target: Target, heartbeat: Any, web_ports: set[int], read_timeout_s: float, name: str | None
) -> tuple[str, list[int]]:
    """Identify the model from what the device shows: open ports, banners, the web server's name.

    Returns the model key and the ports that accepted a connection (the sessions' ports).
    """
    # the one definition of model keys, and of which web server names the model (discovery's)
    from fragileprobe._fingerprint import model_key, model_server_header
    from fragileprobe._probes import Outcome, Phase

    open_ports: list[int] = []
    accepting: list[int] = []
    banners: dict[int, bytes] = {}
    servers: dict[int, str] = {}

    def accepted(res: Any) -> bool:
        # The connection was accepted, whatever the service then did (said nothing in time, reset, spoke
        # garbage): a session can be held there. Only a refused or timed-out connect means "closed".
        if res.outcome is Outcome.TIMEOUT:
            return res.phase is not Phase.CONNECT
        return res.outcome in (Outcome.OPEN, Outcome.RESET, Outcome.PROTOCOL_ERROR)

    for port in target.ports:  # one at a time: identification must not load the device
        if port in web_ports:
            http = await guard.http_get(port, read_timeout_s=read_timeout_s)
            if accepted(http):
                accepting.append(port)
            if http.outcome is Outcome.OPEN:
                open_ports.append(port)
                if http.server:
                    servers[port] = http.server
            continue
        res = await guard.grab_banner(port, read_timeout_s=read_timeout_s)
        if accepted(res):
            accepting.append(port)
        if res.outcome is Outcome.OPEN:
            open_ports.append(port)
            banners[port] = res.data
    server = model_server_header(servers)
    key = model_key(open_ports=open_ports, banners=banners, server_header=server, name=name)
    return key, accepting


async def _session(run: _Run, port: int) -> None:
    """One scanner-like session: connect, read the banner (or a keep-alive HEAD on a web port), then keep
    it open for ``hold_s`` while reading, so a session the device closes ends (and is reopened) at once."""
    async with run.guard.connect(port) as stream:
        opened = anyio.current_time()
        web = port in run.web_ports
        if web:
            await stream.send(_HEAD_REQUEST.format(host=run.address).encode("ascii"))
        if await _read_first(stream, web, run.read_timeout_s):
            return  # the device closed the session: the worker opens the next one now
        rest = run.hold_s - (anyio.current_time() - opened)
        if rest > 0:
            await _hold(stream, rest)


async def _read_first(stream: ProbeStream, web: bool, read_timeout_s: float) -> bool:
    """Read the banner or response head (bounded); True if the device closed the session meanwhile."""
    got = bytearray()
    with anyio.move_on_after(read_timeout_s):
        while len(got) < SESSION_READ_MAX_BYTES:
            try:
                chunk = await stream.receive(SESSION_READ_MAX_BYTES - len(got))
            except anyio.EndOfStream:
                return True
            got += chunk
            if (web and b"\r\n\r\n" in got) or (not web and b"\n" in got):
                return False
    return False


async def _hold(stream: ProbeStream, seconds: float) -> None:
    """Keep the session open for ``seconds``, reading (and discarding, bounded) what the device sends, and
    return early when the device closes it."""
    read = 0
    with anyio.move_on_after(seconds):
        while read < SESSION_READ_MAX_BYTES:
            try:
                read += len(await stream.receive(SESSION_READ_MAX_BYTES))
            except anyio.EndOfStream:
                return
        await anyio.sleep(seconds)  # a device that floods: stop reading, keep holding until the end


async def _worker(run: _Run, ports: Iterator[int], counters: dict[str, int]) -> None:
    """Keep one session in flight until cancelled or the device is declared down."""
    while True:
        counters["started"] += 1
        try:
            await _session(run, next(ports))
        except DeviceDownError:
            return
        except ProbeError:
            counters["failed"] += 1
            await anyio.sleep(FAILED_SESSION_PAUSE_S)


async def _run_level(run: _Run, level: int) -> LevelResult:
    """Hold ``level`` device sessions (the heartbeat's included) for the dwell while following the
    heartbeat; then wait for the device to let go of them and to settle."""
    guard, watchdog = run.guard, run.watchdog
    workers = level - run.reserve
    if workers >= 1:
        await guard.set_ceiling(level)
    dwell = run.dwell_s
    aborted = False
    if run.deadline is not None:
        remaining = run.deadline - anyio.current_time()
        if remaining < dwell:
            dwell, aborted = max(0.0, remaining), True
    counters = {"started": 0, "failed": 0}
    latencies: list[float] = []
    held: list[int] = []
    beats_failed = 0
    outcome = LevelOutcome.ABORTED if aborted else LevelOutcome.PASSED
    ew = run.early_warning
    limit = ew.limit_s(run.baseline) if ew is not None else None
    slow = 0
    evidence = False  # a healthy beat that started while the load was on: without it nothing passes
    ports = itertools.cycle(run.target.ports)
    start = anyio.current_time()

    def on_beat(beat: Beat) -> LevelOutcome | None:
        nonlocal beats_failed, slow, evidence
        if watchdog.down:
            return LevelOutcome.FAILED
        if not beat.ok:
            beats_failed += 1
            return None
        latencies.append(beat.latency_s)
        if beat.at_s >= start:
            evidence = True
            if beat.sessions_device is not None:
                held.append(min(level, beat.sessions_device + run.reserve))
        if limit is not None and ew is not None:
            slow = slow + 1 if beat.latency_s > limit else 0
            if slow >= ew.consecutive_beats:
                return LevelOutcome.WARNED
        return None

    async with anyio.create_task_group() as tg:
        for _ in range(max(workers, 0)):
            tg.start_soon(_worker, run, ports, counters)
        with anyio.move_on_after(dwell):
            while (verdict := on_beat(await watchdog.next_beat())) is None:
                pass
            outcome = verdict
        if outcome is LevelOutcome.PASSED and not evidence:
            # The dwell ended before any heartbeat that started under load came back (a slow device, or a
            # dwell shorter than the beat interval): keep the load on until one does. The watchdog bounds
            # this: a beat either answers or fails within its timeout.
            with anyio.move_on_after(watchdog.detection_bound_s + watchdog.interval_s):
                while not evidence and (verdict := on_beat(await watchdog.next_beat())) is None:
                    pass
                if verdict is not None:
                    outcome = verdict
        if outcome is LevelOutcome.PASSED and ew is not None and latencies and slow == len(latencies):
            outcome = LevelOutcome.WARNED  # every beat of the level was slow, just fewer than required
        end_at = anyio.current_time()
        in_flight = guard.limiter.in_flight
        tg.cancel_scope.cancel()
    elapsed = end_at - start
    if outcome is not LevelOutcome.FAILED:
        # The next level must not start while this one's sessions are still on the device: their sum
        # could crash it. Every linger is bounded, so this is too.
        await guard.wait_let_go()
        if not await _settle(run, end_at):
            outcome = LevelOutcome.FAILED  # the device died right after the load: this level did it
    if outcome is LevelOutcome.FAILED:
        down = watchdog.timeline.downs[-1]
        elapsed = max(0.0, down.at_s - start)
        in_flight = down.in_flight
    if outcome is LevelOutcome.PASSED and held and statistics.median_low(held) < level:
        run.log.warning("characterize.level_not_held", level=level, held=statistics.median_low(held))
    return LevelResult(
        level=level, outcome=outcome, dwell_s=run.dwell_s, elapsed_s=elapsed, in_flight_at_end=in_flight,
        sessions_started=counters["started"], sessions_failed=counters["failed"],
        latencies_s=tuple(latencies), beats_failed=beats_failed, held_at_beats=tuple(held),
    )  # fmt: skip


async def _settle(run: _Run, since: float) -> bool:
    """Wait until the device looks idle again after a level; False if it was declared down meanwhile.

    A device keeps a session until it notices the close (a busy one only after its current response), so
    the next level must not start while the last one's sessions linger: their sum could crash it. Idle means
    a healthy beat, started after the load stopped, within twice the idle baseline (or 5 ms of it). The wait
    is bounded (``SETTLE_BEATS`` beats); a device that stays slow is not waited for forever.
    """
    watchdog = run.watchdog
    idle = max(2.0 * run.baseline, run.baseline + 0.005)
    with anyio.move_on_after(SETTLE_BEATS * (watchdog.interval_s + watchdog.timeout_s)):
        while True:
            beat = await watchdog.next_beat()
            if watchdog.down:
                return False
            if beat.ok and beat.at_s >= since and beat.latency_s <= idle:
                return True
    run.log.info("characterize.settle_timeout", since=since)
    return not watchdog.down


async def _recover(
    run: _Run,
    hook: Callable[..., Awaitable[Any]] | None,
    ctx: RecoveryContext,
    healthy_beats: int,
    timeout_s: float,
) -> None:
    guard = run.guard
    run.log.warning("characterize.recovering", level=ctx.level, attempt=ctx.attempt)
    try:
        with anyio.fail_after(timeout_s):
            if hook is not None:
                await call_recovery(hook, ctx)
            await guard.wait_healthy(healthy_beats)
    except TimeoutError as exc:
        what = "the recovery hook" if hook is not None else "waiting (no recovery hook given)"
        raise RecoveryError(
            f"{ctx.host} did not answer {healthy_beats} healthy heartbeats within {timeout_s:g} s of "
            f"{what} after crashing at {ctx.level} sessions"
        ) from exc
    guard.rearm()
    run.log.info("characterize.recovered", level=ctx.level)
