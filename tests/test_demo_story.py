"""``fragileprobe demo``: the whole story (discovery alert, characterization with power cycles, stored
profile, the model recognized, scanner settings), in-process and through the real entry point."""

from __future__ import annotations

import json
import subprocess
from typing import TYPE_CHECKING

import pytest

from conftest import allocate_loopback
from fragileprobe._demo import DemoEvent, run_story
from fragileprobe.emulator._process import fragileprobe_command

if TYPE_CHECKING:
    from pathlib import Path

# The story must stay short: the README promises about half a minute (and at most 1-2 minutes).
DEMO_TIMEOUT_S = 120


def _ward_hosts() -> str:
    # The story puts its ward at the pump's address and the next four: take five fresh ones in a row.
    hosts = [allocate_loopback() for _ in range(5)]
    return hosts[0]


@pytest.mark.parametrize("port_offset", [None, 10000])
async def test_story_finds_measures_stores_and_recommends(port_offset: int | None, tmp_path: Path) -> None:
    """With root's ports and with a non-root user's moved ports, the story holds together: the pump on the
    office network is the one alert, both pumps look medical, the characterization crashes the pump and
    power-cycles it each time, its ceiling stays below every crash, the second discovery recognizes the
    model, and the recommended settings carry the ceiling."""
    events: list[DemoEvent] = []
    host = _ward_hosts()
    result = await run_story(
        emit=events.append,
        host=host,
        seed=2026,
        boot_delay_s=0.1,
        port_offset=port_offset,
        store_path=str(tmp_path / "demo.db"),
        dwell_s=0.3,
        trials=2,
    )
    assert result.host == host
    assert result.alerts == (host,)
    medical = result.groups["Medical Device?"]
    assert host in medical
    assert len(medical) == 2
    assert len(result.groups["safe to scan (Office LAN)"]) == 2  # the workstation and the printer
    assert len(result.assets) == 4  # the empty address answers nothing
    assert result.failed_at is not None
    assert result.safe_ceiling is not None
    assert 1 <= result.safe_ceiling < result.failed_at
    assert result.crashes >= 1
    assert result.power_cycles == result.crashes
    assert result.recovered
    assert result.recognized_group == result.model_key
    assert result.settings is not None
    assert result.settings["sessions_per_host"] == result.safe_ceiling
    assert (tmp_path / "demo.db").exists()
    kinds = [e.kind for e in events]
    assert kinds.count("alert") == 1
    assert kinds.count("down") == result.crashes
    assert sum(1 for e in events if e.kind == "section") == 7
    text = "\n".join(e.text for e in events)
    assert "vsFTPd 2.3.4" in text
    assert f"--max-parallelism {result.safe_ceiling}" in text
    if port_offset:
        assert "10021/ftp" in text


def test_demo_cli_json_as_a_non_root_user_would_see_it() -> None:
    """``fragileprobe demo --json`` with the ports a non-root user gets: exit 0, only JSON on stdout, the
    story (alert, device-down panel, settings, recovery) on stderr."""
    out = subprocess.run(
        [
            *fragileprobe_command(),
            "demo",
            "--json",
            "--port-offset",
            "10000",
            "--boot-delay",
            "0.2",
            "--dwell",
            "0.3",
            "--trials",
            "2",
            "--host",
            _ward_hosts(),
        ],
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT_S,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    data = json.loads(out.stdout)
    assert data["alerts"] == [data["host"]]
    assert data["safe_ceiling"] < data["failed_at"]
    assert data["recovered"] is True
    assert "Not root: services below port 1024 listen at +10000." in out.stderr
    assert "ALERT" in out.stderr
    assert "DEVICE DOWN" in out.stderr
    assert "Recommended scanner settings" in out.stderr
    assert "recovered after power cycle: yes" in out.stderr
    assert "Traceback" not in out.stderr
