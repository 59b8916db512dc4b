"""Timeouts that follow the network, and a global connect rate: the timing side of a wide discovery.

Two pieces, both free of sockets:

* :class:`RttEstimator` is RFC 6298's retransmission-timer estimator (the one nmap's connect scan also
  keeps, per host and per host group): ``srtt`` and ``rttvar`` smoothed with gains 1/8 and 1/4, timeout
  ``srtt + 4 * rttvar``, clamped to a floor and a ceiling (:class:`TimeoutBounds`). It is pure and takes the
  measured round-trip times as numbers, so tests feed it exact samples. Discovery keeps one per network (fed
  by every host's answers; it times the probes of addresses that have not answered yet) and one per host
  (used once that host has answered).
* :class:`GlobalPacer` spaces new connections across the whole run (``rate_per_s`` in total, runZero-style:
  1,000 packets/s by default there) with three priorities: the ports of a host known to be alive first,
  then every address's first liveness probe, then the second ones. Most live hosts answer their first probe
  (an open port or a RST), so they are all found in the first sweep over the block and finished while the
  second sweep (for hosts behind a firewall) runs: the end of the run is the silent space's timeouts, not a
  live host's work.

Only connect round trips feed the estimator: ``connect()`` completing (SYN-ACK) or being refused (RST) is one
network round trip plus the peer's kernel, which is what the connect timeout waits for. A banner's delay also
holds the device's application time, so banner reads use the same estimate with a fixed service allowance
on top and their own floor and ceiling (``banner_bounds``).
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass
from typing import Final

import anyio

from fragileprobe import _validate

__all__ = [
    "BANNER_SERVICE_ALLOWANCE_S",
    "DEFAULT_GLOBAL_RATE",
    "PRIORITY_FIRST_LOOK",
    "PRIORITY_LIVE",
    "PRIORITY_LOOK_AGAIN",
    "GlobalPacer",
    "RttEstimator",
    "TimeoutBounds",
]

# RFC 6298 section 2: alpha = 1/8, beta = 1/4, K = 4 (nmap uses the same gains in timing.cc).
RTT_ALPHA: Final = 0.125
RTT_BETA: Final = 0.25
RTT_K: Final = 4.0
# New connections per second for a whole run: runZero's default total rate (1,000 packets/s), the gentlest
# total of the scanners we compared (ANCHORS.md). A silent address's probe is one SYN, so this is also its
# SYN rate; per-host limits (one session, 10 connects/s) apply on top.
DEFAULT_GLOBAL_RATE: Final = 1000.0
# Time a device's application takes to say its first word once connected (an FTP or SSH banner, an HTTP
# status): ~5-20 ms on the emulated devices, ~100 ms on a busy embedded stack. Added to the connect timeout
# estimate to time banner reads.
BANNER_SERVICE_ALLOWANCE_S: Final = 0.25
# The pacer never grants more than this many connects in one wake-up, however late the wake-up was: a
# stalled event loop must not turn into a burst on the network. 50 ms of the default rate: with thousands
# of sockets in flight one loop iteration on a loaded 2-core machine takes 10-30 ms, and a smaller bucket
# lost that time for good (the /20 ran at ~700 connects/s instead of 1,000). The burst is spread over
# different hosts: each host's own limiter still spaces its connects.
PACER_MAX_BURST: Final = 50


@dataclass(frozen=True, slots=True, kw_only=True)
class TimeoutBounds:
    """Floor, ceiling and starting value of an adaptive timeout (seconds).

    Attributes:
        floor_s: Never wait less: a few times the worst round trip of a hospital WAN link, plus event-loop
            jitter on a loaded scanner.
        ceiling_s: Never wait more (the user's ``connect_timeout_s`` / ``banner_timeout_s``).
        initial_s: Before any sample (RFC 6298's initial RTO is 1 s).
    """

    floor_s: float
    ceiling_s: float
    initial_s: float

    def __post_init__(self) -> None:
        for name in ("floor_s", "ceiling_s", "initial_s"):
            _validate.positive(name, getattr(self, name))
        if self.floor_s > self.ceiling_s:
            raise _validate.fail("floor_s", f"at most ceiling_s ({self.ceiling_s:g})", self.floor_s)

    def clamp(self, value_s: float) -> float:
        """``value_s`` held between the floor and the ceiling."""
        return min(self.ceiling_s, max(self.floor_s, value_s))


class RttEstimator:
    """RFC 6298 smoothed round-trip time and variation; pure (no clock, no I/O).

    >>> e = RttEstimator(); e.observe(0.1); round(e.rto_s(), 3)
    0.3
    """

    __slots__ = ("rttvar_s", "samples", "srtt_s")

    def __init__(self) -> None:
        self.srtt_s: float | None = None
        self.rttvar_s = 0.0
        self.samples = 0

    def observe(self, rtt_s: float) -> None:
        """Add one measured round trip (negative or non-finite samples are ignored)."""
        if not math.isfinite(rtt_s) or rtt_s < 0:
            return
        if self.srtt_s is None:
            self.srtt_s = rtt_s
            self.rttvar_s = rtt_s / 2
        else:
            self.rttvar_s = (1 - RTT_BETA) * self.rttvar_s + RTT_BETA * abs(self.srtt_s - rtt_s)
            self.srtt_s = (1 - RTT_ALPHA) * self.srtt_s + RTT_ALPHA * rtt_s
        self.samples += 1

    def rto_s(self) -> float:
        """``srtt + 4 * rttvar`` (unclamped); ``inf`` before the first sample."""
        if self.srtt_s is None:
            return math.inf
        return self.srtt_s + RTT_K * self.rttvar_s

    def timeout_s(self, bounds: TimeoutBounds) -> float:
        """The timeout to use now: the estimate within ``bounds``, or ``bounds.initial_s`` with no sample."""
        if self.srtt_s is None:
            return bounds.clamp(bounds.initial_s)
        return bounds.clamp(self.rto_s())

    def __repr__(self) -> str:
        return f"RttEstimator(srtt_s={self.srtt_s}, rttvar_s={self.rttvar_s:.6f}, samples={self.samples})"


# Priorities of GlobalPacer.acquire, most urgent first.
PRIORITY_LIVE: Final = 0  # a port of a host known to be alive
PRIORITY_FIRST_LOOK: Final = 1  # an address's first liveness probe
PRIORITY_LOOK_AGAIN: Final = 2  # its later liveness probes
PRIORITIES: Final = 3


class GlobalPacer:
    """At most ``rate_per_s`` grants per second across every caller, most urgent callers first.

    ``await pacer.acquire(priority)`` before each new connection. Grants are spaced evenly (a token bucket
    of depth :data:`PACER_MAX_BURST`, refilled at ``rate_per_s``); within a wake-up, waiters of a lower
    priority number are served first (:data:`PRIORITY_LIVE`, :data:`PRIORITY_FIRST_LOOK`,
    :data:`PRIORITY_LOOK_AGAIN`), each queue in arrival order. The pacer's own task is :meth:`run`.

    Raises:
        ConfigError: ``rate_per_s`` not a positive finite number.
    """

    def __init__(self, rate_per_s: float) -> None:
        self.rate_per_s = _validate.positive("global_rate", rate_per_s)
        self._queues: tuple[collections.deque[anyio.Event], ...] = tuple(
            collections.deque() for _ in range(PRIORITIES)
        )
        self._wake = anyio.Event()
        self.granted = 0

    async def acquire(self, priority: int = PRIORITY_LIVE) -> None:
        """Wait for this caller's turn (cancellation leaves the queue without taking a grant)."""
        event = anyio.Event()
        queue = self._queues[min(max(priority, 0), PRIORITIES - 1)]
        queue.append(event)
        self._wake.set()
        try:
            await event.wait()
        finally:
            if not event.is_set():  # cancelled before the grant: leave the queue
                queue.remove(event)

    def waiting(self) -> int:
        """Callers waiting for a grant now."""
        return sum(len(q) for q in self._queues)

    async def run(self) -> None:
        """Grant turns forever (start it in a task group; cancel the group's scope to stop it)."""
        interval = 1.0 / self.rate_per_s
        tokens = 1.0
        last = anyio.current_time()
        while True:
            if not self.waiting():
                self._wake = anyio.Event()
                await self._wake.wait()
                # Idle time earns no burst: after a pause at most one grant is due at once.
                now = anyio.current_time()
                tokens = min(1.0, tokens + (now - last) * self.rate_per_s)
                last = now
            now = anyio.current_time()
            tokens = min(float(PACER_MAX_BURST), tokens + (now - last) * self.rate_per_s)
            last = now
            while tokens >= 1.0 and self.waiting():
                queue = next(q for q in self._queues if q)
                queue.popleft().set()
                self.granted += 1
                tokens -= 1.0
            if self.waiting():
                await anyio.sleep(max(interval * (1.0 - tokens), interval / 4))
