"""``fragileprobe profiles export --format ...``: the files scanners import, from a store."""

from __future__ import annotations

import json
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from tests._support.procs import fragileprobe_command

from fragileprobe._profile import Characterization, LevelOutcome, LevelResult, TrialResult
from fragileprobe._store import ProfileStore

PUMP = "mis3000-aa388f080437"
TIMEOUT_S = 60


def _store(path: Path) -> Path:
    levels = [
        LevelResult(level=n, outcome=LevelOutcome.PASSED, dwell_s=1.0, elapsed_s=1.0) for n in (1, 2, 5)
    ]
    levels.append(LevelResult(level=7, outcome=LevelOutcome.FAILED, dwell_s=1.0, elapsed_s=0.5))
    with ProfileStore(path) as db:
        db.save(
            Characterization.from_trials(
                host="127.0.0.1",
                model_key=PUMP,
                ladder=(1, 2, 5, 7),
                trials=[TrialResult(index=0, levels=tuple(levels))],
            )
        )
        scan = db.start_scan(["10.0.0.0/24"])
        for host, groups in (
            ("10.0.1.1", ("Medical Device?", PUMP)),
            ("10.0.3.1", ("Medical Device?",)),
            ("10.0.9.1", ("safe to scan (general)",)),
        ):
            db.upsert_asset(
                host,
                scan_id=scan,
                seen_at_s=1.0,
                zone="z",
                model_key=PUMP if PUMP in groups else None,
                groups=groups,
            )
    return path


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*fragileprobe_command(), *args], capture_output=True, text=True, timeout=TIMEOUT_S, check=False
    )


def test_format_nessus_and_targets_write_files_and_say_where(tmp_path: Path) -> None:
    db = _store(tmp_path / "fp.db")
    out = tmp_path / "exports"
    done = _run(
        "profiles",
        "export",
        "--store",
        str(db),
        "--format",
        "nessus",
        "--format",
        "targets",
        "--out",
        str(out),
    )
    assert done.returncode == 0, done.stderr
    assert str(out) in done.stdout
    assert "Medical Device?: 1 host(s), at most 1 session(s) per host" in done.stdout
    nessus = sorted(p.name for p in (out / "nessus").iterdir())
    assert len(nessus) == 3
    for p in (out / "nessus").iterdir():
        assert ET.parse(p).getroot().tag == "NessusClientData_v2"
    regular = (out / "targets" / "safe-to-scan-general.txt").read_text().split()
    assert regular == ["10.0.9.1"]
    assert not (out / "gmp").exists()


def test_format_all_as_json_lists_every_file(tmp_path: Path) -> None:
    db = _store(tmp_path / "fp.db")
    out = tmp_path / "exports"
    done = _run("profiles", "export", "--store", str(db), "--format", "all", "--out", str(out), "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["formats"] == ["nessus", "gmp", "insightvm", "nmap", "targets"]
    for path in result["files"]:
        assert Path(path).is_file()
        assert Path(path).is_relative_to(out.resolve())
    assert result["groups"][PUMP]["hosts"] == ["10.0.1.1"]
    assert result["groups"][PUMP]["sessions_per_host"] == 3  # B = 6 (6 never tested), 3 levels below it
    assert (out / "nmap" / "commands.sh").read_text().count("\nnmap -sT") == 3


@pytest.mark.parametrize("bad", ["pdf", "nessus,xls"])
def test_unknown_format_is_bad_input(tmp_path: Path, bad: str) -> None:
    db = _store(tmp_path / "fp.db")
    done = _run("profiles", "export", "--store", str(db), "--format", bad, "--out", str(tmp_path / "o"))
    assert done.returncode == 2
    assert "--format: unknown" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "o").exists()


def test_missing_store_is_bad_input(tmp_path: Path) -> None:
    done = _run("profiles", "export", "--store", str(tmp_path / "none.db"), "--format", "gmp")
    assert done.returncode == 2
    assert "does not exist" in done.stderr


def test_without_format_the_json_document_is_unchanged(tmp_path: Path) -> None:
    db = _store(tmp_path / "fp.db")
    done = _run("profiles", "export", "--store", str(db))
    assert done.returncode == 0, done.stderr
    assert "characterizations" in json.loads(done.stdout)
