"""A sans-IO reader for one HTTP/1.x response: bytes in, a typed :class:`Response` out.

No sockets and no clock (h11's split, ``h11/_readers.py``): the caller receives bytes however it likes and
hands them to a :class:`ResponseParser`, which says how many more it can take (:meth:`~ResponseParser.wants`)
and, once it has decided, what the response was (:attr:`~ResponseParser.result`). The end of the stream and
a peer that went quiet are told to the parser (:meth:`~ResponseParser.feed_eof`,
:meth:`~ResponseParser.feed_timeout`) with the time waited as a number, so every path is a pure function of
its input and is tested whole and byte by byte in ``tests/test_http.py``.

The reader's rules, in order:

1. The head (status line and headers, RFC 9112 4-5) is held in one buffer of at most
   :data:`HTTP_MAX_HEAD_BYTES`. The status line is judged as soon as its line is complete: a peer answering
   junk (an SSH or FTP banner on a web port) is a protocol error at once, not after we waited out a head it
   will never send. The head ends at the first blank line (bare LF line ends are tolerated).
2. A head over its cap, a malformed status or header line, more than :data:`HTTP_MAX_HEADERS` headers, or
   a Content-Length that is not a bounded ASCII number (:func:`~fragileprobe._numbers.device_decimal`) is
   a ``PROTOCOL_ERROR``. The end of the stream before the head ended is one too; a pause is a ``TIMEOUT``.
3. The body: ``Transfer-Encoding: chunked`` is decoded, at most the caller's ``max_body_bytes`` kept and at
   most :data:`HTTP_CHUNK_OVERHEAD_MAX_BYTES` of framing accepted beyond them; otherwise Content-Length
   bytes, or up to the end of the stream, at most ``max_body_bytes``. 1xx, 204 and 304 have no body
   (RFC 9110 6.4.1). Once the head is valid the outcome is OPEN: a body cut short (the stream ended or
   went quiet) is a note in ``error``; only broken chunked framing makes it a ``PROTOCOL_ERROR``.

Every buffer is capped: the head at :data:`HTTP_MAX_HEAD_BYTES`, the raw body at ``max_body_bytes``
(plus the chunk overhead allowance), whatever the caller feeds.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from dataclasses import dataclass
from typing import Any, Final

from fragileprobe._numbers import device_decimal, device_hex
from fragileprobe._results import Outcome

__all__ = [
    "HTTP_BODY_MAX_BYTES",
    "HTTP_BODY_MAX_BYTES_CAP",
    "HTTP_CHUNK_LINE_MAX_BYTES",
    "HTTP_CHUNK_OVERHEAD_MAX_BYTES",
    "HTTP_MAX_HEADERS",
    "HTTP_MAX_HEAD_BYTES",
    "ProtocolViolation",
    "Response",
    "ResponseParser",
    "decode_chunked",
    "find_head_end",
    "parse_head",
    "title",
]

# HTTP head (status line + headers): h11 uses 16 KiB as its default limit for an incomplete event.
HTTP_MAX_HEAD_BYTES: Final = 16384
# http.client refuses more than 100 header lines (_MAXHEADERS); a device sending more is broken or hostile.
HTTP_MAX_HEADERS: Final = 100
# First bytes of the body kept: a <title> sits in the first few hundred bytes of any device web UI.
HTTP_BODY_MAX_BYTES: Final = 8192
# Upper limit a caller may ask for: a whole status page, still far from anything that strains memory.
HTTP_BODY_MAX_BYTES_CAP: Final = 1 << 20
# Chunked framing may cost at most this many raw bytes beyond the decoded body before we call the body
# endless (a stream of empty or 1-byte chunks, or endless chunk extensions).
HTTP_CHUNK_OVERHEAD_MAX_BYTES: Final = 4096
# A chunk-size line is a hex number plus optional extensions; real ones are < 20 bytes.
HTTP_CHUNK_LINE_MAX_BYTES: Final = 1024
# <title> text kept (a label, not a document).
TITLE_MAX_CHARS: Final = 200
# Bytes of a bad line quoted in an error message (enough to recognise a banner, short enough for a log).
_QUOTE_MAX_BYTES: Final = 80

_STATUS_RE = re.compile(rb"^HTTP/([0-9])\.([0-9]) ([0-9]{3})(?: ([^\r\n]*))?$")
_TOKEN_RE = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_TITLE_RE = re.compile(rb"<title[^>]*>(.*?)(?:</title|$)", re.IGNORECASE | re.DOTALL)
# Statuses whose response has no body whatever its headers say (RFC 9110 6.4.1, 15.3.5, 15.4.5).
_NO_BODY_STATUSES: Final = frozenset({204, 304})


class ProtocolViolation(Exception):
    """The peer's bytes are not HTTP (internal: the parser turns it into a ``PROTOCOL_ERROR`` result)."""


# --- pure pieces -----------------------------------------------------------------------------------------


def find_head_end(buf: bytes | bytearray) -> int:
    """Index just past the blank line ending the head, or -1 (tolerates bare LF line ends)."""
    crlf = buf.find(b"\r\n\r\n")
    lf = buf.find(b"\n\n")
    ends = [i + 4 for i in (crlf,) if i >= 0] + [i + 2 for i in (lf,) if i >= 0]
    return min(ends) if ends else -1


def _status_line(line: bytes) -> tuple[str, int, str]:
    match = _STATUS_RE.match(line.rstrip(b"\r"))
    if match is None:
        raise ProtocolViolation(f"malformed status line {line[:_QUOTE_MAX_BYTES]!r}")
    reason = (match[4] or b"").decode("latin-1").strip()
    return f"{int(match[1])}.{int(match[2])}", int(match[3]), reason


def _add_header(headers: list[tuple[str, str]], line: bytes) -> None:
    """Append one header line to ``headers`` (a folded line continues the last one, RFC 9112 5.2)."""
    if line[:1] in (b" ", b"\t"):
        if not headers:
            raise ProtocolViolation("header continuation line before any header")
        name, value = headers[-1]
        headers[-1] = (name, f"{value} {line.strip().decode('latin-1')}")
        return
    name_b, sep, value_b = line.partition(b":")
    if not sep or not _TOKEN_RE.match(name_b):
        raise ProtocolViolation(f"malformed header line {line[:_QUOTE_MAX_BYTES]!r}")
    headers.append((name_b.decode("ascii").lower(), value_b.strip().decode("latin-1")))
    if len(headers) > HTTP_MAX_HEADERS:
        raise ProtocolViolation(f"more than {HTTP_MAX_HEADERS} headers")


def parse_head(head: bytes) -> tuple[str, int, str, list[tuple[str, str]]]:
    """Parse a status line and header block (RFC 9112 4 and 5): (version, status, reason, headers).

    Raises:
        ProtocolViolation: a malformed status or header line, or too many headers.
    """
    lines = head.replace(b"\r\n", b"\n").rstrip(b"\n").split(b"\n")
    version, status, reason = _status_line(lines[0])
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        _add_header(headers, line.rstrip(b"\r"))
    return version, status, reason, headers


@dataclass(frozen=True, slots=True)
class _Chunks:
    """How far a chunked body decodes: the body so far, whether it ended, and why framing broke (or None)."""

    body: bytes
    finished: bool
    violation: str | None = None


def _chunk_size(raw: bytes | bytearray, pos: int) -> tuple[int, int] | str | None:
    """The chunk-size line at ``pos``: (size, index after its LF), an error text, or None (incomplete)."""
    eol = raw.find(b"\n", pos)
    if (eol if eol >= 0 else len(raw)) - pos > HTTP_CHUNK_LINE_MAX_BYTES:
        return "chunk-size line longer than its cap"
    if eol < 0:
        return None
    size_text = bytes(raw[pos:eol]).rstrip(b"\r").split(b";", 1)[0].strip(b" \t")
    size = device_hex(size_text)
    if size is None:
        return f"malformed chunk size {size_text[:20]!r}"
    return size, eol + 1


def _after_chunk(raw: bytes | bytearray, end: int) -> int | str | None:
    """Index past the line end closing a chunk's data at ``end``, an error text, or None (incomplete)."""
    tail = bytes(raw[end : end + 2])
    if tail == b"\r\n":
        return end + 2
    if tail[:1] == b"\n":
        return end + 1
    if tail in (b"", b"\r"):
        return None
    return "chunk data not followed by CRLF"


def _chunks(raw: bytes | bytearray, limit: int) -> _Chunks:
    """Decode a chunked body prefix (RFC 9112 7.1), keeping at most ``limit`` decoded bytes.

    ``finished`` is True at the last chunk or once ``limit`` decoded bytes are in hand. Broken framing is
    reported with the body decoded before it, whatever the split of the bytes that led there.
    """
    out = bytearray()
    pos = 0
    while True:
        line = _chunk_size(raw, pos)
        if not isinstance(line, tuple):
            return _Chunks(bytes(out), False, line)
        size, start = line
        if size == 0:
            return _Chunks(bytes(out), True)
        end = start + size
        out += raw[start : min(end, len(raw))]
        if len(out) >= limit:
            return _Chunks(bytes(out[:limit]), True)
        after = _after_chunk(raw, end)
        if not isinstance(after, int):
            return _Chunks(bytes(out), False, after)
        pos = after


def decode_chunked(raw: bytes | bytearray, limit: int) -> tuple[bytes, bool]:
    """Decode a chunked body prefix. Returns (decoded up to ``limit``, finished).

    ``finished`` is True at the last chunk or once ``limit`` decoded bytes are in hand.

    Raises:
        ProtocolViolation: malformed framing.
    """
    decoded = _chunks(raw, limit)
    if decoded.violation is not None:
        raise ProtocolViolation(decoded.violation)
    return decoded.body, decoded.finished


def title(body: bytes) -> str | None:
    """The text of the first ``<title>`` in ``body`` (whitespace collapsed, at most TITLE_MAX_CHARS)."""
    match = _TITLE_RE.search(body)
    if match is None:
        return None
    text = " ".join(match[1].decode("utf-8", errors="replace").split())
    return text[:TITLE_MAX_CHARS] or None


# --- the parser ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Response:
    """What one HTTP response came to (the :class:`~fragileprobe.HttpResult` fields the answer decides).

    Attributes:
        outcome: OPEN once a valid head arrived; PROTOCOL_ERROR or TIMEOUT otherwise (see the module rules).
        data: the raw head (through its blank line), or what had arrived of it when the parser decided.
        error: why the response is not OPEN, or a note on an OPEN one (body cut short); else None.
        truncated: the head hit its cap, or the body was cut at ``max_body_bytes`` with more to come.
        status: the status code, once the head parsed.
        reason: the reason phrase.
        http_version: ``"1.1"``, ``"1.0"``, ...
        headers: (lower-cased name, Latin-1 value) pairs in order.
        body: the first ``max_body_bytes`` of the decoded body.
        server: the first ``Server`` header.
        title: the body's ``<title>`` text.
    """

    outcome: Outcome
    data: bytes = b""
    error: str | None = None
    truncated: bool = False
    status: int | None = None
    reason: str = ""
    http_version: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    server: str | None = None
    title: str | None = None

    def fields(self) -> dict[str, Any]:
        """The record's fields by name (keyword arguments for an :class:`~fragileprobe.HttpResult`)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


class _State(enum.Enum):
    HEAD = "head"  # collecting the status line and headers
    BODY = "body"  # the head parsed; collecting the body
    DONE = "done"  # decided: ``result`` is set


@dataclass(frozen=True, slots=True)
class _Framing:
    """How the body is delimited, decided from the head."""

    chunked: bool
    length: int | None  # Content-Length (0 for statuses without a body); None: until the end of the stream
    raw_cap: int  # raw body bytes we accept


class ResponseParser:
    """Reads one HTTP/1.x response from the bytes it is fed (sans-IO: no sockets, no clock).

    Feed it with :meth:`feed` while :meth:`wants` is above 0, then tell it how the stream ended if it has not
    decided yet (:meth:`feed_eof`, :meth:`feed_timeout`). :attr:`result` holds the :class:`Response` once it
    has decided. It keeps at most its caps whatever one :meth:`feed` hands it (bytes past the head's cap, or
    past the body's, are dropped), so memory stays bounded; a driver asks the socket for at most
    :meth:`wants` bytes, which reads the same as feeding the whole stream at once.

    Args:
        max_body_bytes: how many decoded body bytes to keep.
    """

    __slots__ = (
        "_body",
        "_framing",
        "_head",
        "_head_fields",
        "_max_body",
        "_state",
        "_status_checked",
        "result",
    )

    def __init__(self, *, max_body_bytes: int = HTTP_BODY_MAX_BYTES) -> None:
        self._max_body = max_body_bytes
        self._state = _State.HEAD
        self._head = bytearray()
        self._status_checked = False
        self._head_fields: dict[str, Any] = {}
        self._framing = _Framing(chunked=False, length=0, raw_cap=0)
        self._body = bytearray()
        self.result: Response | None = None

    def wants(self) -> int:
        """How many more bytes the parser can take now; 0 once it has decided."""
        if self._state is _State.HEAD:
            return HTTP_MAX_HEAD_BYTES - len(self._head)
        if self._state is _State.BODY:
            return self._framing.raw_cap - len(self._body)
        return 0

    def feed(self, data: bytes) -> Response | None:
        """Take ``data`` (what the peer sent next); returns :attr:`result` (None while undecided)."""
        if self._state is _State.HEAD:
            self._feed_head(data)
        elif self._state is _State.BODY:
            self._feed_body(data)
        return self.result

    def feed_eof(self) -> Response:
        """The peer closed its side (FIN): decide with what arrived."""
        if self._state is _State.HEAD:
            what = "in the middle of the head" if self._head else "before any HTTP response"
            self._fail(f"connection closed {what}")
        elif self._state is _State.BODY:
            body = self._decoded()
            length = self._framing.length
            short = self._framing.chunked or (length is not None and len(body) < length)
            self._open(body, error="connection closed before the end of the body" if short else None)
        assert self.result is not None  # every state above decides
        return self.result

    def feed_timeout(self, waited_s: float) -> Response:
        """The peer went quiet (nothing for ``waited_s`` seconds, or the probe's deadline): decide."""
        if self._state is _State.HEAD:
            self._done(
                Outcome.TIMEOUT,
                bytes(self._head),
                f"HTTP head incomplete after {waited_s:g} s ({len(self._head)} bytes)",
            )
        elif self._state is _State.BODY:
            self._open(self._decoded(), error=f"body incomplete after {waited_s:g} s")
        assert self.result is not None  # every state above decides
        return self.result

    # -- head --

    def _feed_head(self, data: bytes) -> None:
        room = HTTP_MAX_HEAD_BYTES - len(self._head)
        self._head += data[:room]
        end = find_head_end(self._head)
        if end >= 0:
            rest = bytes(self._head[end:]) + data[room:]
            del self._head[end:]
            self._start_body(rest)
        elif not self._status_ok():
            return
        elif len(self._head) >= HTTP_MAX_HEAD_BYTES:
            self._done(
                Outcome.PROTOCOL_ERROR,
                bytes(self._head),
                f"HTTP head larger than {HTTP_MAX_HEAD_BYTES} bytes",
                truncated=True,
            )

    def _status_ok(self) -> bool:
        """Judge the status line once it is complete; False (and decided) when it is not HTTP."""
        line_end = self._head.find(b"\n")
        if self._status_checked or line_end < 0:
            return True
        self._status_checked = True
        try:
            parse_head(bytes(self._head[: line_end + 1]))
        except ProtocolViolation as exc:
            self._fail(str(exc))
            return False
        return True

    def _start_body(self, rest: bytes) -> None:
        head = bytes(self._head)
        try:
            version, status, reason, headers = parse_head(head)
        except ProtocolViolation as exc:
            self._fail(str(exc))
            return
        self._head_fields = {
            "status": status,
            "reason": reason,
            "http_version": version,
            "headers": tuple(headers),
            "server": next((v for k, v in headers if k == "server"), None),
        }
        framing = self._framing_of(status, dict(headers))
        if isinstance(framing, str):
            self._done(Outcome.PROTOCOL_ERROR, head, framing)
            return
        self._framing = framing
        self._state = _State.BODY
        self._feed_body(rest)

    def _framing_of(self, status: int, header_map: dict[str, str]) -> _Framing | str:
        """The body's framing from the head (the last of repeated headers counts), or an error text."""
        chunked = "chunked" in header_map.get("transfer-encoding", "").lower()
        length: int | None = None
        if not chunked and "content-length" in header_map:
            text = header_map["content-length"].strip(" \t")
            # ASCII digits only, bounded (RFC 9110 8.6): '\xb2' passes str.isdigit(), then int() raises.
            length = device_decimal(text)
            if length is None:
                return f"bad Content-Length {text[:40]!r}"
        if status in _NO_BODY_STATUSES or 100 <= status < 200:
            length = 0
        raw_cap = self._max_body + (HTTP_CHUNK_OVERHEAD_MAX_BYTES if chunked else 0)
        if length is not None:
            raw_cap = min(raw_cap, length)
        return _Framing(chunked=chunked, length=length, raw_cap=raw_cap)

    # -- body --

    def _feed_body(self, data: bytes) -> None:
        self._body += data[: self._framing.raw_cap - len(self._body)]
        full = len(self._body) >= self._framing.raw_cap
        if not self._framing.chunked:
            if full:
                length = self._framing.length
                self._open(bytes(self._body), truncated=length is None or length > self._framing.raw_cap)
            return
        decoded = _chunks(self._body, self._max_body)
        if decoded.violation is not None:
            self._done(Outcome.PROTOCOL_ERROR, error=decoded.violation, body=decoded.body)
        elif decoded.finished:
            self._open(decoded.body, truncated=len(decoded.body) >= self._max_body)
        elif full:
            self._done(
                Outcome.PROTOCOL_ERROR,
                body=decoded.body,
                error=f"chunked framing exceeded {HTTP_CHUNK_OVERHEAD_MAX_BYTES} bytes of overhead",
            )

    def _decoded(self) -> bytes:
        """The body so far: decoded chunks, or the raw bytes."""
        if self._framing.chunked:
            return _chunks(self._body, self._max_body).body
        return bytes(self._body)

    # -- decisions --

    def _fail(self, error: str) -> None:
        self._done(Outcome.PROTOCOL_ERROR, bytes(self._head), error)

    def _open(self, body: bytes, *, error: str | None = None, truncated: bool = False) -> None:
        self._done(Outcome.OPEN, error=error, truncated=truncated, body=body, title=title(body))

    def _done(
        self, outcome: Outcome, data: bytes | None = None, error: str | None = None, **fields: Any
    ) -> None:
        if data is None:
            data = bytes(self._head)
        self.result = Response(outcome=outcome, data=data, error=error, **{**self._head_fields, **fields})
        self._state = _State.DONE
        self._head = bytearray()
        self._body = bytearray()
