"""Test tools for code built on fragileprobe: an in-memory network of fake devices, in virtual time.

::

    from fragileprobe import testing

    async def console(sock: testing.DeviceSocket) -> None:   # greets a second after the accept
        await anyio.sleep(1.0)
        await sock.send(b"login: ")
        await sock.receive_until_closed()                    # notices our close when it reads

    async def main() -> None:
        async with testing.FakeNetwork() as net:
            net.serve("127.0.0.9", 23, console)
            net.serve("127.0.0.9", 8080, testing.http_ok)
            async with fp.Guard("127.0.0.9", ceiling=2, scope=scope, network=net) as guard:
                ...
            assert net.peak_sessions("127.0.0.9") <= 2       # counted on the device's side

    testing.run_virtual(main)                                # an hour of timeouts takes milliseconds

* :func:`run_virtual` runs a coroutine on an asyncio event loop whose clock is virtual: when every task is
  waiting, time jumps straight to the next timer (the idea of trio's ``MockClock(autojump_threshold=0)``),
  so timeouts, lingers and heartbeat intervals are exact and instant. Real I/O still works (the selector is
  polled), but a loop with nothing left to run and nothing scheduled raises :class:`VirtualTimeDeadlock`.
* :class:`FakeNetwork` is a :class:`~fragileprobe._net.Network` (pass it as ``network=`` to a Guard,
  ``characterize`` or a probe). Each device is a handler coroutine per port, given a :class:`DeviceSocket`.
  The network keeps TCP's close semantics, which is what device-side accounting is about: our FIN reaches
  the device as end of stream *when it next reads*; a close with unread data, or ``abort()``, is an RST;
  a session counts on the device from its accept until the *device* closes it (its handler returns or
  calls ``close``/``abort``), or until a reset reaches it, when it next reads or writes. Unknown addresses
  drop SYNs (connects hang until the caller's timeout), unknown ports refuse.

The counts are the device's: :meth:`FakeNetwork.sessions`, :meth:`FakeNetwork.peak_sessions`, and an
``on_change`` hook called on every change, for properties such as "no session is accepted beyond the ceiling
in force".
"""

from __future__ import annotations

import asyncio
import selectors
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.lowlevel

from fragileprobe._errors import FragileProbeError

if TYPE_CHECKING:
    from types import TracebackType

    from anyio.abc import TaskGroup

__all__ = [
    "DeviceHandler",
    "DeviceSocket",
    "FakeNetwork",
    "VirtualTimeDeadlock",
    "VirtualTimeLoop",
    "http_ok",
    "run_virtual",
]

T = TypeVar("T")

# How long a virtual-time loop waits in real time for outside I/O (a worker thread finishing) before it
# calls an empty schedule a deadlock: long enough for a thread doing a small file write, short enough for a
# test to fail fast.
REAL_IDLE_WAIT_S = 2.0
# Bytes a fake connection buffers towards a reader before the writer waits (a socket's receive buffer):
# a device that never reads fills it, and the writer's send bound then applies, as on a real socket.
PIPE_BUFFER_BYTES = 65536


class VirtualTimeDeadlock(FragileProbeError, RuntimeError):
    """Raised when a virtual-time loop has no task to run, no timer and no I/O: nothing can ever happen."""


# --- virtual time ------------------------------------------------------------------------------------------


class _VirtualSelector(selectors.BaseSelector):
    """A real selector that, instead of sleeping, moves the loop's virtual clock to the next timer."""

    def __init__(self, loop: VirtualTimeLoop) -> None:
        self._real = selectors.DefaultSelector()
        self._loop = loop

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._real.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.modify(fileobj, events, data)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = self._real.select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:
            # Nothing scheduled: only outside I/O (a thread's result) can still wake the loop.
            ready = self._real.select(REAL_IDLE_WAIT_S)
            if not ready:
                raise VirtualTimeDeadlock(
                    "virtual-time loop: every task waits, no timer is set and no I/O arrived within "
                    f"{REAL_IDLE_WAIT_S:g} s of real time (a wait that can never end)"
                )
            return ready
        self._loop._advance(timeout)
        return []

    def close(self) -> None:
        self._real.close()

    def get_key(self, fileobj: Any) -> selectors.SelectorKey:
        return self._real.get_key(fileobj)

    def get_map(self) -> Any:
        return self._real.get_map()


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An asyncio event loop whose ``time()`` is virtual and jumps to the next timer when all tasks wait."""

    def __init__(self) -> None:
        self._virtual_now = 0.0
        super().__init__(selector=_VirtualSelector(self))

    def time(self) -> float:
        return self._virtual_now

    def _advance(self, seconds: float) -> None:
        self._virtual_now += max(seconds, 0.0)


def run_virtual(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Run ``fn(*args)`` with anyio on a :class:`VirtualTimeLoop`; returns its result."""
    result: T = anyio.run(fn, *args, backend="asyncio", backend_options={"loop_factory": VirtualTimeLoop})
    return result


# --- the network -------------------------------------------------------------------------------------------


class _Pipe:
    """One direction of a connection: bytes in flight towards a reader, then its FIN or a reset."""

    __slots__ = ("changed", "chunks", "eof", "reset", "size")

    def __init__(self) -> None:
        self.chunks: deque[bytes] = deque()
        self.size = 0
        self.eof = False
        self.reset = False
        self.changed = anyio.Event()

    def notify(self) -> None:
        self.changed.set()
        self.changed = anyio.Event()


class _End:
    """One end of an in-memory TCP connection (the client's :class:`_ClientConnection` or the device's
    :class:`DeviceSocket`)."""

    def __init__(self, address: str, port: int, inbound: _Pipe, outbound: _Pipe) -> None:
        self._address = address
        self._port = port
        self._in = inbound
        self._out = outbound
        self._closed = False
        self._wrote_eof = False
        self.peer: _End | None = None

    @property
    def address(self) -> str:
        return self._address

    @property
    def port(self) -> int:
        return self._port

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def unread(self) -> int:
        """Bytes the peer sent that this end has not read yet."""
        return self._in.size

    @property
    def peer_closed(self) -> bool:
        """The peer sent its FIN (seen by reading) or reset the connection."""
        return self._in.eof or self._in.reset

    async def receive(self, max_bytes: int = 65536) -> bytes:
        while True:
            if self._closed:
                raise anyio.ClosedResourceError
            pipe = self._in
            if pipe.reset:
                raise ConnectionResetError(104, "Connection reset by peer")
            if pipe.chunks:
                chunk = pipe.chunks.popleft()
                if len(chunk) > max_bytes:
                    chunk, rest = chunk[:max_bytes], chunk[max_bytes:]
                    pipe.chunks.appendleft(rest)
                pipe.size -= len(chunk)
                pipe.notify()  # room for a waiting writer
                return chunk
            if pipe.eof:
                raise anyio.EndOfStream
            await pipe.changed.wait()

    async def send(self, data: bytes) -> None:
        view = bytes(data)
        while view:
            if self._closed or self._wrote_eof:
                raise BrokenPipeError(32, "Broken pipe")
            pipe = self._out
            if pipe.reset or self._in.reset:
                raise ConnectionResetError(104, "Connection reset by peer")
            if self.peer is not None and self.peer._closed:
                # Data towards a closed socket is answered with RST (RFC 9293 3.10.7.1).
                self._in.reset = True
                self._in.notify()
                raise ConnectionResetError(104, "Connection reset by peer")
            room = PIPE_BUFFER_BYTES - pipe.size
            if room <= 0:
                await pipe.changed.wait()
                continue
            part, view = view[:room], view[room:]
            pipe.chunks.append(part)
            pipe.size += len(part)
            pipe.notify()
        await anyio.lowlevel.checkpoint()

    def send_eof(self) -> None:
        if self._closed:
            raise OSError(9, "Bad file descriptor")
        if self._in.reset:
            raise ConnectionResetError(104, "Connection reset by peer")
        if not self._wrote_eof:
            self._wrote_eof = True
            self._out.eof = True
            self._out.notify()

    def close(self) -> None:
        if self._closed:
            return
        if self._in.size and not self._in.reset:
            self.abort()  # closing with unread data: an RST (RFC 1122 4.2.2.13)
            return
        self._closed = True
        if not self._wrote_eof:
            self._wrote_eof = True
            self._out.eof = True
        self._out.notify()
        self._in.notify()
        self._on_closed()

    def abort(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._out.reset = True
        self._out.notify()
        self._in.notify()
        self._on_closed()

    def _on_closed(self) -> None:
        """Hook: the device's end counts its session off here."""


class _ClientConnection(_End):
    """Our end: a :class:`~fragileprobe._net.Connection`."""

    def __repr__(self) -> str:
        return f"FakeConnection({self._address!r}, {self._port}, closed={self._closed})"


class DeviceSocket(_End):
    """The device's end of one accepted session, given to a device handler.

    The session counts on the device until the handler returns, or calls :meth:`close` / :meth:`abort`.
    Our FIN shows as ``anyio.EndOfStream`` from :meth:`receive`, our RST as ``ConnectionResetError``: only
    when the handler reads (or writes), as on a real device.
    """

    def __init__(
        self, network: FakeNetwork, address: str, port: int, inbound: _Pipe, outbound: _Pipe
    ) -> None:
        super().__init__(address, port, inbound, outbound)
        self._network = network
        self.opened_at_s = anyio.current_time()

    def __repr__(self) -> str:
        return f"DeviceSocket({self._address!r}, {self._port}, closed={self._closed})"

    def _on_closed(self) -> None:
        self._network._session_closed(self)

    async def receive_until_closed(self, max_bytes: int = 1 << 20) -> int:
        """Read and discard until the peer closes or resets (or ``max_bytes`` were read); returns the count.

        Never raises for the peer's close or reset: the common "serve until the client goes" loop.
        """
        total = 0
        while total < max_bytes:
            try:
                total += len(await self.receive(max_bytes - total))
            except (anyio.EndOfStream, anyio.ClosedResourceError, OSError):
                break
        return total


DeviceHandler = Callable[[DeviceSocket], Awaitable[None]]


class FakeNetwork:
    """An in-memory network of fake devices (a :class:`~fragileprobe._net.Network`); an async context
    manager whose task group runs the device handlers.

    Args:
        connect_delay_s: how long a connect to a listening port takes (one round trip).
        on_change: called with ``(host, sessions, accepted)`` whenever the number of sessions a device holds
            changes; ``accepted`` is True when the change is a new session (the moment a limit is checked).
            Also settable later as the ``on_change`` attribute (a device model that wedges on its count).
    """

    def __init__(
        self, *, connect_delay_s: float = 0.0, on_change: Callable[[str, int, bool], None] | None = None
    ) -> None:
        self._handlers: dict[tuple[str, int], DeviceHandler] = {}
        self._hosts: set[str] = set()
        self._silent: set[tuple[str, int]] = set()
        self._sessions: dict[str, set[DeviceSocket]] = {}
        self._peak: dict[str, int] = {}
        self._accepts: dict[str, int] = {}
        self._connect_delay_s = connect_delay_s
        self.on_change = on_change
        self._tg: TaskGroup | None = None

    def __repr__(self) -> str:
        return f"FakeNetwork(hosts={sorted(self._hosts)})"

    async def __aenter__(self) -> FakeNetwork:
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        tg, self._tg = self._tg, None
        assert tg is not None
        tg.cancel_scope.cancel()  # the devices are switched off with the network
        # Not handed the caller's exception (see DeviceSessions.__aexit__): it propagates on its own.
        await tg.__aexit__(None, None, None)
        return None

    # --- configuration ---------------------------------------------------------------------------------

    def serve(self, host: str, port: int, handler: DeviceHandler) -> None:
        """Run ``handler`` for every session accepted on ``host:port``."""
        self._hosts.add(host)
        self._handlers[(host, port)] = handler
        self._sessions.setdefault(host, set())

    def drop(self, host: str, port: int) -> None:
        """Make ``host:port`` silent (a firewall dropping SYNs): connects to it never complete."""
        self._hosts.add(host)
        self._silent.add((host, port))
        self._sessions.setdefault(host, set())

    # --- the device's counts ---------------------------------------------------------------------------

    def sessions(self, host: str) -> int:
        """Sessions ``host`` holds now."""
        return len(self._sessions.get(host, ()))

    def peak_sessions(self, host: str) -> int:
        """The most sessions ``host`` ever held at once."""
        return self._peak.get(host, 0)

    def accepts(self, host: str) -> int:
        """Sessions ``host`` accepted in all."""
        return self._accepts.get(host, 0)

    def open_sockets(self, host: str) -> tuple[DeviceSocket, ...]:
        """The device's ends of the sessions ``host`` holds now."""
        return tuple(self._sessions.get(host, ()))

    def reset_device(self, host: str) -> None:
        """Reset every session ``host`` holds (a power cycle)."""
        for sock in list(self._sessions.get(host, ())):
            sock.abort()

    def _changed(self, host: str, *, accepted: bool) -> None:
        count = len(self._sessions[host])
        self._peak[host] = max(self._peak.get(host, 0), count)
        if self.on_change is not None:
            self.on_change(host, count, accepted)

    def _session_closed(self, sock: DeviceSocket) -> None:
        held = self._sessions.get(sock.address)
        if held is not None and sock in held:
            held.discard(sock)
            self._changed(sock.address, accepted=False)

    # --- Network ---------------------------------------------------------------------------------------

    async def connect(self, host: str, port: int) -> _ClientConnection:
        if self._tg is None:
            raise RuntimeError("use the FakeNetwork inside 'async with FakeNetwork() as net:'")
        if host not in self._hosts or (host, port) in self._silent:
            await anyio.sleep_forever()  # no SYN-ACK ever comes: the caller's timeout ends this
        handler = self._handlers.get((host, port))
        if handler is None:
            await anyio.sleep(self._connect_delay_s)
            raise ConnectionRefusedError(111, "Connection refused")
        await anyio.sleep(self._connect_delay_s)
        to_device, to_client = _Pipe(), _Pipe()
        ours = _ClientConnection(host, port, inbound=to_client, outbound=to_device)
        theirs = DeviceSocket(self, host, port, inbound=to_device, outbound=to_client)
        ours.peer, theirs.peer = theirs, ours
        self._sessions[host].add(theirs)
        self._accepts[host] = self._accepts.get(host, 0) + 1
        self._changed(host, accepted=True)
        self._tg.start_soon(self._run_handler, handler, theirs)
        return ours

    async def _run_handler(self, handler: DeviceHandler, sock: DeviceSocket) -> None:
        try:
            await handler(sock)
        except* (OSError, anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass  # the session broke under the device (also inside a handler's own task group): let go
        finally:
            sock.close()


async def http_ok(sock: DeviceSocket) -> None:
    """A minimal web server: reads one request head, answers ``200 OK`` with a short body, closes."""
    head = b""
    while b"\r\n\r\n" not in head and len(head) < 16384:
        try:
            head += await sock.receive(4096)
        except anyio.EndOfStream:
            return
    await sock.send(b"HTTP/1.0 200 OK\r\nServer: fake\r\nContent-Length: 2\r\n\r\nok")
