"""The verdict of one characterization level: passed, warned, failed or aborted. Pure (no I/O, no clock).

The driver (``_characterize.py``) holds the load and follows the watchdog's beats; every beat goes into
:meth:`LevelVerdict.observe`, and when the load comes off, :meth:`LevelVerdict.outcome` says how the level
ended. The rules, in the order they apply:

1. **failed**: the watchdog declared the device down during the level (``down=True`` with a beat), or the
   device did not settle afterwards (``settled=False``: it died right after the load, so this level did it).
2. **warned** (early warning only): ``consecutive_beats`` healthy beats in a row slower than the limit
   (:meth:`EarlyWarning.limit_s` of the idle baseline); or every healthy beat of the level was slow, just
   fewer of them than required.
3. **aborted**: the time budget cut the dwell short: the level says nothing about the device.
4. **passed**: otherwise.

A beat that started under load (at or after the level's start) is *evidence*: a level without any has not
been seen to survive, so the driver keeps the load on a little longer (:meth:`LevelVerdict.wants_evidence`).
Each such beat also records how many sessions the device held from us (``held_at_beats``: its own count
plus the heartbeat's reserved place, capped at the level).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fragileprobe import _validate
from fragileprobe._profile import LevelOutcome

if TYPE_CHECKING:
    from fragileprobe._heartbeat import Beat

__all__ = ["EarlyWarning", "LevelVerdict"]

# A heartbeat this many times slower than idle is a device that is struggling (the story pump slows to
# about 4x idle before it hangs); 2 in a row, because one slow beat can be the prober's own hiccup.
DEFAULT_LATENCY_FACTOR = 3.0
DEFAULT_CONSECUTIVE_BEATS = 2


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

    latency_factor: float = DEFAULT_LATENCY_FACTOR
    consecutive_beats: int = DEFAULT_CONSECUTIVE_BEATS
    min_latency_s: float = 0.0

    def __post_init__(self) -> None:
        factor = _validate.positive("latency_factor", self.latency_factor)
        if factor <= 1.0:
            raise _validate.fail("latency_factor", "a number > 1", self.latency_factor)
        _validate.positive_int("consecutive_beats", self.consecutive_beats)
        _validate.non_negative("min_latency_s", self.min_latency_s)

    def limit_s(self, baseline_s: float) -> float:
        """The latency above which a beat counts as slow."""
        return max(self.latency_factor * baseline_s, self.min_latency_s)


@dataclass(slots=True, kw_only=True)
class LevelVerdict:
    """What the beats of one level say, gathered beat by beat (see the module's rules).

    Build it with :meth:`for_level`; feed every beat to :meth:`observe`; read :meth:`outcome` at the end.

    Attributes:
        level: Sessions the level holds on the device, the heartbeat's included.
        start_s: When the load went on (beats that started earlier are no evidence).
        reserve: The heartbeat's place in the level (1 when the heartbeat opens a session, else 0).
        slow_limit_s: Latency above which a beat is slow (None: no early warning).
        slow_beats_needed: Slow beats in a row that warn.
        latencies_s: Latencies of the healthy beats, in order.
        held_at_beats: Sessions the device held at each beat under load, the heartbeat's included.
        beats_failed: Beats that failed (the device not yet declared down).
        slow_in_a_row: Slow healthy beats in a row, up to the last one.
        evidence: A healthy beat started under load.
        decided: The outcome the beats forced (failed or warned), once they did; later beats change nothing.
    """

    level: int
    start_s: float
    reserve: int = 0
    slow_limit_s: float | None = None
    slow_beats_needed: int = DEFAULT_CONSECUTIVE_BEATS
    latencies_s: list[float] = field(default_factory=list)
    held_at_beats: list[int] = field(default_factory=list)
    beats_failed: int = 0
    slow_in_a_row: int = 0
    evidence: bool = False
    decided: LevelOutcome | None = None

    @classmethod
    def for_level(
        cls,
        level: int,
        *,
        start_s: float,
        reserve: int = 0,
        early_warning: EarlyWarning | None = None,
        baseline_s: float = 0.0,
    ) -> LevelVerdict:
        """A verdict for ``level``, its early-warning limit taken from the idle ``baseline_s``."""
        if early_warning is None:
            return cls(level=level, start_s=start_s, reserve=reserve)
        return cls(
            level=level,
            start_s=start_s,
            reserve=reserve,
            slow_limit_s=early_warning.limit_s(baseline_s),
            slow_beats_needed=early_warning.consecutive_beats,
        )

    def observe(self, beat: Beat, *, down: bool) -> LevelOutcome | None:
        """Take one beat in; return the outcome it forces (failed, warned), else None.

        Args:
            beat: The heartbeat's result.
            down: The watchdog had declared the device down when the beat came back.
        """
        if self.decided is not None:
            return self.decided
        if down:
            self.decided = LevelOutcome.FAILED
        elif not beat.ok:
            self.beats_failed += 1
        else:
            self._healthy(beat)
        return self.decided

    def _healthy(self, beat: Beat) -> None:
        self.latencies_s.append(beat.latency_s)
        if beat.at_s >= self.start_s:
            self.evidence = True
            if beat.sessions_device is not None:
                self.held_at_beats.append(min(self.level, beat.sessions_device + self.reserve))
        if self.slow_limit_s is None:
            return
        self.slow_in_a_row = self.slow_in_a_row + 1 if beat.latency_s > self.slow_limit_s else 0
        if self.slow_in_a_row >= self.slow_beats_needed:
            self.decided = LevelOutcome.WARNED

    def wants_evidence(self, *, aborted: bool) -> bool:
        """True when the level would pass without a healthy beat under load: keep the load on for one."""
        return not aborted and self.decided is None and not self.evidence

    def outcome(self, *, aborted: bool = False, settled: bool = True) -> LevelOutcome:
        """How the level ended.

        Args:
            aborted: The time budget cut the dwell short.
            settled: The device looked idle again after the load (False: it died right after).
        """
        if not settled:
            return LevelOutcome.FAILED
        if self.decided is not None:
            return self.decided
        if aborted:
            return LevelOutcome.ABORTED
        if self.slow_limit_s is not None and self.latencies_s and self.slow_in_a_row == len(self.latencies_s):
            return LevelOutcome.WARNED  # every beat of the level was slow, just fewer than required
        return LevelOutcome.PASSED
