"""Network benchmark: discovery where most addresses never answer, fragileprobe beside nmap 7.93.

The bed (``tests/_support/netbed.py``) is a pair of private network namespaces (no route out), a scanner
one routed hop from a /20 (10.90.0.0/20): about 1.5 % are live hosts served by the emulated fleet (8 syringe pumps that hang at 3-5
sessions, 4 infusion pumps behind a firewall that drops SYNs to closed ports, a few slow hosts, a few
filtered ports); every other address drops everything sent to it. Scanners run inside the scanner
namespace (``ip netns exec``); an nftables counter on the device side counts the SYNs that enter the block. The fleet is restarted
before each run, so "hung" and "peak sessions per host" belong to that run alone.

Runs, all with the same TCP ports (21,22,23,80,443,8080):

* nmap -sT -n (its host discovery: ICMP echo, SYN 443, ACK 80, ICMP timestamp), default timing, -T4 and
  -T5 ("insane": nmap's own docs say it trades accuracy for speed on very fast networks);
* nmap -sT -n --scan-delay 100ms (nmap's nearest to fragileprobe's per-host gentleness);
* fragileprobe discover at its defaults (liveness shortcut, adaptive timeouts, global rate 1,000/s);
* fragileprobe with ``liveness_ports=0`` (every port of every address: what the shortcut saves);
* the slope: fragileprobe at its defaults on a /22, a /21 and the /20 (and a /16 with ``--large``).

Columns: wall time; live hosts found (hosts with an open port among the scanned ones) and services (open
ports) found, against the ground truth; fragile devices hung; SYNs sent into the block; the most sessions
any one device held at once.

Run (root: it builds a network namespace): ``.venv/bin/python benchmarks/bench_network.py [--quick]
[--large]``. ``--quick`` skips the no-shortcut run and nmap -T4/-T5. Numbers are noisy on a shared 2-core
machine: compare the ratios measured side by side in one run.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests._support.netbed import LiveHost, NetBed, hospital_block, netbed_available  # noqa: E402

PORTS = (21, 22, 23, 80, 443, 8080)
PORT_SPEC = ",".join(map(str, PORTS))
BLOCK = "10.90.0.0/20"
LARGE_BLOCK = "10.91.0.0/16"
NMAP = "/usr/bin/nmap"
# Every run is bounded: nmap's slowest mode here takes under a minute on the /20; a /16 at 1,000 SYNs/s
# takes about 2.5 minutes.
RUN_TIMEOUT_S = 900.0
SCAN = str(ROOT / "tests" / "_support" / "netscan.py")


@dataclass
class Row:
    name: str
    addresses: int
    wall_s: float
    hosts: int
    hosts_truth: int
    services: int
    services_truth: int
    hung: int
    fragile: int
    syns: int
    peak_sessions: int
    note: str = ""


def truth_of(bed: NetBed, block: str) -> tuple[dict[str, set[int]], set[str]]:
    """Ground truth inside ``block``: live host -> its open scanned ports; the fragile hosts."""
    net = ipaddress.ip_network(block)
    live: dict[str, set[int]] = {}
    fragile: set[str] = set()
    for h in bed.live:
        if ipaddress.ip_address(h.host) not in net:
            continue
        ports = set(h.open_ports) & set(PORTS)
        if ports:
            live[h.host] = ports
        if h.fragile:
            fragile.add(h.host)
    return live, fragile


def score(
    bed: NetBed, block: str, name: str, found: dict[str, set[int]], wall_s: float, note: str = ""
) -> Row:
    live, fragile = truth_of(bed, block)
    stats = bed.device_stats()
    hung = sum(1 for h in fragile if stats[h]["crashes"] > 0)
    peak = max(
        (
            s["peak_sessions"]
            for h, s in stats.items()
            if ipaddress.ip_address(h) in ipaddress.ip_network(block)
        ),
        default=0,
    )
    return Row(
        name=name,
        addresses=ipaddress.ip_network(block).num_addresses,
        wall_s=wall_s,
        hosts=sum(1 for h in live if found.get(h)),
        hosts_truth=len(live),
        services=sum(len(found.get(h, set()) & ports) for h, ports in live.items()),
        services_truth=sum(len(p) for p in live.values()),
        hung=hung,
        fragile=len(fragile),
        syns=bed.syns(),
        peak_sessions=peak,
        note=note,
    )


def run_nmap(bed: NetBed, block: str, name: str, *extra: str) -> Row:
    bed.restart_fleet()
    bed.reset_counters()
    started = time.monotonic()
    proc = bed.run(NMAP, "-sT", "-n", "-p", PORT_SPEC, "-oX", "-", *extra, block, timeout_s=RUN_TIMEOUT_S)
    wall = time.monotonic() - started
    if proc.returncode != 0:
        raise RuntimeError(f"nmap failed: {proc.stderr[-1000:]}")
    found: dict[str, set[int]] = {}
    for host in ET.fromstring(proc.stdout).iter("host"):
        addr = host.find("address")
        ports = {
            int(p.get("portid", "0"))
            for p in host.iter("port")
            if (st := p.find("state")) is not None and st.get("state") == "open"
        }
        if addr is not None and ports:
            found[addr.get("addr", "")] = ports
    return score(bed, block, name, found, wall)


def run_fragileprobe(
    bed: NetBed, blocks: list[str], block: str, name: str, **params: Any
) -> tuple[Row, dict[str, Any]]:
    bed.restart_fleet()
    bed.reset_counters()
    params = {"ports": PORT_SPEC, **params}
    started = time.monotonic()
    proc = bed.run(sys.executable, SCAN, *blocks, "--params", json.dumps(params), timeout_s=RUN_TIMEOUT_S)
    wall = time.monotonic() - started
    if proc.returncode != 0:
        raise RuntimeError(f"fragileprobe failed: {proc.stderr[-2000:]}")
    out = json.loads(proc.stdout)
    found = {h: set(p) for h, p in out["assets"].items()}
    note = (
        f"{out['max_hosts_in_parallel']} hosts at once, {out['probes_sent']} probes, "
        f"{len(out['unresponsive'])} left alone"
    )
    return score(bed, block, name, found, wall, note), out


def table(rows: list[Row]) -> str:
    lines = [
        "| run | addresses | wall time | live hosts found | services found | fragile hung | SYNs sent "
        "| peak sessions/host | note |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.name} | {r.addresses} | {r.wall_s:.1f} s | {r.hosts}/{r.hosts_truth} | "
            f"{r.services}/{r.services_truth} | {r.hung}/{r.fragile} | {r.syns} | {r.peak_sessions} | "
            f"{r.note} |"
        )
    return "\n".join(lines)


def slope(points: list[tuple[int, float]]) -> tuple[float, float]:
    """Least-squares (seconds per 1,000 addresses, intercept s) of wall time against address count."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    b = sum((x - mx) * (y - my) for x, y in points) / sxx
    return b * 1000, my - b * mx


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="skip the no-shortcut run and nmap -T4/-T5")
    parser.add_argument("--large", action="store_true", help="also a /16 (about 2.5 minutes of SYNs)")
    args = parser.parse_args()
    why = netbed_available()
    if why is not None:
        print(f"skipped: {why}")
        return 0
    rows: list[Row] = []
    live = hospital_block(BLOCK)
    with NetBed(block=BLOCK, live=live) as bed:
        for note in bed.notes:
            print(f"note: {note}")
        truth, fragile = truth_of(bed, BLOCK)
        print(
            f"bed {bed.name}: {BLOCK}, {len(live)} live hosts ({len(truth)} with a scanned port open, "
            f"{sum(len(p) for p in truth.values())} services), {len(fragile)} fragile, "
            f"{sum(h.firewalled for h in live)} firewalled, {sum(bool(h.delay_ms) for h in live)} slow",
            flush=True,
        )
        rows.append(run_nmap(bed, BLOCK, "nmap -sT -n (host discovery)"))
        print(table(rows[-1:]), flush=True)
        if not args.quick:
            rows.append(run_nmap(bed, BLOCK, "nmap -sT -n -T4 (host discovery)", "-T4"))
            print(table(rows[-1:]), flush=True)
            rows.append(run_nmap(bed, BLOCK, "nmap -sT -n -T5 (host discovery)", "-T5"))
            print(table(rows[-1:]), flush=True)
        rows.append(run_nmap(bed, BLOCK, "nmap -sT -n --scan-delay 100ms", "--scan-delay", "100ms"))
        print(table(rows[-1:]), flush=True)
        fp, out = run_fragileprobe(bed, [BLOCK], BLOCK, "**fragileprobe discover, defaults**")
        rows.append(fp)
        print(table(rows[-1:]), flush=True)
        print("progress:", json.dumps(out["progress"]), flush=True)
        if not args.quick:
            row, _ = run_fragileprobe(
                bed, [BLOCK], BLOCK, "fragileprobe, liveness_ports=0 (no shortcut)", liveness_ports=0
            )
            rows.append(row)
            print(table(rows[-1:]), flush=True)
        sizes: list[tuple[int, float]] = []
        for sub in ("10.90.0.0/22", "10.90.0.0/21"):
            row, _ = run_fragileprobe(bed, [sub], sub, f"fragileprobe defaults, {sub}")
            rows.append(row)
            sizes.append((row.addresses, row.wall_s))
            print(table(rows[-1:]), flush=True)
        sizes.append((fp.addresses, fp.wall_s))
    if args.large:
        large_live = hospital_block(LARGE_BLOCK, live_fraction=0.0015, seed=16)
        with NetBed(block=LARGE_BLOCK, live=large_live) as bed:
            subnets = [str(n) for n in ipaddress.ip_network(LARGE_BLOCK).subnets(new_prefix=20)]
            row, _ = run_fragileprobe(bed, subnets, LARGE_BLOCK, f"fragileprobe defaults, {LARGE_BLOCK}")
            rows.append(row)
            sizes.append((row.addresses, row.wall_s))
            print(table(rows[-1:]), flush=True)
    print()
    print(table(rows))
    per_k, intercept = slope(sizes)
    print(
        f"\nslope: {per_k:.2f} s per 1,000 addresses (intercept {intercept:.1f} s) from "
        + ", ".join(f"{n} -> {t:.1f} s" for n, t in sizes)
    )
    for r in rows:
        if r.name.startswith("nmap") and r.addresses == fp.addresses:
            print(
                f"fragileprobe defaults vs {r.name}: {r.wall_s / fp.wall_s:.1f}x faster, "
                f"{fp.hosts - r.hosts} more live hosts found, {fp.hung} vs {r.hung} hung"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["LiveHost", "main"]
