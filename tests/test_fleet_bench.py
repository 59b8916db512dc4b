"""Smoke run of benchmarks/bench_fleet.py: a 254-host fleet starts in one process and serves every port."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_fleet.py"


@pytest.mark.bench
def test_bench_fleet_254_pumps_serve_every_port() -> None:
    out = subprocess.run(
        [sys.executable, str(BENCH), "--fleet", "uniform", "--prefix", "127.78.200", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout)
    assert result["devices"] == 254
    assert result["listening_sockets"] == 254 * 4
    assert result["check_connects"] == result["listening_sockets"]
    assert result["check_http_ok"] == 254
    assert result["devices_not_up"] == 0
    # Memory is reported, not judged (machines differ); it must at least be a sane number.
    assert 0 < result["rss_after_serving_mib"] < 2048
