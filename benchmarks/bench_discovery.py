"""Discovery benchmark: fragileprobe's discover() against nmap on the emulated hospital fleet, in one run.

Loopback only: the fleet is ``hospital_fleet()`` on 127.201.0.0/24 (254 addresses, a medical and a general
half), served by this process. nmap (Debian's package, /usr/bin/nmap) runs as a subprocess against it.

Part 1, default settings, the whole fleet and every port the fleet's models use:
    nmap -sT (default timing and -T4) vs fragileprobe's defaults.
Part 1b, nmap -sT -sV (default and -T4, --host-timeout 60s) vs fragileprobe's defaults on one device of each
    model: -sV waits out its probes on silent and hung services, minutes per host, too long for the fleet.
    Columns: wall time, hosts found (an open port), services found (open ports), emulated devices hung.
    Hung devices are power-cycled between runs.
Part 2, equal per-host gentleness (one session at a time, the same connects/s per host), on a subset so it
stays bounded: nmap -T2 (0.4 s between probes) vs fragileprobe with per_host_sessions=1 and
rate_per_host=2.5; and nmap --scan-delay 100ms --max-parallelism 1 vs fragileprobe at 10 connects/s/host.
Measured here: nmap 7.93 applies the scan delay per host and works the hosts of a host group in parallel, so
on a many-host scan its gentle modes are not serial (for one host with many ports both tools are).

Run: ``/work/venv/bin/python benchmarks/bench_discovery.py [--quick]`` (``--quick`` shrinks part 2).
Numbers are noisy on a shared 2-core machine: compare the ratios measured side by side in one run.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any

import anyio
import structlog

from fragileprobe._discovery_run import discover
from fragileprobe._groups import Zone, Zones
from fragileprobe._scope import Scope
from fragileprobe.emulator import MODELS, DeviceState, Fleet
from fragileprobe.emulator._fleet import hospital_fleet

PREFIX = "127.201.0"
NMAP = shutil.which("nmap") or "/usr/bin/nmap"
# Every port any model of the fleet listens on: what a scan of this network has to look at.
FLEET_PORTS = tuple(sorted({p for m in MODELS.values() for p in m.services}))
# Part 2 port list: the pump stack (nmap -T2 is 0.4 s per probe, serial over the whole scan).
GENTLE_PORTS = (21, 22, 23, 8080)
# nmap runs are bounded: a hung device makes -sV wait out its probe timeouts, never forever.
NMAP_TIMEOUT_S = 900
# nmap -sV against a hung device waits out every probe on each of its ports (over 6 minutes for a hung
# 14-service monitor in a trial run); past this per-host bound nmap drops the host and says so.
SV_HOST_TIMEOUT_S = 60


@dataclass
class Row:
    name: str
    wall_s: float
    hosts: int
    services: int
    hung: int
    note: str = ""


def parse_nmap_xml(xml: str) -> tuple[int, int, int]:
    """(hosts with an open port, open ports, hosts nmap gave up on) from ``nmap -oX -`` output."""
    root = ET.fromstring(xml)
    hosts = services = timed_out = 0
    for host in root.iter("host"):
        if host.get("timedout") == "true":
            timed_out += 1
        open_ports = [
            p
            for p in host.iter("port")
            if p.find("state") is not None and p.find("state").get("state") == "open"
        ]  # type: ignore[union-attr]
        if open_ports:
            hosts += 1
            services += len(open_ports)
    return hosts, services, timed_out


async def run_nmap(
    args: list[str], targets: list[str], ports: tuple[int, ...]
) -> tuple[float, int, int, str]:
    cmd = [NMAP, *args, "-Pn", "-n", "-p", ",".join(map(str, ports)), "-oX", "-", *targets]
    start = time.monotonic()
    with anyio.fail_after(NMAP_TIMEOUT_S):
        proc = await anyio.run_process(cmd, check=False)
    wall = time.monotonic() - start
    if proc.returncode != 0:
        raise RuntimeError(f"nmap failed: {proc.stderr.decode()[:400]}")
    hosts, services, timed_out = parse_nmap_xml(proc.stdout.decode())
    return wall, hosts, services, f"{timed_out} host(s) hit --host-timeout, results lost" if timed_out else ""


def crashes(fleet: Fleet) -> dict[str, int]:
    return {h: d.stats.crashes for h, d in fleet.devices.items()}


async def recover(fleet: Fleet) -> None:
    """Power-cycle every device that is not up, so each run starts from a healthy fleet."""
    for device in fleet.devices.values():
        if device.state is not DeviceState.UP:
            await device.power_cycle(boot_delay_s=0.05)


async def measured(fleet: Fleet, name: str, coro: Any, note: str = "") -> Row:
    await recover(fleet)
    await anyio.sleep(0.5)  # let sessions of the previous run close
    before = crashes(fleet)
    wall, hosts, services, extra = await coro
    await anyio.sleep(0.5)
    after = crashes(fleet)
    hung = sum(1 for h in after if after[h] > before[h])
    return Row(name, wall, hosts, services, hung, "; ".join(x for x in (note, extra) if x))


async def run_fp(
    targets: list[str], zones: Zones, ports: tuple[int, ...], **kw: Any
) -> tuple[float, int, int, str]:
    start = time.monotonic()
    report = await discover(targets, scope=Scope([f"{PREFIX}.0/24"]), ports=ports, zones=zones, seed=1, **kw)
    wall = time.monotonic() - start
    return wall, len(report.assets), sum(len(a.open_ports) for a in report.assets), ""


def table(rows: list[Row], title: str) -> str:
    out = [
        f"### {title}",
        "",
        "| run | wall time (s) | hosts found | services found | devices hung | note |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        out.append(f"| {r.name} | {r.wall_s:.2f} | {r.hosts} | {r.services} | {r.hung} | {r.note} |")
    return "\n".join(out)


async def main(quick: bool) -> str:
    config = hospital_fleet(PREFIX, seed=11, boot_delay_s=0.05)
    zones = Zones([Zone(n, tuple(r), kind=n) for n, r in config.zones.items()])
    targets = list(config.hosts)
    devices = [d.host for d in config.devices]
    out: list[str] = []
    async with Fleet(config, control_port=None) as fleet:
        rows = [
            await measured(fleet, "nmap -sT", run_nmap(["-sT"], targets, FLEET_PORTS)),
            await measured(fleet, "nmap -sT -T4", run_nmap(["-sT", "-T4"], targets, FLEET_PORTS)),
            await measured(
                fleet,
                "fragileprobe defaults",
                run_fp(targets, zones, FLEET_PORTS),
                "1 session/host, 10 connects/s/host, 64 hosts at once, banners + GET /",
            ),
        ]
        out.append(
            table(
                rows,
                f"Part 1: whole fleet ({len(targets)} addresses, {len(devices)} devices, "
                f"{len(FLEET_PORTS)} ports)",
            )
        )

        # -sV waits out every probe on silent and on hung services (a hung monitor's 14 ports stall each
        # probe), which takes minutes per host: one device of each model, and a host timeout.
        one_each = [
            next(d.host for d in config.devices if d.model == m)
            for m in MODELS
            if any(d.model == m for d in config.devices)
        ]
        sv = ["--host-timeout", f"{SV_HOST_TIMEOUT_S}s"]
        rows_sv = [
            await measured(fleet, "nmap -sT -sV", run_nmap(["-sT", "-sV", *sv], one_each, FLEET_PORTS)),
            await measured(
                fleet, "nmap -sT -sV -T4", run_nmap(["-sT", "-sV", "-T4", *sv], one_each, FLEET_PORTS)
            ),
            await measured(fleet, "fragileprobe defaults", run_fp(one_each, zones, FLEET_PORTS)),
        ]
        out.append(
            table(
                rows_sv,
                f"Part 1b: version detection, one device of each model ({len(one_each)} "
                f"hosts, {len(FLEET_PORTS)} ports; nmap --host-timeout {SV_HOST_TIMEOUT_S}s)",
            )
        )

        n_gentle = 8 if quick else 16
        subset = devices[:n_gentle]
        probes = len(subset) * len(GENTLE_PORTS)
        gentle = [
            await measured(
                fleet,
                "nmap -sT -T2",
                run_nmap(["-sT", "-T2"], subset, GENTLE_PORTS),
                f"0.4 s between probes to a host: {probes} probes",
            ),
            await measured(
                fleet,
                "fragileprobe 1 session, 2.5 connects/s per host",
                run_fp(subset, zones, GENTLE_PORTS, per_host_sessions=1, rate_per_host=2.5),
                "same per-host gentleness as -T2",
            ),
        ]
        n_delay = 32 if quick else 64
        subset2 = devices[:n_delay]
        probes2 = len(subset2) * len(GENTLE_PORTS)
        gentle += [
            await measured(
                fleet,
                "nmap -sT --scan-delay 100ms --max-parallelism 1",
                run_nmap(["-sT", "--scan-delay", "100ms", "--max-parallelism", "1"], subset2, GENTLE_PORTS),
                f"100 ms between probes to a host: {probes2} probes",
            ),
            await measured(
                fleet,
                "fragileprobe 1 session, 10 connects/s per host",
                run_fp(subset2, zones, GENTLE_PORTS, per_host_sessions=1, rate_per_host=10.0),
                "same per-host gentleness",
            ),
        ]
        gentle += [
            await measured(
                fleet,
                "nmap -sT --max-hostgroup 1 --max-parallelism 1",
                run_nmap(["-sT", "--max-hostgroup", "1", "--max-parallelism", "1"], subset2, GENTLE_PORTS),
                "1 session per host without a delay: only by scanning one host at a time",
            ),
            await measured(
                fleet,
                "fragileprobe 1 session per host, no rate cap",
                run_fp(subset2, zones, GENTLE_PORTS, per_host_sessions=1, rate_per_host=1000.0),
                "64 hosts at once; also reads banners (telnet prompt: waits banner_timeout_s)",
            ),
        ]
        out.append(
            table(
                gentle,
                f"Part 2: equal per-host gentleness ({len(subset)} and {len(subset2)} devices, "
                f"ports {','.join(map(str, GENTLE_PORTS))})",
            )
        )
        r1 = gentle[0].wall_s / gentle[1].wall_s
        r2 = gentle[2].wall_s / gentle[3].wall_s
        r3 = gentle[4].wall_s / gentle[5].wall_s
        out.append("")
        out.append(
            f"Wall-time ratio nmap/fragileprobe at equal per-host gentleness: {r1:.1f}x (-T2 vs 2.5/s, "
            f"{len(subset)} hosts), {r2:.1f}x (--scan-delay 100ms vs 10/s, {len(subset2)} hosts), "
            f"{r3:.1f}x (one session per host, no delay, {len(subset2)} hosts)."
        )
    return "\n\n".join(out)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller subsets in part 2")
    ns = parser.parse_args()
    # A script may configure logging (the library never does): keep the per-probe debug events quiet.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    try:
        subprocess.run([NMAP, "--version"], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        print("nmap is not installed; nothing to compare against", file=sys.stderr)
        sys.exit(2)
    print(anyio.run(main, ns.quick))
