"""The "Done when" of discovery: the 254-address hospital fleet, a medical and a general zone.

Pumps of two models sit in both zones (some on the wrong network drop), plus slow pumps, patient monitors,
workstations, printers and servers. Discovery must put every pump in "Medical Device?" or its model's group,
raise exactly one alert per pump in the general zone, put workstations in "safe to scan", hang no device and
send nothing to a printer port.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

from fragileprobe._discovery_run import discover
from fragileprobe._fingerprint import model_key
from fragileprobe._groups import Zone, Zones
from fragileprobe._profile import Characterization, LevelOutcome, LevelResult, TrialResult
from fragileprobe._scope import Scope
from fragileprobe._store import ProfileStore
from fragileprobe.emulator import MODELS, DeviceState, Fleet
from fragileprobe.emulator._fleet import hospital_fleet

if TYPE_CHECKING:
    from pathlib import Path

# The fleet's services, small enough to keep the test quick: the pump stack, the monitor's clinical ports,
# the workstation's SMB/RDP/WinRM, the printer's raw port (connect + close only) and web UIs.
PORTS = (21, 22, 23, 80, 104, 445, 2575, 3389, 5985, 8080, 9100)
PUMPS = ("infusion-pump", "syringe-pump", "slow-pump")


def fleet_prefix() -> str:
    # conftest hands out 127.<64 + pid % 64>.<y>.<z> one address at a time from y = 0 up; a whole /24 at
    # y = 255 never meets those in a test run.
    return f"127.{64 + os.getpid() % 64}.255"


def spec_model_key(model_name: str) -> str:
    """The model key of an emulated model computed from its catalogue entry (what its services say)."""
    model = MODELS[model_name]
    ports = [p for p in model.services if p in PORTS]
    speaks_first = ("ftp", "ssh", "telnet", "banner")
    banners = {p: s.banner for p, s in model.services.items() if p in ports and s.kind in speaks_first}
    web = model.services.get(8080) or model.services.get(80)
    return model_key(open_ports=ports, banners=banners, server_header=web.server_header if web else None)


def store_profile(store: ProfileStore, key: str, *, host: str, fails_at: int) -> None:
    """Store a characterization of ``key`` that passed up to below ``fails_at`` and crashed there."""
    levels = [
        LevelResult(level=n, outcome=LevelOutcome.PASSED, dwell_s=1.0, elapsed_s=1.0)
        for n in (1, 2, 3, 4)
        if n < fails_at
    ]
    levels.append(LevelResult(level=fails_at, outcome=LevelOutcome.FAILED, dwell_s=1.0, elapsed_s=0.5))
    char = Characterization.from_trials(
        host=host,
        model_key=key,
        ladder=(1, 2, 3, 4, fails_at),
        trials=[TrialResult(index=0, levels=tuple(levels))],
    )
    store.save(char)


async def test_hospital_fleet_discovery(tmp_path: Path) -> None:
    config = hospital_fleet(fleet_prefix(), seed=7, boot_delay_s=0.1)
    truth = config.ground_truth
    zones = Zones([Zone(name, tuple(ranges), kind=name) for name, ranges in config.zones.items()])
    store = ProfileStore(tmp_path / "fp.db")
    slow_key = spec_model_key("slow-pump")
    store_profile(store, slow_key, host="127.0.0.1", fails_at=5)
    ceiling = store.ceiling_for(slow_key)
    assert ceiling is not None
    alert_file = tmp_path / "alerts.jsonl"

    async with Fleet(config, control_port=None) as fleet:
        report = await discover(
            list(config.hosts),
            scope=Scope([f"{fleet_prefix()}.0/24"]),
            ports=PORTS,
            zones=zones,
            store=store,
            per_host_sessions=1,
            rate_per_host=50,
            max_hosts_in_parallel=128,
            connect_timeout_s=1.0,
            banner_timeout_s=0.3,
            seed=3,
            alert_file=alert_file,
        )
        stats = {host: fleet.device(host).stats for host in fleet.devices}
        states = {host: fleet.device(host).state for host in fleet.devices}

    by_host = {a.host: a for a in report.assets}
    devices = {h: t for h, t in truth.items() if t.model is not None}
    assert set(by_host) == set(devices), "every device found, no empty address reported"

    pumps = {h: t for h, t in devices.items() if t.model in PUMPS}
    for host, t in pumps.items():
        groups = set(by_host[host].groups)
        assert groups & {"Medical Device?", slow_key}, (host, t.model, groups)
        assert by_host[host].medical
    for host, t in devices.items():
        if t.model == "slow-pump":
            assert slow_key in by_host[host].groups
            assert by_host[host].ceiling == ceiling
        if t.model == "workstation":
            assert by_host[host].groups == (f"safe to scan ({t.zone})",), host
            assert not by_host[host].medical

    misplaced = {h for h, t in pumps.items() if t.zone == "general"}
    assert len(misplaced) == 4
    assert [a.host for a in report.alerts] == sorted(misplaced, key=lambda h: tuple(map(int, h.split("."))))
    lines = [json.loads(line) for line in alert_file.read_text().splitlines()]
    assert sorted(d["host"] for d in lines) == sorted(misplaced), "exactly one alert per misplaced pump"
    assert len(store.alerts()) == 4

    assert all(s.crashes == 0 for s in stats.values()), "no emulated device hung"
    assert all(state is DeviceState.UP for state in states.values())
    assert all(s.peak_sessions <= 1 for s in stats.values()), "one session per host at a time"
    printers = [h for h, t in devices.items() if t.model == "printer"]
    assert printers
    assert all(stats[h].bytes_received_by_port[9100] == 0 for h in printers), "nothing sent to 9100"
    assert all(stats[h].connects_total > 0 for h in printers)

    assert not report.unresponsive
    assert set(report.new) == set(devices), "first run: every host is new"
    assert report.scan_id is not None
