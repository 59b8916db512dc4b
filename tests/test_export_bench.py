"""Smoke run of benchmarks/bench_export.py: both nmap lines scan the whole emulated group and hang nothing."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_export.py"


@pytest.mark.bench
@pytest.mark.nmap
@pytest.mark.skipif(shutil.which("nmap") is None, reason="needs the nmap binary")
def test_bench_export_quick_scans_every_port_and_hangs_no_pump() -> None:
    out = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--json"],
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout)
    args = result["exported_args"]
    assert args[args.index("--max-parallelism") + 1] == "5"
    assert args[args.index("--max-hostgroup") + 1] == "33"
    assert "--max-hostgroup" in result["previous_args"]
    runs = {r["run"]: r for r in result["rows"]}
    assert set(runs) == {"exported", "previous (--max-hostgroup 1)", "nmap -sT (defaults)"}
    for row in runs.values():
        assert row["open_found"] == row["open_expected"] == 33 * 4
        assert row["hung"] == 0
    assert runs["exported"]["peak_sessions"] <= 5
