"""The demo's last step writes the scanner files from what the story measured, and says where."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING

from tests.conftest import allocate_loopback

from fragileprobe._demo import DemoEvent, run_story

if TYPE_CHECKING:
    from pathlib import Path


async def test_demo_writes_the_scanner_files_next_to_the_store(tmp_path: Path) -> None:
    events: list[DemoEvent] = []
    ward = [allocate_loopback() for _ in range(5)]  # the story's ward: the pump's address and the next four
    host = ward[0]
    result = await run_story(
        emit=events.append,
        host=host,
        seed=2026,
        boot_delay_s=0.1,
        store_path=str(tmp_path / "demo.db"),
        dwell_s=0.3,
        trials=1,
    )
    out = tmp_path / "fragileprobe-exports"
    assert result.exports_dir == str(out)
    said = [e.text for e in events if "Scanner files written to" in e.text]
    assert said == [said[0]]
    assert str(out) in said[0]
    assert events[-1].text == said[0]  # the last step
    # the pump's model group carries the measured ceiling; the pump on the office network is in it
    assert result.model_key is not None
    nessus = sorted((out / "nessus").glob("*.nessus"))
    assert nessus
    policies = {p.name: ET.parse(p).getroot() for p in nessus}
    pump_policy = next(
        r for r in policies.values() if result.model_key in (r.findtext("Policy/policyName") or "")
    )
    prefs = {x.findtext("name"): x.findtext("value") for x in pump_policy.iter("preference")}
    assert prefs["host.max_simult_tcp_sessions"] == str(result.safe_ceiling)
    pump_targets = [
        p
        for p in (out / "targets").glob("*.txt")
        if not p.name.endswith(".exclude.txt") and host in p.read_text().split()
    ]
    assert len(pump_targets) == 1
    regular = out / "targets" / "safe-to-scan-Office-LAN.txt"
    assert host not in regular.read_text().split()
    assert (out / "nmap" / "commands.sh").stat().st_mode & 0o111
