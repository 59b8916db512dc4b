"""The one parser for numbers from outside (``fragileprobe._numbers``): ASCII digits only, bounded length."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fragileprobe import ConfigError
from fragileprobe._numbers import (
    DEVICE_DECIMAL_MAX_DIGITS,
    DEVICE_HEX_MAX_DIGITS,
    FIELD_MAX_DIGITS,
    device_decimal,
    device_hex,
    is_ascii_decimal,
    parse_field_int,
)

# Everything Python's own number tools take that a protocol or an option does not: superscripts (isdigit()
# is True, int() raises), Arabic-Indic, Devanagari and full-width digits (int() reads them), signs, spaces,
# underscores, a zero-width space.
NOT_ASCII_NUMBERS = [
    "²",
    "³",
    "¹",
    "1²",
    "٢٢",
    "२",
    "\uff12\uff12",
    "+1",
    "-1",
    "1_0",
    "1 0",
    "2\u200b1",
    "",
    " ",
    "0x10",
    "1e3",
    "1.0",
]


@pytest.mark.parametrize("text", NOT_ASCII_NUMBERS)
def test_what_int_or_isdigit_would_take_is_not_a_number_here(text: str) -> None:
    assert not is_ascii_decimal(text)
    assert device_decimal(text) is None
    assert device_decimal(text.encode("utf-8")) is None
    with pytest.raises(ConfigError, match=r"^--opt: .*not a number"):
        parse_field_int(text, field="--opt")


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=30))
def test_device_decimal_is_exactly_ascii_digits(text: str) -> None:
    """(H) Any text: a value exactly when it is 1-18 ASCII digits, and then the value int() gives."""
    value = device_decimal(text)
    expected = 0 < len(text) <= DEVICE_DECIMAL_MAX_DIGITS and all("0" <= c <= "9" for c in text)
    assert (value is not None) == expected
    if value is not None:
        assert value == int(text)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=30))
def test_device_numbers_from_any_bytes_are_a_value_or_none(data: bytes) -> None:
    """(H) Any bytes (Latin-1 superscripts included): an int or None, never an exception."""
    decimal, hexadecimal = device_decimal(data), device_hex(data)
    if decimal is not None:
        assert data.isdigit()
        assert decimal == int(data)
    if hexadecimal is not None:
        assert len(data) <= DEVICE_HEX_MAX_DIGITS
        assert hexadecimal == int(data, 16)


@settings(max_examples=200, deadline=None)
@given(
    value=st.integers(min_value=0, max_value=10**FIELD_MAX_DIGITS - 1),
    low=st.integers(min_value=0, max_value=100),
    high=st.integers(min_value=0, max_value=10**6),
)
def test_field_int_round_trips_and_checks_its_range(value: int, low: int, high: int) -> None:
    text = f"  {value} "
    if low <= value <= high:
        assert parse_field_int(text, field="n", minimum=low, maximum=high) == value
    else:
        with pytest.raises(ConfigError, match=rf"^n: {value} is outside {low}-{high}$") as info:
            parse_field_int(text, field="n", minimum=low, maximum=high)
        assert info.value.field == "n"


def test_long_numbers_are_refused_before_conversion() -> None:
    """A million digits would cost int() noticeable time (and raise past sys.int_info's limit)."""
    assert device_decimal("9" * 1_000_000) is None
    assert device_hex(b"f" * 1_000_000) is None
    with pytest.raises(ConfigError, match=rf"more than {FIELD_MAX_DIGITS} digits"):
        parse_field_int("9" * 1_000_000, field="seed")
