"""UDP probes, gently: one well-formed datagram per UDP port per host, one answer read, bounded.

Three services identify devices on clinical networks without a login, and each gets exactly one request:

=====  ======  =====================================================================================
port   name    the datagram
=====  ======  =====================================================================================
161    snmp    SNMP v2c ``GetRequest`` for ``sysDescr.0`` (1.3.6.1.2.1.1.1.0), community configurable
123    ntp     NTP v4 mode 3 (client) request, 48 bytes, a random transmit timestamp as the cookie
1900   ssdp    SSDP ``M-SEARCH * HTTP/1.1`` for ``ssdp:all``, sent unicast to the host (UPnP 1.1 9.2)
=====  ======  =====================================================================================

No retry: a device that does not answer one datagram gets no second one (UDP has no session to hold, but
a fragile agent is as easy to flood as a TCP stack). Every answer is checked against the request (SNMP
request id, NTP origin timestamp, an SSDP ``HTTP/1.1`` status line) before it is believed, read at most
:data:`MAX_DATAGRAM_BYTES`, and parsed by the bounded, pure decoders below (fuzzed with hypothesis in
``tests/test_udp.py``). A connected UDP socket turns an ICMP port-unreachable into ``ECONNREFUSED``: that is
a ``CLOSED`` outcome, as for TCP.

The BER subset (X.690) is what SNMP v2c needs: INTEGER, OCTET STRING, NULL, OBJECT IDENTIFIER, SEQUENCE,
the context-specific PDU tags and the v2 exception values; definite lengths only (SNMP forbids the
indefinite form), nesting and sizes bounded.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import re
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import anyio

from fragileprobe import _validate
from fragileprobe._errors import ProbeError
from fragileprobe._fingerprint import ServiceInfo, fingerprint_ntp, fingerprint_snmp, fingerprint_ssdp
from fragileprobe._probes import Outcome

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "DEFAULT_SNMP_COMMUNITY",
    "DEFAULT_UDP_PORTS",
    "UDP_PROBES",
    "BerError",
    "UdpResult",
    "ber_decode",
    "ber_encode",
    "check_community",
    "fingerprint_udp",
    "ntp_request",
    "parse_ntp_response",
    "parse_snmp_response",
    "parse_ssdp_response",
    "snmp_get_request",
    "ssdp_request",
    "udp_probe",
]

# Port -> protocol probed there.
UDP_PROBES: Final = {161: "snmp", 123: "ntp", 1900: "ssdp"}
DEFAULT_UDP_PORTS: Final = (161, 123, 1900)
# The community almost every agent ships with; a site with its own passes snmp_community=.
DEFAULT_SNMP_COMMUNITY: Final = "public"
# Longest community accepted (RFC 3584 allows 255; real ones are short).
MAX_COMMUNITY_BYTES: Final = 255
# One answer is read, at most this much: an SNMP agent answers within one Ethernet frame (1,472 bytes of
# UDP payload); an SSDP reply is a dozen header lines. Larger datagrams are truncated by the kernel.
MAX_DATAGRAM_BYTES: Final = 4096
# BER nesting allowed: an SNMP message nests 5 deep (message, PDU, varbind list, varbind, value).
MAX_BER_DEPTH: Final = 8
# BER length field: at most 4 length bytes (a datagram is never near 2**32 bytes).
MAX_BER_LENGTH_BYTES: Final = 4
# Elements decoded in one message: an SNMP reply with one varbind has about ten.
MAX_BER_ELEMENTS: Final = 256
# OID arcs accepted (sysDescr.0 has 9; RFC 2578 allows 128).
MAX_OID_ARCS: Final = 128
# INTEGER content bytes (SNMP integers are 32-bit; request ids too).
MAX_INTEGER_BYTES: Final = 9
# SSDP header lines read.
MAX_SSDP_HEADERS: Final = 50

SYS_DESCR_OID: Final = (1, 3, 6, 1, 2, 1, 1, 1, 0)
# NTP era 0 starts 1900-01-01; Unix time starts 2,208,988,800 s later (RFC 5905 figure 4).
NTP_UNIX_OFFSET_S: Final = 2_208_988_800

# BER tags used (X.690 8.1.2; SNMP's PDU tags from RFC 3416 section 3).
TAG_INTEGER: Final = 0x02
TAG_OCTETS: Final = 0x04
TAG_NULL: Final = 0x05
TAG_OID: Final = 0x06
TAG_SEQUENCE: Final = 0x30
TAG_GET: Final = 0xA0
TAG_RESPONSE: Final = 0xA2
# v2 exception values in a varbind (RFC 3416): noSuchObject, noSuchInstance, endOfMibView.
TAG_EXCEPTIONS: Final = frozenset({0x80, 0x81, 0x82})
_CONSTRUCTED: Final = frozenset({TAG_SEQUENCE, TAG_GET, TAG_RESPONSE, 0xA1, 0xA3, 0xA5, 0xA6, 0xA7, 0xA8})


class BerError(ProbeError):
    """Raised when bytes are not the BER (or the protocol answer) that was expected."""


@dataclass(frozen=True, slots=True)
class UdpResult:
    """One UDP probe's record.

    Attributes:
        host: The address.
        port: The UDP port.
        protocol: "snmp", "ntp" or "ssdp".
        outcome: OPEN (a matching answer), CLOSED (ICMP port unreachable), TIMEOUT (no answer: nothing
            there, filtered, or a wrong community; UDP cannot tell them apart), PROTOCOL_ERROR (an answer
            that did not parse or did not match the request), UNREACHABLE.
        latency_s: Seconds from send to answer (or to giving up).
        data: The answer's bytes (at most :data:`MAX_DATAGRAM_BYTES`).
        fields: What the answer said (``sys_descr``; ``stratum``, ``reference``, ``version``; ``server``,
            ``st``, ``usn``, ``location``).
        error: Why it failed, else None.
    """

    host: str
    port: int
    protocol: str
    outcome: Outcome
    latency_s: float
    data: bytes = b""
    fields: tuple[tuple[str, str], ...] = ()
    error: str | None = None

    def field(self, name: str) -> str | None:
        """One parsed field, or None."""
        return next((v for k, v in self.fields if k == name), None)


# --- BER (pure) -------------------------------------------------------------------------------------------

BerValue = int | bytes | tuple[int, ...] | None | list["tuple[int, BerValue]"]


def _encode_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def _encode_integer(value: int) -> bytes:
    length = max(1, (value + (value < 0)).bit_length() // 8 + 1)
    return value.to_bytes(length, "big", signed=True)


def _encode_oid(arcs: tuple[int, ...]) -> bytes:
    if len(arcs) < 2 or arcs[0] > 2 or (arcs[0] < 2 and arcs[1] > 39) or any(a < 0 for a in arcs):
        raise _validate.fail("oid", "a valid object identifier", arcs)
    out = bytearray()
    for arc in (arcs[0] * 40 + arcs[1], *arcs[2:]):
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        out.extend(reversed(chunk))
    return bytes(out)


def ber_encode(tag: int, value: BerValue) -> bytes:
    """Encode one element: ``value`` is an int (INTEGER), bytes (OCTET STRING or raw content), a tuple of
    ints (OID), None (NULL) or a list of ``(tag, value)`` pairs (constructed)."""
    if isinstance(value, list):
        content = b"".join(ber_encode(t, v) for t, v in value)
    elif isinstance(value, bool):
        raise _validate.fail("ber value", "an int, bytes, an OID tuple, None or a list, not a bool", value)
    elif isinstance(value, int):
        content = _encode_integer(value)
    elif isinstance(value, bytes):
        content = value
    elif isinstance(value, tuple):
        content = _encode_oid(value)
    else:
        content = b""
    return bytes([tag]) + _encode_length(len(content)) + content


def _decode_oid(content: bytes) -> tuple[int, ...]:
    if not content or content[-1] & 0x80:
        raise BerError("ber: truncated object identifier")
    arcs: list[int] = []
    value = 0
    for byte in content:
        if value == 0 and byte == 0x80:
            raise BerError("ber: object identifier arc with a leading 0x80")
        value = (value << 7) | (byte & 0x7F)
        if value.bit_length() > 64:
            raise BerError("ber: object identifier arc over 64 bits")
        if not byte & 0x80:
            arcs.append(value)
            value = 0
            if len(arcs) > MAX_OID_ARCS:
                raise BerError(f"ber: object identifier over {MAX_OID_ARCS} arcs")
    first = arcs[0]
    head = (min(first // 40, 2), first - 40 * min(first // 40, 2))
    return (*head, *arcs[1:])


def _decode_integer(content: bytes) -> int:
    if not 1 <= len(content) <= MAX_INTEGER_BYTES:
        raise BerError(f"ber: INTEGER of {len(content)} bytes")
    return int.from_bytes(content, "big", signed=True)


def _decode_null(content: bytes) -> None:
    if content:
        raise BerError("ber: NULL with content")


# How a primitive element's content is read, by tag; any other primitive tag keeps its bytes.
_PRIMITIVES: Final[dict[int, Callable[[bytes], BerValue]]] = {
    TAG_INTEGER: _decode_integer,
    TAG_OID: _decode_oid,
    TAG_NULL: _decode_null,
    **dict.fromkeys(TAG_EXCEPTIONS, _decode_null),  # noSuchObject, noSuchInstance, endOfMibView: NULL-like
}


class _Decoder:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.elements = 0

    def element(self, pos: int, end: int, depth: int) -> tuple[int, BerValue, int]:
        """``(tag, value, where it ends)`` of the element at ``pos``, inside a container ending at ``end``."""
        self._count(depth)
        tag, start, content_end = self._header(pos, end)
        if tag in _CONSTRUCTED:
            return tag, self._children(start, content_end, depth), content_end
        decode = _PRIMITIVES.get(tag, bytes)
        return tag, decode(self.data[start:content_end]), content_end

    def _count(self, depth: int) -> None:
        if depth > MAX_BER_DEPTH:
            raise BerError(f"ber: nested deeper than {MAX_BER_DEPTH}")
        self.elements += 1
        if self.elements > MAX_BER_ELEMENTS:
            raise BerError(f"ber: more than {MAX_BER_ELEMENTS} elements")

    def _header(self, pos: int, end: int) -> tuple[int, int, int]:
        """``(tag, content start, content end)`` from the tag and length octets at ``pos`` (X.690 8.1.2-3)."""
        if pos + 2 > end:
            raise BerError("ber: truncated tag or length")
        tag, first = self.data[pos], self.data[pos + 1]
        if tag & 0x1F == 0x1F:
            raise BerError("ber: multi-byte tags are not used by SNMP")
        pos += 2
        length = first
        if first & 0x80:
            count = first & 0x7F
            if count == 0:
                raise BerError("ber: indefinite length (forbidden in SNMP)")
            if count > MAX_BER_LENGTH_BYTES or pos + count > end:
                raise BerError("ber: bad long-form length")
            length = int.from_bytes(self.data[pos : pos + count], "big")
            pos += count
        if pos + length > end:
            raise BerError(f"ber: element of {length} bytes runs past its container")
        return tag, pos, pos + length

    def _children(self, pos: int, end: int, depth: int) -> list[tuple[int, BerValue]]:
        items: list[tuple[int, BerValue]] = []
        while pos < end:
            child_tag, child, pos = self.element(pos, end, depth + 1)
            items.append((child_tag, child))
        return items


def ber_decode(data: bytes) -> tuple[int, BerValue]:
    """Decode one BER element that fills ``data`` exactly.

    Returns:
        ``(tag, value)``: ints for INTEGER, tuples for OIDs, None for NULL and the v2 exceptions, lists of
        ``(tag, value)`` for constructed elements, bytes for everything else.

    Raises:
        BerError: Anything that is not well-formed within the bounds (never another exception).
    """
    if len(data) > MAX_DATAGRAM_BYTES:
        raise BerError(f"ber: message over {MAX_DATAGRAM_BYTES} bytes")
    tag, value, end = _Decoder(bytes(data)).element(0, len(data), 0)
    if end != len(data):
        raise BerError(f"ber: {len(data) - end} trailing bytes")
    return tag, value


# --- SNMP (pure) ------------------------------------------------------------------------------------------


def check_community(community: str) -> str:
    """Validate an SNMP community (printable ASCII, 1-255 bytes); return it.

    Raises:
        ConfigError: naming ``snmp_community``.
    """
    if (
        not isinstance(community, str)
        or not 1 <= len(community) <= MAX_COMMUNITY_BYTES
        or not all(0x20 <= ord(c) < 0x7F for c in community)
    ):
        shown = community[:40] if isinstance(community, str) else community
        raise _validate.fail("snmp_community", f"1-{MAX_COMMUNITY_BYTES} printable ASCII characters", shown)
    return community


def snmp_get_request(community: str, request_id: int, oid: tuple[int, ...] = SYS_DESCR_OID) -> bytes:
    """An SNMP v2c GetRequest for one OID (RFC 3416), as bytes."""
    check_community(community)
    if not 0 <= request_id < 2**31:
        raise _validate.fail("request_id", "an integer in 0-2147483647 (2**31-1)", request_id)
    binding: list[tuple[int, BerValue]] = [(TAG_OID, oid), (TAG_NULL, None)]
    varbinds: list[tuple[int, BerValue]] = [(TAG_SEQUENCE, binding)]
    pdu: list[tuple[int, BerValue]] = [
        (TAG_INTEGER, request_id),
        (TAG_INTEGER, 0),
        (TAG_INTEGER, 0),
        (TAG_SEQUENCE, varbinds),
    ]
    message: list[tuple[int, BerValue]] = [
        (TAG_INTEGER, 1),
        (TAG_OCTETS, community.encode("ascii")),
        (TAG_GET, pdu),
    ]
    return ber_encode(TAG_SEQUENCE, message)


def parse_snmp_response(data: bytes, request_id: int, oid: tuple[int, ...] = SYS_DESCR_OID) -> str:
    """The value of ``oid`` from an SNMP v2c Response to ``request_id`` (decoded as text).

    Raises:
        BerError: Not a matching, error-free v2c response carrying the OID as an OCTET STRING.
    """
    tag, message = ber_decode(data)
    if tag != TAG_SEQUENCE or not isinstance(message, list) or len(message) != 3:
        raise BerError("snmp: not an SNMP message")
    (vtag, version), (_ctag, _community), (ptag, pdu) = message
    if vtag != TAG_INTEGER or version not in (0, 1):
        raise BerError(f"snmp: version {version!r} is not v1/v2c")
    if ptag != TAG_RESPONSE or not isinstance(pdu, list) or len(pdu) != 4:
        raise BerError("snmp: not a Response PDU")
    (_t1, rid), (_t2, status), (_t3, _index), (btag, bindings) = pdu
    if rid != request_id:
        raise BerError(f"snmp: answer to request {rid!r}, not {request_id}")
    if status != 0:
        raise BerError(f"snmp: error-status {status!r}")
    if btag != TAG_SEQUENCE or not isinstance(bindings, list) or len(bindings) != 1:
        raise BerError("snmp: not one variable binding")
    btag2, binding = bindings[0]
    if btag2 != TAG_SEQUENCE or not isinstance(binding, list) or len(binding) != 2:
        raise BerError("snmp: malformed variable binding")
    (otag, got_oid), (value_tag, value) = binding
    if otag != TAG_OID or got_oid != oid:
        raise BerError(f"snmp: answer for OID {got_oid!r}")
    if value_tag in TAG_EXCEPTIONS:
        raise BerError("snmp: no such object")
    if value_tag != TAG_OCTETS or not isinstance(value, bytes):
        raise BerError("snmp: value is not an OCTET STRING")
    return value.decode("utf-8", "replace")


# --- NTP (pure) -------------------------------------------------------------------------------------------


def ntp_request(cookie: bytes) -> bytes:
    """An NTP v4 client (mode 3) request whose transmit timestamp is the 8-byte ``cookie`` (RFC 5905)."""
    if len(cookie) != 8:
        raise _validate.fail("cookie", "8 bytes", cookie)
    return bytes([0x23]) + bytes(39) + cookie  # LI 0, VN 4, mode 3; everything else zero


def parse_ntp_response(data: bytes, cookie: bytes) -> tuple[tuple[str, str], ...]:
    """Stratum, reference id and version from a server (mode 4) answer to ``cookie``.

    Raises:
        BerError: Shorter than 48 bytes, not mode 4, or its origin timestamp is not our cookie.
    """
    if len(data) < 48:
        raise BerError(f"ntp: {len(data)} bytes, a packet has at least 48")
    mode, version, stratum = data[0] & 0x07, (data[0] >> 3) & 0x07, data[1]
    if mode != 4:
        raise BerError(f"ntp: mode {mode}, not a server answer")
    if data[24:32] != cookie:
        raise BerError("ntp: origin timestamp does not match the request")
    ref = data[12:16]
    if stratum <= 1 and all(0x20 <= b < 0x7F or b == 0 for b in ref):
        reference = ref.rstrip(b"\x00").decode("ascii") or "-"
    else:
        reference = ".".join(str(b) for b in ref)
    return (("version", str(version)), ("stratum", str(stratum)), ("reference", reference))


# --- SSDP (pure) ------------------------------------------------------------------------------------------


def ssdp_request(host: str) -> bytes:
    """A unicast SSDP M-SEARCH for every device and service (UPnP Device Architecture 1.1, 1.3.2)."""
    where = f"[{host}]:1900" if ":" in host else f"{host}:1900"
    return f'M-SEARCH * HTTP/1.1\r\nHOST: {where}\r\nMAN: "ssdp:discover"\r\nST: ssdp:all\r\n\r\n'.encode(
        "ascii"
    )


_SSDP_STATUS = re.compile(rb"^HTTP/1\.[01] 200\b")
_SSDP_FIELDS: Final = {"server": "server", "st": "st", "usn": "usn", "location": "location"}


def parse_ssdp_response(data: bytes) -> tuple[tuple[str, str], ...]:
    """SERVER, ST, USN and LOCATION from an SSDP ``HTTP/1.1 200`` answer (values clipped to 200 chars).

    Raises:
        BerError: Not an ``HTTP/1.x 200`` status line.
    """
    lines = data[:MAX_DATAGRAM_BYTES].split(b"\r\n")
    if not _SSDP_STATUS.match(lines[0]):
        raise BerError("ssdp: not an HTTP/1.x 200 answer")
    out: list[tuple[str, str]] = []
    for line in lines[1 : MAX_SSDP_HEADERS + 1]:
        name, sep, value = line.partition(b":")
        key = _SSDP_FIELDS.get(name.strip().lower().decode("latin-1"))
        if sep and key and all(k != key for k, _ in out):
            text = value.strip().decode("latin-1")
            out.append((key, "".join(c for c in text if c.isprintable())[:200]))
    return tuple(out)


# --- the probe --------------------------------------------------------------------------------------------


async def udp_probe(
    host: str,
    port: int,
    *,
    timeout_s: float,
    community: str = DEFAULT_SNMP_COMMUNITY,
    protocol: str | None = None,
) -> UdpResult:
    """Send one datagram to ``host:port`` (an IP literal) and read one answer, within ``timeout_s``.

    Args:
        host: IP address literal (discovery has checked it against the scope).
        port: UDP port.
        timeout_s: How long to wait for the answer.
        community: SNMP community (port 161).
        protocol: "snmp", "ntp" or "ssdp" (default: by port, :data:`UDP_PROBES`).

    Returns:
        A :class:`UdpResult`; never raises for network errors or bad answers.

    Raises:
        ConfigError: No probe is known for the port, or ``host`` is not an IP literal.
    """
    try:
        ipaddress.ip_address(host)
    except ValueError:
        # connect() would resolve a name with a blocking DNS query nobody authorized.
        raise _validate.fail("host", "an IP address literal", host) from None
    proto = protocol or UDP_PROBES.get(port)
    if proto not in ("snmp", "ntp", "ssdp"):
        raise _validate.fail("udp_ports", f"a port with a known UDP probe ({sorted(UDP_PROBES)})", port)
    nonce = os.urandom(8)
    payload = _request(proto, host, community, nonce)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    started = anyio.current_time()
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        try:
            sock.connect((host, port))  # connected: only this peer's datagrams, and ICMP errors reported
            sock.send(payload)
            data = await _receive_one(sock, timeout_s)
        except TimeoutError:
            return UdpResult(
                host,
                port,
                proto,
                Outcome.TIMEOUT,
                anyio.current_time() - started,
                error=f"no answer within {timeout_s:g} s",
            )
        except OSError as exc:
            outcome = Outcome.CLOSED if exc.errno == errno.ECONNREFUSED else Outcome.UNREACHABLE
            return UdpResult(
                host,
                port,
                proto,
                outcome,
                anyio.current_time() - started,
                error=(exc.strerror or str(exc)).lower(),
            )
    finally:
        sock.close()
    latency = anyio.current_time() - started
    try:
        fields = _answer_fields(proto, data, nonce)
    except BerError as exc:
        return UdpResult(host, port, proto, Outcome.PROTOCOL_ERROR, latency, data=data, error=str(exc))
    return UdpResult(host, port, proto, Outcome.OPEN, latency, data=data, fields=fields)


def _request_id(nonce: bytes) -> int:
    """SNMP's request id: the nonce's first 31 bits (RFC 3416 allows 0..2**31-1)."""
    return int.from_bytes(nonce[:4], "big") & 0x7FFFFFFF


def _request(proto: str, host: str, community: str, nonce: bytes) -> bytes:
    """The one datagram that asks ``proto``'s question, tied to ``nonce`` where the protocol allows."""
    if proto == "snmp":
        return snmp_get_request(community, _request_id(nonce))
    if proto == "ntp":
        return ntp_request(nonce)
    return ssdp_request(host)


def _answer_fields(proto: str, data: bytes, nonce: bytes) -> tuple[tuple[str, str], ...]:
    """The fields of the answer to the request made from ``nonce`` (BerError when it is not one)."""
    if proto == "snmp":
        return (("sys_descr", parse_snmp_response(data, _request_id(nonce))),)
    if proto == "ntp":
        return parse_ntp_response(data, nonce)
    return parse_ssdp_response(data)


async def _receive_one(sock: socket.socket, timeout_s: float) -> bytes:
    """The first datagram on the connected, non-blocking ``sock`` (TimeoutError after ``timeout_s``)."""
    with anyio.fail_after(timeout_s):
        while True:
            await anyio.wait_readable(sock)
            try:
                return sock.recv(MAX_DATAGRAM_BYTES)
            except BlockingIOError:
                continue


def fingerprint_udp(result: UdpResult) -> ServiceInfo | None:
    """The ServiceInfo of a UDP answer (protocol "udp"), or None when nothing matching came back."""
    if result.outcome is not Outcome.OPEN:
        return None
    if result.protocol == "snmp":
        return fingerprint_snmp(result.port, result.field("sys_descr") or "")
    if result.protocol == "ntp":
        return fingerprint_ntp(result.port, result.field("stratum"), result.field("reference"))
    return fingerprint_ssdp(result.port, result.field("server"), result.field("st"))
