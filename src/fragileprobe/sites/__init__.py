"""Many sites, one picture: site agents on Celery, one Redis broker, one shared PostgreSQL store.

A deployment is one broker, one database, and one agent (``fragileprobe agent``) per site, each able to
reach only its own networks; a coordinator (``fragileprobe discover --sites sites.toml``) splits the work
into per-device-shard jobs routed to the owning site's queue, follows them in the store and writes one
report. See docs/sites.md. Needs ``pip install 'fragileprobe[sites]'`` (celery[redis], psycopg[binary]);
celery and psycopg are imported only when an app, an agent or a PostgreSQL store is made.

Layers: ``_config`` (sites.toml, pure) and ``_ledger`` (jobs, leases, holds: one store transaction each)
sit on the store; ``_agent`` (the worker's jobs, the Celery app) on both; ``_coordinator`` on all three.
``_local`` starts throw-away Redis and PostgreSQL servers on loopback for tests and benchmarks.
"""

from __future__ import annotations

from fragileprobe.sites._agent import (
    BROKER_VISIBILITY_TIMEOUT_S,
    TASK_NAMES,
    LeaseLostError,
    SiteAgent,
    make_app,
    run_agent,
)
from fragileprobe.sites._config import (
    DEFAULT_LEASE_TTL_S,
    DEFAULT_SHARD_SIZE,
    DiscoveryParams,
    Site,
    SitesConfig,
    queue_for,
)
from fragileprobe.sites._coordinator import Coordinator, DeviceHeldError, SiteJobError, SitesReport
from fragileprobe.sites._ledger import Hold, JobRow, Lease, LeaseGrant, Ledger
from fragileprobe.sites._local import LocalPostgres, LocalRedis, ServerUnavailable

__all__ = [
    "BROKER_VISIBILITY_TIMEOUT_S",
    "DEFAULT_LEASE_TTL_S",
    "DEFAULT_SHARD_SIZE",
    "TASK_NAMES",
    "Coordinator",
    "DeviceHeldError",
    "DiscoveryParams",
    "Hold",
    "JobRow",
    "Lease",
    "LeaseGrant",
    "LeaseLostError",
    "Ledger",
    "LocalPostgres",
    "LocalRedis",
    "ServerUnavailable",
    "Site",
    "SiteAgent",
    "SiteJobError",
    "SitesConfig",
    "SitesReport",
    "make_app",
    "queue_for",
    "run_agent",
]
