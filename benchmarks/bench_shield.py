"""Shield benchmark: nmap alone vs nmap behind ``fragileprobe shield --exec``, relay cost, a trip, in one run.

Run:  python benchmarks/bench_shield.py [--quick]

Part 1: the emulated hospital fleet (``hospital_fleet``: 126 devices on 254 addresses, served by this
process; its patient monitors set to hang at their second concurrent session, see FRAGILE_THRESHOLD)
scanned by Debian's nmap (-sT, default timing; every port any model listens on), alone and through
the shield (a ``fragileprobe shield --exec`` child process, proxychains-ng). The shield reads an inventory
written from the fleet's ground truth into a fresh store, the way discovery leaves it: medical devices in
"Medical Device?" (given --medical-ceiling 1, what their stored ceiling would be: they die at 2), the rest at
the default ceiling of 4 (the same settings as the run docs/shield.md quotes).
Part 1b: nmap -sT -sV on one device of each model (--host-timeout 60s, as bench_discovery.py), alone, through
the shield with the same command, and with the command line docs/shield.md recommends.
Part 2: relay throughput on a sturdy host (a bulk sender in a child process): direct vs through the shield
(a child process), 3 alternating runs, median; and connect rate (connect, SOCKS handshake, close).
Part 3: a device tripped by the shield: sessions held through the shield, the device hangs, the watchdog trips
it; then clients keep asking for CONNECTs for 3 s. Counted on the device: connections after the trip.

Every socket is on 127.0.0.0/8; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import os
import re
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from fragileprobe import HttpHeartbeat, Scope, Shield
from fragileprobe._store import ProfileStore
from fragileprobe.emulator import MODELS, DeviceState, EmulatedPump, Fleet, hospital_fleet

PREFIX = "127.202.0"
STURDY = "127.202.1.10"
NMAP = shutil.which("nmap") or "/usr/bin/nmap"
FLEET_PORTS = tuple(sorted({p for m in MODELS.values() for p in m.services}))
NMAP_TIMEOUT_S = 900
SV_HOST_TIMEOUT_S = 60
BULK_BYTES = 128 << 20
CONNECTS = 300
FP = [sys.executable, "-c", "from fragileprobe.cli import main; main()"]


@dataclass
class Row:
    name: str
    wall_s: float
    hosts: int
    services: int
    hung: int
    note: str = ""
    open_ports: frozenset[tuple[str, int]] = frozenset()
    versions: frozenset[tuple[str, int, str]] = frozenset()  # (host, port, SERVICE VERSION) identified
    compared: str = ""


@dataclass(frozen=True)
class Scan:
    hosts: int
    open_ports: frozenset[tuple[str, int]]
    versions: frozenset[tuple[str, int, str]]
    timed_out: int


def parse_nmap(text: str) -> Scan:
    """Open ports, identified services and hosts that hit --host-timeout, from nmap's normal output."""
    timed_out = len(re.findall(r"Skipping host .* due to host timeout", text))
    ports: set[tuple[str, int]] = set()
    versions: set[tuple[str, int, str]] = set()
    for block in text.split("Nmap scan report for ")[1:]:
        host = block.split()[0]
        for port, rest in re.findall(r"^(\d+)/tcp\s+open\s+(.*)$", block, re.M):
            ports.add((host, int(port)))
            if rest.strip() and not rest.strip().endswith("?") and " " in rest.strip():
                versions.add((host, int(port), " ".join(rest.split())))
    return Scan(len({h for h, _ in ports}), frozenset(ports), frozenset(versions), timed_out)


def compare(alone: Row, shielded: Row) -> str:
    """What the shielded scan found differently from nmap alone (printer ports are refused by design)."""

    def without_printers(ports: frozenset[tuple[str, int]]) -> set[tuple[str, int]]:
        return {(h, p) for h, p in ports if p not in range(9100, 9108)}

    missing = without_printers(alone.open_ports) - without_printers(shielded.open_ports)
    extra = without_printers(shielded.open_ports) - without_printers(alone.open_ports)
    parts = [f"open ports (9100-9107 aside): {'same' if not missing and not extra else 'DIFFERENT'}"]
    if missing:
        parts.append(f"{len(missing)} missed: {sorted(missing)[:6]}")
    if extra:
        parts.append(f"{len(extra)} more than alone (on devices nmap alone hung)")
    if alone.versions or shielded.versions:
        lost = alone.versions - shielded.versions
        parts.append(
            f"services identified: {len(shielded.versions)} vs {len(alone.versions)} alone, "
            f"{len(lost)} of those lost"
        )
    return "; ".join(parts)


async def run(cmd: list[str]) -> tuple[float, str, str]:
    start = time.monotonic()
    with anyio.fail_after(NMAP_TIMEOUT_S):
        proc = await anyio.run_process(cmd, check=False)
    wall = time.monotonic() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:6]} failed: {proc.stderr.decode()[-600:]}")
    return wall, proc.stdout.decode(), proc.stderr.decode()


def nmap_cmd(args: list[str], targets: list[str]) -> list[str]:
    return [NMAP, *args, "-Pn", "-n", "-p", ",".join(map(str, FLEET_PORTS)), *targets]


def shield_cmd(store: Path, extra: list[str], command: list[str]) -> list[str]:
    return [
        *FP,
        "shield",
        "--scope",
        f"{PREFIX}.0/24",
        "--store",
        str(store),
        # The monitors here die at their 2nd session, so 1 is what their stored ceiling would be; the
        # shield's default for an unknown medical device (2: one relayed beside the heartbeat) would hang
        # them. At 1 the shield relays one session and runs no heartbeat (docs/shield.md).
        "--medical-ceiling",
        str(MEDICAL_CEILING_HERE),
        *extra,
        "--exec",
        "--",
        *command,
    ]


async def recover(fleet: Fleet) -> None:
    for device in fleet.devices.values():
        if device.state is not DeviceState.UP:
            await device.power_cycle(boot_delay_s=0.05)


async def measured(fleet: Fleet, name: str, cmd: list[str], note: str = "", store: Path | None = None) -> Row:
    started = time.time()
    await recover(fleet)
    await anyio.sleep(0.5)
    before = {h: d.stats.crashes for h, d in fleet.devices.items()}
    wall, out, err = await run(cmd)
    await anyio.sleep(0.5)
    hung = sum(1 for h, d in fleet.devices.items() if d.stats.crashes > before[h])
    scan = parse_nmap(out)
    print(
        f"# {name}: {wall:.2f} s, {scan.hosts} hosts, {len(scan.open_ports)} open ports, {hung} hung",
        file=sys.stderr,
        flush=True,
    )
    extra = f"{scan.timed_out} host(s) hit --host-timeout" if scan.timed_out else ""
    summary = re.search(r"shield: .*", err)
    outcomes = ""
    if store is not None:
        with ProfileStore(store) as db:
            rows = [r for r in db.shield_sessions() if r["started_at_s"] >= started]
        counts: dict[str, int] = {}
        for r in rows:
            counts[r["outcome"]] = counts.get(r["outcome"], 0) + 1
        outcomes = "outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    notes = "; ".join(x for x in (note, extra, summary.group(0) if summary else "", outcomes) if x)
    return Row(name, wall, scan.hosts, len(scan.open_ports), hung, notes, scan.open_ports, scan.versions)


def table(rows: list[Row], title: str) -> str:
    out = [
        f"### {title}",
        "",
        "| run | wall time (s) | hosts found | open ports found | services identified "
        "| devices hung | compared with nmap alone | note |",
        "|---|---:|---:|---:|---:|---:|---|---|",
    ]
    out += [
        f"| {r.name} | {r.wall_s:.2f} | {r.hosts} | {r.services} | {len(r.versions)} | {r.hung} | "
        f"{r.compared} | {r.note} |"
        for r in rows
    ]
    return "\n".join(out)


def write_inventory(store_path: Path, config: Any, fleet: Fleet) -> None:
    """What discovery would have left in the store: model keys, groups, web ports (from ground truth)."""
    with ProfileStore(store_path) as store:
        for host, device in fleet.devices.items():
            truth = config.ground_truth[host]
            web = device.model.web_port
            services = [{"port": device.port(web), "service": "http"}] if web else []
            groups = ["Medical Device?"] if truth.category == "medical" else [f"safe to scan ({truth.zone})"]
            store.upsert_asset(
                host,
                scan_id=None,
                seen_at_s=time.time(),
                zone=truth.zone,
                model_key=f"{truth.model}-{hashlib.sha256(truth.model.encode()).hexdigest()[:12]}",
                open_ports=device.ports.values(),
                services=services,
                groups=groups,
            )


# The fleet's fragile setting for this benchmark: a patient monitor that hangs at its second concurrent
# session. With its default threshold (5-7) a plain nmap -sT never hangs one on loopback (nmap holds 2-3
# sessions to a host at once there); at 2 it does, which is the case the shield exists for. A configuration
# of the emulated fleet, not of the shield; the shield is told the matching ceiling, 1 (see shield_cmd).
FRAGILE_MODEL = "patient-monitor"
FRAGILE_THRESHOLD = 2
MEDICAL_CEILING_HERE = FRAGILE_THRESHOLD - 1
# What docs/shield.md recommends for nmap -sV behind the shield: one probe at a time (the service scan's
# parallelism follows --max-parallelism), so nmap never waits inside connect() for a slot it holds itself.
# --max-parallelism is global to a host group, so one host at a time (--max-hostgroup 1): each host then has
# its own --host-timeout, as when nmap alone scans the group's hosts side by side.
RECOMMENDED_ST = ["--max-parallelism", "1"]
RECOMMENDED_SV = ["--max-parallelism", "1", "--max-hostgroup", "1"]


def fragile_fleet() -> Any:
    config = hospital_fleet(PREFIX, seed=11, boot_delay_s=0.05)
    devices = tuple(
        dataclasses.replace(d, threshold=FRAGILE_THRESHOLD, jitter=0) if d.model == FRAGILE_MODEL else d
        for d in config.devices
    )
    return dataclasses.replace(config, devices=devices)


async def part1(quick: bool) -> tuple[list[str], list[Row], list[Row]]:
    config = fragile_fleet()
    targets = list(config.hosts)
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "inventory.db"
        async with Fleet(config, control_port=None) as fleet:
            write_inventory(store, config, fleet)
            st = nmap_cmd(["-sT"], targets)
            rows = [
                await measured(fleet, "nmap -sT", st),
                await measured(fleet, "nmap -sT through the shield", shield_cmd(store, [], st), store=store),
                await measured(
                    fleet,
                    "nmap -sT --max-parallelism 1 through the shield",
                    shield_cmd(store, [], nmap_cmd(["-sT", *RECOMMENDED_ST], targets)),
                    store=store,
                ),
            ]
            for r in rows[1:]:
                r.compared = compare(rows[0], r)
            out.append(
                table(
                    rows,
                    f"Part 1: whole fleet ({len(targets)} addresses, {len(config.devices)} "
                    f"devices, {len(FLEET_PORTS)} ports, default timing)",
                )
            )
            one_each = [
                next(d.host for d in config.devices if d.model == m)
                for m in MODELS
                if any(d.model == m for d in config.devices)
            ]
            if quick:
                one_each = one_each[:3]
            sv = ["-sT", "-sV", "--host-timeout", f"{SV_HOST_TIMEOUT_S}s"]
            rows_sv = [
                await measured(fleet, "nmap -sT -sV", nmap_cmd(sv, one_each)),
                await measured(
                    fleet,
                    "nmap -sT -sV through the shield",
                    shield_cmd(store, [], nmap_cmd(sv, one_each)),
                    store=store,
                ),
                await measured(
                    fleet,
                    "nmap -sT -sV --max-parallelism 1 --max-hostgroup 1 through the shield",
                    shield_cmd(store, [], nmap_cmd([*sv, *RECOMMENDED_SV], one_each)),
                    "the recommended command line",
                    store=store,
                ),
            ]
            for r in rows_sv[1:]:
                r.compared = compare(rows_sv[0], r)
            out.append(
                table(
                    rows_sv,
                    f"Part 1b: version detection, one device of each model ({len(one_each)} "
                    f"hosts; nmap --host-timeout {SV_HOST_TIMEOUT_S}s)",
                )
            )
    return out, rows, rows_sv


# --- part 2: relay cost ----------------------------------------------------------------------------------

SENDER = r"""
import socket, sys, time
host, port, total, rate = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
srv = socket.create_server((host, port))
print("ready", flush=True)
block = b"x" * (1 << 20)
while True:
    conn, _ = srv.accept()
    with conn:
        try:
            if conn.recv(1) == b"b":
                sent, start = 0, time.monotonic()
                while sent < total:
                    sent += conn.send(block[: min(len(block), total - sent)])
                    if rate:  # a link of `rate` bytes/s: never ahead of it
                        time.sleep(max(0.0, start + sent / rate - time.monotonic()))
        except OSError:
            pass
"""
# A sturdy host behind a 1 Gbit/s link (what a hospital access port gives at most): the sender is paced to
# the link's rate, as the wire would pace it. On bare loopback nothing paces it and the machine's 2 cores
# are the bottleneck: every relayed byte crosses loopback TCP twice.
LINK_BYTES_PER_S = 1e9 / 8
LINK_BULK_BYTES = 128 << 20
# The reference relay: two threads per session moving bytes with splice(2), no event loop, no accounting.
# What any relay costs on this machine, to read the shield's loopback ratio against.
REFERENCE_RELAY = r"""
import os, socket, sys, threading
srv = socket.create_server(("127.0.0.1", 0))
print(srv.getsockname()[1], flush=True)
def pump(a, b):
    r, w = os.pipe()
    try:
        while True:
            n = os.splice(a.fileno(), w, 65536, flags=os.SPLICE_F_MOVE)
            if not n:
                break
            while n:
                n -= os.splice(r, b.fileno(), n, flags=os.SPLICE_F_MOVE)
        b.shutdown(socket.SHUT_WR)
    except OSError:
        pass
while True:
    c, _ = srv.accept()
    c.recv(3); c.sendall(b"\x05\x00"); req = c.recv(10)
    d = socket.create_connection((socket.inet_ntoa(req[4:8]), int.from_bytes(req[8:10], "big")))
    c.sendall(b"\x05\x00\x00\x01" + bytes(6))
    threading.Thread(target=pump, args=(c, d), daemon=True).start()
    threading.Thread(target=pump, args=(d, c), daemon=True).start()
"""


def socks_connect(proxy: tuple[str, int], host: str, port: int) -> socket.socket:
    s = socket.create_connection(proxy)
    s.sendall(b"\x05\x01\x00")
    assert s.recv(2) == b"\x05\x00"
    s.sendall(b"\x05\x01\x00\x01" + socket.inet_aton(host) + struct.pack("!H", port))
    reply = s.recv(10)
    if reply[1] != 0:
        raise RuntimeError(f"SOCKS reply {reply[1]}")
    return s


def bulk(connect: Any, total: int = BULK_BYTES) -> float:
    s = connect()
    with s:
        start = time.perf_counter()
        s.sendall(b"b")
        got = 0
        buf = bytearray(1 << 20)
        while got < total:
            n = s.recv_into(buf)
            if not n:
                break
            got += n
        return got / (time.perf_counter() - start) / (1 << 20)


def connect_rate(connect: Any) -> float:
    start = time.perf_counter()
    for _ in range(CONNECTS):
        s = connect()
        s.close()
    return CONNECTS / (time.perf_counter() - start)


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class Relay:
    direct: list[float]
    shield: list[float]
    reference: list[float]

    def ratio(self) -> float:
        return statistics.median(self.shield) / statistics.median(self.direct)


def _proxy_of(proc: subprocess.Popen[str]) -> tuple[str, int]:
    assert proc.stderr is not None
    line = proc.stderr.readline()
    m = re.search(r"listening on ([\d.]+):(\d+)", line)
    assert m, line
    return m.group(1), int(m.group(2))


def part2() -> tuple[str, dict[str, Relay]]:
    port, link_port = 24555, 24557
    senders = [
        subprocess.Popen(
            [sys.executable, "-c", SENDER, STURDY, str(p), str(total), str(rate)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for p, total, rate in ((port, BULK_BYTES, 0), (link_port, LINK_BULK_BYTES, LINK_BYTES_PER_S))
    ]
    shield = subprocess.Popen(
        [
            *FP,
            "shield",
            "--scope",
            STURDY,
            "--listen",
            "127.0.0.1:0",
            "--log-level",
            "error",
            "--default-ceiling",
            "64",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    reference = subprocess.Popen([sys.executable, "-c", REFERENCE_RELAY], stdout=subprocess.PIPE, text=True)
    try:
        for sender in senders:
            assert sender.stdout is not None
            sender.stdout.readline()
        proxy = _proxy_of(shield)
        assert reference.stdout is not None
        ref = ("127.0.0.1", int(reference.stdout.readline()))

        def way(via: tuple[str, int] | None, p: int) -> Any:
            if via is None:
                return lambda: socket.create_connection((STURDY, p))
            return lambda: socks_connect(via, STURDY, p)

        res = {k: Relay([], [], []) for k in ("loopback", "link", "connects")}
        rss_before = rss_mib(shield.pid)
        for _ in range(3):
            for r, via in zip(("direct", "shield", "reference"), (None, proxy, ref), strict=True):
                getattr(res["loopback"], r).append(bulk(way(via, port)))
                getattr(res["link"], r).append(bulk(way(via, link_port), LINK_BULK_BYTES))
            res["connects"].direct.append(connect_rate(way(None, port)))
            time.sleep(0.3)
            res["connects"].shield.append(connect_rate(way(proxy, port)))
            time.sleep(0.3)
        rss_after = rss_mib(shield.pid)
    finally:
        for p in (*senders, shield, reference):
            p.terminate()
            p.wait(timeout=10)

    def med(xs: list[float]) -> str:
        return f"{statistics.median(xs):,.0f}" if xs else "-"

    def ref_ratio(r: Relay) -> str:
        return f"{statistics.median(r.reference) / statistics.median(r.direct):.2f}" if r.reference else "-"

    lo, link, conn = res["loopback"], res["link"], res["connects"]
    text = "\n".join(
        [
            "### Part 2: relay on a sturdy host (3 alternating runs, median)",
            "",
            "| measure | direct | through the shield | ratio | reference relay (2 threads, splice) | its ratio |",
            "|---|---:|---:|---:|---:|---:|",
            f"| bulk, bare loopback ({BULK_BYTES >> 20} MiB, MiB/s) | {med(lo.direct)} | {med(lo.shield)} | "
            f"{lo.ratio():.2f} | {med(lo.reference)} | {ref_ratio(lo)} |",
            f"| bulk, 1 Gbit/s link ({LINK_BULK_BYTES >> 20} MiB, MiB/s) | {med(link.direct)} | {med(link.shield)} | "
            f"{link.ratio():.2f} | {med(link.reference)} | {ref_ratio(link)} |",
            f"| connects/s ({CONNECTS}: connect, SOCKS handshake, close) | {med(conn.direct)} | {med(conn.shield)} | "
            f"{conn.ratio():.2f} | - | - |",
            "",
            f"shield process RSS: {rss_before:.1f} MiB before, {rss_after:.1f} MiB after relaying "
            f"{3 * (BULK_BYTES + LINK_BULK_BYTES) >> 20} MiB and {3 * CONNECTS} connects",
            "",
            "runs (MiB/s, connects/s): "
            + "; ".join(
                f"{k} {r}: {[round(x) for x in getattr(v, r)]}"
                for k, v in res.items()
                for r in ("direct", "shield", "reference")
                if getattr(v, r)
            ),
        ]
    )
    return text, res


HOLDER = r"""
import asyncio, sys
hosts, port = sys.argv[1].split(","), int(sys.argv[2])
async def handle(reader, writer):
    try:
        while await reader.read(65536):
            pass
    except OSError:
        pass
    finally:
        writer.close()
async def main():
    servers = [await asyncio.start_server(handle, h, port, backlog=2048) for h in hosts]
    print("ready", flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""
MANY_HOSTS = 20
MANY_PER_HOST = 100


async def part2b() -> str:
    """Thousands of concurrent sessions across hosts: the shield's memory per session."""
    hosts = [f"127.202.3.{i + 1}" for i in range(MANY_HOSTS)]
    port = 24556
    holder = subprocess.Popen(  # noqa: ASYNC220
        [sys.executable, "-c", HOLDER, ",".join(hosts), str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    shield = subprocess.Popen(  # noqa: ASYNC220
        [
            *FP,
            "shield",
            "--scope",
            "127.202.3.0/24",
            "--listen",
            "127.0.0.1:0",
            "--log-level",
            "error",
            "--default-ceiling",
            str(MANY_PER_HOST),
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    writers = []
    try:
        assert holder.stdout is not None
        assert shield.stderr is not None
        holder.stdout.readline()
        m = re.search(r"listening on ([\d.]+):(\d+)", shield.stderr.readline())
        assert m
        proxy = (m.group(1), int(m.group(2)))
        idle = rss_mib(shield.pid)

        async def one(host: str) -> None:
            reader, writer = await asyncio.open_connection(*proxy)
            writer.write(b"\x05\x01\x00")
            await reader.readexactly(2)
            writer.write(b"\x05\x01\x00\x01" + socket.inet_aton(host) + struct.pack("!H", port))
            reply = await reader.readexactly(10)
            assert reply[1] == 0, reply
            writers.append(writer)

        start = time.monotonic()
        with anyio.fail_after(120):
            for _ in range(MANY_PER_HOST // 10):
                await asyncio.gather(*(one(h) for h in hosts for _i in range(10)))
        opened = time.monotonic() - start
        await anyio.sleep(1.0)
        loaded = rss_mib(shield.pid)
    finally:
        for writer in writers:
            writer.close()
        for p in (holder, shield):
            p.terminate()
            p.wait(timeout=10)
    n = len(writers)
    return (
        f"### Part 2b: {n:,} concurrent sessions across {MANY_HOSTS} hosts (opened in {opened:.1f} s)\n\n"
        f"shield process RSS: {idle:.1f} MiB idle, {loaded:.1f} MiB with {n:,} sessions open: "
        f"{(loaded - idle) * 1024 / max(n, 1):.1f} KiB per session"
    )


# --- part 3: a trip --------------------------------------------------------------------------------------


async def part3() -> tuple[str, dict[str, tuple[int, int, int]]]:
    host = "127.202.2.5"
    lines = [
        "### Part 3: a device tripped by the shield (infusion pump, ceiling 4, heartbeat GET / on 8080 "
        "every 0.5 s)",
        "",
        "| release mode | sessions closed at the trip | CONNECTs asked after the trip "
        "| refused | relayed after the trip | connections the device received after the trip | heartbeats recorded after "
        "the trip |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    after_trip: dict[str, tuple[int, int, int]] = {}
    for release in ("operator", "auto"):
        async with EmulatedPump(host, seed=5, boot_delay_s=0.05, syn_watch=False) as pump:
            beat = HttpHeartbeat(port=pump.web_port, expect_status=None, timeout_s=0.5)
            shield = Shield(
                scope=Scope(host),
                listen_port=0,
                ceilings={host: 4},
                heartbeats={host: beat},
                heartbeat_interval_s=0.5,
                release=release,
            )  # type: ignore[arg-type]
            async with shield:
                proxy = shield.address
                held = [
                    await anyio.to_thread.run_sync(socks_connect, proxy, host, pump.port(21))
                    for _ in range(3)
                ]
                pump.hang()
                for _ in range(500):
                    if shield.trips:
                        break
                    await anyio.sleep(0.01)
                trip = shield.trips[0]
                trip_mono = time.monotonic() - (time.time() - trip.tripped_at_s)
                asked = refused = 0
                deadline = time.monotonic() + 3.0
                while time.monotonic() < deadline:
                    asked += 1
                    try:
                        s = await anyio.to_thread.run_sync(socks_connect, proxy, host, pump.port(21))
                        s.close()
                    except (RuntimeError, OSError):
                        refused += 1
                    await anyio.sleep(0.01)
                after = pump.connects_since(trip_mono)
                beats = sum(
                    1
                    for b in (shield.guard_for(host).timeline.beats if shield.guard_for(host) else ())
                    if b.at_s >= trip_mono
                )
                for s in held:
                    s.close()
            relayed = sum(1 for r in shield.sessions if r.reply == 0 and r.started_at_s >= trip.tripped_at_s)
            lines.append(
                f"| {release} | {trip.sessions_closed} | {asked} | {refused} | {relayed} | {after} | "
                f"{beats} |"
            )
            after_trip[release] = (relayed, after, beats)
    return "\n".join(lines), after_trip


def summary(
    st: list[Row], sv: list[Row], relay: dict[str, Relay], trip: dict[str, tuple[int, int, int]]
) -> str:
    """The one table: every measured goal of issue 12, nmap alone (or direct) vs through the shield."""

    def met(ok: bool) -> str:
        return "yes" if ok else "**no**"

    def same_ports(a: Row, b: Row) -> bool:
        return compare(a, b).startswith("open ports (9100-9107 aside): same")

    rows = []
    for alone, behind in ((st[0], st[1]), (sv[0], sv[2])):
        label = alone.name
        rows += [
            (
                f"{label}: devices hung",
                alone.hung,
                behind.hung,
                "0 through the shield",
                met(behind.hung == 0) + ("" if alone.hung else " (nmap alone hung none)"),
            ),
            (
                f"{label}: hosts / open ports found",
                f"{alone.hosts} / {alone.services}",
                f"{behind.hosts} / {behind.services}",
                "the same open ports (9100-9107 are refused by design)",
                met(same_ports(alone, behind)),
            ),
            (f"{label}: wall time (s)", f"{alone.wall_s:.1f}", f"{behind.wall_s:.1f}", "as measured", "-"),
        ]
        if alone.versions or behind.versions:
            lost = len(alone.versions - behind.versions)
            rows.append(
                (
                    f"{label}: services identified",
                    len(alone.versions),
                    len(behind.versions),
                    "as many",
                    met(lost == 0) + f" ({lost} lost)",
                )
            )
    lo, link, conn = relay["loopback"], relay["link"], relay["connects"]
    rows += [
        (
            "bulk transfer, bare loopback (MiB/s)",
            f"{statistics.median(lo.direct):,.0f}",
            f"{statistics.median(lo.shield):,.0f} ({lo.ratio():.2f}x)",
            ">= 0.8x",
            met(lo.ratio() >= 0.8),
        ),
        (
            "bulk transfer, 1 Gbit/s link (MiB/s)",
            f"{statistics.median(link.direct):,.0f}",
            f"{statistics.median(link.shield):,.0f} ({link.ratio():.2f}x)",
            ">= 0.8x",
            met(link.ratio() >= 0.8),
        ),
        (
            "connects/s",
            f"{statistics.median(conn.direct):,.0f}",
            f"{statistics.median(conn.shield):,.0f} ({conn.ratio():.2f}x)",
            "as measured",
            "-",
        ),
    ]
    for release, (relayed, received, beats) in trip.items():
        rows.append(
            (
                f"tripped device ({release} release): sessions relayed / connections it received after the "
                f"trip",
                "-",
                f"{relayed} / {received} ({beats} heartbeats)",
                "0 new sessions",
                met(relayed == 0 and received <= beats + 1),
            )
        )  # (one beat may be in flight)
    out = [
        "### Summary: issue 12's measured goals",
        "",
        "| measure | nmap alone / direct | through the shield | goal | met |",
        "|---|---:|---:|---|---|",
    ]
    out += [f"| {a} | {b} | {c} | {d} | {e} |" for a, b, c, d, e in rows]
    return "\n".join(out)


async def main(quick: bool) -> None:
    def show(text: str) -> None:  # each part as soon as it is done: a later failure loses nothing
        print(text + "\n", flush=True)

    print(f"bench_shield.py, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, nmap {NMAP}\n", flush=True)
    texts, st, sv = await part1(quick)
    for text in texts:
        show(text)
    relay_text, relay = await anyio.to_thread.run_sync(part2)
    show(relay_text)
    show(await part2b())
    trip_text, trip = await part3()
    show(trip_text)
    show(summary(st, sv, relay, trip))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer -sV hosts")
    args = parser.parse_args()
    if not os.path.exists(NMAP) or not shutil.which("proxychains4"):
        sys.exit("needs nmap and proxychains4")
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    anyio.run(main, args.quick)
