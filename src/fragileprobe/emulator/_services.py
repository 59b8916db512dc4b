"""What each emulated service says: FTP, SSH, Telnet, HTTP and the simpler kinds.

Every service runs on a :class:`ServiceConn`, which applies the device's load-dependent response delay
before each send and counts the bytes received. A service returns when the session should end (the client
left, asked to quit, or sat idle past the service's idle timeout); the device then closes the connection.
Every read is bounded in bytes (the named constants below) and in time (``idle_timeout_s``).
"""

from __future__ import annotations

import contextlib
import socket
import struct
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import anyio
from anyio.abc import SocketAttribute, SocketStream

from fragileprobe.emulator._hostile import HOSTILE_HANDLERS

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from fragileprobe.emulator._models import DeviceModel, ServiceSpec

__all__ = ["RECV_CHUNK", "ServiceConn", "serve"]

# Bytes asked of the kernel per receive: one page, enough for any request these services parse.
RECV_CHUNK = 4096
# Longest command line the FTP/Telnet services accept; vsftpd's own limit is 4 KiB, BusyBox login's
# is far shorter. Longer input is answered with an error and the session is closed.
MAX_LINE = 512
# Largest HTTP request head served (nginx's default large_client_header_buffers is 8 KiB).
MAX_HTTP_HEAD = 8192
# Largest HL7 MLLP frame kept while looking for its end (real HL7 messages are a few KiB).
MAX_MLLP_FRAME = 65536
# Telnet login attempts before the session is dropped (BusyBox login gives three).
MAX_LOGIN_ATTEMPTS = 3

_IAC, _SB, _SE = 255, 250, 240
_WILL, _WONT, _DO, _DONT = 251, 252, 253, 254


class SessionEnded(Exception):
    """The client closed, reset, or idled out: the service has nothing more to do."""


class ServiceConn:
    """One accepted connection, as a service sees it.

    Args:
        stream: The accepted socket stream.
        port: Model port of the service.
        spec: The service.
        model: The device model (for passwords and hostnames).
        delay_s: Returns the device's current response delay.
        on_bytes: Called with the size of every chunk received.
        firmware_changed: Use the model's ``banners_after_crash`` for this port.
    """

    __slots__ = ("_buffer", "_delay_s", "_on_bytes", "firmware_changed", "model", "port", "spec", "stream")

    def __init__(
        self,
        stream: SocketStream,
        *,
        port: int,
        spec: ServiceSpec,
        model: DeviceModel,
        delay_s: Callable[[], float],
        on_bytes: Callable[[int], None],
        firmware_changed: bool = False,
    ) -> None:
        self.stream = stream
        self.port = port
        self.spec = spec
        self.model = model
        self._delay_s = delay_s
        self._on_bytes = on_bytes
        self._buffer = bytearray()
        self.firmware_changed = firmware_changed

    @property
    def banner(self) -> bytes:
        """This service's banner, or the post-crash firmware's banner once the firmware has changed."""
        if self.firmware_changed:
            changed = self.model.banners_after_crash.get(self.port)
            if changed is not None:
                return changed
        return self.spec.banner

    @property
    def server_header(self) -> str | None:
        """HTTP ``Server:`` value; after a firmware change, ``banners_after_crash`` holds the new one."""
        if self.firmware_changed:
            changed = self.model.banners_after_crash.get(self.port)
            if changed is not None:
                return changed.decode("latin-1")
        return self.spec.server_header

    async def send(self, data: bytes, *, delay: bool = True) -> None:
        """Send ``data`` after the device's current response delay."""
        if delay:
            await anyio.sleep(self._delay_s())
        try:
            await self.stream.send(data)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
            raise SessionEnded from exc

    async def receive(self) -> bytes:
        """Return the next chunk (buffered input first); raise :class:`SessionEnded` on EOF or idle."""
        if self._buffer:
            data = bytes(self._buffer)
            self._buffer.clear()
            return data
        with anyio.move_on_after(self.spec.idle_timeout_s):
            try:
                data = await self.stream.receive(RECV_CHUNK)
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
                raise SessionEnded from exc
            self._on_bytes(len(data))
            return data
        raise SessionEnded

    def unread(self, data: bytes) -> None:
        """Push ``data`` back to be returned by the next :meth:`receive`."""
        self._buffer[:0] = data

    async def read_line(self, *, telnet: bool = False) -> bytes | None:
        """Return one line without its terminator, or ``None`` if it exceeded :data:`MAX_LINE`.

        With ``telnet=True``, IAC command sequences are removed and ``CR NUL`` counts as a line end.
        """
        line = bytearray()
        while True:
            chunk = await self.receive()
            if telnet:
                chunk, rest = _strip_iac(chunk)
                if rest:
                    # An IAC sequence split across reads: keep its start for the next round.
                    self._buffer[:0] = rest
            for index, byte in enumerate(chunk):
                if byte in (10, 13):
                    tail = chunk[index + 1 :]
                    if byte == 13 and tail[:1] in (b"\n", b"\x00"):
                        tail = tail[1:]
                    if tail:
                        self.unread(tail)
                    return bytes(line)
                line.append(byte)
                if len(line) > MAX_LINE:
                    return None

    async def swallow(self) -> None:
        """Read and discard until the client leaves or the session idles out."""
        while True:
            await self.receive()

    def abort(self) -> None:
        """Arrange for the next close to send RST instead of FIN (``SO_LINGER`` with a zero timeout).

        A zero linger timeout makes close() drop unsent data and reset the connection (see socket(7)),
        which is what a client sees from a device that crashes or rejects it outright.
        """
        abort_stream(self.stream)


def abort_stream(stream: SocketStream) -> None:
    """Make ``stream``'s close send RST (``SO_LINGER`` on, zero timeout)."""
    try:
        raw = stream.extra(SocketAttribute.raw_socket)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        # Already closed or reset by the peer: the close is then moot anyway.
        pass


def _strip_iac(data: bytes) -> tuple[bytes, bytes]:
    """Remove telnet IAC sequences; return (clean bytes, incomplete trailing sequence)."""
    out = bytearray()
    index = 0
    length = len(data)
    while index < length:
        byte = data[index]
        if byte != _IAC:
            out.append(byte)
            index += 1
            continue
        if index + 1 >= length:
            return bytes(out), data[index:]
        command = data[index + 1]
        if command == _IAC:
            out.append(_IAC)
            index += 2
        elif command in (_WILL, _WONT, _DO, _DONT):
            if index + 2 >= length:
                return bytes(out), data[index:]
            index += 3
        elif command == _SB:
            end = data.find(bytes([_IAC, _SE]), index + 2)
            if end < 0:
                # Subnegotiation longer than one read: drop it rather than buffer without bound.
                return bytes(out), b""
            index = end + 2
        else:
            index += 2
    return bytes(out), b""


# --- FTP -----------------------------------------------------------------------------------------------
_FTP_FEAT = (
    b"211-Features:\r\n EPRT\r\n EPSV\r\n MDTM\r\n PASV\r\n REST STREAM\r\n SIZE\r\n TVFS\r\n211 End\r\n"
)


async def _ftp(conn: ServiceConn) -> None:
    await conn.send(conn.banner)
    while True:
        line = await conn.read_line()
        if line is None:
            await conn.send(b"500 Input line too long.\r\n")
            return
        verb = line.split(b" ", 1)[0].upper()
        if verb == b"QUIT":
            await conn.send(b"221 Goodbye.\r\n")
            return
        reply = {
            b"USER": b"331 Please specify the password.\r\n",
            b"PASS": b"530 Login incorrect.\r\n",
            b"SYST": b"215 UNIX Type: L8\r\n",
            b"FEAT": _FTP_FEAT,
            b"NOOP": b"200 NOOP ok.\r\n",
            b"HELP": b"214 Help OK.\r\n",
        }.get(verb, b"530 Please login with USER and PASS.\r\n")
        await conn.send(reply)


# --- SSH -----------------------------------------------------------------------------------------------
async def _ssh(conn: ServiceConn) -> None:
    # RFC 4253 section 4.2: the server may send its identification string first; a real dropbear would go
    # on to key exchange, which no fragileprobe probe needs, so the rest is swallowed.
    await conn.send(conn.banner)
    await conn.swallow()


# --- Telnet --------------------------------------------------------------------------------------------
def _telnet_prompt(banner: bytes) -> bytes:
    """The login prompt line of a telnet banner (after the IAC negotiation and the last CRLF)."""
    clean, _ = _strip_iac(banner)
    return clean.rsplit(b"\n", 1)[-1]


async def _telnet(conn: ServiceConn) -> None:
    banner = conn.banner
    prompt = _telnet_prompt(banner)
    await conn.send(banner)
    password = conn.model.telnet_password
    for _attempt in range(MAX_LOGIN_ATTEMPTS):
        user = await conn.read_line(telnet=True)
        if user is None:
            return
        await conn.send(b"Password: ")
        given = await conn.read_line(telnet=True)
        if given is None:
            return
        if password is not None and given.decode("latin-1") == password and user.strip():
            await _telnet_shell(conn)
            return
        await conn.send(b"\r\nLogin incorrect\r\n" + prompt)
    # Three strikes, like BusyBox login: drop the connection.


async def _telnet_shell(conn: ServiceConn) -> None:
    host = conn.model.hostname.encode("ascii", "replace")
    await conn.send(
        b"\r\n\r\nBusyBox v1.19.4 (2013-04-02 11:02:33 CEST) built-in shell (ash)\r\n"
        b"Enter 'help' for a list of built-in commands.\r\n\r\n" + host + b":~# "
    )
    while True:
        line = await conn.read_line(telnet=True)
        if line is None:
            return
        command = line.strip()
        if command in (b"exit", b"logout"):
            return
        if not command:
            reply = b""
        elif command == b"uname -a":
            reply = b"Linux " + host + b" 2.6.33-rc4 #1 PREEMPT armv5tejl GNU/Linux\r\n"
        elif command == b"id":
            reply = b"uid=0(root) gid=0(root)\r\n"
        else:
            reply = b"-sh: " + command.split(b" ", 1)[0][:64] + b": not found\r\n"
        await conn.send(reply + host + b":~# ")


# --- HTTP ----------------------------------------------------------------------------------------------
def _http_response(status: str, headers: list[tuple[str, str]], body: bytes, *, head_only: bool) -> bytes:
    lines = [f"HTTP/1.1 {status}"]
    lines += [f"{name}: {value}" for name, value in headers]
    lines += [f"Content-Length: {len(body)}", "Connection: close", "", ""]
    return "\r\n".join(lines).encode("latin-1") + (b"" if head_only else body)


async def _read_http_head(conn: ServiceConn) -> bytes | None:
    """Return the request head (up to the blank line), or ``None`` if it exceeded :data:`MAX_HTTP_HEAD`."""
    head = bytearray()
    while b"\r\n\r\n" not in head and b"\n\n" not in head:
        head += await conn.receive()
        if len(head) > MAX_HTTP_HEAD:
            return None
    return bytes(head)


def _status_page(conn: ServiceConn) -> bytes:
    spec = conn.spec
    title = spec.title or conn.model.product
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return (
        f"<html><head><title>{title}</title></head><body>"
        f"<h1>{conn.model.vendor}</h1><p>{conn.model.product}</p>{spec.body_html}"
        f"<p>Device time: {now}</p></body></html>\n"
    ).encode()


async def _http(conn: ServiceConn) -> None:
    head = await _read_http_head(conn)
    server = conn.server_header
    headers = [("Server", server)] if server else []
    if head is None:
        await conn.send(_http_response("431 Request Header Fields Too Large", headers, b"", head_only=False))
        return
    request_line = head.split(b"\n", 1)[0].strip().split(b" ")
    method = request_line[0].upper() if request_line else b""
    path = request_line[1] if len(request_line) > 1 else b"/"
    head_only = method == b"HEAD"
    if method not in (b"GET", b"HEAD"):
        response = _http_response(
            "405 Method Not Allowed", [*headers, ("Allow", "GET, HEAD")], b"", head_only=False
        )
    elif conn.spec.title is not None and path in (b"/", b"/index.html", b"/status"):
        body = _status_page(conn)
        response = _http_response(
            "200 OK", [*headers, ("Content-Type", "text/html; charset=utf-8")], body, head_only=head_only
        )
    else:
        body = b"<html><head><title>404 Not Found</title></head><body>Not Found</body></html>\n"
        response = _http_response(
            "404 Not Found", [*headers, ("Content-Type", "text/html")], body, head_only=head_only
        )
    await conn.send(response)


# --- simple kinds --------------------------------------------------------------------------------------
async def _banner(conn: ServiceConn) -> None:
    if conn.banner:
        await conn.send(conn.banner)
    await conn.swallow()


async def _silent(conn: ServiceConn) -> None:
    await conn.swallow()


# A TPKT / X.224 Connection Confirm with an RDP negotiation response selecting TLS (MS-RDPBCGR 2.2.1.2).
_RDP_CONFIRM = bytes.fromhex("030000130ed000001234000201080001000000")


async def _rdp(conn: ServiceConn) -> None:
    first = await conn.receive()
    if first[:2] == b"\x03\x00":
        await conn.send(_RDP_CONFIRM)
    await conn.swallow()


async def _mllp(conn: ServiceConn) -> None:
    # HL7 v2 over MLLP: <VT> message <FS><CR>. Each complete frame gets an application accept (AA) ACK.
    frame = bytearray()
    while True:
        frame += await conn.receive()
        if len(frame) > MAX_MLLP_FRAME:
            return
        while True:
            end = frame.find(b"\x1c\r")
            if end < 0:
                break
            message = bytes(frame[:end]).lstrip(b"\x0b")
            del frame[: end + 2]
            control_id = b"0"
            fields = message.split(b"\r", 1)[0].split(b"|")
            if len(fields) > 9:
                control_id = fields[9][:32]
            stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S").encode()
            ack = (
                b"\x0bMSH|^~\\&|PM8000|CALDERA|||" + stamp + b"||ACK|" + control_id + b"|P|2.3\r"
                b"MSA|AA|" + control_id + b"\r\x1c\r"
            )
            await conn.send(ack)


_HANDLERS: dict[str, Callable[[ServiceConn], Awaitable[None]]] = {
    "ftp": _ftp,
    "ssh": _ssh,
    "telnet": _telnet,
    "http": _http,
    "banner": _banner,
    "silent": _silent,
    "rdp": _rdp,
    "mllp": _mllp,
    **HOSTILE_HANDLERS,
}


def register(kind: str, handler: Callable[[ServiceConn], Awaitable[None]]) -> None:
    """Register the handler of a service kind (used by the hostile behaviours module)."""
    _HANDLERS[kind] = handler


async def serve(conn: ServiceConn) -> None:
    """Serve one session of ``conn.spec.kind`` until it ends; never raises for a departed client."""
    handler = _HANDLERS.get(conn.spec.kind)
    if handler is None:  # pragma: no cover - ServiceSpec validates kinds
        raise RuntimeError(f"no handler for service kind {conn.spec.kind!r}")
    with contextlib.suppress(SessionEnded):
        await handler(conn)
