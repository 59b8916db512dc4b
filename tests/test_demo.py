"""``fragileprobe demo``: the story on an emulated pump, in-process and through the console script."""

from __future__ import annotations

import subprocess

import pytest

from fragileprobe import ConfigError
from fragileprobe._demo import DemoEvent, run_demo
from fragileprobe.emulator._process import fragileprobe_command


@pytest.mark.parametrize("port_offset", [None, 10000])
async def test_demo_crashes_and_recovers_the_pump(loopback_host: str, port_offset: int | None) -> None:
    """The demo finds the crash at the pump's drawn threshold, sees it stay hung, and recovers it.

    With ``port_offset=10000`` it runs as a non-root user would (privileged ports moved).
    """
    events: list[DemoEvent] = []
    result = await run_demo(
        emit=events.append, host=loopback_host, seed=11, boot_delay_s=0.1, port_offset=port_offset
    )
    assert result.threshold is not None
    assert result.hung_at_sessions == result.threshold
    assert result.stayed_hung
    assert result.refused_while_booting
    assert result.recovered
    assert result.banners[21] == "220 (vsFTPd 2.3.4)"
    assert result.banners[22] == "SSH-2.0-dropbear_0.52"
    assert "login:" in result.banners[23]
    assert "GoAhead-Webs" in result.banners[8080]
    # Latency rises with load: the most loaded measurement is slower than the idle one.
    loads = dict(result.latency_by_load_s)
    assert loads[max(loads)] > loads[0]
    kinds = {e.kind for e in events}
    assert {"section", "info", "row", "warn", "ok"} <= kinds
    if port_offset:
        assert any("10021" in e.text for e in events)


async def test_demo_rejects_a_non_loopback_host() -> None:
    with pytest.raises(ConfigError, match=r"^host"):
        await run_demo(emit=lambda e: None, host="192.168.0.10")


def test_demo_cli_runs_to_the_end() -> None:
    out = subprocess.run(
        [*fragileprobe_command(), "demo", "--boot-delay", "0.2", "--seed", "3"],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert out.returncode == 0, out.stderr
    assert "vsFTPd 2.3.4" in out.stdout
    assert "HUNG" in out.stdout
    assert "recovered after power cycle: yes" in out.stdout
    assert "Traceback" not in out.stderr


def test_demo_cli_bad_host_is_exit_2() -> None:
    out = subprocess.run(
        [*fragileprobe_command(), "demo", "--host", "8.8.8.8"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 2
    assert out.stderr.startswith("error: host:")
    assert "Traceback" not in out.stderr
