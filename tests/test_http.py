"""The sans-IO HTTP response reader: transcripts fed whole, byte by byte and in every split (as h11 tests its
readers), and any bytes in any split give a typed Response within the caps, never an exception."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fragileprobe._http import (
    HTTP_CHUNK_LINE_MAX_BYTES,
    HTTP_CHUNK_OVERHEAD_MAX_BYTES,
    HTTP_MAX_HEAD_BYTES,
    HTTP_MAX_HEADERS,
    ProtocolViolation,
    Response,
    ResponseParser,
    decode_chunked,
    parse_head,
)
from fragileprobe._results import Outcome

MAX_BODY = 512
OPEN, BAD = Outcome.OPEN, Outcome.PROTOCOL_ERROR


def run(
    chunks: Sequence[bytes], *, end: str = "eof", max_body: int = MAX_BODY, waited_s: float = 1.0
) -> Response:
    """Feed ``chunks`` as a driver would (stopping once the parser decided), then end the stream."""
    parser = ResponseParser(max_body_bytes=max_body)
    for chunk in chunks:
        if parser.wants() == 0:
            break
        parser.feed(chunk)
        assert (parser.result is None) == (parser.wants() > 0)
    if parser.result is not None:
        return parser.result
    return parser.feed_eof() if end == "eof" else parser.feed_timeout(waited_s)


def splits(data: bytes) -> Iterator[list[bytes]]:
    """The same bytes whole, byte by byte, and cut once at every position (long inputs: a sample of them)."""
    yield [data]
    yield [data[i : i + 1] for i in range(len(data))]
    step = max(1, len(data) // 200)
    for cut in range(0, len(data) + 1, step):
        yield [data[:cut], data[cut:]]


def same_answer(a: Response, b: Response, stream: bytes) -> None:
    """Two reads of one stream agree on everything; only an early status-line verdict keeps what had arrived
    when it fell (a prefix of the stream holding the status line), as the probe always reported."""
    if a.error is not None and a.error.startswith("malformed status line"):
        for r in (a, b):
            assert stream.startswith(r.data)
            assert b"\n" in r.data
        a, b = dataclasses.replace(a, data=b""), dataclasses.replace(b, data=b"")
    assert a == b


HEAD_200 = b"HTTP/1.1 200 OK\r\nServer: pump-web/2.1\r\nContent-Length: 38\r\n\r\n"
PAGE = b"<html><title>Infusion Pump</title></html>"[:38]
CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
LONG_EXT = b"1;" + b"x" * (HTTP_CHUNK_LINE_MAX_BYTES - 10) + b"\r\na\r\n"

# (name, stream, how it ends if the parser has not decided, expected fields)
TRANSCRIPTS: list[tuple[str, bytes, str, dict[str, Any]]] = [
    (
        "content-length body with a title",
        HEAD_200 + PAGE,
        "eof",
        {
            "outcome": OPEN,
            "status": 200,
            "reason": "OK",
            "http_version": "1.1",
            "server": "pump-web/2.1",
            "body": PAGE,
            "title": "Infusion Pump",
            "error": None,
            "truncated": False,
            "data": HEAD_200,
        },
    ),
    (
        "bytes after the body are not read",
        HEAD_200 + PAGE + b"GARBAGE",
        "eof",
        {"outcome": OPEN, "body": PAGE, "error": None},
    ),
    (
        "bare LF line ends",
        b"HTTP/1.0 404 Not Found\nX-A: 1\n\nnope",
        "eof",
        {"outcome": OPEN, "status": 404, "http_version": "1.0", "headers": (("x-a", "1"),), "body": b"nope"},
    ),
    (
        "folded header continues the last one",
        b"HTTP/1.1 200 OK\r\nX-A: one\r\n two\r\nContent-Length: 0\r\n\r\n",
        "eof",
        {"outcome": OPEN, "headers": (("x-a", "one two"), ("content-length", "0")), "body": b""},
    ),
    (
        "chunked body",
        CHUNKED + b"4\r\nWiki\r\n5;ext=1\r\npedia\r\n0\r\n\r\n",
        "eof",
        {"outcome": OPEN, "body": b"Wikipedia", "truncated": False, "error": None},
    ),
    ("chunked body with bare LF", CHUNKED + b"4\nWiki\n0\n\n", "eof", {"outcome": OPEN, "body": b"Wiki"}),
    (
        "chunked body kept to max_body",
        CHUNKED + b"400\r\n" + b"z" * 0x400 + b"\r\n0\r\n\r\n",
        "eof",
        {"outcome": OPEN, "body": b"z" * MAX_BODY, "truncated": True},
    ),
    (
        "a head ending just under its cap, then the body",
        b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * (HTTP_MAX_HEAD_BYTES - 30) + b"\r\n\r\n" + b"B" * 100,
        "eof",
        {"outcome": OPEN, "body": b"B" * 100, "truncated": False},
    ),
    (
        "204 has no body whatever Content-Length says",
        b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello",
        "eof",
        {"outcome": OPEN, "status": 204, "body": b"", "truncated": False},
    ),
    (
        "1xx has no body",
        b"HTTP/1.1 100 Continue\r\n\r\n",
        "eof",
        {"outcome": OPEN, "status": 100, "body": b""},
    ),
    (
        "body until the end of the stream",
        b"HTTP/1.0 200 OK\r\n\r\nall of it",
        "eof",
        {"outcome": OPEN, "body": b"all of it", "error": None, "truncated": False},
    ),
    (
        "body without length cut at max_body",
        b"HTTP/1.0 200 OK\r\n\r\n" + b"b" * 2000,
        "eof",
        {"outcome": OPEN, "body": b"b" * MAX_BODY, "truncated": True},
    ),
    (
        "Content-Length above max_body",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2000\r\n\r\n" + b"b" * 2000,
        "eof",
        {"outcome": OPEN, "body": b"b" * MAX_BODY, "truncated": True},
    ),
    (
        "body shorter than Content-Length, then FIN",
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
        "eof",
        {"outcome": OPEN, "body": b"abc", "error": "connection closed before the end of the body"},
    ),
    (
        "body shorter than Content-Length, then quiet",
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
        "timeout",
        {"outcome": OPEN, "body": b"abc", "error": "body incomplete after 1 s"},
    ),
    (
        "chunked body cut by FIN",
        CHUNKED + b"4\r\nWi",
        "eof",
        {"outcome": OPEN, "body": b"Wi", "error": "connection closed before the end of the body"},
    ),
    (
        "SSH banner on a web port",
        b"SSH-2.0-OpenSSH_8.9\r\n",
        "timeout",
        {"outcome": BAD, "status": None, "error": "malformed status line b'SSH-2.0-OpenSSH_8.9'"},
    ),
    (
        "FTP greeting, several lines",
        b"220-Welcome\r\n220 ready\r\n",
        "timeout",
        {"outcome": BAD, "error": "malformed status line b'220-Welcome'"},
    ),
    (
        "malformed header line",
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        "eof",
        {"outcome": BAD, "error": "malformed header line b'no colon here'"},
    ),
    (
        "continuation before any header",
        b"HTTP/1.1 200 OK\r\n folded\r\n\r\n",
        "eof",
        {"outcome": BAD, "error": "header continuation line before any header"},
    ),
    (
        "too many headers",
        b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * (HTTP_MAX_HEADERS + 1) + b"\r\n",
        "eof",
        {"outcome": BAD, "error": f"more than {HTTP_MAX_HEADERS} headers"},
    ),
    (
        "superscript digit in Content-Length",
        b"HTTP/1.1 200 OK\r\nContent-Length: \xb2\r\n\r\n",
        "eof",
        {"outcome": BAD, "status": 200, "error": "bad Content-Length '\xb2'", "body": b""},
    ),
    (
        "head over its cap",
        b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * HTTP_MAX_HEAD_BYTES,
        "eof",
        {"outcome": BAD, "truncated": True, "error": f"HTTP head larger than {HTTP_MAX_HEAD_BYTES} bytes"},
    ),
    (
        "closed before any response",
        b"",
        "eof",
        {"outcome": BAD, "data": b"", "error": "connection closed before any HTTP response"},
    ),
    (
        "closed in the middle of the head",
        b"HTTP/1.1 200 OK\r\nServer: x",
        "eof",
        {"outcome": BAD, "error": "connection closed in the middle of the head"},
    ),
    (
        "quiet in the middle of the head",
        b"HTTP/1.1 200 OK\r\nServer: x",
        "timeout",
        {"outcome": Outcome.TIMEOUT, "error": "HTTP head incomplete after 1 s (26 bytes)"},
    ),
    (
        "chunk data not followed by CRLF",
        CHUNKED + b"4\r\nWikiXX",
        "eof",
        {"outcome": BAD, "status": 200, "body": b"Wiki", "error": "chunk data not followed by CRLF"},
    ),
    (
        "malformed chunk size",
        CHUNKED + b"4\r\nWiki\r\nzz\r\n",
        "eof",
        {"outcome": BAD, "body": b"Wiki", "error": "malformed chunk size b'zz'"},
    ),
    (
        "chunk-size line over its cap",
        CHUNKED + b"1" + b" " * (HTTP_CHUNK_LINE_MAX_BYTES + 1),
        "eof",
        {"outcome": BAD, "error": "chunk-size line longer than its cap"},
    ),
    (
        "endless chunk extensions",
        CHUNKED + LONG_EXT * 20,
        "eof",
        {
            "outcome": BAD,
            "error": f"chunked framing exceeded {HTTP_CHUNK_OVERHEAD_MAX_BYTES} bytes of overhead",
        },
    ),
]


@pytest.mark.parametrize(("name", "stream", "end", "expected"), TRANSCRIPTS, ids=[t[0] for t in TRANSCRIPTS])
def test_transcript_reads_the_same_in_every_split(
    name: str, stream: bytes, end: str, expected: dict[str, Any]
) -> None:
    whole = run([stream], end=end)
    got = {key: getattr(whole, key) for key in expected}
    assert got == expected
    for chunks in splits(stream):
        same_answer(whole, run(chunks, end=end), stream)


def test_a_status_line_is_judged_before_the_rest_of_the_head_arrives() -> None:
    """A peer answering junk is a protocol error once its first line is complete: nothing more is read."""
    parser = ResponseParser()
    assert parser.feed(b"SSH-2.0-x") is None
    result = parser.feed(b"\r\n")
    assert result is not None
    assert result.outcome is Outcome.PROTOCOL_ERROR
    assert parser.wants() == 0


def test_the_parser_asks_for_no_more_than_its_caps() -> None:
    parser = ResponseParser(max_body_bytes=100)
    assert parser.wants() == HTTP_MAX_HEAD_BYTES
    parser.feed(b"HTTP/1.1 200 OK\r\n")
    assert parser.wants() == HTTP_MAX_HEAD_BYTES - 17
    parser.feed(b"Content-Length: 40\r\n\r\nab")
    assert parser.wants() == 38  # the rest of Content-Length, below max_body
    chunked = ResponseParser(max_body_bytes=100)
    chunked.feed(CHUNKED)
    assert chunked.wants() == 100 + HTTP_CHUNK_OVERHEAD_MAX_BYTES


def test_after_deciding_the_parser_ignores_what_follows() -> None:
    parser = ResponseParser()
    first = parser.feed(HEAD_200 + PAGE)
    assert first is not None
    assert parser.feed(b"HTTP/1.1 500 Oops\r\n\r\n") is first
    assert parser.feed_eof() is first
    assert parser.feed_timeout(3.0) is first


def test_response_fields_are_the_http_result_fields() -> None:
    """``fields()`` builds an HttpResult as it is (the probe adds host, port and times)."""
    from fragileprobe._results import HttpResult

    fields = run([HEAD_200 + PAGE]).fields()
    record = HttpResult(host="127.0.0.1", port=80, latency_s=0.0, started_at_s=0.0, duration_s=0.0, **fields)
    assert record.header("SERVER") == "pump-web/2.1"
    assert record.title == "Infusion Pump"


# --- any bytes ------------------------------------------------------------------------------------------

_PIECES = [
    b"HTTP/1.1 200 OK\r\n",
    b"HTTP/1.0 ",
    b"\r\n",
    b"\n",
    b"\r",
    b":",
    b" ",
    b"\t",
    b"0",
    b"\xb2",
    b"Content-Length: ",
    b"Transfer-Encoding: chunked\r\n",
    b"5\r\n",
    b"0\r\n\r\n",
    b";",
    b"\x00",
    b"\xff",
]
streams = st.one_of(
    st.binary(max_size=400),
    st.lists(st.one_of(st.sampled_from(_PIECES), st.binary(max_size=6)), max_size=60).map(b"".join),
)


@st.composite
def responses(draw: st.DrawFn) -> bytes:
    """Well-formed responses (chunked, Content-Length or read to the end), sometimes cut or corrupted."""
    eol = draw(st.sampled_from([b"\r\n", b"\n"]))
    body_chunks = draw(st.lists(st.binary(min_size=1, max_size=40), max_size=5))
    body = b"".join(body_chunks)
    framing = draw(st.sampled_from(["chunked", "length", "none"]))
    headers = [b"Server: dev"]
    if framing == "chunked":
        headers.append(b"Transfer-Encoding: chunked")
        payload = b"".join(b"%x" % len(c) + eol + c + eol for c in body_chunks) + b"0" + eol + eol
    else:
        payload = body
        if framing == "length":
            headers.append(b"Content-Length: %d" % draw(st.integers(0, len(body) + 5)))
    stream = b"HTTP/1.1 200 OK" + eol + b"".join(h + eol for h in headers) + eol + payload
    cut = draw(st.integers(0, len(stream)))
    return stream[:cut] if draw(st.booleans()) else stream


streams = st.one_of(streams, responses())
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _check(result: Response, max_body: int) -> None:
    assert isinstance(result, Response)
    assert result.outcome in (Outcome.OPEN, Outcome.PROTOCOL_ERROR, Outcome.TIMEOUT)
    assert len(result.data) <= HTTP_MAX_HEAD_BYTES
    assert len(result.body) <= max_body
    if result.outcome is Outcome.OPEN:
        assert result.status is not None
        assert 0 <= result.status <= 999
        assert len(result.headers) <= HTTP_MAX_HEADERS
    else:
        assert isinstance(result.error, str)


@FUZZ
@given(
    stream=streams,
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=8),
    max_body=st.integers(min_value=1, max_value=64),
    end=st.sampled_from(["eof", "timeout"]),
)
def test_any_bytes_in_any_split_give_the_same_typed_result(
    stream: bytes, cuts: list[int], max_body: int, end: str
) -> None:
    points = sorted({0, len(stream), *(c for c in cuts if c <= len(stream))})
    chunks = [stream[a:b] for a, b in itertools.pairwise(points)]
    whole = run([stream], end=end, max_body=max_body)
    _check(whole, max_body)
    same_answer(whole, run(chunks, end=end, max_body=max_body), stream)
    same_answer(
        whole, run([stream[i : i + 1] for i in range(len(stream))], end=end, max_body=max_body), stream
    )


@FUZZ
@given(head=streams, flood=st.integers(min_value=0, max_value=200_000), max_body=st.integers(1, 2048))
def test_memory_stays_within_the_caps_whatever_is_fed(head: bytes, flood: int, max_body: int) -> None:
    """However much one feed hands it, the parser keeps at most its head cap and its body cap."""
    parser = ResponseParser(max_body_bytes=max_body)
    for chunk in (head, b"x" * flood, b"\r\n\r\n", b"y" * flood):
        parser.feed(chunk)
        assert len(parser._head) <= HTTP_MAX_HEAD_BYTES
        assert len(parser._body) <= max_body + HTTP_CHUNK_OVERHEAD_MAX_BYTES
    _check(parser.feed_eof(), max_body)


@FUZZ
@given(data=streams, limit=st.integers(min_value=1, max_value=64))
def test_decode_chunked_gives_a_body_or_a_protocol_violation(data: bytes, limit: int) -> None:
    try:
        body, finished = decode_chunked(data, limit)
    except ProtocolViolation:
        return
    assert len(body) <= limit
    assert isinstance(finished, bool)


@FUZZ
@given(data=streams)
def test_parse_head_gives_fields_or_a_protocol_violation(data: bytes) -> None:
    try:
        version, status, _, headers = parse_head(data)
    except ProtocolViolation:
        return
    assert version[0].isdigit()
    assert 0 <= status <= 999
    assert len(headers) <= HTTP_MAX_HEADERS
