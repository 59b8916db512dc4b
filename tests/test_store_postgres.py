"""ProfileStore on PostgreSQL: the same schema, migrations and promises as on SQLite, against a real server.

The server is a throw-away PostgreSQL in a temporary directory on 127.0.0.1 (tests/_support/sites.py);
without the binaries or psycopg the tests skip with the reason.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fragileprobe import StoreError
from fragileprobe._db import pg_ddl, pg_sql
from fragileprobe._profile import Characterization, LevelOutcome, LevelResult, TrialResult
from fragileprobe._schema import MIGRATIONS as _MIGRATIONS
from fragileprobe._store import SCHEMA_VERSION, ProfileStore


def _trial(index: int, fails_at: int) -> TrialResult:
    levels = [
        LevelResult(level=n, outcome=LevelOutcome.PASSED, dwell_s=1.0, elapsed_s=1.0)
        for n in (1, 2, 3)
        if n < fails_at
    ]
    levels.append(LevelResult(level=fails_at, outcome=LevelOutcome.FAILED, dwell_s=1.0, elapsed_s=0.5))
    return TrialResult(index=index, levels=tuple(levels))


def _exercise(store: ProfileStore) -> dict[str, object]:
    """The same sequence of writes on any backend; what the store reads back, minus times and ids."""
    run_id = store.begin_run(host="127.0.0.9", model_key="pump-x", params={"ladder": [1, 2, 3]})
    store.record_trial(run_id, _trial(0, 3))
    store.record_trial(run_id, _trial(1, 4))
    unfinished = store.unfinished_run(host="127.0.0.9", model_key="pump-x")
    none_key = store.begin_run(host="127.0.0.8", model_key=None)
    char = Characterization.from_trials(
        host="127.0.0.9", model_key="pump-x", ladder=(1, 2, 3, 4), trials=[_trial(0, 3), _trial(1, 4)]
    )
    store.finish_run(run_id, char)
    scan = store.start_scan(["127.0.0.9", "127.0.0.10"], {"ports": [21]})
    store.mark_host_done(scan, "127.0.0.9")
    store.mark_host_done(scan, "127.0.0.9")  # twice: still one row
    first = store.upsert_asset(
        "127.0.0.9",
        scan_id=scan,
        seen_at_s=10.0,
        zone="icu",
        open_ports=[21, 8080],
        services=[{"port": 21}],
        groups=["Medical Device?"],
    )
    second = store.upsert_asset("127.0.0.9", scan_id=scan, seen_at_s=20.0, zone="office", open_ports=[21])
    alert = store.record_alert({"host": "127.0.0.9", "scan_id": scan})
    return {
        "unfinished_trials": len(unfinished.trials) if unfinished else None,
        "none_key_unfinished": store.unfinished_run(host="127.0.0.8", model_key=None).run_id == none_key,  # type: ignore[union-attr]
        "trials": [t.to_dict() for t in store.trials(run_id)],
        "ceiling": store.ceiling_for("pump-x"),
        "profiles": [p.model_key for p in store.profiles()],
        "hosts_done": store.hosts_done(scan),
        "unfinished_scan": store.unfinished_scan(["127.0.0.9", "127.0.0.10"], {"ports": [21]}) is not None,
        "first": (first.first_seen_s, first.zone, first.previous_zone, first.open_ports),
        "second": (
            second.first_seen_s,
            second.last_seen_s,
            second.zone,
            second.previous_zone,
            second.open_ports,
        ),
        "alerts": store.alerts(),
        "alert_id": alert,
        "assets": [a.host for a in store.assets()],
    }


def test_postgres_store_reads_back_what_sqlite_does(tmp_path: Path, pg_url: str) -> None:
    """Every method, run once on a SQLite file and once on PostgreSQL, gives the same answers."""
    with ProfileStore(tmp_path / "fp.db") as lite, ProfileStore(pg_url) as pg:
        assert _exercise(lite) == _exercise(pg)
        assert "fragileprobe_meta" not in str(pg.export_json())


def test_postgres_store_reopens_with_its_data_and_version(pg_url: str) -> None:
    with ProfileStore(pg_url) as store:
        scan = store.start_scan(["127.0.0.1"])
        store.mark_host_done(scan, "127.0.0.1")
    with ProfileStore(pg_url) as again:
        assert again.hosts_done(scan) == {"127.0.0.1"}
        version = again.db.query("SELECT value FROM fragileprobe_meta WHERE key = 'schema_version'")
    assert version == [(str(SCHEMA_VERSION),)]


def test_postgres_migrates_a_version_1_store_step_by_step(pg_url: str) -> None:
    """A database at schema 1 (tables of step 1 only) gains step 2's tables on open, its rows kept."""
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE fragileprobe_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        conn.execute(
            "INSERT INTO fragileprobe_meta VALUES ('application', 'fragileprobe'), ('schema_version', '1')"
        )
        for statement in _MIGRATIONS[0].split(";"):
            if statement.strip():
                conn.execute(pg_ddl(statement))  # type: ignore[call-overload]
        conn.execute("INSERT INTO alerts(recorded_at_s, alert_json) VALUES (1.0, '{\"kept\": true}')")
    with ProfileStore(pg_url) as store:
        assert store.alerts() == [{"kept": True}]
        assert store.db.query("SELECT count(*) FROM leases") == [(0,)]


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("CREATE TABLE patients (id int)", r"holds 1 other tables and no fragileprobe_meta: a foreign"),
        (
            "CREATE TABLE fragileprobe_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
            "INSERT INTO fragileprobe_meta VALUES ('application', 'billing'), ('schema_version', '1')",
            r"names application 'billing'",
        ),
        (
            "CREATE TABLE fragileprobe_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
            "INSERT INTO fragileprobe_meta VALUES ('application', 'fragileprobe'), ('schema_version', '99')",
            rf"schema version 99, newer than this fragileprobe supports \({SCHEMA_VERSION}\)",
        ),
        (
            "CREATE TABLE fragileprobe_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
            "INSERT INTO fragileprobe_meta VALUES ('application', 'fragileprobe'), ('schema_version', 'x')",
            r"is corrupt: schema_version 'x'",
        ),
    ],
    ids=["foreign", "other-application", "newer", "corrupt-version"],
)
def test_postgres_store_refuses_what_is_not_its_own(pg_url: str, setup: str, message: str) -> None:
    """A foreign, newer or damaged database raises StoreError and is left exactly as it was."""
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        for statement in setup.split(";"):
            conn.execute(statement)  # type: ignore[call-overload]
        before = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchone()
    with pytest.raises(StoreError, match=message):
        ProfileStore(pg_url)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        after = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchone()
    assert before == after


def test_unreachable_postgres_is_a_store_error() -> None:
    pytest.importorskip("psycopg", reason="psycopg 3 not installed")
    from fragileprobe.sites._local import free_port

    with pytest.raises(StoreError, match=r"cannot open profile store postgresql://nobody@127\.0\.0\.1"):
        ProfileStore(f"postgresql://nobody@127.0.0.1:{free_port()}/none")


def test_two_writers_lose_nothing_on_postgres(pg_url: str) -> None:
    """Two stores (two connections) writing the same hosts at once: every write lands, none is lost."""
    ProfileStore(pg_url).close()  # create the schema once
    per_writer = 60
    errors: list[BaseException] = []

    def writer(name: str) -> None:
        try:
            with ProfileStore(pg_url) as store:
                scan = store.start_scan([name])
                for i in range(per_writer):
                    host = f"127.0.9.{i}"  # the same hosts for both writers: upsert races
                    store.upsert_asset(host, scan_id=scan, seen_at_s=float(i), zone=name, open_ports=[i + 1])
                    store.record_alert({"writer": name, "i": i})
                    store.mark_host_done(scan, host)
        except BaseException as exc:  # re-raised in the test thread below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    with ProfileStore(pg_url) as store:
        assets = store.assets()
        assert len(assets) == per_writer  # one row per host, never a duplicate-key failure
        assert all(a.first_seen_s == float(int(a.host.rsplit(".", 1)[1])) for a in assets)
        alerts = store.alerts()
        assert sorted((a["writer"], a["i"]) for a in alerts) == sorted(
            (w, i) for w in ("a", "b") for i in range(per_writer)
        )
        assert [len(store.hosts_done(s.scan_id)) for s in store.scans()] == [per_writer, per_writer]


_SQL_PIECE = st.sampled_from(
    [
        "SELECT a FROM t WHERE x = ?",
        " AND y IS ?",
        " AND z = ?",
        " LIMIT 1",
        " AND w LIKE 'a%'",
        " RETURNING id",
    ]
)


@given(st.lists(_SQL_PIECE, min_size=1, max_size=8))
def test_pg_sql_translates_every_placeholder(pieces: list[str]) -> None:
    """Every ``?`` becomes one ``%s``, ``IS ?`` a NULL-safe comparison, a literal ``%`` is escaped."""
    sql = "".join(pieces)
    out = pg_sql(sql)
    assert "?" not in out
    assert out.count("%s") == sql.count("?")
    assert out.count("IS NOT DISTINCT FROM %s") == sql.count("IS ?")
    assert out.replace("%s", "").count("%") == 2 * sql.count("%")


def test_pg_sql_refuses_insert_or_replace_and_rewrites_insert_or_ignore() -> None:
    with pytest.raises(StoreError, match="INSERT OR REPLACE"):
        pg_sql("INSERT OR REPLACE INTO t(a) VALUES (?)")
    assert (
        pg_sql("INSERT OR IGNORE INTO t(a) VALUES (?)")
        == "INSERT INTO t(a) VALUES (%s) ON CONFLICT DO NOTHING"
    )
    assert pg_sql("INSERT OR IGNORE INTO t(a) VALUES (?) RETURNING a") == (
        "INSERT INTO t(a) VALUES (%s) ON CONFLICT DO NOTHING RETURNING a"
    )


def test_postgres_store_never_overwrites_a_trial_and_keeps_unfinished_runs(pg_url: str) -> None:
    """The evidence rules hold on PostgreSQL too: another trial under a stored index is a StoreError, and a
    run stopped by a failed recovery bounds the model's ceiling."""
    crash = TrialResult(
        index=0,
        levels=(
            LevelResult(level=2, outcome=LevelOutcome.PASSED, dwell_s=0.1, elapsed_s=0.1),
            LevelResult(level=5, outcome=LevelOutcome.FAILED, dwell_s=0.1, elapsed_s=0.1),
        ),
        complete=False,
    )
    redo = TrialResult(
        index=0, levels=(LevelResult(level=5, outcome=LevelOutcome.PASSED, dwell_s=0.1, elapsed_s=0.1),)
    )
    with ProfileStore(pg_url) as store:
        run = store.begin_run(host="127.0.0.9", model_key="pg-evidence", params={})
        store.record_trial(run, crash)
        store.record_trial(run, crash)  # the same trial again: a no-op
        with pytest.raises(StoreError, match="never overwritten"):
            store.record_trial(run, redo)
        store.mark_run(run, "recovery_failed")
        assert store.trials(run) == (crash,)
        ceiling = store.ceiling_for("pg-evidence")
        assert ceiling is not None
        assert ceiling < 5
