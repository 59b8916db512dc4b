"""Driver programs for the kill tests: each runs one fragileprobe job in a child process and prints a line
after every result it has *finished* (the store write happens before the progress callback), so a test
that SIGKILLs the child by PID knows exactly which results must have survived.

The emulated devices live in the driver process too: the tests check the store, and a killed prober takes
its devices with it, which is harmless (the next run starts them again from the same seeds).
"""

from __future__ import annotations

import textwrap

# argv: store path, fleet prefix ("127.x.y"), device count, empty count, resume ("0"/"1"), host slice
# ("a:b" of the device list, for two drivers sharing one store). Prints READY, HOST <addr> per finished
# host, then REPORT <json>.
DISCOVERY_DRIVER = textwrap.dedent(
    """
    import json, logging, sys
    import anyio, structlog
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    from fragileprobe._discovery_run import discover
    from fragileprobe._scope import Scope
    from fragileprobe._store import ProfileStore
    from fragileprobe.emulator import Fleet
    from fragileprobe.emulator._fleet import DeviceConfig, FleetConfig

    path, prefix, count, empty, resume, part = sys.argv[1:7]
    count, empty, resume = int(count), int(empty), resume == "1"
    lo, hi = (int(x) for x in part.split(":"))
    models = ("infusion-pump", "syringe-pump", "patient-monitor", "workstation")
    devices = tuple(DeviceConfig(host=f"{prefix}.{i}", model=models[i % len(models)], seed=i)
                    for i in range(1, count + 1))[lo:hi]
    empties = tuple(f"{prefix}.{i}" for i in range(count + 1, count + 1 + empty))
    config = FleetConfig(devices=devices, empty=empties if lo == 0 else (), boot_delay_s=0.05)

    def progress(p):
        print("HOST", p.host, flush=True)

    async def main():
        store = ProfileStore(path, busy_timeout_s=30)
        async with Fleet(config, control_port=None) as fleet:
            ports = sorted({b for d in fleet.devices.values() for b in d.ports.values()})
            aliases = {b: m for d in fleet.devices.values() for m, b in d.ports.items() if b != m}
            targets = [d.host for d in config.devices] + list(config.empty)
            print("READY", flush=True)
            report = await discover(
                targets, scope=Scope([f"{prefix}.0/24"]), ports=ports, port_aliases=aliases, store=store,
                resume=resume, rate_per_host=200, max_hosts_in_parallel=3, connect_timeout_s=0.5,
                banner_timeout_s=0.2, seed=1, progress=progress,
            )
        print("REPORT", json.dumps({"assets": [a.host for a in report.assets],
                                    "hosts_resumed": report.hosts_resumed,
                                    "hosts_scanned": report.hosts_scanned,
                                    "scan_id": report.scan_id}), flush=True)

    anyio.run(main)
    """
)

# argv: store path, host, resume ("0"/"1"), timings json. Prints READY, TRIAL <index> after every
# finished trial (recorded in the store first), then DONE <json>.
CHARACTERIZE_DRIVER = textwrap.dedent(
    """
    import json, logging, sys
    import anyio, structlog
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    from fragileprobe._characterize import characterize
    from fragileprobe._heartbeat import HttpHeartbeat
    from fragileprobe._recovery import emulator_recovery
    from fragileprobe._scope import Scope, Target
    from fragileprobe._store import ProfileStore
    from fragileprobe.emulator import EmulatedDevice

    path, host, resume, timings = sys.argv[1], sys.argv[2], sys.argv[3] == "1", json.loads(sys.argv[4])

    def progress(event):
        if event.kind == "trial_end":
            print("TRIAL", event.trial, flush=True)

    async def main():
        store = ProfileStore(path)
        async with EmulatedDevice(host, model="infusion-pump", seed=11, boot_delay_s=0.05) as dev:
            target = Target(host, ports=tuple(dev.ports.values()),
                            heartbeat=HttpHeartbeat(port=dev.web_port, timeout_s=0.25))
            print("READY", flush=True)
            char = await characterize(target, scope=Scope([host]), recovery=emulator_recovery(dev),
                                      store=store, model_key="kill-pump", trials=3, resume=resume,
                                      progress=progress, **timings)
        print("DONE", json.dumps({"trials": [t.index for t in char.trials], "run_id": char.run_id,
                                  "safe_ceiling": char.safe_ceiling}), flush=True)

    anyio.run(main)
    """
)
