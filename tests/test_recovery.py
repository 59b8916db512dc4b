"""Recovery hooks: command, wait, manual, emulator and fleet power cycles; failures become RecoveryError."""

from __future__ import annotations

import sys
import threading
from typing import TYPE_CHECKING

import anyio
import pytest
from structlog.testing import capture_logs

from fragileprobe._errors import ConfigError, RecoveryError
from fragileprobe._heartbeat import HttpHeartbeat
from fragileprobe._recovery import (
    RecoveryContext,
    call_recovery,
    command_recovery,
    emulator_recovery,
    manual_recovery,
    wait_for_recovery,
)
from fragileprobe.emulator import DeviceState, EmulatedDevice, Fleet, fleet_recovery

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path


def _ctx(host: str = "127.0.0.1", port: int = 8080) -> RecoveryContext:
    return RecoveryContext(
        host=host, heartbeat=HttpHeartbeat(port=port, timeout_s=0.25), trial=0, level=7, attempt=1
    )


async def test_command_recovery_substitutes_host_and_level(tmp_path: Path) -> None:
    out = tmp_path / "args.txt"
    hook = command_recovery(
        [
            sys.executable,
            "-c",
            "import sys; open(sys.argv[1], 'w').write(' '.join(sys.argv[2:]))",
            str(out),
            "{host}",
            "{level}",
        ]
    )
    await call_recovery(hook, _ctx("127.0.0.9"))
    assert out.read_text() == "127.0.0.9 7"


async def test_command_recovery_nonzero_exit_carries_stderr_tail() -> None:
    hook = command_recovery(
        [sys.executable, "-c", "import sys; sys.stderr.write('x' * 5000 + 'outlet 7 busy'); sys.exit(3)"]
    )
    with capture_logs(), pytest.raises(RecoveryError, match=r"exited with 3: x+outlet 7 busy") as info:
        await call_recovery(hook, _ctx())
    assert len(str(info.value)) < 2300  # only the tail of the 5 KB of stderr


async def test_command_recovery_timeout_and_missing_program() -> None:
    slow = command_recovery([sys.executable, "-c", "import time; time.sleep(30)"], timeout_s=0.3)
    with capture_logs(), anyio.fail_after(10), pytest.raises(RecoveryError, match=r"timed out after 0\.3 s"):
        await call_recovery(slow, _ctx())
    with pytest.raises(ConfigError, match=r"recovery command '/nonexistent/pdu-ctl': not found"):
        command_recovery(["/nonexistent/pdu-ctl", "cycle"])  # refused at construction, before any load


async def test_command_recovery_whose_program_vanished_is_a_recovery_error(tmp_path: Path) -> None:
    program = tmp_path / "pdu-ctl"
    program.write_text("#!/bin/sh\nexit 0\n")
    program.chmod(0o755)
    hook = command_recovery([str(program), "cycle"])
    program.unlink()
    with capture_logs(), pytest.raises(RecoveryError, match="could not run"):
        await call_recovery(hook, _ctx())


def test_command_recovery_refuses_shell_strings() -> None:
    with pytest.raises(ConfigError, match=r"^argv: must be a non-empty list of strings") as info:
        command_recovery("pdu-ctl cycle 7")  # type: ignore[arg-type]
    assert info.value.field == "argv"
    with pytest.raises(ConfigError, match=r"^timeout_s: must be a positive number, got 0$") as info:
        command_recovery([sys.executable], timeout_s=0)
    assert info.value.field == "timeout_s"


async def test_wait_for_recovery_returns_when_the_device_comes_back(loopback_host: str) -> None:
    async with EmulatedDevice(loopback_host, model="infusion-pump", seed=1, boot_delay_s=0.05) as dev:
        dev.hang()
        ctx = _ctx(dev.host, dev.web_port)

        async def reboot_later() -> None:
            await anyio.sleep(0.3)
            await dev.power_cycle()

        with capture_logs():
            async with anyio.create_task_group() as tg:
                tg.start_soon(reboot_later)
                await call_recovery(wait_for_recovery(timeout_s=5, interval_s=0.05), ctx)
        assert dev.state is DeviceState.UP


async def test_wait_for_recovery_times_out(loopback_host: str) -> None:
    async with EmulatedDevice(loopback_host, model="infusion-pump", seed=1) as dev:
        dev.hang()
        with capture_logs(), anyio.fail_after(10), pytest.raises(RecoveryError, match=r"within 0\.5 s"):
            await call_recovery(
                wait_for_recovery(timeout_s=0.5, interval_s=0.05), _ctx(dev.host, dev.web_port)
            )


async def test_manual_recovery_waits_for_confirmation() -> None:
    asked: list[str] = []
    hook = manual_recovery("cycle {host} (crashed at {level})", confirm=lambda msg: asked.append(msg) or "")
    await call_recovery(hook, _ctx("127.0.0.9"))
    assert asked == ["cycle 127.0.0.9 (crashed at 7)"]


async def test_manual_recovery_times_out_when_nobody_answers() -> None:
    release = threading.Event()
    hook = manual_recovery(timeout_s=0.3, confirm=lambda msg: str(release.wait(5)))
    try:
        with anyio.fail_after(5), pytest.raises(RecoveryError, match="nobody confirmed"):
            await call_recovery(hook, _ctx())
    finally:
        release.set()


async def test_emulator_recovery_power_cycles(loopback_host: str) -> None:
    async with EmulatedDevice(loopback_host, model="infusion-pump", seed=1, boot_delay_s=0.05) as dev:
        dev.hang()
        with capture_logs():
            await call_recovery(emulator_recovery(dev), _ctx(dev.host, dev.web_port))
        assert dev.state is DeviceState.UP
        assert dev.stats.power_cycles == 1
    with pytest.raises(ConfigError, match="power_cycle"):
        emulator_recovery(object())


async def test_fleet_recovery_power_cycles_through_the_control_api(loopback_hosts: Callable[[], str]) -> None:
    host = loopback_hosts()
    config = {"boot_delay_s": 0.05, "device": [{"host": host, "model": "infusion-pump", "seed": 1}]}
    with capture_logs():
        async with Fleet(config) as fleet:
            fleet.device(host).hang()
            await call_recovery(fleet_recovery(fleet.control_url), _ctx(host))
            assert fleet.device(host).state is DeviceState.UP
            assert fleet.device(host).stats.power_cycles == 1


async def test_any_async_callable_works_and_errors_are_wrapped() -> None:
    calls: list[object] = []

    async def no_args() -> None:
        calls.append("no-args")

    async def with_ctx(ctx: RecoveryContext) -> None:
        calls.append(ctx.level)

    await call_recovery(no_args, _ctx())
    await call_recovery(with_ctx, _ctx())
    assert calls == ["no-args", 7]

    async def broken(ctx: RecoveryContext) -> None:
        raise ValueError("relay stuck")

    with pytest.raises(RecoveryError, match="ValueError: relay stuck"):
        await call_recovery(broken, _ctx())
