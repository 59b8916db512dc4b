"""The shared store's record of site jobs, device leases and device holds (schema version 2 tables).

Every rule that keeps a device to one job at a time is a single write transaction here, so it holds across
every agent and coordinator writing the one PostgreSQL store (its writers serialize on one advisory lock;
see ``fragileprobe._db``):

* A job runs at most once: ``start_job`` moves it ``queued -> started`` and refuses any other state, so a
  message the broker delivers twice (a redelivery after a lost worker, a republished message after a broker
  restart) finds the job started, lost or done and does nothing.
* A device is leased to one job at a time (``acquire``): a lease names its job and owner and expires at
  ``expires_at_s`` unless renewed. An agent renews every third of the TTL while its job runs; a SIGKILLed
  agent stops renewing and its leases lapse by themselves, no cleanup needed.
* A started job whose lease lapsed is lost (``reconcile``). A lost characterization puts its device on
  hold: the device may have crashed under the ramp, so no job touches it again until an operator releases
  it or a health check (kind ``health``, the only kind allowed on a held device) sees it answer.

Times are wall-clock seconds (``time.time()``) of the writing machine: keep the agents' clocks in NTP sync,
well within the lease TTL.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import structlog

from fragileprobe._db import RecordColumns

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

    from fragileprobe._store import ProfileStore

__all__ = ["JOB_STATES", "Hold", "JobRow", "Lease", "LeaseGrant", "Ledger"]

log = structlog.get_logger(__name__)

# queued: submitted, not started; started: an agent holds its devices; done / failed: finished (failed =
# the job raised; its finished hosts are in the store); refused: the agent would not run it (outside its
# scope or site); lost: its agent stopped renewing mid-job.
JOB_STATES: Final = ("queued", "started", "done", "failed", "refused", "lost")
TERMINAL: Final = frozenset({"done", "failed", "refused", "lost"})
# Kinds of job. "health" only runs heartbeats, and is the one kind a held device accepts.
KINDS: Final = ("discover", "characterize", "health")


@dataclass(frozen=True, slots=True)
class Lease:
    """One device leased to one job."""

    device: str
    owner: str
    job_id: str
    kind: str
    acquired_at_s: float
    expires_at_s: float


@dataclass(frozen=True, slots=True)
class Hold:
    """A device no job may touch until released (its characterization's agent was lost)."""

    device: str
    job_id: str
    reason: str
    held_at_s: float


@dataclass(frozen=True, slots=True)
class LeaseGrant:
    """What :meth:`Ledger.acquire` gave: the devices leased, those leased to another job, those held."""

    granted: tuple[str, ...]
    busy: tuple[str, ...]
    held: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class JobRow:
    """One site job as recorded."""

    job_id: str
    batch_id: str
    site: str
    kind: str
    hosts: tuple[str, ...]
    params: Mapping[str, Any]
    state: str
    owner: str | None
    submitted_at_s: float
    started_at_s: float | None
    finished_at_s: float | None
    expires_at_s: float | None
    hosts_done: int
    result: Any
    error: str | None

    @property
    def terminal(self) -> bool:
        """True once the job is done, failed, refused or lost."""
        return self.state in TERMINAL


# site_jobs' columns, in JobRow's field order; hosts, params and result are stored as JSON.
_JOB = RecordColumns(JobRow, json={"hosts": tuple, "params": None, "result": None})
_JOB_COLUMNS = _JOB.sql
_job = _JOB.decode


class Ledger:
    """Site jobs, leases and holds in a :class:`~fragileprobe.ProfileStore` (SQLite or PostgreSQL).

    Args:
        store: The shared store.
        clock: Wall-clock seconds (injectable for tests).
    """

    def __init__(self, store: ProfileStore, *, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock

    # --- jobs -------------------------------------------------------------------------------------------
    def submit(
        self,
        *,
        job_id: str,
        batch_id: str,
        site: str,
        kind: str,
        hosts: Iterable[str],
        params: Mapping[str, Any],
    ) -> JobRow:
        """Record a job as queued (before its message is sent, so the broker can never run an unknown job)."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        with self.store.db.write() as conn:
            conn.execute(
                "INSERT INTO site_jobs(job_id, batch_id, site, kind, hosts_json, params_json, state, "
                "submitted_at_s) VALUES (?, ?, ?, ?, ?, ?, 'queued', ?)",
                (
                    job_id,
                    batch_id,
                    site,
                    kind,
                    json.dumps(list(hosts)),
                    json.dumps(dict(params)),
                    self.clock(),
                ),
            )
        row = self.job(job_id)
        assert row is not None
        return row

    def start(self, job_id: str, *, owner: str, ttl_s: float) -> JobRow | None:
        """Move a queued job to started, owned by ``owner``; None if it is not queued (never run it then)."""
        now = self.clock()
        with self.store.db.write() as conn:
            moved = conn.execute(
                "UPDATE site_jobs SET state = 'started', owner = ?, started_at_s = ?, expires_at_s = ? "
                "WHERE job_id = ? AND state = 'queued' RETURNING job_id",
                (owner, now, now + ttl_s, job_id),
            ).fetchone()
        return self.job(job_id) if moved is not None else None

    def record_grant(self, job_id: str, grant: LeaseGrant) -> None:
        """Keep what a started job really leased: its hosts become the granted ones, the rest its result.

        A lost job is then resumed with exactly the hosts it was working (``discover(resume=True)`` finds
        the unfinished scan of those targets), and its busy or held hosts are not forgotten.
        """
        with self.store.db.write() as conn:
            conn.execute(
                "UPDATE site_jobs SET hosts_json = ?, result_json = ? WHERE job_id = ?",
                (
                    json.dumps(list(grant.granted)),
                    json.dumps({"busy": list(grant.busy), "held": list(grant.held)}),
                    job_id,
                ),
            )

    def progress(self, job_id: str, *, hosts_done: int, ttl_s: float) -> None:
        """Renew the job's and its leases' expiry and record how many hosts it has finished."""
        now = self.clock()
        with self.store.db.write() as conn:
            conn.execute(
                "UPDATE site_jobs SET expires_at_s = ?, hosts_done = ? "
                "WHERE job_id = ? AND state = 'started'",
                (now + ttl_s, hosts_done, job_id),
            )
            conn.execute("UPDATE leases SET expires_at_s = ? WHERE job_id = ?", (now + ttl_s, job_id))

    def finish(
        self,
        job_id: str,
        *,
        state: str,
        result: Any = None,
        error: str | None = None,
        hosts_done: int | None = None,
    ) -> None:
        """Record a job's end (done, failed or refused) and release every lease it holds, in one go."""
        if state not in TERMINAL:
            raise ValueError(f"state must be one of {sorted(TERMINAL)}, got {state!r}")
        with self.store.db.write() as conn:
            conn.execute(
                "UPDATE site_jobs SET state = ?, finished_at_s = ?, result_json = ?, error = ?, "
                "hosts_done = COALESCE(?, hosts_done) WHERE job_id = ? AND state IN ('queued', 'started')",
                (
                    state,
                    self.clock(),
                    json.dumps(result) if result is not None else None,
                    error,
                    hosts_done,
                    job_id,
                ),
            )
            conn.execute("DELETE FROM leases WHERE job_id = ?", (job_id,))
        log.info("sites.job_finished", job_id=job_id, state=state, error=error)

    def republish_due(self, job_id: str) -> None:
        """Note that a queued job's message was sent again (resets its submitted time)."""
        with self.store.db.write() as conn:
            conn.execute(
                "UPDATE site_jobs SET submitted_at_s = ? WHERE job_id = ? AND state = 'queued'",
                (self.clock(), job_id),
            )

    def job(self, job_id: str) -> JobRow | None:
        """One job, or None."""
        rows = self.store.db.query(f"SELECT {_JOB_COLUMNS} FROM site_jobs WHERE job_id = ?", (job_id,))
        return _job(rows[0]) if rows else None

    def jobs(self, batch_id: str | None = None) -> list[JobRow]:
        """Every job (of one batch), in submission order."""
        if batch_id is None:
            rows = self.store.db.query(
                f"SELECT {_JOB_COLUMNS} FROM site_jobs ORDER BY submitted_at_s, job_id"
            )
        else:
            rows = self.store.db.query(
                f"SELECT {_JOB_COLUMNS} FROM site_jobs WHERE batch_id = ? ORDER BY submitted_at_s, job_id",
                (batch_id,),
            )
        return [_job(r) for r in rows]

    # --- leases -----------------------------------------------------------------------------------------
    def acquire(
        self, devices: Iterable[str], *, job_id: str, owner: str, kind: str, ttl_s: float
    ) -> LeaseGrant:
        """Lease every free device to ``job_id`` at once; report the busy and the held ones."""
        now = self.clock()
        granted: list[str] = []
        busy: list[str] = []
        held: list[str] = []
        with self.store.db.write() as conn:
            for device in devices:
                if (
                    kind != "health"
                    and conn.execute("SELECT 1 FROM device_holds WHERE device = ?", (device,)).fetchone()
                ):
                    held.append(device)
                    continue
                current = conn.execute(
                    "SELECT job_id, expires_at_s FROM leases WHERE device = ?", (device,)
                ).fetchone()
                if current is not None and current[0] != job_id and current[1] > now:
                    busy.append(device)
                    continue
                conn.execute(
                    "INSERT INTO leases(device, owner, job_id, kind, acquired_at_s, expires_at_s) "
                    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (device) DO UPDATE SET owner = excluded.owner, "
                    "job_id = excluded.job_id, kind = excluded.kind, acquired_at_s = excluded.acquired_at_s, "
                    "expires_at_s = excluded.expires_at_s",
                    (device, owner, job_id, kind, now, now + ttl_s),
                )
                granted.append(device)
        if busy or held:
            log.info("sites.lease_refused", job_id=job_id, busy=len(busy), held=len(held))
        return LeaseGrant(tuple(granted), tuple(busy), tuple(held))

    def release(self, job_id: str, devices: Iterable[str]) -> None:
        """Give back some of a job's leases early (hosts it has finished)."""
        with self.store.db.write() as conn:
            for device in devices:
                conn.execute("DELETE FROM leases WHERE job_id = ? AND device = ?", (job_id, device))

    def leases(self, *, live_only: bool = True) -> list[Lease]:
        """Current leases (unexpired only, by default)."""
        rows = self.store.db.query(
            "SELECT device, owner, job_id, kind, acquired_at_s, expires_at_s FROM leases ORDER BY device"
        )
        now = self.clock()
        return [Lease(*r) for r in rows if not live_only or r[5] > now]

    # --- lost jobs and holds ----------------------------------------------------------------------------
    def reconcile(self) -> list[JobRow]:
        """Mark started jobs whose lease lapsed as lost; hold the devices of lost characterizations.

        Returns:
            The jobs newly found lost (each exactly once, whoever calls this first).
        """
        now = self.clock()
        lost: list[JobRow] = []
        with self.store.db.write() as conn:
            rows = conn.execute(
                f"SELECT {_JOB_COLUMNS} FROM site_jobs WHERE state = 'started' AND expires_at_s < ?", (now,)
            ).fetchall()
            for row in rows:
                job = _job(row)
                conn.execute(
                    "UPDATE site_jobs SET state = 'lost', finished_at_s = ?, error = ? WHERE job_id = ?",
                    (now, f"agent {job.owner} stopped renewing its lease", job.job_id),
                )
                conn.execute("DELETE FROM leases WHERE job_id = ?", (job.job_id,))
                if job.kind == "characterize":
                    for device in job.hosts:
                        conn.execute(
                            "INSERT INTO device_holds(device, job_id, reason, held_at_s) VALUES (?, ?, ?, ?) "
                            "ON CONFLICT (device) DO NOTHING",
                            (
                                device,
                                job.job_id,
                                f"agent {job.owner} was lost mid-characterization "
                                f"(job {job.job_id}); the device may have crashed",
                                now,
                            ),
                        )
                lost.append(job)
        for job in lost:
            log.warning(
                "sites.job_lost",
                job_id=job.job_id,
                site=job.site,
                kind=job.kind,
                owner=job.owner,
                hosts_done=job.hosts_done,
            )
        return lost

    def holds(self) -> list[Hold]:
        """Every held device."""
        rows = self.store.db.query(
            "SELECT device, job_id, reason, held_at_s FROM device_holds ORDER BY device"
        )
        return [Hold(*r) for r in rows]

    def release_hold(self, device: str, *, by: str) -> bool:
        """Release a held device (``by``: "operator" or "heartbeat"); False if it was not held."""
        with self.store.db.write() as conn:
            gone = conn.execute(
                "DELETE FROM device_holds WHERE device = ? RETURNING device", (device,)
            ).fetchone()
        if gone is not None:
            log.warning("sites.hold_released", device=device, by=by)
        return gone is not None
