"""``fragileprobe emulate`` via the real console script: serves, reports, stops, rejects bad input."""

from __future__ import annotations

import subprocess
from typing import TYPE_CHECKING

import anyio
import pytest

from fragileprobe.emulator import DeviceState, EmulatorProcess, FleetClient
from fragileprobe.emulator._process import fragileprobe_command

if TYPE_CHECKING:
    from pathlib import Path


async def test_emulate_one_pump_serves_and_stops_on_sigint(loopback_host: str) -> None:
    emulator = EmulatorProcess(
        "--host",
        loopback_host,
        "--seed",
        "4",
        "--threshold",
        "5",
        "--jitter",
        "0",
        "--boot-delay",
        "0.05",
        "--port-offset",
        "10000",
    )
    try:
        lines = emulator.wait_ready()
        device_line = emulator.line_starting("device ")
        assert f"device {loopback_host} infusion-pump threshold=5 seed=4" in device_line
        assert "ports=21:10021,22:10022,23:10023,8080:8080" in device_line
        assert any(line.startswith("note: ports below 1024 are served at +10000") for line in lines)
        async with await anyio.connect_tcp(loopback_host, 10021) as stream:
            with anyio.fail_after(2):
                assert await stream.receive() == b"220 (vsFTPd 2.3.4)\r\n"
        client = FleetClient(emulator.control_url)
        (info,) = await client.list_devices()
        assert info.host == loopback_host
        assert info.state is DeviceState.UP
        assert info.stats.sessions_served == 1
    finally:
        code = emulator.stop()
    assert code == 0
    assert "Traceback" not in emulator.stderr_text()


def test_emulate_list_models() -> None:
    out = subprocess.run(
        [*fragileprobe_command(), "emulate", "--list-models"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0
    for name in ("infusion-pump", "syringe-pump", "patient-monitor", "slow-pump", "workstation", "printer"):
        assert name in out.stdout


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--model", "toaster"], "model"),
        (["--host", "10.0.0.1"], "host"),
        (["--threshold", "0"], "threshold"),
        (["--port-offset", "65520"], "port_offset"),
        (["--control-port", "70000"], "--control-port"),
        (["--fleet", "/nonexistent/fleet.toml"], "fleet config"),
        (["--hospital-fleet", "--prefix", "10.1.2"], "prefix"),
        (["--threshold", "abc"], "threshold"),
    ],
)
def test_emulate_bad_input_is_one_line_exit_2(args: list[str], needle: str) -> None:
    out = subprocess.run(
        [*fragileprobe_command(), "emulate", *args], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 2, out
    assert "Traceback" not in out.stderr
    assert needle in out.stderr
    assert out.stdout == ""


def test_emulate_bad_fleet_file_is_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "fleet.toml"
    bad.write_text('[[device]]\nhost = "127.9.9.9"\nmodel = "toaster"\n')
    out = subprocess.run(
        [*fragileprobe_command(), "emulate", "--fleet", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0
    assert out.stderr.startswith(f"error: {bad}: model: unknown model 'toaster'")  # the file is named


async def test_emulate_hostile_fleet_and_list_its_devices() -> None:
    emulator = EmulatorProcess("--hostile-fleet", "--prefix", "127.76.44", "--boot-delay", "0.1", "--quiet")
    try:
        lines = emulator.wait_ready()
        assert not any(line.startswith("device ") for line in lines)
        assert lines[-1].startswith("ready: 64 device(s), 16 empty")
        infos = await FleetClient(emulator.control_url).list_devices()
        assert {i.model for i in infos} >= {"hostile-tarpit", "hostile-resetter", "hostile-firmware"}
    finally:
        code = emulator.stop()
    assert code == 0


def test_emulate_two_fleet_sources_is_exit_2() -> None:
    out = subprocess.run(
        [*fragileprobe_command(), "emulate", "--hospital-fleet", "--hostile-fleet"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert "choose one" in out.stderr
