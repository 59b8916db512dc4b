"""ConcurrencyLimiter: how many sessions a device holds at once, and how fast new ones start.

A fragile device feels *sessions* (a socket from connect until close), not connect calls, so a slot is
held from before the connect until after the close: ``async with limiter.session(): ...``.

Guarantees:

* ``in_flight <= ceiling`` at every moment, where ``ceiling`` is the ceiling in effect. Raising it takes
  effect at once. Lowering it takes effect for *new* sessions at once (they wait), but sessions already
  running are not interrupted: the reported ``ceiling`` stays at the old value until in-flight work has
  drained to the new one, and ``set_ceiling`` returns only then. A task cancelled while waiting for a slot,
  for its rate turn, or mid-session gives its slot back.
* With ``rate_per_s``, session starts are spaced at least ``1 / rate_per_s`` seconds apart (a token bucket
  of depth one: no bursts), measured on the event loop's clock.

Built on :class:`anyio.CapacityLimiter`, whose ``total_tokens`` may be changed while tokens are borrowed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio

from fragileprobe import _validate

if TYPE_CHECKING:
    from types import TracebackType

__all__ = ["ConcurrencyLimiter", "LimiterStatistics"]


@dataclass(frozen=True, slots=True)
class LimiterStatistics:
    """A snapshot of a :class:`ConcurrencyLimiter`.

    Attributes:
        ceiling: the ceiling in effect; ``in_flight`` never exceeds it.
        target_ceiling: the ceiling most recently asked for; below ``ceiling`` while a lowering drains.
        in_flight: sessions running now.
        peak_in_flight: the most sessions that ever ran at once.
        started: sessions that began.
        finished: sessions that ended (normally, by error or by cancellation).
        waiting: tasks waiting for a slot or for their rate turn.
        rate_per_s: the connect-rate cap, or None.
    """

    ceiling: int
    target_ceiling: int
    in_flight: int
    peak_in_flight: int
    started: int
    finished: int
    waiting: int
    rate_per_s: float | None


class _Session:
    """The async context manager behind :meth:`ConcurrencyLimiter.session` (one per use)."""

    __slots__ = ("_limiter", "_token")

    def __init__(self, limiter: ConcurrencyLimiter) -> None:
        self._limiter = limiter
        self._token = object()

    async def __aenter__(self) -> None:
        await self._limiter._enter(self._token)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._limiter._exit(self._token)


class ConcurrencyLimiter:
    """A concurrency ceiling on sessions, changeable while work runs, with an optional rate cap.

    Args:
        ceiling: most sessions at once (at least 1).
        rate_per_s: most session starts per second, or None for no cap.

    Raises:
        ConfigError: ceiling below 1 or not an int; rate not positive.
    """

    def __init__(self, ceiling: int, *, rate_per_s: float | None = None) -> None:
        self._ceiling = _validate.positive_int("ceiling", ceiling)
        self._target = self._ceiling
        self._rate_per_s = _validate.optional_positive("rate_per_s", rate_per_s)
        self._spacing_s = 1.0 / self._rate_per_s if self._rate_per_s else 0.0
        self._last_start = -math.inf
        self._rate_lock = anyio.Lock()
        self._limiter = anyio.CapacityLimiter(self._ceiling)
        self._in_flight = 0
        self._peak = 0
        self._started = 0
        self._finished = 0
        self._rate_waiting = 0
        self._changed = anyio.Event()

    def __repr__(self) -> str:
        return (
            f"ConcurrencyLimiter(ceiling={self._ceiling}, rate_per_s={self._rate_per_s}, "
            f"in_flight={self._in_flight})"
        )

    @property
    def ceiling(self) -> int:
        """The ceiling in effect (see the module docstring for lowering)."""
        return self._ceiling

    @property
    def target_ceiling(self) -> int:
        """The ceiling most recently requested; new sessions already obey it."""
        return self._target

    @property
    def rate_per_s(self) -> float | None:
        """The rate cap, or None."""
        return self._rate_per_s

    @property
    def in_flight(self) -> int:
        """Sessions running now."""
        return self._in_flight

    def session(self) -> _Session:
        """An async context manager holding one slot from entry (before the connect) to exit (after close)."""
        return _Session(self)

    async def acquire(self) -> object:
        """Take one slot (waiting for it and for the rate turn); returns the token :meth:`release` takes.

        For holders whose slot outlives a ``with`` block (the device-side ledger keeps a slot charged
        until the device has let go of the connection).
        """
        token = object()
        await self._enter(token)
        return token

    def release(self, token: object) -> None:
        """Give back the slot taken by :meth:`acquire` (once per token)."""
        self._exit(token)

    async def _enter(self, token: object) -> None:
        await self._limiter.acquire_on_behalf_of(token)
        admitted = False
        try:
            if self._spacing_s:
                await self._rate_turn()
            admitted = True
        finally:
            if not admitted:  # cancelled while waiting for the rate turn: give the slot back
                self._release(token)
        self._in_flight += 1
        self._started += 1
        if self._in_flight > self._peak:
            self._peak = self._in_flight

    def _exit(self, token: object) -> None:
        self._in_flight -= 1
        self._finished += 1
        self._release(token)

    def _release(self, token: object) -> None:
        self._limiter.release_on_behalf_of(token)
        self._maybe_commit()

    async def _rate_turn(self) -> None:
        # One waiter at a time (anyio.Lock is FIFO), spaced from the previous *actual* start, so a late
        # wake-up can never be followed by a start closer than the spacing. A waiter cancelled while
        # sleeping simply leaves the queue.
        self._rate_waiting += 1
        try:
            async with self._rate_lock:
                wait = self._last_start + self._spacing_s - anyio.current_time()
                if wait > 0:
                    await anyio.sleep(wait)
                self._last_start = anyio.current_time()
        finally:
            self._rate_waiting -= 1

    def _maybe_commit(self) -> None:
        if self._ceiling != self._target and self._limiter.borrowed_tokens <= self._target:
            self._ceiling = self._target
            self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def set_ceiling(self, ceiling: int) -> None:
        """Change the ceiling while work runs.

        Raising takes effect at once and wakes waiting sessions. Lowering makes new sessions wait at once and
        returns when in-flight work has drained to the new ceiling (or a later ``set_ceiling`` replaced this
        one). Cancelling the call does not undo the lowering.

        Raises:
            ConfigError: ceiling below 1 or not an int.
        """
        ceiling = _validate.positive_int("ceiling", ceiling)
        self._target = ceiling
        self._limiter.total_tokens = ceiling
        self._notify()
        # Raising: everything running fits the old ceiling, so it commits at once. Lowering: commits
        # here only if in-flight work already fits, else on the release that makes it fit.
        self._maybe_commit()
        while self._ceiling != ceiling and self._target == ceiling:
            await self._changed.wait()

    def statistics(self) -> LimiterStatistics:
        """A frozen snapshot of the counters."""
        return LimiterStatistics(
            ceiling=self._ceiling,
            target_ceiling=self._target,
            in_flight=self._in_flight,
            peak_in_flight=self._peak,
            started=self._started,
            finished=self._finished,
            waiting=self._limiter.statistics().tasks_waiting + self._rate_waiting,
            rate_per_s=self._rate_per_s,
        )
