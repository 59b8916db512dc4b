"""Run discover() and print a JSON summary: the scanner side of the network test bed.

Started inside the bed's namespace (``NetBed.run(sys.executable, this file, ...)``), so every socket it
opens stays there. Arguments: the target blocks, then ``--params JSON`` (keyword arguments of discover()).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from typing import Any

import anyio
import structlog

from fragileprobe._discovery_run import discover
from fragileprobe._scope import Scope


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("targets", nargs="+")
    parser.add_argument("--params", default="{}")
    args = parser.parse_args()
    params: dict[str, Any] = json.loads(args.params)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    started = time.monotonic()
    progress: list[dict[str, Any]] = []

    def on_progress(p: Any) -> None:
        if p.hosts_done % 512 == 0 or p.hosts_done == p.hosts_total:
            progress.append(
                {
                    "done": p.hosts_done,
                    "total": p.hosts_total,
                    "alive": p.hosts_alive,
                    "elapsed_s": round(p.elapsed_s, 2),
                    "eta_s": None if p.eta_s is None else round(p.eta_s, 2),
                }
            )

    report = anyio.run(
        lambda: discover(
            args.targets, scope=Scope(args.targets, allow_large=True), progress=on_progress, **params
        )
    )
    print(
        json.dumps(
            {
                "wall_s": time.monotonic() - started,
                "assets": {a.host: list(a.open_ports) for a in report.assets},
                "groups": {a.host: list(a.groups) for a in report.assets},
                "unresponsive": [u.host for u in report.unresponsive],
                "hosts_alive": report.hosts_alive,
                "probes_sent": report.probes_sent,
                "max_hosts_in_parallel": report.max_hosts_in_parallel,
                "global_rate": report.global_rate,
                "notes": {a.host: list(a.notes) for a in report.assets if a.notes},
                "services": {a.host: [s.to_dict() for s in a.services] for a in report.assets},
                "progress": progress,
                "report_notes": list(report.notes),
            }
        )
    )


if __name__ == "__main__":
    main()
