"""Export benchmark: the exported nmap line against the line the export printed before, on one emulated group.

Loopback only: a group of 33 emulated infusion pumps (the story's model: it hangs at 7-9 sessions, stored
ceiling 5), served by this process; nmap (Debian's 7.93, /usr/bin/nmap) runs as a subprocess. Each run gets a
fresh fleet, so the devices' counters are that run's alone.

Runs, side by side:
    exported     the line fragileprobe.export writes now: --max-parallelism 5 (global for a connect scan, so
                 every device too), --scan-delay 100ms per host, one host group of 33, --host-timeout
    previous     the line it wrote before: --max-hostgroup 1 --max-parallelism 5 --max-rate 10 (one pump
                 after the other)
    nmap -sT     nmap's defaults, for reference
Port sets: the pump's 4 services, and 20 ports (those 4 and 16 closed ones: the scanner does not know which
are open). Columns: wall time, ports found open (of devices x open services), devices hung, the peak
sessions any device held (the emulator counts every session from accept to close).

Run: ``python benchmarks/bench_export.py [--quick] [--json]`` (``--quick``: the 4-port set only).
Numbers are noisy on a shared 2-core machine: compare the ratios measured side by side in one run.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import sys
import time
from dataclasses import asdict, dataclass

import anyio
import structlog

from fragileprobe import export
from fragileprobe.emulator import Fleet

PREFIX = "127.203.0"
PUMPS = 33
CEILING = 5  # the story pump's stored ceiling (it hangs at 7, 8 or 9)
NMAP = shutil.which("nmap") or "/usr/bin/nmap"
PUMP_PORTS = (21, 22, 23, 8080)
# 16 ports nothing listens on, as a scan of the group's usual port list would also probe.
CLOSED_PORTS = tuple(range(30001, 30017))
# Every nmap run is bounded in time: the previous line's serial scan of 33 pumps is the longest.
NMAP_TIMEOUT_S = 900
# The line fragileprobe.export printed before this change, for a ceiling of 5 (kept here verbatim).
PREVIOUS_LINE = (
    "-sT",
    "-Pn",
    "--max-hostgroup",
    "1",
    "--max-parallelism",
    str(CEILING),
    "--max-retries",
    "1",
    "--max-rate",
    "10",
    "--host-timeout",
    "30m",
    "--exclude-ports",
    "9100-9107",
)


@dataclass
class Row:
    run: str
    ports: int
    wall_s: float
    open_found: int
    open_expected: int
    hung: int
    peak_sessions: int


@dataclass(frozen=True)
class _Asset:
    host: str
    groups: tuple[str, ...]
    model_key: str


@dataclass(frozen=True)
class _Profile:
    model_key: str
    ceiling: int


def exported_line(hosts: list[str]) -> tuple[str, ...]:
    """The exported nmap arguments for the group, through the same path as ``profiles export``."""
    key = "goahead-webs-aa388f080437"
    plan = export.plan_exports([_Asset(h, (key,), key) for h in hosts], [_Profile(key, CEILING)])
    group = plan.group(key)
    return export.nmap_args(group.settings, hosts=len(group.hosts)).args


async def one_run(name: str, args: tuple[str, ...], ports: tuple[int, ...]) -> Row:
    hosts = [f"{PREFIX}.{i}" for i in range(1, PUMPS + 1)]
    config = {
        "device": [
            {"host": h, "model": "infusion-pump", "seed": i, "boot_delay_s": 0.05}
            for i, h in enumerate(hosts)
        ]
    }
    async with Fleet(config, control_port=None) as fleet:
        devices = list(fleet.devices.values())
        # model port -> bound port (without root, ports below 1024 are served at +10000)
        bound = [devices[0].ports.get(p, p) for p in ports]
        start = time.monotonic()
        with anyio.fail_after(NMAP_TIMEOUT_S):
            proc = await anyio.run_process(
                [NMAP, *args, "-n", "-p", ",".join(map(str, bound)), "-oG", "-", *hosts], check=False
            )
        wall = time.monotonic() - start
        if proc.returncode != 0:
            raise RuntimeError(f"nmap failed: {proc.stderr.decode()[-400:]}")
        await anyio.sleep(0.3)  # the devices see the last resets
        found = len(re.findall(r"/open/", proc.stdout.decode()))
        expected = sum(len(set(ports) & set(d.ports)) for d in devices)
        return Row(
            name,
            len(ports),
            wall,
            found,
            expected,
            sum(1 for d in devices if d.stats.crashes),
            max(d.stats.peak_sessions for d in devices),
        )


async def main(quick: bool) -> list[Row]:
    hosts = [f"{PREFIX}.{i}" for i in range(1, PUMPS + 1)]
    new = exported_line(hosts)
    rows: list[Row] = []
    port_sets = [PUMP_PORTS] if quick else [PUMP_PORTS, PUMP_PORTS + CLOSED_PORTS]
    for ports in port_sets:
        rows.append(await one_run("exported", new, ports))
        rows.append(await one_run("previous (--max-hostgroup 1)", PREVIOUS_LINE, ports))
        rows.append(await one_run("nmap -sT (defaults)", ("-sT", "-Pn"), ports))
    return rows


def table(rows: list[Row], new: tuple[str, ...]) -> str:
    out = [
        f"{PUMPS} emulated infusion pumps (hang at 7-9 sessions), stored ceiling {CEILING}; nmap 7.93 -sT",
        "",
        f"exported: nmap {' '.join(new)}",
        f"previous: nmap {' '.join(PREVIOUS_LINE)}",
        "",
        "| run | ports | wall time (s) | open ports found | devices hung | peak sessions on a device |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        out.append(
            f"| {r.run} | {r.ports} | {r.wall_s:.2f} | {r.open_found}/{r.open_expected} | {r.hung} | "
            f"{r.peak_sessions} |"
        )
    for ports in sorted({r.ports for r in rows}):
        by = {r.run: r for r in rows if r.ports == ports}
        ratio = by["previous (--max-hostgroup 1)"].wall_s / by["exported"].wall_s
        out.append(f"\n{ports} ports: the previous line took {ratio:.1f}x the exported line's wall time")
    return "\n".join(out)


def run() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only the 4-port set")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ns = parser.parse_args()
    if shutil.which(NMAP) is None:
        print("nmap is not installed; nothing to compare", file=sys.stderr)
        return 1
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    rows = anyio.run(main, ns.quick)
    new = exported_line([f"{PREFIX}.{i}" for i in range(1, PUMPS + 1)])
    if ns.json:
        print(
            json.dumps(
                {
                    "exported_args": list(new),
                    "previous_args": list(PREVIOUS_LINE),
                    "rows": [asdict(r) for r in rows],
                },
                indent=2,
            )
        )
    else:
        print(table(rows, new))
    return 0


if __name__ == "__main__":
    sys.exit(run())
