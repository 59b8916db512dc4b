"""The one place configuration values are checked, with one message format.

Every setting that comes from a caller, a file or the command line is checked here, once, when the settings
object holding it is built. A failure is a :class:`~fragileprobe.ConfigError` whose message reads
``"<field>: must be <what>, got <value>"`` and whose ``field`` attribute names the setting, so the CLI can
say which option was wrong without parsing text (``ConfigError.field == "dwell_s"`` → ``--dwell``).

Pure functions: no I/O, no clock. Numbers that come from a device's bytes are not configuration; they go
through :mod:`fragileprobe._numbers`, which answers ``None`` instead of raising.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, TypeVar

from fragileprobe._errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Collection

__all__ = [
    "count",
    "fail",
    "non_negative",
    "one_of",
    "optional_positive",
    "port",
    "positive",
    "positive_int",
]

_T = TypeVar("_T")


def fail(field: str, what: str, value: object) -> ConfigError:
    """The error for ``field`` holding ``value`` where it ``must be <what>`` (returned, for ``raise``)."""
    return ConfigError(f"{field}: must be {what}, got {value!r}", field=field)


def _real(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def positive(field: str, value: float) -> float:
    """``value`` as a float when it is a finite number above 0 (seconds, rates, factors)."""
    if not _real(value) or value <= 0:
        raise fail(field, "a positive number", value)
    return float(value)


def non_negative(field: str, value: float) -> float:
    """``value`` as a float when it is a finite number of at least 0."""
    if not _real(value) or value < 0:
        raise fail(field, "a non-negative number", value)
    return float(value)


def optional_positive(field: str, value: float | None) -> float | None:
    """``None`` (no bound), or ``value`` checked by :func:`positive`."""
    return None if value is None else positive(field, value)


def count(field: str, value: int, *, minimum: int = 0, maximum: int | None = None) -> int:
    """``value`` when it is an int (not a bool) in ``minimum..maximum``."""
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
    if not ok or (maximum is not None and value > maximum):
        what = f"an integer >= {minimum}" if maximum is None else f"an integer in {minimum}-{maximum}"
        raise fail(field, what, value)
    return value


def positive_int(field: str, value: int) -> int:
    """``value`` when it is an int of at least 1 (ceilings, levels, trials)."""
    return count(field, value, minimum=1)


def port(field: str, value: int) -> int:
    """``value`` when it is a TCP/UDP port number, 1-65535."""
    return count(field, value, minimum=1, maximum=65535)


def one_of(field: str, value: _T, allowed: Collection[_T]) -> _T:
    """``value`` when it is one of ``allowed``."""
    if value not in allowed:
        raise fail(field, "one of " + ", ".join(sorted(repr(a) for a in allowed)), value)
    return value
