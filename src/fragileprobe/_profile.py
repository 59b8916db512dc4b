"""Characterization results and the safe-ceiling derivation (pure: no I/O, no clock).

Records, from small to large::

    LevelResult       one level of one trial: outcome, time into the dwell, sessions in flight, latencies
    TrialResult       one pass up the ramp: its levels in the order tested, its crashes
    Characterization  one device: every trial, the derived ceiling, the latency knee, a summary
    DeviceProfile     one device *model*: the characterizations of its devices, the lowest ceiling

The records hold data: their JSON layout (``to_dict``/``from_dict``, strict on input) and their DataFrame
columns come from their fields through :mod:`fragileprobe._codec` (the codecs at the end of this module);
plots and HTML are drawn by the report layer (``fragileprobe._report``), to which ``plot()`` and
``_repr_html_`` delegate.

The safe ceiling (see :func:`derive_ceiling` and docs/characterization.md). A level N is N sessions held
on the device at once, the heartbeat included, and a Guard at ceiling N holds at most that many::

    L = the lowest level that ever failed (crashed, or tripped the latency early warning), in any trial
    H = the highest level below L that passed in every trial in which it was tested (a pass counts at the
        sessions the device held, ``LevelResult.credited_level``)
    B = min(L, H + 1): the lowest level not known to be safe (L when the boundary was pinned, H + 1 when
        a gap below L was never resolved or when nothing failed)
    safe_ceiling = min(H, floor(B * (1 - margin_fraction)), B - margin_levels)      # never >= L

The margin is the larger of ``margin_fraction`` (15 %) and ``margin_levels`` (3) below ``B``, because a
device's threshold moves from boot to boot and a run may never see its lowest one: with thresholds that vary
by +-1 session, or by less than 8 %, around their middle, the recommendation is below the lowest threshold
any boot can draw whatever the trials happened to see (docs/characterization.md has the proof and the
benchmark). Every trial counts, complete or not, and every stored run of a model: a failure is never lost.

With no failure up to the top of the ladder there is no ceiling to find (``ceiling_found`` is False,
``failed_at`` None): ``highest_passed`` is the highest level tested, and the summary says that it was never
exceeded, not that it is a limit of the device. The recommendation still keeps the margin below ``H + 1``
(at least 1): a device whose limit lies just above the ladder's top passes the top level on most boots and
hangs on the next one (jitter), exactly as below a found limit. With ``margin_fraction=0`` and
``margin_levels=1`` the recommendation is the highest level tested.
"""

from __future__ import annotations

import collections.abc
import enum
import json
import math
import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from fragileprobe import _validate
from fragileprobe._codec import Codec, Computed, Field, dataframe
from fragileprobe._errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

__all__ = [
    "DEFAULT_KNEE_FACTOR",
    "DEFAULT_MARGIN_FRACTION",
    "DEFAULT_MARGIN_LEVELS",
    "FORMAT_VERSION",
    "Characterization",
    "CeilingDerivation",
    "DeviceProfile",
    "LevelOutcome",
    "LevelResult",
    "TrialResult",
    "check_margin_fraction",
    "check_margin_levels",
    "derive_ceiling",
    "latency_knee",
    "percentile",
]

# Netflix's concurrency-limits advises running at about 75% of a stress-tested tipping point. A 25% cut
# collapses the small ceilings fragile devices have; 15% covers a threshold that moves by less than 8 % of
# itself from boot to boot (0.85 (T + j) < T - j needs j < 0.081 T), which is what large ceilings need.
DEFAULT_MARGIN_FRACTION = 0.15
# Small ceilings need whole sessions of margin instead: a threshold that moves by +-1 session spans three
# values T-1..T+1, a run may only ever see T+1 fail, and then only B - 3 is below every boot's threshold.
# bench_ramp.py: 2 levels leave 9 of 809 recommendations unsafe, 3 leave none (docs/characterization.md).
DEFAULT_MARGIN_LEVELS = 3

# The latency knee is the first level whose median heartbeat latency reaches this multiple of the idle
# baseline. Two times the idle latency is the point where a queue has clearly formed on the device.
DEFAULT_KNEE_FACTOR = 2.0

# Serialized format version of Characterization.to_dict(); bumped when fields change meaning. 2: the
# margin rule with ``margin_levels`` (a format-1 document's ceiling was derived with the old rule).
FORMAT_VERSION = 2


class LevelOutcome(enum.Enum):
    """How one level of one trial ended."""

    PASSED = "passed"  # the device stayed alive (and, in early-warning mode, fast) through the dwell
    FAILED = "failed"  # the watchdog declared the device down: a crash that needed a recovery
    WARNED = "warned"  # early warning: heartbeat latency passed its limit; climbing stopped, no crash
    ABORTED = "aborted"  # the run stopped in the middle of this level (time budget): says nothing


def check_margin_fraction(value: float) -> float:
    """Validate a safety margin fraction (0 <= value < 1); raise ConfigError naming the field."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value < 1.0:
        raise _validate.fail("margin_fraction", "a number in [0, 1)", value)  # NaN fails the range test
    return float(value)


def check_margin_levels(value: int) -> int:
    """Validate a margin in whole levels (an integer >= 1); raise ConfigError naming the field."""
    return _validate.positive_int("margin_levels", value)


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """Nearest-rank percentile of ``values`` (``fraction`` in [0, 1]); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass(frozen=True, slots=True, kw_only=True)
class LevelResult:
    """One level of one trial.

    Attributes:
        level: Sessions kept in flight.
        outcome: How the level ended.
        dwell_s: The planned dwell.
        elapsed_s: Time from the start of the dwell to its end, or to the failure (time into dwell).
        in_flight_at_end: Probe sessions in flight at the failure (or at the end of the dwell).
        sessions_started: Probe sessions started during the level.
        sessions_failed: Probe sessions that did not complete (timeout, reset, refused, cancelled).
        latencies_s: Latencies of the successful heartbeats during the level, in order (the ones leading
            up to a failure, for a failed level).
        beats_failed: Heartbeats that failed during the level.
        latency_median_s: Median of ``latencies_s`` (None without beats).
        latency_p95_s: 95th percentile of ``latencies_s`` (None without beats).
        held_at_beats: Sessions the device held from us at each heartbeat under load, that beat included
            (the count on the device's side: established and not yet let go).
        held: The count the level is credited with: the lower median of ``held_at_beats`` (conservative: a
            sample taken while a session was being reopened can only lower it); None when not measured, as
            in documents written before this was recorded. Below ``level`` when the level could not be held
            (the device closed, reset or refused sessions faster than they were reopened).
    """

    level: int
    outcome: LevelOutcome
    dwell_s: float
    elapsed_s: float
    in_flight_at_end: int = 0
    sessions_started: int = 0
    sessions_failed: int = 0
    latencies_s: tuple[float, ...] = ()
    beats_failed: int = 0
    latency_median_s: float | None = None
    latency_p95_s: float | None = None
    held_at_beats: tuple[int, ...] = ()
    held: int | None = None

    def __post_init__(self) -> None:
        if self.latencies_s and self.latency_median_s is None:
            object.__setattr__(self, "latency_median_s", statistics.median(self.latencies_s))
        if self.latencies_s and self.latency_p95_s is None:
            object.__setattr__(self, "latency_p95_s", percentile(self.latencies_s, 0.95))
        if self.held_at_beats and self.held is None:
            object.__setattr__(self, "held", statistics.median_low(self.held_at_beats))

    @property
    def credited_level(self) -> int:
        """The session count this level's outcome speaks for: ``level``, or less if it was not held."""
        return self.level if self.held is None else min(self.level, self.held)

    @property
    def not_held(self) -> bool:
        """True when the device held fewer sessions than the level asked for."""
        return self.held is not None and self.held < self.level

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-able dict (round-trips through :meth:`from_dict`)."""
        return _LEVELS.encode(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LevelResult:
        """Rebuild from :meth:`to_dict` output.

        Raises:
            ConfigError: A value of the wrong type or a missing key (``field`` names it).
        """
        return _LEVELS.decode(data)


@dataclass(frozen=True, slots=True, kw_only=True)
class TrialResult:
    """One trial: a pass up the ramp, ended by its plan, its crash budget or the time budget.

    Attributes:
        index: 0-based trial number.
        levels: Levels in the order tested.
        wall_time_s: Time the trial took, recoveries included.
        complete: False if the run stopped inside this trial (time budget, failed recovery).
    """

    index: int
    levels: tuple[LevelResult, ...]
    wall_time_s: float = 0.0
    complete: bool = True

    @property
    def crashes(self) -> int:
        """Levels of this trial that crashed the device."""
        return sum(1 for lv in self.levels if lv.outcome is LevelOutcome.FAILED)

    @property
    def outcomes(self) -> tuple[tuple[int, LevelOutcome], ...]:
        """``(level, outcome)`` pairs in test order (what the ramp strategy reads on resume)."""
        return tuple((lv.level, lv.outcome) for lv in self.levels)

    @property
    def credited_outcomes(self) -> tuple[tuple[int, LevelOutcome], ...]:
        """What the ceiling derivation reads: every level at the sessions the device held
        (``credited_level``). A pass speaks only for what was held; a failure or warning came with at most
        that load, so it bounds the ceiling there too (crediting it at the level offered could bound it
        above the load that really did it)."""
        return tuple((lv.credited_level, lv.outcome) for lv in self.levels)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-able dict (round-trips through :meth:`from_dict`)."""
        return _TRIALS.encode(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrialResult:
        """Rebuild from :meth:`to_dict` output.

        Raises:
            ConfigError: A value of the wrong type or a missing key (``field`` names it).
        """
        return _TRIALS.decode(data)


@dataclass(frozen=True, slots=True, kw_only=True)
class CeilingDerivation:
    """What :func:`derive_ceiling` concluded, with the numbers it used.

    Attributes:
        failed_at: Lowest level that ever crashed the device (None: never crashed).
        warned_at: Lowest level that tripped the latency early warning (None: never).
        limit: ``L`` = the lower of ``failed_at`` and ``warned_at`` (None: neither happened).
        highest_passed: ``H`` = highest level below ``L`` that passed in every trial that tested it.
        safe_ceiling: The recommended maximum of sessions on the device at once, heartbeat included (0: not
            even one is safe; None: nothing passed and nothing failed, i.e. no data).
        ceiling_found: Whether a limit was found below the top of the ladder.
        margin_fraction: The fractional margin applied below ``B = min(L, H + 1)``.
        margin_levels: The margin in whole levels applied below ``B``.
    """

    failed_at: int | None
    warned_at: int | None
    limit: int | None
    highest_passed: int | None
    safe_ceiling: int | None
    ceiling_found: bool
    margin_fraction: float
    margin_levels: int = DEFAULT_MARGIN_LEVELS


def derive_ceiling(
    trials: Iterable[Iterable[tuple[int, LevelOutcome]]],
    *,
    margin_fraction: float = DEFAULT_MARGIN_FRACTION,
    margin_levels: int = DEFAULT_MARGIN_LEVELS,
) -> CeilingDerivation:
    """Derive the safe ceiling from every trial's ``(level, outcome)`` observations.

    Every trial counts, finished or not: pass the unfinished ones too (a crash is evidence however the
    trial ended). The result does not depend on the order of the trials or of the levels in them.

    Args:
        trials: Per trial, the levels tested and their outcomes (ABORTED levels are ignored).
        margin_fraction: Fractional safety margin below ``B`` (see the module docstring), in [0, 1).
        margin_levels: Safety margin in whole levels below ``B``, at least 1.

    Returns:
        The derivation; ``safe_ceiling`` is below every level that ever failed and was passed in every
        trial that tested it.

    Raises:
        ConfigError: ``margin_fraction`` is outside [0, 1) or ``margin_levels`` is not an integer >= 1.
    """
    margin = check_margin_fraction(margin_fraction)
    levels = check_margin_levels(margin_levels)
    failed: set[int] = set()
    warned: set[int] = set()
    passed_everywhere: dict[int, bool] = {}
    for trial in trials:
        for level, outcome in trial:
            if outcome is LevelOutcome.FAILED:
                failed.add(level)
                passed_everywhere[level] = False
            elif outcome is LevelOutcome.WARNED:
                warned.add(level)
                passed_everywhere[level] = False
            elif outcome is LevelOutcome.PASSED:
                passed_everywhere.setdefault(level, True)
    failed_at = min(failed) if failed else None
    warned_at = min(warned) if warned else None
    limits = [x for x in (failed_at, warned_at) if x is not None]
    limit = min(limits) if limits else None
    candidates = [lv for lv, ok in passed_everywhere.items() if ok and (limit is None or lv < limit)]
    highest = max(candidates) if candidates else None
    if highest is None:
        safe = None if limit is None else 0  # nothing passed: no data, or not even one session is safe
    else:
        bound = highest + 1 if limit is None else min(limit, highest + 1)
        safe = min(highest, math.floor(bound * (1.0 - margin)), bound - levels)
        # Never failed: at least one session (the device took every level tested). Otherwise never below 0;
        # and B <= L with margin_levels >= 1 keeps it below every failure.
        safe = max(1, safe) if limit is None else max(0, safe)
    return CeilingDerivation(
        failed_at=failed_at,
        warned_at=warned_at,
        limit=limit,
        highest_passed=highest,
        safe_ceiling=safe,
        ceiling_found=limit is not None,
        margin_fraction=margin,
        margin_levels=levels,
    )


def latency_knee(
    levels: Iterable[LevelResult],
    baseline_s: float | None,
    *,
    factor: float = DEFAULT_KNEE_FACTOR,
) -> int | None:
    """The lowest level whose median heartbeat latency reached ``factor`` times the idle baseline.

    Levels from all trials are pooled (per level, the median of the per-level medians). Without a baseline
    the median latency at the lowest level tested stands in for it.

    Returns:
        The knee level, or None if latency never rose that far.
    """
    by_level: dict[int, list[float]] = {}
    for lv in levels:
        if lv.latency_median_s is not None:
            by_level.setdefault(lv.level, []).append(lv.latency_median_s)
    if not by_level:
        return None
    ordered = sorted(by_level)
    base = (
        baseline_s if baseline_s is not None and baseline_s > 0 else statistics.median(by_level[ordered[0]])
    )
    if base <= 0:
        return None
    for level in ordered:
        if statistics.median(by_level[level]) >= factor * base:
            return level
    return None


@dataclass(frozen=True, slots=True, kw_only=True)
class Characterization:
    """Everything one characterization run of one device observed, and what it concluded.

    Build it with :meth:`from_trials` (which runs the derivation) rather than by hand.

    Attributes:
        host: The device's address.
        model_key: The device model's key (see ``fragileprobe._fingerprint.model_key``).
        name: A user-given name, if any.
        ladder: The ladder of levels the run climbed.
        trials: Every trial, in order.
        margin_fraction: The fractional safety margin used.
        margin_levels: The safety margin in whole levels used.
        baseline_latency_s: Idle heartbeat latency measured before the ramp.
        early_warning_factor: Latency multiple that stopped climbing (None: early warning off).
        safe_ceiling, failed_at, warned_at, highest_passed, ceiling_found: See :class:`CeilingDerivation`.
        latency_knee: See :func:`latency_knee`.
        wall_time_s: Time the whole run took.
        stop_reason: Why the run stopped: ``complete``, ``time_budget``, ``recovery_failed``, ...
        run_id: The store's id for the run (None if not stored).
        started_at_epoch_s: Wall-clock start (seconds since the Unix epoch).
    """

    host: str
    model_key: str | None
    name: str | None = None
    ladder: tuple[int, ...]
    trials: tuple[TrialResult, ...]
    margin_fraction: float = DEFAULT_MARGIN_FRACTION
    margin_levels: int = DEFAULT_MARGIN_LEVELS
    baseline_latency_s: float | None = None
    early_warning_factor: float | None = None
    safe_ceiling: int | None = None
    failed_at: int | None = None
    warned_at: int | None = None
    highest_passed: int | None = None
    ceiling_found: bool = False
    latency_knee: int | None = None
    wall_time_s: float = 0.0
    stop_reason: str = "complete"
    run_id: str | None = None
    started_at_epoch_s: float = 0.0

    @classmethod
    def from_trials(
        cls,
        *,
        host: str,
        model_key: str | None,
        ladder: Sequence[int],
        trials: Sequence[TrialResult],
        margin_fraction: float = DEFAULT_MARGIN_FRACTION,
        margin_levels: int = DEFAULT_MARGIN_LEVELS,
        baseline_latency_s: float | None = None,
        early_warning_factor: float | None = None,
        name: str | None = None,
        wall_time_s: float = 0.0,
        stop_reason: str = "complete",
        run_id: str | None = None,
        started_at_epoch_s: float = 0.0,
    ) -> Characterization:
        """Build a characterization and derive its ceiling and knee from the trials (every one of them,
        finished or not)."""
        derivation = derive_ceiling(
            (t.credited_outcomes for t in trials),
            margin_fraction=margin_fraction,
            margin_levels=margin_levels,
        )
        knee = latency_knee(
            (lv for t in trials for lv in t.levels),
            baseline_latency_s,
            factor=early_warning_factor or DEFAULT_KNEE_FACTOR,
        )
        return cls(
            host=host,
            model_key=model_key,
            name=name,
            ladder=tuple(ladder),
            trials=tuple(trials),
            margin_fraction=derivation.margin_fraction,
            margin_levels=derivation.margin_levels,
            baseline_latency_s=baseline_latency_s,
            early_warning_factor=early_warning_factor,
            safe_ceiling=derivation.safe_ceiling,
            failed_at=derivation.failed_at,
            warned_at=derivation.warned_at,
            highest_passed=derivation.highest_passed,
            ceiling_found=derivation.ceiling_found,
            latency_knee=knee,
            wall_time_s=wall_time_s,
            stop_reason=stop_reason,
            run_id=run_id,
            started_at_epoch_s=started_at_epoch_s,
        )

    def rederived(self, trials: Sequence[TrialResult] | None = None) -> Characterization:
        """The same run with its ceiling and knee derived again from ``trials`` (default: its own).

        Whatever a stored or imported record says about its ceiling, this is what its trials support.
        """
        return Characterization.from_trials(
            host=self.host,
            model_key=self.model_key,
            ladder=self.ladder,
            trials=self.trials if trials is None else trials,
            margin_fraction=self.margin_fraction,
            margin_levels=self.margin_levels,
            baseline_latency_s=self.baseline_latency_s,
            early_warning_factor=self.early_warning_factor,
            name=self.name,
            wall_time_s=self.wall_time_s,
            stop_reason=self.stop_reason,
            run_id=self.run_id,
            started_at_epoch_s=self.started_at_epoch_s,
        )

    def disagreements(self, *, exact: bool = True) -> list[str]:
        """How what this record states differs from what its trials derive (empty: it agrees).

        Args:
            exact: Compare every derived field for equality (a record of the current format). False:
                a record derived by an older margin rule; only require that its ``safe_ceiling`` is below
                every level that failed in its trials and not above ``H``, the highest level they passed.

        Returns:
            One ``"field: stated X, its trials give Y"`` text per disagreement.
        """
        derived = self.rederived()
        fields = ("safe_ceiling", "failed_at", "warned_at", "highest_passed", "ceiling_found")
        if exact:
            return [
                f"{f}: stated {getattr(self, f)!r}, its trials give {getattr(derived, f)!r}"
                for f in fields
                if getattr(self, f) != getattr(derived, f)
            ]
        stated = self.safe_ceiling
        if stated is None or derived.safe_ceiling is None:
            same = stated == derived.safe_ceiling
        else:
            above = [x for x in (derived.limit, (derived.highest_passed or 0) + 1) if x is not None]
            same = 0 <= stated < min(above) if derived.ceiling_found else 1 <= stated < min(above)
        if same:
            return []
        return [f"safe_ceiling: stated {stated!r}, its trials give {derived.safe_ceiling!r}"]

    @property
    def limit(self) -> int | None:
        """The lowest level that failed (crash or early warning), the ``L`` of the derivation."""
        values = [x for x in (self.failed_at, self.warned_at) if x is not None]
        return min(values) if values else None

    @property
    def margin_text(self) -> str:
        """The margin in words, e.g. ``the larger of 15 % and 3 sessions``."""
        n = self.margin_levels
        return f"the larger of {self.margin_fraction:.0%} and {n} session{'s' if n != 1 else ''}"

    @property
    def crashes(self) -> int:
        """Crashes over all trials (each one needed a recovery)."""
        return sum(t.crashes for t in self.trials)

    @property
    def crash_levels(self) -> tuple[int, ...]:
        """Every level that crashed the device, in the order it happened."""
        return tuple(lv.level for t in self.trials for lv in t.levels if lv.outcome is LevelOutcome.FAILED)

    @property
    def levels_tested(self) -> int:
        """Level tests over all trials."""
        return sum(len(t.levels) for t in self.trials)

    @property
    def max_level_tested(self) -> int | None:
        """Highest level any trial tested."""
        levels = [lv.level for t in self.trials for lv in t.levels]
        return max(levels) if levels else None

    def summary(self) -> str:
        """A plain-language summary for people."""
        who = self.host if not self.name else f"{self.name} ({self.host})"
        model = f", model {self.model_key}" if self.model_key else ""
        n = len(self.trials)
        head = (
            f"{who}{model}: {n} trial{'s' if n != 1 else ''}, {self.levels_tested} level tests, "
            f"{self.crashes} crash{'es' if self.crashes != 1 else ''}, {self.wall_time_s:.1f} s."
        )
        lines = [head]
        if self.safe_ceiling is None:
            lines.append("No level was tested to the end, so there is no recommendation.")
        elif not self.ceiling_found:
            lines.append(
                f"No ceiling found up to {self.max_level_tested} concurrent sessions: the device never "
                f"failed; {self.highest_passed} is the highest level tested (never exceeded, so it is not "
                f"a limit of the device). Recommended maximum: {self.safe_ceiling} sessions "
                f"({self.margin_text} below {(self.highest_passed or 0) + 1}, in case the limit lies just "
                "above the highest level tested)."
            )
        else:
            if self.failed_at is not None:
                lines.append(f"Lowest level that crashed the device: {self.failed_at} concurrent sessions.")
            if self.warned_at is not None:
                lines.append(
                    f"Heartbeat latency passed {self.early_warning_factor:g}x the idle baseline at "
                    f"{self.warned_at} sessions (early warning; climbing stopped there)."
                )
            if self.highest_passed is not None:
                lines.append(f"Highest level that passed in every trial below that: {self.highest_passed}.")
            hp = self.highest_passed
            bound = self.limit if hp is None else min(self.limit or 0, hp + 1)
            if self.safe_ceiling == 0:
                lines.append(
                    f"Safe ceiling: 0 - the device failed within the safety margin ({self.margin_text} "
                    f"below {bound}); do not scan it."
                )
            else:
                what = "the lowest failing level" if bound == self.limit else "the first level not passed"
                lines.append(
                    f"Safe ceiling: {self.safe_ceiling} concurrent sessions "
                    f"({self.margin_text} below {what}, {bound})."
                )
        if self.latency_knee is not None:
            factor = self.early_warning_factor or DEFAULT_KNEE_FACTOR
            lines.append(
                f"Latency knee: the median heartbeat latency first reached {factor:g}x the idle baseline at "
                f"{self.latency_knee} concurrent session{'s' if self.latency_knee != 1 else ''}."
            )
        if self.stop_reason != "complete":
            lines.append(f"The run stopped early: {self.stop_reason.replace('_', ' ')}.")
        unheld = sorted({(lv.level, lv.held) for t in self.trials for lv in t.levels if lv.not_held})
        if unheld:
            what = ", ".join(f"{level} (held {held})" for level, held in unheld)
            lines.append(
                f"Not held on the device (it closed or refused sessions faster than they were "
                f"reopened), credited only with what it held: {what}."
            )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-able dict (round-trips through :meth:`from_dict`).

        Its keys are the fields, plus ``format`` (:data:`FORMAT_VERSION`) first and the derived ``crashes``
        after ``latency_knee`` (written for readers of the file; not read back).
        """
        return _CHARACTERIZATIONS.encode(self)

    def to_json(self, *, indent: int | None = None) -> str:
        """Return :meth:`to_dict` as JSON text."""
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Characterization:
        """Rebuild from :meth:`to_dict` output (any format up to :data:`FORMAT_VERSION`).

        Raises:
            ConfigError: The data is from a newer format, holds a value of the wrong type or misses a
                required key (``field`` names it: ``trials[0].levels[1].level``).
        """
        if isinstance(data, collections.abc.Mapping) and "format" in data:
            _check_format(data["format"])
        return _CHARACTERIZATIONS.decode(data)

    @classmethod
    def from_json(cls, text: str) -> Characterization:
        """Rebuild from :meth:`to_json` output."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"characterization JSON is malformed: {exc}") from exc
        return cls.from_dict(data)

    def to_dataframe(self) -> Any:
        """One row per tested level per trial, as a pandas DataFrame (needs ``fragileprobe[report]``).

        Columns: ``trial`` (its index), ``order`` (0-based, within the trial), then one per field of
        :class:`LevelResult` in field order, where ``beats`` counts ``latencies_s`` and ``held_at_beats``
        is left out: level, outcome, dwell_s, elapsed_s, in_flight_at_end, sessions_started,
        sessions_failed, beats, beats_failed, latency_median_s, latency_p95_s, held.
        """
        rows = (
            {"trial": t.index, "order": i, **_LEVELS.row(lv)}
            for t in self.trials
            for i, lv in enumerate(t.levels)
        )
        return dataframe(rows, ("trial", "order", *_LEVELS.columns()))

    def _repr_html_(self) -> str:
        """A readable summary in Jupyter, drawn by the report layer.

        Jupyter's display protocol looks this method up on the object, so it stays here; it is one of the
        layering test's allowed upward imports.
        """
        from fragileprobe._report import characterization_repr_html

        return characterization_repr_html(self)

    def plot(self, ax: Any = None) -> Any:
        """Plot heartbeat latency against concurrency: :func:`fragileprobe._report.latency_plot` (the README
        tour's ``char.plot()``; one of the layering test's allowed upward imports).

        Needs ``fragileprobe[report]``. Uses matplotlib's object API (no pyplot state is touched).

        Args:
            ax: A matplotlib Axes to draw on; a new Figure is made if None.

        Returns:
            The matplotlib Figure.
        """
        from fragileprobe._report import latency_plot

        return latency_plot(self, ax)


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceProfile:
    """The characterizations of one device model, aggregated.

    Every failure of every characterization bounds the profile's ceiling: it is the lower of (a) each
    characterization's ceiling derived again from its own trials (whatever its record states) and (b) the
    derivation over the trials of all of them pooled (the widest margin any of them used), so it is never
    above any single device's and never at or above a level that failed on any device of the model.

    Attributes:
        model_key: The model's key.
        characterizations: The runs that make up the profile, oldest first (finished or not).
    """

    model_key: str
    characterizations: tuple[Characterization, ...]

    @property
    def derivation(self) -> CeilingDerivation | None:
        """The derivation over every trial of every characterization (None without any)."""
        chars = self.characterizations
        if not chars:
            return None
        return derive_ceiling(
            (t.credited_outcomes for c in chars for t in c.trials),
            margin_fraction=max(c.margin_fraction for c in chars),
            margin_levels=max(c.margin_levels for c in chars),
        )

    @property
    def ceiling(self) -> int | None:
        """The recommended maximum for the model (None without any data)."""
        pooled = self.derivation
        values = [c.rederived().safe_ceiling for c in self.characterizations]
        if pooled is not None:
            values.append(pooled.safe_ceiling)
        known = [v for v in values if v is not None]
        return min(known) if known else None

    @property
    def ceiling_found(self) -> bool:
        """Whether any device of the model failed below the top of its ladder."""
        pooled = self.derivation
        return pooled is not None and pooled.ceiling_found

    @property
    def failed_at(self) -> int | None:
        """The lowest level that crashed any device of the model, in any trial."""
        pooled = self.derivation
        return None if pooled is None else pooled.failed_at

    @property
    def devices(self) -> tuple[str, ...]:
        """Distinct device addresses characterized, in first-seen order."""
        return tuple(dict.fromkeys(c.host for c in self.characterizations))

    @property
    def crashes(self) -> int:
        """Crashes over all characterizations."""
        return sum(c.crashes for c in self.characterizations)

    def summary(self) -> str:
        """A plain-language summary for people."""
        n = len(self.devices)
        ceiling = self.ceiling
        if ceiling is None:
            verdict = "no recommendation yet"
        elif not self.ceiling_found:
            verdict = f"no ceiling found (never failed); recommended at most {ceiling} sessions"
        else:
            verdict = f"safe ceiling {ceiling} concurrent sessions (lowest crash at {self.failed_at})"
        return (
            f"model {self.model_key}: {n} device{'s' if n != 1 else ''}, "
            f"{len(self.characterizations)} characterization(s), {self.crashes} crashes; {verdict}."
        )

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-able dict: the model key, the derived ``ceiling``, ``ceiling_found``,
        ``failed_at`` and ``devices``, and every characterization's :meth:`Characterization.to_dict`."""
        return _PROFILES.encode(self)


# --- the codecs: the JSON layout and the DataFrame columns, from the fields -------------------------------


def _check_format(fmt: Any) -> None:
    """A document's ``format`` must be an integer no newer than :data:`FORMAT_VERSION`."""
    if isinstance(fmt, bool) or not isinstance(fmt, int):
        bad = _validate.fail("format", "an integer", fmt)
        raise ConfigError(f"characterization data is malformed: {bad}", field="format")
    if fmt > FORMAT_VERSION:
        raise ConfigError(
            f"characterization format {fmt} is newer than this fragileprobe ({FORMAT_VERSION})",
            field="format",
        )


_LEVELS: Final = Codec(
    LevelResult,
    label="level",
    fields={"latencies_s": Field(column="beats", cell=len), "held_at_beats": Field(column="")},
)
_TRIALS: Final = Codec(TrialResult, label="trial", fields={"levels": Field(missing=())})
_CHARACTERIZATIONS: Final = Codec(
    Characterization,
    label="characterization",
    computed=(
        Computed("format", lambda c: FORMAT_VERSION),
        Computed("crashes", lambda c: c.crashes, after="latency_knee"),
    ),
)
_PROFILES: Final = Codec(
    DeviceProfile,
    label="profile",
    computed=(
        Computed("ceiling", lambda p: p.ceiling, after="model_key"),
        Computed("ceiling_found", lambda p: p.ceiling_found, after="model_key"),
        Computed("failed_at", lambda p: p.failed_at, after="model_key"),
        Computed("devices", lambda p: list(p.devices), after="model_key"),
    ),
)
