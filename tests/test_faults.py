"""Faults: the prober killed (SIGKILL, by PID) at random moments, two writers on one store, and the runs that
can never succeed (recovery that never works, a heartbeat port never open, a device down before the run):
each ends with a clear, specific result, never a hang, and no finished result is lost.

The random moments come from ``random.Random(seed)`` with the seed in the test's output, so a failure can be
replayed; characterization kills at a point in time, discovery kills after a random number of finished
hosts plus a random delay (so the kill lands anywhere in the store writes of the next host).
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from structlog.testing import capture_logs

from _support.drivers import CHARACTERIZE_DRIVER, DISCOVERY_DRIVER
from _support.procs import Child
from _support.timings import FAST_CHARACTERIZE
from fragileprobe import ConfigError, DeviceDownError, Guard, HttpHeartbeat, RecoveryError, Scope, Target
from fragileprobe._characterize import characterize
from fragileprobe._discovery_run import discover
from fragileprobe._recovery import emulator_recovery
from fragileprobe._store import ProfileStore
from fragileprobe.emulator import DeviceState, EmulatedDevice

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

TIMINGS: dict[str, Any] = FAST_CHARACTERIZE


def _seed() -> int:
    seed = int(os.environ.get("FRAGILEPROBE_FAULT_SEED", random.SystemRandom().randrange(1 << 30)))
    print(f"fault seed: FRAGILEPROBE_FAULT_SEED={seed}")
    return seed


def _prefix(last: int) -> str:
    # conftest hands out 127.<64 + pid % 64>.<y>.<z> from y = 0 upwards; the fleet test uses y = 255.
    return f"127.{64 + os.getpid() % 64}.{last}"


def _sqlite_ok(path: Path) -> None:
    """The store opens with our own checks (schema, quick_check) and passes a full integrity check."""
    import sqlite3

    with ProfileStore(path):
        pass
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()


# --- discovery: SIGKILL at random moments, resume twice ----------------------------------------------------

DEVICES, EMPTY = 10, 3


def _discovery(path: Path, prefix: str, *, resume: bool, part: str = f"0:{DEVICES}") -> Child:
    return Child(DISCOVERY_DRIVER, str(path), prefix, str(DEVICES), str(EMPTY), "1" if resume else "0", part)


@pytest.mark.slow
def test_discovery_killed_at_random_moments_loses_no_asset_and_resume_completes(tmp_path: Path) -> None:
    """Kill -9 twice at random points of a discovery (the second time during the resumed run): each time the
    store opens cleanly and holds every host the prober reported finished, with its asset; the third run
    resumes, scans only what was left, and the report holds every device exactly once."""
    rng = random.Random(_seed())
    path = tmp_path / "inventory.db"
    prefix = _prefix(254)
    devices = {f"{prefix}.{i}" for i in range(1, DEVICES + 1)}
    finished: set[str] = set()
    for attempt in range(2):
        child = _discovery(path, prefix, resume=attempt > 0)
        try:
            child.wait_for("READY")
            # A random number of finished hosts (never all), then a random extra delay (0-80 ms).
            todo = DEVICES + EMPTY - len(finished)
            for _ in range(rng.randrange(0, max(1, todo - 2))):
                finished.add(child.wait_for("HOST").split()[1])
            time.sleep(rng.uniform(0.0, 0.08))
            status = child.kill()
            child.drain()
            finished |= {line.split()[1] for line in child.lines if line.startswith("HOST")}
        finally:
            child.close()
        assert status == -signal.SIGKILL, "killed, not finished"
        _sqlite_ok(path)
        with ProfileStore(path) as store:
            scans = store.scans()
            assert len(scans) == 1, "the resumed run continued the first scan, it did not start another"
            assert scans[0].finished_at_s is None
            done = store.hosts_done(scans[0].scan_id)
            assert finished <= done, "every host reported finished is recorded as done"
            stored = {a.host for a in store.assets()}
            assert finished & devices <= stored, "every finished device's asset is in the store"
            assert not stored - devices, "no asset for an empty address"

    child = _discovery(path, prefix, resume=True)
    try:
        line = child.wait_for("REPORT", timeout_s=60)
        assert child.wait() == 0
    finally:
        child.close()
    report = json.loads(line.split(" ", 1)[1])
    assert sorted(report["assets"]) == sorted(devices)
    assert report["hosts_resumed"] >= len(finished)
    assert report["hosts_resumed"] + report["hosts_scanned"] == DEVICES + EMPTY
    with ProfileStore(path) as store:
        (scan,) = store.scans()
        assert scan.finished_at_s is not None
        assert store.hosts_done(scan.scan_id) == devices | {f"{prefix}.{i}" for i in range(DEVICES + 1, 14)}
        assert {a.host for a in store.assets()} == devices


@pytest.mark.slow
def test_two_discoveries_writing_one_store_at_once_lose_nothing(tmp_path: Path) -> None:
    """Two prober processes discover two halves of a fleet into one store at the same time: both finish and
    the store holds every asset of both."""
    path = tmp_path / "shared.db"
    prefix = _prefix(253)
    half = DEVICES // 2
    parts = (f"0:{half}", f"{half}:{DEVICES}")
    children = [_discovery(path, prefix, resume=False, part=part) for part in parts]
    try:
        reports = [json.loads(c.wait_for("REPORT", timeout_s=60).split(" ", 1)[1]) for c in children]
        assert [c.wait() for c in children] == [0, 0]
    finally:
        for c in children:
            c.close()
    devices = {f"{prefix}.{i}" for i in range(1, DEVICES + 1)}
    assert set(reports[0]["assets"]) | set(reports[1]["assets"]) == devices
    _sqlite_ok(path)
    with ProfileStore(path) as store:
        assert {a.host for a in store.assets()} == devices
        assert len(store.scans()) == 2
        assert all(s.finished_at_s is not None for s in store.scans())


# --- characterization: SIGKILL at a random moment ---------------------------------------------------------


@pytest.mark.slow
def test_characterization_killed_at_a_random_moment_keeps_finished_trials_and_resumes(
    tmp_path: Path, loopback_host: str
) -> None:
    """Kill -9 at a random time into a characterization: the store opens cleanly, every trial the prober
    reported finished is stored complete, and a resumed run finishes the three trials without repeating
    them. (tests/test_store_kill.py kills at one fixed point, mid-level in trial 2.)"""
    rng = random.Random(_seed())
    path = tmp_path / "profiles.db"
    child = Child(CHARACTERIZE_DRIVER, str(path), loopback_host, "0", json.dumps(TIMINGS))
    try:
        child.wait_for("READY")
        time.sleep(rng.uniform(0.0, 2.5))  # a whole run takes about 2.8 s (more on a loaded machine)
        status = child.kill()
        child.drain()
    finally:
        child.close()
    reported = [int(line.split()[1]) for line in child.lines if line.startswith("TRIAL")]
    _sqlite_ok(path)
    if any(line.startswith("DONE") for line in child.lines):
        pytest.skip("the run finished before the random kill moment (nothing to resume)")  # rare, honest
    assert status == -signal.SIGKILL
    with ProfileStore(path) as store:
        row = store.unfinished_run(host=loopback_host, model_key="kill-pump")
        stored = [t.index for t in row.trials if t.complete] if row is not None else []
    assert set(reported) <= set(stored), (reported, stored)

    child = Child(CHARACTERIZE_DRIVER, str(path), loopback_host, "1", json.dumps(TIMINGS))
    try:
        done = json.loads(child.wait_for("DONE", timeout_s=90).split(" ", 1)[1])
        assert child.wait() == 0
    finally:
        child.close()
    resumed_trials = [int(line.split()[1]) for line in child.lines if line.startswith("TRIAL")]
    assert sorted(done["trials"]) == [0, 1, 2]
    assert not set(resumed_trials) & set(stored), "a stored trial was run again"
    if row is not None:
        assert done["run_id"] == row.run_id, "resume continued the killed run"
    with ProfileStore(path) as store:
        assert store.unfinished_run(host=loopback_host, model_key="kill-pump") is None
        assert store.ceiling_for("kill-pump") == done["safe_ceiling"]


# --- runs that cannot succeed: a clear result, never a hang ------------------------------------------------


def _target(dev: EmulatedDevice, *, heartbeat_port: int | None = None) -> Target:
    hb = HttpHeartbeat(port=heartbeat_port or dev.web_port, timeout_s=0.25)
    return Target(dev.host, ports=tuple(dev.ports.values()), heartbeat=hb)


async def test_recovery_hook_that_never_returns_is_bounded_by_recovery_timeout(loopback_host: str) -> None:
    """A power-cycle hook that hangs forever: RecoveryError after recovery_timeout_s, with the partial
    result (the crash is in it), instead of waiting for ever."""
    never = anyio.Event()

    async def stuck_hook() -> None:
        await never.wait()

    async with EmulatedDevice(
        loopback_host, model="infusion-pump", threshold=2, jitter=0, boot_delay_s=0.05
    ) as dev:
        with capture_logs(), anyio.fail_after(20):
            t0 = anyio.current_time()
            with pytest.raises(RecoveryError) as info:
                await characterize(
                    _target(dev),
                    scope=Scope([dev.host]),
                    recovery=stuck_hook,
                    ladder=(1, 2, 3),
                    **{**TIMINGS, "recovery_timeout_s": 1.0},
                )
            elapsed = anyio.current_time() - t0
    assert "1" in str(info.value)  # the message names the bound that ran out
    partial = info.value.partial  # type: ignore[attr-defined]
    assert partial.crashes == 1
    assert elapsed < 10


async def test_recovery_hook_that_raises_is_a_recovery_error(loopback_host: str) -> None:
    """A power-cycle hook that fails with its own exception: RecoveryError naming it, chained."""

    async def broken_hook() -> None:
        raise OSError("relay controller unreachable")

    async with EmulatedDevice(
        loopback_host, model="infusion-pump", threshold=2, jitter=0, boot_delay_s=0.05
    ) as dev:
        with capture_logs(), anyio.fail_after(20), pytest.raises(RecoveryError, match="relay controller"):
            await characterize(
                _target(dev), scope=Scope([dev.host]), recovery=broken_hook, ladder=(1, 2, 3), **TIMINGS
            )


@pytest.mark.parametrize("state", ["hung", "heartbeat-port-closed"])
async def test_guard_on_a_device_that_cannot_answer_is_device_down_at_entry(
    loopback_host: str, state: str
) -> None:
    """A Guard around a device that is already hung, or whose heartbeat port was never open, refuses at
    entry with DeviceDownError naming the device and the reason; its caller never gets a session."""
    async with EmulatedDevice(loopback_host, model="infusion-pump", boot_delay_s=0.05) as dev:
        if state == "hung":
            dev.hang()
            target = _target(dev)
            reason = "timeout"
        else:
            target = _target(dev, heartbeat_port=dev.web_port + 1)  # nothing listens there
            reason = "refused"
        connects_before = dev.stats.connects_total
        expected = rf"{dev.host}.*{reason}"
        with capture_logs(), anyio.fail_after(5), pytest.raises(DeviceDownError, match=expected):
            async with Guard(target, ceiling=2, scope=Scope([dev.host]), interval_s=0.05):
                pass  # pragma: no cover - never entered
        assert dev.stats.connects_total - connects_before <= 1, "only the heartbeat was sent"


async def test_discovery_of_a_device_hung_before_the_run_is_bounded_and_truthful(
    loopback_hosts: Callable[[], str],
) -> None:
    """A discovery that meets a device that is hung before it starts (accepts, never answers) finishes
    within its per-port bounds; the device is reported unresponsive, shows its open ports with no banner
    (nothing invented), lands in no group (never "safe to scan"), and the healthy neighbour is unaffected."""
    async with (
        EmulatedDevice(loopback_hosts(), model="infusion-pump", seed=1, boot_delay_s=0.05) as hung,
        EmulatedDevice(loopback_hosts(), model="infusion-pump", seed=2, boot_delay_s=0.05) as ok,
    ):
        hung.hang()
        ports = sorted(hung.ports.values())
        aliases = {b: m for m, b in hung.ports.items() if b != m}
        with capture_logs(), anyio.fail_after(20):
            t0 = anyio.current_time()
            report = await discover(
                [hung.host, ok.host],
                scope=Scope([hung.host, ok.host]),
                ports=ports,
                port_aliases=aliases,
                connect_timeout_s=0.5,
                banner_timeout_s=0.3,
                rate_per_host=50,
            )
            elapsed = anyio.current_time() - t0
        assert hung.state is DeviceState.HUNG
        assert ok.stats.crashes == 0
    by_host = {a.host: a for a in report.assets}
    # every port of the hung device costs at most connect + banner bound, one at a time
    assert elapsed < len(ports) * (0.5 + 0.3) + 2.0
    assert by_host[ok.host].services, "the healthy pump was fingerprinted"
    hung_asset = by_host[hung.host]  # the kernel still accepts: open ports, but nothing was said
    assert all(s.product is None and s.version is None for s in hung_asset.services), hung_asset
    assert hung_asset.groups == (), "a device that answers nothing is never 'safe to scan'"
    (u,) = report.unresponsive
    assert u.host == hung.host
    assert "answered on no port" in u.reason
    assert all(not g.startswith("safe to scan") for g in by_host[ok.host].groups)


async def test_characterize_with_every_session_port_closed_is_a_clear_error_not_a_false_ceiling(
    loopback_host: str,
) -> None:
    """Mistyped service ports (nothing listens there, the heartbeat port answers): a ConfigError naming the
    ports, after one connect to each, instead of levels that "pass" with no session held and a recommended
    ceiling far above what the pump survives (it hangs at 7)."""
    async with EmulatedDevice(
        loopback_host, model="infusion-pump", threshold=7, jitter=0, boot_delay_s=0.05
    ) as dev:
        web = HttpHeartbeat(port=dev.web_port, timeout_s=0.25)
        target = Target(dev.host, ports=(40001, 40002), heartbeat=web)
        expected = r"none of 40001, 40002 accepts a connection"
        with capture_logs(), anyio.fail_after(10), pytest.raises(ConfigError, match=expected):
            await characterize(target, scope=Scope([dev.host]), ladder=(1, 5, 10, 20), **TIMINGS)
        assert dev.stats.peak_sessions <= 1, "no load was put on the device"


async def test_characterize_holds_its_sessions_on_the_open_ports_only(loopback_host: str) -> None:
    """One session port closed among open ones: the sessions go to the open ports, so a level holds as many
    sessions as it says (the pump hangs at 7: the crash shows up at 6 or 7, not higher)."""
    async with EmulatedDevice(
        loopback_host, model="infusion-pump", threshold=7, jitter=0, boot_delay_s=0.05
    ) as dev:
        ports = (dev.port(21), dev.port(22), 40001)
        target = Target(dev.host, ports=ports, heartbeat=HttpHeartbeat(port=dev.web_port, timeout_s=0.25))
        with capture_logs() as logs, anyio.fail_after(30):
            char = await characterize(
                target,
                scope=Scope([dev.host]),
                ladder=(2, 4, 6, 7, 8, 10),
                trials=1,
                recovery=emulator_recovery(dev),
                **TIMINGS,
            )
    assert any(e["event"] == "characterize.ports_closed" and e["closed"] == [40001] for e in logs)
    assert char.crash_levels
    assert min(char.crash_levels) in (6, 7), char.summary()


async def test_a_stored_ceiling_of_zero_never_breaks_discovery_and_its_model_is_left_alone(
    loopback_hosts: Callable[[], str], tmp_path: Path
) -> None:
    """A model that crashed at its lowest measured level has a stored ceiling of 0. Discovery used to crash
    on it (ConfigError from a limiter of ceiling 0, for every host). Now unknown hosts are probed one
    session at a time, and a host the inventory knows to be that model is not probed at all."""
    from fragileprobe._profile import Characterization, LevelOutcome, LevelResult, TrialResult

    store = ProfileStore(tmp_path / "zero.db")

    def crashed_at_one(key: str) -> Characterization:
        failed = LevelResult(level=1, outcome=LevelOutcome.FAILED, dwell_s=1.0, elapsed_s=0.1)
        return Characterization.from_trials(
            host="127.0.0.1", model_key=key, ladder=(1,), trials=[TrialResult(index=0, levels=(failed,))]
        )

    store.save(crashed_at_one("other-model-0123456789ab"))
    async with (
        EmulatedDevice(loopback_hosts(), model="infusion-pump", seed=1) as pump,
        EmulatedDevice(loopback_hosts(), model="workstation", seed=2) as ws,
    ):
        hosts = [pump.host, ws.host]
        ports = sorted({p for d in (pump, ws) for p in d.ports.values()})
        kw: dict[str, Any] = {"scope": Scope(hosts), "ports": ports, "store": store, "banner_timeout_s": 0.2}
        with capture_logs(), anyio.fail_after(30):
            first = await discover(hosts, **kw)
            assert {a.host: a.sessions_limit for a in first.assets} == {pump.host: 1, ws.host: 1}
            pump_key = next(a.model_key for a in first.assets if a.host == pump.host)
            store.save(crashed_at_one(pump_key))  # now the pump's own model is known to fail at 1
            before = pump.stats.connects_total
            second = await discover(hosts, **kw)
        assert pump.stats.connects_total == before, "a model with ceiling 0 is not probed"
        assert ws.stats.connects_total > 0
    by_host = {a.host: a for a in second.assets}
    assert by_host[pump.host].sessions_limit == 0
    assert "ceiling 0: not probed" in by_host[pump.host].notes[0]


def test_scan_settings_for_a_model_with_a_stored_ceiling_of_zero(tmp_path: Path) -> None:
    """A model that failed at its lowest measured level gets fragile settings, not an exception (which
    ends `fragileprobe discover` with exit 2 after a successful scan) and never the scanner defaults."""
    from fragileprobe._profile import Characterization, LevelOutcome, LevelResult, TrialResult
    from fragileprobe.export import template_for_group

    failed = LevelResult(level=1, outcome=LevelOutcome.FAILED, dwell_s=1.0, elapsed_s=0.1)
    char = Characterization.from_trials(
        host="127.0.0.1",
        model_key="brittle-0123456789ab",
        ladder=(1,),
        trials=[TrialResult(index=0, levels=(failed,))],
    )
    with ProfileStore(tmp_path / "z.db") as store:
        store.save(char)
        settings = template_for_group("brittle-0123456789ab", store)
    assert settings.fragile
    assert settings.do_not_scan
    assert settings.sessions_per_host is not None
    assert settings.sessions_per_host <= 1
    text = settings.text()
    assert "DO NOT SCAN" in text
    assert "--max-parallelism 1 " in text, "whoever scans anyway gets the scanner's minimum, never defaults"


async def test_resume_with_other_level_settings_is_a_clear_error(loopback_host: str, tmp_path: Path) -> None:
    """Resuming an unfinished run with another dwell (or ladder, or hold) would merge trials measured
    differently into one ceiling: a ConfigError naming the run and both settings, nothing merged."""
    from fragileprobe._profile import LevelOutcome, LevelResult, TrialResult

    store = ProfileStore(tmp_path / "r.db")
    params = {"ladder": [1, 2], "dwell_s": 0.2, "hold_s": 0.02, "trials": 2}
    async with EmulatedDevice(
        loopback_host, model="infusion-pump", threshold=7, jitter=0, boot_delay_s=0.05
    ) as dev:
        run_id = store.begin_run(host=dev.host, model_key="resume-pump", params=params)
        passed = tuple(
            LevelResult(level=n, outcome=LevelOutcome.PASSED, dwell_s=0.2, elapsed_s=0.2) for n in (1, 2)
        )
        store.record_trial(run_id, TrialResult(index=0, levels=passed))
        # the hand-made run records no ports, heartbeat, ...: those are named too, as "<not recorded>"
        expected = (
            rf"resume: the unfinished run {run_id} was measured with .*dwell_s=0\.2, .*not .*dwell_s=0\.3"
        )
        with capture_logs(), anyio.fail_after(30), pytest.raises(ConfigError, match=expected):
            await characterize(
                _target(dev),
                scope=Scope([dev.host]),
                ladder=(1, 2),
                trials=2,
                store=store,
                model_key="resume-pump",
                resume=True,
                **{**TIMINGS, "dwell_s": 0.3},
            )
    assert [t.index for t in store.trials(run_id)] == [0], "nothing was merged into the old run"
