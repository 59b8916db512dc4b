"""The ramp strategy: which level to test next, when to recover, when to stop. Pure (sans-IO).

The driver (``_characterize.py``) does the I/O; this module only decides. Observations go in through
:meth:`RampStrategy.observe`, the next action comes out of :meth:`RampStrategy.next_action`, which is
side-effect free (call it as often as you like). There is no clock: the driver reports an exhausted time
budget with :class:`OutOfTime`.

States and transitions (anything else raises ``ConfigError``)::

    state        next_action()            observation           -> state
    ---------    ---------------------    -------------------   ------------------------------------------
    TESTING      TestLevel(n)             Passed(n)             TESTING, or TRIAL_END when the plan is done
                                          Warned(n)             TESTING (refine below n), or TRIAL_END
                                          Failed(n)             RECOVERING
    RECOVERING   Recover()                Recovered()           TESTING, or TRIAL_END (plan or budget done)
    TRIAL_END    NextTrial(i)             Proceed()             TESTING (trial i), or DONE after the last
    any but DONE                          OutOfTime()           DONE
    DONE         Done(...)                (none)

Rules of the plan (docs/characterization.md explains why):

1. A trial never tests a level at or above one that failed (crashed or warned) earlier in the same trial,
   and never a level above the ladder's top.
2. First trial (and any trial while no failure is known): climb the ladder's rungs. With only one crash
   left in the trial's budget and ``refine`` on, walk one level at a time instead (a jump could crash
   and leave the levels skipped over untested with no crash left to resolve them).
3. After a failure at F with the trial's last pass G (0 if none), refine inside (G, F): with k >= 2
   crashes left, test the egg-drop point G + D(t-1, k-1) + 1, where t is the fewest tests with
   D(t, k) = sum(C(t, i), i=1..k) >= F - G - 1; with k == 1, walk G+1, G+2, ...; with k == 0 the trial
   ends. A warning (no crash) refines by walking, as it costs no crash.
4. Later trials skip to just below the known boundary: they start at the current safe-ceiling estimate
   (at least 1) and walk up one level at a time to L - 1 (L = lowest level that ever failed), re-testing
   every level the ceiling derivation depends on. A failure on the way refines as in rule 3. If no
   failure is known yet, a later trial re-tests the highest level that passed.
5. The run ends after ``trials`` trials, or at once on OutOfTime. Every trial tests at most
   ``len(ladder) + ladder[-1]`` levels, so the run always terminates.
"""

from __future__ import annotations

import enum
import itertools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fragileprobe import _validate
from fragileprobe._errors import ConfigError
from fragileprobe._profile import (
    DEFAULT_MARGIN_FRACTION,
    CeilingDerivation,
    LevelOutcome,
    check_margin_fraction,
    derive_ceiling,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = [
    "DEFAULT_CRASH_BUDGET",
    "DEFAULT_LADDER",
    "DEFAULT_TRIALS",
    "MAX_LADDER_LEVEL",
    "Action",
    "Done",
    "Failed",
    "NextTrial",
    "Observation",
    "OutOfTime",
    "Passed",
    "Proceed",
    "RampConfig",
    "RampState",
    "RampStrategy",
    "Recover",
    "Recovered",
    "TestLevel",
    "Warned",
    "egg_drop_coverage",
    "validate_ladder",
]

# The project's story ladder: the levels a careful person tries by hand, topped at 50 sessions (more than
# any embedded device we know of survives; a device that passes 50 is not fragile in this sense).
DEFAULT_LADDER: tuple[int, ...] = (1, 2, 5, 7, 10, 15, 20, 30, 50)
DEFAULT_TRIALS = 3
# Two crashes per trial: one to find the first failing rung, one to pin the boundary below it exactly.
DEFAULT_CRASH_BUDGET = 2
# A ladder above this is a load test, not a fragility test; also bounds the walk in rule 4.
MAX_LADDER_LEVEL = 10_000


def validate_ladder(ladder: Sequence[int]) -> tuple[int, ...]:
    """Check that a ladder is a non-empty, strictly climbing sequence of positive integers.

    Raises:
        ConfigError: naming ``ladder`` and what is wrong.
    """
    try:
        levels = tuple(ladder)
    except TypeError as exc:
        raise _validate.fail("ladder", "a sequence of integers", ladder) from exc
    if not levels:
        raise ConfigError("ladder: must not be empty", field="ladder")
    for lv in levels:
        if isinstance(lv, bool) or not isinstance(lv, int):
            raise ConfigError(f"ladder: levels must be integers, got {lv!r}", field="ladder")
        if lv < 1:
            raise ConfigError(f"ladder: levels must be >= 1, got {lv}", field="ladder")
        if lv > MAX_LADDER_LEVEL:
            raise ConfigError(f"ladder: levels must be <= {MAX_LADDER_LEVEL}, got {lv}", field="ladder")
    for a, b in itertools.pairwise(levels):
        if b <= a:
            raise ConfigError(f"ladder: must climb strictly, but {b} follows {a}", field="ladder")
    return levels


def egg_drop_coverage(tests: int, crashes: int) -> int:
    """How many untested levels ``tests`` tests with at most ``crashes`` crashes can resolve.

    This is D(t, k) = sum(C(t, i), i = 1..k): with k crashes and t tests a strategy can tell apart that many
    boundary positions (plus "none of them"), and no strategy can do better.
    """
    if tests <= 0 or crashes <= 0:
        return 0
    return sum(math.comb(tests, i) for i in range(1, min(tests, crashes) + 1))


@dataclass(frozen=True, slots=True, kw_only=True)
class RampConfig:
    """The strategy's settings. Keyword-only; validated at construction (ConfigError names the field).

    Attributes:
        ladder: Levels to climb (strictly increasing positive integers); its last is the maximum tested.
        trials: How many trials (passes up the ramp).
        refine: Whether to test the levels between a failure and the last pass.
        crash_budget: Crashes allowed per trial (each may be a power cycle by hand).
        margin_fraction: Safety margin of the ceiling derivation.
        min_level: The lowest level ever tested (refinement and later trials never go below it). 2 when
            the heartbeat opens a session: level 1 would be the heartbeat alone, which the idle baseline
            measures, while the checks before the ramp already put one probe beside it.
    """

    ladder: tuple[int, ...] = DEFAULT_LADDER
    trials: int = DEFAULT_TRIALS
    refine: bool = True
    crash_budget: int = DEFAULT_CRASH_BUDGET
    margin_fraction: float = DEFAULT_MARGIN_FRACTION
    min_level: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "ladder", validate_ladder(self.ladder))
        for name in ("trials", "crash_budget", "min_level"):
            _validate.positive_int(name, getattr(self, name))
        if not isinstance(self.refine, bool):
            raise _validate.fail("refine", "a bool", self.refine)
        margin = self.margin_fraction
        if _validate.non_negative("margin_fraction", margin) >= 1.0:
            raise _validate.fail("margin_fraction", "a number in [0, 1)", margin)
        object.__setattr__(self, "margin_fraction", check_margin_fraction(margin))
        if self.ladder[0] < self.min_level:
            raise ConfigError(
                f"ladder: its levels start at {self.ladder[0]}, below the lowest level that can be tested "
                f"({self.min_level}: a level counts the heartbeat's session too)",
                field="ladder",
            )

    @property
    def max_level(self) -> int:
        """The highest level ever tested."""
        return self.ladder[-1]

    @property
    def max_tests_per_trial(self) -> int:
        """Upper bound of level tests in one trial (rule 5)."""
        return len(self.ladder) + self.max_level


# --- observations (driver -> strategy) -----------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Passed:
    """The device stayed alive (and fast enough) through the whole dwell at ``level``."""

    level: int


@dataclass(frozen=True, slots=True)
class Failed:
    """The watchdog declared the device down during ``level``: a crash."""

    level: int


@dataclass(frozen=True, slots=True)
class Warned:
    """Heartbeat latency passed the early-warning limit at ``level``; the device is still up."""

    level: int


@dataclass(frozen=True, slots=True)
class Recovered:
    """The recovery hook ran and the device answered its healthy beats again."""


@dataclass(frozen=True, slots=True)
class Proceed:
    """The driver has recorded the finished trial; go on."""


@dataclass(frozen=True, slots=True)
class OutOfTime:
    """The time budget is exhausted: stop now."""


Observation = Passed | Failed | Warned | Recovered | Proceed | OutOfTime


# --- actions (strategy -> driver) ------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class TestLevel:
    """Keep ``level`` sessions in flight for the dwell, then report Passed, Warned or Failed."""

    __test__ = False  # not a pytest test class, whatever its name says
    level: int
    trial: int


@dataclass(frozen=True, slots=True)
class Recover:
    """The device crashed: run the recovery hook, wait for healthy beats, then report Recovered."""

    trial: int
    level: int


@dataclass(frozen=True, slots=True)
class NextTrial:
    """Trial ``finished`` is over (record it); report Proceed to start trial ``finished + 1``."""

    finished: int


@dataclass(frozen=True, slots=True)
class Done:
    """The run is over.

    Attributes:
        reason: ``complete`` (every trial ran) or ``time_budget``.
        trials: Per trial, ``(level, outcome)`` in the order tested.
        derivation: The ceiling derived from ``trials``.
    """

    reason: str
    trials: tuple[tuple[tuple[int, LevelOutcome], ...], ...]
    derivation: CeilingDerivation


Action = TestLevel | Recover | NextTrial | Done


class RampState(enum.Enum):
    """Where the strategy is (see the table at the top of the module)."""

    TESTING = "testing"
    RECOVERING = "recovering"
    TRIAL_END = "trial_end"
    DONE = "done"


class RampStrategy:
    """The ramp's state machine.

    Args:
        config: The plan's settings.
        previous_trials: Outcomes of trials already finished (a resumed run); the strategy continues
            with the next trial as if it had run them itself.

    Raises:
        ConfigError: ``previous_trials`` has more trials than the config allows, or levels off the plan
            (above the ladder's top or below 1).
    """

    def __init__(
        self,
        config: RampConfig,
        *,
        previous_trials: Sequence[Sequence[tuple[int, LevelOutcome]]] = (),
    ) -> None:
        self.config = config
        self._trials: list[list[tuple[int, LevelOutcome]]] = []
        for trial in previous_trials:
            outcomes = [(int(lv), LevelOutcome(oc)) for lv, oc in trial]
            for lv, _ in outcomes:
                if not 1 <= lv <= config.max_level:
                    raise ConfigError(f"previous_trials: level {lv} is outside 1..{config.max_level}")
            self._trials.append(outcomes)
        if len(self._trials) > config.trials:
            raise ConfigError(
                f"previous_trials: {len(self._trials)} trials, but only {config.trials} planned"
            )
        self._reason = "complete"
        if len(self._trials) >= config.trials:
            self.state = RampState.DONE
            self._current: list[tuple[int, LevelOutcome]] = []
            self._level: int | None = None
            return
        self._start_trial()

    # --- public --------------------------------------------------------------------------------------
    @property
    def trial(self) -> int:
        """Index of the current trial (0-based); equals ``config.trials`` once every trial ran."""
        return len(self._trials)

    @property
    def current_outcomes(self) -> tuple[tuple[int, LevelOutcome], ...]:
        """Outcomes observed so far in the current trial."""
        return tuple(self._current)

    @property
    def finished_trials(self) -> tuple[tuple[tuple[int, LevelOutcome], ...], ...]:
        """Outcomes of every finished trial."""
        return tuple(tuple(t) for t in self._trials)

    def derivation(self) -> CeilingDerivation:
        """The ceiling derived from everything observed so far (current trial included)."""
        return derive_ceiling([*self._trials, self._current], margin_fraction=self.config.margin_fraction)

    def next_action(self) -> Action:
        """What the driver should do now. Side-effect free."""
        if self.state is RampState.TESTING:
            assert self._level is not None  # invariant: TESTING always has a planned level
            return TestLevel(self._level, self.trial)
        if self.state is RampState.RECOVERING:
            return Recover(self.trial, self._current[-1][0])
        if self.state is RampState.TRIAL_END:
            return NextTrial(self.trial)
        trials = tuple(tuple(t) for t in self._trials)
        if self._current:  # a trial cut short by the time budget still counts for the derivation
            trials = (*trials, tuple(self._current))
        return Done(self._reason, trials, derive_ceiling(trials, margin_fraction=self.config.margin_fraction))

    def observe(self, obs: Observation) -> None:
        """Feed one observation in.

        Raises:
            ConfigError: The observation is not allowed in the current state (see the module's table).
        """
        if isinstance(obs, OutOfTime):
            if self.state is RampState.DONE:
                raise self._bad(obs)
            self._reason = "time_budget"
            self.state = RampState.DONE
            return
        if self.state is RampState.TESTING and isinstance(obs, Passed | Failed | Warned):
            if obs.level != self._level:
                raise ConfigError(
                    f"observation {obs!r} is for level {obs.level}, but level {self._level} is under test"
                )
            if isinstance(obs, Passed):
                self._current.append((obs.level, LevelOutcome.PASSED))
                self._plan()
            elif isinstance(obs, Warned):
                self._current.append((obs.level, LevelOutcome.WARNED))
                self._plan()
            else:
                self._current.append((obs.level, LevelOutcome.FAILED))
                self.state = RampState.RECOVERING
            return
        if self.state is RampState.RECOVERING and isinstance(obs, Recovered):
            self._plan()
            return
        if self.state is RampState.TRIAL_END and isinstance(obs, Proceed):
            self._trials.append(self._current)
            if len(self._trials) >= self.config.trials:
                self._current = []
                self.state = RampState.DONE
            else:
                self._start_trial()
            return
        raise self._bad(obs)

    # --- planning ------------------------------------------------------------------------------------
    def _bad(self, obs: Observation) -> ConfigError:
        return ConfigError(f"observation {type(obs).__name__} is not allowed in state {self.state.value}")

    def _start_trial(self) -> None:
        self._current = []
        self._level = None
        self.state = RampState.TESTING
        self._plan()

    def _plan(self) -> None:
        """Choose the next level of the current trial, or end the trial (sets state and level)."""
        level = self._choose()
        if level is None or len(self._current) >= self.config.max_tests_per_trial:
            self._level = None
            self.state = RampState.TRIAL_END
        else:
            self._level = level
            self.state = RampState.TESTING

    def _global_limit(self) -> int | None:
        limits = [
            lv for t in self._trials for lv, oc in t if oc in (LevelOutcome.FAILED, LevelOutcome.WARNED)
        ]
        return min(limits) if limits else None

    def _choose(self) -> int | None:
        """The next level of the current trial by rules 2-4, or None when the trial is over."""
        current = self._current
        bad = [lv for lv, oc in current if oc in (LevelOutcome.FAILED, LevelOutcome.WARNED)]
        hi = min(bad) if bad else None  # lowest failure of this trial: never test at or above it
        passes = [lv for lv, oc in current if oc is LevelOutcome.PASSED and (hi is None or lv < hi)]
        lo = max(passes) if passes else self.config.min_level - 1
        crashes_left = self.config.crash_budget - sum(1 for _, oc in current if oc is LevelOutcome.FAILED)
        if hi is not None:
            return self._refine(lo, hi, crashes_left)
        limit = self._global_limit()
        if self._trials and limit is not None:
            return self._below_known_limit(lo, limit)
        if self._trials and not current:
            # Rule 4, no failure known: re-test the highest level that passed in an earlier trial.
            passed = [lv for t in self._trials for lv, oc in t if oc is LevelOutcome.PASSED]
            if passed:
                return max(passed)
        return self._climb(lo, crashes_left)

    def _refine(self, lo: int, hi: int, crashes_left: int) -> int | None:
        """Rule 3: the next level inside (lo, hi) after this trial's failure at hi."""
        current = self._current
        if not self.config.refine or hi - lo <= 1 or crashes_left <= 0:
            return None
        tested = {lv for lv, _ in current}
        last_was_crash = current[-1][1] is LevelOutcome.FAILED
        if not last_was_crash and any(oc is LevelOutcome.WARNED for _, oc in current):
            # A warning costs no crash: walk, so a slowing device is never pushed past its warning.
            return _first_untested(lo + 1, hi, tested)
        return _refine_point(lo, hi, crashes_left, tested)

    def _below_known_limit(self, lo: int, limit: int) -> int | None:
        """Rule 4: start at the current safe estimate, walk up to ``limit - 1``."""
        cfg = self.config
        top = min(limit - 1, cfg.max_level)
        if top < cfg.min_level:
            return None
        if not self._current:
            estimate = self.derivation().safe_ceiling or cfg.min_level
            return max(cfg.min_level, min(estimate, top))
        if lo >= top:
            return None
        if cfg.refine:
            return lo + 1
        rungs = [r for r in cfg.ladder if lo < r <= top]
        return rungs[0] if rungs else None

    def _climb(self, lo: int, crashes_left: int) -> int | None:
        """Rule 2: the next rung above ``lo`` (one level at a time with only one crash left)."""
        cfg = self.config
        if lo >= cfg.max_level:
            return None
        if cfg.refine and crashes_left <= 1:
            return lo + 1
        rungs = [r for r in cfg.ladder if r > lo]
        return rungs[0] if rungs else None


def _first_untested(start: int, stop: int, tested: set[int]) -> int | None:
    for lv in range(start, stop):
        if lv not in tested:
            return lv
    return None


def _refine_point(lo: int, hi: int, crashes_left: int, tested: set[int]) -> int | None:
    """The egg-drop test point inside (lo, hi) with ``crashes_left`` crashes (rule 3)."""
    untested = hi - lo - 1
    if untested <= 0:
        return None
    t = 1
    while egg_drop_coverage(t, crashes_left) < untested:
        t += 1
    point = lo + egg_drop_coverage(t - 1, crashes_left - 1) + 1
    point = min(point, hi - 1)
    if point in tested:  # cannot happen with a consistent history; stay safe and walk instead
        return _first_untested(lo + 1, hi, tested)
    return point
