"""Full-connect probes with bounded reads: ``tcp_connect``, ``grab_banner``, ``http_get``, ``open_stream``.

The probes are built from three lower pieces, each its own module:

* :mod:`fragileprobe._results`: the records (:class:`Outcome`, :class:`Phase`, :class:`ProbeResult`,
  :class:`HttpResult`) and the table of outcomes;
* :mod:`fragileprobe._translate`: the one table that turns ``OSError`` and anyio's stream errors into an
  :class:`Outcome` on a result (the probe functions never raise for a network failure), or into
  :class:`~fragileprobe.ProbeError` subclasses (``raise ... from exc``) for callers that want a stream
  (:func:`open_stream`). Nothing above this layer sees a raw ``OSError``;
* :mod:`fragileprobe._http`: the sans-IO HTTP response parser that :func:`http_get` feeds.

This module does the I/O: connect, bounded reads, graceful close. Its rules, and why:

* Full TCP connects only (the kernel's three-way handshake through an ordinary socket), never a half-open
  SYN: a half-open scan leaves embedded TCP stacks with dangling half-open entries, the classic way to wedge
  a fragile device.
* Graceful close: we half-close (FIN), then wait briefly for the device to close its side, reading (and
  discarding) at most a few KiB meanwhile; only then is the socket closed. The session therefore ends, and
  its limiter slot is freed, when the device has let go of it, not merely when we did. When a peer sent more
  than that (a flood), the kernel answers the close with RST instead (RFC 1122 4.2.2.13, RFC 2525); we accept
  that rather than drain an unbounded stream from the device.
* Every read is bounded in bytes (named caps below and in :mod:`~fragileprobe._http`) and in time, twice:
  each read waits at most ``read_timeout_s``, and the whole probe ends by ``total_timeout_s`` after it
  started, so a peer that drips one byte a second cannot stretch a probe past its bound.
* A failed result carries its :class:`Phase`: ``CONNECT`` when the connect itself failed (timed out,
  refused, unreachable), ``EXCHANGE`` when it failed after the connection was up.

The records (:mod:`fragileprobe._results`) and the HTTP bounds are re-exported here; the parser's own names
are imported from :mod:`fragileprobe._http`.
"""

from __future__ import annotations

import ipaddress
import re
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import structlog

from fragileprobe import _validate
from fragileprobe._errors import ConfigError, FragileProbeError, ProbeTimeoutError
from fragileprobe._http import (
    HTTP_BODY_MAX_BYTES,
    HTTP_BODY_MAX_BYTES_CAP,
    HTTP_MAX_HEAD_BYTES,
    HTTP_MAX_HEADERS,
    ResponseParser,
)
from fragileprobe._net import DEFAULT_NETWORK, HeldSession, linger_close
from fragileprobe._results import HttpResult, Outcome, Phase, ProbeKind, ProbeResult
from fragileprobe._translate import Operation, describe, hostport, probe_error, translate

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping

    from fragileprobe._net import Connection, Network
    from fragileprobe._scope import Scope

__all__ = [
    "BANNER_MAX_BYTES",
    "BANNER_MAX_BYTES_CAP",
    "DEFAULT_CONNECT_TIMEOUT_S",
    "DEFAULT_READ_TIMEOUT_S",
    "HTTP_BODY_MAX_BYTES",
    "HTTP_MAX_HEADERS",
    "HTTP_MAX_HEAD_BYTES",
    "HttpResult",
    "Outcome",
    "Phase",
    "ProbeKind",
    "ProbeResult",
    "ProbeStream",
    "grab_banner",
    "http_get",
    "open_stream",
    "tcp_connect",
]

log = structlog.get_logger(__name__)

# Time bounds. 2 s covers a slow embedded stack on a congested ward network (typical LAN RTT is < 5 ms;
# devices answering their banner take 0.1-1 s) while keeping a silent port cheap.
DEFAULT_CONNECT_TIMEOUT_S = 2.0
DEFAULT_READ_TIMEOUT_S = 2.0
# Bound on one send() of a ProbeStream: a device that takes in nothing for this long is not reading (its
# receive window is full) and the send would otherwise block for ever. A scanner check sends a few KiB,
# which the kernel buffers at once; 10 s is far beyond any healthy device's pause.
DEFAULT_SEND_TIMEOUT_S = 10.0

# Byte bounds (the HTTP ones live with the parser, in fragileprobe._http).
# A service banner is one line (SSH: at most 255 bytes by RFC 4253 4.2; FTP/SMTP greetings a few lines).
BANNER_MAX_BYTES = 1024
# Upper limit a caller may ask for: enough for any multi-line greeting, small enough to stay harmless.
BANNER_MAX_BYTES_CAP = 65536
# Bytes a caller may send to wake a service before reading its banner (a CRLF, a short command).
BANNER_SEND_MAX_BYTES = 1024
# A device writes its banner in one go; once bytes arrived, a 0.25 s pause means it is done (an 8-hop
# hospital WAN adds < 50 ms between segments of one write).
BANNER_SETTLE_S = 0.25
# After our half-close, how long to wait for the device to close its side: its service loop notices
# our FIN within milliseconds when healthy (the emulated pump: < 20 ms); a device that never closes then
# costs at most this much. Always within the probe's overall deadline.
CLOSE_WAIT_S = 0.25
# Bytes asked from the socket per receive call.
_RECEIVE_CHUNK_BYTES = 4096
# Floor for a send bounded by what is left of the deadline: anyio.fail_after(0) would fail before trying.
_MIN_SEND_WINDOW_S = 0.001

_USER_AGENT = "fragileprobe/0.1 (gentle asset probe; full connect, one request)"


# --- validation (thin wrappers over fragileprobe._validate; the Guard calls them too) --------------------


def _check_port(port: int) -> int:
    return _validate.port("port", port)


def _check_seconds(name: str, value: float) -> float:
    return _validate.positive(name, value)


def _check_bytes(name: str, value: int, cap: int) -> int:
    return _validate.count(name, value, minimum=1, maximum=cap)


# File descriptors left free for what is not a probe socket: the heartbeat's socket, the store, log files,
# the event loop's selector and self-pipe, worker threads; 64 leaves room for all of them.
FD_HEADROOM = 64


def check_socket_budget(sockets: int, what: str) -> None:
    """Raise ConfigError if ``sockets`` sockets at once cannot fit in this process's file-descriptor limit.

    Past the limit every new socket fails with EMFILE: probes would report closed ports, and a heartbeat
    that cannot open its socket looks exactly like a device that went down. Better to refuse up front.

    Args:
        sockets: Sockets the caller may hold at once.
        what: The setting that asks for them, for the message.

    Raises:
        ConfigError: ``sockets`` plus :data:`FD_HEADROOM` exceeds the soft ``RLIMIT_NOFILE``.
    """
    try:
        import resource
    except ImportError:  # pragma: no cover - not on POSIX: no RLIMIT_NOFILE to consult
        return
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and sockets + FD_HEADROOM > soft:
        raise ConfigError(
            f"{what}: needs up to {sockets} sockets at once, but this process may open only {soft} files "
            f"(ulimit -n; {FD_HEADROOM} are kept for everything else): raise the limit or ask for fewer"
        )


def _address(host: str, scope: Scope | None) -> str:
    """The IP literal to connect to: checked (and resolved) by ``scope``, else ``host`` must be a literal.

    Without a scope a name would be resolved by a blocking ``getaddrinfo`` inside ``connect()``: a DNS query
    nobody authorized, outside every time bound. So names need a scope, which resolves them up front.
    """
    if scope is not None:
        return scope.check(host)
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(
            f"host {host!r} is not an IP address; pass scope= to resolve (and check) a host name",
            field="host",
        ) from None
    # One identity per device (as Scope.check gives): ::ffff:a.b.c.d is the IPv4 host a.b.c.d.
    mapped = addr.ipv4_mapped if isinstance(addr, ipaddress.IPv6Address) else None
    return host if mapped is None else str(mapped)


_hostport = hostport


# --- connect / close ------------------------------------------------------------------------------------


async def _end(conn: Connection, deadline: float) -> None:
    """End a probe's session gracefully.

    Under a device-side ledger (a :class:`~fragileprobe._sessions.HeldConnection`: the Guard, discovery,
    characterization) the ledger lingers in the background until the device lets go and keeps the slot
    charged meanwhile. An unguarded probe lingers here, at most :data:`CLOSE_WAIT_S` and within its own
    deadline, so that its duration covers the device's close.
    """
    if isinstance(conn, HeldSession):
        conn.end()
        return
    wait = min(CLOSE_WAIT_S, deadline - anyio.current_time())
    if wait > 0:
        await linger_close(conn, wait, reset_on_expiry=False)
    conn.close()


class ProbeStream(anyio.abc.ByteStream):
    """A byte stream to one device whose errors are fragileprobe's own.

    ``receive``/``send`` raise :class:`~fragileprobe.ProbeResetError` or :class:`~fragileprobe.ProbeError`
    (chained from the OS error) instead of ``OSError``; ``anyio.EndOfStream`` (the peer closed cleanly)
    passes through as the stream protocol defines.

    Each ``send`` is bounded by ``send_timeout_s`` (settable; default :data:`DEFAULT_SEND_TIMEOUT_S`): a
    device that accepted the connection but never reads fills its receive window, and the send then ends
    with :class:`~fragileprobe.ProbeTimeoutError` instead of blocking for ever (part of ``item`` may have
    been sent: close the stream). Reads are the caller's to bound (``anyio.move_on_after``).
    """

    def __init__(
        self,
        conn: Connection,
        host: str,
        port: int,
        *,
        send_timeout_s: float = DEFAULT_SEND_TIMEOUT_S,
    ) -> None:
        self._conn = conn
        self.host = host
        self.port = port
        self.send_timeout_s = _validate.positive("send_timeout_s", send_timeout_s)
        self._closed = False

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if self._closed:
            raise anyio.ClosedResourceError
        try:
            return await self._conn.receive(max_bytes)
        except OSError as exc:
            raise probe_error(Operation.READ, exc, self.host, self.port) from exc

    async def send(self, item: bytes) -> None:
        if self._closed:
            raise anyio.ClosedResourceError
        try:
            with anyio.fail_after(self.send_timeout_s):
                await self._conn.send(item)
        except TimeoutError as exc:  # before OSError: TimeoutError is one
            raise ProbeTimeoutError(
                f"send to {hostport(self.host, self.port)} timed out after {self.send_timeout_s:g} s: "
                "the device is not reading (its receive window is full)"
            ) from exc
        except OSError as exc:
            raise probe_error(Operation.WRITE, exc, self.host, self.port) from exc

    async def send_eof(self) -> None:
        try:
            self._conn.send_eof()
        except OSError as exc:
            raise probe_error(Operation.WRITE, exc, self.host, self.port, verb="shut down") from exc

    async def aclose(self) -> None:
        """Close gracefully: half-close and wait for the device's FIN (see the module docstring).

        Through a Guard the wait happens in the background with the slot still charged, and this returns
        at once; unguarded, it waits here for at most :data:`CLOSE_WAIT_S`.
        """
        if self._closed:
            return
        self._closed = True
        if isinstance(self._conn, HeldSession):
            self._conn.end()
            return
        with anyio.CancelScope(shield=True):
            await _end(self._conn, anyio.current_time() + CLOSE_WAIT_S)

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        """The connection's typed attributes (anyio's ``SocketAttribute`` for a real socket)."""
        extra: Mapping[Any, Callable[[], Any]] = getattr(self._conn, "extra_attributes", {})
        return extra

    async def abort(self) -> None:
        """End the session without waiting here (used when the work was cancelled or failed).

        Through a Guard the device-side accounting is the same as :meth:`aclose`'s (the slot stays charged
        until the device has let go); unguarded, the socket is closed at once.
        """
        if self._closed:
            return
        self._closed = True
        self._conn.close()


async def open_stream(
    host: str,
    port: int,
    *,
    timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
    scope: Scope | None = None,
    logger: Any = None,
    network: Network | None = None,
) -> ProbeStream:
    """Open a full TCP connection and return it as a :class:`ProbeStream` (the caller closes it).

    Args:
        host: IP address (a name is allowed only together with ``scope``, which resolves it).
        port: TCP port.
        timeout_s: connect time bound.
        scope: when given, the host is checked (and resolved) first; nothing is sent if it is outside.
        logger: a structlog logger to emit ``probe.connect`` on (default: this module's).
        network: how to connect (default: real sockets; a Guard passes its device-side ledger).

    Raises:
        ScopeError: ``host`` outside ``scope``.
        ProbeTimeoutError, ProbeRefusedError, ProbeResetError, ProbeError: the connect failed.
    """
    _validate.port("port", port)
    timeout_s = _validate.positive("timeout_s", timeout_s)
    address = _address(host, scope)
    (logger or log).debug("probe.connect", host=address, port=port, probe="stream")
    try:
        with anyio.fail_after(timeout_s):
            conn = await (network or DEFAULT_NETWORK).connect(address, port)
    except OSError as exc:
        raise probe_error(Operation.CONNECT, exc, address, port, timeout_s=timeout_s) from exc
    return ProbeStream(conn, address, port)


# --- bounded reading ------------------------------------------------------------------------------------


class _Stop(Exception):
    """Internal: reading ended early (deadline, per-read timeout, byte cap); ``reason`` says which."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Reader:
    """Reads from one stream, bounded per read and by an overall deadline; :meth:`fill` also by a byte cap."""

    __slots__ = ("buf", "deadline", "eof", "max_bytes", "read_timeout_s", "stream")

    def __init__(
        self, stream: Connection, *, deadline: float, read_timeout_s: float, max_bytes: int = 0
    ) -> None:
        self.stream = stream
        self.deadline = deadline
        self.read_timeout_s = read_timeout_s
        self.max_bytes = max_bytes
        self.buf = bytearray()
        self.eof = False

    async def receive(self, max_bytes: int) -> bytes:
        """One read of at most ``max_bytes`` (and :data:`_RECEIVE_CHUNK_BYTES`); ``b""`` at end of stream.

        Raises:
            _Stop: a read waited ``read_timeout_s`` ("idle"), or the overall deadline passed ("deadline").
            anyio.BrokenResourceError, OSError: the connection broke (translated by the caller).
        """
        if self.eof:
            return b""
        remaining = self.deadline - anyio.current_time()
        if remaining <= 0:
            raise _Stop("deadline")
        wait = min(self.read_timeout_s, remaining)
        with anyio.move_on_after(wait):
            try:
                return await self.stream.receive(min(_RECEIVE_CHUNK_BYTES, max_bytes))
            except anyio.EndOfStream:
                self.eof = True
                return b""
        raise _Stop("deadline" if wait < self.read_timeout_s else "idle")

    async def fill(self) -> bool:
        """Read one chunk into :attr:`buf`. Returns False at end of stream.

        Raises:
            _Stop: the byte cap is reached ("cap"), or as :meth:`receive`.
        """
        room = self.max_bytes - len(self.buf)
        if room <= 0 and not self.eof:
            raise _Stop("cap")
        chunk = await self.receive(room)
        self.buf += chunk
        return bool(chunk)


# --- the probe skeleton: connect, exchange, close, record -------------------------------------------------


async def _probe(
    kind: str,
    host: str,
    port: int,
    *,
    timeout_s: float,
    total_timeout_s: float,
    scope: Scope | None,
    logger: Any,
    session: Callable[[Connection, float], Awaitable[dict[str, Any]]] | None,
    network: Network | None = None,
    result_type: type[ProbeResult] = ProbeResult,
) -> Any:
    """Connect, run ``session`` (which returns result fields), close, and build the record."""
    _validate.port("port", port)
    address = _address(host, scope)
    logger = logger or log
    started = anyio.current_time()
    connect_s = min(timeout_s, total_timeout_s)
    logger.debug("probe.connect", host=address, port=port, probe=kind)
    try:
        with anyio.fail_after(connect_s):
            conn = await (network or DEFAULT_NETWORK).connect(address, port)
    except OSError as exc:
        latency_s = anyio.current_time() - started
        fields = _connect_failed(exc, connect_s)
    else:
        latency_s = anyio.current_time() - started
        where = {"host": address, "port": port, "probe": kind}
        fields = await _exchange(conn, session, started + total_timeout_s, logger, where)
    result = result_type(
        host=address,
        port=port,
        latency_s=latency_s,
        started_at_s=started,
        duration_s=anyio.current_time() - started,
        **fields,
    )
    logger.debug(
        "probe.closed",
        host=address,
        port=port,
        probe=kind,
        outcome=result.outcome.value,
        latency_s=round(latency_s, 6),
        bytes_read=len(result.data),
        error=result.error,
    )
    return result


def _connect_failed(exc: OSError, connect_s: float) -> dict[str, Any]:
    """The result fields of a connect that failed (phase CONNECT)."""
    found = translate(Operation.CONNECT, exc)
    error = f"connect timed out after {connect_s:g} s" if found.outcome is Outcome.TIMEOUT else describe(exc)
    return {"outcome": found.outcome, "phase": found.phase, "data": b"", "error": error}


async def _exchange(
    conn: Connection,
    session: Callable[[Connection, float], Awaitable[dict[str, Any]]] | None,
    deadline: float,
    logger: Any,
    where: dict[str, Any],
) -> dict[str, Any]:
    """Run ``session`` on an established connection and end it; the result fields (a failure: EXCHANGE)."""
    try:
        fields: dict[str, Any] = {"data": b"", "error": None, "outcome": Outcome.OPEN}
        if session is not None:
            fields.update(await _run_session(conn, session, deadline, logger, where))
        if fields["outcome"] is not Outcome.RESET:
            await _end(conn, deadline)
    finally:
        # Synchronous, so a cancellation cannot leave the socket open; under a ledger this hands the
        # connection over to its linger instead (a no-op when _end already did).
        conn.close()
    if fields["outcome"] is not Outcome.OPEN:
        fields.setdefault("phase", Phase.EXCHANGE)
    return fields


async def _run_session(
    conn: Connection,
    session: Callable[[Connection, float], Awaitable[dict[str, Any]]],
    deadline: float,
    logger: Any,
    where: dict[str, Any],
) -> dict[str, Any]:
    try:
        return await session(conn, deadline)
    except (OSError, anyio.BrokenResourceError) as exc:
        found = translate(Operation.READ, exc)
        return {"outcome": found.outcome, "phase": found.phase, "error": describe(exc)}
    except FragileProbeError:
        raise
    except Exception as exc:
        # Last resort: a parser bug must not end a whole scan; the device's answer becomes a result
        # about that host, and the bug is logged with its traceback to be fixed.
        logger.exception("probe.internal_error", **where)
        return {
            "outcome": Outcome.PROTOCOL_ERROR,
            "error": f"could not interpret the answer ({type(exc).__name__}: {exc})",
        }


def _total(timeout_s: float, read_timeout_s: float, total_timeout_s: float | None) -> float:
    if total_timeout_s is None:
        return timeout_s + read_timeout_s
    return _validate.positive("total_timeout_s", total_timeout_s)


async def tcp_connect(
    host: str,
    port: int,
    *,
    timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
    scope: Scope | None = None,
    logger: Any = None,
    network: Network | None = None,
) -> ProbeResult:
    """Open a full TCP connection and close it gracefully at once; reads nothing.

    Args:
        host: IP address (a host name only together with ``scope``).
        port: TCP port.
        timeout_s: connect time bound.
        scope: when given, checked before anything is sent (raises ScopeError).
        logger: structlog logger for ``probe.connect`` / ``probe.closed`` (default: this module's).
        network: how to connect (default: real sockets; a Guard passes its device-side ledger).

    Returns:
        A :class:`ProbeResult`: OPEN, CLOSED, TIMEOUT, RESET or UNREACHABLE; never raises for network errors.
    """
    timeout_s = _validate.positive("timeout_s", timeout_s)
    result: ProbeResult = await _probe(
        "tcp_connect",
        host,
        port,
        timeout_s=timeout_s,
        total_timeout_s=timeout_s,
        scope=scope,
        logger=logger,
        session=None,
        network=network,
    )
    return result


# Interactive prompts end a banner without a newline ("login: ", "Password: ", "> ", "# ").
_PROMPT_ENDINGS = (b": ", b"> ", b"# ", b"$ ", b"? ")


def _banner_complete(buf: bytes | bytearray) -> bool:
    """A banner is complete at a line end (FTP/SMTP ``220-`` continuations excepted) or at a prompt."""
    if buf.endswith(_PROMPT_ENDINGS):
        return True
    if not buf.endswith(b"\n"):
        return False
    last = bytes(buf).rstrip(b"\r\n").rsplit(b"\n", 1)[-1]
    return not re.match(rb"^\d{3}-", last)


async def grab_banner(
    host: str,
    port: int,
    *,
    timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
    total_timeout_s: float | None = None,
    max_bytes: int = BANNER_MAX_BYTES,
    send: bytes | None = None,
    settle_s: float = BANNER_SETTLE_S,
    scope: Scope | None = None,
    logger: Any = None,
    network: Network | None = None,
) -> ProbeResult:
    """Connect, optionally send a few bytes, read what the service says first, close.

    Reading stops at the first complete line (FTP/SMTP ``ddd-`` continuation lines excepted) or prompt
    (``login: ``), at end of stream, at ``max_bytes`` (``truncated``), when the peer pauses
    (``read_timeout_s`` before the first byte, ``settle_s`` once bytes have arrived), or at the overall
    deadline. A silent open port is OPEN with empty ``data``.

    Args:
        host: IP address (a host name only together with ``scope``).
        port: TCP port.
        timeout_s: connect time bound.
        read_timeout_s: bound on each read.
        total_timeout_s: bound on the whole probe (default ``timeout_s + read_timeout_s``).
        max_bytes: byte cap on the banner (at most :data:`BANNER_MAX_BYTES_CAP`).
        send: bytes to send after connecting (e.g. ``b"\\r\\n"`` to wake a console), at most
            :data:`BANNER_SEND_MAX_BYTES`.
        settle_s: once some banner bytes arrived, a pause this long ends the banner.
        scope: when given, checked before anything is sent (raises ScopeError).
        logger: structlog logger for the probe events.
        network: how to connect (default: real sockets; a Guard passes its device-side ledger).

    Returns:
        A :class:`ProbeResult`; never raises for network errors.
    """
    timeout_s = _validate.positive("timeout_s", timeout_s)
    read_timeout_s = _validate.positive("read_timeout_s", read_timeout_s)
    total = _total(timeout_s, read_timeout_s, total_timeout_s)
    max_bytes = _validate.count("max_bytes", max_bytes, minimum=1, maximum=BANNER_MAX_BYTES_CAP)
    settle_s = _validate.positive("settle_s", settle_s)
    if send is not None and (not isinstance(send, bytes) or len(send) > BANNER_SEND_MAX_BYTES):
        # Not _validate.fail: the value is quoted cut short, a 2 KiB repr would drown the message.
        what = f"bytes of at most {BANNER_SEND_MAX_BYTES}"
        raise ConfigError(f"send: must be {what}, got {send!r:.60}", field="send")

    async def session(stream: Connection, deadline: float) -> dict[str, Any]:
        reader = _Reader(stream, deadline=deadline, read_timeout_s=read_timeout_s, max_bytes=max_bytes)
        return await _read_banner(reader, send, settle_s=settle_s, total=total)

    result: ProbeResult = await _probe(
        "grab_banner",
        host,
        port,
        timeout_s=timeout_s,
        total_timeout_s=total,
        scope=scope,
        logger=logger,
        session=session,
        network=network,
    )
    return result


async def _read_banner(
    reader: _Reader, send: bytes | None, *, settle_s: float, total: float
) -> dict[str, Any]:
    """Send ``send`` (if any), then read until the banner is complete; the result's fields."""
    fields: dict[str, Any] = {}
    read_timeout_s = reader.read_timeout_s
    try:
        if send:
            with anyio.fail_after(max(reader.deadline - anyio.current_time(), _MIN_SEND_WINDOW_S)):
                await reader.stream.send(send)
        while not _banner_complete(reader.buf) and await reader.fill():
            # After the first bytes, a short pause means the device said all it will say unprompted.
            reader.read_timeout_s = min(read_timeout_s, settle_s)
    except _Stop as stop:
        if stop.reason == "cap":
            fields["truncated"] = True
        elif stop.reason == "deadline":
            fields["error"] = f"banner read stopped at the {total:g} s deadline"
    except TimeoutError:
        fields["error"] = f"send did not complete within the {total:g} s deadline"
    except (OSError, anyio.BrokenResourceError) as exc:
        fields.update(outcome=translate(Operation.READ, exc).outcome, error=describe(exc))
    fields["data"] = bytes(reader.buf)
    return fields


# --- HTTP (the parsing is sans-IO, in fragileprobe._http) ----------------------------------------------

_PATH_RE = re.compile(r"^/[\x21-\x7e]*$")


async def http_get(
    host: str,
    port: int,
    path: str = "/",
    *,
    timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
    total_timeout_s: float | None = None,
    max_bytes: int = HTTP_BODY_MAX_BYTES,
    host_header: str | None = None,
    scope: Scope | None = None,
    logger: Any = None,
    network: Network | None = None,
) -> HttpResult:
    """One minimal HTTP/1.1 GET with ``Connection: close``; reads the head and the body's first bytes.

    Args:
        host: IP address (a host name only together with ``scope``).
        port: TCP port.
        path: request target, starting with ``/`` (no spaces or control characters).
        timeout_s: connect time bound.
        read_timeout_s: bound on each read.
        total_timeout_s: bound on the whole probe (default ``timeout_s + read_timeout_s``).
        max_bytes: how many decoded body bytes to keep (at most 1 MiB).
        host_header: ``Host`` header value (default: the address and port).
        scope: when given, checked before anything is sent (raises ScopeError).
        logger: structlog logger for the probe events.
        network: how to connect (default: real sockets; a Guard passes its device-side ledger).

    Returns:
        An :class:`HttpResult`: OPEN with ``status`` when a valid head arrived (a body cut short by the
        deadline is noted in ``error``); TIMEOUT if the head did not complete in time; PROTOCOL_ERROR for
        a malformed or oversized head or broken chunked framing; otherwise the connect outcome.
    """
    timeout_s = _validate.positive("timeout_s", timeout_s)
    read_timeout_s = _validate.positive("read_timeout_s", read_timeout_s)
    total = _total(timeout_s, read_timeout_s, total_timeout_s)
    max_bytes = _validate.count("max_bytes", max_bytes, minimum=1, maximum=HTTP_BODY_MAX_BYTES_CAP)
    if not isinstance(path, str) or not _PATH_RE.match(path):
        raise _validate.fail("path", "a path starting with '/' without spaces or control characters", path)
    if host_header is not None and (not host_header or any(c in host_header for c in "\r\n\0 ")):
        raise _validate.fail("host_header", "a header value without spaces or line ends", host_header)

    async def session(stream: Connection, deadline: float) -> dict[str, Any]:
        address = stream.address
        header_host = host_header or (f"[{address}]" if ":" in address else address)
        if host_header is None and port != 80:
            header_host = f"{header_host}:{port}"
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {header_host}\r\nUser-Agent: {_USER_AGENT}\r\n"
            "Accept: */*\r\nConnection: close\r\n\r\n"
        ).encode("ascii")
        try:
            with anyio.fail_after(max(deadline - anyio.current_time(), _MIN_SEND_WINDOW_S)):
                await stream.send(request)
        except TimeoutError:
            return {"outcome": Outcome.TIMEOUT, "error": f"request not sent within {total:g} s"}
        return await _read_response(stream, deadline, read_timeout_s, max_bytes, total)

    result: HttpResult = await _probe(
        "http_get",
        host,
        port,
        timeout_s=timeout_s,
        total_timeout_s=total,
        scope=scope,
        logger=logger,
        session=session,
        result_type=HttpResult,
        network=network,
    )
    return result


async def _read_response(
    stream: Connection, deadline: float, read_timeout_s: float, max_bytes: int, total: float
) -> dict[str, Any]:
    """Feed what ``stream`` sends to a :class:`~fragileprobe._http.ResponseParser`; the result's fields.

    Each read is bounded by ``read_timeout_s`` and by ``deadline``; the parser's caps bound the bytes (it
    says how many it still wants). A pause ends the response as the parser decides for a quiet peer.
    """
    parser = ResponseParser(max_body_bytes=max_bytes)
    reader = _Reader(stream, deadline=deadline, read_timeout_s=read_timeout_s)
    while (room := parser.wants()) > 0:
        try:
            chunk = await reader.receive(room)
        except _Stop as stop:
            return parser.feed_timeout(total if stop.reason == "deadline" else read_timeout_s).fields()
        if not chunk:
            return parser.feed_eof().fields()
        parser.feed(chunk)
    assert parser.result is not None  # wants() is 0 only once the parser has decided
    return parser.result.fields()
