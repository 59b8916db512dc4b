"""Run fragileprobe in a child process: the CLI entry point, and driver scripts that a test kills by PID."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

# Bound on how long a child may take to print a line we wait for (imports plus a store open, on a loaded
# 2-core CI machine). Generous because it only bounds a failure, never slows a passing run.
LINE_TIMEOUT_S = 30.0


def fragileprobe_command() -> list[str]:
    """The ``fragileprobe`` console script of this interpreter's environment (or the same entry point)."""
    script = Path(sys.executable).parent / "fragileprobe"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from fragileprobe.cli import main; main()"]


class Child:
    """A Python child process running ``code`` with ``args``; its stdout is read line by line."""

    def __init__(self, code: str, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._selector = selectors.DefaultSelector()
        assert self.proc.stdout is not None
        self._selector.register(self.proc.stdout, selectors.EVENT_READ)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def read_line(self, timeout_s: float = LINE_TIMEOUT_S) -> str | None:
        """The next stdout line, or None at end of output; AssertionError if none comes in time."""
        assert self.proc.stdout is not None
        if not self._selector.select(timeout=timeout_s):
            raise AssertionError(f"child {self.pid} printed nothing for {timeout_s} s; so far {self.lines!r}")
        line = self.proc.stdout.readline()
        if not line:
            return None
        self.lines.append(line.rstrip("\n"))
        return self.lines[-1]

    def wait_for(self, prefix: str, timeout_s: float = LINE_TIMEOUT_S) -> str:
        """Read lines until one starts with ``prefix``; return it."""
        deadline = time.monotonic() + timeout_s
        while True:
            line = self.read_line(max(0.01, deadline - time.monotonic()))
            if line is None:
                raise AssertionError(
                    f"child {self.pid} ended before {prefix!r}: {self.lines!r}\n{self.stderr()}"
                )
            if line.startswith(prefix):
                return line

    def drain(self) -> None:
        """Read what is left of stdout (after the child ended)."""
        while self.read_line(5.0) is not None:
            pass

    def kill(self) -> int:
        """SIGKILL by PID (no cleanup runs in the child), reap it, return its exit status."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        return self.proc.wait(timeout=30)

    def wait(self, timeout_s: float = 120.0) -> int:
        return self.proc.wait(timeout=timeout_s)

    def stderr(self) -> str:
        assert self.proc.stderr is not None
        if self.proc.poll() is None:
            return ""
        return self.proc.stderr.read()[-3000:]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.kill()
        self._selector.close()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
