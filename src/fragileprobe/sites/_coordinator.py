"""The coordinator: splits a multi-site discovery into per-device-shard jobs, follows them, writes one report.

It decides; the agents do the I/O. Its loop (every ``poll_s``), until every job has ended:

1. ``Ledger.reconcile``: started jobs whose lease lapsed (a SIGKILLed agent) become lost; a lost
   characterization holds its device.
2. A lost discovery job is resumed: a new job with the hosts it had leased and ``resume=True``, so
   :func:`fragileprobe.discover` skips every host the lost job had finished (they are in the store).
3. Hosts a finished job found leased to another job (``busy``) are resubmitted after a back-off; held
   hosts never are (they are reported, and released by an operator or a health check).
4. A job still queued ``requeue_after_s`` after its message was sent is published again: a broker that
   restarted without persistence may have lost the message, and a duplicate is harmless (an agent runs a
   job only from ``queued``).
5. The progress callback gets the same :class:`~fragileprobe.DiscoveryProgress` a local run gives, summed
   over every site, so the CLI shows the same view.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import structlog

from fragileprobe._errors import FragileProbeError
from fragileprobe._scope import parse_targets
from fragileprobe.sites._agent import TASK_NAMES, make_app
from fragileprobe.sites._config import MAX_SITE_HOSTS
from fragileprobe.sites._ledger import JobRow, Ledger

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence

    from fragileprobe._discovery import DiscoveryProgress
    from fragileprobe._store import ProfileStore
    from fragileprobe.sites._config import Site, SitesConfig

__all__ = ["Coordinator", "DeviceHeldError", "SiteJobError", "SitesReport"]

log = structlog.get_logger(__name__)

# Coordinator loop period: a store query per period, cheap; progress refreshes at this pace.
DEFAULT_POLL_S: Final = 0.5
# Republish a job still queued after this long. Long enough that a busy site's backlog (jobs waiting for a
# free agent, in order) is not republished over and over; short enough that a broker restart costs a minute.
DEFAULT_REQUEUE_AFTER_S: Final = 60.0
# Back-off before resubmitting hosts that were leased to another job, doubled per attempt.
BUSY_RETRY_S: Final = 2.0
# Attempts per host (busy resubmissions and lost-job resumptions) before it is reported unreached.
MAX_ATTEMPTS: Final = 5
# Republishing a message retries a down broker this many times (0.5 s apart, growing to 2 s).
PUBLISH_RETRIES: Final = 30


class SiteJobError(FragileProbeError):
    """Raised when a site job was refused, lost or failed, or a wait for it ran out."""


class DeviceHeldError(SiteJobError):
    """Raised when a device is on hold (its characterization's agent was lost) and a job would touch it."""


@dataclass(frozen=True, slots=True)
class SitesReport:
    """One report for a multi-site discovery: the merged findings of every site's jobs.

    ``to_dict()`` has the keys of :meth:`DiscoveryReport.to_dict` (assets, groups, alerts, unresponsive,
    new, gone, moved, hosts_scanned, ...) plus ``sites`` (per site: hosts, jobs, lost, refused), ``held``
    and ``unreached``.
    """

    batch_id: str
    assets: tuple[dict[str, Any], ...]
    alerts: tuple[dict[str, Any], ...]
    unresponsive: tuple[dict[str, Any], ...]
    new: tuple[str, ...]
    gone: tuple[str, ...]
    moved: tuple[dict[str, Any], ...]
    hosts_scanned: int
    hosts_resumed: int
    sites: Mapping[str, Mapping[str, int]]
    held: tuple[str, ...]
    unreached: tuple[str, ...]
    jobs: int
    lost_jobs: int
    wall_time_s: float
    notes: tuple[str, ...] = ()
    params: Mapping[str, Any] = field(default_factory=dict)

    @property
    def groups(self) -> dict[str, list[str]]:
        """Group name -> hosts in it."""
        out: dict[str, list[str]] = {}
        for a in self.assets:
            for g in a.get("groups", []):
                out.setdefault(g, []).append(a["host"])
        return out

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "assets": list(self.assets),
            "groups": self.groups,
            "alerts": list(self.alerts),
            "unresponsive": list(self.unresponsive),
            "new": list(self.new),
            "gone": list(self.gone),
            "moved": list(self.moved),
            "hosts_scanned": self.hosts_scanned,
            "hosts_resumed": self.hosts_resumed,
            "wall_time_s": self.wall_time_s,
            "scan_id": None,
            "notes": list(self.notes),
            "params": dict(self.params),
            "icmp_only": [],
            "batch_id": self.batch_id,
            "sites": {k: dict(v) for k, v in self.sites.items()},
            "held": list(self.held),
            "unreached": list(self.unreached),
            "jobs": self.jobs,
            "lost_jobs": self.lost_jobs,
        }

    def summary(self) -> str:
        """A few lines for people."""
        lines = [
            f"discovery on {len(self.sites)} sites: {len(self.assets)} assets on "
            f"{self.hosts_scanned + self.hosts_resumed} addresses in {self.wall_time_s:.1f} s "
            f"({self.jobs} jobs, {self.lost_jobs} lost and resumed)"
        ]
        for name, s in self.sites.items():
            lines.append(
                f"  site {name}: {s['hosts_done']}/{s['hosts']} hosts, {s['assets']} assets, {s['jobs']} jobs"
            )
        for group, members in sorted(self.groups.items()):
            lines.append(f"  {group}: {len(members)}")
        if self.alerts:
            lines.append(f"alerts: {len(self.alerts)}")
            lines.extend(
                f"  {a['host']} ({a.get('model')}) in zone {a.get('zone')} [{a.get('zone_kind')}]"
                for a in self.alerts
            )
        if self.unresponsive:
            lines.append("stopped answering, left alone: " + ", ".join(u["host"] for u in self.unresponsive))
        if self.held:
            lines.append(
                "on hold (lost mid-characterization; release after checking): " + ", ".join(self.held)
            )
        if self.unreached:
            lines.append(f"not reached: {len(self.unreached)} hosts (busy, refused or lost too often)")
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)


def shards(hosts: Sequence[str], size: int) -> list[list[str]]:
    """Consecutive slices of at most ``size`` hosts (pure)."""
    return [list(hosts[i : i + size]) for i in range(0, len(hosts), size)]


class Coordinator:
    """Submits site jobs through the broker and follows them in the shared store.

    Args:
        config: The validated sites configuration.
        store: The shared store (default: opened from ``config.store``).
        app: A Celery app (default: one on ``config.broker``).
        poll_s: Loop period.
        requeue_after_s: Republish a job still queued after this long.
        busy_retry_s: First back-off before resubmitting busy hosts (doubles per attempt).
        clock: Wall-clock seconds (the ledger's clock too).
    """

    def __init__(
        self,
        config: SitesConfig,
        *,
        store: ProfileStore | None = None,
        app: Any = None,
        poll_s: float = DEFAULT_POLL_S,
        requeue_after_s: float = DEFAULT_REQUEUE_AFTER_S,
        busy_retry_s: float = BUSY_RETRY_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        from fragileprobe._store import ProfileStore

        self.config = config
        self._own_store = store is None
        self.store = store if store is not None else ProfileStore(config.store)
        self.ledger = Ledger(self.store, clock=clock)
        self.app = app if app is not None else make_app(config.broker)
        self.poll_s = poll_s
        self.requeue_after_s = requeue_after_s
        self.busy_retry_s = busy_retry_s
        self.clock = clock

    def close(self) -> None:
        """Close the store if the coordinator opened it."""
        if self._own_store:
            self.store.close()

    # --- submitting -------------------------------------------------------------------------------------
    def _payload(self, job: JobRow) -> dict[str, Any]:
        return {
            "job_id": job.job_id,
            "batch_id": job.batch_id,
            "site": job.site,
            "kind": job.kind,
            "hosts": list(job.hosts),
            **dict(job.params),
        }

    def _publish(self, job: JobRow) -> None:
        self.app.send_task(
            TASK_NAMES[job.kind],
            args=[self._payload(job)],
            queue=self.config.site(job.site).queue,
            retry=True,
            retry_policy={
                "max_retries": PUBLISH_RETRIES,
                "interval_start": 0.5,
                "interval_step": 0.5,
                "interval_max": 2.0,
            },
        )

    def submit(
        self,
        site: Site,
        kind: str,
        hosts: Iterable[str],
        *,
        batch_id: str,
        params: Mapping[str, Any],
        resume: bool = False,
        attempt: int = 1,
    ) -> JobRow:
        """Record one job in the store, then send its message to the site's queue."""
        extra = {"params": dict(params), "zones": site.zones_dict(), "resume": resume, "attempt": attempt}
        job = self.ledger.submit(
            job_id=uuid.uuid4().hex, batch_id=batch_id, site=site.name, kind=kind, hosts=hosts, params=extra
        )
        self._publish(job)
        log.info(
            "sites.job_submitted",
            job_id=job.job_id,
            site=site.name,
            kind=kind,
            hosts=len(job.hosts),
            attempt=attempt,
        )
        return job

    def held(self) -> set[str]:
        """Devices on hold."""
        return {h.device for h in self.ledger.holds()}

    # --- discovery --------------------------------------------------------------------------------------
    def plan(self) -> list[tuple[Site, list[str]]]:
        """Every site's targets, in shards of ``config.shard_size`` hosts (pure given the config)."""
        out: list[tuple[Site, list[str]]] = []
        for site in self.config.sites:
            hosts = parse_targets(site.targets, scope=site.scope, max_hosts=MAX_SITE_HOSTS, allow_large=True)
            out.extend((site, shard) for shard in shards(hosts, self.config.shard_size))
        return out

    def discover(
        self, *, progress: Callable[[DiscoveryProgress], None] | None = None, timeout_s: float | None = None
    ) -> SitesReport:
        """Discover every site's targets through its agents; return one merged report.

        Raises:
            SiteJobError: ``timeout_s`` passed before every job ended.
        """
        started = time.monotonic()  # sync code polling with time.sleep: no event loop, no anyio clock
        batch_id = uuid.uuid4().hex
        held = self.held()
        params = self.config.discovery.to_dict()
        total = 0
        skipped_held: list[str] = []
        for site, shard in self.plan():
            free = [h for h in shard if h not in held]
            skipped_held.extend(h for h in shard if h in held)
            total += len(shard)
            if free:
                self.submit(site, "discover", free, batch_id=batch_id, params=params)
        log.info("sites.discovery_submitted", batch_id=batch_id, hosts=total, sites=len(self.config.sites))
        jobs = self.follow(batch_id, total=total, progress=progress, timeout_s=timeout_s)
        return self._report(batch_id, jobs, total=total, held=skipped_held, started=started)

    def follow(
        self,
        batch_id: str,
        *,
        total: int,
        progress: Callable[[DiscoveryProgress], None] | None = None,
        timeout_s: float | None = None,
    ) -> list[JobRow]:
        """Drive a batch to its end (the loop of the module docstring); return its jobs."""
        from fragileprobe._discovery import DiscoveryProgress

        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        handled: set[str] = set()
        retry_at: dict[str, float] = {}
        last: tuple[int, int, int] | None = None
        while True:
            self.ledger.reconcile()
            jobs = self.ledger.jobs(batch_id)
            now = self.clock()
            pending = False
            for job in jobs:
                if job.job_id in handled:
                    continue
                if job.state == "queued" and now - job.submitted_at_s > self.requeue_after_s:
                    self.ledger.republish_due(job.job_id)
                    self._publish(job)
                    log.info("sites.job_republished", job_id=job.job_id, site=job.site)
                if job.state in ("lost", "done", "failed") and job.kind == "discover":
                    pending |= self._follow_up(job, batch_id, retry_at, handled, now)
                elif job.terminal:
                    handled.add(job.job_id)
            done = min(total, sum(j.hosts_done for j in jobs))
            assets = sum(len(((j.result or {}).get("report") or {}).get("assets", [])) for j in jobs)
            alerts = sum(len(((j.result or {}).get("report") or {}).get("alerts", [])) for j in jobs)
            if progress is not None and (done, assets, alerts) != last:
                last = (done, assets, alerts)
                progress(
                    DiscoveryProgress(
                        hosts_done=done, hosts_total=total, assets_found=assets, alerts=alerts, host=""
                    )
                )
            if not pending and all(j.terminal for j in jobs) and all(j.job_id in handled for j in jobs):
                return jobs
            if deadline is not None and time.monotonic() > deadline:
                running = sum(not j.terminal for j in jobs)
                raise SiteJobError(
                    f"batch {batch_id}: {running} jobs still running after {timeout_s:g} s; "
                    "finished hosts are in the store"
                )
            time.sleep(self.poll_s)

    def _follow_up(
        self, job: JobRow, batch_id: str, retry_at: dict[str, float], handled: set[str], now: float
    ) -> bool:
        """Resubmit what a finished or lost discovery job left; True while the batch grew or must wait."""
        site = self.config.site(job.site)
        extra = dict(job.params)
        attempt = int(extra.get("attempt", 1))
        result = job.result or {}
        busy = list(result.get("busy", []))
        submitted = False
        if job.state == "lost" and attempt < MAX_ATTEMPTS and f"lost:{job.job_id}" not in retry_at:
            retry_at[f"lost:{job.job_id}"] = now
            # Resume the rest: the same leased hosts, resume=True, so finished ones are skipped.
            self.submit(
                site,
                "discover",
                job.hosts,
                batch_id=batch_id,
                params=extra["params"],
                resume=True,
                attempt=attempt + 1,
            )
            submitted = True
        if busy and attempt < MAX_ATTEMPTS:
            due = retry_at.setdefault(job.job_id, now + self.busy_retry_s * 2 ** (attempt - 1))
            if now < due:
                return True
            self.submit(
                site, "discover", busy, batch_id=batch_id, params=extra["params"], attempt=attempt + 1
            )
            submitted = True
        handled.add(job.job_id)
        return submitted

    def _report(
        self, batch_id: str, jobs: list[JobRow], *, total: int, held: list[str], started: float
    ) -> SitesReport:
        assets: dict[str, dict[str, Any]] = {}
        alerts: dict[str, dict[str, Any]] = {}
        unresponsive: dict[str, dict[str, Any]] = {}
        new: set[str] = set()
        gone: set[str] = set()
        moved: dict[str, dict[str, Any]] = {}
        scanned = resumed = lost = 0
        notes: list[str] = []
        per_site: dict[str, dict[str, int]] = {
            s.name: {"hosts": 0, "hosts_done": 0, "assets": 0, "jobs": 0, "lost": 0, "refused": 0}
            for s in self.config.sites
        }
        for site, shard in self.plan():
            per_site[site.name]["hosts"] += len(shard)
        covered: set[str] = set()
        for job in jobs:
            s = per_site[job.site]
            s["jobs"] += 1
            s["hosts_done"] += job.hosts_done
            if job.state == "lost":
                lost += 1
                s["lost"] += 1
            if job.state == "refused":
                s["refused"] += 1
                notes.append(f"site {job.site}: job refused: {job.error}")
            if job.state == "failed":
                notes.append(f"site {job.site}: job failed: {job.error}")
            report = (job.result or {}).get("report")
            held.extend(h for h in (job.result or {}).get("held", []) if h not in held)
            if not report:
                continue
            covered.update(job.hosts)
            scanned += int(report.get("hosts_scanned", 0))
            resumed += int(report.get("hosts_resumed", 0))
            for a in report.get("assets", []):
                assets[a["host"]] = a
            for a in report.get("alerts", []):
                alerts[a["host"]] = a
            for u in report.get("unresponsive", []):
                unresponsive[u["host"]] = u
            new.update(report.get("new", []))
            gone.update(report.get("gone", []))
            for m in report.get("moved", []):
                moved[m["host"]] = m
        for name in per_site:
            scope = self.config.site(name).scope
            per_site[name]["assets"] = sum(1 for a in assets.values() if a["host"] in scope)
            per_site[name]["hosts_done"] = min(per_site[name]["hosts_done"], per_site[name]["hosts"])
        everything = [h for _, shard in self.plan() for h in shard]
        unreached = tuple(h for h in everything if h not in covered and h not in held)
        key = _addr_key
        return SitesReport(
            batch_id=batch_id,
            assets=tuple(sorted(assets.values(), key=lambda a: key(a["host"]))),
            alerts=tuple(sorted(alerts.values(), key=lambda a: key(a["host"]))),
            unresponsive=tuple(sorted(unresponsive.values(), key=lambda a: key(a["host"]))),
            new=tuple(sorted(new, key=key)),
            gone=tuple(sorted(gone, key=key)),
            moved=tuple(sorted(moved.values(), key=lambda a: key(a["host"]))),
            hosts_scanned=scanned,
            hosts_resumed=resumed,
            sites=per_site,
            held=tuple(sorted(held, key=key)),
            unreached=unreached,
            jobs=len(jobs),
            lost_jobs=lost,
            wall_time_s=time.monotonic() - started,
            notes=tuple(notes),
            params=self.config.discovery.to_dict(),
        )

    # --- one device -------------------------------------------------------------------------------------
    def characterize(
        self, host: str, *, params: Mapping[str, Any] | None = None, timeout_s: float | None = None
    ) -> JobRow:
        """Characterize ``host`` on the site that owns it; wait for the job to end and return it.

        ``params``: ladder, dwell_s, trials, interval_s, hold_s, ports, heartbeat_port, name.

        Raises:
            DeviceHeldError: The device is on hold; nothing was sent.
            SiteJobError: No site owns the host, or the job was refused, lost or failed.
        """
        site = self._owner(host)
        if host in self.held():
            raise DeviceHeldError(
                f"{host} is on hold (a characterization's agent was lost mid-run); "
                "release it after checking the device, or run a health check"
            )
        job = self.submit(site, "characterize", [host], batch_id=uuid.uuid4().hex, params=dict(params or {}))
        end = self.wait(job.job_id, timeout_s=timeout_s)
        if end.state != "done":
            raise SiteJobError(
                f"characterization of {host} on site {site.name}: job {end.state}: {end.error}"
            )
        result = end.result or {}
        if host in result.get("held", []):
            raise DeviceHeldError(f"{host} went on hold before the job could lease it; nothing sent")
        if host in result.get("busy", []):
            raise SiteJobError(
                f"{host} is leased to another job (a discovery or characterization running "
                "now); nothing sent, try again when it has finished"
            )
        return end

    def check_health(
        self, host: str, *, params: Mapping[str, Any] | None = None, timeout_s: float | None = None
    ) -> bool:
        """Ask the owning site to heartbeat a held device; True if healthy beats released it."""
        site = self._owner(host)
        job = self.submit(site, "health", [host], batch_id=uuid.uuid4().hex, params=dict(params or {}))
        end = self.wait(job.job_id, timeout_s=timeout_s)
        return end.state == "done" and host in (end.result or {}).get("released", [])

    def release_hold(self, host: str) -> bool:
        """The operator's release of a held device (after checking it); False if it was not held."""
        return self.ledger.release_hold(host, by="operator")

    def wait(self, job_id: str, *, timeout_s: float | None = None) -> JobRow:
        """Wait until a job ends (reconciling lost jobs meanwhile); return it."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            self.ledger.reconcile()
            job = self.ledger.job(job_id)
            if job is None:
                raise SiteJobError(f"no job {job_id} in the store")
            if job.terminal:
                return job
            if job.state == "queued" and self.clock() - job.submitted_at_s > self.requeue_after_s:
                self.ledger.republish_due(job_id)
                self._publish(job)
            if deadline is not None and time.monotonic() > deadline:
                raise SiteJobError(f"job {job_id} still {job.state} after {timeout_s:g} s")
            time.sleep(self.poll_s)

    def _owner(self, host: str) -> Site:
        site = self.config.owner_of(host)
        if site is None:
            raise SiteJobError(f"no site's networks hold {host}: nothing sent")
        return site


def _addr_key(host: str) -> tuple[int, int]:
    import ipaddress

    addr = ipaddress.ip_address(host)
    return (addr.version, int(addr))
