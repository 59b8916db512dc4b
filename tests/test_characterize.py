"""characterize() end to end against the emulator (short timings): ceilings, recovery, store, errors."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from structlog.testing import capture_logs

from _support.timings import FAST_CHARACTERIZE
from fragileprobe._characterize import EarlyWarning, ProgressEvent, characterize, characterize_sync
from fragileprobe._errors import ConfigError, DeviceDownError, RecoveryError, ScopeError
from fragileprobe._heartbeat import HttpHeartbeat, TcpHeartbeat
from fragileprobe._profile import LevelOutcome
from fragileprobe._recovery import emulator_recovery
from fragileprobe._scope import Scope, Target
from fragileprobe._store import ProfileStore
from fragileprobe.emulator import EmulatedDevice

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

FAST: dict[str, Any] = FAST_CHARACTERIZE


def _target(dev: EmulatedDevice) -> Target:
    if dev.model.web_port is not None:
        heartbeat: Any = HttpHeartbeat(port=dev.web_port, timeout_s=0.25)
    else:
        heartbeat = TcpHeartbeat(dev.port(445), timeout_s=0.25)
    return Target(dev.host, ports=tuple(dev.ports.values()), heartbeat=heartbeat)


async def test_story_pump_gets_three_levels_below_every_crash(
    loopback_hosts: Callable[[], str], tmp_path: Path
) -> None:
    """The story pump (T in 7..9, heartbeat included) gets a safe ceiling three levels below the lowest
    level that ever crashed it (the margin's minimum, larger than 15 % at these levels); every crash was
    seen and recovered; two pumps make one profile whose ceiling is the lower of the two; each trial is in
    the store."""
    store = ProfileStore(tmp_path / "p.db")
    chars = []
    for seed in (4, 5):
        async with EmulatedDevice(
            loopback_hosts(), model="infusion-pump", seed=seed, boot_delay_s=0.05
        ) as dev:
            with capture_logs():
                char = await characterize(
                    _target(dev),
                    scope=Scope([dev.host]),
                    recovery=emulator_recovery(dev),
                    store=store,
                    **FAST,
                )
            assert char.failed_at in range(6, 10), char.summary()
            assert char.safe_ceiling == char.failed_at - 3, char.summary()
            assert char.crashes >= 1
            assert all(char.safe_ceiling < lv for lv in char.crash_levels)
            assert char.failed_at is not None
            assert char.ceiling_found
            assert char.crashes == dev.stats.crashes  # each crash detected once, none caused unnoticed
            assert dev.stats.power_cycles == char.crashes
            assert len(char.trials) == 3
            chars.append(char)
    assert chars[0].model_key == chars[1].model_key  # derived from what the device shows
    key = chars[0].model_key
    assert key is not None
    assert key.startswith("goahead-webs-")
    profile = store.profile(key)
    assert profile is not None
    assert set(profile.devices) == {c.host for c in chars}
    assert profile.ceiling == min(c.safe_ceiling for c in chars if c.safe_ceiling is not None)
    run = store.run(chars[0].run_id or "")
    assert run is not None
    assert len(run.trials) == 3
    store.close()


async def test_failure_records_time_in_flight_and_latencies(loopback_host: str) -> None:
    """A failed level records the time into the dwell, the sessions in flight and the beats before it."""
    async with EmulatedDevice(
        loopback_host, model="infusion-pump", seed=1, threshold=4, jitter=0, boot_delay_s=0.05
    ) as dev:
        with capture_logs() as logs:
            char = await characterize(
                _target(dev),
                scope=Scope([dev.host]),
                recovery=emulator_recovery(dev),
                trials=1,
                ladder=(1, 2, 5),
                **FAST,
            )
    failed = [lv for t in char.trials for lv in t.levels if lv.outcome is LevelOutcome.FAILED]
    assert failed
    first = failed[0]
    assert 0.0 <= first.elapsed_s <= FAST["dwell_s"] + 1.0
    assert first.in_flight_at_end >= 1
    # T = 4: level 4 (three held sessions and the heartbeat's) hangs it; the margin (3 levels) leaves 1.
    assert char.failed_at == 4
    assert char.safe_ceiling == 1
    assert any(e["event"] == "characterize.recovering" for e in logs)


async def test_sturdy_device_reports_no_ceiling_up_to_the_maximum(loopback_host: str) -> None:
    """A workstation never fails: ceiling_found is False, failed_at None, the top level is recommended and
    exactly that many sessions were held at once (plus the heartbeat)."""
    async with EmulatedDevice(loopback_host, model="workstation", seed=1) as dev:
        with capture_logs():
            char = await characterize(_target(dev), scope=Scope([dev.host]), ladder=(1, 2, 4), **FAST)
        assert dev.stats.peak_sessions in (4, 5)  # 4 probe sessions (+1 while a beat overlaps)
    assert not char.ceiling_found
    assert char.failed_at is None
    assert char.crashes == 0
    assert char.highest_passed == 4
    assert char.safe_ceiling == 2  # the margin (3 levels) below H + 1 = 5
    assert "No ceiling found up to 4" in char.summary()


async def test_slow_pump_is_characterized_with_no_crash_in_early_warning_mode(loopback_host: str) -> None:
    """The slow pump slows long before it dies: early warning stops the climb with zero crashes."""
    async with EmulatedDevice(loopback_host, model="slow-pump", seed=1, boot_delay_s=0.05) as dev:
        with capture_logs():
            char = await characterize(
                _target(dev),
                scope=Scope([dev.host]),
                early_warning=EarlyWarning(latency_factor=3.0),
                recovery=emulator_recovery(dev),
                **FAST,
            )
        assert dev.stats.crashes == 0
    assert char.crashes == 0
    assert char.ceiling_found
    assert char.warned_at is not None
    assert char.failed_at is None
    assert char.safe_ceiling is not None
    assert 0 <= char.safe_ceiling <= max(0, char.warned_at - 3)
    assert char.latency_knee is not None
    assert "early warning" in char.summary()


async def test_failed_recovery_raises_with_every_observation_kept(loopback_host: str, tmp_path: Path) -> None:
    """A recovery that never brings the device back: RecoveryError with .partial, also in the store; a
    resume with a working recovery then finishes the run."""
    store = ProfileStore(tmp_path / "p.db")

    async def broken_power_strip() -> None:
        raise OSError("power strip not reachable")

    async with EmulatedDevice(
        loopback_host, model="infusion-pump", seed=1, threshold=4, jitter=0, boot_delay_s=0.05
    ) as dev:
        target = _target(dev)
        with capture_logs(), pytest.raises(RecoveryError, match="power strip") as info:
            await characterize(
                target,
                scope=Scope([dev.host]),
                recovery=broken_power_strip,
                store=store,
                model_key="pump-t4",
                **FAST,
            )
        partial = info.value.partial  # type: ignore[attr-defined]
        assert partial.stop_reason == "recovery_failed"
        assert partial.crash_levels == (5,)
        assert partial.failed_at == 5
        row = store.unfinished_run(host=dev.host, model_key="pump-t4")
        assert row is not None
        assert row.status == "recovery_failed"
        assert [t.complete for t in row.trials] == [False]
        await dev.power_cycle()  # somebody fixed it by hand
        events: list[ProgressEvent] = []
        with capture_logs():
            char = await characterize(
                target,
                scope=Scope([dev.host]),
                recovery=emulator_recovery(dev),
                store=store,
                model_key="pump-t4",
                resume=True,
                progress=events.append,
                **FAST,
            )
    assert char.run_id == row.run_id
    # the unfinished trial stays (its crash at 5 is evidence); three finished trials follow it
    assert [(t.index, t.complete) for t in char.trials] == [(0, False), (1, True), (2, True), (3, True)]
    assert 5 in char.crash_levels
    assert char.safe_ceiling == 1  # T = 4 device sessions, the heartbeat's included; 3 levels of margin
    assert events[0].kind == "baseline"
    store.close()


async def test_recovery_timeout_without_hook_is_a_recovery_error(loopback_host: str) -> None:
    """No hook and a device that does not come back by itself: RecoveryError within the bound, no hang."""
    async with EmulatedDevice(loopback_host, model="infusion-pump", seed=1, threshold=3, jitter=0) as dev:
        fast = {**FAST, "recovery_timeout_s": 0.5}
        with capture_logs(), anyio.fail_after(10), pytest.raises(RecoveryError, match="no recovery hook"):
            await characterize(_target(dev), scope=Scope([dev.host]), **fast)


async def test_device_already_down_is_a_clear_error_not_a_hang(loopback_host: str) -> None:
    async with EmulatedDevice(loopback_host, model="infusion-pump", seed=1) as dev:
        dev.hang()
        before = dev.stats.connects_total
        with capture_logs(), anyio.fail_after(10), pytest.raises(DeviceDownError, match="already down"):
            await characterize(_target(dev), scope=Scope([dev.host]), **FAST)
        assert dev.stats.connects_total - before <= 2  # heartbeats only, never a probe session


async def test_heartbeat_port_never_open_is_a_clear_error(loopback_host: str) -> None:
    async with EmulatedDevice(loopback_host, model="workstation", seed=1) as dev:
        target = Target(
            dev.host, ports=tuple(dev.ports.values()), heartbeat=HttpHeartbeat(port=1, timeout_s=0.25)
        )
        with capture_logs(), anyio.fail_after(10), pytest.raises(DeviceDownError, match="port 1"):
            await characterize(target, scope=Scope([dev.host]), **FAST)
        assert dev.stats.connects_total == 0


async def test_target_outside_scope_is_refused_before_anything_is_sent(loopback_host: str) -> None:
    async with EmulatedDevice(loopback_host, model="workstation", seed=1) as dev:
        with pytest.raises(ScopeError):
            await characterize(_target(dev), scope=Scope(["127.0.0.1"]), **FAST)
        assert dev.stats.connects_total == 0


async def test_time_budget_stops_with_what_was_measured(loopback_host: str) -> None:
    async with EmulatedDevice(loopback_host, model="workstation", seed=1) as dev:
        with capture_logs(), anyio.fail_after(10):
            char = await characterize(
                _target(dev), scope=Scope([dev.host]), ladder=(1, 2, 3, 4, 5, 6), time_budget_s=0.5, **FAST
            )
    assert char.stop_reason == "time_budget"
    assert char.levels_tested < 6 + 2
    assert "stopped early" in char.summary()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"dwell_s": 0}, "dwell_s"),
        ({"ladder": (1, 1)}, "ladder"),
        ({"trials": 0}, "trials"),
        ({"healthy_beats": 0}, "healthy_beats"),
        ({"margin_fraction": 1.5}, "margin_fraction"),
        ({"resume": True}, "resume"),
        ({"interval_s": -1}, "interval_s"),
        ({"time_budget_s": math.inf}, "time_budget_s"),
    ],
)
async def test_bad_arguments_name_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        await characterize("127.0.0.1", scope=Scope(["127.0.0.1"]), **kwargs)


def test_characterize_sync_runs_from_plain_code(loopback_host: str) -> None:
    async def main() -> Any:
        async with EmulatedDevice(loopback_host, model="workstation", seed=1) as dev:
            with capture_logs():
                return await characterize(
                    _target(dev), scope=Scope([dev.host]), ladder=(1, 2), trials=1, **FAST
                )

    char = anyio.run(main)
    assert char.highest_passed == 2
    assert char.safe_ceiling == 1
    with pytest.raises(ConfigError, match="dwell_s"):
        characterize_sync("127.0.0.1", scope=Scope(["127.0.0.1"]), dwell_s=-1)
