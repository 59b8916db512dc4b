"""Scale check: a 254-host emulated fleet in one process: start time, memory, and that every host serves.

Run:  python benchmarks/bench_fleet.py [--fleet uniform|hospital] [--prefix 127.78.0] [--json]

``uniform`` is 254 story pumps (4 services each, 1,016 listening sockets); ``hospital`` is the standard
hospital fleet (126 devices of mixed models, 128 empty addresses). After start-up the script connects once
to every service of every device (bounded concurrency, bounded reads) and reads each web page, so the
number it reports is the memory of a fleet that has actually served. All traffic stays on 127.0.0.0/8.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

import anyio

from fragileprobe.emulator import Fleet, hospital_fleet, uniform_fleet

# Connections the checker keeps in flight at once: well under every model's crash threshold per device
# (it visits devices in parallel, one connection per device at a time).
CHECK_PARALLEL_DEVICES = 32
READ_TIMEOUT_S = 5.0


def rss_mib() -> float:
    """Resident set size of this process now, in MiB (from /proc, falling back to getrusage's peak)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def check_device(device, counts: dict[str, int]) -> None:  # type: ignore[no-untyped-def]
    for model_port, bound in device.ports.items():
        with anyio.fail_after(READ_TIMEOUT_S):
            async with await anyio.connect_tcp(device.host, bound) as stream:
                if model_port == device.model.web_port:
                    await stream.send(b"GET / HTTP/1.0\r\n\r\n")
                    head = await stream.receive(4096)
                    counts["http_ok" if head.startswith(b"HTTP/1.1 200") else "http_bad"] += 1
                counts["connects"] += 1
        # One session at a time per device: wait for the device to notice the close before the next.
        for _ in range(400):
            if device.stats.sessions_now == 0:
                break
            await anyio.sleep(0.005)


async def main(args: argparse.Namespace) -> dict[str, object]:
    config = (
        uniform_fleet(args.prefix, count=254, model="infusion-pump")
        if args.fleet == "uniform"
        else hospital_fleet(args.prefix, seed=1)
    )
    before = rss_mib()
    started = time.monotonic()
    async with Fleet(config, control_port=None) as fleet:
        start_s = time.monotonic() - started
        after_start = rss_mib()
        counts = {"connects": 0, "http_ok": 0, "http_bad": 0}
        check_started = time.monotonic()
        limiter = anyio.CapacityLimiter(CHECK_PARALLEL_DEVICES)

        async def one(device) -> None:  # type: ignore[no-untyped-def]
            async with limiter:
                await check_device(device, counts)

        async with anyio.create_task_group() as tg:
            for device in fleet.devices.values():
                tg.start_soon(one, device)
        check_s = time.monotonic() - check_started
        after_serving = rss_mib()
        listeners = sum(len(d.ports) for d in fleet.devices.values())
        hung = sum(1 for d in fleet.devices.values() if d.state.value != "up")
        result: dict[str, object] = {
            "fleet": args.fleet,
            "hosts": len(config.hosts),
            "devices": len(fleet.devices),
            "listening_sockets": listeners,
            "start_s": round(start_s, 3),
            "rss_before_mib": round(before, 1),
            "rss_after_start_mib": round(after_start, 1),
            "rss_after_serving_mib": round(after_serving, 1),
            "rss_per_device_kib": round((after_serving - before) * 1024 / max(1, len(fleet.devices)), 1),
            "check_connects": counts["connects"],
            "check_http_ok": counts["http_ok"],
            "check_http_bad": counts["http_bad"],
            "check_s": round(check_s, 3),
            "devices_not_up": hung,
            "euid": os.geteuid(),
        }
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fleet", choices=("uniform", "hospital"), default="uniform")
    parser.add_argument("--prefix", default="127.78.0")
    parser.add_argument("--json", action="store_true", help="print one JSON object only")
    ns = parser.parse_args()
    import logging

    import structlog

    # A benchmark script is an application: keep the emulator's INFO events off stdout.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    out = anyio.run(main, ns)
    if ns.json:
        print(json.dumps(out))
    else:
        for key, value in out.items():
            print(f"{key:24} {value}")
    ok = out["check_connects"] == out["listening_sockets"] and out["devices_not_up"] == 0
    sys.exit(0 if ok else 1)
