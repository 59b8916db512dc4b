"""A sans-IO SOCKS5 server-side state machine (RFC 1928 CONNECT, RFC 1929 username/password).

Bytes in, events out; no sockets, no clock. The caller (:mod:`fragileprobe._shield`) feeds what the client
sent with :meth:`SocksServer.receive_data`, pulls events with :meth:`SocksServer.next_event` and answers each
decision with the method that returns the bytes to send (:meth:`~SocksServer.select_method`,
:meth:`~SocksServer.auth_result`, :meth:`~SocksServer.reply`). Anything malformed raises
:class:`SocksProtocolError`, never anything else; its ``reply`` holds the bytes (if any) that tell the client
why before the connection is closed.

The states and their transitions (the rules, in one place)::

    GREETING  --VER=5, NMETHODS, METHODS-->  (event Greeting)           --select_method(m)-->
        m = NO_AUTH         -> REQUEST
        m = USERNAME_PASSWORD -> AUTH
        m = NO_ACCEPTABLE   -> CLOSED   (RFC 1928 s3: the client must close)
    AUTH      --VER=1, ULEN, UNAME, PLEN, PASSWD--> (event AuthRequest)  --auth_result(ok)-->
        ok     -> REQUEST
        not ok -> CLOSED    (RFC 1929 s2: a non-zero status means the server closes)
    REQUEST   --VER=5, CMD, RSV=0, ATYP, DST.ADDR, DST.PORT-->
        CMD=CONNECT, ATYP=IPv4/IPv6  -> (event ConnectRequest)           -> REPLY
        CMD=BIND / UDP ASSOCIATE     -> (event RequestRefused, 0x07)     -> REPLY
        CMD unknown                  -> (event RequestRefused, 0x07)     -> REPLY
        ATYP=DOMAINNAME              -> (event RequestRefused, 0x02: the shield never resolves names;
                                         a name cannot be checked against the scope without a DNS query)
        ATYP unknown                 -> SocksProtocolError (reply 0x08: the length of what follows is unknown)
    REPLY     --reply(code)-->  code = SUCCEEDED -> RELAY, else -> CLOSED
    RELAY     everything the client sends is relay data (:meth:`trailing_data` hands over what came early)

A client that speaks another version (SOCKS4, HTTP) gets no SOCKS5 answer: the connection is just closed.
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from dataclasses import dataclass
from typing import Final

from fragileprobe._errors import FragileProbeError

__all__ = [
    "MAX_BUFFER_BYTES",
    "AuthMethod",
    "AuthRequest",
    "ConnectRequest",
    "Greeting",
    "NeedData",
    "Reply",
    "RequestRefused",
    "SocksEvent",
    "SocksProtocolError",
    "SocksServer",
    "State",
    "encode_reply",
]

SOCKS_VERSION: Final = 5
AUTH_VERSION: Final = 1  # RFC 1929 s2: the sub-negotiation's own version

# The largest legal handshake a client may pipeline before it reads our first answer: greeting 2 + 255
# methods, RFC 1929 request 3 + 255 + 255, request 4 + 1 + 255 (a domain name) + 2: 1,032 bytes. Past the
# request, a client that sends data before our reply ("optimistic data", as Tor clients do) may send up to
# one small first packet. 4 KiB holds both; more is not a SOCKS client, and buffering it would let one
# client make us hold any number of bytes.
MAX_BUFFER_BYTES: Final = 4096


class State(enum.Enum):
    """Where the handshake is."""

    GREETING = "greeting"
    AUTH = "auth"
    REQUEST = "request"
    REPLY = "reply"  # a request was parsed; the caller owes the reply
    RELAY = "relay"
    CLOSED = "closed"


class AuthMethod(enum.IntEnum):
    """RFC 1928 s3 method numbers (the ones this server knows)."""

    NO_AUTH = 0x00
    GSSAPI = 0x01
    USERNAME_PASSWORD = 0x02
    NO_ACCEPTABLE = 0xFF


class Command(enum.IntEnum):
    """RFC 1928 s4 commands."""

    CONNECT = 0x01
    BIND = 0x02
    UDP_ASSOCIATE = 0x03


class AddressType(enum.IntEnum):
    """RFC 1928 s4 address types."""

    IPV4 = 0x01
    DOMAINNAME = 0x03
    IPV6 = 0x04


class Reply(enum.IntEnum):
    """RFC 1928 s6 reply codes."""

    SUCCEEDED = 0x00
    GENERAL_FAILURE = 0x01
    NOT_ALLOWED = 0x02  # "connection not allowed by ruleset"
    NETWORK_UNREACHABLE = 0x03
    HOST_UNREACHABLE = 0x04
    CONNECTION_REFUSED = 0x05
    TTL_EXPIRED = 0x06
    COMMAND_NOT_SUPPORTED = 0x07
    ADDRESS_TYPE_NOT_SUPPORTED = 0x08


class SocksProtocolError(FragileProbeError):
    """Raised when a client breaks the SOCKS5 protocol (bad version, bad field, too many bytes).

    Attributes:
        reply: bytes to send before closing (a SOCKS5 reply or an RFC 1929 failure), or ``b""`` when the
            client did not speak SOCKS5 at all and gets nothing.
    """

    def __init__(self, message: str, reply: bytes = b"") -> None:
        super().__init__(message)
        self.reply = reply


@dataclass(frozen=True, slots=True)
class NeedData:
    """More bytes are needed before the next event."""


NEED_DATA: Final = NeedData()


@dataclass(frozen=True, slots=True)
class Greeting:
    """The client's method offer (RFC 1928 s3); answer with :meth:`SocksServer.select_method`."""

    methods: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class AuthRequest:
    """An RFC 1929 username/password request; answer with :meth:`SocksServer.auth_result`.

    Both fields are the raw bytes (RFC 1929 does not name an encoding).
    """

    username: bytes
    password: bytes

    def __repr__(self) -> str:  # never print a password into a log
        return f"AuthRequest(username={self.username!r}, password=<{len(self.password)} bytes>)"


@dataclass(frozen=True, slots=True)
class ConnectRequest:
    """A CONNECT to an IP literal; answer with :meth:`SocksServer.reply`."""

    host: str
    port: int


@dataclass(frozen=True, slots=True)
class RequestRefused:
    """A request this server refuses by protocol; send :meth:`SocksServer.reply` with ``reply``.

    Attributes:
        reply: the code to answer with (0x07 for BIND, UDP ASSOCIATE and unknown commands; 0x02 for a
            domain name).
        reason: what was refused, for the log (``"bind"``, ``"udp_associate"``, ``"command_0x09"``,
            ``"domain_name"``).
        host: the requested destination as text (the name for a domain request), for the log.
        port: the requested port.
    """

    reply: Reply
    reason: str
    host: str
    port: int


SocksEvent = NeedData | Greeting | AuthRequest | ConnectRequest | RequestRefused


def encode_reply(code: Reply | int, host: str = "0.0.0.0", port: int = 0) -> bytes:
    """A SOCKS5 reply: VER, REP, RSV, ATYP, BND.ADDR, BND.PORT (RFC 1928 s6).

    Raises:
        ValueError: ``host`` is not an IP literal or ``port`` is out of range (a caller bug).
    """
    addr = ipaddress.ip_address(host)
    atyp = AddressType.IPV4 if addr.version == 4 else AddressType.IPV6
    return bytes((SOCKS_VERSION, int(code), 0, atyp)) + addr.packed + struct.pack("!H", port)


class SocksServer:
    """One client connection's SOCKS5 handshake, server side (see the module docstring for the rules).

    Args:
        max_buffer_bytes: cap on bytes held before the reply (default :data:`MAX_BUFFER_BYTES`).
    """

    __slots__ = ("_buf", "_max", "_pending", "_state")

    def __init__(self, *, max_buffer_bytes: int = MAX_BUFFER_BYTES) -> None:
        self._buf = bytearray()
        self._max = max_buffer_bytes
        self._state = State.GREETING
        self._pending: str | None = None  # which answer the caller owes in state REPLY

    def __repr__(self) -> str:
        return f"SocksServer(state={self._state.value}, buffered={len(self._buf)})"

    @property
    def state(self) -> State:
        return self._state

    def receive_data(self, data: bytes) -> None:
        """Add bytes from the client.

        Raises:
            SocksProtocolError: more than ``max_buffer_bytes`` held before the reply, or data after the
                handshake was closed.
        """
        if self._state is State.CLOSED:
            raise SocksProtocolError("data from the client after the handshake was closed")
        if self._state is State.RELAY:
            raise SocksProtocolError("receive_data after the reply: relay the bytes instead")
        self._buf += data
        if len(self._buf) > self._max:
            reply = self._failure_reply()
            raise self._fail(f"client sent more than {self._max} bytes before the reply", reply)

    def next_event(self) -> SocksEvent:
        """The next event, or :data:`NEED_DATA` when the buffered bytes do not complete one.

        Raises:
            SocksProtocolError: the bytes break the protocol (``reply`` says what to send before closing).
        """
        if self._state is State.GREETING:
            return self._greeting()
        if self._state is State.AUTH:
            return self._auth()
        if self._state is State.REQUEST:
            return self._request()
        return NEED_DATA  # REPLY, RELAY, CLOSED: the caller's move

    # --- parsing ------------------------------------------------------------------------------------------

    def _fail(self, message: str, reply: bytes = b"") -> SocksProtocolError:
        self._state = State.CLOSED
        return SocksProtocolError(message, reply)

    def _failure_reply(self) -> bytes:
        # What tells the client "failed" in the step it is in (nothing before a method was chosen).
        if self._state is State.AUTH or self._pending == "auth":
            return bytes((AUTH_VERSION, 0x01))
        if self._state is State.REQUEST or self._pending == "request":
            return encode_reply(Reply.GENERAL_FAILURE)
        return b""

    def _greeting(self) -> SocksEvent:
        buf = self._buf
        if not buf:
            return NEED_DATA
        if buf[0] != SOCKS_VERSION:
            raise self._fail(f"not a SOCKS5 client (first byte 0x{buf[0]:02x})")
        if len(buf) < 2:
            return NEED_DATA
        count = buf[1]
        if count == 0:
            raise self._fail(
                "SOCKS5 greeting offers no method", bytes((SOCKS_VERSION, AuthMethod.NO_ACCEPTABLE))
            )
        if len(buf) < 2 + count:
            return NEED_DATA
        methods = tuple(buf[2 : 2 + count])
        del buf[: 2 + count]
        self._state = State.REPLY  # the caller owes the method choice
        self._pending = "method"
        return Greeting(methods)

    def _auth(self) -> SocksEvent:
        buf = self._buf
        if not buf:
            return NEED_DATA
        if buf[0] != AUTH_VERSION:
            raise self._fail(
                f"RFC 1929 sub-negotiation version 0x{buf[0]:02x}, expected 0x01", bytes((AUTH_VERSION, 0x01))
            )
        if len(buf) < 2:
            return NEED_DATA
        ulen = buf[1]
        if len(buf) < 3 + ulen:
            return NEED_DATA
        plen = buf[2 + ulen]
        end = 3 + ulen + plen
        if len(buf) < end:
            return NEED_DATA
        username, password = bytes(buf[2 : 2 + ulen]), bytes(buf[3 + ulen : end])
        del buf[:end]
        self._state = State.REPLY
        self._pending = "auth"
        return AuthRequest(username, password)

    def _request(self) -> SocksEvent:
        buf = self._buf
        end = self._request_length()
        if end is None or len(buf) < end:
            return NEED_DATA
        cmd, atyp = buf[1], buf[3]
        raw = bytes(buf[4 : end - 2])
        (port,) = struct.unpack("!H", buf[end - 2 : end])
        del buf[:end]
        if atyp == AddressType.DOMAINNAME:
            host = raw[1:].decode("ascii", "backslashreplace")
        else:
            host = str(ipaddress.ip_address(raw))
        self._state = State.REPLY
        self._pending = "request"
        if cmd != Command.CONNECT:
            names: dict[int, str] = {Command.BIND: "bind", Command.UDP_ASSOCIATE: "udp_associate"}
            reason = names.get(cmd, f"command_0x{cmd:02x}")
            return RequestRefused(Reply.COMMAND_NOT_SUPPORTED, reason, host, port)
        if atyp == AddressType.DOMAINNAME:
            return RequestRefused(Reply.NOT_ALLOWED, "domain_name", host, port)
        return ConnectRequest(host, port)

    def _request_length(self) -> int | None:
        """The whole request's length once its header says (None: more bytes first); checks the header."""
        buf = self._buf
        if buf and buf[0] != SOCKS_VERSION:
            raise self._fail(
                f"request version 0x{buf[0]:02x}, expected 0x05", encode_reply(Reply.GENERAL_FAILURE)
            )
        if len(buf) < 4:
            return None
        if buf[2] != 0:
            raise self._fail(
                f"request reserved byte 0x{buf[2]:02x}, must be 0x00", encode_reply(Reply.GENERAL_FAILURE)
            )
        atyp = buf[3]
        if atyp == AddressType.IPV4:
            return 4 + 4 + 2
        if atyp == AddressType.IPV6:
            return 4 + 16 + 2
        if atyp == AddressType.DOMAINNAME:
            return 5 + buf[4] + 2 if len(buf) >= 5 else None
        raise self._fail(
            f"address type 0x{atyp:02x} is not defined by RFC 1928",
            encode_reply(Reply.ADDRESS_TYPE_NOT_SUPPORTED),
        )

    # --- answers ------------------------------------------------------------------------------------------

    def _answer(self, kind: str) -> None:
        if self._state is not State.REPLY or self._pending != kind:
            raise RuntimeError(f"no {kind} answer is due in state {self._state.value}")
        self._pending = None

    def select_method(self, method: AuthMethod | int) -> bytes:
        """Answer a :class:`Greeting` with the chosen method; returns the bytes to send."""
        self._answer("method")
        if method == AuthMethod.NO_AUTH:
            self._state = State.REQUEST
        elif method == AuthMethod.USERNAME_PASSWORD:
            self._state = State.AUTH
        else:
            method = AuthMethod.NO_ACCEPTABLE
            self._state = State.CLOSED
        return bytes((SOCKS_VERSION, int(method)))

    def auth_result(self, ok: bool) -> bytes:
        """Answer an :class:`AuthRequest`; returns the bytes to send (close after a failure)."""
        self._answer("auth")
        self._state = State.REQUEST if ok else State.CLOSED
        return bytes((AUTH_VERSION, 0x00 if ok else 0x01))

    def reply(self, code: Reply, host: str = "0.0.0.0", port: int = 0) -> bytes:
        """Answer a :class:`ConnectRequest` or :class:`RequestRefused`; returns the bytes to send.

        ``host``/``port`` are BND.ADDR/BND.PORT: the address the server connected from (RFC 1928 s6).
        """
        self._answer("request")
        self._state = State.RELAY if code == Reply.SUCCEEDED else State.CLOSED
        return encode_reply(code, host, port)

    def trailing_data(self) -> bytes:
        """Bytes the client sent after its request (relay them first); empties the buffer."""
        data = bytes(self._buf)
        self._buf.clear()
        return data
