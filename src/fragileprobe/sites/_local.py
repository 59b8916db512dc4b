"""Throw-away Redis and PostgreSQL servers on loopback, for the tests, the benchmark and a first try.

Each server runs from the distribution's binaries in a temporary directory, listens on 127.0.0.1 on a free
high port, and is stopped by the PID this module started (never by name). Nothing is installed as a
service and nothing outside the temporary directory is written. PostgreSQL refuses to run as root, so as
root the server runs as the ``postgres`` system user (``runuser``), which owns the temporary directory.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Final, Self

from fragileprobe._errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["LocalPostgres", "LocalRedis", "ServerUnavailable", "free_port"]

# Bounds on starting and stopping a server: a cold initdb takes ~1-3 s on a slow disk, a start < 1 s.
START_TIMEOUT_S: Final = 30.0
STOP_TIMEOUT_S: Final = 15.0
_POLL_S: Final = 0.05


class ServerUnavailable(ConfigError):
    """Raised when a local server cannot be started here (binaries missing, no unprivileged user)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the kernel's choice, in its ephemeral range)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str, deadline: float) -> None:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerUnavailable(f"{what} exited with code {proc.returncode} while starting")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(_POLL_S)
    raise ServerUnavailable(f"{what} did not listen on 127.0.0.1:{port} within {START_TIMEOUT_S:g} s")


def _stop(proc: subprocess.Popen[bytes], pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    try:
        proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=STOP_TIMEOUT_S)


class LocalRedis:
    """A redis-server on 127.0.0.1:<free port> in a temporary directory.

    Args:
        binary: Path of redis-server (default: found on PATH).
        appendonly: Keep an append-only file, so queued messages survive :meth:`restart`.
    """

    def __init__(self, *, binary: str | None = None, appendonly: bool = False) -> None:
        found = binary or shutil.which("redis-server")
        if found is None:
            raise ServerUnavailable("redis-server not found (apt-get install redis-server)")
        self.binary = found
        self.appendonly = appendonly
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="fp-redis-"))
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The broker URL (``redis://127.0.0.1:<port>/0``)."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """PID of the running server, or None."""
        return self._proc.pid if self._proc is not None else None

    def start(self) -> Self:
        """Start the server and wait until it accepts connections."""
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.dir),
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--daemonize",
            "no",
            "--protected-mode",
            "yes",
            "--logfile",
            str(self.dir / "redis.log"),
        ]
        self._proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_port(self.port, self._proc, "redis-server", time.monotonic() + START_TIMEOUT_S)
        return self

    def stop(self) -> None:
        """Stop the server (SIGTERM to its PID, SIGKILL if it lingers)."""
        if self._proc is not None:
            _stop(self._proc, self._proc.pid, signal.SIGTERM)
            self._proc = None

    def restart(self) -> None:
        """Stop and start again on the same port (a broker restart)."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop and remove the temporary directory."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def _pg_bindir() -> str:
    explicit = os.environ.get("FRAGILEPROBE_PG_BIN")
    candidates = [explicit] if explicit else []
    candidates += sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]), reverse=True
    )
    for c in candidates:
        if c and os.path.exists(os.path.join(c, "initdb")):
            return c
    initdb = shutil.which("initdb")
    if initdb is not None:
        return os.path.dirname(initdb)
    raise ServerUnavailable("PostgreSQL binaries (initdb, postgres) not found (apt-get install postgresql)")


class LocalPostgres:
    """A PostgreSQL server on 127.0.0.1:<free port>, its cluster in a temporary directory, trust auth.

    Args:
        user: The database superuser created by initdb (no password: trust auth on loopback only).
        run_as: System user that runs the server when this process is root (PostgreSQL refuses root).
    """

    def __init__(self, *, user: str = "fragileprobe", run_as: str = "postgres") -> None:
        self.bindir = _pg_bindir()
        self.user = user
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="fp-pg-"))
        self.data = self.dir / "data"
        self._prefix: list[str] = []
        if os.geteuid() == 0:
            import pwd

            try:
                entry = pwd.getpwnam(run_as)
            except KeyError:
                raise ServerUnavailable(
                    f"running as root and there is no {run_as!r} user to run PostgreSQL"
                ) from None
            runuser = shutil.which("runuser")
            if runuser is None:
                raise ServerUnavailable("running as root and runuser is missing")
            os.chown(self.dir, entry.pw_uid, entry.pw_gid)
            self._prefix = [runuser, "-u", run_as, "--"]
        self._proc: subprocess.Popen[bytes] | None = None
        self._initialized = False

    def _run(self, args: Sequence[str]) -> None:
        done = subprocess.run(
            [*self._prefix, *args], capture_output=True, timeout=START_TIMEOUT_S, check=False
        )
        if done.returncode != 0:
            raise ServerUnavailable(f"{args[0]} failed: {done.stderr.decode(errors='replace')[-400:]}")

    def url(self, dbname: str = "postgres") -> str:
        """The URL of one database of this server."""
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{dbname}"

    @property
    def pid(self) -> int | None:
        """PID of the postmaster (read from its pid file), or None."""
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def start(self) -> Self:
        """initdb (once), start the postmaster, wait until it accepts connections."""
        if not self._initialized:
            self._run(
                [
                    os.path.join(self.bindir, "initdb"),
                    "-D",
                    str(self.data),
                    "-U",
                    self.user,
                    "--auth=trust",
                    "--locale=C",
                    "-E",
                    "UTF8",
                    "--no-sync",
                ]
            )
            self._initialized = True
        args = [
            *self._prefix,
            os.path.join(self.bindir, "postgres"),
            "-D",
            str(self.data),
            "-p",
            str(self.port),
            "-k",
            str(self.dir),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "max_connections=200",
            "-c",
            "shared_buffers=16MB",
        ]
        log = (self.dir / "postgres.log").open("ab")
        self._proc = subprocess.Popen(args, stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        _wait_port(self.port, self._proc, "postgres", deadline)
        while time.monotonic() < deadline:  # listening is not yet accepting logins (startup recovery)
            if self._ready():
                return self
            time.sleep(_POLL_S)
        raise ServerUnavailable(f"postgres on port {self.port} did not accept logins in time")

    def _ready(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(self.url(), connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    def create_database(self, name: str) -> str:
        """Create a database (a plain identifier) and return its URL."""
        import psycopg

        if not name.isidentifier():
            raise ConfigError(f"name: {name!r} is not a plain identifier")
        with psycopg.connect(self.url(), autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        """Fast shutdown (SIGINT to the postmaster's PID), SIGKILL if it lingers."""
        if self._proc is not None:
            pid = self.pid or self._proc.pid
            _stop(self._proc, pid, signal.SIGINT)
            self._proc = None

    def close(self) -> None:
        """Stop and remove the cluster."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
