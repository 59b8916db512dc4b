"""ProfileStore: characterizations, device-model profiles and the discovery inventory, in SQLite.

``sqlite3`` is imported here and only here; ``fragileprobe/__init__.py`` loads this module lazily, so
``import fragileprobe`` stays free of it.

Durability rules:

* WAL journal and ``synchronous=FULL``: a committed transaction survives kill -9 of the writer and a
  power cut of the machine.
* Every trial is its own transaction, committed the moment the trial ends (``record_trial``), so an
  interrupted run loses at most the trial that was running.
* Writers take the write lock up front (``BEGIN IMMEDIATE``) and wait up to ``busy_timeout_s`` for it, so two
  processes writing one store at once serialize instead of failing; past the timeout: ``StoreError``.
* The schema is versioned with ``PRAGMA user_version``. A file from a newer fragileprobe, a corrupt file or
  a file that is not a database raises ``StoreError`` before anything is written to it.

Tables (schema version 2; version 2 added the two ``shield_*`` tables)::

    runs(run_id, host, model_key, name, params_json, started_at_s, finished_at_s, status, result_json)
    trials(run_id, trial_index, trial_json, recorded_at_s)                 one row per finished trial
    scans(scan_id, targets_json, params_json, started_at_s, finished_at_s)  discovery runs
    scan_hosts(scan_id, host, done_at_s)                                  hosts a scan has finished
    assets(host, first_seen_s, last_seen_s, zone, previous_zone, model_key, open_ports_json,
           services_json, os_family, groups_json, scan_id, previous_scan_id)
    alerts(alert_id, recorded_at_s, alert_json)
    shield_sessions(session_id, host, port, client, username, started_at_s, ended_at_s, bytes_up,
                    bytes_down, outcome, reply, ceiling, limit_source, waited_s)   one row per shield session
    shield_trips(trip_id, host, tripped_at_s, reason, sessions_closed, ceiling, limit_source,
                 released_at_s, released_by)                                    devices the shield tripped
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import structlog

from fragileprobe._errors import ConfigError, StoreError
from fragileprobe._profile import Characterization, DeviceProfile, TrialResult

if TYPE_CHECKING:
    import os
    from collections.abc import Iterable, Iterator, Mapping, Sequence

__all__ = [
    "DEFAULT_BUSY_TIMEOUT_S",
    "DEFAULT_STORE_PATH",
    "SCHEMA_VERSION",
    "AssetRow",
    "ProfileStore",
    "RunRow",
    "ScanRow",
]

log = structlog.get_logger(__name__)

SCHEMA_VERSION = 2
DEFAULT_STORE_PATH = "fragileprobe.db"
# How long a writer waits for another process's write lock before StoreError. Each of our transactions
# holds the lock for milliseconds; 5 s covers a slow disk with many writers and still fails fast for a
# store that another program keeps locked.
DEFAULT_BUSY_TIMEOUT_S = 5.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    model_key TEXT,
    name TEXT,
    params_json TEXT NOT NULL,
    started_at_s REAL NOT NULL,
    finished_at_s REAL,
    status TEXT NOT NULL,
    result_json TEXT
);
CREATE INDEX IF NOT EXISTS runs_model ON runs(model_key);
CREATE INDEX IF NOT EXISTS runs_host ON runs(host);
CREATE TABLE IF NOT EXISTS trials (
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    trial_index INTEGER NOT NULL,
    trial_json TEXT NOT NULL,
    recorded_at_s REAL NOT NULL,
    PRIMARY KEY (run_id, trial_index)
);
CREATE TABLE IF NOT EXISTS scans (
    scan_id INTEGER PRIMARY KEY AUTOINCREMENT,
    targets_json TEXT NOT NULL,
    params_json TEXT NOT NULL,
    started_at_s REAL NOT NULL,
    finished_at_s REAL
);
CREATE TABLE IF NOT EXISTS scan_hosts (
    scan_id INTEGER NOT NULL REFERENCES scans(scan_id),
    host TEXT NOT NULL,
    done_at_s REAL NOT NULL,
    PRIMARY KEY (scan_id, host)
);
CREATE TABLE IF NOT EXISTS assets (
    host TEXT PRIMARY KEY,
    first_seen_s REAL NOT NULL,
    last_seen_s REAL NOT NULL,
    zone TEXT,
    previous_zone TEXT,
    model_key TEXT,
    open_ports_json TEXT NOT NULL,
    services_json TEXT NOT NULL,
    os_family TEXT,
    groups_json TEXT NOT NULL,
    scan_id INTEGER,
    previous_scan_id INTEGER
);
CREATE TABLE IF NOT EXISTS alerts (
    alert_id INTEGER PRIMARY KEY AUTOINCREMENT,
    recorded_at_s REAL NOT NULL,
    alert_json TEXT NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class RunRow:
    """One characterization run as stored (finished or not)."""

    run_id: str
    host: str
    model_key: str | None
    name: str | None
    params: Mapping[str, Any]
    started_at_s: float
    finished_at_s: float | None
    status: str
    trials: tuple[TrialResult, ...]


@dataclass(frozen=True, slots=True)
class ScanRow:
    """One discovery scan as stored."""

    scan_id: int
    targets: Any
    params: Any
    started_at_s: float
    finished_at_s: float | None


@dataclass(frozen=True, slots=True)
class AssetRow:
    """One host of the discovery inventory.

    ``previous_zone`` and ``previous_scan_id`` are the values before the latest upsert (None for a host
    seen once), so "moved" is ``previous_zone is not None and previous_zone != zone``.
    """

    host: str
    first_seen_s: float
    last_seen_s: float
    zone: str | None
    previous_zone: str | None
    model_key: str | None
    open_ports: tuple[int, ...]
    services: Any
    os_family: str | None
    groups: tuple[str, ...]
    scan_id: int | None
    previous_scan_id: int | None


def _canonical(value: Any) -> str:
    """JSON with sorted keys, so equal params compare equal as text."""
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"store: value is not JSON-able: {exc}") from exc


class ProfileStore:
    """A SQLite store of characterizations, profiles and the discovery inventory.

    Args:
        path: The database file (created if missing). Default: ``fragileprobe.db`` in the working directory.
        busy_timeout_s: How long a write waits for another process's lock before ``StoreError``.

    Raises:
        StoreError: The file is corrupt, not a database, from a newer schema, or locked beyond the timeout.
        ConfigError: ``busy_timeout_s`` is not a positive number.

    Use it as a context manager, or call :meth:`close`. Thread-safe (one lock around the connection).
    """

    def __init__(
        self,
        path: str | os.PathLike[str] = DEFAULT_STORE_PATH,
        *,
        busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S,
    ) -> None:
        if (
            isinstance(busy_timeout_s, bool)
            or not isinstance(busy_timeout_s, int | float)
            or busy_timeout_s <= 0
        ):
            raise ConfigError(f"busy_timeout_s: must be a positive number, got {busy_timeout_s!r}")
        self.path = Path(path)
        self.busy_timeout_s = float(busy_timeout_s)
        self._lock = threading.Lock()
        self._closed = False
        try:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves (BEGIN IMMEDIATE for writers).
            self._conn = sqlite3.connect(
                self.path, timeout=self.busy_timeout_s, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open profile store {self.path}: {exc}") from exc
        opened = False
        try:
            self._open()
            opened = True
        finally:
            if not opened:  # never leave a half-opened connection (and its file handle) behind
                self._conn.close()

    def _open(self) -> None:
        conn = self._conn
        try:
            # Reading user_version first also proves the file is a database before anything is written.
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"profile store {self.path} is corrupt or not a fragileprobe store: {exc}"
            ) from exc
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"profile store {self.path} has schema version {version}, newer than this fragileprobe "
                f"supports ({SCHEMA_VERSION}); upgrade fragileprobe or use another file"
            )
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            if version < SCHEMA_VERSION:
                with self._write():
                    current = int(conn.execute("PRAGMA user_version").fetchone()[0])
                    if current < SCHEMA_VERSION:  # another process may have created it meanwhile
                        for statement in _SCHEMA.split(";"):
                            if statement.strip():
                                conn.execute(statement)
                        if current < 2:  # migration 1 -> 2: the shield's audit tables
                            for statement in _SHIELD_SCHEMA.split(";"):
                                if statement.strip():
                                    conn.execute(statement)
                        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            # A quick structural check: catches files whose header is fine but whose pages are damaged.
            check = conn.execute("PRAGMA quick_check(1)").fetchone()[0]
        except sqlite3.OperationalError as exc:
            raise StoreError(f"profile store {self.path} is locked or unusable: {exc}") from exc
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"profile store {self.path} is corrupt: {exc}") from exc
        if check != "ok":
            raise StoreError(f"profile store {self.path} failed its integrity check: {check}")
        log.debug("store.opened", path=str(self.path), journal_mode=mode, schema_version=SCHEMA_VERSION)

    # --- plumbing ------------------------------------------------------------------------------------
    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, holding the write lock from the start (BEGIN IMMEDIATE)."""
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise StoreError(
                f"profile store {self.path} is locked by another writer "
                f"(waited {self.busy_timeout_s:g} s): {exc}"
            ) from exc
        committed = False
        try:
            yield conn
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise StoreError(f"profile store {self.path}: commit failed: {exc}") from exc
            committed = True
        finally:
            # Whatever interrupted the transaction (an error, KeyboardInterrupt), nothing half-written stays.
            if not committed and conn.in_transaction:
                conn.execute("ROLLBACK")

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """Lock the connection for one write transaction and translate sqlite3 errors."""
        if self._closed:
            raise StoreError(f"profile store {self.path} is closed")
        with self._lock:
            try:
                with self._write() as conn:
                    yield conn
            except sqlite3.OperationalError as exc:
                raise StoreError(f"profile store {self.path} is locked or unusable: {exc}") from exc
            except sqlite3.DatabaseError as exc:
                raise StoreError(f"profile store {self.path}: {exc}") from exc

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        if self._closed:
            raise StoreError(f"profile store {self.path} is closed")
        with self._lock:
            try:
                return list(self._conn.execute(sql, tuple(args)).fetchall())
            except sqlite3.OperationalError as exc:
                raise StoreError(f"profile store {self.path} is locked or unusable: {exc}") from exc
            except sqlite3.DatabaseError as exc:
                raise StoreError(f"profile store {self.path}: {exc}") from exc

    def close(self) -> None:
        """Close the database (idempotent)."""
        if not self._closed:
            self._closed = True
            with self._lock:
                self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ProfileStore({str(self.path)!r})"

    # --- characterization runs -------------------------------------------------------------------------
    def begin_run(
        self,
        *,
        host: str,
        model_key: str | None,
        name: str | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> str:
        """Record the start of a characterization run; return its run id."""
        run_id = uuid.uuid4().hex
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO runs(run_id, host, model_key, name, params_json, started_at_s, status) "
                "VALUES (?, ?, ?, ?, ?, ?, 'running')",
                (run_id, host, model_key, name, _canonical(dict(params or {})), time.time()),
            )
        log.debug("store.run_started", run_id=run_id, host=host, model_key=model_key)
        return run_id

    def record_trial(self, run_id: str, trial: TrialResult) -> None:
        """Write one finished trial, in its own transaction (call it the moment the trial ends)."""
        with self._tx() as conn:
            conn.execute(
                _TRIAL_UPSERT,
                (run_id, trial.index, json.dumps(trial.to_dict()), time.time()),
            )
        log.debug("store.trial_recorded", run_id=run_id, trial=trial.index)

    def finish_run(
        self, run_id: str, characterization: Characterization, *, status: str = "complete"
    ) -> None:
        """Store the run's final characterization and mark it finished (its trials, too, in one go)."""
        with self._tx() as conn:
            self._write_trials(conn, run_id, characterization.trials)
            conn.execute(
                _RUN_FINISH,
                (time.time(), status, characterization.to_json(), characterization.model_key, run_id),
            )

    @staticmethod
    def _write_trials(conn: sqlite3.Connection, run_id: str, trials: Iterable[TrialResult]) -> None:
        now = time.time()
        for trial in trials:
            conn.execute(
                _TRIAL_UPSERT,
                (run_id, trial.index, json.dumps(trial.to_dict()), now),
            )

    def save(self, characterization: Characterization, *, status: str = "complete") -> str:
        """Store a finished characterization in one transaction; return its run id.

        If the characterization carries a ``run_id`` already in the store, that run is finished (updated)
        instead of a new one being added.
        """
        run_id = characterization.run_id or uuid.uuid4().hex
        with self._tx() as conn:
            exists = conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            if not exists:
                conn.execute(
                    "INSERT INTO runs(run_id, host, model_key, name, params_json, started_at_s, status) "
                    "VALUES (?, ?, ?, ?, '{}', ?, 'running')",
                    (
                        run_id,
                        characterization.host,
                        characterization.model_key,
                        characterization.name,
                        characterization.started_at_epoch_s or time.time(),
                    ),
                )
            self._write_trials(conn, run_id, characterization.trials)
            stored = (
                characterization
                if characterization.run_id == run_id
                else _with_run_id(characterization, run_id)
            )
            conn.execute(
                _RUN_FINISH,
                (time.time(), status, stored.to_json(), characterization.model_key, run_id),
            )
        return run_id

    def unfinished_run(self, *, host: str, model_key: str | None) -> RunRow | None:
        """The most recent run for this host and model that never finished (for resume), or None."""
        rows = self._query(
            _RUN_SELECT + " "
            "WHERE host = ? AND model_key IS ? AND finished_at_s IS NULL ORDER BY started_at_s DESC LIMIT 1",
            (host, model_key),
        )
        return self._run_row(rows[0]) if rows else None

    def run(self, run_id: str) -> RunRow | None:
        """One run with its stored trials, or None."""
        rows = self._query(
            _RUN_SELECT + " WHERE run_id = ?",
            (run_id,),
        )
        return self._run_row(rows[0]) if rows else None

    def runs(self) -> list[RunRow]:
        """Every run, oldest first."""
        rows = self._query(_RUN_SELECT + " ORDER BY started_at_s")
        return [self._run_row(r) for r in rows]

    def trials(self, run_id: str) -> tuple[TrialResult, ...]:
        """The finished trials stored for a run, in order."""
        rows = self._query("SELECT trial_json FROM trials WHERE run_id = ? ORDER BY trial_index", (run_id,))
        return tuple(TrialResult.from_dict(json.loads(r[0])) for r in rows)

    def _run_row(self, row: tuple[Any, ...]) -> RunRow:
        return RunRow(
            run_id=row[0],
            host=row[1],
            model_key=row[2],
            name=row[3],
            params=json.loads(row[4]),
            started_at_s=row[5],
            finished_at_s=row[6],
            status=row[7],
            trials=self.trials(row[0]),
        )

    def mark_run(self, run_id: str, status: str) -> None:
        """Change a run's status without finishing it (e.g. ``interrupted``)."""
        with self._tx() as conn:
            conn.execute("UPDATE runs SET status = ? WHERE run_id = ?", (status, run_id))

    # --- profiles ---------------------------------------------------------------------------------------
    def history(self, model_key: str | None = None) -> list[Characterization]:
        """Stored characterizations (of one model, or all), oldest first."""
        if model_key is None:
            rows = self._query(
                "SELECT result_json FROM runs WHERE result_json IS NOT NULL ORDER BY started_at_s"
            )
        else:
            rows = self._query(
                "SELECT result_json FROM runs WHERE result_json IS NOT NULL AND model_key = ? "
                "ORDER BY started_at_s",
                (model_key,),
            )
        return [Characterization.from_json(r[0]) for r in rows]

    def profile(self, model_key: str) -> DeviceProfile | None:
        """The profile of one model (every stored characterization of it), or None if there is none."""
        chars = self.history(model_key)
        return DeviceProfile(model_key=model_key, characterizations=tuple(chars)) if chars else None

    def profiles(self) -> list[DeviceProfile]:
        """Every model's profile, sorted by model key."""
        by_model: dict[str, list[Characterization]] = {}
        for char in self.history():
            if char.model_key is not None:
                by_model.setdefault(char.model_key, []).append(char)
        return [DeviceProfile(model_key=k, characterizations=tuple(v)) for k, v in sorted(by_model.items())]

    def ceiling_for(self, model_key: str) -> int | None:
        """The stored safe ceiling of a model (the lowest over its devices), or None if unknown."""
        profile = self.profile(model_key)
        return profile.ceiling if profile is not None else None

    def export_json(self, *, indent: int | None = 2) -> str:
        """Every characterization and inventory row as one JSON document (import with :meth:`import_json`)."""
        data = {
            "fragileprobe_store": SCHEMA_VERSION,
            "characterizations": [c.to_dict() for c in self.history()],
            "profiles": [
                {"model_key": p.model_key, "ceiling": p.ceiling, "devices": list(p.devices)}
                for p in self.profiles()
            ],
            "assets": [_asset_dict(a) for a in self.assets()],
            "alerts": self.alerts(),
        }
        return json.dumps(data, indent=indent, default=str)

    def import_json(self, text: str) -> int:
        """Add the characterizations of an :meth:`export_json` document; return how many were new.

        Characterizations whose run id is already stored are skipped, so importing twice adds nothing.

        Raises:
            ConfigError: The text is not an export document, or is from a newer schema.
        """
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"import_json: not JSON: {exc}") from exc
        if not isinstance(data, dict) or "characterizations" not in data:
            raise ConfigError("import_json: not a fragileprobe store export (no 'characterizations')")
        version = data.get("fragileprobe_store", SCHEMA_VERSION)
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise ConfigError(f"import_json: export schema {version!r} is newer than {SCHEMA_VERSION}")
        if not isinstance(data["characterizations"], list):
            raise ConfigError("import_json: 'characterizations' must be a list")
        chars = [Characterization.from_dict(c) for c in data["characterizations"]]
        added = 0
        for char in chars:
            if char.run_id is not None and self.run(char.run_id) is not None:
                continue
            self.save(char)
            added += 1
        return added

    # --- discovery inventory (raw rows; the logic lives in _discovery) ----------------------------------
    def start_scan(self, targets: Any, params: Mapping[str, Any] | None = None) -> int:
        """Record the start of a discovery scan; return its scan id."""
        with self._tx() as conn:
            cur = conn.execute(
                "INSERT INTO scans(targets_json, params_json, started_at_s) VALUES (?, ?, ?)",
                (_canonical(targets), _canonical(dict(params or {})), time.time()),
            )
            scan_id = cur.lastrowid
        assert scan_id is not None  # an INSERT into a rowid table always sets it
        return int(scan_id)

    def unfinished_scan(self, targets: Any, params: Mapping[str, Any] | None = None) -> ScanRow | None:
        """The latest unfinished scan with exactly these targets and params (for resume), or None."""
        rows = self._query(
            "SELECT scan_id, targets_json, params_json, started_at_s, finished_at_s FROM scans "
            "WHERE finished_at_s IS NULL AND targets_json = ? AND params_json = ? "
            "ORDER BY scan_id DESC LIMIT 1",
            (_canonical(targets), _canonical(dict(params or {}))),
        )
        return _scan_row(rows[0]) if rows else None

    def scans(self) -> list[ScanRow]:
        """Every scan, oldest first."""
        rows = self._query(
            "SELECT scan_id, targets_json, params_json, started_at_s, finished_at_s FROM scans "
            "ORDER BY scan_id"
        )
        return [_scan_row(r) for r in rows]

    def mark_host_done(self, scan_id: int, host: str) -> None:
        """Record that a scan has finished with one host (its own transaction)."""
        with self._tx() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO scan_hosts(scan_id, host, done_at_s) VALUES (?, ?, ?)",
                (scan_id, host, time.time()),
            )

    def hosts_done(self, scan_id: int) -> set[str]:
        """The hosts a scan has finished."""
        return {r[0] for r in self._query("SELECT host FROM scan_hosts WHERE scan_id = ?", (scan_id,))}

    def finish_scan(self, scan_id: int) -> None:
        """Mark a scan finished."""
        with self._tx() as conn:
            conn.execute("UPDATE scans SET finished_at_s = ? WHERE scan_id = ?", (time.time(), scan_id))

    def upsert_asset(
        self,
        host: str,
        *,
        scan_id: int | None,
        seen_at_s: float,
        zone: str | None = None,
        model_key: str | None = None,
        open_ports: Iterable[int] = (),
        services: Any = (),
        os_family: str | None = None,
        groups: Iterable[str] = (),
    ) -> AssetRow:
        """Insert or update one host of the inventory; return the stored row.

        ``first_seen_s`` is kept from the first sighting; ``last_seen_s``, zone and the rest are replaced,
        and the zone and scan id before this call move to ``previous_zone`` / ``previous_scan_id``.
        ``services`` must be JSON-able.
        """
        ports_json = _canonical(sorted({int(p) for p in open_ports}))
        services_json = _canonical(services)
        groups_json = _canonical(list(groups))
        with self._tx() as conn:
            old = conn.execute(
                "SELECT first_seen_s, zone, scan_id FROM assets WHERE host = ?", (host,)
            ).fetchone()
            if old is None:
                conn.execute(
                    "INSERT INTO assets(host, first_seen_s, last_seen_s, zone, previous_zone, model_key, "
                    "open_ports_json, services_json, os_family, groups_json, scan_id, previous_scan_id) "
                    "VALUES (?, ?, ?, ?, NULL, ?, ?, ?, ?, ?, ?, NULL)",
                    (host, seen_at_s, seen_at_s, zone, model_key, ports_json, services_json, os_family,
                     groups_json, scan_id),
                )  # fmt: skip
            else:
                first_seen, old_zone, old_scan = old
                conn.execute(
                    "UPDATE assets SET first_seen_s = ?, last_seen_s = ?, zone = ?, previous_zone = ?, "
                    "model_key = ?, "
                    "open_ports_json = ?, services_json = ?, os_family = ?, groups_json = ?, scan_id = ?, "
                    "previous_scan_id = ? WHERE host = ?",
                    (min(first_seen, seen_at_s), seen_at_s, zone, old_zone, model_key, ports_json,
                     services_json, os_family, groups_json, scan_id, old_scan, host),
                )  # fmt: skip
            row = conn.execute(_ASSET_SELECT + " WHERE host = ?", (host,)).fetchone()
        return _asset_row(row)

    def assets(self) -> list[AssetRow]:
        """Every host of the inventory, sorted by address text."""
        return [_asset_row(r) for r in self._query(_ASSET_SELECT + " ORDER BY host")]

    def asset(self, host: str) -> AssetRow | None:
        """One host of the inventory, or None."""
        rows = self._query(_ASSET_SELECT + " WHERE host = ?", (host,))
        return _asset_row(rows[0]) if rows else None

    def record_alert(self, alert: Mapping[str, Any]) -> int:
        """Store one alert (a JSON-able dict); return its id."""
        with self._tx() as conn:
            cur = conn.execute(
                "INSERT INTO alerts(recorded_at_s, alert_json) VALUES (?, ?)",
                (time.time(), _canonical(dict(alert))),
            )
            alert_id = cur.lastrowid
        assert alert_id is not None  # an INSERT into a rowid table always sets it
        return int(alert_id)

    def alerts(self) -> list[dict[str, Any]]:
        """Every stored alert, oldest first (the dicts given to :meth:`record_alert`)."""
        return [json.loads(r[0]) for r in self._query("SELECT alert_json FROM alerts ORDER BY alert_id")]

    # --- shield audit (schema version 2) -----------------------------------------------------------------
    def record_shield_sessions(self, rows: Iterable[Mapping[str, Any]]) -> int:
        """Store shield session records (``ShieldSession.to_dict()``) in one transaction; return how many."""
        values = [tuple(r.get(c) for c in _SHIELD_SESSION_COLUMNS) for r in rows]
        if values:
            with self._tx() as conn:
                conn.executemany(_SHIELD_SESSION_INSERT, values)
        return len(values)

    def shield_sessions(self, host: str | None = None) -> list[dict[str, Any]]:
        """Stored shield sessions (all, or one destination host's), in start order."""
        where, args = (" WHERE host = ?", (host,)) if host is not None else ("", ())
        rows = self._query(f"SELECT {', '.join(_SHIELD_SESSION_COLUMNS)} FROM shield_sessions{where} "
                           "ORDER BY started_at_s, session_id", args)  # fmt: skip
        return [dict(zip(_SHIELD_SESSION_COLUMNS, r, strict=True)) for r in rows]

    def record_shield_trip(self, trip: Mapping[str, Any]) -> int:
        """Store one shield trip (``ShieldTrip.to_dict()``); return its id."""
        with self._tx() as conn:
            cur = conn.execute(_SHIELD_TRIP_INSERT, tuple(trip.get(c) for c in _SHIELD_TRIP_COLUMNS))
            trip_id = cur.lastrowid
        assert trip_id is not None  # an INSERT into a rowid table always sets it
        return int(trip_id)

    def finish_shield_trip(
        self, host: str, tripped_at_s: float, released_at_s: float, released_by: str
    ) -> None:
        """Record when and how a shield trip of ``host`` (tripped at ``tripped_at_s``) ended."""
        with self._tx() as conn:
            conn.execute(
                "UPDATE shield_trips SET released_at_s = ?, released_by = ? "
                "WHERE host = ? AND tripped_at_s = ?",
                (released_at_s, released_by, host, tripped_at_s),
            )

    def shield_trips(self, host: str | None = None) -> list[dict[str, Any]]:
        """Stored shield trips (all, or one host's), oldest first."""
        where, args = (" WHERE host = ?", (host,)) if host is not None else ("", ())
        rows = self._query(f"SELECT {', '.join(_SHIELD_TRIP_COLUMNS)} FROM shield_trips{where} "
                           "ORDER BY tripped_at_s, trip_id", args)  # fmt: skip
        return [dict(zip(_SHIELD_TRIP_COLUMNS, r, strict=True)) for r in rows]


_RUN_SELECT = (
    "SELECT run_id, host, model_key, name, params_json, started_at_s, finished_at_s, status FROM runs"
)
_RUN_FINISH = "UPDATE runs SET finished_at_s = ?, status = ?, result_json = ?, model_key = ? WHERE run_id = ?"
_TRIAL_UPSERT = (
    "INSERT OR REPLACE INTO trials(run_id, trial_index, trial_json, recorded_at_s) VALUES (?, ?, ?, ?)"
)
_ASSET_SELECT = (
    "SELECT host, first_seen_s, last_seen_s, zone, previous_zone, model_key, open_ports_json, services_json, "
    "os_family, groups_json, scan_id, previous_scan_id FROM assets"
)


def _asset_row(row: tuple[Any, ...]) -> AssetRow:
    return AssetRow(
        host=row[0],
        first_seen_s=row[1],
        last_seen_s=row[2],
        zone=row[3],
        previous_zone=row[4],
        model_key=row[5],
        open_ports=tuple(json.loads(row[6])),
        services=json.loads(row[7]),
        os_family=row[8],
        groups=tuple(json.loads(row[9])),
        scan_id=row[10],
        previous_scan_id=row[11],
    )


def _asset_dict(a: AssetRow) -> dict[str, Any]:
    return {
        "host": a.host,
        "first_seen_s": a.first_seen_s,
        "last_seen_s": a.last_seen_s,
        "zone": a.zone,
        "previous_zone": a.previous_zone,
        "model_key": a.model_key,
        "open_ports": list(a.open_ports),
        "services": a.services,
        "os_family": a.os_family,
        "groups": list(a.groups),
    }


def _scan_row(row: tuple[Any, ...]) -> ScanRow:
    return ScanRow(
        scan_id=int(row[0]),
        targets=json.loads(row[1]),
        params=json.loads(row[2]),
        started_at_s=row[3],
        finished_at_s=row[4],
    )


def _with_run_id(char: Characterization, run_id: str) -> Characterization:
    return dataclasses.replace(char, run_id=run_id)


# --- shield audit tables (schema version 2) ----------------------------------------------------------------
_SHIELD_SCHEMA = """
CREATE TABLE IF NOT EXISTS shield_sessions (
    session_id INTEGER PRIMARY KEY AUTOINCREMENT,
    host TEXT NOT NULL,
    port INTEGER NOT NULL,
    client TEXT NOT NULL,
    username TEXT,
    started_at_s REAL NOT NULL,
    ended_at_s REAL NOT NULL,
    bytes_up INTEGER NOT NULL,
    bytes_down INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    reply INTEGER,
    ceiling INTEGER,
    limit_source TEXT,
    waited_s REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS shield_sessions_host ON shield_sessions(host, started_at_s);
CREATE TABLE IF NOT EXISTS shield_trips (
    trip_id INTEGER PRIMARY KEY AUTOINCREMENT,
    host TEXT NOT NULL,
    tripped_at_s REAL NOT NULL,
    reason TEXT,
    sessions_closed INTEGER NOT NULL,
    ceiling INTEGER,
    limit_source TEXT,
    released_at_s REAL,
    released_by TEXT
);
CREATE INDEX IF NOT EXISTS shield_trips_host ON shield_trips(host, tripped_at_s);
"""
_SHIELD_SESSION_COLUMNS = (
    "host", "port", "client", "username", "started_at_s", "ended_at_s", "bytes_up", "bytes_down", "outcome",
    "reply", "ceiling", "limit_source", "waited_s",
)
_SHIELD_SESSION_INSERT = (
    f"INSERT INTO shield_sessions({', '.join(_SHIELD_SESSION_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in _SHIELD_SESSION_COLUMNS)})"
)
_SHIELD_TRIP_COLUMNS = (
    "host", "tripped_at_s", "reason", "sessions_closed", "ceiling", "limit_source", "released_at_s",
    "released_by",
)
_SHIELD_TRIP_INSERT = (
    f"INSERT INTO shield_trips({', '.join(_SHIELD_TRIP_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in _SHIELD_TRIP_COLUMNS)})"
)
