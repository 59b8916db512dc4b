"""Core benchmark: connect-and-close probes per second through a Guard vs a bare asyncio loop.

Both clients run on the asyncio event loop in this process, at the same concurrency, against the same
loopback listener served by a separate process (so the server's work does not share the client's loop).
The Guard runs with its watchdog on, heartbeating an HTTP port on the same listener host once a second.
fragileprobe's probes half-close and wait for the server's FIN before closing (the device's session ends
when it lets go), so a second bare column does the same: the ratio against it is the Guard's own overhead.
Each configuration runs ``--count`` connects; the bare and guarded runs alternate ``--repeat`` times and the
median rate is reported, side by side with the ratio (guarded / bare). Also: ``import fragileprobe`` time.

Only loopback is used (127.0.0.0/8). Run: ``python benchmarks/bench_core.py [--count 3000] [--repeat 3]``.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
from typing import Any

import anyio
import structlog

# The benchmark is an application, so it may configure logging: the library logs every probe at debug
# level, and printing 3,000 lines would measure the terminal, not the prober.
structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))

import fragileprobe as fp  # noqa: E402

DEFAULT_HOST = "127.251.0.2"
HTTP_OK = b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


def serve(host: str, ready: Any, stop: Any) -> None:
    """Server process: a connect-and-close port and an HTTP port for the heartbeat."""

    async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.read(1024)  # EOF when the client closes
        finally:
            writer.close()

    async def http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(HTTP_OK)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        probe_server = await asyncio.start_server(sink, host, 0, backlog=1024)
        http_server = await asyncio.start_server(http, host, 0, backlog=128)
        ready.send((probe_server.sockets[0].getsockname()[1], http_server.sockets[0].getsockname()[1]))
        while not stop.is_set():  # noqa: ASYNC110 - a multiprocessing.Event, not an asyncio one
            await asyncio.sleep(0.1)

    asyncio.run(main())


async def bare(host: str, port: int, count: int, concurrency: int, *, wait_fin: bool = False) -> float:
    """Bare asyncio streams. ``wait_fin``: half-close and wait for the server's FIN first, as the probes do."""
    remaining = count

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            reader, writer = await asyncio.open_connection(host, port)
            if wait_fin:
                writer.write_eof()
                await reader.read(4096)
            writer.close()
            await writer.wait_closed()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return count / (time.perf_counter() - start)


async def guarded(host: str, port: int, http_port: int, count: int, concurrency: int) -> float:
    target = fp.Target(host, ports=[port], heartbeat=fp.HttpHeartbeat(port=http_port, timeout_s=2.0))
    remaining = count
    # N counts the heartbeat's session: concurrency probes in flight need N = concurrency + 1.
    scope = fp.Scope([f"{host}/32"])
    async with fp.Guard(target, ceiling=concurrency + 1, scope=scope, interval_s=1.0) as guard:

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                result = await guard.tcp_connect(port)
                if result.outcome is not fp.Outcome.OPEN:
                    raise RuntimeError(f"probe failed: {result}")

        start = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(concurrency):
                tg.start_soon(worker)
        await guard.wait_let_go()  # the last slots are charged until the server let go: part of the cost
        rate = count / (time.perf_counter() - start)
        if guard.device_down or guard.stats.peak_device_sessions > concurrency + 1:
            raise RuntimeError(f"guard misbehaved: {guard.stats}")
    return rate


def import_time(repeat: int) -> tuple[float, float]:
    """Median seconds for ``import fragileprobe`` and for first use of ``fragileprobe.Guard``, fresh processes."""
    code = (
        "import time; t0 = time.perf_counter(); import fragileprobe; t1 = time.perf_counter(); "
        "fragileprobe.Guard; t2 = time.perf_counter(); print(t1 - t0, t2 - t0)"
    )
    plain, with_guard = [], []
    for _ in range(repeat):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        a, b = map(float, out.stdout.split())
        plain.append(a)
        with_guard.append(b)
    return statistics.median(plain), statistics.median(with_guard)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=DEFAULT_HOST, help="loopback address for the listener")
    parser.add_argument("--count", type=int, default=3000, help="connects per run (at most 20000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per configuration (median reported)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 64])
    args = parser.parse_args()
    if not ipaddress.ip_address(args.host).is_loopback:
        parser.error("--host must be a loopback address (127.0.0.0/8)")
    if not 1 <= args.count <= 20000 or not 1 <= args.repeat <= 10:
        parser.error("--count must be 1-20000 and --repeat 1-10 (bounded traffic)")

    parent, child = multiprocessing.Pipe()
    stop = multiprocessing.Event()
    server = multiprocessing.Process(target=serve, args=(args.host, child, stop), daemon=True)
    server.start()
    try:
        port, http_port = parent.recv()
        print(
            f"fragileprobe {fp.__version__}, Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
            f"listener {args.host}:{port} (separate process), {args.count} connects x {args.repeat} runs"
        )
        print()
        print("bare: asyncio open_connection + close; bare+FIN: also half-closes and waits for the server's")
        print("FIN first, as fragileprobe's probes do (the session lasts until the device let go of it)")
        print()
        print(
            f"{'concurrency':>11} | {'bare /s':>8} | {'bare+FIN /s':>11} | {'Guard /s':>8} | "
            f"{'Guard/bare':>10} | {'Guard/bare+FIN':>14}"
        )
        print(f"{'-' * 11}-+-{'-' * 8}-+-{'-' * 11}-+-{'-' * 8}-+-{'-' * 10}-+-{'-' * 14}")
        for concurrency in args.concurrency:
            bare_rates, fin_rates, guard_rates = [], [], []
            for _ in range(args.repeat):
                bare_rates.append(asyncio.run(bare(args.host, port, args.count, concurrency)))
                fin_rates.append(asyncio.run(bare(args.host, port, args.count, concurrency, wait_fin=True)))
                guard_rates.append(anyio.run(guarded, args.host, port, http_port, args.count, concurrency))
            b, f, g = (statistics.median(r) for r in (bare_rates, fin_rates, guard_rates))
            print(
                f"{concurrency:>11} | {b:>8,.0f} | {f:>11,.0f} | {g:>8,.0f} | {g / b:>10.2f} | {g / f:>14.2f}"
            )
    finally:
        stop.set()
        server.join(timeout=5)
        if server.is_alive():
            server.terminate()
    plain, with_guard = import_time(7)
    print()
    print(
        f"import fragileprobe: {plain * 1000:.1f} ms (median of 7 fresh processes); "
        f"first use of fragileprobe.Guard (loads anyio, structlog): {with_guard * 1000:.1f} ms"
    )


if __name__ == "__main__":
    main()
