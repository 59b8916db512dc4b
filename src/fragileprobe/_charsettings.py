"""The settings of a characterization, as httpx keeps ``Timeout`` and ``Limits``: records validated once.

:class:`CharacterizeSettings` holds what :func:`~fragileprobe.characterize` measures with, in three parts
and one rule:

- :class:`TimingSettings`: how long a level is held, how sessions and heartbeats are timed;
- :class:`RecoverySettings`: what brings a crashed device back and when it counts as recovered;
- :class:`~fragileprobe.RampConfig`: the ladder, the trials and the margin (the pure ramp's own record);
- ``early_warning``: the :class:`~fragileprobe.EarlyWarning` rule of the level verdict, or None.

Every record is frozen and keyword-only, checks its values when it is built (``ConfigError`` whose
``field`` is the name of :func:`characterize`'s keyword, so the CLI maps it to its option), and shows only
what differs from the defaults in its ``repr``. :func:`characterize` takes either one ``settings=`` or the
flat keywords (``dwell_s=``, ``ladder=``...), which :meth:`CharacterizeSettings.from_options` routes to
their record through the one table :data:`OPTIONS`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypedDict, Unpack

from fragileprobe import _validate
from fragileprobe._level_verdict import EarlyWarning
from fragileprobe._ramp import RampConfig
from fragileprobe._recovery import DEFAULT_RECOVERY_TIMEOUT_S

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

__all__ = [
    "OPTIONS",
    "check_settings",
    "CharacterizeOptions",
    "CharacterizeSettings",
    "RecoverySettings",
    "TimingSettings",
]

# Five seconds per level: long enough for several heartbeats (one a second) and for a device that slows
# before it hangs to show it; a three-trial default ramp then takes a few minutes.
DEFAULT_DWELL_S = 5.0
# Half a second per session, about what a scanner's service check holds a connection for.
DEFAULT_HOLD_S = 0.5
# One heartbeat a second: a hang is seen within about a second, and the beat itself is a negligible load.
DEFAULT_INTERVAL_S = 1.0
# One failed beat declares the device down: the fragile devices this is for do not come back by themselves.
DEFAULT_FAILURES_TO_DOWN = 1
# Three good beats in a row: one answer can be a device that is still booting.
DEFAULT_HEALTHY_BEATS = 3
# Idle beats whose median is the latency baseline (odd, so the median is one real beat).
DEFAULT_BASELINE_BEATS = 5
# A session's connect and first read: an embedded stack answers a SYN in milliseconds and a banner within
# a second when healthy; a longer wait would only hold a slot while the heartbeat decides.
DEFAULT_CONNECT_TIMEOUT_S = 2.0
DEFAULT_READ_TIMEOUT_S = 1.0


def _changed_repr(record: Any) -> str:
    """``Name(field=value, ...)`` with only the fields that differ from their defaults (httpx's style)."""
    shown = []
    for f in dataclasses.fields(record):
        value = getattr(record, f.name)
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if value != default:
            shown.append(f"{f.name}={value!r}")
    return f"{type(record).__name__}({', '.join(shown)})"


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class TimingSettings:
    """How a level is held and how the device is watched meanwhile.

    Attributes:
        dwell_s: How long each level is held.
        hold_s: How long each session stays open after its banner/response (0: close at once).
        interval_s: Seconds between heartbeats.
        heartbeat_timeout_s: Overrides the heartbeat's own timeout (None: the heartbeat's).
        failures_to_down: Failed beats in a row that declare the device down.
        baseline_beats: Idle beats measured before the ramp (the latency baseline).
        connect_timeout_s: Bound on each session's connect.
        read_timeout_s: Bound on each session's banner/response read.
        linger_s: Most seconds a session stays counted after our close while the device has not let go
            (None: the Guard's default). With ``heartbeat_timeout_s`` given, it must be longer than the
            watchdog's detection bound.
        time_budget_s: Stop (with what was measured) after this long; None: no limit.
    """

    dwell_s: float = DEFAULT_DWELL_S
    hold_s: float = DEFAULT_HOLD_S
    interval_s: float = DEFAULT_INTERVAL_S
    heartbeat_timeout_s: float | None = None
    failures_to_down: int = DEFAULT_FAILURES_TO_DOWN
    baseline_beats: int = DEFAULT_BASELINE_BEATS
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S
    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S
    linger_s: float | None = None
    time_budget_s: float | None = None

    def __post_init__(self) -> None:
        for name in ("dwell_s", "interval_s", "connect_timeout_s", "read_timeout_s"):
            _validate.positive(name, getattr(self, name))
        _validate.non_negative("hold_s", self.hold_s)
        for name in ("heartbeat_timeout_s", "linger_s", "time_budget_s"):
            _validate.optional_positive(name, getattr(self, name))
        _validate.positive_int("failures_to_down", self.failures_to_down)
        _validate.positive_int("baseline_beats", self.baseline_beats)
        bound = self.detection_bound_s
        if self.linger_s is not None and bound is not None and self.linger_s <= bound:
            raise _validate.fail(
                "linger_s",
                f"longer than the watchdog's detection bound ({bound:g} s = interval_s plus "
                "heartbeat_timeout_s): a device that hangs holding our sessions could see one reused before "
                "it is declared down",
                self.linger_s,
            )

    @property
    def detection_bound_s(self) -> float | None:
        """Longest time from a hang to its declaration, when the heartbeat timeout is known here."""
        if self.heartbeat_timeout_s is None:
            return None
        extra = (self.failures_to_down - 1) * max(self.interval_s, self.heartbeat_timeout_s)
        return self.interval_s + self.heartbeat_timeout_s + extra

    def __repr__(self) -> str:
        return _changed_repr(self)


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class RecoverySettings:
    """What happens after a crash. Its ``ConfigError.field`` names are characterize()'s keywords.

    Attributes:
        hook: Async callable that brings a crashed device back (see ``fragileprobe._recovery``; keyword
            ``recovery``); None: wait for it to come back by itself.
        healthy_beats: Good beats in a row that count as recovered.
        timeout_s: Bound on one recovery, hook plus healthy beats (keyword ``recovery_timeout_s``).
    """

    hook: Callable[..., Awaitable[Any]] | None = None
    healthy_beats: int = DEFAULT_HEALTHY_BEATS
    timeout_s: float = DEFAULT_RECOVERY_TIMEOUT_S

    def __post_init__(self) -> None:
        if self.hook is not None and not callable(self.hook):
            raise _validate.fail("recovery", "an async callable or None", self.hook)
        _validate.positive_int("healthy_beats", self.healthy_beats)
        _validate.positive("recovery_timeout_s", self.timeout_s)

    def __repr__(self) -> str:
        return _changed_repr(self)


# characterize()'s flat keywords -> (part of CharacterizeSettings, attribute): the one list of them.
OPTIONS: dict[str, tuple[str, str]] = {
    "ladder": ("ramp", "ladder"),
    "trials": ("ramp", "trials"),
    "refine": ("ramp", "refine"),
    "crash_budget": ("ramp", "crash_budget"),
    "margin_fraction": ("ramp", "margin_fraction"),
    **{f.name: ("timing", f.name) for f in dataclasses.fields(TimingSettings)},
    "recovery": ("recovery", "hook"),
    "healthy_beats": ("recovery", "healthy_beats"),
    "recovery_timeout_s": ("recovery", "timeout_s"),
    "early_warning": ("", "early_warning"),
}


class CharacterizeOptions(TypedDict, total=False):
    """characterize()'s flat keywords, for type checkers (the same names as :data:`OPTIONS`)."""

    ladder: Sequence[int]
    trials: int
    refine: bool
    crash_budget: int
    margin_fraction: float
    dwell_s: float
    hold_s: float
    interval_s: float
    heartbeat_timeout_s: float | None
    failures_to_down: int
    baseline_beats: int
    connect_timeout_s: float
    read_timeout_s: float
    linger_s: float | None
    time_budget_s: float | None
    recovery: Callable[..., Awaitable[Any]] | None
    healthy_beats: int
    recovery_timeout_s: float
    early_warning: EarlyWarning | None


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class CharacterizeSettings:
    """Everything :func:`~fragileprobe.characterize` measures with, validated once.

    Attributes:
        timing: Dwell, hold, heartbeat and session timing (:class:`TimingSettings`).
        recovery: The recovery hook and its bounds (:class:`RecoverySettings`).
        ramp: Ladder, trials, crash budget, margin (:class:`~fragileprobe.RampConfig`).
        early_warning: Stop climbing when the heartbeat slows (:class:`~fragileprobe.EarlyWarning`), or None.

    Example::

        settings = fp.CharacterizeSettings(
            timing=fp.TimingSettings(dwell_s=0.4, interval_s=0.1, hold_s=0.1),
            recovery=fp.RecoverySettings(hook=fp.emulator_recovery(pump), healthy_beats=2),
            ramp=fp.RampConfig(ladder=(2, 5, 7, 10), trials=3),
        )
        char = await fp.characterize(target, scope=scope, settings=settings)
    """

    timing: TimingSettings = field(default_factory=TimingSettings)
    recovery: RecoverySettings = field(default_factory=RecoverySettings)
    ramp: RampConfig = field(default_factory=RampConfig)
    early_warning: EarlyWarning | None = None

    def __post_init__(self) -> None:
        parts = (("timing", TimingSettings), ("recovery", RecoverySettings), ("ramp", RampConfig))
        for name, kind in parts:
            if not isinstance(getattr(self, name), kind):
                raise _validate.fail(name, f"a {kind.__name__}", getattr(self, name))
        if self.early_warning is not None and not isinstance(self.early_warning, EarlyWarning):
            raise _validate.fail("early_warning", "an EarlyWarning or None", self.early_warning)

    @classmethod
    def from_options(cls, **options: Any) -> CharacterizeSettings:
        """The settings from characterize()'s flat keywords (``dwell_s=0.4, ladder=(2, 5)``...).

        Raises:
            TypeError: A keyword characterize() does not take (as Python says for a function).
            ConfigError: A bad value (``field`` names its keyword).
        """
        return cls().replace(**options)

    def replace(self, **options: Unpack[CharacterizeOptions]) -> CharacterizeSettings:
        """A copy with some of the flat keywords changed: ``settings.replace(dwell_s=1.0, recovery=hook)``.

        Raises:
            TypeError: A keyword characterize() does not take.
            ConfigError: A bad value (``field`` names its keyword).
        """
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise TypeError(f"characterize() got an unexpected keyword argument {unknown[0]!r}")
        parts: dict[str, dict[str, Any]] = {"timing": {}, "recovery": {}, "ramp": {}, "": {}}
        for keyword, value in options.items():
            part, attribute = OPTIONS[keyword]
            parts[part][attribute] = _ladder(value) if keyword == "ladder" else value
        return dataclasses.replace(
            self,
            timing=dataclasses.replace(self.timing, **parts["timing"]),
            recovery=dataclasses.replace(self.recovery, **parts["recovery"]),
            ramp=dataclasses.replace(self.ramp, **parts["ramp"]),
            **parts[""],
        )

    def __repr__(self) -> str:
        return _changed_repr(self)


def _ladder(ladder: Any) -> Any:
    """A ladder as a tuple when it is iterable (RampConfig names the field for anything else)."""
    try:
        return tuple(ladder)
    except TypeError:
        return ladder


def check_settings(settings: object) -> CharacterizeSettings:
    """``settings`` when it is a :class:`CharacterizeSettings` (ConfigError naming ``settings`` if not)."""
    if not isinstance(settings, CharacterizeSettings):
        raise _validate.fail("settings", "a CharacterizeSettings", settings)
    return settings
