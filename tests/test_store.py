"""ProfileStore: runs, trials, profiles, inventory; schema versions, corrupt/locked files, two writers."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import sys
import textwrap
from typing import TYPE_CHECKING

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fragileprobe._errors import ConfigError, StoreError
from fragileprobe._profile import Characterization, LevelOutcome, LevelResult, TrialResult
from fragileprobe._store import SCHEMA_VERSION, ProfileStore

if TYPE_CHECKING:
    from pathlib import Path


def _trial(index: int, fail: int | None = 7) -> TrialResult:
    levels = [
        LevelResult(level=lv, outcome=LevelOutcome.PASSED, dwell_s=0.1, elapsed_s=0.1) for lv in (1, 2, 5)
    ]
    if fail is not None:
        levels.append(LevelResult(level=fail, outcome=LevelOutcome.FAILED, dwell_s=0.1, elapsed_s=0.05))
    return TrialResult(index=index, levels=tuple(levels), wall_time_s=0.4)


def _char(host: str = "127.0.0.9", model: str = "pump-abc", fail: int | None = 7) -> Characterization:
    return Characterization.from_trials(
        host=host, model_key=model, ladder=(1, 2, 5, 7), trials=[_trial(0, fail), _trial(1, fail)]
    )


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_save_history_profile_and_ceiling(tmp_path: Path) -> None:
    with ProfileStore(tmp_path / "s.db") as store:
        run_id = store.save(_char("127.0.0.9", fail=7))
        store.save(_char("127.0.0.10", fail=6))
        store.save(_char("127.0.0.11", model="other", fail=None))
        hist = store.history("pump-abc")
        assert [c.host for c in hist] == ["127.0.0.9", "127.0.0.10"]
        assert hist[0].run_id == run_id
        profile = store.profile("pump-abc")
        assert profile is not None
        assert profile.ceiling == 3  # the device failing at 6: 6 - 3
        assert store.ceiling_for("pump-abc") == 3
        assert store.ceiling_for("unknown") is None
        assert [p.model_key for p in store.profiles()] == ["other", "pump-abc"]


def test_trials_are_recorded_one_by_one_and_unfinished_runs_found(tmp_path: Path) -> None:
    """record_trial commits each trial at once; an unfinished run is found for resume, a finished one not."""
    path = tmp_path / "s.db"
    store = ProfileStore(path)
    run_id = store.begin_run(host="127.0.0.9", model_key="pump-abc", params={"dwell_s": 0.1})
    store.record_trial(run_id, _trial(0))
    with ProfileStore(path) as other:  # a second connection sees the committed trial immediately
        row = other.unfinished_run(host="127.0.0.9", model_key="pump-abc")
        assert row is not None
        assert row.run_id == run_id
        assert [t.index for t in row.trials] == [0]
        assert row.params == {"dwell_s": 0.1}
    store.record_trial(run_id, _trial(1))
    store.finish_run(run_id, _char())
    assert store.unfinished_run(host="127.0.0.9", model_key="pump-abc") is None
    assert store.run(run_id) is not None
    store.close()
    store.close()  # idempotent
    with pytest.raises(StoreError, match="closed"):
        store.history()


def test_new_store_has_current_schema_version_and_wal(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    ProfileStore(path).close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_newer_schema_is_refused_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE x(y)")
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    before = _digest(path)
    with pytest.raises(StoreError, match=rf"new\.db.*version {SCHEMA_VERSION + 1}.*\({SCHEMA_VERSION}\)"):
        ProfileStore(path)
    assert _digest(path) == before


@pytest.mark.parametrize(
    "content", [b"this is not a database at all" * 100, b"SQLite format 3\x00" + b"\xff" * 4000]
)
def test_corrupt_file_is_refused_and_left_untouched(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.db"
    path.write_bytes(content)
    with pytest.raises(StoreError, match=r"bad\.db"):
        ProfileStore(path)
    assert path.read_bytes() == content


_LOCKER = textwrap.dedent(
    """
    import sqlite3, sys, time
    conn = sqlite3.connect(sys.argv[1], isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    print("locked", flush=True)
    sys.stdin.readline()  # hold the write lock until the test says so (or closes our stdin)
    conn.execute("ROLLBACK")
    """
)


def test_store_locked_by_another_process_gives_store_error(tmp_path: Path) -> None:
    """Another process holding the write lock past the busy timeout: StoreError; stored data survives."""
    path = tmp_path / "s.db"
    with ProfileStore(path) as store:
        store.save(_char())
    with subprocess.Popen(
        [sys.executable, "-c", _LOCKER, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as locker:
        try:
            assert locker.stdout is not None
            assert locker.stdout.readline().strip() == "locked"
            with ProfileStore(path, busy_timeout_s=0.2) as store:
                with pytest.raises(StoreError, match="locked"):
                    store.save(_char("127.0.0.10"))
                assert len(store.history()) == 1  # readers are not blocked by a writer in WAL mode
        finally:
            locker.communicate("\n", timeout=10)
    with ProfileStore(path) as store:
        assert [c.host for c in store.history()] == ["127.0.0.9"]
        store.save(_char("127.0.0.10"))  # the lock is gone: writing works again
        assert len(store.history()) == 2


def test_bad_busy_timeout_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="busy_timeout_s"):
        ProfileStore(tmp_path / "s.db", busy_timeout_s=0)


_WRITER = textwrap.dedent(
    """
    import sys
    from fragileprobe._store import ProfileStore
    from fragileprobe._profile import LevelOutcome, LevelResult, TrialResult
    path, tag, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    store = ProfileStore(path, busy_timeout_s=30)
    run = store.begin_run(host="127.0.0." + tag, model_key="m")
    scan = store.start_scan(["127.0.0.0/24"], {"writer": tag})
    for i in range(n):
        lv = LevelResult(level=1, outcome=LevelOutcome.PASSED, dwell_s=0.1, elapsed_s=0.1)
        store.record_trial(run, TrialResult(index=i, levels=(lv,)))
        store.upsert_asset(f"10.{tag}.0.{i}", scan_id=scan, seen_at_s=float(i), zone="z")
        store.mark_host_done(scan, f"10.{tag}.0.{i}")
    store.close()
    """
)


def test_two_processes_writing_at_once_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    ProfileStore(path).close()
    n = 60
    procs = [
        subprocess.Popen([sys.executable, "-c", _WRITER, str(path), tag, str(n)], stderr=subprocess.PIPE)
        for tag in ("1", "2")
    ]
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err.decode()
    with ProfileStore(path) as store:
        runs = store.runs()
        assert sorted(r.host for r in runs) == ["127.0.0.1", "127.0.0.2"]
        assert all(len(r.trials) == n for r in runs)
        assert len(store.assets()) == 2 * n
        assert sum(len(store.hosts_done(s.scan_id)) for s in store.scans()) == 2 * n


def test_inventory_rows_keep_first_seen_and_previous_zone(tmp_path: Path) -> None:
    with ProfileStore(tmp_path / "s.db") as store:
        targets, params = ["127.0.1.0/24"], {"ports": [21, 8080]}
        scan = store.start_scan(targets, params)
        assert store.unfinished_scan(targets, params) is not None
        assert store.unfinished_scan(targets, {"ports": [22]}) is None
        store.upsert_asset(
            "127.0.1.5",
            scan_id=scan,
            seen_at_s=100.0,
            zone="medical",
            model_key="pump-abc",
            open_ports=[8080, 21],
            services=[{"port": 21, "service": "ftp"}],
            os_family="embedded",
            groups=["Medical Device?"],
        )
        store.mark_host_done(scan, "127.0.1.5")
        assert store.hosts_done(scan) == {"127.0.1.5"}
        store.finish_scan(scan)
        assert store.unfinished_scan(targets, params) is None
        scan2 = store.start_scan(targets, params)
        row = store.upsert_asset("127.0.1.5", scan_id=scan2, seen_at_s=200.0, zone="general", open_ports=[21])
        assert row.first_seen_s == 100.0
        assert row.last_seen_s == 200.0
        assert row.zone == "general"
        assert row.previous_zone == "medical"
        assert row.previous_scan_id == scan
        assert row.open_ports == (21,)
        assert store.asset("127.0.1.5") == row
        assert store.asset("127.0.1.6") is None
        first = store.asset("127.0.1.5")
        assert first is not None
        store.record_alert({"host": "127.0.1.5", "zone": "general"})
        assert store.alerts() == [{"host": "127.0.1.5", "zone": "general"}]


def test_export_and_import_round_trip(tmp_path: Path) -> None:
    with ProfileStore(tmp_path / "a.db") as a:
        a.save(_char())
        a.save(_char("127.0.0.10", fail=6))
        text = a.export_json()
    with ProfileStore(tmp_path / "b.db") as b:
        assert b.import_json(text) == 2
        assert b.import_json(text) == 0  # same run ids: nothing added twice
        assert b.ceiling_for("pump-abc") == 3
    with ProfileStore(tmp_path / "c.db") as c, pytest.raises(ConfigError):
        c.import_json('{"nope": 1}')


def test_export_document_keeps_its_asset_and_alert_shape(tmp_path: Path) -> None:
    """The asset dicts of export_json are generated from AssetRow's fields: same keys as always, lists for
    tuples, no scan ids (they only mean something in their own store)."""
    with ProfileStore(tmp_path / "s.db") as store:
        scan = store.start_scan(["127.0.1.5"])
        store.upsert_asset(
            "127.0.1.5",
            scan_id=scan,
            seen_at_s=5.0,
            zone="icu",
            open_ports=[80, 21, 80],
            services={"21": "ftp"},
            groups=["Medical Device?"],
        )
        store.record_alert({"host": "127.0.1.5"})
        data = json.loads(store.export_json())
    assert data["assets"] == [
        {
            "host": "127.0.1.5",
            "first_seen_s": 5.0,
            "last_seen_s": 5.0,
            "zone": "icu",
            "previous_zone": None,
            "model_key": None,
            "open_ports": [21, 80],
            "services": {"21": "ftp"},
            "os_family": None,
            "groups": ["Medical Device?"],
        }
    ]
    assert list(data["assets"][0]) == [
        "host",
        "first_seen_s",
        "last_seen_s",
        "zone",
        "previous_zone",
        "model_key",
        "open_ports",
        "services",
        "os_family",
        "groups",
    ]
    assert data["alerts"] == [{"host": "127.0.1.5"}]
    assert data["fragileprobe_store"] == SCHEMA_VERSION


_ZONES = st.one_of(st.none(), st.sampled_from(["icu", "office", "lab"]))


@settings(max_examples=25, deadline=None)
@given(
    sightings=st.lists(
        st.tuples(
            st.floats(min_value=0, max_value=1e9, allow_nan=False),
            _ZONES,
            st.lists(st.integers(min_value=1, max_value=65535), max_size=6),
            st.lists(st.text(min_size=1, max_size=8), max_size=3),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_upsert_keeps_the_earliest_sighting_and_the_zone_before(
    tmp_path_factory: pytest.TempPathFactory, sightings: list[tuple[float, str | None, list[int], list[str]]]
) -> None:
    """Any sequence of sightings of one host: first_seen is the earliest, last_seen the latest given, the
    previous zone is the one before the last upsert, ports are sorted and unique, and reading the row back
    gives what the upsert returned."""
    path = tmp_path_factory.mktemp("upsert") / "s.db"
    with ProfileStore(path) as store:
        row = None
        for i, (seen, zone, ports, groups) in enumerate(sightings):
            row = store.upsert_asset(
                "127.0.1.5", scan_id=i, seen_at_s=seen, zone=zone, open_ports=ports, groups=groups
            )
        assert row is not None
        assert store.asset("127.0.1.5") == row
        assert store.assets() == [row]
    last_seen, last_zone, last_ports, last_groups = sightings[-1]
    assert row.first_seen_s == min(s[0] for s in sightings)
    assert row.last_seen_s == last_seen
    assert row.zone == last_zone
    assert row.previous_zone == (sightings[-2][1] if len(sightings) > 1 else None)
    assert row.previous_scan_id == (len(sightings) - 2 if len(sightings) > 1 else None)
    assert row.open_ports == tuple(sorted(set(last_ports)))
    assert row.groups == tuple(last_groups)
