"""The exported nmap line, run with the real nmap against emulated fragile devices, measured on the devices.

The devices are a model written here (not one of the emulator's): 24 services that speak first, a crash
threshold a few sessions above the exported ceiling, and a response time that grows with load. The exported
line must scan every port of every device while no device ever holds more sessions than the ceiling (the
emulator counts every session from accept to close); a naive ``nmap -sT -sV`` against the same devices is
the control that shows the measurement sees nmap's sessions: it takes them past their threshold.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio
import pytest

from fragileprobe import export
from fragileprobe.emulator import DeviceState
from fragileprobe.emulator._device import EmulatedDevice
from fragileprobe.emulator._fragility import FragilitySpec
from fragileprobe.emulator._models import DeviceModel, ServiceSpec

if TYPE_CHECKING:
    from collections.abc import Callable

NMAP = shutil.which("nmap")
# Above 1024, so no root and no port offset is needed; a block no emulator model uses.
PORTS = tuple(range(20301, 20325))
# Each device model hangs this many sessions above the ceiling the export was made from: safe at the
# ceiling, not far above it.
HEADROOM = 3
DEVICES = 6
# Bounds: the exported scan takes ~len(PORTS) x 100 ms per host, all hosts side by side.
EXPORTED_TIMEOUT_S = 60
# The control stops once a device hung (or after this long).
CONTROL_TIMEOUT_S = 60


def many_services(threshold: int) -> DeviceModel:
    """24 services that speak first; hangs at ``threshold`` sessions and slows down as load rises."""
    return DeviceModel(
        name="test-many-services",
        vendor="Test",
        product="24-service embedded controller (test model)",
        os_family="embedded",
        category="medical",
        services={p: ServiceSpec(kind="banner", banner=b"CTRL READY\r\n") for p in PORTS},
        web_port=None,
        fragility=FragilitySpec(
            threshold=threshold, jitter=0, base_latency_s=0.003, slowdown_s_per_session=0.02
        ),
    )


@dataclass(frozen=True)
class _Row:
    host: str
    groups: tuple[str, ...]
    model_key: str


@dataclass(frozen=True)
class _Profile:
    model_key: str
    ceiling: int


def _open_ports(grepable: str) -> dict[str, int]:
    return {
        m.group(1): m.group(2).count("/open/")
        for m in re.finditer(r"^Host: (\S+) .*?Ports: (.*)$", grepable, flags=re.MULTILINE)
    }


@pytest.mark.nmap
@pytest.mark.skipif(NMAP is None, reason="needs the nmap binary")
@pytest.mark.parametrize("ceiling", [1, 3])
async def test_exported_nmap_line_keeps_every_device_within_its_ceiling(
    loopback_hosts: Callable[[], str], ceiling: int
) -> None:
    assert NMAP is not None
    threshold = ceiling + HEADROOM
    model = many_services(threshold)
    hosts = [loopback_hosts() for _ in range(DEVICES)]
    key = "ctrl-1234567890ab"
    plan = export.plan_exports([_Row(h, ("Ward controllers",), key) for h in hosts], [_Profile(key, ceiling)])
    (group,) = [g for g in plan.groups if g.hosts]
    args = export.nmap_args(group.settings, hosts=len(group.hosts))
    assert args.args[args.args.index("--max-parallelism") + 1] == str(ceiling)

    async with AsyncExitStack() as stack:
        devices = [
            await stack.enter_async_context(EmulatedDevice(h, model=model, seed=i))
            for i, h in enumerate(hosts)
        ]
        assert all(d.threshold == threshold for d in devices)
        with anyio.fail_after(EXPORTED_TIMEOUT_S):
            done = await anyio.run_process(
                [NMAP, *args.args, "-p", ",".join(map(str, PORTS)), "-oG", "-", *group.hosts], check=False
            )
        assert done.returncode == 0, done.stderr.decode()[-500:]
        await anyio.sleep(0.2)  # let the devices see the last resets
        exported = {d.host: d.stats for d in devices}
        # the scan did its work: every port of every device found open
        assert _open_ports(done.stdout.decode()) == dict.fromkeys(hosts, len(PORTS))
        for host, stats in exported.items():
            assert stats.peak_sessions <= ceiling, (host, stats)
            assert stats.crashes == 0, (host, stats)
        assert all(d.state is DeviceState.UP for d in devices)

        # control: the same devices under a naive service scan hang; the measurement sees nmap's sessions
        control = subprocess.Popen(  # noqa: ASYNC220 - polled below, killed by pid, bounded in time
            [NMAP, "-sT", "-sV", "-Pn", "-n", "-p", ",".join(map(str, PORTS)), "-oG", "-", *hosts],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + CONTROL_TIMEOUT_S
            while time.monotonic() < deadline and control.poll() is None:
                if any(d.stats.crashes for d in devices):
                    break
                await anyio.sleep(0.1)
        finally:
            control.kill()
            control.wait(timeout=10)
        hung = [d.host for d in devices if d.stats.crashes]
        assert hung, "the naive scan hung no device: the measurement would not see a bad line either"
        assert max(d.stats.peak_sessions for d in devices) > ceiling
