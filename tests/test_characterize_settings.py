"""CharacterizeSettings and its records: validated once, ``field`` naming characterize()'s keyword, a
useful repr, the flat keywords routed to their record; characterize() refuses settings plus keywords."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import fragileprobe as fp
from fragileprobe._characterize import characterize
from fragileprobe._charsettings import (
    OPTIONS,
    CharacterizeOptions,
    CharacterizeSettings,
    RecoverySettings,
    TimingSettings,
)
from fragileprobe._errors import ConfigError
from fragileprobe._level_verdict import EarlyWarning
from fragileprobe._ramp import RampConfig
from fragileprobe._scope import Scope


async def _hook(ctx: Any) -> None:
    return None


BAD = [
    (lambda: TimingSettings(dwell_s=0), "dwell_s"),
    (lambda: TimingSettings(dwell_s=float("inf")), "dwell_s"),
    (lambda: TimingSettings(hold_s=-1), "hold_s"),
    (lambda: TimingSettings(interval_s=True), "interval_s"),
    (lambda: TimingSettings(heartbeat_timeout_s=0), "heartbeat_timeout_s"),
    (lambda: TimingSettings(failures_to_down=0), "failures_to_down"),
    (lambda: TimingSettings(baseline_beats=1.5), "baseline_beats"),
    (lambda: TimingSettings(connect_timeout_s=-2), "connect_timeout_s"),
    (lambda: TimingSettings(read_timeout_s="1"), "read_timeout_s"),
    (lambda: TimingSettings(linger_s=0), "linger_s"),
    (lambda: TimingSettings(time_budget_s=float("nan")), "time_budget_s"),
    (lambda: TimingSettings(interval_s=1.0, heartbeat_timeout_s=2.0, linger_s=3.0), "linger_s"),
    (lambda: RecoverySettings(hook="power-cycle"), "recovery"),
    (lambda: RecoverySettings(healthy_beats=0), "healthy_beats"),
    (lambda: RecoverySettings(timeout_s=0), "recovery_timeout_s"),
    (lambda: RampConfig(ladder=(2, 2)), "ladder"),
    (lambda: RampConfig(ladder=()), "ladder"),
    (lambda: RampConfig(trials=0), "trials"),
    (lambda: RampConfig(crash_budget=-1), "crash_budget"),
    (lambda: RampConfig(margin_fraction=1.0), "margin_fraction"),
    (lambda: RampConfig(refine="yes"), "refine"),
    (lambda: CharacterizeSettings(timing={"dwell_s": 1}), "timing"),
    (lambda: CharacterizeSettings(early_warning=3.0), "early_warning"),
    (lambda: CharacterizeSettings.from_options(recovery_timeout_s=-1), "recovery_timeout_s"),
    (lambda: CharacterizeSettings.from_options(ladder=5), "ladder"),
]


@pytest.mark.parametrize(("build", "field"), BAD, ids=[b[1] + str(i) for i, b in enumerate(BAD)])
def test_a_bad_value_is_refused_at_construction_naming_its_keyword(build: Any, field: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{field}: ") as info:
        build()
    assert info.value.field == field
    assert field in OPTIONS or field in ("timing",)  # the CLI maps every such field to its option


def test_the_records_are_frozen_and_keyword_only() -> None:
    timing = TimingSettings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        timing.dwell_s = 1.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        TimingSettings(1.0)  # type: ignore[misc]
    with pytest.raises(TypeError):
        RecoverySettings(None)  # type: ignore[misc]


def test_repr_shows_what_differs_from_the_defaults() -> None:
    assert repr(TimingSettings()) == "TimingSettings()"
    assert repr(TimingSettings(dwell_s=0.4, hold_s=0.0)) == "TimingSettings(dwell_s=0.4, hold_s=0.0)"
    assert repr(RecoverySettings(healthy_beats=2)) == "RecoverySettings(healthy_beats=2)"
    settings = CharacterizeSettings(timing=TimingSettings(dwell_s=0.4), early_warning=EarlyWarning())
    assert repr(settings) == (
        "CharacterizeSettings(timing=TimingSettings(dwell_s=0.4), "
        "early_warning=EarlyWarning(latency_factor=3.0, consecutive_beats=2, min_latency_s=0.0))"
    )


def test_the_flat_keywords_go_to_their_record() -> None:
    settings = CharacterizeSettings.from_options(
        ladder=[2, 5],
        trials=1,
        refine=False,
        crash_budget=1,
        margin_fraction=0.2,
        dwell_s=0.4,
        hold_s=0.1,
        interval_s=0.1,
        heartbeat_timeout_s=0.3,
        failures_to_down=2,
        baseline_beats=3,
        connect_timeout_s=0.5,
        read_timeout_s=0.2,
        linger_s=9.0,
        time_budget_s=60.0,
        recovery=_hook,
        healthy_beats=2,
        recovery_timeout_s=30.0,
        early_warning=EarlyWarning(latency_factor=4.0),
    )
    assert settings == CharacterizeSettings(
        ramp=RampConfig(ladder=(2, 5), trials=1, refine=False, crash_budget=1, margin_fraction=0.2),
        timing=TimingSettings(
            dwell_s=0.4,
            hold_s=0.1,
            interval_s=0.1,
            heartbeat_timeout_s=0.3,
            failures_to_down=2,
            baseline_beats=3,
            connect_timeout_s=0.5,
            read_timeout_s=0.2,
            linger_s=9.0,
            time_budget_s=60.0,
        ),
        recovery=RecoverySettings(hook=_hook, healthy_beats=2, timeout_s=30.0),
        early_warning=EarlyWarning(latency_factor=4.0),
    )
    assert CharacterizeSettings.from_options() == CharacterizeSettings()


def test_the_keyword_table_and_the_typed_keywords_list_the_same_names() -> None:
    assert set(OPTIONS) == set(CharacterizeOptions.__optional_keys__)
    parts = {"timing": TimingSettings, "recovery": RecoverySettings, "ramp": RampConfig}
    for keyword, (part, attribute) in OPTIONS.items():
        owner = parts.get(part, CharacterizeSettings)
        assert attribute in {f.name for f in dataclasses.fields(owner)}, keyword


def test_an_unknown_keyword_is_a_type_error_like_any_function() -> None:
    with pytest.raises(TypeError, match="unexpected keyword argument 'dwell'"):
        CharacterizeSettings.from_options(dwell=5.0)


@given(
    dwell=st.floats(0.01, 100),
    hold=st.floats(0, 10),
    trials=st.integers(1, 9),
    beats=st.integers(1, 9),
    factor=st.none() | st.floats(1.01, 10),
)
def test_valid_keywords_round_trip_through_the_records(
    dwell: float, hold: float, trials: int, beats: int, factor: float | None
) -> None:
    ew = None if factor is None else EarlyWarning(latency_factor=factor)
    s = CharacterizeSettings.from_options(
        dwell_s=dwell, hold_s=hold, trials=trials, healthy_beats=beats, early_warning=ew
    )
    assert (s.timing.dwell_s, s.timing.hold_s, s.ramp.trials, s.recovery.healthy_beats) == (
        dwell,
        hold,
        trials,
        beats,
    )
    assert s.early_warning == ew
    assert eval(repr(s.timing), {"TimingSettings": TimingSettings}) == s.timing


async def test_characterize_refuses_settings_and_flat_keywords_together() -> None:
    with pytest.raises(ConfigError, match=r"^settings: .*\['dwell_s'\]") as info:
        await characterize(
            "127.0.0.1", scope=Scope(["127.0.0.1"]), settings=CharacterizeSettings(), dwell_s=1.0
        )
    assert info.value.field == "settings"


async def test_characterize_refuses_a_settings_that_is_not_one() -> None:
    with pytest.raises(ConfigError, match=r"^settings: must be a CharacterizeSettings") as info:
        await characterize("127.0.0.1", scope=Scope(["127.0.0.1"]), settings={"dwell_s": 1.0})  # type: ignore[arg-type]
    assert info.value.field == "settings"


def test_the_settings_are_public() -> None:
    for name in ("CharacterizeSettings", "TimingSettings", "RecoverySettings", "RampConfig", "EarlyWarning"):
        assert name in fp.__all__
        assert getattr(fp, name) is globals()[name]


def test_replace_changes_flat_keywords_in_their_record_and_validates_again() -> None:
    base = CharacterizeSettings.from_options(dwell_s=0.4, trials=2)
    changed = base.replace(recovery=_hook, ladder=[2, 3], hold_s=0)
    assert changed.recovery.hook is _hook
    assert changed.ramp == RampConfig(ladder=(2, 3), trials=2)
    assert changed.timing == TimingSettings(dwell_s=0.4, hold_s=0)
    assert base.recovery.hook is None  # frozen: the original is untouched
    with pytest.raises(ConfigError, match=r"^dwell_s: ") as info:
        base.replace(dwell_s=-1)
    assert info.value.field == "dwell_s"
    with pytest.raises(TypeError, match="'dwell'"):
        base.replace(dwell=1.0)  # type: ignore[call-arg]
