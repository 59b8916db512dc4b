"""Full-connect probes with bounded reads: ``tcp_connect``, ``grab_banner``, ``http_get``.

This module is the one boundary where ``OSError`` and anyio's stream errors are translated: into an
:class:`Outcome` on a result record (the probe functions never raise for a network failure), or into
:class:`~fragileprobe.ProbeError` subclasses (``raise ... from exc``) for callers that want a stream
(:func:`open_stream`). Nothing above this module sees a raw ``OSError``.

Rules every probe follows, and why:

* Full TCP connects only (the kernel's three-way handshake through an ordinary socket), never a half-open
  SYN: a half-open scan leaves embedded TCP stacks with dangling half-open entries, the classic way to wedge
  a fragile device.
* Graceful close: we half-close (FIN), then wait briefly for the device to close its side, reading (and
  discarding) at most a few KiB meanwhile; only then is the socket closed. The session therefore ends, and
  its limiter slot is freed, when the device has let go of it, not merely when we did. When a peer sent more
  than that (a flood), the kernel answers the close with RST instead (RFC 1122 4.2.2.13, RFC 2525); we accept
  that rather than drain an unbounded stream from the device.
* Every read is bounded in bytes (named caps below) and in time, twice: each read waits at most
  ``read_timeout_s``, and the whole probe ends by ``total_timeout_s`` after it started, so a peer that drips
  one byte a second cannot stretch a probe past its bound.

Outcomes:

================  =============================================================================
``OPEN``          connected (and, for ``http_get``, a well-formed status line and headers arrived)
``CLOSED``        the connect was refused (RST answering our SYN): nothing listens there
``TIMEOUT``       no answer in time: a silent/filtered port, or an HTTP response that never completed its head
``RESET``         an established connection was reset by the peer
``UNREACHABLE``   the network or the local stack refused (no route, host unreachable, no free port)
``PROTOCOL_ERROR``the peer answered, but not with valid HTTP (bad status line, head over its cap,
                  malformed or endless chunked framing, closed before any response)
``CANCELLED``     the probe was cancelled from outside (the Guard records this when its watchdog cancels)
================  =============================================================================
"""

from __future__ import annotations

import enum
import errno
import ipaddress
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import structlog

from fragileprobe._errors import (
    ConfigError,
    FragileProbeError,
    ProbeError,
    ProbeRefusedError,
    ProbeResetError,
    ProbeTimeoutError,
)
from fragileprobe._net import DEFAULT_NETWORK, linger_close
from fragileprobe._numbers import device_decimal, device_hex
from fragileprobe._sessions import HeldConnection

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

# Byte bounds.
# A service banner is one line (SSH: at most 255 bytes by RFC 4253 4.2; FTP/SMTP greetings a few lines).
BANNER_MAX_BYTES = 1024
# Upper limit a caller may ask for: enough for any multi-line greeting, small enough to stay harmless.
BANNER_MAX_BYTES_CAP = 65536
# A device writes its banner in one go; once bytes arrived, a 0.25 s pause means it is done (an 8-hop
# hospital WAN adds < 50 ms between segments of one write).
BANNER_SETTLE_S = 0.25
# After our half-close, how long to wait for the device to close its side: its service loop notices
# our FIN within milliseconds when healthy (the emulated pump: < 20 ms); a device that never closes then
# costs at most this much. Always within the probe's overall deadline.
CLOSE_WAIT_S = 0.25
# HTTP head (status line + headers): h11 uses 16 KiB as its default limit for an incomplete event.
HTTP_MAX_HEAD_BYTES = 16384
# http.client refuses more than 100 header lines (_MAXHEADERS); a device sending more is broken or hostile.
HTTP_MAX_HEADERS = 100
# First bytes of the body kept: a <title> sits in the first few hundred bytes of any device web UI.
HTTP_BODY_MAX_BYTES = 8192
HTTP_BODY_MAX_BYTES_CAP = 1 << 20
# Chunked framing may cost at most this many raw bytes beyond the decoded body before we call the body
# endless (a stream of empty or 1-byte chunks, or endless chunk extensions).
HTTP_CHUNK_OVERHEAD_MAX_BYTES = 4096
# A chunk-size line is a hex number plus optional extensions; real ones are < 20 bytes.
HTTP_CHUNK_LINE_MAX_BYTES = 1024
# Bytes asked from the socket per receive call.
_RECEIVE_CHUNK_BYTES = 4096
# <title> text kept (a label, not a document).
_TITLE_MAX_CHARS = 200

_USER_AGENT = "fragileprobe/0.1 (gentle asset probe; full connect, one request)"


class Outcome(enum.Enum):
    """What a probe observed (see the table in the module docstring)."""

    OPEN = "open"
    CLOSED = "closed"
    TIMEOUT = "timeout"
    RESET = "reset"
    UNREACHABLE = "unreachable"
    PROTOCOL_ERROR = "protocol_error"
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """One probe's record.

    Attributes:
        host: the address probed.
        port: the TCP port probed.
        outcome: what happened (see :class:`Outcome`).
        latency_s: seconds from starting the connect until it completed or failed.
        data: the bytes read (banner, or the HTTP head for :class:`HttpResult`), at most the byte cap.
        error: why the probe ended abnormally, or a note (e.g. the deadline cut a banner short); else None.
        started_at_s: the event loop's clock when the probe started (``anyio.current_time()``; on asyncio
            that is ``time.monotonic()``, the emulator's clock too).
        duration_s: seconds from start until the socket was closed.
        truncated: reading stopped at the byte cap; the peer had more to say.
    """

    host: str
    port: int
    outcome: Outcome
    latency_s: float
    data: bytes
    error: str | None
    started_at_s: float
    duration_s: float
    truncated: bool = False

    @property
    def ok(self) -> bool:
        """True when the outcome is OPEN."""
        return self.outcome is Outcome.OPEN


@dataclass(frozen=True, slots=True)
class HttpResult(ProbeResult):
    """An :func:`http_get` record: a :class:`ProbeResult` plus the parsed response.

    ``data`` holds the raw head (status line and headers); ``body`` the first bytes of the decoded body.
    Header names are lower-cased; values are decoded as Latin-1 (RFC 9110 5.5).
    """

    status: int | None = None
    reason: str = ""
    http_version: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    server: str | None = None
    title: str | None = None

    def header(self, name: str) -> str | None:
        """The first header called ``name`` (case-insensitive), or None."""
        wanted = name.lower()
        for key, value in self.headers:
            if key == wanted:
                return value
        return None


# --- validation -----------------------------------------------------------------------------------------


def _check_port(port: int) -> None:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ConfigError(f"port must be an int in 1-65535, got {port!r}")


def _check_seconds(name: str, value: float) -> float:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not number or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)


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


def _check_bytes(name: str, value: int, cap: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= cap:
        raise ConfigError(f"{name} must be an int in 1-{cap}, got {value!r}")
    return value


# --- error translation (the one boundary) ---------------------------------------------------------------

_UNREACHABLE_ERRNOS = frozenset(
    {errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN, errno.ENETDOWN, errno.EADDRNOTAVAIL}
)


def _classify(exc: BaseException) -> Outcome:
    """Map a network exception to an outcome (the vocabulary: refused, reset, timed out, unreachable)."""
    if isinstance(exc, TimeoutError):
        return Outcome.TIMEOUT
    if isinstance(exc, ConnectionRefusedError):
        return Outcome.CLOSED
    if isinstance(exc, ConnectionResetError | ConnectionAbortedError | BrokenPipeError):
        return Outcome.RESET
    if isinstance(exc, anyio.BrokenResourceError):
        cause = exc.__cause__
        if isinstance(cause, BaseException) and not isinstance(cause, anyio.BrokenResourceError):
            return _classify(cause)
        return Outcome.RESET
    if isinstance(exc, OSError) and exc.errno == errno.ETIMEDOUT:
        return Outcome.TIMEOUT
    return Outcome.UNREACHABLE


def _describe(exc: BaseException) -> str:
    cause = exc.__cause__ if isinstance(exc, anyio.BrokenResourceError) and exc.__cause__ else exc
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror.lower()
    return str(cause) or type(cause).__name__


def _to_probe_error(exc: BaseException, host: str, port: int, action: str, timeout_s: float) -> ProbeError:
    """Build the fragileprobe exception for a network failure (callers ``raise ... from exc``)."""
    where = f"{_hostport(host, port)}"
    outcome = _classify(exc)
    if outcome is Outcome.TIMEOUT:
        return ProbeTimeoutError(f"{action} {where} timed out after {timeout_s:g} s")
    if outcome is Outcome.CLOSED:
        return ProbeRefusedError(f"{action} {where} refused (nothing listening)")
    if outcome is Outcome.RESET:
        return ProbeResetError(f"{action} {where}: connection reset by the peer")
    return ProbeError(f"{action} {where} failed: {_describe(exc)}")


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
            f"host {host!r} is not an IP address; pass scope= to resolve (and check) a host name"
        ) from None
    # One identity per device (as Scope.check gives): ::ffff:a.b.c.d is the IPv4 host a.b.c.d.
    mapped = addr.ipv4_mapped if isinstance(addr, ipaddress.IPv6Address) else None
    return host if mapped is None else str(mapped)


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --- connect / close ------------------------------------------------------------------------------------


async def _end(conn: Connection, deadline: float) -> None:
    """End a probe's session gracefully.

    Under a device-side ledger (a :class:`~fragileprobe._sessions.HeldConnection`: the Guard, discovery,
    characterization) the ledger lingers in the background until the device lets go and keeps the slot
    charged meanwhile. An unguarded probe lingers here, at most :data:`CLOSE_WAIT_S` and within its own
    deadline, so that its duration covers the device's close.
    """
    if isinstance(conn, HeldConnection):
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
        self, conn: Connection, host: str, port: int, *, send_timeout_s: float = DEFAULT_SEND_TIMEOUT_S,
    ) -> None:  # fmt: skip
        self._conn = conn
        self.host = host
        self.port = port
        self.send_timeout_s = _check_seconds("send_timeout_s", send_timeout_s)
        self._closed = False

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if self._closed:
            raise anyio.ClosedResourceError
        try:
            return await self._conn.receive(max_bytes)
        except OSError as exc:
            raise _to_probe_error(exc, self.host, self.port, "receive from", 0.0) from exc

    async def send(self, item: bytes) -> None:
        if self._closed:
            raise anyio.ClosedResourceError
        try:
            with anyio.fail_after(self.send_timeout_s):
                await self._conn.send(item)
        except TimeoutError as exc:  # before OSError: TimeoutError is one
            raise ProbeTimeoutError(
                f"send to {_hostport(self.host, self.port)} timed out after {self.send_timeout_s:g} s: "
                "the device is not reading (its receive window is full)"
            ) from exc
        except OSError as exc:
            raise _to_probe_error(exc, self.host, self.port, "send to", 0.0) from exc

    async def send_eof(self) -> None:
        try:
            self._conn.send_eof()
        except OSError as exc:
            raise _to_probe_error(exc, self.host, self.port, "shut down", 0.0) from exc

    async def aclose(self) -> None:
        """Close gracefully: half-close and wait for the device's FIN (see the module docstring).

        Through a Guard the wait happens in the background with the slot still charged, and this returns
        at once; unguarded, it waits here for at most :data:`CLOSE_WAIT_S`.
        """
        if self._closed:
            return
        self._closed = True
        if isinstance(self._conn, HeldConnection):
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
    _check_port(port)
    timeout_s = _check_seconds("timeout_s", timeout_s)
    address = _address(host, scope)
    (logger or log).debug("probe.connect", host=address, port=port, probe="stream")
    try:
        with anyio.fail_after(timeout_s):
            conn = await (network or DEFAULT_NETWORK).connect(address, port)
    except OSError as exc:
        raise _to_probe_error(exc, address, port, "connect to", timeout_s) from exc
    return ProbeStream(conn, address, port)


# --- bounded reading ------------------------------------------------------------------------------------


class _Stop(Exception):
    """Internal: reading ended early (deadline, per-read timeout, byte cap); ``reason`` says which."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _ProtocolViolation(Exception):
    """Internal: the peer's bytes are not the protocol we speak."""


class _Reader:
    """Reads into one buffer, bounded in bytes, per read and by an overall deadline."""

    __slots__ = ("buf", "deadline", "eof", "max_bytes", "read_timeout_s", "stream")

    def __init__(self, stream: Connection, *, deadline: float, read_timeout_s: float,
                 max_bytes: int) -> None:
        self.stream = stream
        self.deadline = deadline
        self.read_timeout_s = read_timeout_s
        self.max_bytes = max_bytes
        self.buf = bytearray()
        self.eof = False

    async def fill(self) -> bool:
        """Read one chunk. Returns False at end of stream.

        Raises:
            _Stop: the byte cap is reached ("cap"), a read waited ``read_timeout_s`` ("idle"), or the
                overall deadline passed ("deadline").
            anyio.BrokenResourceError, OSError: the connection broke (translated by the caller).
        """
        if self.eof:
            return False
        room = self.max_bytes - len(self.buf)
        if room <= 0:
            raise _Stop("cap")
        remaining = self.deadline - anyio.current_time()
        if remaining <= 0:
            raise _Stop("deadline")
        wait = min(self.read_timeout_s, remaining)
        with anyio.move_on_after(wait) as scope:
            try:
                chunk = await self.stream.receive(min(_RECEIVE_CHUNK_BYTES, room))
            except anyio.EndOfStream:
                self.eof = True
                return False
        if scope.cancelled_caught:
            raise _Stop("deadline" if wait < self.read_timeout_s else "idle")
        self.buf += chunk
        return True


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
    _check_port(port)
    address = _address(host, scope)
    logger = logger or log
    started = anyio.current_time()
    deadline = started + total_timeout_s
    logger.debug("probe.connect", host=address, port=port, probe=kind)
    fields: dict[str, Any] = {"data": b"", "error": None}
    latency_s = 0.0
    try:
        with anyio.fail_after(min(timeout_s, total_timeout_s)):
            conn = await (network or DEFAULT_NETWORK).connect(address, port)
    except OSError as exc:
        latency_s = anyio.current_time() - started
        outcome = _classify(exc)
        fields["error"] = (
            f"connect timed out after {min(timeout_s, total_timeout_s):g} s"
            if outcome is Outcome.TIMEOUT else _describe(exc)
        )
    else:
        latency_s = anyio.current_time() - started
        outcome = Outcome.OPEN
        try:
            try:
                if session is not None:
                    fields.update(await session(conn, deadline))
                    outcome = fields.pop("outcome", Outcome.OPEN)
            except OSError as exc:
                outcome = _classify(exc)
                fields["error"] = _describe(exc)
                fields.setdefault("data", b"")
            except FragileProbeError:
                raise
            except Exception as exc:
                # Last resort: a parser bug must not end a whole scan; the device's answer becomes a result
                # about that host, and the bug is logged with its traceback to be fixed.
                logger.exception("probe.internal_error", host=address, port=port, probe=kind)
                outcome = Outcome.PROTOCOL_ERROR
                fields["error"] = f"could not interpret the answer ({type(exc).__name__}: {exc})"
                fields.setdefault("data", b"")
            if outcome is not Outcome.RESET:
                await _end(conn, deadline)
        finally:
            # Synchronous, so a cancellation cannot leave the socket open; under a ledger this hands the
            # connection over to its linger instead (a no-op when _end already did).
            conn.close()
    result = result_type(
        host=address, port=port, outcome=outcome, latency_s=latency_s, started_at_s=started,
        duration_s=anyio.current_time() - started, **fields,
    )
    logger.debug(
        "probe.closed", host=address, port=port, probe=kind, outcome=outcome.value,
        latency_s=round(latency_s, 6), bytes_read=len(result.data), error=result.error,
    )
    return result


def _total(timeout_s: float, read_timeout_s: float, total_timeout_s: float | None) -> float:
    if total_timeout_s is None:
        return timeout_s + read_timeout_s
    return _check_seconds("total_timeout_s", total_timeout_s)


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
    timeout_s = _check_seconds("timeout_s", timeout_s)
    result: ProbeResult = await _probe(
        "tcp_connect", host, port, timeout_s=timeout_s, total_timeout_s=timeout_s, scope=scope,
        logger=logger, session=None, network=network,
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
        send: bytes to send after connecting (e.g. ``b"\\r\\n"`` to wake a console), at most 1 KiB.
        settle_s: once some banner bytes arrived, a pause this long ends the banner.
        scope: when given, checked before anything is sent (raises ScopeError).
        logger: structlog logger for the probe events.
        network: how to connect (default: real sockets; a Guard passes its device-side ledger).

    Returns:
        A :class:`ProbeResult`; never raises for network errors.
    """
    timeout_s = _check_seconds("timeout_s", timeout_s)
    read_timeout_s = _check_seconds("read_timeout_s", read_timeout_s)
    total = _total(timeout_s, read_timeout_s, total_timeout_s)
    max_bytes = _check_bytes("max_bytes", max_bytes, BANNER_MAX_BYTES_CAP)
    settle_s = _check_seconds("settle_s", settle_s)
    if send is not None and (not isinstance(send, bytes) or len(send) > 1024):
        raise ConfigError(f"send must be bytes of at most 1024, got {send!r:.60}")

    async def session(stream: Connection, deadline: float) -> dict[str, Any]:
        reader = _Reader(stream, deadline=deadline, read_timeout_s=read_timeout_s, max_bytes=max_bytes)
        fields: dict[str, Any] = {}
        try:
            if send:
                with anyio.fail_after(max(deadline - anyio.current_time(), 0.001)):
                    await stream.send(send)
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
            fields.update(outcome=_classify(exc), error=_describe(exc))
        fields["data"] = bytes(reader.buf)
        return fields

    result: ProbeResult = await _probe(
        "grab_banner", host, port, timeout_s=timeout_s, total_timeout_s=total, scope=scope,
        logger=logger, session=session, network=network,
    )
    return result


# --- HTTP (sans-IO parsing: bytes in, fields or _ProtocolViolation out) ---------------------------------

_STATUS_RE = re.compile(rb"^HTTP/([0-9])\.([0-9]) ([0-9]{3})(?: ([^\r\n]*))?$")
_TOKEN_RE = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_TITLE_RE = re.compile(rb"<title[^>]*>(.*?)(?:</title|$)", re.IGNORECASE | re.DOTALL)
_PATH_RE = re.compile(r"^/[\x21-\x7e]*$")


def _find_head_end(buf: bytes | bytearray) -> int:
    """Index just past the blank line ending the head, or -1 (tolerates bare LF line ends)."""
    crlf = buf.find(b"\r\n\r\n")
    lf = buf.find(b"\n\n")
    ends = [i + 4 for i in (crlf,) if i >= 0] + [i + 2 for i in (lf,) if i >= 0]
    return min(ends) if ends else -1


def _parse_head(head: bytes) -> tuple[str, int, str, list[tuple[str, str]]]:
    """Parse a status line and header block (RFC 9112 4 and 5). Raises _ProtocolViolation."""
    lines = head.replace(b"\r\n", b"\n").rstrip(b"\n").split(b"\n")
    match = _STATUS_RE.match(lines[0].rstrip(b"\r"))
    if match is None:
        raise _ProtocolViolation(f"malformed status line {bytes(lines[0][:80])!r}")
    version = f"{int(match[1])}.{int(match[2])}"
    status = int(match[3])
    reason = (match[4] or b"").decode("latin-1").strip()
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        line = line.rstrip(b"\r")
        if line[:1] in (b" ", b"\t"):
            if not headers:
                raise _ProtocolViolation("header continuation line before any header")
            name, value = headers[-1]
            headers[-1] = (name, f"{value} {line.strip().decode('latin-1')}")
            continue
        name_b, sep, value_b = line.partition(b":")
        if not sep or not _TOKEN_RE.match(name_b):
            raise _ProtocolViolation(f"malformed header line {bytes(line[:80])!r}")
        headers.append((name_b.decode("ascii").lower(), value_b.strip().decode("latin-1")))
        if len(headers) > HTTP_MAX_HEADERS:
            raise _ProtocolViolation(f"more than {HTTP_MAX_HEADERS} headers")
    return version, status, reason, headers


def _decode_chunked(raw: bytes | bytearray, limit: int) -> tuple[bytes, bool]:
    """Decode a chunked body prefix. Returns (decoded up to ``limit``, finished).

    ``finished`` is True at the last chunk or once ``limit`` decoded bytes are in hand.
    Raises _ProtocolViolation on malformed framing.
    """
    out = bytearray()
    pos = 0
    while True:
        eol = raw.find(b"\n", pos)
        if eol < 0:
            if len(raw) - pos > HTTP_CHUNK_LINE_MAX_BYTES:
                raise _ProtocolViolation("chunk-size line longer than its cap")
            return bytes(out), False
        if eol - pos > HTTP_CHUNK_LINE_MAX_BYTES:
            raise _ProtocolViolation("chunk-size line longer than its cap")
        size_text = bytes(raw[pos:eol]).rstrip(b"\r").split(b";", 1)[0].strip(b" \t")
        size = device_hex(size_text)
        if size is None:
            raise _ProtocolViolation(f"malformed chunk size {size_text[:20]!r}")
        if size == 0:
            return bytes(out), True
        start = eol + 1
        end = start + size
        out += raw[start:min(end, len(raw))]
        if len(out) >= limit:
            return bytes(out[:limit]), True
        if len(raw) < end + 1:
            return bytes(out), False
        if raw[end:end + 2] == b"\r\n":
            pos = end + 2
        elif raw[end:end + 1] == b"\n":
            pos = end + 1
        elif len(raw) == end + 1 and raw[end:end + 1] == b"\r":
            return bytes(out), False
        else:
            raise _ProtocolViolation("chunk data not followed by CRLF")


def _title(body: bytes) -> str | None:
    match = _TITLE_RE.search(body)
    if match is None:
        return None
    text = " ".join(match[1].decode("utf-8", errors="replace").split())
    return text[:_TITLE_MAX_CHARS] or None


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
    timeout_s = _check_seconds("timeout_s", timeout_s)
    read_timeout_s = _check_seconds("read_timeout_s", read_timeout_s)
    total = _total(timeout_s, read_timeout_s, total_timeout_s)
    max_bytes = _check_bytes("max_bytes", max_bytes, HTTP_BODY_MAX_BYTES_CAP)
    if not isinstance(path, str) or not _PATH_RE.match(path):
        raise ConfigError(f"path must start with '/' and contain no spaces or control characters: {path!r}")
    if host_header is not None and (not host_header or any(c in host_header for c in "\r\n\0 ")):
        raise ConfigError(f"host_header must be a non-empty header value: {host_header!r}")

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
            with anyio.fail_after(max(deadline - anyio.current_time(), 0.001)):
                await stream.send(request)
        except TimeoutError:
            return {"outcome": Outcome.TIMEOUT, "error": f"request not sent within {total:g} s"}
        return await _read_response(stream, deadline, read_timeout_s, max_bytes, total)

    result: HttpResult = await _probe(
        "http_get", host, port, timeout_s=timeout_s, total_timeout_s=total, scope=scope, logger=logger,
        session=session, result_type=HttpResult, network=network,
    )
    return result


async def _read_response(
    stream: Connection, deadline: float, read_timeout_s: float, max_bytes: int, total: float
) -> dict[str, Any]:
    head_reader = _Reader(stream, deadline=deadline, read_timeout_s=read_timeout_s,
                          max_bytes=HTTP_MAX_HEAD_BYTES)
    status_checked = False
    try:
        while (end := _find_head_end(head_reader.buf)) < 0:
            if not status_checked and (line_end := head_reader.buf.find(b"\n")) >= 0:
                # Judge the status line as soon as it is complete: a peer answering junk is a protocol
                # error now, not after we waited out the rest of a head it will never send.
                status_checked = True
                try:
                    _parse_head(bytes(head_reader.buf[:line_end + 1]))
                except _ProtocolViolation as exc:
                    return {"outcome": Outcome.PROTOCOL_ERROR, "data": bytes(head_reader.buf),
                            "error": str(exc)}
            if not await head_reader.fill():
                got = bytes(head_reader.buf)
                what = "closed before any HTTP response" if not got else "closed in the middle of the head"
                return {"outcome": Outcome.PROTOCOL_ERROR, "error": f"connection {what}", "data": got}
    except _Stop as stop:
        got = bytes(head_reader.buf)
        if stop.reason == "cap":
            return {"outcome": Outcome.PROTOCOL_ERROR, "data": got, "truncated": True,
                    "error": f"HTTP head larger than {HTTP_MAX_HEAD_BYTES} bytes"}
        # A status line that is already malformed is a protocol error, however slowly it arrived.
        first_line_end = got.find(b"\n")
        if first_line_end >= 0:
            try:
                _parse_head(got[:first_line_end + 1])
            except _ProtocolViolation as exc:
                return {"outcome": Outcome.PROTOCOL_ERROR, "data": got, "error": str(exc)}
        limit = total if stop.reason == "deadline" else read_timeout_s
        return {"outcome": Outcome.TIMEOUT, "data": got,
                "error": f"HTTP head incomplete after {limit:g} s ({len(got)} bytes)"}
    head = bytes(head_reader.buf[:end])
    try:
        version, status, reason, headers = _parse_head(head)
    except _ProtocolViolation as exc:
        return {"outcome": Outcome.PROTOCOL_ERROR, "data": head, "error": str(exc)}
    fields: dict[str, Any] = {
        "data": head, "status": status, "reason": reason, "http_version": version,
        "headers": tuple(headers), "server": next((v for k, v in headers if k == "server"), None),
    }
    header_map = dict(headers)
    chunked = "chunked" in header_map.get("transfer-encoding", "").lower()
    length: int | None = None
    if not chunked and "content-length" in header_map:
        text = header_map["content-length"].strip(" \t")
        # ASCII digits only, bounded (RFC 9110 8.6): '\xb2' passes str.isdigit() and then makes int() raise.
        length = device_decimal(text)
        if length is None:
            return {**fields, "outcome": Outcome.PROTOCOL_ERROR, "error": f"bad Content-Length {text[:40]!r}"}
    if status in (204, 304) or 100 <= status < 200:
        length = 0
    raw_cap = max_bytes + (HTTP_CHUNK_OVERHEAD_MAX_BYTES if chunked else 0)
    if length is not None:
        raw_cap = min(raw_cap, length)
    body_reader = _Reader(stream, deadline=deadline, read_timeout_s=read_timeout_s, max_bytes=max(raw_cap, 1))
    body_reader.buf += head_reader.buf[end:end + raw_cap]
    body = b""
    try:
        while True:
            if chunked:
                body, finished = _decode_chunked(body_reader.buf, max_bytes)
                if finished:
                    fields["truncated"] = len(body) >= max_bytes
                    break
            elif len(body_reader.buf) >= raw_cap:
                body = bytes(body_reader.buf[:raw_cap])
                fields["truncated"] = length is None or length > raw_cap
                break
            if not await body_reader.fill():
                body = body if chunked else bytes(body_reader.buf)
                if chunked or (length is not None and len(body) < length):
                    fields["error"] = "connection closed before the end of the body"
                break
    except _ProtocolViolation as exc:
        return {**fields, "outcome": Outcome.PROTOCOL_ERROR, "body": body, "error": str(exc)}
    except _Stop as stop:
        if not chunked:
            body = bytes(body_reader.buf)
        if stop.reason == "cap":  # only reachable for chunked framing: overhead past its cap
            return {**fields, "outcome": Outcome.PROTOCOL_ERROR, "body": body,
                    "error": f"chunked framing exceeded {HTTP_CHUNK_OVERHEAD_MAX_BYTES} bytes of overhead"}
        waited = total if stop.reason == "deadline" else read_timeout_s
        fields["error"] = f"body incomplete after {waited:g} s"
    fields["body"] = body
    fields["title"] = _title(body)
    return fields
