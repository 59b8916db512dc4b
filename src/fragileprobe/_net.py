"""The network seam: how every fragileprobe session reaches a device.

Probes, the Guard, heartbeats, characterization and discovery open connections through a :class:`Network`
(``connect(host, port) -> Connection``). The default, :class:`SocketNetwork`, makes real full TCP connects;
``fragileprobe.testing.FakeNetwork`` serves in-memory devices in virtual time, so safety properties can be
checked exactly instead of by wall-clock races (the seam httpcore's ``MockStream`` and trio's ``MockClock``
give their tests).

The interface stays at the level of the socket API on purpose: ``receive`` raises ``anyio.EndOfStream`` at the
peer's FIN and a raw ``OSError`` (``ConnectionResetError``, ``ConnectionRefusedError``, ...) otherwise, so
``fragileprobe._translate`` (one table per operation) remains the one place where network errors are
translated into outcomes and :class:`~fragileprobe.ProbeError` (whatever the network behind it).

The end of a session, from the device's side (RFC 9293 3.6): we half-close (FIN, :meth:`Connection.send_eof`),
the device's service notices when it next reads and closes its side (its FIN reaches us as end of stream),
and only then has the device let go. :func:`linger_close` waits for exactly that, bounded, and resets the
connection if the bound passes, so the device's stack frees the connection either way.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import anyio

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

__all__ = [
    "CLOSE_DRAIN_MAX_BYTES",
    "Connection",
    "LetGo",
    "Network",
    "SocketConnection",
    "HeldSession",
    "SocketNetwork",
    "linger_close",
]

# What we read (and discard) while waiting for the device to close its side, so that our final close is a
# FIN rather than an RST (a close with unread data is answered by RST: RFC 1122 4.2.2.13, RFC 2525 2.17).
# A device still talking after 4 KiB is flooding: we stop reading and reset.
CLOSE_DRAIN_MAX_BYTES = 4096


@runtime_checkable
class Connection(Protocol):
    """One established TCP connection, as the socket API sees it.

    ``receive`` returns at least one byte, raises ``anyio.EndOfStream`` once the peer has closed its side
    and everything it sent was read, and raises ``OSError`` when the connection broke. ``send`` raises
    ``OSError``. ``send_eof`` half-closes (our FIN). ``close`` releases the connection (a FIN if nothing
    unread is pending, else an RST); ``abort`` resets it at once (RST). ``close`` and ``abort`` are
    synchronous and never raise: a cancellation can never leave a connection open.
    """

    @property
    def address(self) -> str: ...

    @property
    def port(self) -> int: ...

    async def receive(self, max_bytes: int) -> bytes: ...

    async def send(self, data: bytes) -> None: ...

    def send_eof(self) -> None: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...


@runtime_checkable
class HeldSession(Connection, Protocol):
    """A connection whose slot a device-side ledger keeps charged until the device has let go
    (``_sessions.HeldConnection``). ``end`` hands the connection to the ledger's background linger and
    returns at once; the probes call it instead of lingering themselves. It is declared here, below the
    probes, so that they can recognise a held connection without importing the ledger above them."""

    def end(self) -> None: ...


@runtime_checkable
class Network(Protocol):
    """Opens connections. ``connect`` raises ``OSError`` subclasses for refused or unreachable
    destinations and may wait for ever on a silent one (callers bound it); a cancelled ``connect`` leaves
    nothing open."""

    async def connect(self, host: str, port: int) -> Connection: ...


@dataclass(frozen=True, slots=True)
class LetGo:
    """How one session ended on the device's side (the result of :func:`linger_close`).

    Attributes:
        seen: the device's FIN or RST was seen (it let go); False: the linger bound passed first and we
            reset the connection.
        lingered_s: seconds spent waiting for it.
        drained_bytes: bytes the device still sent (and we discarded) meanwhile.
    """

    seen: bool
    lingered_s: float
    drained_bytes: int


async def linger_close(conn: Connection, linger_s: float, *, reset_on_expiry: bool = True) -> LetGo:
    """End a session the device's way: half-close, wait (at most ``linger_s``) until it closes too.

    Reading continues meanwhile (discarding at most :data:`CLOSE_DRAIN_MAX_BYTES`), because a service that
    notices our FIN only on its next read answers it then. A device that never closes within the bound, or
    floods, is reset (``reset_on_expiry``, the ledger's choice: its TCP stack then frees the connection);
    otherwise the connection is closed normally. Never raises for network errors; cancellation passes
    through, and the connection is closed whatever happens.
    """
    started = anyio.current_time()
    drained = 0
    seen = False
    try:
        try:
            conn.send_eof()
        except OSError:
            seen = True  # the connection is already broken: the device's stack has let go
            return LetGo(True, 0.0, 0)
        with anyio.move_on_after(max(linger_s, 0.0)):
            while drained < CLOSE_DRAIN_MAX_BYTES:
                try:
                    drained += len(await conn.receive(CLOSE_DRAIN_MAX_BYTES - drained))
                except (anyio.EndOfStream, OSError):
                    seen = True  # its FIN, or its RST
                    break
        return LetGo(seen, anyio.current_time() - started, drained)
    finally:
        if seen or not reset_on_expiry:
            conn.close()
        else:
            conn.abort()


class SocketConnection:
    """A :class:`Connection` over a connected non-blocking socket (the real network)."""

    __slots__ = ("_address", "_port", "sock")

    def __init__(self, sock: socket.socket, address: str, port: int) -> None:
        self.sock = sock
        self._address = address
        self._port = port

    def __repr__(self) -> str:
        return f"SocketConnection({self._address!r}, {self._port}, fd={self.sock.fileno()})"

    @property
    def address(self) -> str:
        return self._address

    @property
    def port(self) -> int:
        return self._port

    async def receive(self, max_bytes: int) -> bytes:
        while True:
            try:
                data = self.sock.recv(max_bytes)
            except BlockingIOError:
                await anyio.wait_readable(self.sock)
                continue
            if not data:
                raise anyio.EndOfStream
            return data

    async def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                sent = self.sock.send(view)
            except BlockingIOError:
                await anyio.wait_writable(self.sock)
                continue
            view = view[sent:]

    def send_eof(self) -> None:
        self.sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.sock.close()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        """anyio's socket attributes (local and remote address and port, family, the raw socket)."""
        from anyio.abc import SocketAttribute

        sock = self.sock
        return {
            SocketAttribute.family: lambda: sock.family,
            SocketAttribute.local_address: sock.getsockname,
            SocketAttribute.local_port: lambda: sock.getsockname()[1],
            SocketAttribute.remote_address: sock.getpeername,
            SocketAttribute.remote_port: lambda: sock.getpeername()[1],
            SocketAttribute.raw_socket: lambda: sock,
        }

    def abort(self) -> None:
        # SO_LINGER with a zero timeout turns close() into an RST (and skips TIME_WAIT on our side).
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


class SocketNetwork:
    """The real network: one plain non-blocking ``connect()`` per session (the kernel's full handshake).

    This skips ``anyio.connect_tcp``'s happy-eyeballs task group and asyncio's transport machinery, which
    together cost about half the connect rate on loopback and buy nothing for one literal address and a
    few bounded reads. ``host`` must be an IP literal (names are resolved, and checked, by the scope).
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return "SocketNetwork()"

    async def connect(self, host: str, port: int) -> SocketConnection:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        connected = False
        try:
            sock.setblocking(False)
            try:
                sock.connect((host, port))
            except BlockingIOError:
                await anyio.wait_writable(sock)
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    # OSError(errno, text) picks the matching subclass (ConnectionRefusedError, ...).
                    raise OSError(err, os.strerror(err)) from None
            connected = True
            return SocketConnection(sock, host, port)
        finally:
            if not connected:
                # Cancelled or failed: close here so no socket is left behind (mid-handshake this abandons
                # the SYN; the kernel answers a late SYN-ACK with RST, so the device keeps nothing).
                sock.close()


DEFAULT_NETWORK = SocketNetwork()
