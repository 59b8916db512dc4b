"""The one parser for every number that comes from outside: devices, files and the command line.

Python's own tools are too generous for input we do not control: ``str.isdigit()`` is true for ``'²'`` (a
superscript, which ``int()`` then refuses with a bare ``ValueError``), ``int()`` accepts ``'٢٢'`` (Arabic-
Indic digits) as 22, ``' 22 '``, ``'+22'`` and ``'2_2'``, and a string of a million digits costs seconds of
CPU before it fails. So every number read from a device's bytes, a file or an argument goes through here:

* ASCII digits only (``0-9``, and ``a-f``/``A-F`` for hexadecimal), no sign, no underscores, no spaces
  (callers strip the surrounding whitespace their grammar allows, explicitly);
* a bounded number of digits, checked before any conversion;
* the answer is a value, or: ``None`` for device bytes (the caller turns it into a ``PROTOCOL_ERROR``
  result about that host, never an exception), or :class:`~fragileprobe.ConfigError` naming the field for
  configuration and the command line.

Pure functions: no I/O, no clock; fuzzed with hypothesis in ``tests/test_numbers.py``.
"""

from __future__ import annotations

from fragileprobe._errors import ConfigError

__all__ = [
    "DEVICE_DECIMAL_MAX_DIGITS",
    "DEVICE_HEX_MAX_DIGITS",
    "FIELD_MAX_DIGITS",
    "device_decimal",
    "device_hex",
    "is_ascii_decimal",
    "parse_field_int",
]

_DECIMAL = frozenset("0123456789")
_HEX = frozenset("0123456789abcdefABCDEF")

# A Content-Length that needs more than 18 decimal digits is above 10**18 bytes (an exabyte): no real body
# is that long, and 18 digits still fit a signed 64-bit integer, the type every HTTP stack stores it in
# (RFC 9110 8.6 allows any length, and tells recipients to guard against overflow).
DEVICE_DECIMAL_MAX_DIGITS = 18
# A chunk size of 8 hex digits is 4 GiB; h11 caps the chunk-size field at 20 characters. Our chunked bodies
# are capped far below either, so more digits can only be padding or an attack.
DEVICE_HEX_MAX_DIGITS = 8
# A port, a count, a seed or a level given on the command line or in a file: 20 digits hold any 64-bit value;
# a longer "number" is a typo or an attack on int()'s quadratic conversion.
FIELD_MAX_DIGITS = 20


def is_ascii_decimal(text: str, *, max_digits: int = FIELD_MAX_DIGITS) -> bool:
    """True when ``text`` is 1 to ``max_digits`` ASCII digits and nothing else (no sign, space, ``_``)."""
    return 0 < len(text) <= max_digits and all(c in _DECIMAL for c in text)


def _text(data: str | bytes | bytearray) -> str | None:
    if isinstance(data, str):
        return data
    try:
        return bytes(data).decode("ascii")
    except UnicodeDecodeError:
        return None


def device_decimal(
    data: str | bytes | bytearray, *, max_digits: int = DEVICE_DECIMAL_MAX_DIGITS
) -> int | None:
    """A decimal number a device sent (``Content-Length``, a status code), or None if it is not one.

    Args:
        data: the field exactly as framed by the protocol (the caller strips the whitespace it allows).
        max_digits: refuse longer numbers before converting (bounded work for any input).

    Returns:
        The value, or None for anything but 1 to ``max_digits`` ASCII digits: the caller reports a
        protocol violation about the device, never raises.
    """
    text = _text(data)
    if text is None or not is_ascii_decimal(text, max_digits=max_digits):
        return None
    return int(text)


def device_hex(data: str | bytes | bytearray, *, max_digits: int = DEVICE_HEX_MAX_DIGITS) -> int | None:
    """A hexadecimal number a device sent (an HTTP chunk size), or None if it is not one."""
    text = _text(data)
    if text is None or not 0 < len(text) <= max_digits or not all(c in _HEX for c in text):
        return None
    return int(text, 16)


def parse_field_int(
    text: str,
    *,
    field: str,
    minimum: int | None = None,
    maximum: int | None = None,
    max_digits: int = FIELD_MAX_DIGITS,
) -> int:
    """A non-negative integer from a file or the command line, checked against its range.

    Surrounding whitespace is allowed (people type it); inside, only ASCII digits.

    Args:
        text: what the user wrote.
        field: the option, key or setting, for the message (``--ports``, ``ladder``).
        minimum: smallest value allowed (inclusive), if any.
        maximum: largest value allowed (inclusive), if any.
        max_digits: refuse longer numbers before converting.

    Returns:
        The value.

    Raises:
        ConfigError: not 1 to ``max_digits`` ASCII digits, or outside ``minimum``-``maximum`` (the message
            names ``field`` and shows the text).
    """
    if not isinstance(text, str):
        raise ConfigError(f"{field}: {text!r} is not a number", field=field)
    stripped = text.strip()
    if not is_ascii_decimal(stripped, max_digits=max_digits):
        if stripped and all(c in _DECIMAL for c in stripped):
            raise ConfigError(f"{field}: {stripped[:40]!r} has more than {max_digits} digits", field=field)
        raise ConfigError(f"{field}: {stripped[:40]!r} is not a number (ASCII digits 0-9 only)", field=field)
    value = int(stripped)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        low = "" if minimum is None else str(minimum)
        high = "" if maximum is None else str(maximum)
        raise ConfigError(f"{field}: {value} is outside {low}-{high}", field=field)
    return value
