"""Pure, sans-IO fingerprinting: banners and HTTP responses in, service/product/version out.

Nothing here touches a socket or a clock. Every function takes bytes or strings the probes already read and
returns a typed record; junk in gives an "unknown" record out, never an exception (hypothesis checks that in
``tests/test_fingerprint.py``). Inputs are capped before any parsing so a device that floods megabytes
cannot make the parser slow.

Three things live here:

* :func:`fingerprint_service` (a speak-first banner on any TCP port) and :func:`fingerprint_http` (a parsed
  HTTP response) -> :class:`ServiceInfo`;
* :func:`guess_os` -> :class:`OsGuess`, a coarse OS family from what the services reveal (no OS-detection
  packets are ever sent: this is only reading what the device already said);
* :func:`model_key`, the name under which the profile store keeps a device model's safe ceiling.

Recognised: FTP, SSH, Telnet (IAC option negotiation stripped and recorded), HTTP, SMTP, POP3, IMAP, VNC,
MySQL/MariaDB greetings and errors, PostgreSQL error packets, SMB, RDP (TPKT), HL7 over MLLP, DICOM PDUs,
and by well-known port the quiet ones (SMB, RDP, MSSQL, PostgreSQL, IPP, LPD, JetDirect).
"""

from __future__ import annotations

import hashlib
import html
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

__all__ = [
    "OS_FAMILIES",
    "OsGuess",
    "ServiceInfo",
    "fingerprint_http",
    "fingerprint_service",
    "guess_os",
    "model_key",
    "model_key_digest",
    "parse_http_response",
    "strip_telnet_negotiation",
]

# --- limits ---------------------------------------------------------------------------------------------
# A service banner is a line or two (RFC 959 replies, RFC 4253 says the SSH identification line is at most
# 255 bytes, a MySQL greeting is under 128 bytes); 4 KiB is generous and keeps regexes cheap on a flood.
MAX_BANNER_BYTES: Final = 4096
# HTTP response head: common servers refuse request heads above 8-16 KiB, so a 16 KiB response head covers
# every honest server; more is a hostile one and is cut.
MAX_HTTP_HEAD_BYTES: Final = 16384
# The <title> sits near the top of a page; 64 KiB of body is plenty to find it.
MAX_HTTP_BODY_SCAN_BYTES: Final = 65536
# Longest product/version/title/detail string we keep, so one record never carries a megabyte of junk.
MAX_FIELD_CHARS: Final = 120
# At most this many headers are kept from one response (real servers send 5-30).
MAX_HEADERS: Final = 100
# Readable prefix of a model key.
MAX_SLUG_CHARS: Final = 32
# Hex digits of the SHA-256 kept in a model key: 48 bits, collisions need ~16 million models.
MODEL_KEY_HASH_HEX: Final = 12

OsFamily = Literal["generic unix", "windows", "embedded", "unknown"]
OS_FAMILIES: Final[tuple[OsFamily, ...]] = ("generic unix", "windows", "embedded", "unknown")


@dataclass(frozen=True, slots=True)
class ServiceInfo:
    """What one open port revealed about itself.

    Attributes:
        port: The TCP port the service was seen on.
        service: Lower-case protocol name ("ftp", "ssh", "telnet", "http", "smb", "mysql", ..., "unknown").
        product: Software product when recognisable ("vsFTPd", "OpenSSH", "Apache"), else None.
        version: Product version string when present ("3.0.3"), else None.
        detail: Extra text: an HTTP status, a banner's comment, telnet options negotiated; None if none.
        title: HTML ``<title>`` for web services, else None.
        server: HTTP ``Server:`` header for web services, else None.
        protocol: "tcp", or "udp" for an answer to one of discovery's UDP probes (SNMP, NTP, SSDP).
    """

    port: int
    service: str
    product: str | None = None
    version: str | None = None
    detail: str | None = None
    title: str | None = None
    server: str | None = None
    protocol: str = "tcp"

    def to_dict(self) -> dict[str, object]:
        """Return a JSON-ready dict of the fields (``protocol`` only when it is not "tcp")."""
        out: dict[str, object] = {
            "port": self.port,
            "service": self.service,
            "product": self.product,
            "version": self.version,
            "detail": self.detail,
            "title": self.title,
            "server": self.server,
        }
        if self.protocol != "tcp":
            out["protocol"] = self.protocol
        return out


@dataclass(frozen=True, slots=True)
class OsGuess:
    """A coarse OS family and the service evidence it rests on.

    Attributes:
        family: "generic unix", "windows", "embedded" or "unknown".
        evidence: Human-readable reasons, e.g. ``("22/ssh: OpenSSH (unix)",)``.
    """

    family: OsFamily
    evidence: tuple[str, ...] = field(default=())


# --- small helpers --------------------------------------------------------------------------------------

_CTRL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _text(data: bytes) -> str:
    """Decode bytes leniently (latin-1 never fails) and drop control characters except CR/LF/TAB."""
    return _CTRL.sub("", data.decode("latin-1"))


def _clip(value: str | None) -> str | None:
    if value is None:
        return None
    value = " ".join(value.split())
    if not value:
        return None
    return value[:MAX_FIELD_CHARS]


def _first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return ""


# --- Telnet ---------------------------------------------------------------------------------------------
# RFC 854: IAC (255) introduces a command; WILL/WONT/DO/DONT (251-254) take one option byte; SB (250) starts
# a subnegotiation that ends at IAC SE (240); IAC IAC is a literal 255.
_IAC, _SE, _SB, _WILL, _WONT, _DO, _DONT = 255, 240, 250, 251, 252, 253, 254
_VERBS = {_WILL: "WILL", _WONT: "WONT", _DO: "DO", _DONT: "DONT"}
_TELNET_OPTIONS = {
    0: "binary",
    1: "echo",
    3: "sga",
    5: "status",
    24: "ttype",
    31: "naws",
    32: "tspeed",
    33: "lflow",
    34: "linemode",
    35: "xdisploc",
    36: "environ",
    39: "new-environ",
}


def strip_telnet_negotiation(data: bytes) -> tuple[bytes, tuple[str, ...]]:
    """Remove Telnet IAC sequences from ``data``.

    Args:
        data: Raw bytes read from a Telnet server (truncated to ``MAX_BANNER_BYTES``).

    Returns:
        The payload without negotiation bytes, and the negotiations seen as ``"WILL echo"``-style strings.
    """
    data = data[:MAX_BANNER_BYTES]
    out = bytearray()
    seen: list[str] = []
    i, n = 0, len(data)
    while i < n:
        b = data[i]
        if b != _IAC:
            out.append(b)
            i += 1
            continue
        if i + 1 >= n:  # a lone IAC at the end: truncated negotiation
            break
        cmd = data[i + 1]
        if cmd == _IAC:
            out.append(_IAC)
            i += 2
        elif cmd in _VERBS:
            if i + 2 < n:
                opt = data[i + 2]
                seen.append(f"{_VERBS[cmd]} {_TELNET_OPTIONS.get(opt, str(opt))}")
            i += 3
        elif cmd == _SB:
            end = data.find(bytes((_IAC, _SE)), i + 2)
            i = n if end < 0 else end + 2
        else:
            i += 2
    return bytes(out), tuple(seen[:16])


# --- HTTP -----------------------------------------------------------------------------------------------
# re.ASCII: a str pattern's \d also matches '٢' (and int() reads '٢٠٠' as 200); a status is ASCII digits.
_STATUS_LINE = re.compile(r"^HTTP/(\d)\.(\d)\s+(\d{3})(?:\s+(.*))?$", re.ASCII)
_TITLE = re.compile(rb"<title[^>]*>(.*?)</title", re.IGNORECASE | re.DOTALL)


def parse_http_response(
    data: bytes,
) -> tuple[int | None, tuple[tuple[str, str], ...], bytes] | None:
    """Split raw bytes of an HTTP/1.x response into status, headers and body, leniently.

    Args:
        data: The bytes a web server sent (only the first ``MAX_HTTP_HEAD_BYTES`` of the head are read).

    Returns:
        ``(status, headers, body)`` when ``data`` starts like an HTTP response, else None. ``status`` is None
        when the status line is malformed.
    """
    if not data.startswith(b"HTTP/"):
        return None
    head_end = data.find(b"\r\n\r\n", 0, MAX_HTTP_HEAD_BYTES)
    sep = 4
    if head_end < 0:
        head_end = data.find(b"\n\n", 0, MAX_HTTP_HEAD_BYTES)
        sep = 2
    if head_end < 0:
        head, body = data[:MAX_HTTP_HEAD_BYTES], b""
    else:
        head, body = data[:head_end], data[head_end + sep : head_end + sep + MAX_HTTP_BODY_SCAN_BYTES]
    lines = _text(head).replace("\r", "").split("\n")
    match = _STATUS_LINE.match(lines[0].strip())
    status = int(match.group(3)) if match else None
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if len(headers) >= MAX_HEADERS:
            break
        name, colon, value = line.partition(":")
        if colon and name.strip() and " " not in name.strip():
            headers.append((name.strip(), value.strip()))
    return status, tuple(headers), body


def _split_product(token: str) -> tuple[str | None, str | None]:
    """Split ``"Apache/2.4.41"``, ``"OpenSSH_8.9p1"``, ``"vsFTPd 3.0.3"`` into product and version."""
    token = token.strip().strip("()[]")
    m = re.match(r"^([A-Za-z][A-Za-z0-9.+\-]*?)[/_ \-]v?(\d+(?:[.\-]\d+)*[A-Za-z0-9.\-]*)$", token)
    if m:
        return m.group(1), m.group(2)
    if re.match(r"^[A-Za-z][\w.+\-]*$", token):
        return token, None
    return None, None


def fingerprint_http(
    status: int | None,
    headers: Iterable[tuple[str, str]] | Mapping[str, str],
    body: bytes = b"",
    *,
    port: int = 80,
) -> ServiceInfo:
    """Describe a web server from one HTTP response.

    Args:
        status: The status code, or None if the status line was malformed.
        headers: Response headers as pairs or a mapping (only the first ``MAX_HEADERS`` are looked at).
        body: The start of the body; searched for ``<title>`` in its first ``MAX_HTTP_BODY_SCAN_BYTES``.
        port: The port the response came from (631 makes it IPP).

    Returns:
        A ServiceInfo with service "http" (or "https"/"ipp" by port), product/version from ``Server:``,
        the status in ``detail`` and the page title.
    """
    pairs = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
    server: str | None = None
    for i, (name, value) in enumerate(pairs):
        if i >= MAX_HEADERS:
            break
        if str(name).lower() == "server":
            server = _clip(str(value))
            break
    product = version = comment = None
    if server:
        first, _, rest = server.partition(" ")
        product, version = _split_product(first)
        if product is None:
            product = _clip(server)
        comment = _clip(rest) if rest else None
    title = None
    m = _TITLE.search(body[:MAX_HTTP_BODY_SCAN_BYTES])
    if m:
        title = _clip(html.unescape(_text(m.group(1)[:1024])))
    service = "ipp" if port == 631 else "https" if port in _TLS_PORTS else "http"
    detail_parts = [f"status {status}" if status is not None else "malformed status line"]
    if comment:
        detail_parts.append(comment)
    return ServiceInfo(
        port=port,
        service=service,
        product=_clip(product),
        version=_clip(version),
        detail="; ".join(detail_parts),
        title=title,
        server=server,
    )


# --- well-known ports (used when a service is silent or unrecognised) -----------------------------------
PORT_SERVICES: Final[Mapping[int, str]] = {
    21: "ftp",
    22: "ssh",
    23: "telnet",
    25: "smtp",
    53: "dns",
    80: "http",
    104: "dicom",
    110: "pop3",
    111: "rpcbind",
    135: "msrpc",
    139: "smb",
    143: "imap",
    161: "snmp",
    443: "https",
    445: "smb",
    502: "modbus",
    515: "lpd",
    548: "afp",
    631: "ipp",
    993: "imaps",
    995: "pop3s",
    1433: "mssql",
    1521: "oracle",
    2323: "telnet",
    2575: "hl7-mllp",
    3306: "mysql",
    3389: "rdp",
    4242: "dicom",
    5432: "postgresql",
    5900: "vnc",
    5985: "winrm",
    8000: "http",
    8008: "http",
    8080: "http",
    8081: "http",
    8443: "https",
    8888: "http",
    11112: "dicom",
    **{p: "jetdirect" for p in range(9100, 9108)},
}
_TLS_PORTS: Final = frozenset({443, 8443, 993, 995})
WEB_SERVICES: Final = frozenset({"http", "https", "ipp"})

# (regex on the first line, product) for FTP servers whose banner does not follow "name version".
_FTP_PRODUCTS: Final = (
    (re.compile(r"vsftpd\s*([\d.]+)?", re.I), "vsFTPd"),
    (re.compile(r"proftpd\s*([\d.]+\w*)?", re.I), "ProFTPD"),
    (re.compile(r"pure-?ftpd", re.I), "Pure-FTPd"),
    (re.compile(r"filezilla server\s*(?:version\s*)?([\d.]+\w*)?", re.I), "FileZilla Server"),
    (re.compile(r"microsoft ftp service", re.I), "Microsoft FTP Service"),
    (re.compile(r"wu-?ftpd?[- ]?([\d.]+)?", re.I), "wu-ftpd"),
    (re.compile(r"busybox", re.I), "BusyBox ftpd"),
    (re.compile(r"vxworks\s*\(?([\d.]+)?", re.I), "VxWorks ftpd"),
    (re.compile(r"nucleus net\s*([\d.]+)?", re.I), "Nucleus NET ftpd"),
)
_SMTP_PRODUCTS: Final = (
    (re.compile(r"postfix", re.I), "Postfix"),
    (re.compile(r"exim\s*([\d.]+)?", re.I), "Exim"),
    (re.compile(r"sendmail\s*([\d.]+\S*)?", re.I), "Sendmail"),
    (re.compile(r"microsoft esmtp", re.I), "Microsoft ESMTP"),
)
# "Name/1.2" or "Name_1.2" glued together, and a free-standing version number "1.2.3" / "v1.2".
_GLUED = re.compile(r"\b([A-Za-z][A-Za-z0-9+\-]{1,40}?)[/_]v?(\d+(?:\.\d+)+[a-z]?\d*)\b")
_VERSION_WORD = re.compile(r"^v?(\d+(?:\.\d+)+[a-z]?\d*)[,.;:)]*$", re.I)
# Words that sit between a product name and its version without being the product.
_STOP_WORDS: Final = frozenset(
    {
        "server",
        "service",
        "ftp",
        "ftpd",
        "ssh",
        "telnet",
        "telnetd",
        "smtp",
        "http",
        "httpd",
        "web",
        "daemon",
        "version",
        "ver",
        "ver.",
        "release",
        "build",
        "rev",
        "firmware",
        "fw",
        "ready",
        "ready.",
        "v",
        "-",
        "is",
        "the",
        "welcome",
        "to",
        "(",
        "220",
        "220-",
        "+ok",
        "*",
        "ok",
    }
)


def _product_from_table(
    line: str, table: Sequence[tuple[re.Pattern[str], str]]
) -> tuple[str | None, str | None]:
    for pattern, product in table:
        m = pattern.search(line)
        if m:
            version = m.group(1) if m.groups() and m.group(1) else None
            return product, version
    return None, None


def _product_from_free_text(line: str) -> tuple[str | None, str | None]:
    """Find "Product 1.2" in free text: the nearest non-generic word before the first version number."""
    m = _GLUED.search(line)
    words = [w.strip("()[]") for w in line.split()[:64]]
    for i, word in enumerate(words):
        vm = _VERSION_WORD.match(word)
        if vm is None:
            continue
        if m is not None and m.start() < sum(len(w) + 1 for w in words[:i]):
            break  # a glued "Name/1.2" comes first
        for prev in reversed(words[:i]):
            cleaned = prev.strip("()[],;:")
            if cleaned.lower() not in _STOP_WORDS and re.match(r"^[A-Za-z][\w+\-.]*$", cleaned):
                return cleaned, vm.group(1)
        return None, vm.group(1)
    if m is not None:
        return m.group(1), m.group(2)
    return None, None


def _fp_ftp(port: int, line: str) -> ServiceInfo:
    text = re.sub(r"^220[- ]?", "", line).strip()
    product, version = _product_from_table(text, _FTP_PRODUCTS)
    if product is None:
        product, version = _product_from_free_text(text)
    return ServiceInfo(
        port=port, service="ftp", product=_clip(product), version=_clip(version), detail=_clip(text)
    )


def _fp_smtp(port: int, line: str) -> ServiceInfo:
    text = re.sub(r"^220[- ]?", "", line).strip()
    product, version = _product_from_table(text, _SMTP_PRODUCTS)
    if product is None:
        product, version = _product_from_free_text(text)
    return ServiceInfo(
        port=port, service="smtp", product=_clip(product), version=_clip(version), detail=_clip(text)
    )


def _fp_ssh(port: int, line: str) -> ServiceInfo:
    # RFC 4253 section 4.2: "SSH-protoversion-softwareversion SP comments".
    rest = line[4:]
    proto, _, software = rest.partition("-")
    software, _, comment = software.partition(" ")
    product, version = _split_product(software)
    if product is None and software:
        product = software
    detail = f"protocol {proto}" + (f"; {comment}" if comment else "")
    return ServiceInfo(
        port=port, service="ssh", product=_clip(product), version=_clip(version), detail=_clip(detail)
    )


def _fp_telnet(port: int, data: bytes) -> ServiceInfo:
    payload, negotiated = strip_telnet_negotiation(data)
    text = _text(payload).strip()
    product = version = None
    low = text.lower()
    if "busybox" in low:
        product = "BusyBox telnetd"
    elif "microsoft telnet" in low or "windows" in low:
        product = "Microsoft Telnet"
    else:
        product, version = _product_from_free_text(text)
    parts = []
    if negotiated:
        parts.append("negotiates " + ", ".join(negotiated))
    if "login:" in low:
        parts.append("login prompt")
    if text:
        parts.append(_first_line(text))
    return ServiceInfo(
        port=port,
        service="telnet",
        product=_clip(product),
        version=_clip(version),
        detail=_clip("; ".join(parts)) if parts else None,
    )


def _fp_mysql(port: int, data: bytes) -> ServiceInfo | None:
    # MySQL client/server protocol: 3-byte little-endian payload length, 1-byte sequence id, then either a
    # HandshakeV10 (protocol 0x0a, NUL-terminated server version) or an ERR packet (0xff, 2-byte code, text).
    if len(data) < 6:
        return None
    length = int.from_bytes(data[:3], "little")
    if not 1 <= length <= 0xFFFF or data[3] not in (0, 1):
        return None
    kind = data[4]
    if kind == 0x0A:
        end = data.find(b"\x00", 5, 5 + 64)
        if end < 0:
            return None
        ver = _text(data[5:end]).strip()
        if not re.match(r"^\d+\.\d+", ver):
            return None
        product = "MariaDB" if "mariadb" in ver.lower() else "MySQL"
        if ver.startswith("5.5.5-") and product == "MariaDB":  # MariaDB's replication-compat prefix
            ver = ver[6:]
        return ServiceInfo(
            port=port, service="mysql", product=product, version=_clip(ver.split("-")[0]), detail=_clip(ver)
        )
    if kind == 0xFF and len(data) >= 7:
        msg = _text(data[7 : 7 + 200]).lstrip("#").strip()
        return ServiceInfo(port=port, service="mysql", detail=_clip(f"error: {msg}"))
    return None


def _fp_postgres(port: int, data: bytes) -> ServiceInfo | None:
    # PostgreSQL ErrorResponse: 'E', int32 length, then fields like b"SFATAL\0" ... b"\0".
    if data[:1] == b"E" and (b"SFATAL" in data[:200] or b"SERROR" in data[:200]):
        msg = re.search(rb"M([^\x00]{1,200})\x00", data[:400])
        return ServiceInfo(
            port=port,
            service="postgresql",
            product="PostgreSQL",
            detail=_clip(_text(msg.group(1))) if msg else None,
        )
    return None


def _fp_hl7(port: int, data: bytes) -> ServiceInfo | None:
    # MLLP framing: 0x0b <HL7 message> 0x1c 0x0d. MSH-3/MSH-4 name the sending application and facility.
    start = data.find(b"MSH")
    if start < 0 or start > 4:
        return None
    segment = _text(data[start : start + 512]).split("\r")[0]
    if len(segment) < 4:
        return None
    sep = segment[3]
    fields = segment.split(sep)
    app = fields[2].split("^")[0] if len(fields) > 2 else ""
    version = fields[11] if len(fields) > 11 else ""
    return ServiceInfo(
        port=port,
        service="hl7-mllp",
        product=_clip(app) or None,
        version=_clip(version) or None,
        detail="HL7 v2 over MLLP",
    )


def _fp_dicom(port: int, data: bytes) -> ServiceInfo | None:
    # DICOM upper layer (PS3.8 section 9.3): PDU type 0x01-0x07, one reserved 0x00, 4-byte big-endian length.
    if len(data) >= 6 and 1 <= data[0] <= 7 and data[1] == 0 and PORT_SERVICES.get(port) == "dicom":
        return ServiceInfo(port=port, service="dicom", detail=f"PDU type {data[0]}")
    return None


def fingerprint_service(port: int, banner: bytes) -> ServiceInfo:
    """Describe the service on ``port`` from the bytes it sent first (its banner).

    Never raises for any ``bytes`` value: unrecognised input gives the port's well-known service name (or
    "unknown") and a cleaned first line in ``detail``.

    Args:
        port: TCP port the banner came from (a hint when the banner is empty or ambiguous).
        banner: What the service sent after the connect, possibly empty; only the first
            ``MAX_BANNER_BYTES`` are looked at (an HTTP response gets ``MAX_HTTP_HEAD_BYTES``).

    Returns:
        A ServiceInfo for the port.
    """
    raw = bytes(banner[: max(MAX_BANNER_BYTES, MAX_HTTP_HEAD_BYTES + MAX_HTTP_BODY_SCAN_BYTES)])
    hint = PORT_SERVICES.get(port, "unknown")
    if raw.startswith(b"HTTP/"):
        parsed = parse_http_response(raw)
        if parsed is not None:
            return fingerprint_http(parsed[0], parsed[1], parsed[2], port=port)
    data = raw[:MAX_BANNER_BYTES]
    if not data:
        return ServiceInfo(port=port, service=hint)
    found = _fingerprint_binary(port, data, hint)
    return found if found is not None else _fingerprint_text(port, data, hint)


def _fp_smb(port: int, data: bytes) -> ServiceInfo | None:
    # SMB1/SMB2 header magic, bare or behind the 4-byte NetBIOS session header.
    if data.startswith((b"\xffSMB", b"\xfeSMB")) or data[4:8] in (b"\xffSMB", b"\xfeSMB"):
        return ServiceInfo(port=port, service="smb", detail="SMB negotiate")
    return None


def _fingerprint_binary(port: int, data: bytes, hint: str) -> ServiceInfo | None:
    """A service recognised by the structure of its first bytes, or None (then it is read as text)."""
    if data[0] == _IAC or hint == "telnet":
        return _fp_telnet(port, data)
    for parser in (_fp_mysql, _fp_postgres, _fp_hl7, _fp_dicom, _fp_smb):
        found = parser(port, data)
        if found is not None:
            return found
    if data[:2] == b"\x03\x00" and hint == "rdp":
        return ServiceInfo(port=port, service="rdp", detail="TPKT")
    return None


def _greeting_ssh(port: int, line: str, hint: str) -> ServiceInfo:
    return _fp_ssh(port, line)


def _greeting_vnc(port: int, line: str, hint: str) -> ServiceInfo:
    return ServiceInfo(port=port, service="vnc", product="RFB", version=_clip(line[4:].strip()))


def _greeting_220(port: int, line: str, hint: str) -> ServiceInfo:
    # FTP (RFC 959) and SMTP (RFC 5321) both greet with 220: the port or the greeting's words tell them apart.
    low = line.lower()
    if hint == "smtp" or "smtp" in low or "mail" in low:
        return _fp_smtp(port, line)
    return _fp_ftp(port, line)


def _greeting_pop3(port: int, line: str, hint: str) -> ServiceInfo:
    product, version = _product_from_free_text(line)
    return ServiceInfo(
        port=port, service="pop3", product=_clip(product), version=_clip(version), detail=_clip(line)
    )


def _greeting_imap(port: int, line: str, hint: str) -> ServiceInfo:
    product, version = _product_from_free_text(line)
    return ServiceInfo(
        port=port, service="imap", product=_clip(product), version=_clip(version), detail=_clip(line)
    )


# Text greetings: (what the first line starts with, how to read it), checked in order; the first match wins.
_GREETINGS: Final = (
    (("SSH-",), _greeting_ssh),
    (("RFB ",), _greeting_vnc),
    (("220-", "220 "), _greeting_220),
    (("+OK",), _greeting_pop3),
    (("* OK",), _greeting_imap),
)


def _fingerprint_text(port: int, data: bytes, hint: str) -> ServiceInfo:
    """The service read from the banner's first line: a known greeting, a login prompt, or free text."""
    line = _first_line(_text(data))
    for prefixes, read in _GREETINGS:
        if line.startswith(prefixes):
            return read(port, line, hint)
    low = line.lower()
    if "login:" in low or "password:" in low:
        return _fp_telnet(port, data)
    product, version = _product_from_free_text(line)
    return ServiceInfo(
        port=port,
        service=hint,
        product=_clip(product),
        version=_clip(version),
        detail=_clip(line) if line else None,
    )


# --- UDP answers (discovery's SNMP, NTP and SSDP probes) -------------------------------------------------


def fingerprint_snmp(port: int, sys_descr: str) -> ServiceInfo:
    """ServiceInfo from an SNMP ``sysDescr`` ("Linux pump-7 5.10.0 ...", "Hardware: ... Windows ...").

    The product is the first word (an OS or a vendor stack), the version the first version-like token; the
    whole first line (clipped) is the detail, which is where :func:`guess_os` and the group rules look.
    """
    line = _first_line(_CTRL.sub(" ", sys_descr))
    words = line.split()
    product = _clip(words[0].rstrip(":,;")) if words else None
    version = next((w for w in words[1:] if _VERSION_WORD.match(w)), None)
    return ServiceInfo(
        port=port,
        service="snmp",
        product=product,
        version=_clip(version),
        detail=_clip(line) if line else None,
        protocol="udp",
    )


def fingerprint_ntp(port: int, stratum: str | None, reference: str | None) -> ServiceInfo:
    """ServiceInfo from an NTP server answer (its stratum and reference id)."""
    detail = f"stratum {stratum}" + (f", reference {reference}" if reference else "")
    return ServiceInfo(port=port, service="ntp", detail=_clip(detail), protocol="udp")


def fingerprint_ssdp(port: int, server: str | None, st: str | None) -> ServiceInfo:
    """ServiceInfo from an SSDP answer: its ``SERVER`` header ("OS/ver UPnP/1.1 product/ver")."""
    product = version = None
    if server:
        tokens = [t for t in server.split() if not t.upper().startswith("UPNP/")]
        if tokens:
            product, _, version = tokens[-1].partition("/")
    return ServiceInfo(
        port=port,
        service="ssdp",
        product=_clip(product),
        version=_clip(version or None),
        detail=_clip(st),
        server=_clip(server),
        protocol="udp",
    )


# --- OS family ------------------------------------------------------------------------------------------
# (substring of "product version detail server", family, reason). Order matters only for the evidence text.
_OS_HINTS: Final[tuple[tuple[str, OsFamily, str], ...]] = (
    ("microsoft", "windows", "Microsoft product"),
    ("windows", "windows", "mentions Windows"),
    ("iis", "windows", "IIS web server"),
    ("vxworks", "embedded", "VxWorks"),
    ("threadx", "embedded", "ThreadX"),
    ("rompager", "embedded", "RomPager (embedded web server)"),
    ("goahead", "embedded", "GoAhead (embedded web server)"),
    ("boa", "embedded", "Boa (embedded web server)"),
    ("jetdirect", "embedded", "HP JetDirect"),
    ("nucleus", "embedded", "Nucleus RTOS"),
    ("openssh", "generic unix", "OpenSSH"),
    ("dropbear", "generic unix", "Dropbear SSH (embedded Linux)"),
    ("busybox", "generic unix", "BusyBox (embedded Linux)"),
    ("vsftpd", "generic unix", "vsFTPd"),
    ("proftpd", "generic unix", "ProFTPD"),
    ("pure-ftpd", "generic unix", "Pure-FTPd"),
    ("postfix", "generic unix", "Postfix"),
    ("exim", "generic unix", "Exim"),
    ("ubuntu", "generic unix", "mentions Ubuntu"),
    ("debian", "generic unix", "mentions Debian"),
    ("linux", "generic unix", "mentions Linux"),
    ("unix", "generic unix", "mentions Unix"),
    ("centos", "generic unix", "mentions CentOS"),
    ("red hat", "generic unix", "mentions Red Hat"),
    ("freebsd", "generic unix", "mentions FreeBSD"),
    ("nginx", "generic unix", "nginx"),
    ("lighttpd", "generic unix", "lighttpd"),
)
_WINDOWS_SERVICES: Final = frozenset({"smb", "rdp", "msrpc", "mssql", "winrm"})
_PRINTER_SERVICES: Final = frozenset({"jetdirect", "lpd", "ipp"})


def guess_os(services: Iterable[ServiceInfo]) -> OsGuess:
    """Guess a coarse OS family from the services a host revealed (no packets, only their words).

    Scoring: each piece of evidence adds one vote to a family; a Telnet login prompt together with SSH or
    FTP counts as unix. The family with most votes wins; a tie or no evidence gives "unknown".

    Args:
        services: ServiceInfo records of one host.

    Returns:
        An OsGuess with the family and the evidence behind it.
    """
    votes: dict[OsFamily, int] = {"generic unix": 0, "windows": 0, "embedded": 0}
    evidence: list[str] = []
    seen_services: set[str] = set()
    for info in list(services)[:256]:
        seen_services.add(info.service)
        blob = " ".join(x for x in (info.product, info.version, info.detail, info.server) if x).lower()
        # "boa" and "iis" are short: require a word boundary so "board" or "Tiison" do not count.
        for needle, family, reason in _OS_HINTS:
            hit = (
                (re.search(rf"\b{re.escape(needle)}\b", blob) is not None)
                if len(needle) <= 4
                else needle in blob
            )
            if hit:
                votes[family] += 1
                evidence.append(f"{info.port}/{info.service}: {reason}")
                break
        if info.service in _WINDOWS_SERVICES:
            votes["windows"] += 1
            evidence.append(f"{info.port}/{info.service}: Windows service")
        elif info.service in _PRINTER_SERVICES:
            votes["embedded"] += 1
            evidence.append(f"{info.port}/{info.service}: printer service")
        elif info.service == "telnet" and info.detail and "login prompt" in info.detail:
            votes["generic unix"] += 1
            evidence.append(f"{info.port}/telnet: unix-style login prompt")
    best = max(votes.values())
    if best == 0:
        return OsGuess(family="unknown", evidence=tuple(evidence))
    winners = [family for family, count in votes.items() if count == best]
    if len(winners) > 1:
        return OsGuess(family="unknown", evidence=(*evidence, "tie: " + " vs ".join(winners)))
    return OsGuess(family=winners[0], evidence=tuple(evidence))


# --- model key ------------------------------------------------------------------------------------------
# Per-device details that must not split one model into many keys: addresses, MACs, dates, times, serial
# numbers and host names (a token with a digit that is not a version number).
_MASKS: Final = (
    (re.compile(r"\b(?:[0-9a-f]{2}[:-]){5}[0-9a-f]{2}\b", re.I), "<mac>"),
    (re.compile(r"\[?(?:::ffff:)?\d{1,3}(?:\.\d{1,3}){3}\]?"), "<ip>"),
    (re.compile(r"\b\d{4}-\d{2}-\d{2}(?:[t ]\d{2}:\d{2}(?::\d{2})?\S*)?", re.I), "<date>"),
    (re.compile(r"\b\d{1,2}:\d{2}(?::\d{2})?\b"), "<time>"),
    (re.compile(r"\b(?:mon|tue|wed|thu|fri|sat|sun)[a-z]*,?\s", re.I), ""),
    (re.compile(r"\b(?:serial|s/?n|host(?:name)?|name|id|device)\s*[:=#]?\s*\S+", re.I), "<id>"),
    (re.compile(r"\S+(?=\s+login:)", re.I), "<host>"),
)
_VERSIONISH = re.compile(r"^v?\d+(?:\.\d+)+[a-z]?\d*$|^[A-Za-z][A-Za-z+\-]*[_/]v?\d+(?:\.\d+)*\w*$")


def _normalise(text: str) -> str:
    text = text.lower()
    for pattern, repl in _MASKS:
        text = pattern.sub(repl, text)
    tokens = []
    for token in re.split(r"[\s()\[\],;]+", text):
        if not token:
            continue
        if any(c.isdigit() for c in token) and not _VERSIONISH.match(token):
            token = "#"
        tokens.append(token)
    return " ".join(tokens)[:200]


def _identity(info: ServiceInfo, raw_line: str, negotiated: Sequence[str] = ()) -> list[str]:
    """The parts of a ServiceInfo that belong to the model, not to the single device."""
    if info.service == "telnet" and not info.product:
        # A telnet greeting is mostly a host name and a prompt, and may arrive in pieces: the option
        # negotiation the daemon opens with is the stable part (BusyBox and VxWorks differ there).
        return [info.service, ",".join(sorted(negotiated))]
    if info.product:
        return [info.service, info.product.lower(), (info.version or "").lower()]
    return [info.service, _normalise(raw_line)]


def _slug(text: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:MAX_SLUG_CHARS].strip("-")


def model_key(
    *,
    open_ports: Iterable[int],
    banners: Mapping[int, bytes] | None = None,
    server_header: str | None = None,
    name: str | None = None,
) -> str:
    """Name a device model from what the device shows, stable across devices of that model.

    The key is ``"<slug>-<hash>"``. The hash (``MODEL_KEY_HASH_HEX`` hex digits of SHA-256) covers the
    sorted open ports, the identity of each speak-first banner (service, product and version when
    recognised, else the banner's first line with per-device details masked: IPs, MACs, dates, times,
    serials, host names, any token with a digit that is not a version) and the product/version of the HTTP
    ``Server:`` header. Empty banners and HTTP responses in ``banners`` count as "port open, silent", so a
    caller that read nothing on a web port and one that sent ``GET /`` get the same key; pass the web
    server's ``Server:`` header as ``server_header`` instead. ``name`` only replaces the readable slug, it
    does not enter the hash: a model named by a user and the same model found by discovery share
    :func:`model_key_digest`.

    Args:
        open_ports: Open TCP ports seen on the device (order and duplicates do not matter).
        banners: Port -> bytes the service sent first (missing ports count as silent).
        server_header: The ``Server:`` header of the device's web interface, if any.
        name: Optional user-given model name for the readable prefix.

    Returns:
        A key like ``"infustar-3a9f0c12be77"``.
    """
    ports = sorted({int(p) for p in open_ports if 0 < int(p) < 65536})
    banners = banners or {}
    parts: list[object] = [["ports", ports]]
    infos: list[ServiceInfo] = []
    for port in ports:
        raw = bytes(banners.get(port, b"") or b"")[:MAX_BANNER_BYTES]
        if not raw or raw.startswith(b"HTTP/"):
            parts.append([port, "silent"])
            continue
        info = fingerprint_service(port, raw)
        infos.append(info)
        payload, negotiated = strip_telnet_negotiation(raw) if info.service == "telnet" else (raw, ())
        parts.append([port, *_identity(info, _first_line(_text(payload)), negotiated)])
    web_product = None
    if server_header:
        web = fingerprint_http(200, [("Server", server_header[:MAX_FIELD_CHARS])])
        if web.product:
            web_product = web.product
            parts.append(["server", web.product.lower(), (web.version or "").lower()])
        else:
            parts.append(["server", _normalise(server_header)])
    digest = hashlib.sha256(json.dumps(parts, separators=(",", ":")).encode()).hexdigest()
    slug = _slug(name) if name else ""
    if not slug:
        candidates = [web_product, *(i.product for i in infos if i.product)]
        slug = next((_slug(c) for c in candidates if c and _slug(c)), "")
    if not slug:
        slug = "unknown-model"
    return f"{slug}-{digest[:MODEL_KEY_HASH_HEX]}"


def model_server_header(servers: Mapping[int, str]) -> str | None:
    """Pick the ``Server:`` header that names a model, from the headers its web ports sent.

    Discovery and characterization must agree on this, or the same device gets two model keys: the header
    of port 8080 (the management web server of the devices this project exists for) wins, else the lowest
    web port's.
    """
    if not servers:
        return None
    return servers.get(8080) or servers[min(servers)]


def model_key_digest(key: str) -> str:
    """Return the hash part of a model key (what identifies the model; the slug is only for people)."""
    return key.rsplit("-", 1)[-1]
