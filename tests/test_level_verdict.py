"""The level verdict (``_level_verdict.LevelVerdict``): pass, warn, fail or abort of one level from its beats.

Pure: beats are records, times are numbers; no sockets, no clock.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fragileprobe._errors import ConfigError
from fragileprobe._heartbeat import Beat
from fragileprobe._level_verdict import EarlyWarning, LevelVerdict
from fragileprobe._profile import LevelOutcome

P, W, F, A = LevelOutcome.PASSED, LevelOutcome.WARNED, LevelOutcome.FAILED, LevelOutcome.ABORTED
START = 10.0
BASELINE = 0.01  # idle latency: with factor 3 a beat above 0.03 s is slow
EW = EarlyWarning(latency_factor=3.0, consecutive_beats=2)


def ok(latency_s: float = 0.005, *, at_s: float = START, held: int | None = None) -> tuple[Beat, bool]:
    return Beat(at_s=at_s, ok=True, latency_s=latency_s, sessions_device=held), False


def bad(*, down: bool = False) -> tuple[Beat, bool]:
    return Beat(at_s=START, ok=False, latency_s=0.25, error="timed out"), down


def _judge(
    beats: list[tuple[Beat, bool]],
    *,
    early_warning: EarlyWarning | None = None,
    level: int = 5,
    reserve: int = 1,
) -> LevelVerdict:
    verdict = LevelVerdict.for_level(
        level, start_s=START, reserve=reserve, early_warning=early_warning, baseline_s=BASELINE
    )
    for beat, down in beats:
        verdict.observe(beat, down=down)
    return verdict


SLOW = 0.05
# (name, beats, early warning, aborted, settled, outcome)
TABLE = [
    ("healthy beats pass", [ok(), ok(), ok()], None, False, True, P),
    ("no beat at all still passes (the driver waits for evidence)", [], None, False, True, P),
    ("a failed beat alone is not a failure", [ok(), bad(), ok()], None, False, True, P),
    ("the watchdog declaring down fails", [ok(), bad(down=True)], None, False, True, F),
    ("down beats a later healthy beat", [bad(down=True), ok(), ok()], None, False, True, F),
    ("not settled after the load fails", [ok(), ok()], None, False, False, F),
    ("time budget aborts", [ok()], None, True, True, A),
    ("down during an aborted dwell still fails", [bad(down=True)], None, True, True, F),
    ("slow beats without early warning pass", [ok(SLOW), ok(SLOW), ok(SLOW)], None, False, True, P),
    ("two slow beats in a row warn", [ok(), ok(SLOW), ok(SLOW), ok()], EW, False, True, W),
    ("slow beats not in a row pass", [ok(SLOW), ok(), ok(SLOW), ok()], EW, False, True, P),
    ("one beat, and it was slow, warns", [ok(SLOW)], EW, False, True, W),
    ("every beat slow but the last fast passes", [ok(SLOW), ok()], EW, False, True, P),
    ("a warning beats the abort", [ok(SLOW), ok(SLOW)], EW, True, True, W),
    ("a slow beat before the abort says nothing", [ok(SLOW)], EW, True, True, A),
    ("warned, then not settled, fails", [ok(SLOW), ok(SLOW)], EW, False, False, F),
    ("failed beats do not break a slow run", [ok(SLOW), bad(), ok(SLOW)], EW, False, True, W),
]


@pytest.mark.parametrize(
    ("beats", "early_warning", "aborted", "settled", "outcome"),
    [row[1:] for row in TABLE],
    ids=[row[0] for row in TABLE],
)
def test_verdict_table(
    beats: list[tuple[Beat, bool]],
    early_warning: EarlyWarning | None,
    aborted: bool,
    settled: bool,
    outcome: LevelOutcome,
) -> None:
    assert _judge(beats, early_warning=early_warning).outcome(aborted=aborted, settled=settled) is outcome


def test_the_min_latency_floor_keeps_fast_beats_from_counting_as_slow() -> None:
    floor = EarlyWarning(latency_factor=3.0, consecutive_beats=2, min_latency_s=0.1)
    assert _judge([ok(SLOW), ok(SLOW)], early_warning=floor).outcome() is P
    assert _judge([ok(0.2), ok(0.2)], early_warning=floor).outcome() is W


def test_held_counts_only_beats_under_load_plus_the_heartbeat_capped_at_the_level() -> None:
    verdict = _judge([ok(at_s=START - 1, held=0), ok(held=2), ok(held=4), ok(held=9), ok(held=None)], level=5)
    assert verdict.held_at_beats == [3, 5, 5]
    assert verdict.latencies_s == [0.005] * 5  # every healthy beat's latency, before the start too


def test_evidence_is_a_healthy_beat_that_started_under_load() -> None:
    before = _judge([ok(at_s=START - 0.5), bad()])
    assert not before.evidence
    assert before.wants_evidence(aborted=False)
    assert not before.wants_evidence(aborted=True)  # an aborted level waits for nothing
    assert not _judge([ok(at_s=START)]).wants_evidence(aborted=False)
    assert not _judge([bad(down=True)]).wants_evidence(aborted=False)  # decided: nothing to wait for


def test_observe_returns_the_forced_outcome_and_later_beats_change_nothing() -> None:
    verdict = LevelVerdict.for_level(3, start_s=START, early_warning=EW, baseline_s=BASELINE)
    assert verdict.observe(ok(SLOW)[0], down=False) is None
    assert verdict.observe(ok(SLOW)[0], down=False) is W
    assert verdict.observe(bad(down=True)[0], down=True) is W
    assert verdict.latencies_s == [SLOW, SLOW]
    assert verdict.beats_failed == 0


def test_failed_beats_are_counted() -> None:
    assert _judge([bad(), ok(), bad()]).beats_failed == 2


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"latency_factor": 1.0}, "latency_factor"),
        ({"latency_factor": float("nan")}, "latency_factor"),
        ({"latency_factor": True}, "latency_factor"),
        ({"consecutive_beats": 0}, "consecutive_beats"),
        ({"min_latency_s": -0.1}, "min_latency_s"),
    ],
)
def test_bad_early_warning_names_the_field(kwargs: dict[str, float], field: str) -> None:
    with pytest.raises(ConfigError, match=f"^{field}: must be") as info:
        EarlyWarning(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field


# --- properties ---------------------------------------------------------------------------------------------
beat_st = st.tuples(
    st.builds(
        Beat,
        at_s=st.floats(START - 2, START + 10),
        ok=st.booleans(),
        latency_s=st.floats(0.0, 0.5),
        sessions_device=st.none() | st.integers(0, 50),
    ),
    st.booleans() | st.just(False),
)
ew_st = st.none() | st.builds(
    EarlyWarning,
    latency_factor=st.floats(1.01, 10.0),
    consecutive_beats=st.integers(1, 4),
    min_latency_s=st.floats(0.0, 0.2),
)


@given(
    beats=st.lists(beat_st, max_size=30),
    ew=ew_st,
    level=st.integers(1, 40),
    reserve=st.integers(0, 1),
    aborted=st.booleans(),
    settled=st.booleans(),
)
def test_any_beats_give_one_outcome_by_the_rules(
    beats: list[tuple[Beat, bool]],
    ew: EarlyWarning | None,
    level: int,
    reserve: int,
    aborted: bool,
    settled: bool,
) -> None:
    verdict = _judge(beats, early_warning=ew, level=level, reserve=reserve)
    outcome = verdict.outcome(aborted=aborted, settled=settled)
    first_down = next((i for i, (_, down) in enumerate(beats) if down), None)
    if not settled:
        assert outcome is F
    if outcome is W:
        assert ew is not None  # no early warning, no warning
    if first_down is not None and verdict.decided is not W:
        assert outcome is F  # a declared-down device fails the level, whatever came after
    if outcome is P:
        assert first_down is None
        assert not aborted
        assert settled
    if outcome is A:
        assert aborted
        assert first_down is None
    assert all(reserve <= held <= level for held in verdict.held_at_beats)
    assert len(verdict.held_at_beats) <= sum(1 for b, _ in beats if b.ok and b.at_s >= START)
    assert verdict.beats_failed + len(verdict.latencies_s) <= len(beats)


@given(beats=st.lists(beat_st, max_size=30), ew=ew_st)
def test_the_verdict_only_depends_on_the_beats_up_to_the_decision(
    beats: list[tuple[Beat, bool]], ew: EarlyWarning | None
) -> None:
    """Beats after the decision change nothing: the driver may stop feeding them at once."""
    full = _judge(beats, early_warning=ew)
    for cut in range(len(beats) + 1):
        part = _judge(beats[:cut], early_warning=ew)
        if part.decided is not None:
            assert full.decided is part.decided
            assert full.latencies_s == part.latencies_s
            assert full.held_at_beats == part.held_at_beats
            break
