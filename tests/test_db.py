"""The store's database core: the one driver-error -> StoreError table, the row columns derived from records,
and the Database's lock and closed flag. Pure where it can be (errors built by hand, no file)."""

from __future__ import annotations

import re
import sqlite3
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fragileprobe._db import (
    Database,
    RecordColumns,
    SqliteBackend,
    error_kind,
    is_busy,
    store_error,
    translated,
)
from fragileprobe._errors import StoreError
from fragileprobe._schema import MIGRATIONS

if TYPE_CHECKING:
    from pathlib import Path

    from fragileprobe._db import Phase


def _sqlite(kind: type[sqlite3.Error], message: str, code: int | None) -> sqlite3.Error:
    exc = kind(message)
    if code is not None:
        exc.sqlite_errorcode = code  # what sqlite3 sets on a real error
    return exc


# (phase, error, message pattern): the table, row by row. 5 = SQLITE_BUSY, 6 = SQLITE_LOCKED,
# 261 = SQLITE_BUSY_RECOVERY (extended), 11 = SQLITE_CORRUPT, 26 = SQLITE_NOTADB, 10 = SQLITE_IOERR.
ERROR_ROWS: list[tuple[Phase, sqlite3.Error, str]] = [
    (
        "open",
        _sqlite(sqlite3.OperationalError, "unable to open database file", 14),
        r"^cannot open profile store s\.db: unable to open database file$",
    ),
    (
        "inspect",
        _sqlite(sqlite3.OperationalError, "database is locked", 5),
        r"^profile store s\.db is locked: ",
    ),
    (
        "inspect",
        _sqlite(sqlite3.DatabaseError, "file is not a database", 26),
        r"s\.db is corrupt or not a fragileprobe store: file is not a database$",
    ),
    (
        "inspect",
        _sqlite(sqlite3.OperationalError, "disk I/O error", 10),
        r"s\.db is unusable: disk I/O error",
    ),
    (
        "write",
        _sqlite(sqlite3.OperationalError, "database is locked", 5),
        r"s\.db is locked by another writer \(waited 0\.2 s\): database is locked$",
    ),
    ("write", _sqlite(sqlite3.OperationalError, "database is busy", 261), r"locked by another writer"),
    ("write", _sqlite(sqlite3.OperationalError, "database table is locked", 6), r"locked by another writer"),
    ("use", _sqlite(sqlite3.OperationalError, "database is locked", 5), r"^profile store s\.db is locked: "),
    (
        "use",
        _sqlite(sqlite3.DatabaseError, "database disk image is malformed", 11),
        r"s\.db is corrupt: database disk image is malformed",
    ),
    (
        "use",
        _sqlite(sqlite3.IntegrityError, "UNIQUE constraint failed: t.a", 2067),
        r"^profile store s\.db: UNIQUE constraint failed: t\.a$",
    ),
    (
        "use",
        _sqlite(sqlite3.ProgrammingError, "Cannot operate on a closed database.", None),
        r"^profile store s\.db: Cannot operate on a closed database\.$",
    ),
    (
        "commit",
        _sqlite(sqlite3.OperationalError, "disk I/O error", 10),
        r"s\.db: commit failed: disk I/O error",
    ),
]


@pytest.mark.parametrize(
    ("phase", "error", "pattern"), ERROR_ROWS, ids=[f"{r[0]}-{r[1]}" for r in ERROR_ROWS]
)
def test_each_driver_error_maps_to_one_store_error_message(
    phase: Phase, error: sqlite3.Error, pattern: str
) -> None:
    made = store_error(error, where="s.db", phase=phase, waited_s=0.2)
    assert isinstance(made, StoreError)
    assert made.args[0] == str(made)
    assert re.search(pattern, str(made)), str(made)


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (_sqlite(sqlite3.OperationalError, "database is locked", 5), "busy"),
        (_sqlite(sqlite3.OperationalError, "x", 517), "busy"),  # SQLITE_BUSY_SNAPSHOT
        (_sqlite(sqlite3.OperationalError, "database is locked", None), "down"),  # no code: never by text
        (_sqlite(sqlite3.DatabaseError, "x", 11), "damaged"),
        (_sqlite(sqlite3.DatabaseError, "x", 26), "damaged"),
        (_sqlite(sqlite3.OperationalError, "x", 10), "down"),
        (_sqlite(sqlite3.IntegrityError, "x", 19), "other"),
        (ValueError("not a driver error"), "other"),
    ],
)
def test_error_kind_reads_the_result_code_not_the_text(error: Exception, kind: str) -> None:
    assert error_kind(error) == kind


def test_psycopg_errors_are_classified_by_class() -> None:
    psycopg = pytest.importorskip("psycopg", reason="psycopg 3 not installed")
    assert error_kind(psycopg.errors.LockNotAvailable("lock timeout")) == "busy"
    assert error_kind(psycopg.OperationalError("server closed the connection")) == "down"
    assert error_kind(psycopg.errors.UniqueViolation("duplicate key")) == "other"
    pattern = r"^profile store pg is unreachable or unusable: server closed$"
    with pytest.raises(StoreError, match=pattern), translated("pg", "use"):
        raise psycopg.OperationalError("server closed\nDETAIL: more lines")


@given(
    phase=st.sampled_from(["open", "inspect", "write", "use", "commit"]),
    kind=st.sampled_from(
        [
            sqlite3.Error,
            sqlite3.DatabaseError,
            sqlite3.OperationalError,
            sqlite3.IntegrityError,
            sqlite3.ProgrammingError,
            sqlite3.InterfaceError,
        ]
    ),
    code=st.one_of(st.none(), st.integers(min_value=0, max_value=1 << 16)),
    text=st.text(max_size=40),
)
def test_any_driver_error_becomes_a_store_error_naming_the_store(
    phase: Phase, kind: type[sqlite3.Error], code: int | None, text: str
) -> None:
    """Whatever sqlite3 raises, in any phase: a StoreError naming the store, chained to the original."""
    original = _sqlite(kind, text, code)
    with pytest.raises(StoreError, match="store s\\.db") as info, translated("s.db", phase):
        raise original
    assert info.value.__cause__ is original
    assert "\n" not in str(info.value)


def test_translated_leaves_our_own_and_other_errors_alone() -> None:
    ours = StoreError("already ours")
    with pytest.raises(StoreError) as info, translated("s.db", "use"):
        raise ours
    assert info.value is ours
    with pytest.raises(KeyError), translated("s.db", "use"):
        raise KeyError("not a database error")


def test_is_busy_looks_at_the_cause() -> None:
    cause = _sqlite(sqlite3.OperationalError, "database is locked", 5)
    busy = store_error(cause, where="s", phase="write")
    busy.__cause__ = cause
    assert is_busy(busy)
    damaged = StoreError("x")
    damaged.__cause__ = _sqlite(sqlite3.DatabaseError, "file is not a database", 26)
    assert not is_busy(damaged)
    assert not is_busy(StoreError("no cause"))


def test_a_real_busy_database_is_a_busy_store_error(tmp_path: Path) -> None:
    """Another connection holding the write lock: BEGIN IMMEDIATE fails with SQLITE_BUSY, mapped by code."""
    backend = SqliteBackend(tmp_path / "s.db", busy_timeout_s=0.05, migrations=MIGRATIONS)
    holder = sqlite3.connect(tmp_path / "s.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        pattern = r"s\.db is locked by another writer \(waited 0\.05 s\)"
        with pytest.raises(StoreError, match=pattern) as info, backend.write():
            pass
        assert is_busy(info.value)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        backend.close()


# --- RecordColumns ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Row:
    key: str
    ports: tuple[int, ...]
    meta: Any
    note: str | None
    extra: int


def test_record_columns_come_from_the_fields() -> None:
    cols = RecordColumns(_Row, json={"ports": tuple, "meta": None}, derived=("extra",))
    assert cols.fields == ("key", "ports", "meta", "note")
    assert cols.columns == ("key", "ports_json", "meta_json", "note")
    assert cols.sql == "key, ports_json, meta_json, note"
    assert cols.decode(("a", "[1, 2]", '{"x": 1}', None), extra=7) == _Row("a", (1, 2), {"x": 1}, None, 7)
    no_ports: Any = cols.decode(("a", None, "null", "n"), extra=0)  # a NULL column stays None
    assert (no_ports.ports, no_ports.meta, no_ports.note) == (None, None, "n")


def test_record_columns_refuse_a_field_the_record_lacks() -> None:
    with pytest.raises(TypeError, match="no such fields: \\['port'\\]"):
        RecordColumns(_Row, json={"port": tuple})
    with pytest.raises(ValueError, match="zip"):
        RecordColumns(_Row, derived=("extra",)).decode(("a", "[]"))


@given(st.lists(st.integers(min_value=1, max_value=65535), max_size=5), st.text(max_size=10))
def test_record_columns_round_trip_through_json(ports: list[int], key: str) -> None:
    import json

    cols = RecordColumns(_Row, json={"ports": tuple, "meta": None})
    row = (key, json.dumps(ports), json.dumps({"k": key}), None, 3)
    assert cols.decode(row) == _Row(key, tuple(ports), {"k": key}, None, 3)


# --- Database ---------------------------------------------------------------------------------------------


def test_database_closes_once_and_refuses_use_after(tmp_path: Path) -> None:
    db = Database(tmp_path / "s.db", busy_timeout_s=1.0, migrations=MIGRATIONS)
    assert db.query("SELECT count(*) FROM runs") == [(0,)]
    db.close()
    db.close()
    assert db.closed
    with pytest.raises(StoreError, match=r"s\.db is closed"):
        db.query("SELECT 1")
    with pytest.raises(StoreError, match="closed"), db.write():
        pass


def test_a_transaction_is_never_interleaved_with_another_threads_statement(tmp_path: Path) -> None:
    """The lock is held for the whole transaction: a reader in another thread waits for it to end, so it
    never sees (or joins) the half-written transaction on the shared connection."""
    db = Database(tmp_path / "s.db", busy_timeout_s=1.0, migrations=MIGRATIONS)
    inside, seen = threading.Event(), []

    def reader() -> None:
        inside.wait(5)
        seen.append(db.query("SELECT count(*) FROM alerts")[0][0])

    thread = threading.Thread(target=reader)
    thread.start()
    with db.write() as conn:
        conn.execute("INSERT INTO alerts(recorded_at_s, alert_json) VALUES (1.0, '{}')")
        inside.set()
        thread.join(0.2)
        assert thread.is_alive(), "the reader ran inside our transaction"
        conn.execute("INSERT INTO alerts(recorded_at_s, alert_json) VALUES (2.0, '{}')")
    thread.join(5)
    assert seen == [2]
    db.close()
