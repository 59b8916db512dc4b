"""Hostile service kinds: devices that misbehave in the ways that hang or crash naive scanners.

Each behaviour is a service kind usable in any model (see :data:`HOSTILE_HANDLERS`), and the catalogue has
ready-made ``hostile-*`` models built from them. Every behaviour is bounded on the emulator side: memory by
flow control (a send waits while the client does not read) and fixed-size buffers, time by the service's
``idle_timeout_s`` (an "endless" behaviour ends when the client leaves or after that long).

========================  ==================================================================================
kind                      behaviour
========================  ==================================================================================
``silent``                accepts, reads and discards, never says anything (defined with the ordinary kinds)
``mute``                  accepts and never reads nor speaks; its receive buffer is shrunk so the client's
                          sends soon block (a full receive window)
``drip``                  sends its banner one byte per ``drip_interval_s``, over and over
``flood``                 sends ``flood_bytes`` of junk as fast as the client reads, then closes
``reset``                 resets the connection (RST) as soon as it is accepted
``reset-mid-banner``      sends the first half of its banner, then resets
``http-bad-status``       answers any request with a malformed status line
``http-endless-headers``  answers ``200 OK`` followed by header lines that never end
``http-endless-chunked``  answers ``200 OK`` with a chunked body whose chunks never end
========================  ==================================================================================
"""

from __future__ import annotations

import itertools
import select
import socket
from typing import TYPE_CHECKING

import anyio
from anyio.abc import SocketAttribute

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from fragileprobe.emulator._services import ServiceConn

__all__ = ["HOSTILE_HANDLERS"]

# Receive buffer of a mute session: the kernel's minimum is about 2 KiB; 4 KiB fills after a few sends.
MUTE_RCVBUF_BYTES = 4096
# How often a mute session checks whether its client has left (a non-blocking poll, no read).
_MUTE_POLL_S = 0.1
_GONE_EVENTS = getattr(select, "POLLRDHUP", 0x2000) | select.POLLHUP | select.POLLERR
# Junk block a flood repeats (64 KiB: one large send per loop, flow-controlled by the client's reads).
_JUNK = bytes(range(256)) * 256
# Endless headers: how many header lines per send, and the pause between sends. Paced so one hostile
# session cannot take a core (about 4,000 lines per second, roughly 200 KiB/s).
_HEADER_LINES_PER_SEND = 40
_ENDLESS_PAUSE_S = 0.01
# Endless chunked body: bytes per chunk (paced like the headers).
_CHUNK_BYTES = 1024
# Largest HTTP request head the hostile HTTP kinds read before answering (same cap as the real server).
_MAX_HEAD = 8192


def _deadline(conn: ServiceConn) -> float:
    return anyio.current_time() + conn.spec.idle_timeout_s


async def _read_request(conn: ServiceConn) -> None:
    """Read until the end of an HTTP request head (or the cap); the hostile answer follows regardless."""
    head = b""
    while b"\r\n\r\n" not in head and b"\n\n" not in head and len(head) <= _MAX_HEAD:
        head += await conn.receive()


def _peer_gone(raw: socket.socket) -> bool:
    """Whether the peer shut down or reset, without reading a byte (poll for POLLRDHUP/POLLHUP/POLLERR).

    POLLRDHUP (Linux) reports the peer's FIN even while unread data is queued, which a zero-byte read
    could not tell us without consuming that data.
    """
    poller = select.poll()
    poller.register(raw.fileno(), _GONE_EVENTS)
    return any(events & _GONE_EVENTS for _fd, events in poller.poll(0))


async def _mute(conn: ServiceConn) -> None:
    raw = conn.stream.extra(SocketAttribute.raw_socket)
    try:
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, MUTE_RCVBUF_BYTES)
    except OSError:
        return  # the peer already left: nothing to starve
    # Never read: the client's data piles up in the kernel until its window is full. The session still
    # ends when the client leaves (so it stops counting towards the device's load) or at the idle timeout.
    deadline = _deadline(conn)
    while anyio.current_time() < deadline:
        if _peer_gone(raw):
            return
        await anyio.sleep(min(_MUTE_POLL_S, max(0.0, deadline - anyio.current_time())))


async def _drip(conn: ServiceConn) -> None:
    deadline = _deadline(conn)
    for byte in itertools.cycle(conn.banner or b"."):
        if anyio.current_time() >= deadline:
            return
        await conn.send(bytes([byte]), delay=False)
        await anyio.sleep(conn.spec.drip_interval_s)


async def _flood(conn: ServiceConn) -> None:
    remaining = conn.spec.flood_bytes
    while remaining > 0:
        block = _JUNK[: min(len(_JUNK), remaining)]
        await conn.send(block, delay=False)
        remaining -= len(block)


async def _reset(conn: ServiceConn) -> None:
    conn.abort()


async def _reset_mid_banner(conn: ServiceConn) -> None:
    banner = conn.banner
    await conn.send(banner[: max(1, len(banner) // 2)])
    # Give the half banner time to leave before the RST, so the client really sees "half, then reset".
    await anyio.sleep(0.05)
    conn.abort()


def _server(conn: ServiceConn) -> bytes:
    server = conn.server_header or "thttpd/2.25b"
    return server.encode("latin-1", "replace")


async def _http_bad_status(conn: ServiceConn) -> None:
    await _read_request(conn)
    await conn.send(
        b"HTTP/1.1 OK200 maybe\r\nServer: " + _server(conn) + b"\r\nContent-Length: 5\r\n\r\nhello"
    )


async def _http_endless_headers(conn: ServiceConn) -> None:
    await _read_request(conn)
    await conn.send(b"HTTP/1.1 200 OK\r\nServer: " + _server(conn) + b"\r\n")
    deadline = _deadline(conn)
    for n in itertools.count():
        if anyio.current_time() >= deadline:
            return
        lines = b"".join(
            b"X-Filler-%d: %s\r\n" % (n * _HEADER_LINES_PER_SEND + i, b"a" * 32)
            for i in range(_HEADER_LINES_PER_SEND)
        )
        await conn.send(lines, delay=False)
        await anyio.sleep(_ENDLESS_PAUSE_S)


async def _http_endless_chunked(conn: ServiceConn) -> None:
    await _read_request(conn)
    await conn.send(
        b"HTTP/1.1 200 OK\r\nServer: " + _server(conn) + b"\r\nContent-Type: text/plain\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b"%x\r\n%s\r\n" % (_CHUNK_BYTES, b"z" * _CHUNK_BYTES)
    deadline = _deadline(conn)
    while anyio.current_time() < deadline:
        await conn.send(chunk, delay=False)
        await anyio.sleep(_ENDLESS_PAUSE_S)


HOSTILE_HANDLERS: dict[str, Callable[[ServiceConn], Awaitable[None]]] = {
    "mute": _mute,
    "drip": _drip,
    "flood": _flood,
    "reset": _reset,
    "reset-mid-banner": _reset_mid_banner,
    "http-bad-status": _http_bad_status,
    "http-endless-headers": _http_endless_headers,
    "http-endless-chunked": _http_endless_chunked,
}
