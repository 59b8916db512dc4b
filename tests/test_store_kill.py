"""kill -9 in the middle of a characterization: every finished trial survives, resume does not repeat them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from typing import TYPE_CHECKING, Any

import anyio
from structlog.testing import capture_logs

from _support.timings import FAST_CHARACTERIZE
from fragileprobe._characterize import ProgressEvent, characterize
from fragileprobe._heartbeat import HttpHeartbeat
from fragileprobe._recovery import emulator_recovery
from fragileprobe._scope import Scope, Target
from fragileprobe._store import ProfileStore
from fragileprobe.emulator import EmulatedDevice

if TYPE_CHECKING:
    from pathlib import Path

TIMINGS: dict[str, Any] = {**FAST_CHARACTERIZE, "dwell_s": 0.25}

# The prober: an emulated pump in its own process, characterized into the store. It prints a line after
# every finished trial (the store write happens before the progress event), and never exits by itself
# before it is killed: after the run it sleeps.
_PROBER = textwrap.dedent(
    """
    import sys, time, anyio, logging, structlog
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    from fragileprobe._characterize import characterize
    from fragileprobe._heartbeat import HttpHeartbeat
    from fragileprobe._recovery import emulator_recovery
    from fragileprobe._scope import Scope, Target
    from fragileprobe._store import ProfileStore
    from fragileprobe.emulator import EmulatedDevice
    import json
    path, host, timings = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])

    def progress(event):
        if event.kind == "trial_end":
            print("TRIAL_END", event.trial, flush=True)
        if event.kind == "level_start":
            print("LEVEL_START", event.trial, event.level, flush=True)

    async def main():
        store = ProfileStore(path)
        async with EmulatedDevice(host, model="infusion-pump", seed=3, boot_delay_s=0.05) as dev:
            target = Target(host, ports=tuple(dev.ports.values()),
                            heartbeat=HttpHeartbeat(port=dev.web_port, timeout_s=0.25))
            await characterize(target, scope=Scope([host]), recovery=emulator_recovery(dev), store=store,
                               model_key="story-pump", trials=3, progress=progress, **timings)
            print("DONE", flush=True)
            await anyio.sleep(60)

    anyio.run(main)
    """
)


def _run_prober_until_killed(path: Path, host: str) -> tuple[int | None, int, str]:
    """Start the prober, SIGKILL it (by PID) once a level of trial 2 is under load; return what happened."""
    killed_in_trial = None
    argv = [sys.executable, "-c", _PROBER, str(path), host, json.dumps(TIMINGS)]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            deadline = time.monotonic() + 60
            finished = 0
            while time.monotonic() < deadline:
                line = proc.stdout.readline()
                if not line:
                    break
                if line.startswith("TRIAL_END"):
                    finished += 1
                if line.startswith("LEVEL_START") and finished >= 1:
                    # In the middle of trial 2 (a level is under load right now): kill -9, no cleanup at all.
                    killed_in_trial = int(line.split()[1])
                    time.sleep(0.05)
                    os.kill(proc.pid, signal.SIGKILL)
                    break
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            _, err = proc.communicate(timeout=10)
    return killed_in_trial, proc.returncode, err


async def test_sigkill_mid_run_keeps_finished_trials_and_resume_completes(
    loopback_host: str, tmp_path: Path
) -> None:
    path = tmp_path / "profiles.db"
    killed_in_trial, returncode, err = await anyio.to_thread.run_sync(
        _run_prober_until_killed, path, loopback_host
    )
    assert killed_in_trial == 1, err
    assert returncode == -signal.SIGKILL

    with ProfileStore(path) as store:  # opens cleanly after the kill
        row = store.unfinished_run(host=loopback_host, model_key="story-pump")
        assert row is not None
        stored = row.trials
    assert [t.index for t in stored] == [0]
    assert all(t.complete for t in stored)

    # The pump comes back (a new process: same address and ports), and the run is resumed.
    events: list[ProgressEvent] = []
    with ProfileStore(path) as store:
        async with EmulatedDevice(loopback_host, model="infusion-pump", seed=4, boot_delay_s=0.05) as dev:
            target = Target(
                loopback_host,
                ports=tuple(dev.ports.values()),
                heartbeat=HttpHeartbeat(port=dev.web_port, timeout_s=0.25),
            )
            with capture_logs():
                char = await characterize(
                    target,
                    scope=Scope([loopback_host]),
                    recovery=emulator_recovery(dev),
                    store=store,
                    model_key="story-pump",
                    trials=3,
                    resume=True,
                    progress=events.append,
                    **TIMINGS,
                )
        assert char.run_id == row.run_id
        assert [t.index for t in char.trials] == [0, 1, 2]
        assert char.trials[0] == stored[0]  # the finished trial was kept, not repeated
        assert {e.trial for e in events if e.kind == "level_start"} == {1, 2}
        assert store.unfinished_run(host=loopback_host, model_key="story-pump") is None
        assert store.ceiling_for("story-pump") == char.safe_ceiling
        assert char.failed_at is not None
        assert char.safe_ceiling == char.failed_at - 3
