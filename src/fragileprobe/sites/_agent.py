"""A site agent: a Celery worker bound to its site's queue, running jobs inside its own scope only.

What an agent does with a job, in order, and why:

1. **Refuse what is not its own**: a job for another site, or naming one address outside the scope the
   operator gave this agent (``--scope``), is recorded ``refused`` and nothing is sent. The scope comes
   from the agent's command line, never from the job, so a wrong or forged job cannot widen it.
2. **Start it once**: ``queued -> started`` in the shared store (:meth:`Ledger.start`); a job in any other
   state (already started, lost, done: a redelivered or republished message) is dropped, unrun.
3. **Lease every device**: one job per device across the whole system. Devices leased to another job are
   handed back as ``busy`` (the coordinator resubmits them later), held ones as ``held``.
4. **Run the library's own code** on the leased devices: :func:`fragileprobe.discover` (its per-host
   limiter, stored ceilings, "each finished host in the store at once"), :func:`fragileprobe.characterize`
   (its Guard, watchdog and "each finished trial in the store at once"), or a Guard's ``wait_healthy``.
5. **Renew** the job's and its leases' expiry every third of the TTL while the job runs, releasing each
   host's lease as soon as discovery has finished it. If renewals fail for two thirds of the TTL the job
   cancels itself: by then the coordinator may declare the lease lapsed, and two jobs on one device is the
   thing leases exist to prevent.

Celery acknowledgement, chosen on purpose (``make_app``): ``acks_late=True``, so a job's message leaves
the broker only once the job has finished (a worker or broker that dies before the job starts loses
nothing: the message is delivered again); ``reject_on_worker_lost=False``, so a job whose worker died
mid-run is *not* put back on the queue to run again blindly on a device that may have just crashed. The
agent runs Celery's ``solo`` pool (the job runs in the worker process itself, one at a time), so SIGKILL
of the agent's PID kills the job with it; Redis then keeps the unacknowledged message and redelivers it
after its visibility timeout, and step 2 turns that redelivery into a no-op. What happens to the lost
job's devices is the coordinator's decision (:meth:`Ledger.reconcile`), never the broker's.
"""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING, Any, Final

import anyio
import structlog

from fragileprobe._errors import FragileProbeError
from fragileprobe.sites._config import DEFAULT_LEASE_TTL_S, DiscoveryParams, queue_for
from fragileprobe.sites._ledger import Ledger

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping

    from fragileprobe._discovery import DiscoveryProgress
    from fragileprobe._scope import Scope
    from fragileprobe._store import ProfileStore

__all__ = [
    "BROKER_VISIBILITY_TIMEOUT_S",
    "TASK_NAMES",
    "LeaseLostError",
    "SiteAgent",
    "make_app",
    "run_agent",
]

log = structlog.get_logger(__name__)

TASK_NAMES: Final = {
    "discover": "fragileprobe.sites.discover",
    "characterize": "fragileprobe.sites.characterize",
    "health": "fragileprobe.sites.health",
}
# Redis redelivers a message not acknowledged within this time (a worker that died mid-job). An hour: a
# discovery shard or a characterization finishes well inside it, and a redelivery is dropped by the
# ledger anyway (the job is no longer queued).
BROKER_VISIBILITY_TIMEOUT_S: Final = 3600
# How often a running job writes its progress (hosts done) when that is sooner than TTL / 3: the
# coordinator's progress view refreshes at this pace. One small UPDATE per job per second.
PROGRESS_INTERVAL_S: Final = 1.0
# A health check: this many consecutive healthy heartbeats release a held device, within this bound.
HEALTH_BEATS: Final = 5
HEALTH_TIMEOUT_S: Final = 60.0


class LeaseLostError(FragileProbeError):
    """Raised when a job stopped itself because its lease could not be renewed in time."""


def _owner(site: str) -> str:
    return f"{site}/{socket.gethostname()}/{os.getpid()}"


class SiteAgent:
    """Runs site jobs (the Celery tasks call :meth:`run`); usable without Celery, e.g. in tests.

    Args:
        site: This agent's site name.
        scope: The networks this agent may reach (from the operator, never from a job).
        store: The shared store.
        lease_ttl_s: Lease lifetime without renewal.
    """

    def __init__(
        self, *, site: str, scope: Scope, store: ProfileStore, lease_ttl_s: float = DEFAULT_LEASE_TTL_S
    ) -> None:
        self.site = site
        self.scope = scope
        self.store = store
        self.ledger = Ledger(store)
        self.lease_ttl_s = lease_ttl_s
        self.owner = _owner(site)

    def _refusal(self, job: Mapping[str, Any]) -> str | None:
        if job.get("site") != self.site:
            return f"job for site {job.get('site')!r} sent to the agent of site {self.site!r}"
        hosts = job.get("hosts")
        if not isinstance(hosts, list) or not all(isinstance(h, str) for h in hosts):
            return "job has no host list"
        outside = [h for h in hosts if h not in self.scope]
        if outside:
            return (
                f"{len(outside)} address(es) outside this agent's scope ({self.scope}), "
                f"e.g. {outside[0]}: refused, nothing sent"
            )
        if job.get("kind") not in TASK_NAMES:
            return f"unknown job kind {job.get('kind')!r}"
        return None

    def run(self, job: Mapping[str, Any]) -> str:
        """Run one job to its end; return its final state (or "skipped" for a job not queued)."""
        job_id = str(job.get("job_id"))
        bound = log.bind(job_id=job_id, site=self.site, kind=job.get("kind"))
        why = self._refusal(job)
        if why is not None:
            bound.warning("sites.job_refused", reason=why)
            self.ledger.finish(job_id, state="refused", error=why)
            return "refused"
        if self.ledger.start(job_id, owner=self.owner, ttl_s=self.lease_ttl_s) is None:
            current = self.ledger.job(job_id)
            bound.info("sites.job_skipped", state=current.state if current else None)
            return "skipped"
        kind = str(job["kind"])
        hosts = list(job["hosts"])
        grant = self.ledger.acquire(hosts, job_id=job_id, owner=self.owner, kind=kind, ttl_s=self.lease_ttl_s)
        self.ledger.record_grant(job_id, grant)
        done: list[str] = []
        bound.info("sites.job_started", hosts=len(grant.granted), busy=len(grant.busy), held=len(grant.held))
        try:
            if kind == "discover":
                result = self._with_lease(job_id, done, lambda: self._discover(job, grant.granted, done))
            elif kind == "characterize":
                result = self._with_lease(job_id, done, lambda: self._characterize(job, grant.granted))
            else:
                result = self._with_lease(job_id, done, lambda: self._health(job, grant.granted))
        except FragileProbeError as exc:
            bound.warning("sites.job_failed", error=str(exc))
            self.ledger.finish(
                job_id,
                state="failed",
                error=str(exc),
                hosts_done=len(done),
                result={"busy": list(grant.busy), "held": list(grant.held)},
            )
            return "failed"
        result = {**result, "busy": list(grant.busy), "held": list(grant.held)}
        self.ledger.finish(job_id, state="done", result=result, hosts_done=len(done))
        return "done"

    # --- the lease keeper -------------------------------------------------------------------------------
    def _with_lease(
        self, job_id: str, done: list[str], work: Callable[[], Awaitable[dict[str, Any]]]
    ) -> dict[str, Any]:
        ttl = self.lease_ttl_s
        interval = min(ttl / 3, PROGRESS_INTERVAL_S)
        outcome: dict[str, Any] = {}

        async def keeper(cancel: anyio.CancelScope) -> None:
            last_ok = anyio.current_time()
            released = 0
            while True:
                await anyio.sleep(interval)
                try:
                    finished = done[released:]
                    await self.store.aio.call(self.ledger.progress, job_id, hosts_done=len(done), ttl_s=ttl)
                    if finished:
                        await self.store.aio.call(self.ledger.release, job_id, finished)
                        released += len(finished)
                    last_ok = anyio.current_time()
                except FragileProbeError as exc:
                    log.warning("sites.lease_renew_failed", job_id=job_id, error=str(exc))
                if anyio.current_time() - last_ok > ttl * 2 / 3:
                    outcome["lost"] = True
                    cancel.cancel()
                    return

        async def main() -> None:
            async with anyio.create_task_group() as tg:
                tg.start_soon(keeper, tg.cancel_scope)
                outcome["result"] = await work()
                tg.cancel_scope.cancel()

        anyio.run(main)
        if outcome.get("lost"):
            raise LeaseLostError(f"job {job_id}: lease not renewed for {ttl * 2 / 3:.0f} s; stopped itself")
        result: dict[str, Any] = outcome["result"]
        return result

    # --- the jobs ---------------------------------------------------------------------------------------
    async def _discover(
        self, job: Mapping[str, Any], hosts: tuple[str, ...], done: list[str]
    ) -> dict[str, Any]:
        from fragileprobe._discovery_run import discover
        from fragileprobe._groups import Zones

        if not hosts:
            return {"report": None}
        p = DiscoveryParams.from_dict(job["params"])
        zones_data = job.get("zones") or {"zone": []}
        zones = Zones.from_dict(zones_data, source=f"site {self.site} zones") if zones_data["zone"] else None

        def progress(event: DiscoveryProgress) -> None:
            done.append(event.host)

        report = await discover(
            list(hosts),
            scope=self.scope,
            ports=p.ports,
            zones=zones,
            store=self.store,
            per_host_sessions=p.per_host_sessions,
            rate_per_host=p.rate_per_host,
            max_hosts_in_parallel=p.max_hosts_in_parallel,
            connect_timeout_s=p.connect_timeout_s,
            banner_timeout_s=p.banner_timeout_s,
            unresponsive_after=p.unresponsive_after,
            resume=bool(job.get("resume")),
            port_aliases=p.port_aliases,
            progress=progress,
        )
        return {"report": report.to_dict()}

    async def _characterize(self, job: Mapping[str, Any], hosts: tuple[str, ...]) -> dict[str, Any]:
        from fragileprobe._characterize import characterize
        from fragileprobe._heartbeat import HttpHeartbeat
        from fragileprobe._scope import PORT_SETS, Target

        if not hosts:
            return {"characterization": None}
        p = dict(job["params"])
        target = Target(
            hosts[0],
            ports=p.get("ports", PORT_SETS["pump"]),
            heartbeat=HttpHeartbeat(port=int(p.get("heartbeat_port", 8080))),
        )
        char = await characterize(
            target,
            scope=self.scope,
            ladder=tuple(p.get("ladder", (1, 2, 5, 7, 10))),
            dwell_s=float(p.get("dwell_s", 5.0)),
            trials=int(p.get("trials", 3)),
            interval_s=float(p.get("interval_s", 1.0)),
            hold_s=float(p.get("hold_s", 0.5)),
            store=self.store,
            resume=True,
            name=p.get("name"),
        )
        summary = {
            "run_id": char.run_id,
            "model_key": char.model_key,
            "safe_ceiling": char.safe_ceiling,
            "trials": len(char.trials),
        }
        return {"characterization": summary}

    async def _health(self, job: Mapping[str, Any], hosts: tuple[str, ...]) -> dict[str, Any]:
        from fragileprobe._guard import Guard
        from fragileprobe._heartbeat import HttpHeartbeat
        from fragileprobe._scope import Target

        p = dict(job.get("params") or {})
        beats = int(p.get("beats", HEALTH_BEATS))
        released: list[str] = []
        still: list[str] = []
        for host in hosts:
            target = Target(host, heartbeat=HttpHeartbeat(port=int(p.get("heartbeat_port", 8080))))
            healthy = False
            # No work session is ever opened here: the device sees the heartbeat's session alone. N = 2 is the
            # smallest a Guard with a session heartbeat accepts (its place plus one that stays unused).
            async with Guard(
                target, ceiling=2, scope=self.scope, interval_s=float(p.get("interval_s", 0.5))
            ) as g:
                with anyio.move_on_after(float(p.get("timeout_s", HEALTH_TIMEOUT_S))):
                    await g.wait_healthy(beats)
                    healthy = not g.device_down
            if healthy and await self.store.aio.call(self.ledger.release_hold, host, by="heartbeat"):
                released.append(host)
            elif not healthy:
                still.append(host)
        return {"released": released, "still_held": still}


def make_app(broker: str, *, agent: SiteAgent | None = None) -> Any:
    """A Celery app on ``broker`` (Redis); with ``agent``, its tasks run that agent's jobs.

    The coordinator uses an app without an agent (it only sends messages, by task name and queue).
    """
    from celery import Celery

    app = Celery("fragileprobe", broker=broker, set_as_current=False)
    app.conf.update(
        task_acks_late=True,  # a message leaves the broker only when its job has ended (see the docstring)
        task_reject_on_worker_lost=False,  # a job whose worker died is never re-queued blindly
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,  # an agent reserves one job at a time: the others stay for its peers
        task_ignore_result=True,  # results live in the shared store, not in the broker
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        broker_transport_options={"visibility_timeout": BROKER_VISIBILITY_TIMEOUT_S},
        broker_connection_retry=True,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,  # an agent outlives a broker restart: it reconnects
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        task_create_missing_queues=True,
        task_default_queue="fragileprobe.default",
    )
    if agent is not None:
        for kind, name in TASK_NAMES.items():
            _register(app, agent, name, kind)
    return app


def _register(app: Any, agent: SiteAgent, name: str, kind: str) -> None:
    def task(job: dict[str, Any]) -> str:
        if job.get("kind") != kind:
            job = {**job, "kind": kind}
        return agent.run(job)

    task.__name__ = f"site_{kind}"
    app.task(name=name, acks_late=True, reject_on_worker_lost=False, ignore_result=True)(task)


def run_agent(
    *,
    site: str,
    broker: str,
    store: str,
    scope: Scope,
    lease_ttl_s: float = DEFAULT_LEASE_TTL_S,
    loglevel: str = "WARNING",
) -> None:
    """Run a site agent until it is stopped: one Celery worker (solo pool) on ``site``'s queue.

    Raises:
        StoreError: The store cannot be opened.
        ConfigError: celery or psycopg is missing (``pip install 'fragileprobe[sites]'``).
    """
    from fragileprobe._errors import ConfigError
    from fragileprobe._store import ProfileStore

    try:
        import celery  # noqa: F401
    except ImportError as exc:
        raise ConfigError("agent: needs celery: pip install 'fragileprobe[sites]'") from exc
    db = ProfileStore(store)
    agent = SiteAgent(site=site, scope=scope, store=db, lease_ttl_s=lease_ttl_s)
    app = make_app(broker, agent=agent)
    log.info("sites.agent_started", site=site, queue=queue_for(site), owner=agent.owner, scope=str(scope))
    try:
        app.worker_main(
            [
                "worker",
                "--pool=solo",
                "--concurrency=1",
                "-Q",
                queue_for(site),
                "-n",
                f"{site}-{os.getpid()}@%h",
                "--without-mingle",
                "--without-gossip",
                f"--loglevel={loglevel}",
            ]
        )
    finally:
        db.close()
