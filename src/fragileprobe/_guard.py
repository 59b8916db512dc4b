"""Guard: the safety harness around one device, for fragileprobe's own tools and for other people's checks.

::

    async with Guard(target, ceiling=5, scope=scope) as guard:
        result = await guard.run(my_check, guard)          # one limited session, cancelled if the device dies
        async with guard.connect(23) as stream: ...        # a byte stream holding a slot until closed
        banner = await guard.grab_banner(21)

A Guard combines the three promises:

* **scope**: the target is checked against the authorized scope when the Guard opens (``ScopeError``,
  nothing sent); every connection goes to that checked address only.
* **ceiling**: every session (from before its connect until after its close) holds a slot of a
  :class:`~fragileprobe.ConcurrencyLimiter`; the heartbeat is one more, outside the ceiling.
* **liveness**: a :class:`~fragileprobe.Watchdog` heartbeats the device; when it declares the device down
  every session in flight (and every task waiting for a slot) is cancelled and no new session starts. The
  check is made synchronously right before the connect, with no ``await`` in between, so no connection is
  opened after the declaration.

Errors: ``DeviceDownError`` (refused or cancelled because the device is down), ``ScopeError`` (at entry),
``ConfigError`` (bad arguments), ``ProbeError`` subclasses (``connect`` could not connect). The convenience
probes (``tcp_connect``, ``grab_banner``, ``http_get``) return results instead: a probe cancelled in flight by
the watchdog comes back with ``Outcome.CANCELLED`` (so result lists stay complete), a probe refused before it
started raises ``DeviceDownError``.
"""

from __future__ import annotations

import time
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import anyio
import structlog

from fragileprobe import _probes
from fragileprobe._errors import ConfigError, DeviceDownError
from fragileprobe._limiter import ConcurrencyLimiter
from fragileprobe._probes import HttpResult, Outcome, ProbeResult, ProbeStream
from fragileprobe._scope import Target
from fragileprobe._watchdog import Watchdog, WatchdogTimeline

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable
    from contextlib import AbstractAsyncContextManager
    from types import TracebackType

    from fragileprobe._heartbeat import Heartbeat
    from fragileprobe._scope import Scope

__all__ = ["Guard", "GuardStats"]

log = structlog.get_logger(__name__)

P = ParamSpec("P")
T = TypeVar("T")
R = TypeVar("R", bound=ProbeResult)

_EMPTY_TIMELINE = WatchdogTimeline((), 0, None, None, None, (), ())


@dataclass(frozen=True, slots=True)
class GuardStats:
    """What a Guard did so far.

    Attributes:
        ceiling: the concurrency ceiling in effect.
        in_flight: sessions running now.
        peak_in_flight: the most sessions that ran at once (the heartbeat not counted).
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
    """Run work against one device under a scope check, a concurrency ceiling and a liveness watchdog.

    Args:
        target: the device (a :class:`~fragileprobe.Target` or an address string).
        ceiling: most concurrent sessions (changeable later with :meth:`set_ceiling`).
        scope: the authorized scope; the target must lie inside it.
        heartbeat: sign of life (default: the target's heartbeat).
        interval_s: seconds between heartbeat starts.
        failures_to_down: consecutive failed beats that declare the device down.
        rate_per_s: optional cap on session starts per second.
        watchdog: False runs without heartbeats (then nothing is ever cancelled for liveness).
        connect_timeout_s: connect bound for :meth:`connect` and the default for the convenience probes.
        clock: time source for the watchdog timeline (default ``time.monotonic``).

    Raises:
        ConfigError: invalid arguments (named in the message).
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
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        from fragileprobe._scope import Scope

        self._target = Target(target) if isinstance(target, str) else target
        if not isinstance(self._target, Target):
            raise ConfigError(f"Guard.target must be a Target or an address string, got {target!r}")
        if not isinstance(scope, Scope):
            raise ConfigError(f"Guard.scope must be a Scope, got {scope!r}")
        self._scope = scope
        self._limiter = ConcurrencyLimiter(ceiling, rate_per_s=rate_per_s)
        self._heartbeat = heartbeat if heartbeat is not None else self._target.heartbeat
        self._connect_timeout_s = _probes._check_seconds("connect_timeout_s", connect_timeout_s)
        self._watchdog_on = bool(watchdog)
        self._watchdog_args: dict[str, Any] = {
            "interval_s": interval_s, "failures_to_down": failures_to_down, "clock": clock,
        }
        # Validate the watchdog settings now (ConfigError at construction, not at entry).
        Watchdog(self._heartbeat, host="0.0.0.0", **self._watchdog_args)
        self._watchdog: Watchdog | None = None
        self._address: str | None = None
        self._stack: AsyncExitStack | None = None
        self._closed = False
        self._log: Any = log.bind(target=self._target.label)
        self._sessions = 0
        self._completed = 0
        self._failures = 0
        self._cancelled = 0
        self._refused = 0

    def __repr__(self) -> str:
        return (
            f"Guard(target={self._target.label!r}, ceiling={self._limiter.ceiling}, "
            f"watchdog={self._watchdog_on}, device_down={self.device_down})"
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
            if self._watchdog_on:
                self._watchdog = Watchdog(
                    self._heartbeat, host=address, in_flight=lambda: self._limiter.in_flight,
                    label=self._target.label, logger=self._log, **self._watchdog_args,
                )
                tg = await stack.enter_async_context(anyio.create_task_group())
                stack.callback(tg.cancel_scope.cancel)  # runs first on exit: stop beating
                await tg.start(self._watchdog.run)
                if self._watchdog.down:
                    raise self._watchdog._down_error("it did not answer its heartbeat before any probe")
            self._log.info(
                "guard.open", ceiling=self._limiter.ceiling, heartbeat=repr(self._heartbeat),
                watchdog=self._watchdog_on,
            )
            entered = True
        finally:
            if not entered:
                self._closed = True
                await stack.aclose()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._closed = True
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()
        stats = self.stats
        self._log.info(
            "guard.close", sessions=stats.sessions, peak_in_flight=stats.peak_in_flight,
            failures=stats.failures, cancelled_by_watchdog=stats.cancelled_by_watchdog,
            device_down=stats.device_down,
        )

    def _require_open(self) -> str:
        if self._address is None or self._closed:
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
        return self._limiter

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
        limiter = self._limiter.statistics()
        return GuardStats(
            ceiling=limiter.ceiling, in_flight=limiter.in_flight, peak_in_flight=limiter.peak_in_flight,
            sessions=self._sessions, completed=self._completed, failures=self._failures,
            cancelled_by_watchdog=self._cancelled, refused=self._refused, device_down=self.device_down,
        )

    async def set_ceiling(self, ceiling: int) -> None:
        """Change the ceiling while work runs (lowering waits for in-flight work to drain)."""
        self._log.info("guard.set_ceiling", ceiling=ceiling, previous=self._limiter.target_ceiling)
        await self._limiter.set_ceiling(ceiling)

    def rearm(self) -> None:
        """Allow work again after a recovery (see :meth:`Watchdog.rearm`)."""
        if self._watchdog is not None:
            self._watchdog.rearm()

    async def wait_healthy(self, beats: int = 1) -> None:
        """Wait for ``beats`` consecutive healthy heartbeats (bound it with ``anyio.fail_after``)."""
        if self._watchdog is None:
            raise RuntimeError("wait_healthy needs the watchdog (Guard(..., watchdog=True))")
        await self._watchdog.wait_healthy(beats)

    # --- sessions ---------------------------------------------------------------------------------------

    def _watch(self) -> Any:
        return self._watchdog.watch() if self._watchdog is not None else _NO_WATCH

    def _admit(self) -> None:
        # The gate: synchronous, right before the caller's connect, so a declaration cannot slip in between.
        if self._watchdog is not None:
            self._watchdog.check()
        self._sessions += 1

    def _refused_call(self, what: str) -> None:
        self._refused += 1
        self._log.info("guard.session_refused", session=what)

    async def run(self, fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(*args, **kwargs)`` as one limited session.

        The session holds a slot for its whole duration. ``fn`` must connect to :attr:`address` only (use
        :meth:`connect` inside it if it needs a socket: nested connects take their own slot).

        Raises:
            DeviceDownError: the device was down before the session started, or went down during it (then
                ``fn`` was cancelled).
        """
        self._require_open()
        what = getattr(fn, "__name__", "run")
        record: _Record | None = None
        try:
            with self._watch():
                async with self._limiter.session():
                    with _Record(self, what) as record:
                        return await fn(*args, **kwargs)
        except DeviceDownError:
            if record is None:
                self._refused_call(what)
            raise

    def connect(
        self, port: int, *, timeout_s: float | None = None
    ) -> AbstractAsyncContextManager[ProbeStream]:
        """Open a full TCP connection to the device's ``port`` as one session.

        Use as ``async with guard.connect(23) as stream:``; the slot is held until the block ends and the
        stream is closed (gracefully, waiting briefly for the device's FIN, when the block ended normally;
        at once when it raised or was cancelled). Stream errors are fragileprobe's own
        (:class:`~fragileprobe.ProbeError`).

        Raises:
            DeviceDownError: refused (device down) or cancelled in flight by the watchdog.
            ProbeTimeoutError, ProbeRefusedError, ProbeResetError, ProbeError: the connect failed.
        """
        return self._connect(port, self._connect_timeout_s if timeout_s is None else timeout_s)

    @asynccontextmanager
    async def _connect(self, port: int, timeout_s: float) -> AsyncIterator[ProbeStream]:
        address = self._require_open()
        _probes._check_port(port)
        what = f"connect:{port}"
        record: _Record | None = None
        try:
            with self._watch():
                async with self._limiter.session():
                    with _Record(self, what) as record:
                        stream = await _probes.open_stream(
                            address, port, timeout_s=timeout_s, logger=self._log
                        )
                        finished = False
                        try:
                            yield stream
                            finished = True
                        finally:
                            if finished:
                                await stream.aclose()
                            else:
                                await stream.abort()
                            self._log.debug("probe.closed", host=address, port=port, probe="stream")
        except DeviceDownError:
            if record is None:
                self._refused_call(what)
            raise

    async def _guarded_probe(
        self, kind: str, port: int, result_type: type[R], call: Callable[[str], Awaitable[R]]
    ) -> R:
        address = self._require_open()
        what = f"{kind}:{port}"
        record: _Record | None = None
        started = time.monotonic()
        try:
            with self._watch():
                async with self._limiter.session():
                    with _Record(self, what) as record:
                        started = time.monotonic()
                        result = await call(address)
                        record.failed = result.outcome is not Outcome.OPEN
        except DeviceDownError as exc:
            if record is None:
                self._refused_call(what)
                raise
            # Cancelled in flight: a record of it, so result lists stay complete.
            return result_type(
                host=address, port=port, outcome=Outcome.CANCELLED, latency_s=0.0, data=b"", error=str(exc),
                started_at_s=started, duration_s=time.monotonic() - started,
            )
        return result

    async def tcp_connect(self, port: int, **kwargs: Any) -> ProbeResult:
        """:func:`~fragileprobe.tcp_connect` to the device as one guarded session."""
        kwargs.setdefault("timeout_s", self._connect_timeout_s)

        async def call(address: str) -> ProbeResult:
            return await _probes.tcp_connect(address, port, logger=self._log, **kwargs)

        return await self._guarded_probe("tcp_connect", port, ProbeResult, call)

    async def grab_banner(self, port: int, **kwargs: Any) -> ProbeResult:
        """:func:`~fragileprobe.grab_banner` on the device as one guarded session (same keyword args)."""
        kwargs.setdefault("timeout_s", self._connect_timeout_s)

        async def call(address: str) -> ProbeResult:
            return await _probes.grab_banner(address, port, logger=self._log, **kwargs)

        return await self._guarded_probe("grab_banner", port, ProbeResult, call)

    async def http_get(self, port: int, path: str = "/", **kwargs: Any) -> HttpResult:
        """:func:`~fragileprobe.http_get` on the device as one guarded session (same keyword args)."""
        kwargs.setdefault("timeout_s", self._connect_timeout_s)

        async def call(address: str) -> HttpResult:
            return await _probes.http_get(address, port, path, logger=self._log, **kwargs)

        return await self._guarded_probe("http_get", port, HttpResult, call)
