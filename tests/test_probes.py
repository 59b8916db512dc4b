"""Probes against real loopback peers, friendly and hostile: outcomes, byte/time bounds, graceful close."""

from __future__ import annotations

import contextlib
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress

import anyio
import anyio.abc
import anyio.lowlevel
import pytest
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from fragileprobe import (
    ConfigError,
    Outcome,
    ProbeRefusedError,
    ProbeResetError,
    ProbeTimeoutError,
    Scope,
    ScopeError,
    grab_banner,
    http_get,
    tcp_connect,
)
from fragileprobe._http import ProtocolViolation as _ProtocolViolation
from fragileprobe._http import decode_chunked as _decode_chunked
from fragileprobe._http import parse_head as _parse_head
from fragileprobe._probes import (
    BANNER_MAX_BYTES,
    CLOSE_WAIT_S,
    HTTP_MAX_HEAD_BYTES,
    HTTP_MAX_HEADERS,
    open_stream,
)

Handler = Callable[[anyio.abc.SocketStream], Awaitable[None]]
_PEER_ERRORS = (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream, OSError)
# Scheduling slack allowed on top of a probe's own time bound (2 shared cores, other tests running).
SLACK_S = 0.5


class Peer:
    """A loopback server running one behaviour per connection; counts accepts and how clients closed."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.accepts = 0
        self.client_fin = 0
        self.client_rst = 0


@asynccontextmanager
async def peer(host: str, handler: Handler) -> AsyncIterator[Peer]:
    listener = await anyio.create_tcp_listener(local_host=host, local_port=0)
    state = Peer(host, listener.extra(anyio.abc.SocketAttribute.local_port))

    async def serve_one(stream: anyio.abc.SocketStream) -> None:
        state.accepts += 1
        try:
            await handler(stream)
        except _PEER_ERRORS:
            pass
        finally:
            await stream.aclose()

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, serve_one)
        yield state
        tg.cancel_scope.cancel()


async def watch_close(state: Peer, stream: anyio.abc.SocketStream) -> None:
    """Read until the client goes away; record whether it closed with FIN or RST."""
    try:
        while await stream.receive():
            pass
    except anyio.EndOfStream:
        state.client_fin += 1
    except (anyio.BrokenResourceError, OSError):
        state.client_rst += 1


async def silent(stream: anyio.abc.SocketStream) -> None:
    await anyio.sleep(30)


def dripper(first: bytes = b"", interval_s: float = 0.02) -> Handler:
    async def drip(stream: anyio.abc.SocketStream) -> None:
        if first:
            await stream.send(first)
        for _ in range(10_000):
            await stream.send(b"H")
            await anyio.sleep(interval_s)

    return drip


async def flood(stream: anyio.abc.SocketStream) -> None:
    junk = b"x" * 65536
    for _ in range(64):  # 4 MiB, far past every cap
        await stream.send(junk)


async def reset_at_once(stream: anyio.abc.SocketStream) -> None:
    sock = stream.extra(anyio.abc.SocketAttribute.raw_socket)
    # SO_LINGER with a zero timeout: close() sends RST instead of FIN.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def http_peer(response: bytes, *, then: Handler | None = None) -> Handler:
    async def serve(stream: anyio.abc.SocketStream) -> None:
        request = b""
        while b"\r\n\r\n" not in request:
            request += await stream.receive()
        await stream.send(response)
        if then is not None:
            await then(stream)

    return serve


# --- friendly peers -------------------------------------------------------------------------------------


async def test_tcp_connect_open_and_closes_with_fin(loopback_host: str) -> None:
    state_holder: list[Peer] = []

    async def handler(stream: anyio.abc.SocketStream) -> None:
        await watch_close(state_holder[0], stream)

    async with peer(loopback_host, handler) as state:
        state_holder.append(state)
        result = await tcp_connect(loopback_host, state.port)
        await anyio.sleep(0.05)
    assert result.outcome is Outcome.OPEN
    assert result.ok
    assert result.data == b""
    assert result.error is None
    assert 0 <= result.latency_s <= result.duration_s
    assert state.client_fin == 1
    assert state.client_rst == 0


async def test_the_session_lasts_until_the_peer_lets_go(loopback_host: str) -> None:
    """After our FIN the probe waits (bounded) for the peer's: the slot is held while the device holds
    the session."""

    async def slow_to_close(stream: anyio.abc.SocketStream) -> None:
        with contextlib.suppress(anyio.EndOfStream):
            await stream.receive()
        await anyio.sleep(0.1)

    async with peer(loopback_host, slow_to_close) as slow, peer(loopback_host, silent) as never:
        waited = await tcp_connect(loopback_host, slow.port)
        bounded = await tcp_connect(loopback_host, never.port)
    assert waited.outcome is Outcome.OPEN
    assert waited.duration_s >= 0.1
    assert bounded.outcome is Outcome.OPEN
    assert CLOSE_WAIT_S <= bounded.duration_s <= CLOSE_WAIT_S + SLACK_S


async def test_tcp_connect_refused_port_is_closed(loopback_host: str) -> None:
    async with peer(loopback_host, silent) as state:
        port = state.port
    result = await tcp_connect(loopback_host, port)
    assert result.outcome is Outcome.CLOSED
    assert "refused" in (result.error or "")


async def test_connect_to_a_full_backlog_times_out_within_its_bound(loopback_host: str) -> None:
    """A listener that never accepts, with a full backlog: SYNs are dropped, so the connect times out."""
    server = socket.socket()
    server.bind((loopback_host, 0))
    server.listen(0)
    fillers: list[socket.socket] = []
    try:
        port = server.getsockname()[1]
        for _ in range(4):  # fill the accept queue (Linux allows backlog + 1)
            filler = socket.socket()
            filler.setblocking(False)
            with suppress(BlockingIOError):
                filler.connect((loopback_host, port))
            fillers.append(filler)
        await anyio.sleep(0.05)
        result = await tcp_connect(loopback_host, port, timeout_s=0.3)
        assert result.outcome is Outcome.TIMEOUT
        assert result.duration_s <= 0.3 + SLACK_S
        with pytest.raises(ProbeTimeoutError, match=rf"{loopback_host}:{port} timed out after 0.3 s"):
            await open_stream(loopback_host, port, timeout_s=0.3)
    finally:
        for filler in fillers:
            filler.close()
        server.close()


async def test_grab_banner_reads_one_line(loopback_host: str) -> None:
    async def handler(stream: anyio.abc.SocketStream) -> None:
        await stream.send(b"SSH-2.0-dropbear_0.52\r\n")
        await anyio.sleep(5)

    async with peer(loopback_host, handler) as state:
        result = await grab_banner(loopback_host, state.port, read_timeout_s=2.0)
    assert result.outcome is Outcome.OPEN
    assert result.data == b"SSH-2.0-dropbear_0.52\r\n"
    assert result.duration_s < 1.0  # returned at the line end, not after waiting out read_timeout_s


async def test_grab_banner_waits_for_ftp_continuation_lines(loopback_host: str) -> None:
    async def handler(stream: anyio.abc.SocketStream) -> None:
        await stream.send(b"220-Welcome\r\n")
        await anyio.sleep(0.05)
        await stream.send(b"220 ready\r\n")
        await anyio.sleep(5)

    async with peer(loopback_host, handler) as state:
        result = await grab_banner(loopback_host, state.port)
    assert result.data == b"220-Welcome\r\n220 ready\r\n"


async def test_grab_banner_stops_at_a_login_prompt(loopback_host: str) -> None:
    async def handler(stream: anyio.abc.SocketStream) -> None:
        await stream.send(b"\xff\xfd\x01\r\nmis3000 login: ")
        await anyio.sleep(5)

    async with peer(loopback_host, handler) as state:
        result = await grab_banner(loopback_host, state.port, read_timeout_s=3.0)
    assert result.data.endswith(b"login: ")
    assert result.duration_s < 1.0


async def test_grab_banner_sends_the_wake_bytes(loopback_host: str) -> None:
    async def handler(stream: anyio.abc.SocketStream) -> None:
        got = await stream.receive()
        await stream.send(b"echo:" + got + b"\n")

    async with peer(loopback_host, handler) as state:
        result = await grab_banner(loopback_host, state.port, send=b"\r\n")
    assert result.data == b"echo:\r\n\n"


async def test_http_get_parses_status_headers_title(loopback_host: str) -> None:
    body = b"<html><head><title>\n  MIS-3000   Pump </title></head><body>ok</body></html>"
    response = (
        b"HTTP/1.1 200 OK\r\nServer: GoAhead-Webs/2.5.0\r\nContent-Type: text/html\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    requests: list[bytes] = []

    async def handler(stream: anyio.abc.SocketStream) -> None:
        request = b""
        while b"\r\n\r\n" not in request:
            request += await stream.receive()
        requests.append(request)
        await stream.send(response)
        await anyio.sleep(5)  # keeps the connection open: Content-Length must end the read

    async with peer(loopback_host, handler) as state:
        result = await http_get(loopback_host, state.port, "/status")
    assert result.outcome is Outcome.OPEN
    assert (result.status, result.reason, result.http_version) == (200, "OK", "1.1")
    assert result.server == "GoAhead-Webs/2.5.0"
    assert result.header("content-type") == "text/html"
    assert result.body == body
    assert result.title == "MIS-3000 Pump"
    assert result.duration_s < 1.0
    request = requests[0]
    assert request.startswith(b"GET /status HTTP/1.1\r\n")
    assert f"Host: {loopback_host}:{state.port}".encode() in request
    assert b"Connection: close" in request
    assert b"User-Agent: fragileprobe" in request


async def test_http_get_decodes_a_chunked_body(loopback_host: str) -> None:
    response = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"7\r\n<title>\r\n4;ext=1\r\nPump\r\n8\r\n</title>\r\n0\r\n\r\n"
    )
    async with peer(loopback_host, http_peer(response, then=silent)) as state:
        result = await http_get(loopback_host, state.port)
    assert result.outcome is Outcome.OPEN
    assert result.body == b"<title>Pump</title>"
    assert result.title == "Pump"
    assert not result.truncated


async def test_http_get_keeps_only_the_first_body_bytes(loopback_host: str) -> None:
    body = b"A" * 100_000
    response = b"HTTP/1.0 200 OK\r\n\r\n" + body
    async with peer(loopback_host, http_peer(response)) as state:
        result = await http_get(loopback_host, state.port, max_bytes=1000)
    assert result.outcome is Outcome.OPEN
    assert result.body == b"A" * 1000
    assert result.truncated


async def test_http_get_no_body_for_204(loopback_host: str) -> None:
    async with peer(loopback_host, http_peer(b"HTTP/1.1 204 No Content\r\n\r\n", then=silent)) as state:
        result = await http_get(loopback_host, state.port)
    assert (result.outcome, result.status, result.body) == (Outcome.OPEN, 204, b"")
    assert result.duration_s < 1.0


# --- hostile peers --------------------------------------------------------------------------------------


async def test_silent_peer_banner_is_open_and_empty_after_read_timeout(loopback_host: str) -> None:
    async with peer(loopback_host, silent) as state:
        result = await grab_banner(loopback_host, state.port, read_timeout_s=0.2)
    assert result.outcome is Outcome.OPEN
    assert result.data == b""
    assert 0.2 <= result.duration_s <= 0.2 + SLACK_S


async def test_silent_peer_http_times_out_within_total_bound(loopback_host: str) -> None:
    async with peer(loopback_host, silent) as state:
        result = await http_get(loopback_host, state.port, read_timeout_s=0.2, total_timeout_s=0.3)
    assert result.outcome is Outcome.TIMEOUT
    assert result.status is None
    assert result.duration_s <= 0.3 + SLACK_S


async def test_dripping_peer_cannot_stretch_a_banner_grab(loopback_host: str) -> None:
    """One byte every 20 ms never trips the per-read timeout; the overall deadline still ends the probe."""
    async with peer(loopback_host, dripper()) as state:
        result = await grab_banner(
            loopback_host, state.port, read_timeout_s=0.2, settle_s=0.2, total_timeout_s=0.5
        )
    assert result.outcome is Outcome.OPEN
    assert 0 < len(result.data) < BANNER_MAX_BYTES
    assert "deadline" in (result.error or "")
    assert result.duration_s <= 0.5 + SLACK_S


async def test_dripping_http_head_times_out_at_the_deadline(loopback_host: str) -> None:
    async with peer(loopback_host, http_peer(b"HTTP/1.1 200 OK\r\n", then=dripper(b"X-Drip: "))) as state:
        result = await http_get(loopback_host, state.port, read_timeout_s=0.2, total_timeout_s=0.5)
    assert result.outcome is Outcome.TIMEOUT
    assert "incomplete" in (result.error or "")
    assert result.duration_s <= 0.5 + SLACK_S


async def test_junk_flood_banner_is_truncated_at_the_cap(loopback_host: str) -> None:
    async with peer(loopback_host, flood) as state:
        result = await grab_banner(loopback_host, state.port, max_bytes=4096)
    assert result.outcome is Outcome.OPEN
    assert result.truncated
    assert len(result.data) == 4096


async def test_junk_flood_http_is_a_protocol_error_with_bounded_head(loopback_host: str) -> None:
    async with peer(loopback_host, http_peer(b"", then=flood)) as state:
        result = await http_get(loopback_host, state.port)
    assert result.outcome is Outcome.PROTOCOL_ERROR
    assert len(result.data) <= HTTP_MAX_HEAD_BYTES
    assert result.duration_s <= 4.0 + SLACK_S


async def test_immediate_reset_is_reset(loopback_host: str) -> None:
    async with peer(loopback_host, reset_at_once) as state:
        await anyio.lowlevel.checkpoint()
        banner = await grab_banner(loopback_host, state.port)
        page = await http_get(loopback_host, state.port)
    assert banner.outcome is Outcome.RESET
    assert page.outcome is Outcome.RESET


async def _read_until_error(stream: anyio.abc.ByteStream) -> None:
    for _ in range(50):
        await stream.receive()
        await anyio.sleep(0.01)


async def test_reset_mid_banner_is_reset_with_the_bytes_so_far(loopback_host: str) -> None:
    async def half_then_reset(stream: anyio.abc.SocketStream) -> None:
        await stream.send(b"220 (vsF")
        await anyio.sleep(0.05)
        await reset_at_once(stream)

    async with peer(loopback_host, half_then_reset) as state:
        result = await grab_banner(loopback_host, state.port, settle_s=1.0)
    assert result.outcome is Outcome.RESET
    assert result.data == b"220 (vsF"


async def test_stream_read_after_reset_raises_probe_reset_error(loopback_host: str) -> None:
    async with peer(loopback_host, reset_at_once) as state:
        stream = await open_stream(loopback_host, state.port)
        async with stream:
            with pytest.raises(ProbeResetError, match=f"{loopback_host}:{state.port}"):
                await _read_until_error(stream)


async def test_open_stream_refused_raises_probe_refused_error(loopback_host: str) -> None:
    async with peer(loopback_host, silent) as state:
        port = state.port
    with pytest.raises(ProbeRefusedError, match="refused") as info:
        await open_stream(loopback_host, port)
    assert isinstance(info.value.__cause__, ConnectionRefusedError)


async def test_malformed_status_line_is_a_protocol_error_at_once(loopback_host: str) -> None:
    async with peer(loopback_host, http_peer(b"HTTP/1.1 OK\r\n", then=silent)) as state:
        result = await http_get(loopback_host, state.port, read_timeout_s=3.0)
    assert result.outcome is Outcome.PROTOCOL_ERROR
    assert "status line" in (result.error or "")
    assert result.duration_s < 1.0  # judged as soon as the line was complete


async def test_endless_headers_hit_the_head_cap(loopback_host: str) -> None:
    async def endless(stream: anyio.abc.SocketStream) -> None:
        for i in range(100_000):
            await stream.send(b"X-Junk-%d: yes\r\n" % i)

    async with peer(loopback_host, http_peer(b"HTTP/1.1 200 OK\r\n", then=endless)) as state:
        result = await http_get(loopback_host, state.port)
    assert result.outcome is Outcome.PROTOCOL_ERROR
    assert "larger than" in (result.error or "")
    assert len(result.data) <= HTTP_MAX_HEAD_BYTES


async def test_too_many_headers_is_a_protocol_error(loopback_host: str) -> None:
    headers = b"".join(b"X-%d: y\r\n" % i for i in range(HTTP_MAX_HEADERS + 1))
    async with peer(loopback_host, http_peer(b"HTTP/1.1 200 OK\r\n" + headers + b"\r\n")) as state:
        result = await http_get(loopback_host, state.port)
    assert result.outcome is Outcome.PROTOCOL_ERROR
    assert "headers" in (result.error or "")


async def test_endless_tiny_chunks_are_a_protocol_error(loopback_host: str) -> None:
    async def chunks(stream: anyio.abc.SocketStream) -> None:
        for _ in range(100_000):
            await stream.send(b"1;pad=" + b"p" * 30 + b"\r\nx\r\n")

    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    async with peer(loopback_host, http_peer(head, then=chunks)) as state:
        result = await http_get(loopback_host, state.port)
    assert result.outcome is Outcome.PROTOCOL_ERROR
    assert "chunked" in (result.error or "")
    assert len(result.body) < 8192


async def test_endless_large_chunks_stop_at_the_body_cap(loopback_host: str) -> None:
    async def chunks(stream: anyio.abc.SocketStream) -> None:
        for _ in range(100_000):
            await stream.send(b"400\r\n" + b"z" * 1024 + b"\r\n")

    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    async with peer(loopback_host, http_peer(head, then=chunks)) as state:
        result = await http_get(loopback_host, state.port, max_bytes=5000)
    assert result.outcome is Outcome.OPEN
    assert result.truncated
    assert result.body == b"z" * 5000


async def test_closed_without_response_is_a_protocol_error(loopback_host: str) -> None:
    async def close_after_request(stream: anyio.abc.SocketStream) -> None:
        await stream.receive()

    async with peer(loopback_host, close_after_request) as state:
        result = await http_get(loopback_host, state.port)
    assert result.outcome is Outcome.PROTOCOL_ERROR
    assert "before any HTTP response" in (result.error or "")


# --- scope, cancellation, validation, logs --------------------------------------------------------------


async def test_probe_outside_scope_sends_nothing(loopback_host: str) -> None:
    async with peer(loopback_host, silent) as state:
        with pytest.raises(ScopeError):
            await tcp_connect(loopback_host, state.port, scope=Scope(["127.0.0.0/30"]))
        with pytest.raises(ScopeError):
            await grab_banner(loopback_host, state.port, scope=Scope(["127.0.0.0/30"]))
        await anyio.sleep(0.05)
    assert state.accepts == 0


async def test_cancellation_propagates_and_closes_the_socket(loopback_host: str) -> None:
    holder: list[Peer] = []

    async def handler(stream: anyio.abc.SocketStream) -> None:
        await watch_close(holder[0], stream)

    async with peer(loopback_host, handler) as state:
        holder.append(state)
        with anyio.move_on_after(0.1) as scope:
            await grab_banner(loopback_host, state.port, read_timeout_s=5.0)
        assert scope.cancelled_caught  # the probe did not swallow the cancellation
        await anyio.sleep(0.1)
    assert state.client_fin + state.client_rst == 1


async def test_probe_events_are_logged() -> None:
    with capture_logs() as logs:
        await tcp_connect("127.0.0.1", 1)
    events = [entry["event"] for entry in logs]
    assert events == ["probe.connect", "probe.closed"]
    assert logs[1]["outcome"] == "closed"
    assert logs[1]["port"] == 1


@pytest.mark.parametrize(
    ("call", "fragment"),
    [
        (lambda: tcp_connect("127.0.0.1", 0), "port"),
        (lambda: tcp_connect("127.0.0.1", 80, timeout_s=0), "timeout_s"),
        (lambda: grab_banner("127.0.0.1", 80, read_timeout_s=-1), "read_timeout_s"),
        (lambda: grab_banner("127.0.0.1", 80, max_bytes=0), "max_bytes"),
        (lambda: grab_banner("127.0.0.1", 80, send=b"x" * 2000), "send"),
        (lambda: http_get("127.0.0.1", 80, "no-slash"), "path"),
        (lambda: http_get("127.0.0.1", 80, "/a b"), "path"),
        (lambda: http_get("127.0.0.1", 80, total_timeout_s=float("nan")), "total_timeout_s"),
    ],
)
async def test_bad_arguments_are_config_errors(call: Callable[[], Awaitable[object]], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        await call()


# --- sans-IO parsing (hypothesis) -----------------------------------------------------------------------


def test_parse_head_accepts_folded_headers_and_lowercases_names() -> None:
    head = b"HTTP/1.0 404 Not Found\r\nX-A: 1\r\n  2\r\nServer: s\r\n\r\n"
    version, status, reason, headers = _parse_head(head)
    assert (version, status, reason) == ("1.0", 404, "Not Found")
    assert headers == [("x-a", "1 2"), ("server", "s")]


@given(st.binary(max_size=300))
def test_parse_head_never_raises_anything_but_protocol_violation(data: bytes) -> None:
    try:
        _, status, _, headers = _parse_head(data)
    except _ProtocolViolation:
        return
    assert 100 <= status <= 999
    assert len(headers) <= HTTP_MAX_HEADERS


@given(st.binary(max_size=300), st.integers(1, 500))
def test_decode_chunked_never_raises_anything_but_protocol_violation(data: bytes, limit: int) -> None:
    try:
        body, _ = _decode_chunked(data, limit)
    except _ProtocolViolation:
        return
    assert len(body) <= limit


@given(st.lists(st.binary(min_size=1, max_size=50), max_size=10), st.integers(1, 1000))
def test_decode_chunked_round_trips(chunks: list[bytes], limit: int) -> None:
    """Property: encoding chunks and decoding gives back the body (up to the limit)."""
    raw = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
    body, finished = _decode_chunked(raw, limit)
    assert finished
    assert body == b"".join(chunks)[:limit]


async def test_an_unexpected_error_while_reading_an_answer_is_a_result_not_a_crash(
    loopback_host: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Last resort: if interpreting a device's answer raised a bug's exception, the probe still returns a
    PROTOCOL_ERROR result about that host (and logs the bug), so one device cannot end a whole scan."""
    import fragileprobe._http
    import fragileprobe._probes as probes

    def broken(*_args: object) -> object:
        raise IndexError("a parser bug")

    monkeypatch.setattr(fragileprobe._http, "parse_head", broken)
    listener = await anyio.create_tcp_listener(local_host=loopback_host, local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)

    async def serve(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            await stream.receive()
            await stream.send(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, serve)
        with capture_logs() as logs:
            result = await probes.http_get(loopback_host, port, read_timeout_s=1.0)
        tg.cancel_scope.cancel()
    assert result.outcome is Outcome.PROTOCOL_ERROR
    assert "IndexError" in (result.error or "")
    assert any(e["event"] == "probe.internal_error" for e in logs)
