"""Guard: the safety harness around one device, for fragileprobe's own tools and for other people's checks.

::

    async with Guard(target, ceiling=5, scope=scope) as guard:
        result = await guard.run(my_check, guard)          # one limited session, cancelled if the device dies
        async with guard.connect(23) as stream: ...        # a byte stream holding a slot until closed
        banner = await guard.grab_banner(21)

A Guard combines the three promises:

* **scope**: the target is checked against the authorized scope when the Guard opens (``ScopeError``,
  nothing sent); every connection goes to that checked address only.
* **ceiling**: ``ceiling=N`` is the most sessions the *device* holds from this Guard at once, all of them:
  probes, other tools' checks, and the heartbeat. A heartbeat that opens a session (HTTP, TCP) keeps one
  of the N places for itself, so the work gets N - 1 (an ICMP heartbeat costs none). Every session holds
  its slot from before its connect until the device has let go of it (its FIN or RST seen, or ``linger_s``
  passed: see ``fragileprobe._sessions``), however it ended: closed, timed out, cancelled by the caller or
  by the watchdog, aborted, or failed with an exception.
* **liveness**: a :class:`~fragileprobe.Watchdog` heartbeats the device; when it declares the device down
  every session in flight (and every task waiting for a slot) is cancelled and no new session starts. The
  check is made synchronously right before each connect, with no ``await`` in between, so no connection is
  opened after the declaration.

Errors: ``DeviceDownError`` (refused or cancelled because the device is down), ``ScopeError`` (at entry),
``ConfigError`` (bad arguments), ``ProbeError`` subclasses (``connect`` could not connect). The convenience
probes (``tcp_connect``, ``grab_banner``, ``http_get``) return results instead: a probe cancelled in flight by
the watchdog comes back with ``Outcome.CANCELLED`` (so result lists stay complete), a probe refused before it
started raises ``DeviceDownError``.
"""

from __future__ import annotations

from contextlib import AsyncExitStack, asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, ParamSpec, TypedDict, TypeVar

import anyio
import structlog

from fragileprobe import _probes, _validate
from fragileprobe._errors import ConfigError, DeviceDownError
from fragileprobe._limiter import ConcurrencyLimiter
from fragileprobe._probes import HttpResult, Outcome, ProbeResult, ProbeStream
from fragileprobe._scope import Target
from fragileprobe._sessions import (
    DEFAULT_LINGER_S,
    DeviceSessions,
    SessionPool,
    SessionStatistics,
    Slot,
    check_linger,
)
from fragileprobe._watchdog import Watchdog, WatchdogTimeline

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable
    from contextlib import AbstractAsyncContextManager
    from types import TracebackType
    from typing import Unpack

    from structlog.typing import FilteringBoundLogger

    from fragileprobe._heartbeat import Heartbeat
    from fragileprobe._net import Network
    from fragileprobe._scope import Scope
    from fragileprobe._watchdog import _Watch

__all__ = ["Guard", "GuardStats"]

log = structlog.get_logger(__name__)


class _WatchdogSettings(TypedDict):
    """The Guard's arguments that go to each Watchdog it builds."""

    interval_s: float
    failures_to_down: int
    clock: Callable[[], float]


class _ConnectOptions(TypedDict, total=False):
    """Keyword arguments of :func:`~fragileprobe.tcp_connect` a guarded probe passes on."""

    timeout_s: float
    scope: Scope | None


class _BannerOptions(_ConnectOptions, total=False):
    """Keyword arguments of :func:`~fragileprobe.grab_banner` a guarded probe passes on."""

    read_timeout_s: float
    total_timeout_s: float | None
    max_bytes: int
    send: bytes | None
    settle_s: float


class _HttpOptions(_ConnectOptions, total=False):
    """Keyword arguments of :func:`~fragileprobe.http_get` a guarded probe passes on."""

    read_timeout_s: float
    total_timeout_s: float | None
    max_bytes: int
    host_header: str | None


P = ParamSpec("P")
T = TypeVar("T")
R = TypeVar("R", bound=ProbeResult)

_EMPTY_TIMELINE = WatchdogTimeline((), 0, None, None, None, (), ())
_NO_SESSIONS = SessionStatistics(0, 0, 0, 0, 0, 0, 0.0, 0)

# The slot of the Guard.run() call the current task is in: connections made through guard.connect (or the
# convenience probes) inside run() use it, so a check that opens one connection costs one session, not two.
_RUN_SLOT: ContextVar[tuple[Guard, Slot] | None] = ContextVar("fragileprobe_guard_run_slot", default=None)


def opens_session(heartbeat: Heartbeat) -> bool:
    """Whether a heartbeat's beats open a TCP session on the device (plug-ins: True unless they say not)."""
    return bool(getattr(heartbeat, "opens_session", True))


@dataclass(frozen=True, slots=True)
class GuardStats:
    """What a Guard did so far, counted on the device's side.

    Attributes:
        ceiling: N in effect: the most sessions the device holds from this Guard at once, heartbeat
            included (while a lowering drains, the old value until the device holds no more than the new).
        in_flight: work sessions the device may hold now (connecting, open, or lingering until it let go).
        peak_in_flight: the most work sessions the device held at once.
        device_sessions: every session the device may hold from this Guard now, the heartbeat included.
        peak_device_sessions: the most the device held at once, heartbeat included (never above ceiling).
        lingering: sessions we ended that the device has not let go of yet (still charged).
        linger_expired: sessions released because ``linger_s`` passed before the device let go (each was
            then reset).
        linger_s_total: seconds sessions spent charged after our side was done, summed.
        heartbeat_reserved: 1 when the heartbeat keeps one of the N places (it opens a session), else 0.
        sessions: sessions started (admitted past the down check and the ceiling).
        completed: sessions that ended without an exception and, for probes, with outcome OPEN.
        failures: sessions that raised, or probes whose outcome was not OPEN (closed, timeout, reset, ...).
        cancelled_by_watchdog: sessions in flight that the watchdog's declaration cancelled.
        refused: calls refused with DeviceDownError before their session started.
        device_down: whether the device is declared down now.
    """

    ceiling: int
    in_flight: int
    peak_in_flight: int
    device_sessions: int
    peak_device_sessions: int
    lingering: int
    linger_expired: int
    linger_s_total: float
    heartbeat_reserved: int
    sessions: int
    completed: int
    failures: int
    cancelled_by_watchdog: int
    refused: int
    device_down: bool


class _NoWatch:
    """Stand-in for :class:`~fragileprobe._watchdog._Watch` when the watchdog is off."""

    __slots__ = ()
    cancelled = False

    def __enter__(self) -> _NoWatch:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None


_NO_WATCH = _NoWatch()


class _Record:
    """One admitted session: passes the down gate on entry, counts how it ended on exit.

    Entering is the gate (synchronous, right before the caller's connect). On exit: completed, failed
    (an exception, or ``failed`` set for a probe outcome other than OPEN), or cancelled by the watchdog (the
    device is down and the session ended by cancellation or DeviceDownError; with nested sessions the
    cancellation surfaces at the outermost one, so every level counts itself here).
    """

    __slots__ = ("failed", "guard", "what")

    def __init__(self, guard: Guard, what: str) -> None:
        self.guard = guard
        self.what = what
        self.failed = False

    def __enter__(self) -> _Record:
        self.guard._admit()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        guard = self.guard
        stopped = exc_type is not None and (
            issubclass(exc_type, DeviceDownError) or not issubclass(exc_type, Exception)
        )
        if stopped and guard.device_down:
            guard._cancelled += 1
            guard._log.warning("guard.session_cancelled", session=self.what)
        elif (exc_type is not None and issubclass(exc_type, Exception)) or self.failed:
            guard._failures += 1
        elif exc_type is None:
            guard._completed += 1


class Guard:
    """Run work against one device under a scope check, a device-side session ceiling and a watchdog.

    Args:
        target: the device (a :class:`~fragileprobe.Target` or an address string).
        ceiling: N, the most sessions the device holds from this Guard at once, heartbeat included
            (changeable later with :meth:`set_ceiling`). With a heartbeat that opens a session, at least 2.
        scope: the authorized scope; the target must lie inside it.
        heartbeat: sign of life (default: the target's heartbeat).
        interval_s: seconds between heartbeat starts.
        failures_to_down: consecutive failed beats that declare the device down.
        rate_per_s: optional cap on work-session starts per second.
        watchdog: False runs without heartbeats (then nothing is ever cancelled for liveness, and the work
            gets all N places).
        connect_timeout_s: connect bound for :meth:`connect` and the default for the convenience probes.
        clock: time source for the watchdog timeline (default ``anyio.current_time``).
        linger_s: most seconds a session stays charged after our side is done while the device has not let
            go (default: :data:`~fragileprobe._sessions.DEFAULT_LINGER_S`, or the watchdog's detection bound
            plus one interval if that is longer). It must exceed the detection bound, so that a device which
            hangs holding our sessions is declared down before one of its slots is reused.
        network: how connections are made (default: real sockets; ``fragileprobe.testing.FakeNetwork``
            in tests).

    Raises:
        ConfigError: invalid arguments (named in the message), including a ceiling that leaves the work no
            room beside a session heartbeat.
    """

    def __init__(
        self,
        target: Target | str,
        *,
        ceiling: int,
        scope: Scope,
        heartbeat: Heartbeat | None = None,
        interval_s: float = 1.0,
        failures_to_down: int = 1,
        rate_per_s: float | None = None,
        watchdog: bool = True,
        connect_timeout_s: float = _probes.DEFAULT_CONNECT_TIMEOUT_S,
        clock: Callable[[], float] = anyio.current_time,
        linger_s: float | None = None,
        network: Network | None = None,
    ) -> None:
        from fragileprobe._scope import Scope

        self._target = Target(target) if isinstance(target, str) else target
        if not isinstance(self._target, Target):
            raise _validate.fail("Guard.target", "a Target or an address string", target)
        if not isinstance(scope, Scope):
            raise _validate.fail("Guard.scope", "a Scope", scope)
        self._scope = scope
        self._heartbeat = heartbeat if heartbeat is not None else self._target.heartbeat
        self._watchdog_on = bool(watchdog)
        self._reserve = 1 if self._watchdog_on and opens_session(self._heartbeat) else 0
        work = self._work_ceiling(ceiling)
        self._limiter = ConcurrencyLimiter(work, rate_per_s=rate_per_s)
        self._beat_limiter = ConcurrencyLimiter(1) if self._reserve else None
        self._connect_timeout_s = _validate.positive("connect_timeout_s", connect_timeout_s)
        self._watchdog_args: _WatchdogSettings = {
            "interval_s": interval_s,
            "failures_to_down": failures_to_down,
            "clock": clock,
        }
        # Validate the watchdog settings now (ConfigError at construction, not at entry).
        probe = Watchdog(self._heartbeat, host="0.0.0.0", **self._watchdog_args)
        bound = probe.detection_bound_s + probe.interval_s if self._watchdog_on else 0.0
        if linger_s is None:
            self._linger_s = max(DEFAULT_LINGER_S, bound)
        else:
            self._linger_s = check_linger(linger_s)
            if self._watchdog_on and self._linger_s <= probe.detection_bound_s:
                raise ConfigError(
                    f"linger_s: {self._linger_s:g} s is not longer than the watchdog's detection bound "
                    f"({probe.detection_bound_s:g} s = interval + heartbeat timeout): a device that hangs "
                    "holding our sessions could see a slot reused before it is declared down",
                    field="linger_s",
                )
        if network is not None and not callable(getattr(network, "connect", None)):
            raise _validate.fail("Guard.network", "an object with a connect(host, port) method", network)
        self._network = network
        self._sessions: DeviceSessions | None = None
        self._work: SessionPool | None = None
        self._watchdog: Watchdog | None = None
        self._address: str | None = None
        self._stack: AsyncExitStack | None = None
        self._closed = False
        self._log: FilteringBoundLogger = log.bind(target=self._target.label)
        self._started = 0
        self._completed = 0
        self._failures = 0
        self._cancelled = 0
        self._refused = 0

    def _work_ceiling(self, ceiling: int) -> int:
        """The work's share of N (N minus the heartbeat's place), validating N."""
        _validate.positive_int("ceiling", ceiling)
        if ceiling - self._reserve < 1:
            hb = self._heartbeat
            raise ConfigError(
                f"ceiling: {ceiling} leaves no room for work: the {type(hb).__name__} on port {hb.port} "
                "opens a session of its own, and a ceiling counts every session the device holds, the "
                f"heartbeat included. Ways out: a ceiling of {self._reserve + 1} or more, a heartbeat that "
                "opens no session (IcmpHeartbeat, with fragileprobe[raw]), or watchdog=False (no liveness "
                "checks)",
                field="ceiling",
            )
        return ceiling - self._reserve

    def __repr__(self) -> str:
        return (
            f"Guard(target={self._target.label!r}, ceiling={self.stats.ceiling}, "
            f"heartbeat_reserved={self._reserve}, watchdog={self._watchdog_on}, "
            f"device_down={self.device_down})"
        )

    # --- lifecycle --------------------------------------------------------------------------------------

    async def __aenter__(self) -> Guard:
        if self._stack is not None or self._closed:
            raise RuntimeError("a Guard can be entered once")
        address = self._scope.check(self._target.host)  # ScopeError here: nothing has been sent
        self._address = address
        self._log = log.bind(target=self._target.label, host=address)
        stack = AsyncExitStack()
        self._stack = stack
        entered = False
        try:
            # Entered first, left last: leaving waits until the device has let go of every session.
            sessions = await stack.enter_async_context(
                DeviceSessions(address, linger_s=self._linger_s, network=self._network, logger=self._log)
            )
            self._sessions = sessions
            self._work = sessions.pool(self._limiter, gate=self._gate)
            if self._watchdog_on:
                beat_net = sessions.pool(self._beat_limiter).network if self._beat_limiter else None
                self._watchdog = Watchdog(
                    self._heartbeat,
                    host=address,
                    in_flight=self._work_in_flight,
                    label=self._target.label,
                    logger=self._log,
                    network=beat_net,
                    sessions=self._beat_sample,
                    **self._watchdog_args,
                )
                tg = await stack.enter_async_context(anyio.create_task_group())
                stack.callback(tg.cancel_scope.cancel)  # runs first on exit: stop beating
                await tg.start(self._watchdog.run)
                if self._watchdog.down:
                    raise self._watchdog._down_error("it did not answer its heartbeat before any probe")
            self._log.info(
                "guard.open",
                ceiling=self.stats.ceiling,
                heartbeat=repr(self._heartbeat),
                heartbeat_reserved=self._reserve,
                linger_s=self._linger_s,
                watchdog=self._watchdog_on,
            )
            entered = True
        finally:
            if not entered:
                self._closed = True
                self._abandon_if_down()
                await stack.aclose()
        return self

    def _abandon_if_down(self) -> None:
        # Closing with the device declared down: nothing more will be sent to it from here, and a hung
        # device answers no FIN, so its lingering sessions are reset now instead of waited for.
        if self.device_down and self._sessions is not None:
            self._sessions.abandon()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._closed = True
        stack, self._stack = self._stack, None
        if stack is not None:
            self._abandon_if_down()
            await stack.aclose()
        stats = self.stats
        self._log.info(
            "guard.close",
            sessions=stats.sessions,
            peak_in_flight=stats.peak_in_flight,
            peak_device_sessions=stats.peak_device_sessions,
            linger_expired=stats.linger_expired,
            failures=stats.failures,
            cancelled_by_watchdog=stats.cancelled_by_watchdog,
            device_down=stats.device_down,
        )

    def _require_open(self) -> str:
        if self._address is None or self._closed or self._work is None:
            raise RuntimeError("use the Guard inside 'async with Guard(...) as guard:'")
        return self._address

    # --- state ------------------------------------------------------------------------------------------

    @property
    def target(self) -> Target:
        return self._target

    @property
    def address(self) -> str:
        """The scope-checked address every connection goes to."""
        return self._require_open()

    @property
    def limiter(self) -> ConcurrencyLimiter:
        """The work's limiter: N minus the heartbeat's place (slots charged until the device let go)."""
        return self._limiter

    @property
    def linger_s(self) -> float:
        return self._linger_s

    @property
    def heartbeat_reserved(self) -> int:
        """1 when the heartbeat keeps one of the N places for itself, else 0."""
        return self._reserve

    @property
    def sessions(self) -> DeviceSessions | None:
        """The device-side ledger (None outside ``async with``)."""
        return self._sessions

    @property
    def watchdog(self) -> Watchdog | None:
        """The running watchdog (None before entry or with ``watchdog=False``)."""
        return self._watchdog

    @property
    def device_down(self) -> bool:
        """True while the watchdog holds the device declared down."""
        return self._watchdog is not None and self._watchdog.down

    @property
    def timeline(self) -> WatchdogTimeline:
        """The watchdog's timeline (empty without a watchdog)."""
        return self._watchdog.timeline if self._watchdog is not None else _EMPTY_TIMELINE

    @property
    def stats(self) -> GuardStats:
        work = self._limiter.statistics()
        ledger = self._sessions.statistics() if self._sessions is not None else _NO_SESSIONS
        return GuardStats(
            ceiling=work.ceiling + self._reserve,
            in_flight=work.in_flight,
            peak_in_flight=work.peak_in_flight,
            device_sessions=ledger.device_sessions,
            peak_device_sessions=ledger.peak_device_sessions,
            lingering=ledger.lingering,
            linger_expired=ledger.linger_expired,
            linger_s_total=ledger.linger_s_total,
            heartbeat_reserved=self._reserve,
            sessions=self._started,
            completed=self._completed,
            failures=self._failures,
            cancelled_by_watchdog=self._cancelled,
            refused=self._refused,
            device_down=self.device_down,
        )

    async def set_ceiling(self, ceiling: int) -> None:
        """Change N while work runs (the heartbeat's place included, as at construction).

        Raising takes effect at once. Lowering makes new sessions wait at once and returns when the device
        holds no more than the new N (sessions still lingering count until the device let go of them).

        Raises:
            ConfigError: a ceiling below 1, or one that leaves no room for work beside the heartbeat.
        """
        work = self._work_ceiling(ceiling)
        previous = self._limiter.target_ceiling + self._reserve
        self._log.info("guard.set_ceiling", ceiling=ceiling, previous=previous)
        await self._limiter.set_ceiling(work)

    def rearm(self) -> None:
        """Allow work again after a recovery (see :meth:`Watchdog.rearm`)."""
        if self._watchdog is not None:
            self._watchdog.rearm()

    async def wait_healthy(self, beats: int = 1) -> None:
        """Wait for ``beats`` consecutive healthy heartbeats (bound it with ``anyio.fail_after``)."""
        if self._watchdog is None:
            raise RuntimeError("wait_healthy needs the watchdog (Guard(..., watchdog=True))")
        await self._watchdog.wait_healthy(beats)

    async def wait_let_go(self) -> None:
        """Return once the device holds no work session from this Guard (their lingers ended; the
        heartbeat's one place is not waited for). Bounded by ``linger_s`` once the work has stopped."""
        self._require_open()
        assert self._work is not None
        await self._work.wait_idle()

    def _work_in_flight(self) -> int:
        """Work sessions in flight (connecting or open; lingering ones are over for us): what a
        declaration cancels."""
        work = self._work
        return 0 if work is None else self._limiter.in_flight - work.lingering

    def _beat_sample(self) -> tuple[int, int]:
        """The work's sessions (open on our side, held by the device) now, for the watchdog's beats."""
        work = self._work
        return (0, 0) if work is None else (work.open, work.held)

    # --- sessions ---------------------------------------------------------------------------------------

    def _watch(self) -> _Watch | _NoWatch:
        return self._watchdog.watch() if self._watchdog is not None else _NO_WATCH

    def _gate(self) -> None:
        # Runs synchronously right before every connect: a declaration cannot slip in between.
        if self._watchdog is not None:
            self._watchdog.check()

    def _admit(self) -> None:
        self._gate()
        self._started += 1

    def _refused_call(self, what: str) -> None:
        self._refused += 1
        self._log.info("guard.session_refused", session=what)

    @asynccontextmanager
    async def _slot(self) -> AsyncIterator[Slot]:
        """This call's slot: the enclosing run()'s when inside one, else a fresh one (waiting for it)."""
        current = _RUN_SLOT.get()
        if current is not None and current[0] is self:
            yield current[1]
            return
        assert self._work is not None
        slot = await self._work.slot()
        try:
            yield slot
        finally:
            slot.release()  # its connection, if any, keeps the slot charged until the device let go

    async def run(self, fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(*args, **kwargs)`` as one limited session.

        The session holds a slot for ``fn``'s whole duration. ``fn`` must connect to :attr:`address` only,
        through :meth:`connect` (or the convenience probes): its first connection at a time uses this
        session's slot, and the slot stays charged until the device has let go of it; a second connection
        open at the same time takes a slot of its own. A check that opens its own sockets cannot be
        counted on the device's side beyond ``fn``'s return: route it through :meth:`connect`.

        Raises:
            DeviceDownError: the device was down before the session started, or went down during it (then
                ``fn`` was cancelled).
        """
        self._require_open()
        what = getattr(fn, "__name__", "run")
        record: _Record | None = None
        try:
            with self._watch():
                async with self._slot() as slot:
                    with _Record(self, what) as record:
                        token = _RUN_SLOT.set((self, slot))
                        try:
                            return await fn(*args, **kwargs)
                        finally:
                            _RUN_SLOT.reset(token)
        except DeviceDownError:
            if record is None:
                self._refused_call(what)
            raise

    def connect(
        self, port: int, *, timeout_s: float | None = None
    ) -> AbstractAsyncContextManager[ProbeStream]:
        """Open a full TCP connection to the device's ``port`` as one session.

        Use as ``async with guard.connect(23) as stream:``. The slot is charged from before the connect
        until the device has let go of the connection: after the block (ended normally, by an exception or
        a cancellation) the stream is half-closed and the device's FIN awaited in the background, at most
        ``linger_s``; the caller goes on at once. Stream errors are fragileprobe's own
        (:class:`~fragileprobe.ProbeError`).

        Raises:
            DeviceDownError: refused (device down) or cancelled in flight by the watchdog.
            ProbeTimeoutError, ProbeRefusedError, ProbeResetError, ProbeError: the connect failed.
        """
        return self._connect(port, self._connect_timeout_s if timeout_s is None else timeout_s)

    @asynccontextmanager
    async def _connect(self, port: int, timeout_s: float) -> AsyncIterator[ProbeStream]:
        address = self._require_open()
        _validate.port("port", port)
        what = f"connect:{port}"
        record: _Record | None = None
        try:
            with self._watch():
                async with self._slot() as slot:
                    with _Record(self, what) as record:
                        stream = await _probes.open_stream(
                            address, port, timeout_s=timeout_s, logger=self._log, network=slot.network
                        )
                        try:
                            yield stream
                        finally:
                            await stream.aclose()  # hands the connection to the ledger's linger
                            self._log.debug("probe.closed", host=address, port=port, probe="stream")
        except DeviceDownError:
            if record is None:
                self._refused_call(what)
            raise

    async def _guarded_probe(
        self, kind: str, port: int, result_type: type[R], call: Callable[[str, Network], Awaitable[R]]
    ) -> R:
        address = self._require_open()
        what = f"{kind}:{port}"
        record: _Record | None = None
        started = anyio.current_time()
        try:
            with self._watch():
                async with self._slot() as slot:
                    with _Record(self, what) as record:
                        started = anyio.current_time()
                        result = await call(address, slot.network)
                        record.failed = result.outcome is not Outcome.OPEN
        except DeviceDownError as exc:
            if record is None:
                self._refused_call(what)
                raise
            # Cancelled in flight: a record of it, so result lists stay complete.
            return result_type(
                host=address,
                port=port,
                outcome=Outcome.CANCELLED,
                latency_s=0.0,
                data=b"",
                error=str(exc),
                started_at_s=started,
                duration_s=anyio.current_time() - started,
            )
        return result

    async def tcp_connect(self, port: int, **kwargs: Unpack[_ConnectOptions]) -> ProbeResult:
        """:func:`~fragileprobe.tcp_connect` to the device as one guarded session."""
        kwargs.setdefault("timeout_s", self._connect_timeout_s)

        async def call(address: str, network: Network) -> ProbeResult:
            return await _probes.tcp_connect(address, port, logger=self._log, network=network, **kwargs)

        return await self._guarded_probe("tcp_connect", port, ProbeResult, call)

    async def grab_banner(self, port: int, **kwargs: Unpack[_BannerOptions]) -> ProbeResult:
        """:func:`~fragileprobe.grab_banner` on the device as one guarded session (same keyword args)."""
        kwargs.setdefault("timeout_s", self._connect_timeout_s)

        async def call(address: str, network: Network) -> ProbeResult:
            return await _probes.grab_banner(address, port, logger=self._log, network=network, **kwargs)

        return await self._guarded_probe("grab_banner", port, ProbeResult, call)

    async def http_get(self, port: int, path: str = "/", **kwargs: Unpack[_HttpOptions]) -> HttpResult:
        """:func:`~fragileprobe.http_get` on the device as one guarded session (same keyword args)."""
        kwargs.setdefault("timeout_s", self._connect_timeout_s)

        async def call(address: str, network: Network) -> HttpResult:
            return await _probes.http_get(address, port, path, logger=self._log, network=network, **kwargs)

        return await self._guarded_probe("http_get", port, HttpResult, call)
