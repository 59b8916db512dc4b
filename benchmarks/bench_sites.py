"""Site agents end to end: four emulated sites discovered through 1, 2 and 4 agents, against in-process.

Run:  python benchmarks/bench_sites.py [--agents 1 2 4] [--prefix 127.180] [--json]

One run starts a throw-away PostgreSQL and Redis on 127.0.0.1 (``fragileprobe.sites.LocalPostgres`` /
``LocalRedis``: temporary directories, free high ports, stopped by PID), four emulated sites (the standard
hospital fleet, a /24 each, on ``<prefix>.0.0/24`` ... ``<prefix>.3.0/24``: 126 devices and 128 empty
addresses per site) served by this process, and for each agent count N a fresh database, fresh fleets and
N ``fragileprobe agent`` subprocesses per site (an agent reaches only its own site's networks, so N agents
per site is 4 N processes in all). Then the coordinator (``Coordinator.discover``, what ``discover
--sites`` runs) discovers every site. Measured per row: wall time of the coordinator's call (agents are
started and ready before the clock starts), hosts found, devices hung, the highest number of sessions any
device held from all agents together (the emulator's own per-device peak) against its crash threshold,
jobs.

The in-process baseline is one ``fragileprobe discover`` process over the same four /24s with the same
parameters and a SQLite store, against fresh fleets served the same way: the cost of the distributed
path is the difference (broker round trips, PostgreSQL transactions, shards of 32 hosts instead of one
pool of 64 hosts in flight). All traffic stays on 127.0.0.0/8; every loop is bounded.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import structlog

from fragileprobe.emulator import Fleet, hospital_fleet
from fragileprobe.sites import Coordinator, LocalPostgres, LocalRedis, SitesConfig
from fragileprobe.sites._ledger import Ledger

if TYPE_CHECKING:
    from collections.abc import Iterator

SITES = 4
# Bound on one discovery of the four sites (it takes well under a minute on a loaded 2-core machine).
RUN_TIMEOUT_S = 600.0
# Bound on an agent's start-up (imports, store open, broker connect).
AGENT_READY_TIMEOUT_S = 60.0


def _fp() -> list[str]:
    script = Path(sys.executable).parent / "fragileprobe"
    return [str(script)] if script.exists() else [sys.executable, "-m", "fragileprobe"]


def site_dicts(prefix: str) -> list[dict[str, Any]]:
    out = []
    for i in range(SITES):
        p = f"{prefix}.{i}"
        out.append(
            {
                "name": f"site-{i}",
                "networks": [f"{p}.0/24"],
                "zone": [
                    {"name": f"site-{i}-clinical", "kind": "medical", "ranges": [f"{p}.0/25"]},
                    {"name": f"site-{i}-office", "kind": "general", "ranges": [f"{p}.128/25"]},
                ],
            }
        )
    return out


@contextlib.contextmanager
def agent_processes(per_site: int, *, broker: str, store: str, sites: list[dict[str, Any]]) -> Iterator[None]:
    """``per_site`` agents on each site's queue, each with that site's networks as its scope."""
    procs: list[tuple[subprocess.Popen[bytes], Path]] = []
    try:
        for site in sites:
            for _ in range(per_site):
                log = Path(tempfile.mkstemp(prefix="fp-bench-agent-", suffix=".log")[1])
                with log.open("wb") as fh:
                    proc = subprocess.Popen(
                        [
                            *_fp(),
                            "agent",
                            "--site",
                            site["name"],
                            "--broker",
                            broker,
                            "--store",
                            store,
                            "--scope",
                            site["networks"][0],
                            "--log-level",
                            "info",
                        ],
                        stdout=fh,
                        stderr=subprocess.STDOUT,
                    )
                procs.append((proc, log))
        deadline = time.monotonic() + AGENT_READY_TIMEOUT_S
        for proc, log in procs:
            while b" ready." not in log.read_bytes():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"agent did not start: {log.read_text(errors='replace')[-800:]}")
                time.sleep(0.1)
        yield
    finally:
        for proc, _ in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc, log in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
            log.unlink(missing_ok=True)


def children_cpu_s() -> float:
    """CPU seconds of this process's finished children (the agents, the in-process CLI run)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def server_cpu_s(pid: int | None) -> float:
    """CPU seconds of a server and its reaped children (PostgreSQL backends exit into the postmaster)."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(x) for x in fields[11:15])  # utime, stime, cutime, cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def fleet_numbers(fleets: list[Fleet]) -> dict[str, int]:
    devices = [d for f in fleets for d in f.devices.values()]
    return {
        "devices": len(devices),
        "hung": sum(1 for d in devices if d.stats.crashes),
        "peak_sessions": max(d.stats.peak_sessions for d in devices),
        # Devices that never crash (workstations, servers) have no threshold.
        "lowest_ceiling": min(d.threshold for d in devices if d.threshold is not None),
        "above_ceiling": sum(
            1 for d in devices if d.threshold is not None and d.stats.peak_sessions > d.threshold
        ),
    }


async def run_distributed(
    agents: int, *, pg: LocalPostgres, redis: LocalRedis, prefix: str, run: int
) -> dict[str, Any]:
    broker = redis.url
    sites = site_dicts(prefix)
    store = pg.create_database(f"bench{run}")
    config = SitesConfig.from_dict({"broker": broker, "store": store, "site": sites})
    fleets = [Fleet(hospital_fleet(f"{prefix}.{i}", seed=i), control_port=None) for i in range(SITES)]
    async with contextlib.AsyncExitStack() as stack:
        for f in fleets:
            await stack.enter_async_context(f)
        # Agents are started (and ready) before the clock starts: start-up is not part of a discovery.
        cpu0 = children_cpu_s()
        servers0 = server_cpu_s(pg.pid) + server_cpu_s(redis.pid)
        with agent_processes(agents, broker=broker, store=store, sites=sites):
            coordinator = Coordinator(config)
            try:
                started = time.monotonic()
                report = await anyio.to_thread.run_sync(lambda: coordinator.discover(timeout_s=RUN_TIMEOUT_S))
                wall = time.monotonic() - started
                jobs = Ledger(coordinator.store).jobs(report.batch_id)
            finally:
                coordinator.close()
        agents_cpu = children_cpu_s() - cpu0  # includes the agents' start-up and shutdown
        servers_cpu = server_cpu_s(pg.pid) + server_cpu_s(redis.pid) - servers0
        numbers = fleet_numbers(fleets)
    worked: dict[str, int] = {}
    for job in jobs:
        for host in job.hosts:
            worked[host] = worked.get(host, 0) + 1
    return {
        "mode": f"{agents} agent(s) per site",
        "processes": agents * SITES,
        "wall_s": wall,
        "hosts_found": len(report.assets),
        "alerts": len(report.alerts),
        "jobs": report.jobs,
        "hosts_in_two_jobs": sum(1 for n in worked.values() if n > 1),
        "scan_cpu_s": agents_cpu,
        "server_cpu_s": servers_cpu,
        **numbers,
    }


async def run_in_process(prefix: str) -> dict[str, Any]:
    fleets = [Fleet(hospital_fleet(f"{prefix}.{i}", seed=i), control_port=None) for i in range(SITES)]
    targets = [f"{prefix}.{i}.0/24" for i in range(SITES)]
    with tempfile.TemporaryDirectory() as tmp:
        async with contextlib.AsyncExitStack() as stack:
            for f in fleets:
                await stack.enter_async_context(f)
            started = time.monotonic()
            cpu0 = children_cpu_s()
            done = await anyio.to_thread.run_sync(
                lambda: subprocess.run(
                    [*_fp(), "discover", *targets, "--store", str(Path(tmp) / "fp.db"), "--json"],
                    capture_output=True,
                    timeout=RUN_TIMEOUT_S,
                    check=False,
                )
            )
            wall = time.monotonic() - started
            cpu = children_cpu_s() - cpu0
            numbers = fleet_numbers(fleets)
    if done.returncode not in (0, 1):
        raise RuntimeError(f"in-process discover failed: {done.stderr.decode(errors='replace')[-800:]}")
    report = json.loads(done.stdout)
    return {
        "mode": "in-process",
        "processes": 1,
        "wall_s": wall,
        "hosts_found": len(report["assets"]),
        "alerts": len(report["alerts"]),
        "jobs": 0,
        "hosts_in_two_jobs": 0,
        "scan_cpu_s": cpu,
        "server_cpu_s": 0.0,
        **numbers,
    }


def store_write_rate(url: str, *, writers: int, per_writer: int) -> float:
    """Transactions per second of ``mark_host_done`` (the write every finished address costs) with
    ``writers`` concurrent stores (threads, one connection each) on one database."""
    import threading

    from fragileprobe._store import ProfileStore

    ProfileStore(url).close()  # schema first, so the timed part is writes only
    stores = [ProfileStore(url) for _ in range(writers)]
    scans = [s.start_scan([f"writer-{i}"]) for i, s in enumerate(stores)]
    barrier = threading.Barrier(writers + 1)

    def write(i: int) -> None:
        barrier.wait()
        for n in range(per_writer):
            stores[i].mark_host_done(scans[i], f"10.{i}.{n // 256}.{n % 256}")

    threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
    for t in threads:
        t.start()
    barrier.wait()
    started = time.monotonic()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    for s in stores:
        s.close()
    return writers * per_writer / elapsed


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with LocalPostgres() as pg, LocalRedis() as redis:
        if args.store_rate:
            for writers in (1, 4, 16):
                url = pg.create_database(f"rate{writers}")
                rate = store_write_rate(url, writers=writers, per_writer=args.store_rate // writers)
                print(f"store write rate, PostgreSQL, {writers} writer(s): {rate:.0f} transactions/s")
            with tempfile.TemporaryDirectory() as tmp:
                rate = store_write_rate(str(Path(tmp) / "fp.db"), writers=4, per_writer=args.store_rate // 4)
                print(f"store write rate, SQLite file, 4 writer(s): {rate:.0f} transactions/s")
        rows.append(await run_in_process(args.prefix))
        for run, agents in enumerate(args.agents):
            rows.append(await run_distributed(agents, pg=pg, redis=redis, prefix=args.prefix, run=run))
    base = rows[0]["wall_s"]
    for row in rows:
        row["vs_in_process"] = row["wall_s"] / base
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--prefix", default="127.180", help="sites on PREFIX.0.0/24 .. PREFIX.3.0/24")
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--store-rate",
        type=int,
        default=2000,
        metavar="N",
        help="first measure the store's write rate with N transactions (0: skip)",
    )
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    rows = anyio.run(main_async, args)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    addresses = SITES * 254
    print(
        f"{SITES} sites x /24 hospital fleet ({addresses} addresses, {rows[0]['devices']} devices), "
        "default discovery parameters"
    )
    print(
        "| mode | agent processes | wall s | vs in-process | scanner CPU s | broker+db CPU s | hosts found "
        "| alerts | jobs | hosts in 2 jobs | devices hung | max sessions on a device | lowest device ceiling "
        "| devices above ceiling |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['mode']} | {r['processes']} | {r['wall_s']:.1f} | {r['vs_in_process']:.2f}x | "
            f"{r['scan_cpu_s']:.1f} | {r['server_cpu_s']:.1f} | {r['hosts_found']} | {r['alerts']} | "
            f"{r['jobs']} | {r['hosts_in_two_jobs']} | {r['hung']} | {r['peak_sessions']} | "
            f"{r['lowest_ceiling']} | {r['above_ceiling']} |"
        )


if __name__ == "__main__":
    main()
