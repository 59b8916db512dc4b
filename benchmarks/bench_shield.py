"""Shield benchmark: nmap alone vs nmap behind ``fragileprobe shield --exec``, relay cost, a trip, in one run.

Run:  python benchmarks/bench_shield.py [--quick]

Part 1: the emulated hospital fleet (``hospital_fleet``: 126 devices on 254 addresses, served by this
process) scanned by Debian's nmap (-sT, default timing; every port any model listens on), alone and through
the shield (a ``fragileprobe shield --exec`` child process, proxychains-ng). The shield reads an inventory
written from the fleet's ground truth into a fresh store, the way discovery leaves it: medical devices in
"Medical Device?" (ceiling 1, heartbeat on their web port), the rest at the default ceiling of 4.
Part 1b: nmap -sT -sV on one device of each model (--host-timeout 60s, as bench_discovery.py).
Part 2: relay throughput on a sturdy host (a bulk sender in a child process): direct vs through the shield
(a child process), 3 alternating runs, median; and connect rate (connect, SOCKS handshake, close).
Part 3: a device tripped by the shield: sessions held through the shield, the device hangs, the watchdog trips
it; then clients keep asking for CONNECTs for 3 s. Counted on the device: connections after the trip.

Every socket is on 127.0.0.0/8; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
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


def parse_nmap(text: str) -> tuple[int, int, int]:
    """(hosts with an open port, open ports, hosts that hit --host-timeout) from nmap's normal output."""
    hosts = services = 0
    timed_out = len(re.findall(r"Skipping host .* due to host timeout", text))
    for block in text.split("Nmap scan report for ")[1:]:
        n = len(re.findall(r"^\d+/tcp\s+open\b", block, re.M))
        hosts += n > 0
        services += n
    return hosts, services, timed_out


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
    return [*FP, "shield", "--scope", f"{PREFIX}.0/24", "--store", str(store), *extra, "--exec", "--", *command]


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
    hosts, services, timed_out = parse_nmap(out)
    print(f"# {name}: {wall:.2f} s, {hosts} hosts, {services} services", file=sys.stderr, flush=True)
    extra = f"{timed_out} host(s) hit --host-timeout" if timed_out else ""
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
    return Row(name, wall, hosts, services, hung, notes)


def table(rows: list[Row], title: str) -> str:
    out = [f"### {title}", "", "| run | wall time (s) | hosts found | services found | devices hung | note |",
           "|---|---:|---:|---:|---:|---|"]
    out += [f"| {r.name} | {r.wall_s:.2f} | {r.hosts} | {r.services} | {r.hung} | {r.note} |" for r in rows]
    return "\n".join(out)


def write_inventory(store_path: Path, config: Any, fleet: Fleet) -> None:
    """What discovery would have left in the store: model keys, groups, web ports (from ground truth)."""
    with ProfileStore(store_path) as store:
        for host, device in fleet.devices.items():
            truth = config.ground_truth[host]
            web = device.model.web_port
            services = [{"port": device.port(web), "service": "http"}] if web else []
            groups = ["Medical Device?"] if truth.category == "medical" else [f"safe to scan ({truth.zone})"]
            store.upsert_asset(host, scan_id=None, seen_at_s=time.time(), zone=truth.zone,
                               model_key=f"{truth.model}-{hashlib.sha256(truth.model.encode()).hexdigest()[:12]}",
                               open_ports=device.ports.values(),
                               services=services, groups=groups)  # fmt: skip


async def part1(quick: bool) -> list[str]:
    config = hospital_fleet(PREFIX, seed=11, boot_delay_s=0.05)
    targets = list(config.hosts)
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "inventory.db"
        async with Fleet(config, control_port=None) as fleet:
            write_inventory(store, config, fleet)
            rows = [
                await measured(fleet, "nmap -sT", nmap_cmd(["-sT"], targets)),
                await measured(fleet, "nmap -sT through the shield",
                               shield_cmd(store, [], nmap_cmd(["-sT"], targets)), store=store),
                await measured(fleet, "nmap -sT --max-parallelism 1 through the shield",
                               shield_cmd(store, [], nmap_cmd(["-sT", "--max-parallelism", "1"], targets)),
                               "what --exec advises", store=store),
            ]
            out.append(table(rows, f"Part 1: whole fleet ({len(targets)} addresses, {len(config.devices)} devices, "
                                   f"{len(FLEET_PORTS)} ports, default timing)"))
            one_each = [next(d.host for d in config.devices if d.model == m) for m in MODELS
                        if any(d.model == m for d in config.devices)]
            if quick:
                one_each = one_each[:3]
            sv = ["-sT", "-sV", "--host-timeout", f"{SV_HOST_TIMEOUT_S}s"]
            rows_sv = [
                await measured(fleet, "nmap -sT -sV", nmap_cmd(sv, one_each)),
                await measured(fleet, "nmap -sT -sV through the shield",
                               shield_cmd(store, [], nmap_cmd(sv, one_each)), store=store),
            ]
            out.append(table(rows_sv, f"Part 1b: version detection, one device of each model ({len(one_each)} "
                                      f"hosts; nmap --host-timeout {SV_HOST_TIMEOUT_S}s)"))
    return out


# --- part 2: relay cost ----------------------------------------------------------------------------------

SENDER = r"""
import socket, sys
host, port, total = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
srv = socket.create_server((host, port))
print("ready", flush=True)
block = b"x" * (1 << 20)
while True:
    conn, _ = srv.accept()
    with conn:
        try:
            if conn.recv(1) == b"b":
                sent = 0
                while sent < total:
                    sent += conn.send(block[: min(len(block), total - sent)])
        except OSError:
            pass
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


def bulk(connect: Any) -> float:
    s = connect()
    with s:
        start = time.perf_counter()
        s.sendall(b"b")
        got = 0
        buf = bytearray(1 << 20)
        while got < BULK_BYTES:
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


def part2() -> str:
    port = 24555
    sender = subprocess.Popen([sys.executable, "-c", SENDER, STURDY, str(port), str(BULK_BYTES)],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    shield = subprocess.Popen([*FP, "shield", "--scope", STURDY, "--listen", "127.0.0.1:0", "--log-level", "error",
                               "--default-ceiling", "64"], stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert sender.stdout is not None
        assert shield.stderr is not None
        sender.stdout.readline()
        line = shield.stderr.readline()
        m = re.search(r"listening on ([\d.]+):(\d+)", line)
        assert m, line
        proxy = (m.group(1), int(m.group(2)))

        def direct() -> socket.socket:
            return socket.create_connection((STURDY, port))

        def via() -> socket.socket:
            return socks_connect(proxy, STURDY, port)

        d_bulk, s_bulk, d_rate, s_rate = [], [], [], []
        rss_before = rss_mib(shield.pid)
        for _ in range(3):
            d_bulk.append(bulk(direct))
            s_bulk.append(bulk(via))
            d_rate.append(connect_rate(direct))
            time.sleep(0.3)
            s_rate.append(connect_rate(via))
            time.sleep(0.3)
        rss_after = rss_mib(shield.pid)
    finally:
        for p in (sender, shield):
            p.terminate()
            p.wait(timeout=10)
    db, sb = statistics.median(d_bulk), statistics.median(s_bulk)
    dr, sr = statistics.median(d_rate), statistics.median(s_rate)
    return "\n".join([
        f"### Part 2: relay on a sturdy host ({BULK_BYTES >> 20} MiB bulk, {CONNECTS} connects; 3 alternating runs, median)",
        "", "| measure | direct | through the shield | ratio |", "|---|---:|---:|---:|",
        f"| bulk transfer (MiB/s) | {db:,.0f} | {sb:,.0f} | {sb / db:.2f} |",
        f"| connects/s (connect, handshake, close) | {dr:,.0f} | {sr:,.0f} | {sr / dr:.2f} |",
        "", f"shield process RSS: {rss_before:.1f} MiB before, {rss_after:.1f} MiB after relaying "
            f"{3 * BULK_BYTES >> 20} MiB and {6 * CONNECTS} connects",
        "", f"runs: bulk direct {[round(x) for x in d_bulk]}, shield {[round(x) for x in s_bulk]}; "
            f"connects direct {[round(x) for x in d_rate]}, shield {[round(x) for x in s_rate]}",
    ])  # fmt: skip


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
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, ",".join(hosts), str(port)],  # noqa: ASYNC220
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    shield = subprocess.Popen([*FP, "shield", "--scope", "127.202.3.0/24", "--listen", "127.0.0.1:0",  # noqa: ASYNC220
                               "--log-level", "error", "--default-ceiling", str(MANY_PER_HOST)],
                              stderr=subprocess.PIPE, text=True)  # fmt: skip
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
    return (f"### Part 2b: {n:,} concurrent sessions across {MANY_HOSTS} hosts (opened in {opened:.1f} s)\n\n"
            f"shield process RSS: {idle:.1f} MiB idle, {loaded:.1f} MiB with {n:,} sessions open: "
            f"{(loaded - idle) * 1024 / max(n, 1):.1f} KiB per session")


# --- part 3: a trip --------------------------------------------------------------------------------------


async def part3() -> str:
    host = "127.202.2.5"
    lines = ["### Part 3: a device tripped by the shield (infusion pump, ceiling 4, heartbeat GET / on 8080 "
             "every 0.5 s)", "", "| release mode | sessions closed at the trip | CONNECTs asked after the trip "
             "| refused | relayed after the trip | connections the device received after the trip | heartbeats recorded after "
             "the trip |", "|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for release in ("operator", "auto"):
        async with EmulatedPump(host, seed=5, boot_delay_s=0.05, syn_watch=False) as pump:
            beat = HttpHeartbeat(port=pump.web_port, expect_status=None, timeout_s=0.5)
            shield = Shield(scope=Scope(host), listen_port=0, ceilings={host: 4}, heartbeats={host: beat},
                            heartbeat_interval_s=0.5, release=release)  # type: ignore[arg-type]
            async with shield:
                proxy = shield.address
                held = [await anyio.to_thread.run_sync(socks_connect, proxy, host, pump.port(21))
                        for _ in range(3)]  # fmt: skip
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
                beats = sum(1 for b in (shield.guard_for(host).timeline.beats if shield.guard_for(host) else ())
                            if b.at_s >= trip_mono)  # fmt: skip
                for s in held:
                    s.close()
            relayed = sum(1 for r in shield.sessions if r.reply == 0 and r.started_at_s >= trip.tripped_at_s)
            lines.append(f"| {release} | {trip.sessions_closed} | {asked} | {refused} | {relayed} | {after} | "
                         f"{beats} |")  # fmt: skip
    return "\n".join(lines)


async def main(quick: bool) -> None:
    def show(text: str) -> None:  # each part as soon as it is done: a later failure loses nothing
        print(text + "\n", flush=True)

    for text in await part1(quick):
        show(text)
    show(await anyio.to_thread.run_sync(part2))
    show(await part2b())
    show(await part3())


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
