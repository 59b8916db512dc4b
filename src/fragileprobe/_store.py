"""ProfileStore: characterizations, device-model profiles and the discovery inventory (SQLite or PostgreSQL).

The store's location picks the database: a file path is a SQLite file, a ``postgresql://`` URL a shared
PostgreSQL database (``fragileprobe[sites]``: psycopg 3). The methods below are written once, in SQL that
both accept; what differs (connecting, the write lock, migrations, the dialect, error translation) lives in
``fragileprobe._db``. ``fragileprobe/__init__.py`` loads this module lazily, so ``import fragileprobe``
stays free of both drivers.

Durability rules:

* WAL journal and ``synchronous=FULL``: a committed transaction survives kill -9 of the writer and a
  power cut of the machine.
* Every trial is its own transaction, committed the moment the trial ends (``record_trial``), so an
  interrupted run loses at most the trial that was running.
* A stored trial is never overwritten: writing a trial index that is already stored with other content
  raises ``StoreError`` (a redone trial is a new trial, with a new index). Writing the same trial again is
  a no-op (``finish_run`` writes every trial of the result).
* Evidence is never lost: profiles and ceilings are derived again from every stored trial of every run of
  the model, finished or not (a run that ended with a failed recovery included), never read from a stored
  ceiling; an imported document whose stated ceiling disagrees with its own trials is refused whole.
* Writers take the write lock up front (SQLite ``BEGIN IMMEDIATE``; PostgreSQL one advisory lock taken
  first in the transaction) and wait up to ``busy_timeout_s`` for it, so two processes writing one store at
  once, on one machine or many, serialize instead of failing; past the timeout: ``StoreError``.
* The schema is versioned (SQLite ``PRAGMA user_version``, PostgreSQL the ``fragileprobe_meta`` table) and
  migrated step by step (``_MIGRATIONS``). A database from a newer fragileprobe, a corrupt file, a file that
  is not a database or a foreign PostgreSQL database raises ``StoreError`` before anything is written to it.
* Only our own files are written. Our SQLite stores carry SQLite's ``application_id``
  :data:`APPLICATION_ID` (``0x66507262``, ASCII ``fPrb``; PostgreSQL: the ``fragileprobe_meta`` table).
  An existing file is first inspected without a single write (its header
  read as bytes, then a read-only connection): another application's id, a table, view or trigger that is
  not ours, a newer schema or a failed ``PRAGMA quick_check`` refuse it with ``StoreError`` and leave it
  byte-identical, with no ``-wal``/``-shm`` file left beside it. A store from before the id existed
  (id 0, only our tables) is stamped when it is opened.

Tables (schema version 2; version 2 added the two ``shield_*`` tables)::

    runs(run_id, host, model_key, name, params_json, started_at_s, finished_at_s, status, result_json)
    trials(run_id, trial_index, trial_json, recorded_at_s)     one row per trial (finished or not), never
                                                              replaced
    scans(scan_id, targets_json, params_json, started_at_s, finished_at_s)  discovery runs
    scan_hosts(scan_id, host, done_at_s)                                  hosts a scan has finished
    assets(host, first_seen_s, last_seen_s, zone, previous_zone, model_key, open_ports_json,
           services_json, os_family, groups_json, scan_id, previous_scan_id)
    alerts(alert_id, recorded_at_s, alert_json)

Added by schema version 2 (site agents, ``fragileprobe.sites``)::

    leases(device, owner, job_id, kind, acquired_at_s, expires_at_s)      one job per device at a time
    site_jobs(job_id, batch_id, site, kind, hosts_json, params_json, state, owner, submitted_at_s,
              started_at_s, finished_at_s, expires_at_s, hosts_done, result_json, error)
    device_holds(device, job_id, reason, held_at_s)   devices no job may touch until released

Added by schema version 3 (the shield's audit trail, ``fragileprobe.Shield``)::

    shield_sessions(session_id, host, port, client, username, started_at_s, ended_at_s, bytes_up,
                    bytes_down, outcome, reply, ceiling, limit_source, waited_s)   one row per shield session
    shield_trips(trip_id, host, tripped_at_s, reason, sessions_closed, ceiling, limit_source,
                 released_at_s, released_by)                                    devices the shield tripped
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Self

import structlog

from fragileprobe._db import APPLICATION_ID, open_backend
from fragileprobe._errors import ConfigError, StoreError
from fragileprobe._profile import (
    DEFAULT_MARGIN_FRACTION,
    DEFAULT_MARGIN_LEVELS,
    FORMAT_VERSION,
    Characterization,
    DeviceProfile,
    TrialResult,
)

if TYPE_CHECKING:
    import os
    from collections.abc import Iterable, Iterator, Mapping, Sequence
    from pathlib import Path

    from fragileprobe._db import Connection, PostgresBackend, SqliteBackend

__all__ = [
    "APPLICATION_ID",
    "DEFAULT_BUSY_TIMEOUT_S",
    "DEFAULT_STORE_PATH",
    "SCHEMA_VERSION",
    "AssetRow",
    "ProfileStore",
    "RunRow",
    "ScanRow",
]

log = structlog.get_logger(__name__)

DEFAULT_STORE_PATH = "fragileprobe.db"
# How long a writer waits for another process's write lock before StoreError. Each of our transactions
# holds the lock for milliseconds; 5 s covers a slow disk with many writers and still fails fast for a
# store that another program keeps locked.
DEFAULT_BUSY_TIMEOUT_S = 5.0

_SCHEMA_V1 = """
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
_SCHEMA_V2 = """
CREATE TABLE IF NOT EXISTS leases (
    device TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    job_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    acquired_at_s REAL NOT NULL,
    expires_at_s REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS site_jobs (
    job_id TEXT PRIMARY KEY,
    batch_id TEXT NOT NULL,
    site TEXT NOT NULL,
    kind TEXT NOT NULL,
    hosts_json TEXT NOT NULL,
    params_json TEXT NOT NULL,
    state TEXT NOT NULL,
    owner TEXT,
    submitted_at_s REAL NOT NULL,
    started_at_s REAL,
    finished_at_s REAL,
    expires_at_s REAL,
    hosts_done INTEGER NOT NULL DEFAULT 0,
    result_json TEXT,
    error TEXT
);
CREATE INDEX IF NOT EXISTS site_jobs_batch ON site_jobs(batch_id);
CREATE TABLE IF NOT EXISTS device_holds (
    device TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    reason TEXT NOT NULL,
    held_at_s REAL NOT NULL
);
"""
# --- shield audit tables (schema version 3) ----------------------------------------------------------------
_SCHEMA_V3 = """
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
# The schema as steps: _MIGRATIONS[i] brings a store from version i to i + 1. Never edit a released step;
# add a new one (the backends apply the missing steps in one write transaction).
_MIGRATIONS: tuple[str, ...] = (_SCHEMA_V1, _SCHEMA_V2, _SCHEMA_V3)
SCHEMA_VERSION = len(_MIGRATIONS)




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
    """A store of characterizations, profiles and the discovery inventory: a SQLite file or PostgreSQL.

    Args:
        path: The database file (created if missing), or a ``postgresql://user@host/dbname`` URL of a
            database shared by every site (needs ``fragileprobe[sites]``). Default: ``fragileprobe.db`` in
            the working directory.
        busy_timeout_s: How long a write waits for another process's lock before ``StoreError``.

    Raises:
        StoreError: The database is corrupt, not a database, foreign, from a newer schema, unreachable, or
            locked beyond the timeout.
        ConfigError: ``busy_timeout_s`` is not a positive number, or the URL's scheme is not supported.

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
        self.busy_timeout_s = float(busy_timeout_s)
        self._lock = threading.Lock()
        self._closed = False
        self._backend: SqliteBackend | PostgresBackend = open_backend(
            path, busy_timeout_s=self.busy_timeout_s, migrations=_MIGRATIONS
        )
        # A file store's Path; a PostgreSQL store's URL (password redacted), for messages.
        self.path: Path | str = getattr(self._backend, "path", self._backend.location)

    # --- plumbing ------------------------------------------------------------------------------------
    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        """Lock the connection for one write transaction (errors come out as StoreError)."""
        if self._closed:
            raise StoreError(f"profile store {self.path} is closed")
        with self._lock, self._backend.write() as conn:
            yield conn

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        if self._closed:
            raise StoreError(f"profile store {self.path} is closed")
        with self._lock:
            return self._backend.query(sql, args)

    def close(self) -> None:
        """Close the database (idempotent)."""
        if not self._closed:
            self._closed = True
            with self._lock:
                self._backend.close()

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
        """Write one trial, in its own transaction (call it the moment the trial ends, or is cut short).

        Raises:
            StoreError: The run already has a different trial with this index (stored trials are never
                overwritten; give a redone trial a new index).
        """
        with self._tx() as conn:
            self._write_trials(conn, run_id, (trial,))
        log.debug("store.trial_recorded", run_id=run_id, trial=trial.index, complete=trial.complete)

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
    def _write_trials(conn: Connection, run_id: str, trials: Iterable[TrialResult]) -> None:
        now = time.time()
        for trial in trials:
            data = trial.to_dict()
            old = conn.execute(
                "SELECT trial_json FROM trials WHERE run_id = ? AND trial_index = ?", (run_id, trial.index)
            ).fetchone()
            if old is not None:
                if json.loads(old[0]) == data:
                    continue  # the same trial written again (finish_run after record_trial)
                raise StoreError(
                    f"trial {trial.index} of run {run_id} is already stored with other observations; a "
                    "stored trial is never overwritten (a redone trial is a new trial, with a new index)"
                )
            conn.execute(_TRIAL_INSERT, (run_id, trial.index, json.dumps(data), now))

    def save(self, characterization: Characterization, *, status: str = "complete") -> str:
        """Store a finished characterization in one transaction; return its run id.

        If the characterization carries a ``run_id`` already in the store, that run is finished (updated)
        instead of a new one being added.

        Raises:
            StoreError: A trial of it would overwrite a different stored trial of that run.
        """
        with self._tx() as conn:
            return self._save(conn, characterization, status)

    def _save(self, conn: Connection, characterization: Characterization, status: str) -> str:
        run_id = characterization.run_id or uuid.uuid4().hex
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
    def history(self, model_key: str | None = None, *, unfinished: bool = False) -> list[Characterization]:
        """Stored characterizations (of one model, or all), oldest first, each derived again from its trials.

        A finished run's record is merged with every trial row stored for it and its ceiling derived again
        (never read from the record), so a ceiling stored by an older fragileprobe cannot outlive its
        evidence.

        Args:
            model_key: Only this model's runs (None: every run).
            unfinished: Also the runs that never finished (interrupted, or stopped by a failed recovery and
                never resumed), built from their stored trials and parameters, ``stop_reason`` = their status.
        """
        where = "" if unfinished else " WHERE result_json IS NOT NULL"
        args: tuple[Any, ...] = ()
        if model_key is not None:
            where += (" AND" if where else " WHERE") + " model_key = ?"
            args = (model_key,)
        rows = self._query(
            "SELECT run_id, host, model_key, name, params_json, started_at_s, status, result_json FROM runs"
            + where + " ORDER BY started_at_s",
            args,
        )
        chars = [self._characterization(row) for row in rows]
        return [c for c in chars if c is not None]

    def _characterization(self, row: tuple[Any, ...]) -> Characterization | None:
        run_id, host, model_key, name, params_json, started_at_s, status, result_json = row
        stored = self.trials(run_id)
        if result_json is not None:
            char = Characterization.from_json(result_json)
            # Rows the record lacks (e.g. a partial trial dropped by an older resume) are evidence too.
            known = {t.index for t in char.trials}
            extra = [t for t in stored if t.index not in known]
            return char.rederived(sorted([*char.trials, *extra], key=lambda t: t.index))
        if not stored:
            return None  # a run that never finished a trial: nothing observed
        params = json.loads(params_json)
        early = params.get("early_warning")
        return Characterization.from_trials(
            host=host, model_key=model_key, name=name, ladder=tuple(params.get("ladder", ())), trials=stored,
            margin_fraction=float(params.get("margin_fraction", DEFAULT_MARGIN_FRACTION)),
            margin_levels=int(params.get("margin_levels", DEFAULT_MARGIN_LEVELS)),
            early_warning_factor=early.get("latency_factor") if isinstance(early, dict) else None,
            wall_time_s=sum(t.wall_time_s for t in stored), stop_reason=status, run_id=run_id,
            started_at_epoch_s=started_at_s,
        )  # fmt: skip

    def profile(self, model_key: str) -> DeviceProfile | None:
        """The profile of one model: every stored run of it, finished or not, or None if there is none."""
        chars = self.history(model_key, unfinished=True)
        return DeviceProfile(model_key=model_key, characterizations=tuple(chars)) if chars else None

    def profiles(self) -> list[DeviceProfile]:
        """Every model's profile (every stored run, finished or not), sorted by model key."""
        by_model: dict[str, list[Characterization]] = {}
        for char in self.history(unfinished=True):
            if char.model_key is not None:
                by_model.setdefault(char.model_key, []).append(char)
        return [DeviceProfile(model_key=k, characterizations=tuple(v)) for k, v in sorted(by_model.items())]

    def ceiling_for(self, model_key: str) -> int | None:
        """The model's safe ceiling, derived from every stored trial of it (see DeviceProfile), or None."""
        profile = self.profile(model_key)
        return profile.ceiling if profile is not None else None

    def export_json(self, *, indent: int | None = 2) -> str:
        """Every characterization (unfinished runs included: their trials are evidence too) and inventory
        row as one JSON document (import with :meth:`import_json`)."""
        data = {
            "fragileprobe_store": SCHEMA_VERSION,
            "characterizations": [c.to_dict() for c in self.history(unfinished=True)],
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

        Each characterization's ceiling is derived again from its own trials, and that is what is stored.
        A characterization whose stated ceiling disagrees with its trials refuses the whole document:
        nothing of it is stored. Characterizations whose run id is already stored are skipped, so importing
        twice adds nothing.

        Raises:
            ConfigError: The text is not an export document, is from a newer schema, or a characterization's
                stated ceiling disagrees with its own trials (the message names both values).
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
        chars: list[Characterization] = []
        for i, raw in enumerate(data["characterizations"]):
            char = Characterization.from_dict(raw)
            fmt = raw.get("format", FORMAT_VERSION) if isinstance(raw, dict) else FORMAT_VERSION
            # A document of the current format must state exactly what its trials derive; an older one was
            # derived by an older margin rule, so it must only stay below what its trials allow.
            wrong = char.disagreements(exact=fmt == FORMAT_VERSION)
            if wrong:
                who = f"characterization {i} ({char.host}, run {char.run_id})"
                raise ConfigError(
                    f"import_json: {who} disagrees with its own trials: {'; '.join(wrong)}; nothing was "
                    "imported"
                )
            chars.append(char.rederived())
        added = 0
        with self._tx() as conn:  # all or nothing
            for char in chars:
                if char.run_id is not None and conn.execute(
                    "SELECT 1 FROM runs WHERE run_id = ?", (char.run_id,)
                ).fetchone():
                    continue
                self._save(conn, char, char.stop_reason)
                added += 1
        return added

    # --- discovery inventory (raw rows; the logic lives in _discovery) ----------------------------------
    def start_scan(self, targets: Any, params: Mapping[str, Any] | None = None) -> int:
        """Record the start of a discovery scan; return its scan id."""
        with self._tx() as conn:
            scan_id = conn.execute(
                "INSERT INTO scans(targets_json, params_json, started_at_s) VALUES (?, ?, ?) "
                "RETURNING scan_id",
                (_canonical(targets), _canonical(dict(params or {})), time.time()),
            ).fetchone()[0]
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
                "INSERT INTO scan_hosts(scan_id, host, done_at_s) VALUES (?, ?, ?) "
                "ON CONFLICT (scan_id, host) DO UPDATE SET done_at_s = excluded.done_at_s",
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
            alert_id = conn.execute(
                "INSERT INTO alerts(recorded_at_s, alert_json) VALUES (?, ?) RETURNING alert_id",
                (time.time(), _canonical(dict(alert))),
            ).fetchone()[0]
        return int(alert_id)

    def alerts(self) -> list[dict[str, Any]]:
        """Every stored alert, oldest first (the dicts given to :meth:`record_alert`)."""
        return [json.loads(r[0]) for r in self._query("SELECT alert_json FROM alerts ORDER BY alert_id")]

    # --- shield audit (schema version 3) -----------------------------------------------------------------
    def record_shield_sessions(self, rows: Iterable[Mapping[str, Any]]) -> int:
        """Store shield session records (``ShieldSession.to_dict()``) in one transaction; return how many."""
        values = [tuple(r.get(c) for c in _SHIELD_SESSION_COLUMNS) for r in rows]
        if values:
            with self._tx() as conn:  # one transaction; the backend seam has no executemany
                for value in values:
                    conn.execute(_SHIELD_SESSION_INSERT, value)
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
            trip_id = conn.execute(
                _SHIELD_TRIP_INSERT + " RETURNING trip_id", tuple(trip.get(c) for c in _SHIELD_TRIP_COLUMNS)
            ).fetchone()[0]
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
# A plain INSERT: the primary key (run_id, trial_index) refuses a second row, never replaces the first.
_TRIAL_INSERT = "INSERT INTO trials(run_id, trial_index, trial_json, recorded_at_s) VALUES (?, ?, ?, ?)"
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
