"""The pure fragility model of an emulated device: no sockets, no clock (time is passed in).

A fragile embedded device is modelled by a handful of rules, all in this module so they can be tested
exhaustively with hypothesis:

* **Crash threshold.** At every boot the device draws a crash threshold ``T`` from a seeded
  :class:`random.Random`: a *uniform integer in* ``[max(1, base - jitter), base + jitter]`` (both ends
  included). ``base = None`` means the device never hangs (``T`` is ``None``).
* **Hang.** The device hangs the moment it holds ``T`` concurrent sessions, counted across *all* its
  services from accept to close. A heartbeat is a session like any other: the device cannot tell a
  monitoring request from a probe. A prober holding ``n`` sessions plus one heartbeat is therefore safe
  exactly when ``n + 1 < T``.
* **Slowdown.** Every response is delayed by ``response_delay_s(sessions)``: a base latency, plus a linear
  slowdown per concurrent session beyond the first, plus (for models with a knee) a steep extra term
  ``knee_slowdown_s * (sessions - knee_sessions) ** knee_exponent`` once the load passes the knee.
* **Connect rate** (optional, off by default). With ``max_connects_per_s`` set, more than that many
  connection attempts inside any one-second window hang the device.
* **Wedge.** An external detector (the SYN-scan watcher) can wedge the device: every service except a set
  of spared ports stops answering. A wedge is a hang that spares some ports; a power cycle clears both.
* **Power cycle.** Off (every session dropped, nothing listens), then booting, then up with a freshly drawn
  threshold. Counters in :class:`FragilityCounters` survive power cycles; they describe the device's life.

State transitions (``on_*`` methods)::

    UP      --session opened, sessions >= T-->        HUNG
    UP      --connect rate above max-->               HUNG
    UP      --wedge(spared)-->                        HUNG (spared ports keep answering)
    HUNG    --(spared port) session reaches T-->      HUNG (no port spared any more)
    any     --power_off-->                            BOOTING (the device I/O layer closes its listeners)
    BOOTING --boot-->                                 UP (new threshold)
"""

from __future__ import annotations

import enum
import math
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fragileprobe._errors import ConfigError

if TYPE_CHECKING:
    import random
    from collections.abc import Collection

__all__ = [
    "CONNECT_HISTORY_MAX",
    "ConnectVerdict",
    "DeviceState",
    "FragilityCounters",
    "FragilityModel",
    "FragilitySpec",
    "draw_threshold",
    "threshold_bounds",
]

# How many connection-attempt timestamps a device remembers for connects_since(). 4,096 floats is about
# 100 KiB at worst per device, and covers several seconds of an aggressive scan; older attempts are
# forgotten (connects_since then answers a lower bound, see FragilityModel.connects_since).
CONNECT_HISTORY_MAX = 4096

# Window of the connect-rate fragility, in seconds: "more than N connects per second".
_RATE_WINDOW_S = 1.0


class DeviceState(enum.Enum):
    """What an emulated device is doing right now."""

    UP = "up"
    HUNG = "hung"
    BOOTING = "booting"
    OFF = "off"


class ConnectVerdict(enum.Enum):
    """What the device does with a connection it has just accepted."""

    SERVE = "serve"  # the device answers it
    STALL = "stall"  # the device is hung (or this port is wedged): accepted by the kernel, never served


def _check_number(name: str, value: float, *, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{name}: must be a number, got {value!r}")
    if not math.isfinite(value) or value < minimum:
        raise ConfigError(f"{name}: must be a finite number >= {minimum}, got {value!r}")
    return float(value)


def _check_int(name: str, value: int, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name}: must be an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{name}: must be >= {minimum}, got {value!r}")
    return value


@dataclass(frozen=True, slots=True, kw_only=True)
class FragilitySpec:
    """How fragile a device model is. Keyword-only; validated at construction.

    Attributes:
        threshold: Base of the crash threshold (``>= 1``), or ``None`` for a device that never hangs.
        jitter: Half-width of the threshold distribution: ``T`` is uniform in
            ``[max(1, threshold - jitter), threshold + jitter]``.
        base_latency_s: Delay before every response with one session open.
        slowdown_s_per_session: Extra delay per concurrent session beyond the first.
        knee_sessions: Load (sessions) above which the steep slowdown term starts; ``None`` for none.
        knee_slowdown_s: Scale of the steep term.
        knee_exponent: Exponent of the steep term (``>= 1``).
        max_connects_per_s: Connection attempts per one-second window that hang the device; ``None``
            (default) disables this fragility.
        syn_sensitive: Whether half-open (SYN) scans wedge the device (acted on by the SYN watcher).
        syn_spared_ports: Model ports that keep answering when a SYN scan wedges the device.
    """

    threshold: int | None = None
    jitter: int = 0
    base_latency_s: float = 0.002
    slowdown_s_per_session: float = 0.0
    knee_sessions: int | None = None
    knee_slowdown_s: float = 0.0
    knee_exponent: float = 2.0
    max_connects_per_s: float | None = None
    syn_sensitive: bool = False
    syn_spared_ports: frozenset[int] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        if self.threshold is not None:
            _check_int("threshold", self.threshold, minimum=1)
        _check_int("jitter", self.jitter, minimum=0)
        _check_number("base_latency_s", self.base_latency_s)
        _check_number("slowdown_s_per_session", self.slowdown_s_per_session)
        if self.knee_sessions is not None:
            _check_int("knee_sessions", self.knee_sessions, minimum=0)
        _check_number("knee_slowdown_s", self.knee_slowdown_s)
        _check_number("knee_exponent", self.knee_exponent, minimum=1.0)
        if self.max_connects_per_s is not None:
            _check_number("max_connects_per_s", self.max_connects_per_s, minimum=1.0)
        if not isinstance(self.syn_sensitive, bool):
            raise ConfigError(f"syn_sensitive: must be a bool, got {self.syn_sensitive!r}")
        object.__setattr__(self, "syn_spared_ports", frozenset(self.syn_spared_ports))
        for port in self.syn_spared_ports:
            _check_int("syn_spared_ports", port, minimum=1)
            if port > 65535:
                raise ConfigError(f"syn_spared_ports: port {port} out of range 1-65535")

    def response_delay_s(self, sessions: int) -> float:
        """Delay before a response when the device holds ``sessions`` concurrent sessions.

        Monotonically non-decreasing in ``sessions``; equal to ``base_latency_s`` at one session.
        """
        extra = max(0, sessions - 1)
        delay = self.base_latency_s + self.slowdown_s_per_session * extra
        if self.knee_sessions is not None and sessions > self.knee_sessions:
            delay += self.knee_slowdown_s * float(sessions - self.knee_sessions) ** self.knee_exponent
        return delay


def threshold_bounds(spec: FragilitySpec) -> tuple[int, int] | None:
    """Return the inclusive ``(low, high)`` range the crash threshold is drawn from, or ``None``."""
    if spec.threshold is None:
        return None
    return max(1, spec.threshold - spec.jitter), spec.threshold + spec.jitter


def draw_threshold(spec: FragilitySpec, rng: random.Random) -> int | None:
    """Draw one boot's crash threshold: uniform integer in :func:`threshold_bounds`, or ``None``."""
    bounds = threshold_bounds(spec)
    if bounds is None:
        return None
    return rng.randint(*bounds)


@dataclass(slots=True)
class FragilityCounters:
    """Life-long counters of one device (they survive power cycles)."""

    peak_sessions: int = 0  # highest concurrent sessions held while up (at most T)
    sessions_served: int = 0  # sessions accepted and served (not stalled)
    connects_total: int = 0  # every connection accepted, up or hung
    crashes: int = 0  # transitions to HUNG (threshold, rate or wedge)
    attempts_while_hung: int = 0  # connections accepted while hung and never served
    power_cycles: int = 0


class FragilityModel:
    """The state machine of one device's fragility. Pure: every time is passed in by the caller.

    Args:
        spec: The model's fragility.
        rng: Source of the per-boot threshold draws (seed it for reproducible runs).
    """

    def __init__(self, spec: FragilitySpec, rng: random.Random) -> None:
        self.spec = spec
        self._rng = rng
        self.state = DeviceState.OFF
        self.threshold: int | None = None
        self.sessions = 0
        self.hang_reason: str | None = None
        # Ports that keep answering while HUNG (a wedge); empty for a full hang.
        self.spared_ports: frozenset[int] = frozenset()
        self.counters = FragilityCounters()
        self._connect_times: deque[float] = deque(maxlen=CONNECT_HISTORY_MAX)
        # Recent attempts, for the rate fragility (at most max_connects_per_s + 1 entries are kept).
        self._rate_times: deque[float] = deque()

    # --- power -----------------------------------------------------------------------------------------
    def boot(self) -> int | None:
        """Come up with a freshly drawn threshold (from OFF or BOOTING); return the threshold."""
        self.threshold = draw_threshold(self.spec, self._rng)
        self.state = DeviceState.UP
        self.sessions = 0
        self.hang_reason = None
        self.spared_ports = frozenset()
        self._rate_times.clear()
        return self.threshold

    def power_off(self) -> None:
        """Cut the power: every session is gone; the device is BOOTING until :meth:`boot`."""
        if self.state is not DeviceState.OFF:
            self.counters.power_cycles += 1
        self.state = DeviceState.BOOTING
        self.sessions = 0
        self.spared_ports = frozenset()

    def shutdown(self) -> None:
        """Switch off for good (the emulator is closing)."""
        self.state = DeviceState.OFF
        self.sessions = 0

    # --- hangs -----------------------------------------------------------------------------------------
    def hang(self, reason: str) -> bool:
        """Hang completely (nothing spared). Return True if this call changed the device's state."""
        if self.state is DeviceState.HUNG and not self.spared_ports:
            return False
        if self.state not in (DeviceState.UP, DeviceState.HUNG):
            return False
        if self.state is DeviceState.UP:
            self.counters.crashes += 1
        self.state = DeviceState.HUNG
        self.spared_ports = frozenset()
        self.hang_reason = reason
        return True

    def wedge(self, spared_ports: Collection[int], reason: str = "wedged") -> bool:
        """Stop every service except ``spared_ports``. Return True if the state changed."""
        if self.state is not DeviceState.UP:
            return False
        self.counters.crashes += 1
        self.state = DeviceState.HUNG
        self.spared_ports = frozenset(spared_ports)
        self.hang_reason = reason
        return True

    def answers(self, port: int) -> bool:
        """Whether a service on model port ``port`` answers in the current state."""
        if self.state is DeviceState.UP:
            return True
        return self.state is DeviceState.HUNG and port in self.spared_ports

    # --- sessions --------------------------------------------------------------------------------------
    def on_connect(self, port: int, now_s: float) -> ConnectVerdict:
        """A connection to model port ``port`` was accepted at ``now_s``: serve it or stall it.

        The new session counts towards the load whatever the verdict; the caller must call
        :meth:`on_close` exactly once for it. The session that brings the load to ``T`` is the one
        that hangs the device, so it is stalled too.
        """
        self.counters.connects_total += 1
        self._connect_times.append(now_s)
        self.sessions += 1
        if not self.answers(port):
            self.counters.attempts_while_hung += 1
            return ConnectVerdict.STALL
        if self._rate_exceeded(now_s):
            self.hang("connect_rate")
            self.counters.attempts_while_hung += 1
            return ConnectVerdict.STALL
        if self.state is DeviceState.UP:
            self.counters.peak_sessions = max(self.counters.peak_sessions, self.sessions)
        if self.threshold is not None and self.sessions >= self.threshold:
            self.hang("threshold")
            self.counters.attempts_while_hung += 1
            return ConnectVerdict.STALL
        self.counters.sessions_served += 1
        return ConnectVerdict.SERVE

    def on_close(self) -> None:
        """A session ended (either side closed it)."""
        if self.sessions > 0:
            self.sessions -= 1

    def _rate_exceeded(self, now_s: float) -> bool:
        limit = self.spec.max_connects_per_s
        if limit is None or self.state is not DeviceState.UP:
            return False
        times = self._rate_times
        times.append(now_s)
        while times and times[0] <= now_s - _RATE_WINDOW_S:
            times.popleft()
        # Keep the deque bounded even if the clock never moves (all attempts at one instant).
        while len(times) > limit + 1:
            times.popleft()
        return len(times) > limit

    def response_delay_s(self) -> float:
        """Delay before the next response at the current load."""
        return self.spec.response_delay_s(self.sessions)

    def connects_since(self, t_s: float) -> int:
        """Connection attempts accepted at or after ``t_s``.

        Exact while fewer than :data:`CONNECT_HISTORY_MAX` attempts have happened since ``t_s``; beyond
        that the oldest attempts are forgotten and the answer is a lower bound.
        """
        times = self._connect_times
        # Timestamps are appended in non-decreasing order: count from the right.
        count = 0
        for stamp in reversed(times):
            if stamp < t_s:
                break
            count += 1
        return count
