"""Evidence is never lost (issue 10): every failure ever observed for a model bounds its ceiling.

Unfinished trials, resumed runs, every stored run of a model and imported documents included; a stored
trial is never overwritten; resume refuses any setting that changes what a level measures; an imported
document's ceiling is derived again from its own trials. Plus the derivation's properties, among them the
one the margin is chosen for: whatever boots a run happened to see, the recommendation stays below every
threshold the device can draw when that threshold moves by +-1 session or by less than 8 %.
"""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from _support.timings import FAST_CHARACTERIZE
from fragileprobe._characterize import EarlyWarning, characterize
from fragileprobe._errors import ConfigError, RecoveryError, StoreError
from fragileprobe._heartbeat import HttpHeartbeat, TcpHeartbeat
from fragileprobe._profile import (
    DEFAULT_MARGIN_LEVELS,
    Characterization,
    DeviceProfile,
    LevelOutcome,
    LevelResult,
    TrialResult,
    derive_ceiling,
)
from fragileprobe._recovery import emulator_recovery
from fragileprobe._scope import Scope, Target
from fragileprobe._store import ProfileStore
from fragileprobe.emulator import EmulatedDevice

if TYPE_CHECKING:
    from collections.abc import Sequence

P, F, W, A = LevelOutcome.PASSED, LevelOutcome.FAILED, LevelOutcome.WARNED, LevelOutcome.ABORTED
FAST: dict[str, Any] = FAST_CHARACTERIZE


def _lv(level: int, outcome: LevelOutcome) -> LevelResult:
    return LevelResult(level=level, outcome=outcome, dwell_s=0.1, elapsed_s=0.1)


def _trial(index: int, *levels: tuple[int, LevelOutcome], complete: bool = True) -> TrialResult:
    return TrialResult(index=index, levels=tuple(_lv(n, oc) for n, oc in levels), complete=complete)


def _char(trials: Sequence[TrialResult], host: str = "127.0.0.9", model: str = "pump-x") -> Characterization:
    return Characterization.from_trials(host=host, model_key=model, ladder=(1, 2, 5, 7, 10), trials=trials)


async def _broken_power_strip() -> None:
    raise OSError("power strip not reachable")


def _target(dev: EmulatedDevice, *, ports: Sequence[int] | None = None, heartbeat: Any = None) -> Target:
    hb = heartbeat or HttpHeartbeat(port=dev.web_port, timeout_s=0.25)
    return Target(dev.host, ports=tuple(ports or dev.ports.values()), heartbeat=hb)


# --- the store never overwrites a trial -------------------------------------------------------------------


def test_a_stored_trial_is_never_overwritten(tmp_path: Path) -> None:
    """Writing another trial under a stored index is a StoreError and the first one stays; writing the same
    trial again is a no-op (finish_run writes every trial of its result)."""
    crash = _trial(0, (1, P), (2, P), (5, F), complete=False)
    redo = _trial(0, (1, P), (2, P), (5, P), (7, P))
    with ProfileStore(tmp_path / "s.db") as store:
        run = store.begin_run(host="127.0.0.9", model_key="pump-x", params={})
        store.record_trial(run, crash)
        store.record_trial(run, crash)  # the same observations again: nothing changes
        with pytest.raises(StoreError, match="never overwritten"):
            store.record_trial(run, redo)
        with pytest.raises(StoreError, match="never overwritten"):
            store.finish_run(run, _char([redo]))
        assert store.trials(run) == (crash,)
        assert store.unfinished_run(host="127.0.0.9", model_key="pump-x") is not None  # finish rolled back


# --- every stored run of a model, finished or not ---------------------------------------------------------


def test_a_run_stopped_by_a_failed_recovery_bounds_the_models_ceiling(tmp_path: Path) -> None:
    """A run that ended with a failed recovery and was never resumed: its crash at 5 still bounds the model's
    ceiling, although another device of the model never failed up to 10."""
    with ProfileStore(tmp_path / "s.db") as store:
        run = store.begin_run(host="127.0.0.9", model_key="pump-x", params={"ladder": [1, 2, 5, 7, 10]})
        store.record_trial(run, _trial(0, (1, P), (2, P), (5, F), complete=False))
        store.mark_run(run, "recovery_failed")
        store.save(_char([_trial(0, (1, P), (2, P), (5, P), (7, P), (10, P))], host="127.0.0.10"))
        ceiling = store.ceiling_for("pump-x")
        assert ceiling is not None
        assert ceiling < 5
        profile = store.profile("pump-x")
        assert profile is not None
        assert profile.failed_at == 5
        assert set(profile.devices) == {"127.0.0.9", "127.0.0.10"}
        unfinished = [c for c in store.history("pump-x", unfinished=True) if c.stop_reason != "complete"]
        assert [c.stop_reason for c in unfinished] == ["recovery_failed"]
        assert [c.host for c in store.history("pump-x")] == ["127.0.0.10"]  # finished runs only, by default


def test_a_stored_result_never_outlives_its_trial_rows(tmp_path: Path) -> None:
    """A finished run whose stored result lacks a trial row the store holds (what the old resume wrote):
    the row's crash is merged back and the ceiling derived again, never read from the stored result."""
    with ProfileStore(tmp_path / "s.db") as store:
        run = store.begin_run(host="127.0.0.9", model_key="pump-x", params={})
        store.record_trial(run, _trial(0, (1, P), (2, P), (5, P), (7, F), complete=False))
        clean = _char([_trial(1, (1, P), (2, P), (5, P), (7, P), (10, P))])
        assert clean.safe_ceiling is not None
        assert clean.safe_ceiling >= 7  # what the result alone would recommend: the level that crashed it
        store.finish_run(run, clean)
        (char,) = store.history("pump-x")
        assert [t.index for t in char.trials] == [0, 1]
        assert char.failed_at == 7
        assert char.safe_ceiling is not None
        assert char.safe_ceiling < 7
        assert store.ceiling_for("pump-x") == char.safe_ceiling


def test_a_profiles_ceiling_is_derived_from_trials_not_from_stated_ceilings() -> None:
    """A characterization record that states a ceiling its trials do not support cannot raise the
    profile's ceiling: each one is derived again, and the trials of all of them are pooled."""
    honest = _char([_trial(0, (1, P), (2, P), (5, P), (7, P), (10, F), (8, P), (9, P))])
    lying = Characterization(
        host="127.0.0.10",
        model_key="pump-x",
        ladder=(1, 2, 5),
        trials=(_trial(0, (1, P), (2, F)),),
        safe_ceiling=40,
        failed_at=None,
        highest_passed=2,
        ceiling_found=False,
    )
    profile = DeviceProfile(model_key="pump-x", characterizations=(honest, lying))
    assert profile.ceiling == 0  # the crash at 2 (B = 2, three levels of margin): do not scan
    assert profile.failed_at == 2


def test_a_pass_counts_only_at_the_sessions_the_device_held() -> None:
    """Level 5 passed while the device held only 3 (it closed sessions faster than they were reopened):
    the derivation credits 3, so the recommendation stays three levels below 4, not below 6; a failure
    still counts at the level offered. The profile reads the same credited view."""
    short = LevelResult(level=5, outcome=P, dwell_s=0.1, elapsed_s=0.1, held_at_beats=(3, 3, 4))
    trial = TrialResult(index=0, levels=(_lv(2, P), short, _lv(7, F)))
    char = _char([trial])
    assert trial.credited_outcomes == ((2, P), (3, P), (7, F))
    assert char.highest_passed == 3
    assert char.failed_at == 7
    assert char.safe_ceiling == 1  # B = 4: min(3, floor(4 * 0.85), 4 - 3)
    assert derive_ceiling([trial.outcomes]).safe_ceiling == 3  # what crediting the level offered gave
    assert DeviceProfile(model_key="pump-x", characterizations=(char,)).ceiling == 1


# --- resume: the unfinished trial's crash is kept, the redone trial is a new trial ------------------------


async def test_resume_after_a_failed_recovery_keeps_the_crash_of_the_unfinished_trial(
    loopback_host: str, tmp_path: Path
) -> None:
    """Boot 1 crashes at level 7 and the recovery fails; after a fix by hand the device takes every level
    (its threshold moved). Resumed: the crash at 7 still bounds the ceiling (the old code recommended 7
    itself), the redone trial is stored under a new index and the unfinished one is still there."""
    store = ProfileStore(tmp_path / "p.db")
    settings_: dict[str, Any] = {"ladder": (1, 4, 7, 9), "trials": 1, "model_key": "pump-moves", **FAST}
    # threshold 7 crashes level 7 whether the heartbeat is counted inside the level or on top of it
    async with EmulatedDevice(loopback_host, threshold=7, jitter=0, boot_delay_s=0.05) as dev:
        with capture_logs(), pytest.raises(RecoveryError) as info:
            await characterize(
                _target(dev), scope=Scope([dev.host]), recovery=_broken_power_strip, store=store, **settings_
            )
    partial = info.value.partial  # type: ignore[attr-defined]
    assert partial.crash_levels == (7,)
    async with EmulatedDevice(loopback_host, threshold=30, jitter=0, boot_delay_s=0.05) as dev:
        with capture_logs():
            char = await characterize(
                _target(dev),
                scope=Scope([dev.host]),
                recovery=emulator_recovery(dev),
                store=store,
                resume=True,
                **settings_,
            )
        assert dev.stats.crashes == 0  # the redone trial passed every level: only the first crash says 7
    assert char.run_id == partial.run_id
    assert [(t.index, t.complete) for t in char.trials] == [(0, False), (1, True)]
    assert char.failed_at == 7
    assert char.crash_levels == (7,)
    assert char.safe_ceiling is not None
    assert char.safe_ceiling < 7
    row = store.run(char.run_id or "")
    assert row is not None
    assert [(t.index, t.complete, t.crashes) for t in row.trials] == [(0, False, 1), (1, True, 0)]
    assert store.ceiling_for("pump-moves") == char.safe_ceiling
    store.close()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"ports": "first two"}, "ports"),
        ({"heartbeat": "other path"}, "heartbeat"),
        ({"heartbeat": "tcp"}, "heartbeat"),
        ({"early_warning": EarlyWarning(latency_factor=3.0)}, "early_warning"),
        ({"margin_fraction": 0.25}, "margin_fraction"),
        ({"ladder": (1, 2, 3)}, "ladder"),
        ({"dwell_s": 0.3}, "dwell_s"),
        ({"hold_s": 0.05}, "hold_s"),
        ({"linger_s": 0.5}, "linger_s"),
    ],
)
async def test_resume_refuses_any_setting_that_changes_what_is_measured(
    loopback_host: str, tmp_path: Path, change: dict[str, Any], field: str
) -> None:
    """Resume with other session ports, another heartbeat (kind, port or path), early warning, margin,
    linger, ladder, dwell or hold: ConfigError naming the field and both values; the stored run is
    untouched."""
    store = ProfileStore(tmp_path / "p.db")
    base: dict[str, Any] = {"ladder": (1, 2, 5), "model_key": "pump-t3", **FAST}
    async with EmulatedDevice(loopback_host, threshold=3, jitter=0, boot_delay_s=0.05) as dev:
        with capture_logs(), pytest.raises(RecoveryError):
            await characterize(
                _target(dev), scope=Scope([dev.host]), recovery=_broken_power_strip, store=store, **base
            )
        row = store.unfinished_run(host=dev.host, model_key="pump-t3")
        assert row is not None
        before = store.trials(row.run_id)
        await dev.power_cycle()
        kwargs = {**base, **{k: v for k, v in change.items() if k not in ("ports", "heartbeat")}}
        target = _target(dev)
        if change.get("ports") == "first two":
            target = _target(dev, ports=list(dev.ports.values())[:2])
        if change.get("heartbeat") == "other path":
            target = _target(dev, heartbeat=HttpHeartbeat(port=dev.web_port, path="/status", timeout_s=0.25))
        if change.get("heartbeat") == "tcp":
            target = _target(dev, heartbeat=TcpHeartbeat(dev.web_port, timeout_s=0.25))
        with capture_logs(), pytest.raises(ConfigError, match=rf"resume: .*{field}=.*not {field}=") as info:
            await characterize(
                target,
                scope=Scope([dev.host]),
                recovery=emulator_recovery(dev),
                store=store,
                resume=True,
                **kwargs,
            )
    assert f"{field}={row.params[field]!r}, not {field}=" in str(info.value)  # both values, stored first
    assert store.trials(row.run_id) == before
    assert store.unfinished_run(host=loopback_host, model_key="pump-t3") is not None
    store.close()


# --- import_json ------------------------------------------------------------------------------------------


def _document(*chars: dict[str, Any]) -> str:
    return json.dumps({"fragileprobe_store": 1, "characterizations": list(chars)})


def test_import_refuses_a_document_whose_ceiling_disagrees_with_its_trials(tmp_path: Path) -> None:
    """A document stating safe_ceiling 40 whose trials crashed at 2: ConfigError naming 40 and what its
    trials give; nothing of the document is stored (not even its honest characterization), and nothing is
    exported afterwards."""
    honest = _char([_trial(0, (1, P), (2, P), (5, P), (7, F), (6, P))], host="127.0.0.10").to_dict()
    forged = _char([_trial(0, (1, P), (2, F))]).to_dict()
    forged.update(safe_ceiling=40, failed_at=None, highest_passed=40, ceiling_found=False)
    with ProfileStore(tmp_path / "s.db") as store:
        before = store.export_json()
        with pytest.raises(ConfigError, match=r"safe_ceiling: stated 40, its trials give 0"):
            store.import_json(_document(honest, forged))
        assert store.export_json() == before
        assert store.history(unfinished=True) == []
        assert store.ceiling_for("pump-x") is None


def test_import_stores_the_ceiling_its_trials_derive(tmp_path: Path) -> None:
    """An honest document imports; what is stored is derived from its trials. A document of the older
    format (derived by the rule before margin_levels) imports if its ceiling stays below what its trials
    allow, and is stored with the current rule's ceiling; one above them is refused too."""
    char = _char([_trial(0, (1, P), (2, P), (5, P), (7, F), (6, P))])
    old = char.to_dict()
    old.update(format=1, safe_ceiling=5)  # min(6, floor(7 * 0.85)): the old rule
    del old["margin_levels"]
    old["run_id"] = "old-format-run"
    with ProfileStore(tmp_path / "s.db") as store:
        assert store.import_json(_document(char.to_dict(), old)) == 2
        assert [c.safe_ceiling for c in store.history()] == [4, 4]
        assert store.ceiling_for("pump-x") == 4
    too_high = {**old, "safe_ceiling": 7, "run_id": "old-but-forged"}
    with ProfileStore(tmp_path / "t.db") as store:
        with pytest.raises(ConfigError, match=r"stated 7, its trials give 4"):
            store.import_json(_document(too_high))
        assert store.history(unfinished=True) == []


def test_export_carries_unfinished_runs_so_an_import_keeps_their_crashes(tmp_path: Path) -> None:
    """A run stopped by a failed recovery is exported too; the store it is imported into knows the crash."""
    with ProfileStore(tmp_path / "a.db") as a:
        run = a.begin_run(host="127.0.0.9", model_key="pump-x", params={"ladder": [1, 2, 5]})
        a.record_trial(run, _trial(0, (1, P), (2, P), (5, F), complete=False))
        a.mark_run(run, "recovery_failed")
        text = a.export_json()
    with ProfileStore(tmp_path / "b.db") as b:
        assert b.import_json(text) == 1
        profile = b.profile("pump-x")
        assert profile is not None
        assert profile.failed_at == 5
        assert [c.stop_reason for c in profile.characterizations] == ["recovery_failed"]


# --- derivation properties --------------------------------------------------------------------------------

observations = st.lists(
    st.lists(st.tuples(st.integers(1, 60), st.sampled_from([P, F, W, A])), max_size=12), max_size=5
)
margins = st.sampled_from([0.0, 0.15, 0.3])
levels_margin = st.integers(1, 5)


def _key(value: int | None) -> float:
    return math.inf if value is None else value


@settings(max_examples=400, deadline=None)
@given(trials=observations, margin=margins, levels=levels_margin)
def test_the_recommendation_is_below_every_failure_and_was_passed_in_every_trial(
    trials: list[list[tuple[int, LevelOutcome]]], margin: float, levels: int
) -> None:
    d = derive_ceiling(trials, margin_fraction=margin, margin_levels=levels)
    bad = [lv for t in trials for lv, oc in t if oc in (F, W)]
    if d.safe_ceiling is None:
        return
    assert all(d.safe_ceiling < b for b in bad)
    if bad:
        assert d.safe_ceiling <= max(0, min(bad) - levels)
    if d.safe_ceiling > 0:
        assert d.highest_passed is not None
        assert d.safe_ceiling <= d.highest_passed
        # H passed in every trial that tested it
        assert all(oc in (P, A) for t in trials for lv, oc in t if lv == d.highest_passed)


@settings(max_examples=400, deadline=None)
@given(
    trials=observations,
    extra=st.lists(st.tuples(st.integers(1, 60), st.sampled_from([F, W])), min_size=1, max_size=3),
    margin=margins,
    levels=levels_margin,
)
def test_adding_a_failing_trial_never_raises_the_ceiling(
    trials: list[list[tuple[int, LevelOutcome]]],
    extra: list[tuple[int, LevelOutcome]],
    margin: float,
    levels: int,
) -> None:
    """Another trial with failures in it (finished or not) can only lower the recommendation."""
    before = derive_ceiling(trials, margin_fraction=margin, margin_levels=levels).safe_ceiling
    after = derive_ceiling([*trials, extra], margin_fraction=margin, margin_levels=levels).safe_ceiling
    assert after is not None  # a failure is data: never "no recommendation"
    assert after <= _key(before)


@settings(max_examples=300, deadline=None)
@given(trials=observations, seed=st.integers(0, 2**32 - 1))
def test_the_order_of_trials_and_of_their_levels_does_not_matter(
    trials: list[list[tuple[int, LevelOutcome]]], seed: int
) -> None:
    rng = random.Random(seed)
    shuffled = [rng.sample(t, len(t)) for t in trials]
    rng.shuffle(shuffled)
    assert derive_ceiling(shuffled) == derive_ceiling(trials)


@st.composite
def runs_on_a_jittery_device(draw: st.DrawFn) -> tuple[int, int, list[list[tuple[int, LevelOutcome]]]]:
    """A device whose threshold is drawn per boot from [low, high] (spread +-1, or under 8 % of it), tested
    by any sequence of levels; every crash is a new boot. Returns low, high and the observations."""
    low = draw(st.integers(2, 80))
    spread = draw(st.sampled_from(["one", "percent"]))
    high = low + 2 if spread == "one" else max(low, math.ceil(low / 0.85) - 1)
    trials: list[list[tuple[int, LevelOutcome]]] = []
    threshold = draw(st.integers(low, high))
    for _ in range(draw(st.integers(1, 4))):
        trial: list[tuple[int, LevelOutcome]] = []
        for level in draw(st.lists(st.integers(1, high + 5), min_size=1, max_size=10)):
            if level >= threshold:
                trial.append((level, F))
                threshold = draw(st.integers(low, high))  # a crash: power cycle, a new boot
            else:
                trial.append((level, P))
        trials.append(trial)
    return low, high, trials


@settings(max_examples=600, deadline=None)
@given(run=runs_on_a_jittery_device())
def test_the_default_margin_is_below_every_threshold_the_device_can_draw(
    run: tuple[int, int, list[list[tuple[int, LevelOutcome]]]],
) -> None:
    """Whatever boots the trials happened to see (only the highest threshold, say), the recommendation is
    below the lowest threshold any boot can draw: used through the Guard, its heartbeat among its
    sessions, it never reaches a threshold. This is what the larger of 15 % and 3 levels buys."""
    low, high, trials = run
    d = derive_ceiling(trials)
    assert d.safe_ceiling is not None
    assert d.safe_ceiling < low, (low, high, trials, d)


def test_the_old_margin_was_not_enough() -> None:
    """The property above fails with the rule before issue 10 (15 % below L, one level at least): a device
    drawing 5..7 that only ever showed 7 got floor(7 * 0.85) = 5, which its boots drawing 5 cannot hold.
    Three levels give 4."""
    trials = [[(1, P), (2, P), (5, P), (7, F), (6, P)], [(6, P)]]
    assert derive_ceiling(trials, margin_levels=1).safe_ceiling == 5
    assert derive_ceiling(trials, margin_levels=DEFAULT_MARGIN_LEVELS).safe_ceiling == 4
    with pytest.raises(ConfigError, match="margin_levels"):
        derive_ceiling(trials, margin_levels=0)


# --- the benchmark's claim, checked ---------------------------------------------------------------------


@pytest.mark.bench
def test_bench_ramp_recommendations_are_safe_in_the_guards_own_use() -> None:
    """benchmarks/bench_ramp.py, pure part, default seed and 400 models: fragileprobe's recommendation (with
    and without early warning) is unsafe for 0 of the models that can hang, while the old margin is not."""
    bench = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_ramp.py"
    out = subprocess.run([sys.executable, str(bench)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = {
        line.split("|")[1].strip(): line.split("|")[5].strip()
        for line in out.stdout.splitlines()
        if line.startswith("| ") and "**" in line
    }
    dying = rows["fragileprobe"].split(" of ")[1].split("**")[0]
    assert int(dying) >= 300
    assert rows["fragileprobe"].startswith("**0 of ")
    assert rows["fragileprobe + early warning"].startswith("**0 of ")
    assert not rows["(fragileprobe's trials, the old rule: 15 % below L)"].startswith("**0 of ")


# --- the store: every failure of every stored run bounds the model's ceiling ------------------------------

stored_runs = st.lists(
    st.tuples(
        st.sampled_from(["complete", "recovery_failed", "interrupted"]),
        st.lists(
            st.tuples(
                st.lists(st.tuples(st.integers(1, 30), st.sampled_from([P, F, W])), min_size=1, max_size=6),
                st.booleans(),
            ),
            min_size=1,
            max_size=3,
        ),
    ),
    min_size=1,
    max_size=4,
)


@settings(max_examples=60, deadline=None)
@given(runs=stored_runs)
def test_the_models_ceiling_is_below_every_failure_of_every_stored_run(
    runs: list[tuple[str, list[tuple[list[tuple[int, LevelOutcome]], bool]]]],
) -> None:
    """Random runs of one model, finished or not, their trials complete or not: the store's ceiling for
    the model is below every level that failed in any stored trial, never above the derivation of any one
    run, and survives an export and import into an empty store."""
    with tempfile.TemporaryDirectory() as tmp:
        with ProfileStore(Path(tmp) / "a.db") as store:
            every: list[list[tuple[int, LevelOutcome]]] = []
            per_run: list[int | None] = []
            for status, trials in runs:
                run = store.begin_run(host="127.0.0.9", model_key="pump-x", params={"ladder": [1, 30]})
                results = [_trial(i, *levels, complete=done) for i, (levels, done) in enumerate(trials)]
                for trial in results:
                    store.record_trial(run, trial)
                every += [levels for levels, _ in trials]
                per_run.append(derive_ceiling(t.outcomes for t in results).safe_ceiling)
                if status == "complete":
                    store.finish_run(run, _char(results))
                else:
                    store.mark_run(run, status)
            ceiling = store.ceiling_for("pump-x")
            text = store.export_json()
        assert ceiling is not None  # every run holds at least one tested level
        failures = [lv for levels in every for lv, oc in levels if oc in (F, W)]
        assert all(ceiling < lv for lv in failures)
        assert all(ceiling <= c for c in per_run if c is not None)
        assert ceiling <= _key(derive_ceiling(every).safe_ceiling)
        with ProfileStore(Path(tmp) / "b.db") as other:
            assert other.import_json(text) == len(runs)
            assert other.ceiling_for("pump-x") == ceiling
