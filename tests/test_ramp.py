"""The pure ramp strategy: safety properties under any observations, exact boundaries, termination."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fragileprobe._errors import ConfigError
from fragileprobe._profile import LevelOutcome, derive_ceiling
from fragileprobe._ramp import (
    DEFAULT_LADDER,
    Done,
    Failed,
    NextTrial,
    OutOfTime,
    Passed,
    Proceed,
    RampConfig,
    RampState,
    RampStrategy,
    Recover,
    Recovered,
    TestLevel,
    Warned,
    egg_drop_coverage,
    validate_ladder,
)

ladders = st.lists(st.integers(1, 40), min_size=1, max_size=8, unique=True).map(lambda xs: tuple(sorted(xs)))
configs = st.builds(
    RampConfig,
    ladder=ladders,
    trials=st.integers(1, 4),
    refine=st.booleans(),
    crash_budget=st.integers(1, 4),
    margin_fraction=st.sampled_from([0.0, 0.15, 0.25, 0.5]),
)


def drive(
    strategy: RampStrategy, outcome_for: object, *, step_limit: int = 100_000
) -> tuple[Done, list[list]]:
    """Run a strategy to the end; ``outcome_for(trial, level)`` answers each TestLevel."""
    trials: list[list[tuple[int, LevelOutcome]]] = [[]]
    for _ in range(step_limit):
        action = strategy.next_action()
        assert strategy.next_action() == action  # next_action has no side effect
        if isinstance(action, Done):
            return action, trials
        if isinstance(action, TestLevel):
            oc = outcome_for(action.trial, action.level)  # type: ignore[operator]
            if oc is None:
                strategy.observe(OutOfTime())
                continue
            trials[-1].append((action.level, oc))
            obs = {LevelOutcome.PASSED: Passed, LevelOutcome.FAILED: Failed, LevelOutcome.WARNED: Warned}[oc]
            strategy.observe(obs(action.level))
        elif isinstance(action, Recover):
            assert trials[-1][-1][1] is LevelOutcome.FAILED  # recover only right after a crash
            strategy.observe(Recovered())
        elif isinstance(action, NextTrial):
            trials.append([])
            strategy.observe(Proceed())
    raise AssertionError("strategy did not terminate")


@settings(max_examples=300, deadline=None)
@given(config=configs, data=st.data())
def test_safety_properties_under_arbitrary_observations(config: RampConfig, data: st.DataObject) -> None:
    """Whatever the device does: no level at/above a same-trial failure, none above the ladder's top,
    no level twice in a trial, crashes per trial within budget, termination, and a consistent result."""
    seen: dict[int, list[tuple[int, LevelOutcome]]] = {}

    def outcome(trial: int, level: int) -> LevelOutcome | None:
        earlier = seen.setdefault(trial, [])
        bad = [lv for lv, oc in earlier if oc in (LevelOutcome.FAILED, LevelOutcome.WARNED)]
        assert all(level < b for b in bad), (level, earlier)
        assert 1 <= level <= config.max_level
        assert level not in {lv for lv, _ in earlier}
        oc = data.draw(
            st.sampled_from([LevelOutcome.PASSED, LevelOutcome.FAILED, LevelOutcome.WARNED, None])
            if data.draw(st.integers(0, 30)) == 0
            else st.sampled_from([LevelOutcome.PASSED, LevelOutcome.FAILED, LevelOutcome.WARNED])
        )
        if oc is not None:
            earlier.append((level, oc))
        return oc

    strategy = RampStrategy(config)
    bound = config.trials * (2 * config.max_tests_per_trial + 2) + 2
    done, trials = drive(strategy, outcome, step_limit=bound)
    observed = [t for t in trials if t]
    assert [list(t) for t in done.trials if t] == observed
    for t in done.trials:
        assert sum(1 for _, oc in t if oc is LevelOutcome.FAILED) <= config.crash_budget
    assert done.derivation == derive_ceiling(done.trials, margin_fraction=config.margin_fraction)
    failures = [lv for t in done.trials for lv, oc in t if oc is not LevelOutcome.PASSED]
    if done.derivation.safe_ceiling is not None:
        assert all(done.derivation.safe_ceiling < f for f in failures)
    assert strategy.state is RampState.DONE


@settings(max_examples=300, deadline=None)
@given(
    config=configs.filter(lambda c: c.refine),
    thresholds=st.lists(st.integers(1, 60), min_size=4, max_size=4),
)
def test_first_trial_pins_the_boundary_exactly(config: RampConfig, thresholds: list[int]) -> None:
    """Against a device that fails at every level >= c (c per trial), with refinement on, the first trial
    finds c exactly (c - 1 passed, c failed) whenever c is within the ladder."""

    def outcome(trial: int, level: int) -> LevelOutcome:
        return LevelOutcome.FAILED if level >= thresholds[trial] else LevelOutcome.PASSED

    done, _ = drive(RampStrategy(config), outcome)
    first = dict(done.trials[0])
    c = thresholds[0]
    if c <= config.max_level:
        assert first.get(c) is LevelOutcome.FAILED
        assert c == 1 or first.get(c - 1) is LevelOutcome.PASSED
    else:
        assert first.get(config.max_level) is LevelOutcome.PASSED
        assert not any(oc is LevelOutcome.FAILED for oc in first.values())
    safe = done.derivation.safe_ceiling
    assert safe is not None
    crashed = [lv for t in done.trials for lv, oc in t if oc is LevelOutcome.FAILED]
    assert all(safe < lv for lv in crashed)
    if c <= config.max_level:  # the first trial alone proves c fails, so the ceiling stays below it
        assert safe < c


def test_story_pump_walk_and_later_trials_skip_to_the_boundary() -> None:
    """Default plan against a device failing at 7: climb 1,2,5,7, refine to 6; later trials start at
    the estimate (4: three levels below 7) and re-test up to L - 1 with no crash."""
    done, trials = drive(
        RampStrategy(RampConfig()), lambda t, lv: LevelOutcome.FAILED if lv >= 7 else LevelOutcome.PASSED
    )
    assert [lv for lv, _ in trials[0]] == [1, 2, 5, 7, 6]
    assert [lv for lv, _ in trials[1]] == [4, 5, 6]
    assert [lv for lv, _ in trials[2]] == [4, 5, 6]
    assert done.derivation.failed_at == 7
    assert done.derivation.safe_ceiling == 4
    assert done.reason == "complete"


def test_one_crash_budget_walks_one_level_at_a_time() -> None:
    """With a single crash allowed per trial the climb is a walk (the only exact plan with one crash)."""
    cfg = RampConfig(ladder=(1, 5, 10), crash_budget=1, trials=1)
    _, trials = drive(
        RampStrategy(cfg), lambda t, lv: LevelOutcome.FAILED if lv >= 4 else LevelOutcome.PASSED
    )
    assert [lv for lv, _ in trials[0]] == [1, 2, 3, 4]


def test_refinement_uses_the_egg_drop_point_with_two_crashes_left() -> None:
    """After 50 fails above a pass at 30 with 2 crashes left, the next level is the egg-drop point 36."""
    cfg = RampConfig(crash_budget=3, trials=1)
    _, trials = drive(
        RampStrategy(cfg), lambda t, lv: LevelOutcome.FAILED if lv >= 40 else LevelOutcome.PASSED
    )
    levels = [lv for lv, _ in trials[0]]
    assert levels[:9] == [1, 2, 5, 7, 10, 15, 20, 30, 50]
    assert levels[9] == 36
    assert dict(trials[0])[40] is LevelOutcome.FAILED
    assert dict(trials[0])[39] is LevelOutcome.PASSED


def test_sturdy_device_reports_no_ceiling_found() -> None:
    """A device that never fails: the ladder is climbed to its top, later trials re-test the top only."""
    done, trials = drive(RampStrategy(RampConfig(ladder=(1, 2, 4))), lambda t, lv: LevelOutcome.PASSED)
    assert [lv for lv, _ in trials[0]] == [1, 2, 4]
    assert [lv for lv, _ in trials[1]] == [4]
    assert not done.derivation.ceiling_found
    assert done.derivation.failed_at is None
    assert done.derivation.highest_passed == 4
    assert done.derivation.safe_ceiling == 2  # the margin stays below H + 1 = 5 (3 levels)


def test_warning_stops_climbing_without_a_crash() -> None:
    """An early warning ends the climb and refines by walking; no Recover is ever asked for."""
    cfg = RampConfig(trials=2)
    done, trials = drive(
        RampStrategy(cfg), lambda t, lv: LevelOutcome.WARNED if lv >= 6 else LevelOutcome.PASSED
    )
    assert [lv for lv, _ in trials[0]] == [1, 2, 5, 7, 6]
    assert done.derivation.warned_at == 6
    assert done.derivation.failed_at is None
    assert done.derivation.safe_ceiling == 3  # three levels below the warning at 6


def test_out_of_time_ends_the_run_at_once() -> None:
    """OutOfTime in the middle of a level: Done(time_budget) with what was observed so far."""
    s = RampStrategy(RampConfig())
    s.observe(Passed(1))
    s.observe(OutOfTime())
    done = s.next_action()
    assert isinstance(done, Done)
    assert done.reason == "time_budget"
    assert done.trials == (((1, LevelOutcome.PASSED),),)


def test_observations_out_of_order_are_refused() -> None:
    """The state machine refuses an observation its state does not allow, naming the state."""
    s = RampStrategy(RampConfig())
    with pytest.raises(ConfigError, match="testing"):
        s.observe(Recovered())
    with pytest.raises(ConfigError, match="level 1"):
        s.observe(Passed(2))
    s.observe(Failed(1))
    with pytest.raises(ConfigError, match="recovering"):
        s.observe(Passed(1))


def test_resume_continues_with_the_next_trial() -> None:
    """A strategy built from finished trials starts the next one as if it had run them."""
    first = (
        (1, LevelOutcome.PASSED),
        (2, LevelOutcome.PASSED),
        (5, LevelOutcome.PASSED),
        (7, LevelOutcome.FAILED),
        (6, LevelOutcome.PASSED),
    )
    s = RampStrategy(RampConfig(), previous_trials=[first])
    assert s.trial == 1
    assert s.next_action() == TestLevel(4, 1)
    done = RampStrategy(RampConfig(trials=1), previous_trials=[first]).next_action()
    assert isinstance(done, Done)
    assert done.derivation.safe_ceiling == 4


@pytest.mark.parametrize(
    ("ladder", "message"),
    [((), "empty"), ((1, 1), "climb"), ((3, 2), "climb"), ((0, 1), ">= 1"), ((1, 2.5), "integers")],
)
def test_bad_ladders_are_refused(ladder: tuple, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validate_ladder(ladder)


@pytest.mark.parametrize("field", ["trials", "crash_budget"])
def test_bad_counts_are_refused_naming_the_field(field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        RampConfig(**{field: 0})


def test_egg_drop_coverage_matches_the_published_bound() -> None:
    """sum(C(t, i), i=1..k): 11 tests with 2 crashes cover 66 levels, 8 with 3 cover 92, k=1 is t."""
    assert egg_drop_coverage(11, 2) == 66
    assert egg_drop_coverage(8, 3) == 92
    assert egg_drop_coverage(7, 1) == 7
    assert egg_drop_coverage(0, 3) == 0
    assert DEFAULT_LADDER[-1] == 50


@settings(max_examples=200, deadline=None)
@given(
    config=st.builds(
        RampConfig,
        ladder=ladders.filter(lambda lad: lad[0] >= 2),
        trials=st.integers(1, 4),
        refine=st.booleans(),
        crash_budget=st.integers(1, 4),
        min_level=st.just(2),
    ),
    data=st.data(),
)
def test_no_level_below_min_level_is_ever_tested(config: RampConfig, data: st.DataObject) -> None:
    """With a session heartbeat a level counts it: level 1 would hold the heartbeat alone, so refinement
    and later trials never go below ``min_level``, whatever the device does."""

    def outcome(trial: int, level: int) -> LevelOutcome:
        assert level >= config.min_level, (level, config)
        return data.draw(st.sampled_from([LevelOutcome.PASSED, LevelOutcome.FAILED, LevelOutcome.WARNED]))

    drive(RampStrategy(config), outcome)


def test_a_ladder_below_min_level_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"ladder: its levels start at 1, below .* \(2"):
        RampConfig(ladder=(1, 2, 5), min_level=2)
