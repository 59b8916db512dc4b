"""The store's schema as the steps that build it: ``MIGRATIONS[i]`` brings a database from version i to i+1.

Written once in SQLite's dialect; the PostgreSQL backend translates the types (``fragileprobe._db.pg_ddl``).
Never edit a released step: add a new one (the backends apply the missing steps in one write transaction,
and a SQLite store's own tables are read from these steps, so a table added here is recognised as ours).

Tables of schema version 1 (characterization runs, the discovery inventory)::

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

from typing import Final

__all__ = ["MIGRATIONS", "SCHEMA_VERSION"]

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
MIGRATIONS: Final[tuple[str, ...]] = (_SCHEMA_V1, _SCHEMA_V2, _SCHEMA_V3)
SCHEMA_VERSION: Final = len(MIGRATIONS)
