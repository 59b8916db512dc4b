"""Safe-ceiling derivation, result records, summaries, JSON, DataFrame, plot and device profiles."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fragileprobe._errors import ConfigError
from fragileprobe._profile import (
    Characterization,
    DeviceProfile,
    LevelOutcome,
    LevelResult,
    TrialResult,
    derive_ceiling,
    latency_knee,
    percentile,
)

P, F, W, A = LevelOutcome.PASSED, LevelOutcome.FAILED, LevelOutcome.WARNED, LevelOutcome.ABORTED

observations = st.lists(
    st.lists(st.tuples(st.integers(1, 60), st.sampled_from([P, F, W, A])), max_size=12), max_size=5
)


@settings(max_examples=500, deadline=None)
@given(trials=observations, margin=st.floats(0.0, 0.95))
def test_ceiling_is_below_every_failure_and_was_always_passed(trials: list, margin: float) -> None:
    """safe_ceiling < every failed/warned level, <= H, and (if > 0) passed in every trial that tested it."""
    d = derive_ceiling(trials, margin_fraction=margin)
    bad = [lv for t in trials for lv, oc in t if oc in (F, W)]
    if d.safe_ceiling is None:
        assert not any(oc is P for t in trials for _, oc in t)
        assert not bad
        return
    assert d.safe_ceiling >= 0
    assert all(d.safe_ceiling < b for b in bad)
    assert d.ceiling_found == bool(bad)
    if d.safe_ceiling > 0:
        assert d.highest_passed is not None
        assert d.safe_ceiling <= d.highest_passed
    if d.highest_passed is not None:
        outcomes = [oc for t in trials for lv, oc in t if lv == d.highest_passed and oc is not A]
        assert outcomes
        assert all(oc is P for oc in outcomes)


@pytest.mark.parametrize(
    ("limit", "expected"), [(2, 0), (3, 0), (4, 1), (6, 3), (7, 4), (8, 5), (20, 17), (21, 17), (50, 42)]
)
def test_pinned_failures_keep_three_levels_or_15_percent_of_margin(limit: int, expected: int) -> None:
    """With H = L - 1 the margin is the larger of 3 levels and 15 % below L: 7 -> 4, 8 -> 5, 21 -> 17."""
    trial = [(lv, P) for lv in range(1, limit)] + [(limit, F)]
    assert derive_ceiling([trial]).safe_ceiling == expected


def test_a_level_that_failed_once_is_never_recommended() -> None:
    """H must have passed in every trial: 6 passed, then failed later, so L = 6 and the ceiling drops."""
    d = derive_ceiling([[(5, P), (6, P), (7, F)], [(5, P), (6, F)]])
    assert d.failed_at == 6
    assert d.highest_passed == 5
    assert d.safe_ceiling == 3


def test_failing_at_the_lowest_level_gives_zero() -> None:
    d = derive_ceiling([[(1, F)]])
    assert d.safe_ceiling == 0
    assert d.ceiling_found


def test_no_failure_is_no_ceiling_found_and_keeps_the_margin() -> None:
    """Never failed: no ceiling found; the recommendation keeps the margin below H + 1 (a limit may lie
    just above the top level tested), never below 1; the smallest margin recommends the top level itself."""
    d = derive_ceiling([[(1, P), (2, P), (4, P)], [(4, P)]])
    assert not d.ceiling_found
    assert d.failed_at is None
    assert d.highest_passed == 4
    assert d.safe_ceiling == 2  # B = 5: 5 - 3
    assert derive_ceiling([[(50, P)]]).safe_ceiling == 43  # floor(51 * 0.85)
    assert derive_ceiling([[(1, P)]]).safe_ceiling == 1
    assert derive_ceiling([[(1, P), (4, P)]], margin_fraction=0.0, margin_levels=1).safe_ceiling == 4


@pytest.mark.parametrize("margin", [-0.1, 1.0, float("nan"), "0.1", True])
def test_bad_margin_is_refused(margin: object) -> None:
    with pytest.raises(ConfigError, match="margin_fraction"):
        derive_ceiling([], margin_fraction=margin)  # type: ignore[arg-type]


def _level(level: int, outcome: LevelOutcome, lat: float) -> LevelResult:
    return LevelResult(level=level, outcome=outcome, dwell_s=0.2, elapsed_s=0.2, latencies_s=(lat, lat * 1.1))


def _char(host: str = "127.0.0.9", fail: int = 7, model: str = "pump-abc") -> Characterization:
    levels = [_level(lv, P, 0.005 * lv) for lv in (1, 2, 5)] + [
        _level(fail, F, 0.05),
        _level(fail - 1, P, 0.03),
    ]
    return Characterization.from_trials(
        host=host,
        model_key=model,
        ladder=(1, 2, 5, 7, 10),
        trials=[TrialResult(index=0, levels=tuple(levels), wall_time_s=1.0)],
        baseline_latency_s=0.004,
        wall_time_s=1.5,
    )


def test_characterization_derives_and_summarizes() -> None:
    c = _char()
    assert c.safe_ceiling == 4
    assert c.failed_at == 7
    assert c.crashes == 1
    assert c.crash_levels == (7,)
    assert c.latency_knee == 2  # 0.01 s median at 2 >= 2 x 0.004
    text = c.summary()
    assert "Safe ceiling: 4" in text
    assert "the larger of 15% and 3 sessions below the lowest failing level, 7" in text
    assert "crashed the device: 7" in text


def test_no_ceiling_summary_says_never_exceeded() -> None:
    levels = tuple(_level(lv, P, 0.001) for lv in (1, 2, 4))
    c = Characterization.from_trials(
        host="127.0.0.9", model_key=None, ladder=(1, 2, 4), trials=[TrialResult(index=0, levels=levels)]
    )
    assert not c.ceiling_found
    assert c.safe_ceiling == 2
    assert "No ceiling found up to 4" in c.summary()
    assert "never exceeded" in c.summary()


def test_json_round_trip_is_lossless() -> None:
    c = _char()
    again = Characterization.from_json(c.to_json())
    assert again == c
    assert json.loads(c.to_json())["safe_ceiling"] == 4
    assert json.loads(c.to_json())["margin_levels"] == 3


def test_from_dict_refuses_newer_format_and_garbage() -> None:
    data = _char().to_dict()
    data["format"] = 999
    with pytest.raises(ConfigError, match="newer"):
        Characterization.from_dict(data)
    with pytest.raises(ConfigError):
        Characterization.from_json("{not json")
    with pytest.raises(ConfigError):
        Characterization.from_dict({"host": "x"})


def test_dataframe_has_one_row_per_level() -> None:
    df = _char().to_dataframe()
    assert len(df) == 5
    assert list(df["level"]) == [1, 2, 5, 7, 6]
    assert list(df["outcome"])[3] == "failed"


def test_plot_marks_crash_and_ceiling() -> None:
    fig = _char().plot()
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("safe ceiling 4" in lbl for lbl in labels)
    assert any("first crash 7" in lbl for lbl in labels)


def test_profile_ceiling_is_never_above_any_device() -> None:
    """A model's ceiling is the lowest over its devices."""
    p = DeviceProfile(model_key="pump-abc", characterizations=(_char("127.0.0.9", 8), _char("127.0.0.10", 6)))
    assert p.ceiling == min(c.safe_ceiling for c in p.characterizations if c.safe_ceiling is not None)
    assert p.ceiling == 3  # the device failing at 6 sets it: min(5, floor(6 * 0.85), 6 - 3)
    assert p.devices == ("127.0.0.9", "127.0.0.10")
    assert p.failed_at == 6
    assert "model pump-abc" in p.summary()


@settings(max_examples=200, deadline=None)
@given(fails=st.lists(st.integers(2, 50), min_size=1, max_size=6))
def test_profile_ceiling_property(fails: list[int]) -> None:
    chars = tuple(_char(f"127.0.0.{i + 2}", max(f, 6)) for i, f in enumerate(fails))
    p = DeviceProfile(model_key="m", characterizations=chars)
    assert p.ceiling is not None
    assert all(p.ceiling <= c.safe_ceiling for c in chars if c.safe_ceiling is not None)


def test_latency_knee_and_percentile() -> None:
    levels = [_level(1, P, 0.01), _level(2, P, 0.015), _level(3, P, 0.05)]
    assert latency_knee(levels, 0.01) == 3
    assert latency_knee(levels, None) == 3  # lowest level stands in for the baseline
    assert latency_knee(levels, 1.0) is None
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.95) == 4.0
    assert percentile([], 0.5) is None
