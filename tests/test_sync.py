"""run_sync: async entry points from plain scripts and from inside a running event loop (notebooks)."""

from __future__ import annotations

import threading

import anyio
import anyio.lowlevel
import pytest

from fragileprobe import Guard, HttpHeartbeat, Outcome, ProbeResult, Scope, Target, run_sync
from fragileprobe.emulator import EmulatedPump


async def add(a: int, b: int, *, scale: int = 1) -> int:
    await anyio.lowlevel.checkpoint()
    return (a + b) * scale


async def where() -> str:
    return threading.current_thread().name


async def fail() -> None:
    raise KeyError("inner")


async def banner_of_a_pump(host: str) -> ProbeResult:
    """Everything loop-bound (pump, guard) is created inside the function run_sync runs."""
    async with EmulatedPump(host, seed=5) as pump:
        heartbeat = HttpHeartbeat(port=pump.web_port, timeout_s=1.0)
        target = Target(host, ports=[pump.port(22)], heartbeat=heartbeat)
        async with Guard(target, ceiling=2, scope=Scope([f"{host}/32"]), interval_s=0.1) as guard:
            return await guard.grab_banner(pump.port(22))


def test_from_a_plain_script_runs_in_this_thread() -> None:
    assert run_sync(add, 2, 3, scale=10) == 50
    assert run_sync(where) == threading.current_thread().name


def test_exceptions_propagate_unchanged() -> None:
    with pytest.raises(KeyError, match="inner"):
        run_sync(fail)


def test_a_guarded_probe_from_sync_code(loopback_host: str) -> None:
    result = run_sync(banner_of_a_pump, loopback_host)
    assert result.outcome is Outcome.OPEN
    assert result.data.startswith(b"SSH-2.0-dropbear")


async def test_inside_a_running_loop_it_uses_a_worker_thread(loopback_host: str) -> None:
    """As in a notebook cell: a loop is already running in this thread."""
    assert run_sync(add, 1, 1) == 2
    assert run_sync(where) == "fragileprobe-run-sync"
    with pytest.raises(KeyError, match="inner"):
        run_sync(fail)
    result = run_sync(banner_of_a_pump, loopback_host)
    assert result.outcome is Outcome.OPEN
