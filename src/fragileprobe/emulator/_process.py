"""Run ``fragileprobe emulate`` in a subprocess (for tests and tools that need the emulator elsewhere).

The emulator is started through the real console-script entry point, its stdout read (bounded in time)
until it reports ready, and it is stopped by PID (SIGINT, then SIGKILL if it does not exit in time).
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["EmulatorProcess", "fragileprobe_command"]

# Deadline for the emulator subprocess to print its "ready" line (imports plus binding a few listeners).
READY_TIMEOUT_S = 30.0


def fragileprobe_command() -> list[str]:
    """The installed ``fragileprobe`` console script of this interpreter's environment."""
    script = Path(sys.executable).parent / "fragileprobe"
    if script.exists():
        return [str(script)]
    # Fall back to the same entry point function when the script is not installed next to python.
    return [sys.executable, "-c", "from fragileprobe.cli import main; main()"]


class EmulatorProcess:
    """``fragileprobe emulate ...`` in a subprocess; stopped by PID with SIGINT (then SIGKILL)."""

    def __init__(self, *args: str) -> None:
        """Start ``fragileprobe emulate *args``."""
        # stderr (the log) goes to a temporary file: a pipe nobody drains would block a chatty emulator.
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [*fragileprobe_command(), "emulate", *args],
            stdout=subprocess.PIPE,
            stderr=self._stderr,
        )
        self.lines: list[str] = []
        self._stderr_text = ""

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> list[str]:
        """Read stdout lines until the "ready:" line; return them all.

        Reads the pipe's file descriptor directly (a buffered reader would hide lines from select()).
        """
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout_s
        pending = b""
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while time.monotonic() < deadline:
                if not selector.select(timeout=max(0.0, deadline - time.monotonic())):
                    continue
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                pending += chunk
                *complete, pending = pending.split(b"\n")
                for raw in complete:
                    line = raw.decode("utf-8", "replace")
                    self.lines.append(line)
                    if line.startswith("ready:"):
                        return self.lines
        self.stop()
        stderr = self.stderr_text()
        raise AssertionError(f"emulator not ready: {self.lines!r}\n{stderr[-2000:]}")

    def line_starting(self, prefix: str) -> str:
        """The first stdout line read so far that starts with ``prefix``."""
        return next(line for line in self.lines if line.startswith(prefix))

    @property
    def control_url(self) -> str:
        """The control API URL the emulator printed."""
        return self.line_starting("control ").split(" ", 1)[1]

    def stop(self, timeout_s: float = 10.0) -> int:
        """SIGINT by PID, wait; SIGKILL by PID if it does not exit. Return the exit code."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=timeout_s)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        if not self._stderr.closed:
            self._stderr_text = self.stderr_text()
            self._stderr.close()
        return self.proc.returncode

    def stderr_text(self, max_bytes: int = 1 << 20) -> str:
        """The last ``max_bytes`` the emulator wrote to stderr (its log) so far."""
        if self._stderr.closed:
            return self._stderr_text
        self._stderr.flush()
        size = self._stderr.seek(0, os.SEEK_END)
        self._stderr.seek(max(0, size - max_bytes))
        return self._stderr.read().decode("utf-8", "replace")
