"""The one validation module: one message format, and the field on every error it raises."""

from __future__ import annotations

import math
import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fragileprobe import ConfigError
from fragileprobe import _validate as v


@given(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(), st.booleans(), st.text()))
def test_positive_accepts_exactly_the_finite_numbers_above_zero(value: object) -> None:
    real = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if real and value > 0:  # type: ignore[operator]
        assert v.positive("dwell_s", value) == float(value)  # type: ignore[arg-type]
    else:
        with pytest.raises(ConfigError, match=r"^dwell_s: must be a positive number, got ") as info:
            v.positive("dwell_s", value)  # type: ignore[arg-type]
        assert info.value.field == "dwell_s"


@given(st.one_of(st.integers(-5, 70000), st.booleans(), st.floats(0, 10)))
def test_port_accepts_exactly_the_ints_1_to_65535(value: object) -> None:
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535:
        assert v.port("port", value) == value
    else:
        with pytest.raises(ConfigError, match=r"^port: must be an integer in 1-65535, got ") as info:
            v.port("port", value)  # type: ignore[arg-type]
        assert info.value.field == "port"


def test_the_field_survives_pickling_and_is_none_when_not_given() -> None:
    assert pickle.loads(pickle.dumps(v.fail("ceiling", "an integer >= 1", 0))).field == "ceiling"
    assert ConfigError("a file that is not TOML").field is None
    assert v.optional_positive("rate_per_s", None) is None
    assert v.non_negative("margin", 0) == 0.0
    with pytest.raises(ConfigError, match=r"^mode: must be one of 'a', 'b', got 'c'$"):
        v.one_of("mode", "c", ("b", "a"))
