"""Characterization strategies side by side over a few hundred randomized emulated device models.

One meaning of N throughout: a level N is N sessions held on the device at once, the heartbeat included,
and a recommendation r used through the Guard (``Guard(ceiling=r)``, its own heartbeat included) puts at
most r sessions on the device. A device hangs on a boot whose threshold is T as soon as it holds T
sessions; thresholds are drawn afresh at every boot (every crash is followed by a power cycle).

Strategies compared:

* ``manual ladder``: the story's by-hand plan: 1, 2, 5, 7, 10, 15, 20, 30, 50; stop at the first failure;
  recommend the last level that passed (one pass, no margin).
* ``linear walk``: 1, 2, 3, ... 50; stop at the first failure; recommend the last level that passed.
* ``fragileprobe``: fragileprobe's default plan as characterize() runs it with a session heartbeat
  (RampStrategy: ladder 2, 5, 7, ... 50, never below 2, egg-drop refinement with a crash budget of 2 per
  trial, 3 trials, later trials re-testing just below the boundary) and its safe-ceiling derivation (the
  larger of 15 % and 3 levels below the lowest level not known to be safe).
* ``fragileprobe + early warning``: the same, with EarlyWarning(latency_factor=3) (stop climbing when the
  heartbeat is 3x slower than idle).
* two rows that re-derive fragileprobe's own trials with a smaller margin (15 % and 1 level: the rule
  before issue 10; 15 % and 2 levels), to show why the margin is 3 levels at small ceilings.

Two parts, printed separately and labelled:

1. **Pure simulation** (all models): the strategies are driven against the emulator's *pure* fragility model
   (``fragileprobe.emulator._fragility``): per boot a crash threshold T is drawn from the model's seeded
   RNG; testing level n hangs the device iff n >= T (n counts the heartbeat); a heartbeat slower than the
   watchdog's timeout also counts as "down". Wall time is *modelled* with real-world timings: 5 s per level
   tested plus 60 s per crash (power cycle and boot of a pump).
2. **Real sockets** (optional, ``--real N``): ``characterize()`` runs against ``EmulatedDevice`` on loopback
   with scaled-down timings (0.2 s dwell, 40 ms heartbeats, 50 ms boot), seeded like the pure run; the table
   shows whether the real run reached the same ceiling as the pure simulation. It agrees only with a driver
   that holds a level's N sessions on the device, heartbeat included.

A recommendation ``r`` is *unsafe in the Guard's own use* when ``r >= T_min``: on some boot the Guard's r
sessions (its heartbeat among them) reach the threshold. The true ceiling of a model that can hang is
``T_min - 1``; "levels below the true ceiling" is ``T_min - 1 - r`` over the safe recommendations.

Run: ``python benchmarks/bench_ramp.py [--models 400] [--real 0] [--seed 20261129]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import random
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any

import anyio
import structlog

from fragileprobe._characterize import EarlyWarning, characterize
from fragileprobe._heartbeat import HttpHeartbeat
from fragileprobe._profile import DEFAULT_MARGIN_FRACTION, LevelOutcome, derive_ceiling
from fragileprobe._ramp import (
    DEFAULT_LADDER,
    Done,
    Failed,
    NextTrial,
    Passed,
    Proceed,
    RampConfig,
    RampStrategy,
    Recover,
    Recovered,
    TestLevel,
    Warned,
)
from fragileprobe._recovery import emulator_recovery
from fragileprobe._scope import Scope, Target
from fragileprobe.emulator import MODELS, EmulatedDevice, FragilitySpec, draw_threshold, threshold_bounds

MAX_LEVEL = DEFAULT_LADDER[-1]
LEVEL_S = 5.0  # modelled dwell per level tested (the driver's default dwell_s)
CRASH_S = 60.0  # modelled cost of a crash: power cycle and boot of an infusion pump
HEARTBEAT_TIMEOUT_S = (
    0.25  # the scaled watchdog timeout of the real-socket runs (also used in the pure model)
)
EW_FACTOR = 3.0
# What characterize() runs with its default HTTP heartbeat: the default ladder from 2 up (level 1 would be
# the heartbeat's session alone), never testing below 2.
FRAGILEPROBE_CONFIG = RampConfig(ladder=tuple(lv for lv in DEFAULT_LADDER if lv >= 2), min_level=2)


@dataclass(frozen=True)
class BenchModel:
    """One randomized device model."""

    index: int
    kind: str  # "fragile", "slows-then-dies", "sturdy"
    spec: FragilitySpec
    seed: int

    @property
    def t_min(self) -> int | None:
        bounds = threshold_bounds(self.spec)
        return None if bounds is None else bounds[0]


def make_models(n: int, seed: int) -> list[BenchModel]:
    """Ceilings 1-60 with jitter; one in five slows steeply before it dies; one in five never dies."""
    rng = random.Random(seed)
    models = []
    for i in range(n):
        roll = rng.random()
        base = rng.randint(2, 61)  # T = base: the level that hangs it with a heartbeat is base - 1 (1-60)
        jitter = rng.choice([0, 1, max(1, round(0.05 * base))])
        if roll < 0.2:
            spec = FragilitySpec(threshold=None, base_latency_s=0.004, slowdown_s_per_session=0.0001)
            kind = "sturdy"
        elif roll < 0.4:
            spec = FragilitySpec(
                threshold=base,
                jitter=jitter,
                base_latency_s=0.004,
                slowdown_s_per_session=0.0001,
                knee_sessions=max(1, base // 2),
                knee_slowdown_s=0.004,
                knee_exponent=2.0,
            )
            kind = "slows-then-dies"
        else:
            spec = FragilitySpec(
                threshold=base, jitter=jitter, base_latency_s=0.004, slowdown_s_per_session=0.0001
            )
            kind = "fragile"
        models.append(BenchModel(i, kind, spec, rng.randrange(2**31)))
    return models


@dataclass
class Outcome:
    """One strategy's result on one model."""

    recommended: int
    crashes: int
    levels: int
    wall_s: float


class PureDevice:
    """The pure fragility model as a strategy sees it: a threshold per boot, latency by load."""

    def __init__(self, model: BenchModel) -> None:
        self.spec = model.spec
        self.rng = random.Random(model.seed)
        self.threshold = draw_threshold(self.spec, self.rng)
        self.crashes = 0
        self.levels = 0

    def test(self, level: int, early_warning: bool = False) -> LevelOutcome:
        self.levels += 1
        sessions = level  # level N = N sessions on the device, the heartbeat among them
        if self.threshold is not None and sessions >= self.threshold:
            return LevelOutcome.FAILED
        latency = self.spec.response_delay_s(sessions)
        if latency > HEARTBEAT_TIMEOUT_S:
            return LevelOutcome.FAILED  # the watchdog declares it down (a power cycle follows)
        if early_warning and latency > EW_FACTOR * self.spec.response_delay_s(1):
            return LevelOutcome.WARNED
        return LevelOutcome.PASSED

    def power_cycle(self) -> None:
        self.crashes += 1
        self.threshold = draw_threshold(self.spec, self.rng)

    def outcome(self, recommended: int) -> Outcome:
        return Outcome(recommended, self.crashes, self.levels, self.levels * LEVEL_S + self.crashes * CRASH_S)


def run_manual(model: BenchModel, levels: list[int]) -> Outcome:
    dev = PureDevice(model)
    last_pass = 0
    for level in levels:
        if dev.test(level) is LevelOutcome.FAILED:
            dev.power_cycle()
            return dev.outcome(last_pass)
        last_pass = level
    return dev.outcome(last_pass)


def old_rule(trials: Any) -> int:
    """The derivation before issue 10: min(H, floor(L * 0.85)); never failed: max(1, floor(H * 0.85))."""
    d = derive_ceiling(trials, margin_fraction=0.0, margin_levels=1)  # only for L and H
    h, limit = d.highest_passed, d.limit
    if h is None:
        return 0
    if limit is None:
        return max(1, math.floor(h * (1 - DEFAULT_MARGIN_FRACTION)))
    return max(0, min(h, math.floor(limit * (1 - DEFAULT_MARGIN_FRACTION)), limit - 1))


def run_fragileprobe(
    model: BenchModel, early_warning: bool = False, margin_levels: int | None = None
) -> tuple[Outcome, Any]:
    """fragileprobe's plan and derivation; ``margin_levels`` re-derives its trials with another margin
    (0: the rule before issue 10)."""
    dev = PureDevice(model)
    strategy = RampStrategy(FRAGILEPROBE_CONFIG)
    while True:
        action = strategy.next_action()
        if isinstance(action, TestLevel):
            oc = dev.test(action.level, early_warning)
            obs = {LevelOutcome.PASSED: Passed, LevelOutcome.FAILED: Failed, LevelOutcome.WARNED: Warned}[oc]
            strategy.observe(obs(action.level))
        elif isinstance(action, Recover):
            dev.power_cycle()
            strategy.observe(Recovered())
        elif isinstance(action, NextTrial):
            strategy.observe(Proceed())
        else:
            assert isinstance(action, Done)
            ceiling = action.derivation.safe_ceiling or 0
            if margin_levels == 0:
                ceiling = old_rule(action.trials)
            elif margin_levels is not None:
                derivation = derive_ceiling(
                    action.trials, margin_fraction=DEFAULT_MARGIN_FRACTION, margin_levels=margin_levels
                )
                ceiling = derivation.safe_ceiling or 0
            return dev.outcome(ceiling), action


STRATEGIES = {
    "manual ladder": lambda m: run_manual(m, list(DEFAULT_LADDER)),
    "linear walk": lambda m: run_manual(m, list(range(1, MAX_LEVEL + 1))),
    "fragileprobe": lambda m: run_fragileprobe(m)[0],
    "fragileprobe + early warning": lambda m: run_fragileprobe(m, early_warning=True)[0],
    "(fragileprobe's trials, the old rule: 15 % below L)": lambda m: run_fragileprobe(m, margin_levels=0)[0],
    "(fragileprobe's trials, 15 % / 2 levels below B)": lambda m: run_fragileprobe(m, margin_levels=2)[0],
}


def _fmt(x: float, digits: int = 1) -> str:
    return f"{x:.{digits}f}"


def pure_table(models: list[BenchModel]) -> str:
    dying = [m for m in models if m.t_min is not None]
    slowing = [m for m in models if m.kind == "slows-then-dies"]
    rows = [
        "| strategy | crashes / model | levels tested / model | modelled minutes / model "
        "| unsafe in the Guard's own use (r >= T_min) | levels below the true ceiling (median / mean) "
        "| crashes / slows-then-dies model | sturdy: recommended |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, run in STRATEGIES.items():
        results = {m.index: run(m) for m in models}
        unsafe = 0
        below: list[int] = []
        for m in dying:
            r = results[m.index].recommended
            t_min = m.t_min
            assert t_min is not None
            if r >= t_min:
                unsafe += 1
            else:
                below.append((t_min - 1) - r)
        sturdy = [results[m.index].recommended for m in models if m.kind == "sturdy"]
        rows.append(
            f"| {name} | {_fmt(statistics.mean(r.crashes for r in results.values()), 2)} "
            f"| {_fmt(statistics.mean(r.levels for r in results.values()))} "
            f"| {_fmt(statistics.mean(r.wall_s for r in results.values()) / 60)} "
            f"| **{unsafe} of {len(dying)}** ({_fmt(100 * unsafe / len(dying))} %) "
            f"| {_fmt(statistics.median(below)) if below else '-'} / {_fmt(statistics.mean(below)) if below else '-'} "
            f"| {_fmt(statistics.mean(results[m.index].crashes for m in slowing), 2)} "
            f"| {min(sturdy)}-{max(sturdy)} |"
        )
    return "\n".join(rows)


# --- real sockets ------------------------------------------------------------------------------------
REAL_TIMINGS: dict[str, Any] = {
    "dwell_s": 0.2,
    "hold_s": 0.02,
    "interval_s": 0.04,
    "heartbeat_timeout_s": HEARTBEAT_TIMEOUT_S,
    "healthy_beats": 2,
    "recovery_timeout_s": 5.0,
    "baseline_beats": 3,
    "read_timeout_s": 0.2,
    "connect_timeout_s": 0.5,
}


async def run_real(model: BenchModel, host: str, early_warning: bool) -> tuple[Any, float, int]:
    device_model = dataclasses.replace(
        MODELS["infusion-pump"], name=f"bench-{model.index}", fragility=model.spec
    )
    async with EmulatedDevice(host, model=device_model, seed=model.seed, boot_delay_s=0.05) as dev:
        target = Target(
            host, ports=tuple(dev.ports.values()), heartbeat=HttpHeartbeat(port=dev.web_port, timeout_s=0.25)
        )
        started = time.monotonic()
        char = await characterize(
            target,
            scope=Scope([host]),
            recovery=emulator_recovery(dev),
            model_key=f"bench-{model.index}",
            early_warning=EarlyWarning(latency_factor=EW_FACTOR) if early_warning else None,
            **REAL_TIMINGS,
        )
        return char, time.monotonic() - started, dev.stats.crashes


def real_table(models: list[BenchModel], count: int) -> str:
    # Stratified: half plain fragile models, a quarter that slow before dying, the rest sturdy; ceilings up
    # to 25 so the subset stays quick (each real level holds its sessions for the whole dwell).
    rng = random.Random(7)
    quotas = {"fragile": (count + 1) // 2, "slows-then-dies": count // 4}
    quotas["sturdy"] = max(0, count - sum(quotas.values()))
    chosen: list[BenchModel] = []
    for kind, quota in quotas.items():
        pool = [m for m in models if m.kind == kind and (m.t_min is None or 3 <= m.t_min <= 25)]
        chosen += rng.sample(pool, min(quota, len(pool)))
    rows = [
        "| model | kind | T range | mode | pure: ceiling / crashes / levels | real: ceiling / crashes / levels "
        "| same ceiling | real wall time (s) | unsafe (real) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    same = total = 0
    for i, m in enumerate(chosen):
        ew = m.kind == "slows-then-dies"
        pure, _ = run_fragileprobe(m, early_warning=ew)
        host = f"127.77.{i // 200}.{i % 200 + 2}"
        char, wall, _dev_crashes = anyio.run(run_real, m, host, ew)
        real_ceiling = char.safe_ceiling or 0
        total += 1
        same += real_ceiling == pure.recommended
        bounds = threshold_bounds(m.spec)
        trange = "never" if bounds is None else f"{bounds[0]}-{bounds[1]}"
        unsafe = m.t_min is not None and real_ceiling >= m.t_min
        rows.append(
            f"| {m.index} | {m.kind} | {trange} | {'early warning' if ew else 'default'} "
            f"| {pure.recommended} / {pure.crashes} / {pure.levels} "
            f"| {real_ceiling} / {char.crashes} / {char.levels_tested} "
            f"| {'yes' if real_ceiling == pure.recommended else 'no'} | {_fmt(wall, 2)} | {'UNSAFE' if unsafe else 'no'} |"
        )
    rows.append(f"\nSame ceiling in the real-socket run as in the pure simulation: {same} of {total}.")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--models", type=int, default=400, help="seeded models (about 5 in 6 can hang)")
    parser.add_argument("--real", type=int, default=0, help="models also run over real sockets (0: none)")
    parser.add_argument("--seed", type=int, default=20261129)
    args = parser.parse_args(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    models = make_models(args.models, args.seed)
    kinds = {k: sum(1 for m in models if m.kind == k) for k in ("fragile", "slows-then-dies", "sturdy")}
    print(f"# bench_ramp: {len(models)} randomized models (seed {args.seed}): {kinds}")
    print(
        "\n## 1. Pure simulation (emulator's pure fragility model; wall time modelled: "
        f"{LEVEL_S:g} s per level, {CRASH_S:g} s per crash)\n"
    )
    t = time.monotonic()
    print(pure_table(models))
    print(f"\n(pure part computed in {time.monotonic() - t:.1f} s)")
    if args.real > 0:
        print(
            f"\n## 2. Real sockets: characterize() against EmulatedDevice on loopback, {args.real} models "
            "(scaled timings: 0.2 s dwell, 40 ms beats, 50 ms boot)\n"
        )
        print(real_table(models, args.real))
    return 0


if __name__ == "__main__":
    sys.exit(main())
