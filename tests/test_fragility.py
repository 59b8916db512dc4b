"""The pure fragility model: threshold distribution, hang rule, slowdown, rate fragility, wedge, power."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fragileprobe import ConfigError
from fragileprobe.emulator import MODELS, DeviceState, FragilitySpec, draw_threshold, threshold_bounds
from fragileprobe.emulator._fragility import CONNECT_HISTORY_MAX, ConnectVerdict, FragilityModel

bases = st.integers(min_value=1, max_value=500)
jitters = st.integers(min_value=0, max_value=50)
seeds = st.integers(min_value=0, max_value=2**64)


@given(base=bases, jitter=jitters, seed=seeds)
def test_threshold_within_documented_bounds(base: int, jitter: int, seed: int) -> None:
    """Every draw is an integer in [max(1, base - jitter), base + jitter]."""
    spec = FragilitySpec(threshold=base, jitter=jitter)
    rng = random.Random(seed)
    low, high = max(1, base - jitter), base + jitter
    assert threshold_bounds(spec) == (low, high)
    for _ in range(20):
        t = draw_threshold(spec, rng)
        assert t is not None
        assert low <= t <= high


@given(base=bases, jitter=jitters, seed=seeds)
def test_threshold_sequence_reproducible_by_seed(base: int, jitter: int, seed: int) -> None:
    """The same seed gives the same thresholds boot after boot."""
    spec = FragilitySpec(threshold=base, jitter=jitter)
    a = FragilityModel(spec, random.Random(seed))
    b = FragilityModel(spec, random.Random(seed))
    seq_a, seq_b = [], []
    for _ in range(10):
        seq_a.append(a.boot())
        a.power_off()
        seq_b.append(b.boot())
        b.power_off()
    assert seq_a == seq_b


def test_threshold_distribution_covers_every_value() -> None:
    """Uniform over the range: each value shows up with roughly equal frequency."""
    spec = FragilitySpec(threshold=8, jitter=1)
    rng = random.Random(1234)
    counts = {7: 0, 8: 0, 9: 0}
    for _ in range(3000):
        t = draw_threshold(spec, rng)
        assert t is not None
        counts[t] += 1
    for value, count in counts.items():
        assert 800 < count < 1200, (value, counts)


def test_never_hanging_model_draws_none() -> None:
    spec = FragilitySpec(threshold=None)
    assert threshold_bounds(spec) is None
    assert draw_threshold(spec, random.Random(0)) is None


@given(seed=seeds)
def test_story_pump_safe_at_five_probes_plus_heartbeat(seed: int) -> None:
    """The infusion pump's threshold is never below 7: 5 sessions + 1 heartbeat = 6 never hangs it."""
    model = FragilityModel(MODELS["infusion-pump"].fragility, random.Random(seed))
    threshold = model.boot()
    assert threshold is not None
    assert 7 <= threshold <= 9
    for _ in range(6):
        assert model.on_connect(21, 0.0) is ConnectVerdict.SERVE
    assert model.state is DeviceState.UP


@given(
    threshold=st.integers(min_value=1, max_value=12),
    ops=st.lists(st.booleans(), max_size=60),
)
def test_hangs_exactly_when_sessions_reach_threshold(threshold: int, ops: list[bool]) -> None:
    """Random opens/closes: the device hangs at the first moment it holds T sessions, never before."""
    model = FragilityModel(FragilitySpec(threshold=threshold), random.Random(0))
    model.boot()
    held = 0
    hung_expected = False
    for is_open in ops:
        if is_open:
            held += 1
            verdict = model.on_connect(8080, 1.0)
            if not hung_expected and held >= threshold:
                hung_expected = True
                assert verdict is ConnectVerdict.STALL
            elif hung_expected:
                assert verdict is ConnectVerdict.STALL
            else:
                assert verdict is ConnectVerdict.SERVE
        elif held:
            held -= 1
            model.on_close()
        assert (model.state is DeviceState.HUNG) == hung_expected
        assert model.sessions == held
        assert model.counters.peak_sessions <= threshold
    assert model.counters.crashes == (1 if hung_expected else 0)


def test_hung_device_counts_attempts_and_stays_hung() -> None:
    model = FragilityModel(FragilitySpec(threshold=2), random.Random(0))
    model.boot()
    assert model.on_connect(21, 0.0) is ConnectVerdict.SERVE
    assert model.on_connect(22, 0.0) is ConnectVerdict.STALL
    model.on_close()
    model.on_close()
    assert model.sessions == 0
    assert model.state is DeviceState.HUNG  # closing sessions does not revive a hung device
    assert model.on_connect(8080, 1.0) is ConnectVerdict.STALL
    assert model.counters.attempts_while_hung == 2
    assert model.counters.sessions_served == 1


def test_power_cycle_recovers_and_keeps_counters() -> None:
    model = FragilityModel(FragilitySpec(threshold=1), random.Random(0))
    model.boot()
    model.on_connect(21, 0.0)
    assert model.state is DeviceState.HUNG
    model.power_off()
    assert model.state is DeviceState.BOOTING
    assert model.sessions == 0
    model.boot()
    assert model.state is DeviceState.UP
    assert model.counters.crashes == 1
    assert model.counters.power_cycles == 1


@given(sessions=st.integers(min_value=0, max_value=200))
def test_delay_grows_monotonically_with_load(sessions: int) -> None:
    for model in MODELS.values():
        spec = model.fragility
        assert spec.response_delay_s(sessions + 1) >= spec.response_delay_s(sessions)
        assert spec.response_delay_s(1) == pytest.approx(spec.base_latency_s)


def test_slow_pump_slows_strongly_well_before_it_dies() -> None:
    """The slow pump's delay is ten times its base delay before even its lowest threshold."""
    spec = MODELS["slow-pump"].fragility
    low, _ = threshold_bounds(spec) or (0, 0)
    assert spec.response_delay_s(6) > 10 * spec.response_delay_s(1)
    assert low - 6 >= 4  # at least four sessions of warning room
    # The story pump only slows linearly.
    story = MODELS["infusion-pump"].fragility
    assert story.response_delay_s(6) < 10 * story.response_delay_s(1) + 0.1


def test_connect_rate_fragility() -> None:
    """More than max_connects_per_s attempts inside one second hang the device; spread out, they don't."""
    spec = FragilitySpec(threshold=None, max_connects_per_s=5)
    model = FragilityModel(spec, random.Random(0))
    model.boot()
    for i in range(50):  # 50 connects at 4 per second: fine
        assert model.on_connect(80, i * 0.25) is ConnectVerdict.SERVE
        model.on_close()
    model.power_off()
    model.boot()
    verdicts = [model.on_connect(80, 100.0 + i * 0.01) for i in range(6)]
    assert verdicts[:5] == [ConnectVerdict.SERVE] * 5
    assert verdicts[5] is ConnectVerdict.STALL
    assert model.state is DeviceState.HUNG
    assert model.hang_reason == "connect_rate"


def test_wedge_spares_ports_until_power_cycle() -> None:
    model = FragilityModel(FragilitySpec(threshold=3), random.Random(0))
    model.boot()
    assert model.wedge({21})
    assert model.answers(21)
    assert not model.answers(8080)
    assert model.on_connect(21, 0.0) is ConnectVerdict.SERVE
    assert model.on_connect(8080, 0.0) is ConnectVerdict.STALL
    # The spared port still counts sessions: reaching T hangs it fully.
    assert model.on_connect(21, 0.0) is ConnectVerdict.STALL
    assert not model.answers(21)
    model.power_off()
    model.boot()
    assert model.answers(8080)
    assert model.spared_ports == frozenset()


def test_connects_since_counts_attempts_at_or_after() -> None:
    model = FragilityModel(FragilitySpec(threshold=None), random.Random(0))
    model.boot()
    for t in (1.0, 2.0, 2.0, 3.0):
        model.on_connect(80, t)
        model.on_close()
    assert model.connects_since(2.0) == 3
    assert model.connects_since(3.5) == 0
    assert model.connects_since(0.0) == 4


def test_connect_history_is_bounded() -> None:
    model = FragilityModel(FragilitySpec(threshold=None), random.Random(0))
    model.boot()
    for i in range(CONNECT_HISTORY_MAX + 100):
        model.on_connect(80, float(i))
        model.on_close()
    assert model.connects_since(0.0) == CONNECT_HISTORY_MAX
    assert model.counters.connects_total == CONNECT_HISTORY_MAX + 100


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"threshold": 0}, "threshold"),
        ({"threshold": 5, "jitter": -1}, "jitter"),
        ({"base_latency_s": -0.1}, "base_latency_s"),
        ({"slowdown_s_per_session": float("nan")}, "slowdown_s_per_session"),
        ({"knee_exponent": 0.5}, "knee_exponent"),
        ({"max_connects_per_s": 0}, "max_connects_per_s"),
        ({"syn_spared_ports": frozenset({70000})}, "syn_spared_ports"),
    ],
)
def test_spec_validation_names_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        FragilitySpec(**kwargs)  # type: ignore[arg-type]
