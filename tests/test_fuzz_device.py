"""(H) Fuzzing every parser of device output: arbitrary bytes, and valid answers split byte by byte.

Each parser gets any bytes and must give a typed result (or, inside ``_probes``, its own
``_ProtocolViolation``, which the probe turns into a ``PROTOCOL_ERROR`` result) within its byte bounds. The
streaming readers run over a scripted stream (bytes in, a result out, no socket), and once over a real
loopback peer, to check their time bound too. Each property runs a bounded number of examples so the whole
file stays within a few seconds.
"""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import anyio.lowlevel
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fragileprobe._fingerprint import (
    ServiceInfo,
    fingerprint_http,
    fingerprint_service,
    model_key,
    parse_http_response,
    strip_telnet_negotiation,
)
from fragileprobe._http import HTTP_CHUNK_OVERHEAD_MAX_BYTES
from fragileprobe._http import ProtocolViolation as _ProtocolViolation
from fragileprobe._http import decode_chunked as _decode_chunked
from fragileprobe._http import parse_head as _parse_head
from fragileprobe._probes import (
    BANNER_MAX_BYTES,
    HTTP_MAX_HEAD_BYTES,
    HTTP_MAX_HEADERS,
    Outcome,
    ProbeResult,
    _banner_complete,
    _read_response,
    grab_banner,
    http_get,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence

# Bytes that make parsers stumble: digits outside ASCII in Latin-1 (superscripts, fractions), UTF-8 for
# Arabic-Indic and full-width digits, line ends, NUL, telnet IAC, separators.
_NASTY = [
    b"\xb2",
    b"\xb3",
    b"\xb9",
    b"\xbc",
    "٢".encode(),
    "\uff12".encode(),
    b"\r\n",
    b"\n",
    b"\r",
    b"\x00",
    b"\xff",
    b"\xff\xfb",
    b"\xff\xfa",
    b":",
    b";",
    b" ",
    b"\t",
    b"0",
    b"9",
    b"f",
    b"-",
    b"HTTP/1.1 ",
]
nasty_bytes = st.lists(st.one_of(st.sampled_from(_NASTY), st.binary(max_size=8)), max_size=60).map(b"".join)
any_bytes = st.one_of(st.binary(max_size=600), nasty_bytes)

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ_IO = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class ScriptedStream:
    """A stream that hands out the given chunks, then ends (like httpcore's MockStream)."""

    def __init__(self, chunks: Sequence[bytes]) -> None:
        self.chunks = [c for c in chunks if c]
        self.address = "127.0.0.1"

    async def receive(self, max_bytes: int) -> bytes:
        await anyio.lowlevel.checkpoint()
        if not self.chunks:
            raise anyio.EndOfStream
        chunk = self.chunks.pop(0)
        if len(chunk) > max_bytes:
            self.chunks.insert(0, chunk[max_bytes:])
            chunk = chunk[:max_bytes]
        return chunk


def _read(chunks: Sequence[bytes], max_bytes: int = 512) -> dict[str, Any]:
    async def main() -> dict[str, Any]:
        deadline = anyio.current_time() + 5
        return await _read_response(ScriptedStream(chunks), deadline, 1.0, max_bytes, 5.0)  # type: ignore[arg-type]

    result: dict[str, Any] = anyio.run(main)
    return result


def _check_response_fields(fields: dict[str, Any], max_bytes: int) -> None:
    outcome = fields.get("outcome", Outcome.OPEN)
    assert isinstance(outcome, Outcome)
    assert len(fields.get("data", b"")) <= HTTP_MAX_HEAD_BYTES
    assert len(fields.get("body", b"")) <= max_bytes
    if outcome is Outcome.OPEN:
        assert isinstance(fields["status"], int)
        assert 0 <= fields["status"] <= 999
        assert len(fields["headers"]) <= HTTP_MAX_HEADERS
    else:
        assert isinstance(fields.get("error"), str)


# --- HTTP: status line, headers, Content-Length, chunked ---------------------------------------------------


@FUZZ
@given(head=any_bytes)
def test_http_head_parser_gives_fields_or_a_protocol_violation(head: bytes) -> None:
    try:
        version, status, reason, headers = _parse_head(head)
    except _ProtocolViolation:
        return
    assert version[0].isascii()
    assert version[0].isdigit()
    assert 0 <= status <= 999
    assert isinstance(reason, str)
    assert len(headers) <= HTTP_MAX_HEADERS


@FUZZ
@given(
    value=st.one_of(
        st.text(max_size=30),
        st.sampled_from(["²", "٢", "1²", "00", " 5", "5, 5", "-1", "+3", "1_0", "9" * 40, "0x10", "\uff11"]),
    )
)
def test_any_content_length_is_a_length_or_a_protocol_error(value: str) -> None:
    """``Content-Length: \\xb2`` used to raise ValueError; any value is now a length or PROTOCOL_ERROR."""
    head = b"HTTP/1.1 200 OK\r\nContent-Length: " + value.encode("utf-8", "replace") + b"\r\n\r\n"
    try:
        _parse_head(head[:-2])
    except _ProtocolViolation:
        return  # the header line itself is malformed (a CR or LF inside the value)
    fields = _read([head + b"abc"])
    _check_response_fields(fields, 512)
    text = value.strip(" \t")
    if fields.get("outcome", Outcome.OPEN) is Outcome.OPEN:
        assert text.isascii()
        assert text.isdigit()
        assert fields["body"] == b"abc"[: int(text)]


@FUZZ
@given(raw=any_bytes, limit=st.integers(min_value=1, max_value=300))
def test_chunked_decoder_is_bounded_or_a_protocol_violation(raw: bytes, limit: int) -> None:
    try:
        body, finished = _decode_chunked(raw, limit)
    except _ProtocolViolation:
        return
    assert isinstance(finished, bool)
    assert len(body) <= limit
    assert len(body) <= len(raw)


@FUZZ
@given(size=st.sampled_from(["²", "٢", "\uff11", "+5", "-5", "0x5", "5 5", "fffffffff", "", " ", "\uff11"]))
def test_chunk_sizes_take_ascii_hex_only(size: str) -> None:
    raw = size.encode() + b"\r\nhello\r\n0\r\n\r\n"
    with pytest.raises(_ProtocolViolation, match="chunk size"):
        _decode_chunked(raw, 100)


@FUZZ_IO
@given(chunks=st.lists(any_bytes, max_size=6), max_bytes=st.integers(min_value=1, max_value=600))
def test_http_response_reader_gives_a_typed_result_for_any_bytes(chunks: list[bytes], max_bytes: int) -> None:
    fields = _read(chunks, max_bytes)
    _check_response_fields(fields, max_bytes)


VALID_RESPONSES = [
    b"HTTP/1.1 200 OK\r\nServer: GoAhead-Webs\r\nContent-Type: text/html\r\nContent-Length: 44\r\n\r\n"
    b"<html><title>MIS-3000 Pump</title></html>\r\n",
    b"HTTP/1.1 200 OK\r\nServer: x\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n"
    b"0\r\n\r\n",
    b"HTTP/1.0 404 Not Found\nServer: lf-only\n\nmissing",
    b"HTTP/1.1 204 No Content\r\nX-Folded: a\r\n b\r\n\r\n",
]


@FUZZ_IO
@given(response=st.sampled_from(VALID_RESPONSES), data=st.data())
def test_http_answer_split_anywhere_reads_the_same_as_in_one_piece(
    response: bytes, data: st.DataObject
) -> None:
    """A valid answer cut into pieces anywhere (down to one byte at a time) gives the same status, headers
    and body as the whole answer: no parser decides on a partial line."""
    whole = _read([response])
    assert whole.get("outcome", Outcome.OPEN) is Outcome.OPEN
    cuts = sorted(data.draw(st.sets(st.integers(min_value=1, max_value=len(response) - 1), max_size=40)))
    pieces = [response[a:b] for a, b in zip([0, *cuts], [*cuts, len(response)], strict=True)]
    split = _read(pieces)
    for key in ("status", "reason", "headers", "body"):
        assert split[key] == whole[key], key


def test_http_answer_one_byte_at_a_time_reads_the_same() -> None:
    for response in VALID_RESPONSES:
        whole, split = _read([response]), _read([bytes([b]) for b in response])
        assert {k: split[k] for k in ("status", "headers", "body")} == {
            k: whole[k] for k in ("status", "headers", "body")
        }


def test_endless_chunk_framing_is_bounded() -> None:
    fields = _read(
        [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"1\r\nx\r\n" * 2000],
        max_bytes=HTTP_CHUNK_OVERHEAD_MAX_BYTES * 4,
    )
    _check_response_fields(fields, HTTP_CHUNK_OVERHEAD_MAX_BYTES * 4)


# --- banners and telnet negotiation ------------------------------------------------------------------------


@FUZZ
@given(data=any_bytes)
def test_banner_end_detector_is_total(data: bytes) -> None:
    assert _banner_complete(data) in (True, False)


@FUZZ
@given(
    data=st.one_of(
        any_bytes,
        st.lists(
            st.sampled_from([b"\xff", b"\xfb", b"\xfd", b"\xfa", b"\xf0", b"\x01", b"login: ", b"\x18"]),
            max_size=80,
        ).map(b"".join),
    )
)
def test_telnet_negotiation_stripper_is_total_and_never_grows(data: bytes) -> None:
    payload, seen = strip_telnet_negotiation(data)
    assert isinstance(payload, bytes)
    assert len(payload) <= len(data)
    assert len(seen) <= 16
    assert all(isinstance(s, str) for s in seen)


TELNET = b"\xff\xfb\x01\xff\xfb\x03\xff\xfd\x18\xff\xfa\x18\x01\xff\xf0Welcome to MIS-3000\r\nlogin: "


@FUZZ
@given(data=st.data())
def test_telnet_banner_split_anywhere_fingerprints_the_same(data: st.DataObject) -> None:
    """What grab_banner gathered piece by piece is the same bytes, so the same fingerprint and model key."""
    cuts = sorted(data.draw(st.sets(st.integers(min_value=1, max_value=len(TELNET) - 1), max_size=20)))
    pieces = [TELNET[a:b] for a, b in zip([0, *cuts], [*cuts, len(TELNET)], strict=True)]
    joined = b"".join(pieces)
    assert fingerprint_service(23, joined) == fingerprint_service(23, TELNET)
    assert strip_telnet_negotiation(joined) == strip_telnet_negotiation(TELNET)


# --- fingerprint rules --------------------------------------------------------------------------------------


@FUZZ
@given(data=any_bytes, port=st.sampled_from([21, 22, 23, 25, 80, 3306, 5432, 2575, 104, 8080, 9100, 10021]))
def test_fingerprint_rules_give_a_service_for_any_bytes(data: bytes, port: int) -> None:
    for banner in (data, b"220 " + data, b"SSH-2.0-" + data, b"HTTP/1.1 " + data, b"\xff\xfb" + data):
        info = fingerprint_service(port, banner)
        assert isinstance(info, ServiceInfo)
        assert info.port == port
    parsed = parse_http_response(b"HTTP/1.1 " + data)
    assert parsed is not None
    status, headers, _body = parsed
    assert status is None or 100 <= status <= 999
    assert isinstance(fingerprint_http(status, headers, data, port=port), ServiceInfo)
    key = model_key(open_ports=[port], banners={port: data})
    assert key == model_key(open_ports=[port], banners={port: data})


@FUZZ
@given(status=st.sampled_from(["٢٠٠", "\uff12\uff10\uff10", "2²0", "20", "2000"]))
def test_http_status_takes_ascii_digits_only(status: str) -> None:
    """A str regex's \\d matched '٢' and int() read '٢٠٠' as 200; a status is three ASCII digits."""
    parsed = parse_http_response(f"HTTP/1.1 {status} OK\r\n\r\n".encode())
    assert parsed is not None
    assert parsed[0] is None
    with pytest.raises(_ProtocolViolation, match="malformed status line"):
        _parse_head(f"HTTP/1.1 {status} OK".encode())


# --- the same readers over a real loopback socket: time and byte bounds ------------------------------------


@contextlib.asynccontextmanager
async def sender(host: str, pieces: Sequence[bytes], gap_s: float) -> AsyncIterator[int]:
    listener = await anyio.create_tcp_listener(local_host=host, local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)

    async def serve(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            with contextlib.suppress(anyio.BrokenResourceError, OSError):
                for piece in pieces:
                    await stream.send(piece)
                    await anyio.sleep(gap_s)
                await anyio.sleep(0.2)

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, serve)
        yield port
        tg.cancel_scope.cancel()


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(pieces=st.lists(any_bytes, min_size=1, max_size=5), web=st.booleans())
def test_probes_over_a_socket_are_typed_and_bounded(
    loopback_host: str, pieces: list[bytes], web: bool
) -> None:
    """Arbitrary bytes from a real peer, in pieces: a typed result, within the probe's total bound and byte
    caps (no exception, whatever the device sends)."""
    total_s = 1.0

    async def main() -> ProbeResult:
        async with sender(loopback_host, pieces, 0.01) as port:
            if web:
                return await http_get(
                    loopback_host,
                    port,
                    timeout_s=0.5,
                    read_timeout_s=0.5,
                    total_timeout_s=total_s,
                    max_bytes=256,
                )
            return await grab_banner(
                loopback_host, port, timeout_s=0.5, read_timeout_s=0.5, total_timeout_s=total_s
            )

    started = time.monotonic()
    result = anyio.run(main)
    elapsed = time.monotonic() - started
    assert isinstance(result.outcome, Outcome)
    assert result.duration_s <= total_s + 1.5  # the probe's own bound plus scheduling slack on 2 shared cores
    assert elapsed < 10
    assert len(result.data) <= max(HTTP_MAX_HEAD_BYTES, BANNER_MAX_BYTES)
