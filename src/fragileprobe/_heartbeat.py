"""Heartbeats: how fragileprobe asks a device "are you still alive?".

A session heartbeat (:class:`HttpHeartbeat`, :class:`TcpHeartbeat`) opens its own short connection. The
device cannot tell it from a probe, so it counts as one of the device's N sessions: a Guard at ceiling N
keeps one place of the N for its heartbeat and gives the work N - 1 (an ICMP heartbeat,
``opens_session = False``, costs no session). Through a Guard the beat connects via the Guard's
device-side ledger (the ``network`` argument), so its session too stays counted until the device let go.

Every heartbeat returns a :class:`Beat` and never raises for a network failure; cancellation passes through.
A plug-in heartbeat implements ``beat(host)``; to be counted exactly it should accept ``network=`` and
connect through it (any ``fragileprobe`` probe takes it), and it says ``opens_session = False`` if it
opens no TCP session at all.
"""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import anyio

from fragileprobe import _validate
from fragileprobe._probes import Outcome, http_get, tcp_connect

if TYPE_CHECKING:
    from fragileprobe._net import Network

__all__ = ["DEFAULT_HEARTBEAT_TIMEOUT_S", "Beat", "Heartbeat", "HttpHeartbeat", "TcpHeartbeat"]

# Two seconds: a healthy embedded web server answers GET / within a few hundred ms even when busy; one
# that needs longer is already in trouble, which is what the watchdog wants to know.
DEFAULT_HEARTBEAT_TIMEOUT_S = 2.0


@dataclass(frozen=True, slots=True)
class Beat:
    """One heartbeat's result.

    Attributes:
        at_s: when the beat started (``anyio.current_time()``; the watchdog restamps with its own clock).
        ok: the device answered as expected.
        latency_s: seconds until the answer (or the failure).
        error: why the beat failed, else None.
        sessions_ours: sessions open on our side when the beat started, this beat not counted (None when
            nobody counts: a bare Watchdog).
        sessions_device: sessions the device held from us when the beat started, this beat not counted:
            established and not yet let go, ours or lingering (None when nobody counts).
    """

    at_s: float
    ok: bool
    latency_s: float
    error: str | None = None
    sessions_ours: int | None = None
    sessions_device: int | None = None


@runtime_checkable
class Heartbeat(Protocol):
    """The plug point for a sign of life. ``beat`` must finish within about ``timeout_s`` and not raise."""

    @property
    def port(self) -> int: ...

    @property
    def timeout_s(self) -> float: ...

    async def beat(self, host: str) -> Beat: ...


def _check_settings(owner: str, port: int, timeout_s: float) -> None:
    _validate.port(f"{owner}.port", port)
    _validate.positive(f"{owner}.timeout_s", timeout_s)


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpHeartbeat:
    """GET ``path`` on ``port``; alive when the status is ``expect_status`` (any status if None).

    The whole beat (connect, request, status line and headers) is bounded by ``timeout_s``.
    """

    port: int = 8080
    path: str = "/"
    expect_status: int | None = 200
    timeout_s: float = DEFAULT_HEARTBEAT_TIMEOUT_S

    def __post_init__(self) -> None:
        _check_settings("HttpHeartbeat", self.port, self.timeout_s)
        if not isinstance(self.path, str) or not self.path.startswith("/"):
            raise _validate.fail("HttpHeartbeat.path", "a path starting with '/'", self.path)
        if self.expect_status is not None:
            _validate.count("HttpHeartbeat.expect_status", self.expect_status, minimum=100, maximum=599)

    opens_session = True

    async def beat(self, host: str, *, network: Network | None = None) -> Beat:
        """One GET; ok when the expected status arrived within ``timeout_s``."""
        started = anyio.current_time()
        # One small body read is enough: the status line is the sign of life.
        result = await http_get(
            host,
            self.port,
            self.path,
            timeout_s=self.timeout_s,
            read_timeout_s=self.timeout_s,
            total_timeout_s=self.timeout_s,
            max_bytes=512,
            network=network,
        )
        if result.outcome is not Outcome.OPEN:
            return Beat(started, False, result.duration_s, f"{result.outcome.value}: {result.error}")
        if self.expect_status is not None and result.status != self.expect_status:
            return Beat(
                started, False, result.duration_s, f"status {result.status}, expected {self.expect_status}"
            )
        return Beat(started, True, result.duration_s, None)


@dataclass(frozen=True, slots=True)
class TcpHeartbeat:
    """A plain full connect and close on ``port``; alive when the connect succeeds within ``timeout_s``.

    Weaker than :class:`HttpHeartbeat`: many hung devices still complete the TCP handshake in the kernel.
    """

    port: int
    _: KW_ONLY
    timeout_s: float = DEFAULT_HEARTBEAT_TIMEOUT_S

    def __post_init__(self) -> None:
        _check_settings("TcpHeartbeat", self.port, self.timeout_s)

    opens_session = True

    async def beat(self, host: str, *, network: Network | None = None) -> Beat:
        """One connect and close."""
        started = anyio.current_time()
        result = await tcp_connect(host, self.port, timeout_s=self.timeout_s, network=network)
        if result.outcome is not Outcome.OPEN:
            return Beat(started, False, result.duration_s, f"{result.outcome.value}: {result.error}")
        return Beat(started, True, result.duration_s, None)
