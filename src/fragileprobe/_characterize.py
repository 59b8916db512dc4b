"""characterize(): measure how many concurrent sessions a device survives, and derive its safe ceiling.

The driver does the I/O; the decisions are pure: :class:`~fragileprobe._ramp.RampStrategy` says which level
comes next and when to recover, :class:`~fragileprobe._level_verdict.LevelVerdict` says how a level ended.
The driver's loop (:meth:`_Driver.drive`) asks the ramp, does what it says, and feeds the result back. One
:class:`~fragileprobe.Guard` holds the whole run (scope check, device-side session ledger, watchdog). What
the run measures with is one :class:`~fragileprobe.CharacterizeSettings` (or the same settings as flat
keywords), validated before anything is sent.

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
import statistics
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Unpack

import anyio
import structlog

from fragileprobe import _validate
from fragileprobe._charsettings import (
    CharacterizeOptions,
    CharacterizeSettings,
    RecoverySettings,
    TimingSettings,
    check_settings,
)
from fragileprobe._errors import ConfigError, DeviceDownError, ProbeError, RecoveryError
from fragileprobe._guard import Guard, opens_session
from fragileprobe._heartbeat import HttpHeartbeat
from fragileprobe._level_verdict import EarlyWarning, LevelVerdict
from fragileprobe._probes import check_socket_budget
from fragileprobe._profile import (
    DEFAULT_MARGIN_LEVELS,
    Characterization,
    LevelOutcome,
    LevelResult,
    TrialResult,
)
from fragileprobe._ramp import (
    Done,
    Failed,
    NextTrial,
    Observation,
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
from fragileprobe._recovery import RecoveryContext, call_recovery
from fragileprobe._scope import Scope, Target
from fragileprobe._sync import run_sync

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from fragileprobe._net import Network
    from fragileprobe._probes import ProbeStream
    from fragileprobe._store import ProfileStore, RunRow
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
    "ladder",
    "dwell_s",
    "hold_s",
    "ports",
    "heartbeat",
    "early_warning",
    "margin_fraction",
    "margin_levels",
    "linger_s",
)
_UNRECORDED = "<not recorded>"
# A well-formed HTTP/1.1 request that asks the server to keep the session open, so the session can be
# held without malformed traffic; a server that closes anyway gets a new session at once.
_HEAD_REQUEST = (
    "HEAD / HTTP/1.1\r\nHost: {host}\r\nConnection: keep-alive\r\n"
    "User-Agent: fragileprobe characterization\r\n\r\n"
)


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


@dataclass(frozen=True, slots=True, kw_only=True)
class _Plan:
    """What characterize() settled before anything is sent: the device, its heartbeat, the ramp."""

    target: Target
    address: str
    heartbeat: Any
    ramp: RampConfig
    web_ports: frozenset[int]
    settings: CharacterizeSettings


@dataclass(slots=True, kw_only=True)
class _Run:
    """What the level and recovery helpers of one characterize() call share."""

    guard: Guard
    watchdog: Watchdog
    reserve: int
    target: Target
    address: str
    web_ports: frozenset[int]
    timing: TimingSettings
    early_warning: EarlyWarning | None
    baseline: float
    deadline: float | None
    log: Any


async def characterize(
    target: Target | str,
    *,
    scope: Scope,
    settings: CharacterizeSettings | None = None,
    store: ProfileStore | None = None,
    model_key: str | None = None,
    name: str | None = None,
    resume: bool = False,
    progress: Callable[[ProgressEvent], None] | None = None,
    network: Network | None = None,
    **options: Unpack[CharacterizeOptions],
) -> Characterization:
    """Find how many concurrent sessions ``target`` survives and recommend a safe ceiling.

    What the run measures with comes either as one ``settings`` object or as flat keywords, never both:

    ``ladder``, ``trials``, ``refine``, ``crash_budget``, ``margin_fraction``
        the ramp (:class:`~fragileprobe.RampConfig`): levels to climb (strictly increasing), passes up the
        ramp, whether to test between a failure and the last pass, crashes allowed per trial, the safety
        margin below the lowest failing level (default 15%);
    ``dwell_s``, ``hold_s``, ``interval_s``, ``heartbeat_timeout_s``, ``failures_to_down``,
    ``baseline_beats``, ``connect_timeout_s``, ``read_timeout_s``, ``linger_s``, ``time_budget_s``
        the timing (:class:`~fragileprobe.TimingSettings`);
    ``recovery``, ``healthy_beats``, ``recovery_timeout_s``
        the recovery (:class:`~fragileprobe.RecoverySettings`): the async hook that brings a crashed
        device back (None: wait for it), good beats in a row that count as recovered, the bound on one
        recovery;
    ``early_warning``
        stop climbing when the heartbeat slows (:class:`~fragileprobe.EarlyWarning`).

    Args:
        target: The device (a :class:`~fragileprobe.Target`, or an address with the default pump ports and
            an HTTP heartbeat on 8080).
        scope: The authorized scope; the target must lie in it (``ScopeError`` before anything is sent).
        settings: Everything the run measures with (:class:`~fragileprobe.CharacterizeSettings`).
        store: Where each finished trial and the result are written (and resumed from).
        model_key: The device model's key; None: derived from what the device shows.
        name: A name for the device / model in reports.
        resume: Continue the latest unfinished run for this target and model in ``store``; every stored
            trial, finished or not, stays evidence (``ConfigError`` if a setting of ``RESUME_MUST_MATCH``
            differs from the stored run's).
        progress: Called with a :class:`ProgressEvent` at every step (must not block).
        network: How connections are made (default: real sockets; ``fragileprobe.testing.FakeNetwork``).
        **options: The settings as flat keywords (see above), when ``settings`` is not given.

    Returns:
        The :class:`~fragileprobe.Characterization`.

    Raises:
        ConfigError: A bad argument (named in the message and by ``field``), or ``settings`` together with
            flat keywords.
        TypeError: A keyword characterize() does not take.
        ScopeError: The target is outside ``scope``.
        DeviceDownError: The device did not answer its heartbeat before the run started (already down, or
            the heartbeat port is not open); nothing else was sent.
        RecoveryError: A recovery failed or timed out; ``.partial`` holds the observations so far.
        StoreError: The store could not be written.
    """
    chosen = _chosen_settings(settings, dict(options))
    plan = _plan(target, scope, chosen, resume_without_store=resume and store is None)
    timing = chosen.timing
    t0 = anyio.current_time()
    # The first ceiling is only for the model-key and open-port probes (one session beside the heartbeat);
    # every level sets its own.
    guard = Guard(
        plan.target,
        ceiling=2,
        scope=scope,
        heartbeat=plan.heartbeat,
        interval_s=timing.interval_s,
        failures_to_down=timing.failures_to_down,
        connect_timeout_s=timing.connect_timeout_s,
        linger_s=timing.linger_s,
        network=network,
    )
    await _enter(guard, plan)
    try:
        driver = await _start(
            guard,
            plan,
            store=store,
            model_key=model_key,
            name=name,
            resume=resume,
            events=_Events(progress, t0),
        )
        return await driver.drive()
    finally:
        await guard.__aexit__(None, None, None)


def characterize_sync(target: Target | str, **kwargs: Any) -> Characterization:
    """:func:`characterize` from synchronous code (scripts; see ``fragileprobe.run_sync``)."""
    return run_sync(characterize, target, **kwargs)


# --- before anything is sent ------------------------------------------------------------------------------
def _chosen_settings(settings: CharacterizeSettings | None, options: dict[str, Any]) -> CharacterizeSettings:
    """The run's settings: ``settings`` as given, or built from the flat keywords; never both."""
    if settings is None:
        return CharacterizeSettings.from_options(**options)
    if options:
        raise _validate.fail(
            "settings", "given without the flat keywords it holds (set them in the settings)", sorted(options)
        )
    return check_settings(settings)


def _plan(
    target: Target | str, scope: Scope, settings: CharacterizeSettings, *, resume_without_store: bool
) -> _Plan:
    """Check everything that needs no packet: the socket budget, the scope, the target, the ladder."""
    top = settings.ramp.max_level
    check_socket_budget(top + 1, f"ladder: its top level {top} (and a heartbeat)")
    if resume_without_store:
        raise ConfigError("resume: needs a store to resume from", field="resume")
    if not isinstance(scope, Scope):
        raise _validate.fail("scope", "a Scope", scope)
    tgt = Target(target) if isinstance(target, str) else target
    if not isinstance(tgt, Target):
        raise _validate.fail("target", "a Target or an address string", target)
    heartbeat = _heartbeat(tgt.heartbeat, settings.timing.heartbeat_timeout_s)
    address = scope.check(tgt.host)  # ScopeError here: nothing has been sent
    web_ports = WEB_PORTS | ({heartbeat.port} if isinstance(heartbeat, HttpHeartbeat) else set())
    return _Plan(
        target=tgt,
        address=address,
        heartbeat=heartbeat,
        ramp=_ramp_for(settings.ramp, heartbeat),
        web_ports=frozenset(web_ports),
        settings=settings,
    )


def _heartbeat(heartbeat: Any, timeout_s: float | None) -> Any:
    """The target's heartbeat, with ``heartbeat_timeout_s`` as its timeout when one is given."""
    if timeout_s is None:
        return heartbeat
    try:
        return dataclasses.replace(heartbeat, timeout_s=timeout_s)
    except TypeError as exc:
        raise ConfigError(
            f"heartbeat_timeout_s: cannot override the timeout of {heartbeat!r}", field="heartbeat_timeout_s"
        ) from exc


def _ramp_for(ramp: RampConfig, heartbeat: Any) -> RampConfig:
    """The ramp as run with ``heartbeat``: from level 2 up when the heartbeat holds a session itself."""
    if not opens_session(heartbeat):
        return ramp
    # A level counts the heartbeat's session: level 1 would be the heartbeat alone (the idle baseline
    # measures exactly that), and the port and model checks before the ramp already hold one probe
    # beside it. So the ramp starts at 2, and never loads the device above the level it tests.
    kept = tuple(lv for lv in ramp.ladder if lv >= 2)
    if not kept:
        raise ConfigError(
            f"ladder: {ramp.ladder} holds only the heartbeat's session (a level counts it too); give "
            "levels of 2 or more, or a heartbeat that opens no session",
            field="ladder",
        )
    return dataclasses.replace(ramp, ladder=kept, min_level=2)


async def _enter(guard: Guard, plan: _Plan) -> None:
    """Enter the Guard (its first heartbeat); DeviceDownError saying that nothing else was sent."""
    try:
        await guard.__aenter__()
    except DeviceDownError as exc:
        hb = plan.heartbeat
        raise DeviceDownError(
            f"{plan.target.label} did not answer its heartbeat ({type(hb).__name__} on port {hb.port}) "
            f"before the characterization started: it is already down, or that port is not open. "
            f"Nothing else was sent. ({exc})"
        ) from exc


# --- the start: baseline, identification, the store's run -------------------------------------------------
class _Events:
    """The ``progress`` callback, fed with :class:`ProgressEvent` records timed from the run's start."""

    def __init__(self, progress: Callable[[ProgressEvent], None] | None, t0: float) -> None:
        self.progress = progress
        self.t0 = t0
        self.started_epoch = time.time()

    def emit(self, kind: str, trial: int, level: int | None = None, outcome: str | None = None) -> None:
        if self.progress is not None:
            self.progress(ProgressEvent(kind, trial, level, outcome, anyio.current_time() - self.t0))


async def _start(
    guard: Guard,
    plan: _Plan,
    *,
    store: ProfileStore | None,
    model_key: str | None,
    name: str | None,
    resume: bool,
    events: _Events,
) -> _Driver:
    """Measure the idle baseline, identify the model and its open ports, open (or resume) the stored run."""
    watchdog = guard.watchdog
    assert watchdog is not None  # the Guard runs its watchdog (watchdog=True is the default)
    settings = plan.settings
    bound = log.bind(host=plan.address, target=plan.target.label)
    baseline = await _baseline(watchdog, settings.timing.baseline_beats)
    if baseline is None:
        raise DeviceDownError(
            f"{plan.target.label} stopped answering its heartbeat on port {plan.heartbeat.port} while the "
            "idle baseline was measured, before any load; nothing else was sent"
        )
    events.emit("baseline", 0)
    key, target = await _identify(guard, plan, model_key, name, bound)
    bound = bound.bind(model_key=key)
    params = _params(plan, target)
    run_id, previous = await _open_record(store, resume, plan.address, key, name, params, bound)
    deadline = None if settings.timing.time_budget_s is None else events.t0 + settings.timing.time_budget_s
    run = _Run(
        guard=guard,
        watchdog=watchdog,
        reserve=guard.heartbeat_reserved,
        target=target,
        address=plan.address,
        web_ports=plan.web_ports,
        timing=settings.timing,
        early_warning=settings.early_warning,
        baseline=baseline,
        deadline=deadline,
        log=bound,
    )
    strategy = RampStrategy(
        plan.ramp, previous_trials=[t.outcomes for t in previous if t.complete][: plan.ramp.trials]
    )
    return _Driver(
        run=run,
        strategy=strategy,
        plan=plan,
        store=store,
        run_id=run_id,
        model_key=key,
        name=name,
        previous=previous,
        events=events,
    )


async def _identify(
    guard: Guard, plan: _Plan, model_key: str | None, name: str | None, bound: Any
) -> tuple[str, Target]:
    """The model key (given, or derived from what the device shows) and the target with its open ports."""
    tgt = plan.target
    if model_key is None:
        model_key, open_ports = await _derive_model_key(
            guard, tgt, plan.heartbeat, plan.web_ports, plan.settings.timing.read_timeout_s, name
        )
    else:
        open_ports = await _open_ports(guard, tgt)
    if not open_ports:
        # Sessions to closed ports hold nothing: every level would "pass" with no load on the device and
        # the result would recommend a ceiling that was never tested.
        raise ConfigError(
            f"target.ports: none of {', '.join(map(str, tgt.ports))} accepts a connection on "
            f"{tgt.label}; the ramp's sessions would hold nothing (give the device's open service ports)",
            field="target.ports",
        )
    if len(open_ports) < len(tgt.ports):
        closed = [p for p in tgt.ports if p not in open_ports]
        bound.warning("characterize.ports_closed", closed=closed, used=open_ports)
        tgt = dataclasses.replace(tgt, ports=tuple(open_ports))  # sessions go to open ports only
    return model_key, tgt


def _params(plan: _Plan, target: Target) -> dict[str, Any]:
    """The run's settings as stored with it (what resume compares, see ``RESUME_MUST_MATCH``)."""
    s = plan.settings
    ew = s.early_warning
    return {
        "ladder": list(plan.ramp.ladder),
        "trials": s.ramp.trials,
        "dwell_s": s.timing.dwell_s,
        "crash_budget": s.ramp.crash_budget,
        "refine": s.ramp.refine,
        "margin_fraction": plan.ramp.margin_fraction,
        "margin_levels": DEFAULT_MARGIN_LEVELS,
        "hold_s": s.timing.hold_s,
        "ports": list(target.ports),
        "heartbeat": _heartbeat_params(plan.heartbeat),
        "linger_s": s.timing.linger_s,
        "early_warning": None if ew is None else dataclasses.asdict(ew),
    }


async def _open_record(
    store: ProfileStore | None,
    resume: bool,
    address: str,
    model_key: str,
    name: str | None,
    params: dict[str, Any],
    bound: Any,
) -> tuple[str | None, list[TrialResult]]:
    """The stored run's id and its trials so far: the unfinished one resumed, or a new one begun."""
    if store is None:
        return None, []
    row = await store.aio.unfinished_run(host=address, model_key=model_key) if resume else None
    if row is None:
        return await store.aio.begin_run(host=address, model_key=model_key, name=name, params=params), []
    _check_resumable(row, params)
    # Every stored trial stays evidence (an unfinished one's crash too); the plan goes on after the finished
    # ones, and a redone trial gets a new index: stored trials are never replaced.
    previous = sorted(row.trials, key=lambda t: t.index)
    bound.info(
        "characterize.resumed",
        run_id=row.run_id,
        finished_trials=sum(t.complete for t in previous),
        unfinished_trials=sum(not t.complete for t in previous),
    )
    return row.run_id, previous


def _check_resumable(row: RunRow, params: dict[str, Any]) -> None:
    """What a level measures must not change mid-run: trials measured otherwise would be merged into one
    ceiling. A run stored without one of these settings cannot prove it was the same."""
    changed = [k for k in RESUME_MUST_MATCH if row.params.get(k, _UNRECORDED) != params[k]]
    if changed:
        was = ", ".join(f"{k}={row.params.get(k, _UNRECORDED)!r}" for k in changed)
        now = ", ".join(f"{k}={params[k]!r}" for k in changed)
        raise ConfigError(
            f"resume: the unfinished run {row.run_id} was measured with {was}, not {now}; resume "
            "with the same settings, or start a new run without resume",
            field="resume",
        )


# --- the driver loop ----------------------------------------------------------------------------------------
def _observation(level: int, outcome: LevelOutcome) -> Observation:
    """What the ramp is told about a level that ended with ``outcome``."""
    if outcome is LevelOutcome.PASSED:
        return Passed(level)
    if outcome is LevelOutcome.WARNED:
        return Warned(level)
    if outcome is LevelOutcome.FAILED:
        return Failed(level)
    return OutOfTime()  # aborted: the time budget ran out in the middle of the level


@dataclass(slots=True, kw_only=True)
class _Driver:
    """Runs what the ramp asks for and tells it what happened; keeps the trials and the store up to date."""

    run: _Run
    strategy: RampStrategy
    plan: _Plan
    store: ProfileStore | None
    run_id: str | None
    model_key: str
    name: str | None
    previous: list[TrialResult]
    events: _Events
    finished: list[TrialResult] = field(default_factory=list)
    current: list[LevelResult] = field(default_factory=list)
    trial_started: float = field(default_factory=anyio.current_time)
    next_index: int = 0
    recoveries: int = 0

    def __post_init__(self) -> None:
        self.finished = list(self.previous)
        self.next_index = max((t.index for t in self.previous), default=-1) + 1

    async def drive(self) -> Characterization:
        """The loop: ask the ramp what to do, do it, feed the result back, until it says done."""
        while True:
            action = self.strategy.next_action()
            if isinstance(action, Done):
                return await self._finish(action)
            if isinstance(action, TestLevel):
                self.strategy.observe(await self._test_level(action))
                self._check_time_budget()
            elif isinstance(action, Recover):
                await self._recover(action)
                self.strategy.observe(Recovered())
            else:
                await self._end_trial(action)
                self.strategy.observe(Proceed())

    async def _test_level(self, action: TestLevel) -> Observation:
        self.events.emit("level_start", action.trial, action.level)
        result = await _run_level(self.run, action.level)
        self.current.append(result)
        self.events.emit("level_end", action.trial, action.level, result.outcome.value)
        self.run.log.info(
            "characterize.level",
            trial=action.trial,
            level=action.level,
            outcome=result.outcome.value,
            elapsed_s=round(result.elapsed_s, 4),
            latency_median_s=result.latency_median_s,
            in_flight=result.in_flight_at_end,
        )
        return _observation(action.level, result.outcome)

    def _check_time_budget(self) -> None:
        """Out of time after a level: stop, unless a crash must be recovered first (or it is over)."""
        deadline = self.run.deadline
        if deadline is None or anyio.current_time() < deadline:
            return
        if not isinstance(self.strategy.next_action(), Recover | Done):
            self.strategy.observe(OutOfTime())

    async def _recover(self, action: Recover) -> None:
        self.recoveries += 1
        self.events.emit("recovering", action.trial, action.level)
        ctx = RecoveryContext(
            host=self.run.address,
            heartbeat=self.plan.heartbeat,
            trial=action.trial,
            level=action.level,
            attempt=self.recoveries,
        )
        try:
            await _recover(self.run, self.plan.settings.recovery, ctx)
        except RecoveryError as exc:
            # Kept as evidence under its own index: its crash bounds the ceiling of this run, of a resumed
            # one and of the model's profile.
            partial_trial = self._trial(complete=False)
            exc.partial = self._build([*self.finished, partial_trial], "recovery_failed")
            if self.store is not None and self.run_id is not None:
                await self.store.aio.record_trial(self.run_id, partial_trial)
                await self.store.aio.mark_run(self.run_id, "recovery_failed")
            self.run.log.error("characterize.recovery_failed", level=action.level, error=str(exc))
            raise
        self.events.emit("recovered", action.trial, action.level)

    async def _end_trial(self, action: NextTrial) -> None:
        trial = self._trial(complete=True)
        self.next_index += 1
        self.finished.append(trial)
        if self.store is not None and self.run_id is not None:
            # its own transaction: survives kill -9 from here on
            await self.store.aio.record_trial(self.run_id, trial)
        self.events.emit("trial_end", action.finished)
        self.run.log.info("characterize.trial_done", trial=action.finished, crashes=trial.crashes)
        self.current = []
        self.trial_started = anyio.current_time()

    async def _finish(self, action: Done) -> Characterization:
        if self.current:  # a trial cut short by the time budget
            self.finished.append(self._trial(complete=False))
        char = self._build(self.finished, action.reason)
        if self.store is not None and self.run_id is not None:
            await self.store.aio.finish_run(self.run_id, char, status=action.reason)
        self.events.emit("done", self.strategy.trial)
        self.run.log.info(
            "characterize.done",
            safe_ceiling=char.safe_ceiling,
            failed_at=char.failed_at,
            crashes=char.crashes,
            reason=action.reason,
        )
        return char

    def _trial(self, *, complete: bool) -> TrialResult:
        """The current trial's levels as a record (under the next free index)."""
        return TrialResult(
            index=self.next_index,
            levels=tuple(self.current),
            wall_time_s=anyio.current_time() - self.trial_started,
            complete=complete,
        )

    def _build(self, trials: Sequence[TrialResult], reason: str) -> Characterization:
        ramp, ew = self.plan.ramp, self.run.early_warning
        return Characterization.from_trials(
            host=self.run.address,
            model_key=self.model_key,
            name=self.name,
            ladder=ramp.ladder,
            trials=trials,
            margin_fraction=ramp.margin_fraction,
            baseline_latency_s=self.run.baseline,
            early_warning_factor=None if ew is None else ew.latency_factor,
            wall_time_s=sum(t.wall_time_s for t in self.previous) + (anyio.current_time() - self.events.t0),
            stop_reason=reason,
            run_id=self.run_id,
            started_at_epoch_s=self.events.started_epoch,
        )


# --- the I/O of one level ----------------------------------------------------------------------------------
def _heartbeat_params(heartbeat: Any) -> dict[str, Any]:
    """What a heartbeat measures with, for the run's params: its kind, port and (HTTP) path."""
    return {
        "kind": type(heartbeat).__name__,
        "port": getattr(heartbeat, "port", None),
        "path": getattr(heartbeat, "path", None),
    }


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
    guard: Guard,
    target: Target,
    heartbeat: Any,
    web_ports: frozenset[int],
    read_timeout_s: float,
    name: str | None,
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
        if await _read_first(stream, web, run.timing.read_timeout_s):
            return  # the device closed the session: the worker opens the next one now
        rest = run.timing.hold_s - (anyio.current_time() - opened)
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
    heartbeat (the :class:`LevelVerdict` judges each beat); then wait for the device to let go of them and
    to settle."""
    guard, watchdog = run.guard, run.watchdog
    workers = level - run.reserve
    if workers >= 1:
        await guard.set_ceiling(level)
    dwell, aborted = _dwell(run)
    counters = {"started": 0, "failed": 0}
    ports = itertools.cycle(run.target.ports)
    start = anyio.current_time()
    verdict = LevelVerdict.for_level(
        level, start_s=start, reserve=run.reserve, early_warning=run.early_warning, baseline_s=run.baseline
    )
    async with anyio.create_task_group() as tg:
        for _ in range(max(workers, 0)):
            tg.start_soon(_worker, run, ports, counters)
        await _follow(watchdog, verdict, dwell)
        if verdict.wants_evidence(aborted=aborted):
            # The dwell ended before any heartbeat that started under load came back (a slow device, or a
            # dwell shorter than the beat interval): keep the load on until one does. The watchdog bounds
            # this: a beat either answers or fails within its timeout.
            await _follow(watchdog, verdict, watchdog.detection_bound_s + watchdog.interval_s, evidence=True)
        end_at = anyio.current_time()
        in_flight = guard.limiter.in_flight
        tg.cancel_scope.cancel()
    outcome = verdict.outcome(aborted=aborted)
    if outcome is not LevelOutcome.FAILED:
        # The next level must not start while this one's sessions are still on the device: their sum
        # could crash it. Every linger is bounded, so this is too. A device that dies right after the load
        # does not settle: this level did it.
        await guard.wait_let_go()
        outcome = verdict.outcome(aborted=aborted, settled=await _settle(run, end_at))
    elapsed = end_at - start
    if outcome is LevelOutcome.FAILED:
        down = watchdog.timeline.downs[-1]
        elapsed, in_flight = max(0.0, down.at_s - start), down.in_flight
    held = tuple(verdict.held_at_beats)
    if outcome is LevelOutcome.PASSED and held and statistics.median_low(held) < level:
        run.log.warning("characterize.level_not_held", level=level, held=statistics.median_low(held))
    return LevelResult(
        level=level,
        outcome=outcome,
        dwell_s=run.timing.dwell_s,
        elapsed_s=elapsed,
        in_flight_at_end=in_flight,
        sessions_started=counters["started"],
        sessions_failed=counters["failed"],
        latencies_s=tuple(verdict.latencies_s),
        beats_failed=verdict.beats_failed,
        held_at_beats=held,
    )


def _dwell(run: _Run) -> tuple[float, bool]:
    """The dwell this level gets, and whether the time budget cut it short (the level is then aborted)."""
    dwell = run.timing.dwell_s
    if run.deadline is None:
        return dwell, False
    remaining = run.deadline - anyio.current_time()
    if remaining < dwell:
        return max(0.0, remaining), True
    return dwell, False


async def _follow(
    watchdog: Watchdog, verdict: LevelVerdict, seconds: float, *, evidence: bool = False
) -> None:
    """Feed the watchdog's beats to ``verdict`` for ``seconds``, until a beat decides the level (or, with
    ``evidence``, until a healthy beat under load came back)."""
    with anyio.move_on_after(seconds):
        while verdict.decided is None and not (evidence and verdict.evidence):
            verdict.observe(await watchdog.next_beat(), down=watchdog.down)


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


async def _recover(run: _Run, recovery: RecoverySettings, ctx: RecoveryContext) -> None:
    """Run the recovery hook, then wait for ``healthy_beats`` good beats (both within its timeout)."""
    guard, hook = run.guard, recovery.hook
    run.log.warning("characterize.recovering", level=ctx.level, attempt=ctx.attempt)
    try:
        with anyio.fail_after(recovery.timeout_s):
            if hook is not None:
                await call_recovery(hook, ctx)
            await guard.wait_healthy(recovery.healthy_beats)
    except TimeoutError as exc:
        what = "the recovery hook" if hook is not None else "waiting (no recovery hook given)"
        raise RecoveryError(
            f"{ctx.host} did not answer {recovery.healthy_beats} healthy heartbeats within "
            f"{recovery.timeout_s:g} s of {what} after crashing at {ctx.level} sessions"
        ) from exc
    guard.rearm()
    run.log.info("characterize.recovered", level=ctx.level)
