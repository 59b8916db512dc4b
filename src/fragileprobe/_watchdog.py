"""Watchdog: heartbeat a device and stop all work on it the moment it stops answering.

The watchdog runs in a task group (``await tg.start(watchdog.run)``), beats every ``interval_s`` (start to
start, so a hang is noticed within ``interval_s + timeout_s``), and after ``failures_to_down`` consecutive
failed beats *declares the device down*. In that one synchronous step (no ``await``, so no other task can
run in between) it

1. records the moment (``down_at_s``, from the injected clock) and how many sessions were in flight,
2. sets the down flag, so every later :meth:`Watchdog.watch` refuses with ``DeviceDownError``,
3. cancels every registered cancel scope: all work in flight for the device.

After the declaration the watchdog *stops beating*: nothing at all is sent to a device that was just
declared down (the heartbeat is traffic too). Beating resumes only when someone asks for beats
(:meth:`next_beat`, :meth:`wait_healthy`: a recovery driver after a power cycle) or after :meth:`rearm`;
``beat_while_down=True`` keeps beating throughout instead. Every beat, declaration and re-arm is in the
:class:`WatchdogTimeline`.
"""

from __future__ import annotations

import inspect
from collections import deque
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import anyio
import structlog

from fragileprobe import _validate
from fragileprobe._errors import DeviceDownError
from fragileprobe._heartbeat import Beat

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from types import TracebackType

    from anyio.abc import TaskStatus
    from structlog.typing import FilteringBoundLogger

    from fragileprobe._heartbeat import Heartbeat
    from fragileprobe._net import Network

__all__ = ["BEAT_SLACK_S", "MAX_TIMELINE_BEATS", "DownEvent", "Watchdog", "WatchdogTimeline"]

log = structlog.get_logger(__name__)

# A heartbeat bounds itself by its timeout_s; the watchdog adds this much before giving up on a heartbeat
# that ignores its own bound (a custom plug-in), so a broken heartbeat cannot stall detection.
BEAT_SLACK_S = 0.05

# Beats kept in the timeline: 20,000 is five and a half hours at one beat a second. Older beats are
# dropped (``beats_total`` still counts them); declarations and re-arms are always kept.
MAX_TIMELINE_BEATS = 20_000


@dataclass(frozen=True, slots=True)
class DownEvent:
    """One declaration that the device is down.

    Attributes:
        at_s: when it was declared (watchdog clock).
        in_flight: sessions in flight at that moment (all of them were cancelled).
        failures: consecutive failed beats that led to it.
        last_good_at_s: start of the last healthy beat before it, or None.
        reason: the last failed beat's error (or the caller's reason for a manual declaration).
    """

    at_s: float
    in_flight: int
    failures: int
    last_good_at_s: float | None
    reason: str | None


@dataclass(frozen=True, slots=True)
class WatchdogTimeline:
    """A snapshot of everything the watchdog saw.

    Attributes:
        beats: the most recent beats (at most :data:`MAX_TIMELINE_BEATS`), oldest first, stamped with the
            watchdog's clock.
        beats_total: how many beats ran in all.
        last_good_at_s: start of the latest healthy beat, or None.
        down_at_s: when the device was declared down, if it is down now (None after a re-arm).
        in_flight_at_down: sessions in flight at that declaration, if down now.
        downs: every declaration, oldest first (kept across re-arms).
        rearmed_at_s: when the watchdog was re-armed, oldest first.
    """

    beats: tuple[Beat, ...]
    beats_total: int
    last_good_at_s: float | None
    down_at_s: float | None
    in_flight_at_down: int | None
    downs: tuple[DownEvent, ...]
    rearmed_at_s: tuple[float, ...]


class _Watch:
    """Context manager from :meth:`Watchdog.watch`: one registered cancel scope."""

    __slots__ = ("_scope", "_watchdog", "cancelled")

    def __init__(self, watchdog: Watchdog) -> None:
        self._watchdog = watchdog
        self._scope = anyio.CancelScope()
        self.cancelled = False

    def __enter__(self) -> _Watch:
        self._watchdog.check()
        self._scope.__enter__()
        self._watchdog._scopes.add(self._scope)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        watchdog = self._watchdog
        watchdog._scopes.discard(self._scope)
        by_watchdog = self._scope in watchdog._cancelled_scopes
        watchdog._cancelled_scopes.discard(self._scope)
        swallowed = bool(self._scope.__exit__(exc_type, exc, tb))
        if by_watchdog and self._scope.cancelled_caught:
            # Our own scope's cancellation, issued by the declaration: turn it into the error callers handle.
            self.cancelled = True
            raise watchdog._down_error("the work in flight was cancelled") from None
        return swallowed


class Watchdog:
    """Heartbeat one device; declare it down and cancel its work when it stops answering.

    Args:
        heartbeat: the sign of life (``HttpHeartbeat``, ``TcpHeartbeat`` or any :class:`Heartbeat`).
        host: the address to beat (already scope-checked by the caller).
        interval_s: seconds from one beat's start to the next.
        failures_to_down: consecutive failed beats that declare the device down (default: the first).
        timeout_s: bound on one beat (default: the heartbeat's own ``timeout_s``).
        clock: time source for the timeline (default ``anyio.current_time``: the event loop's clock, which
            on asyncio is ``time.monotonic``, the emulator's clock too, and virtual in
            ``fragileprobe.testing``).
        sleep: how to wait between beats (default ``anyio.sleep``; tests inject a fake with the clock).
        in_flight: returns the number of sessions in flight, for the timeline (default: registered scopes).
        label: how logs and errors name the device (default: ``host``).
        beat_while_down: keep beating after the declaration even when nobody waits for beats.
        logger: structlog logger to emit on (default: this module's, with ``host`` bound).
        sessions: returns (sessions open on our side, sessions the device holds) and is sampled at each
            beat's start into :class:`Beat` (a Guard passes its ledger's counts).
        network: passed to the heartbeat's ``beat(host, network=...)`` when it accepts one (a Guard passes
            its device-side ledger, so the beat's session is counted among the device's N).

    Raises:
        ConfigError: a non-positive interval or timeout, or ``failures_to_down`` below 1.
    """

    def __init__(
        self,
        heartbeat: Heartbeat,
        *,
        host: str,
        interval_s: float = 1.0,
        failures_to_down: int = 1,
        timeout_s: float | None = None,
        clock: Callable[[], float] = anyio.current_time,
        sleep: Callable[[float], Awaitable[object]] = anyio.sleep,
        in_flight: Callable[[], int] | None = None,
        label: str | None = None,
        logger: FilteringBoundLogger | None = None,
        beat_while_down: bool = False,
        network: Network | None = None,
        sessions: Callable[[], tuple[int, int]] | None = None,
    ) -> None:
        if not callable(getattr(heartbeat, "beat", None)):
            raise _validate.fail("Watchdog.heartbeat", "an object with a beat(host) method", heartbeat)
        if not isinstance(host, str) or not host:
            raise _validate.fail("Watchdog.host", "a non-empty address string", host)
        self._interval_s = _validate.positive("Watchdog.interval_s", interval_s)
        _validate.positive_int("Watchdog.failures_to_down", failures_to_down)
        if timeout_s is None:
            timeout_s = getattr(heartbeat, "timeout_s", None)
            if timeout_s is None:
                raise _validate.fail("Watchdog.timeout_s", "given when the heartbeat has no timeout_s", None)
        self._timeout_s = _validate.positive("Watchdog.timeout_s", timeout_s)
        self._heartbeat = heartbeat
        self._network = network if network is not None and _accepts_network(heartbeat) else None
        self._host = host
        self._failures_to_down = failures_to_down
        self._clock = clock
        self._sleep = sleep
        self._in_flight = in_flight
        self._sessions = sessions
        self._label = label or host
        self._log: FilteringBoundLogger = logger if logger is not None else log.bind(host=host)
        self._scopes: set[anyio.CancelScope] = set()
        self._cancelled_scopes: set[anyio.CancelScope] = set()
        self._beats: deque[Beat] = deque(maxlen=MAX_TIMELINE_BEATS)
        self._beats_total = 0
        self._last_good_at_s: float | None = None
        self._consecutive_failures = 0
        self._consecutive_ok = 0
        self._down: DownEvent | None = None
        self._downs: list[DownEvent] = []
        self._rearms: list[float] = []
        self._beat_event = anyio.Event()
        self._beat_while_down = bool(beat_while_down)
        self._beat_wanted = 0  # tasks waiting in next_beat(): they resume beating while down
        self._wake = anyio.Event()
        self._running = False

    def __repr__(self) -> str:
        return (
            f"Watchdog(host={self._host!r}, heartbeat={self._heartbeat!r}, interval_s={self._interval_s}, "
            f"failures_to_down={self._failures_to_down}, down={self.down})"
        )

    # --- state ------------------------------------------------------------------------------------------

    @property
    def down(self) -> bool:
        """True from the declaration until :meth:`rearm`."""
        return self._down is not None

    @property
    def host(self) -> str:
        return self._host

    @property
    def interval_s(self) -> float:
        return self._interval_s

    @property
    def timeout_s(self) -> float:
        return self._timeout_s

    @property
    def detection_bound_s(self) -> float:
        """Longest time from a hang to its declaration with one-failure-to-down: ``interval_s + timeout_s``
        (each further required failure adds ``max(interval_s, timeout_s)``)."""
        extra = (self._failures_to_down - 1) * max(self._interval_s, self._timeout_s)
        return self._interval_s + self._timeout_s + extra

    @property
    def consecutive_failures(self) -> int:
        return self._consecutive_failures

    @property
    def consecutive_ok(self) -> int:
        """Healthy beats in a row, counting back from the latest one."""
        return self._consecutive_ok

    @property
    def timeline(self) -> WatchdogTimeline:
        """A frozen snapshot of the beats, declarations and re-arms so far."""
        return WatchdogTimeline(
            beats=tuple(self._beats),
            beats_total=self._beats_total,
            last_good_at_s=self._last_good_at_s,
            down_at_s=self._down.at_s if self._down else None,
            in_flight_at_down=self._down.in_flight if self._down else None,
            downs=tuple(self._downs),
            rearmed_at_s=tuple(self._rearms),
        )

    def _down_error(self, what: str) -> DeviceDownError:
        event = self._down
        when = f" at t={event.at_s:.3f}" if event else ""
        why = f" ({event.reason})" if event and event.reason else ""
        return DeviceDownError(f"device {self._label} was declared down by the watchdog{when}{why}; {what}")

    def check(self) -> None:
        """Raise DeviceDownError if the device is down (the atomic gate before any new session)."""
        if self._down is not None:
            raise self._down_error("no new session is started")

    def watch(self) -> _Watch:
        """A context manager that runs its body in a cancel scope the declaration cancels.

        Entering refuses with DeviceDownError when the device is already down. When the declaration
        cancels the body, leaving the block raises DeviceDownError (``.cancelled`` is then True on the
        object ``with`` returns). Use it around the slot wait and the session, so waiting work is cancelled
        too.
        """
        return _Watch(self)

    # --- declaring and re-arming ------------------------------------------------------------------------

    def declare_down(self, reason: str | None = None) -> None:
        """Declare the device down now: refuse new sessions, cancel all registered work.

        Called by the beat loop after ``failures_to_down`` failed beats; callers may call it too (an
        operator's stop button, a characterization that saw its own early-warning sign). No-op if down.
        """
        if self._down is not None:
            return
        at_s = self._clock()
        in_flight = self._in_flight() if self._in_flight is not None else len(self._scopes)
        self._down = DownEvent(at_s, in_flight, self._consecutive_failures, self._last_good_at_s, reason)
        self._downs.append(self._down)
        for scope in list(self._scopes):
            self._cancelled_scopes.add(scope)
            scope.cancel()
        self._log.warning(
            "watchdog.device_down",
            at_s=at_s,
            in_flight=in_flight,
            failures=self._consecutive_failures,
            last_good_at_s=self._last_good_at_s,
            reason=reason,
        )

    def rearm(self) -> None:
        """Allow work again after a recovery (call it once :meth:`wait_healthy` returned).

        Clears the down flag and the failure count; the timeline keeps the earlier declaration in ``downs``.
        """
        at_s = self._clock()
        self._down = None
        self._consecutive_failures = 0
        self._rearms.append(at_s)
        self._log.info("watchdog.rearmed", at_s=at_s)
        self._wake_loop()

    def _wake_loop(self) -> None:
        self._wake.set()
        self._wake = anyio.Event()

    @property
    def beating(self) -> bool:
        """False while the loop is paused after a declaration (nobody asked for beats)."""
        return self._running and (self._down is None or self._beat_while_down or self._beat_wanted > 0)

    # --- waiting for beats ------------------------------------------------------------------------------

    async def next_beat(self) -> Beat:
        """Wait for the next beat to be recorded and return it (resumes beating while down)."""
        event = self._beat_event
        self._beat_wanted += 1
        self._wake_loop()
        try:
            await event.wait()
        finally:
            self._beat_wanted -= 1
        return self._beats[-1]

    async def wait_healthy(self, beats: int = 1) -> None:
        """Return once ``beats`` consecutive healthy beats have been recorded after this call.

        Never returns on a device that stays down: bound it with ``anyio.fail_after``.
        """
        _validate.positive_int("beats", beats)
        run = 0
        while run < beats:
            beat = await self.next_beat()
            run = run + 1 if beat.ok else 0

    # --- the loop ---------------------------------------------------------------------------------------

    async def beat_once(self) -> Beat:
        """Run one beat now, record it (declaring down if due) and return it."""
        at_s = self._clock()
        counts = self._sessions() if self._sessions is not None else (None, None)
        beat: Beat | None = None
        error: str | None = None
        with anyio.move_on_after(self._timeout_s + BEAT_SLACK_S):
            try:
                if self._network is not None:
                    beat = await self._heartbeat.beat(self._host, network=self._network)  # type: ignore[call-arg]
                else:
                    beat = await self._heartbeat.beat(self._host)
            except Exception as exc:  # a plug-in heartbeat's bug is a failed beat, not a dead watchdog
                error = f"heartbeat raised {type(exc).__name__}: {exc}"
        latency_s = self._clock() - at_s
        if beat is None:
            error = error or f"heartbeat gave no answer within {self._timeout_s:g} s"
            beat = Beat(at_s, False, latency_s, error)
        beat = replace(beat, at_s=at_s, sessions_ours=counts[0], sessions_device=counts[1])
        self._record(beat)
        return beat

    def _record(self, beat: Beat) -> None:
        self._beats.append(beat)
        self._beats_total += 1
        if beat.ok:
            self._last_good_at_s = beat.at_s
            self._consecutive_failures = 0
            self._consecutive_ok += 1
            self._log.debug("watchdog.beat", ok=True, at_s=beat.at_s, latency_s=round(beat.latency_s, 6))
        else:
            self._consecutive_failures += 1
            self._consecutive_ok = 0
            self._log.info(
                "watchdog.beat",
                ok=False,
                at_s=beat.at_s,
                latency_s=round(beat.latency_s, 6),
                error=beat.error,
                consecutive_failures=self._consecutive_failures,
            )
            if self._down is None and self._consecutive_failures >= self._failures_to_down:
                self.declare_down(beat.error)
        event, self._beat_event = self._beat_event, anyio.Event()
        event.set()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Beat until cancelled. Reports started (for ``tg.start``) after the first healthy beat or the
        declaration, so a Guard knows before its first probe whether the device is alive at all."""
        if self._running:
            raise RuntimeError("this Watchdog is already running")
        self._running = True
        reported = False
        try:
            while True:
                started = self._clock()
                beat = await self.beat_once()
                if not reported and (beat.ok or self.down):
                    reported = True
                    task_status.started()
                await self._sleep(max(self._interval_s - (self._clock() - started), 0.0))
                while self._down is not None and not self._beat_while_down and self._beat_wanted == 0:
                    # Declared down: send nothing more until a recovery driver asks for beats or re-arms.
                    await self._wake.wait()
        finally:
            self._running = False


def _accepts_network(heartbeat: Heartbeat) -> bool:
    """Whether ``heartbeat.beat`` takes ``network=`` (fragileprobe's own do; a plug-in may not)."""
    try:
        params = inspect.signature(heartbeat.beat).parameters
    except (TypeError, ValueError):
        return False
    return "network" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
