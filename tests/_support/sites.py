"""Real servers and real agents for the site tests: a Redis and a PostgreSQL in temporary directories on
127.0.0.1 (free high ports, stopped by the PID we started), and ``fragileprobe agent`` subprocesses.

The fixtures skip, with the reason, where the binaries or the Python drivers are missing.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests._support.procs import fragileprobe_command

_db_counter = itertools.count(1)


def _need_drivers() -> None:
    pytest.importorskip("psycopg", reason="psycopg 3 not installed (pip install 'fragileprobe[sites]')")
    pytest.importorskip("celery", reason="celery not installed (pip install 'fragileprobe[sites]')")


@pytest.fixture(scope="module")
def pg_server() -> Iterator[object]:
    """A real PostgreSQL on 127.0.0.1 for this test module."""
    _need_drivers()
    from fragileprobe.sites import LocalPostgres, ServerUnavailable

    try:
        server = LocalPostgres().start()
    except ServerUnavailable as exc:
        pytest.skip(f"PostgreSQL unavailable: {exc}")
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def pg_url(pg_server: object) -> str:
    """A fresh, empty database on the module's server."""
    name = f"t{os.getpid()}_{next(_db_counter)}"
    url: str = pg_server.create_database(name)  # type: ignore[attr-defined]
    return url


@pytest.fixture(scope="module")
def redis_server() -> Iterator[object]:
    """A real Redis on 127.0.0.1 for this test module."""
    _need_drivers()
    from fragileprobe.sites import LocalRedis, ServerUnavailable

    try:
        server = LocalRedis().start()
    except ServerUnavailable as exc:
        pytest.skip(f"Redis unavailable: {exc}")
    try:
        yield server
    finally:
        server.close()


def site_prefixes(count: int) -> list[str]:
    """``count`` /24 prefixes for emulated sites: 127.<64 + pid % 64>.<250 - i>, far above what conftest's
    one-address-at-a-time allocator reaches (it starts at .0 and moves up 1 every 250 addresses) and below
    test_discovery_fleet's .255."""
    x = 64 + os.getpid() % 64
    return [f"127.{x}.{250 - i}" for i in range(count)]


class Agent:
    """One ``fragileprobe agent`` subprocess (its log in a temporary file); stopped by its own PID."""

    def __init__(self, *, site: str, broker: str, store: str, scope: str, lease_ttl_s: float = 3.0) -> None:
        self.log = Path(tempfile.mkstemp(prefix=f"fp-agent-{site}-", suffix=".log")[1])
        self._fh = self.log.open("wb")
        self.proc = subprocess.Popen(
            [
                *fragileprobe_command(),
                "agent",
                "--site",
                site,
                "--broker",
                broker,
                "--store",
                store,
                "--scope",
                scope,
                "--lease-ttl",
                str(lease_ttl_s),
                "--log-level",
                "info",
            ],
            stdout=self._fh,
            stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill(self) -> None:
        """SIGKILL: no cleanup, no goodbye (what the fault tests need)."""
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM (Celery's warm shutdown), SIGKILL if it lingers."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()
        self._fh.close()

    def text(self) -> str:
        return self.log.read_text(errors="replace")


@contextlib.contextmanager
def agents(*specs: dict[str, object]) -> Iterator[list[Agent]]:
    """Start agents; stop every one of them (by PID) on the way out."""
    started: list[Agent] = []
    try:
        for spec in specs:
            started.append(Agent(**spec))  # type: ignore[arg-type]
        yield started
    finally:
        for a in started:
            a.stop()
            with contextlib.suppress(OSError):
                a.log.unlink()


def wait_until(predicate: object, *, timeout_s: float, what: str, poll_s: float = 0.1) -> None:
    """Poll ``predicate()`` until true; AssertionError naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


async def await_until(predicate: object, *, timeout_s: float, what: str, poll_s: float = 0.1) -> None:
    """:func:`wait_until` for async tests: sleeps on the event loop (an in-process emulator keeps serving)."""
    import anyio

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await anyio.to_thread.run_sync(predicate):  # type: ignore[arg-type]
            return
        await anyio.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
