"""Shield: a SOCKS5 server that puts any scanner behind fragileprobe's ceiling and watchdog.

::

    async with Shield(scope=Scope("10.20.0.0/24"), store=ProfileStore("fp.db")) as shield:
        print(shield.address)          # ('127.0.0.1', 1080): point the scanner's SOCKS5 proxy here
        await shield.wait_closed()     # or do other work; leaving the block stops it

For every CONNECT (the protocol is :mod:`fragileprobe._socks`, sans-IO):

1. **scope**: the destination must be an IP literal inside ``scope``; a name (never resolved), an
   out-of-scope address, a printer port 9100-9107 (unless ``allow_printer_ports``) or a host whose stored
   ceiling is 0 ("do not scan") is refused with 0x02 "connection not allowed by ruleset"; nothing is sent.
2. **ceiling**: the destination host's :class:`~fragileprobe.Guard` (created lazily, one per host, kept while
   the host has sessions or is tripped, closed after :data:`GUARD_LINGER_S` idle) gives the session a slot of
   the host's ceiling: a per-host override, else the stored ceiling of the host's model (inventory model key
   -> :class:`~fragileprobe.ProfileStore` profile), else :data:`MEDICAL_CEILING` for hosts in the
   "Medical Device?" group, else ``default_ceiling``. Over the ceiling a CONNECT waits at most
   ``slot_wait_s``, then is refused (0x02); it is never relayed over the ceiling. A CONNECT that has waited
   ``preempt_idle_s`` ends the same client's session to that host idle as long (a tool frozen in
   ``connect()`` by proxychains cannot close the sockets it is done with).
3. **upstream**: the connect is ``guard.connect(port)``: the Guard does the device-side session accounting
   (the slot is held until the device has let go). Its result is the reply (see :func:`reply_for`).
4. **watchdog**: when a heartbeat is known for the host (``heartbeats``, else the inventory's web port, else
   ``default_heartbeat``) the Guard's watchdog beats it while the Guard is open. When it declares the device
   down the Guard cancels every relayed session to it at once and refuses new ones; the shield records a
   trip, raises an alert (structlog, JSON-lines file, store, webhook) and keeps the host blocked until
   ``release_beats`` healthy beats in a row (or, with ``release="operator"``, until :meth:`Shield.release`).
   Other hosts are not affected.
5. **relay**: on the socket of the Guard's own connection (the session stays in its device-side ledger),
   socket -> kernel pipe -> socket with ``splice(2)`` where it exists; at most :data:`RELAY_CHUNK_BYTES` in
   flight per direction (nothing more is read until the other side took them: backpressure), idle and total
   timeouts, byte counts per direction. Memory grows with sessions, not with bytes.
6. **audit**: every session ends as one :class:`ShieldSession` record: a ``shield.session`` structlog event,
   a row in the store (written in batches by one task), and the shield's recent-session list.

Not an open proxy: loopback by default; any other listen address needs ``users`` (RFC 1929) and
``allow_clients``. A client outside the allow-list is closed before one byte is read from it.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import hmac
import ipaddress
import math
import os
import socket
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Final, Literal

import anyio
import anyio.abc
import anyio.lowlevel
import structlog
from anyio.abc import SocketAttribute

from fragileprobe import _socks, _validate
from fragileprobe._errors import (
    ConfigError,
    DeviceDownError,
    ProbeError,
    ProbeRefusedError,
    ProbeTimeoutError,
)
from fragileprobe._guard import Guard, opens_session
from fragileprobe._heartbeat import HttpHeartbeat
from fragileprobe._net import SocketConnection
from fragileprobe._probes import DEFAULT_CONNECT_TIMEOUT_S
from fragileprobe._scope import Scope, Target
from fragileprobe._socks import AuthMethod, Reply

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

    from fragileprobe._groups import JsonlAlertSink, WebhookAlertSink
    from fragileprobe._heartbeat import Heartbeat
    from fragileprobe._probes import ProbeStream
    from fragileprobe._store import ProfileStore

__all__ = [
    "DEFAULT_CEILING",
    "GUARD_LINGER_S",
    "MEDICAL_CEILING",
    "PRINTER_PORTS",
    "RELAY_CHUNK_BYTES",
    "SessionOutcome",
    "Shield",
    "ShieldSession",
    "ShieldStats",
    "ShieldTrip",
    "preemptions",
    "reply_for",
]

log = structlog.get_logger(__name__)

# --- limits, each with its reason ---------------------------------------------------------------------------

# IANA's port for SOCKS.
DEFAULT_LISTEN_PORT: Final = 1080
# Hosts the inventory knows nothing fragile about: Greenbone's task default of 4 checks per host at once
# (ANCHORS.md). A host whose model has a stored profile always gets that ceiling instead.
DEFAULT_CEILING: Final = 4
# Hosts that look medical but whose model has no stored ceiling: two sessions on the device, one relayed
# session at a time beside the shield's heartbeat (a ceiling counts every session the device holds, the
# heartbeat's included; docs/guarantees.md).
MEDICAL_CEILING: Final = 2
MEDICAL_GROUP: Final = "Medical Device?"
# How long a CONNECT over the ceiling waits for a slot before it is refused. proxychains-ng blocks the whole
# tool inside connect() while it waits for our reply (it makes the socket blocking for the handshake), so a
# long wait stalls the scanner; 5 s lets a queued nmap -sV probe through after one short service probe.
DEFAULT_SLOT_WAIT_S: Final = 5.0
# A CONNECT that has waited this long for a slot of a full host takes the slot of the same client's session
# to that host that has been idle at least as long (see Shield's preempt_idle_s). A tool behind proxychains
# (nmap -sT, -sV) is frozen inside connect() while it waits, so it cannot close the sockets it is done with:
# without this, its wait runs out and the port is reported closed. 1 s: longer than a loopback or LAN
# round trip by far, and a fifth of the slot wait, so the waiting connect still gets the slot in time.
DEFAULT_PREEMPT_IDLE_S: Final = 1.0
# How often a host with waiting CONNECTs looks for an idle session to preempt.
PREEMPT_CHECK_S: Final = 0.2
# A relayed session with no byte in either direction for this long is closed: an interactive session
# survives a pause, a scanner's forgotten connection does not hold one of a device's few slots for ever.
DEFAULT_IDLE_TIMEOUT_S: Final = 300.0
# Hard bound on one relayed session.
DEFAULT_TOTAL_TIMEOUT_S: Final = 3600.0
# After either side's FIN, the other side gets this much silence to finish. A full close (nmap -sT's
# close()) looks exactly like a half-close on the wire, and a device that does not close on EOF would
# otherwise keep its slot for the whole idle timeout.
HALF_CLOSE_IDLE_S: Final = 1.0
# Accept backlog: nmap opens hundreds of connections at once; the kernel caps it at somaxconn anyway.
LISTEN_BACKLOG: Final = 1024
# After accept() fails for lack of descriptors, wait this long before trying again (instead of spinning).
ACCEPT_BACKOFF_S: Final = 0.1
# A bulk transfer where every recv and send succeeds at once never reaches an await: yield to the event loop
# every this many chunks (1 MiB at 64 KiB) so the watchdog and other sessions run.
CHUNKS_PER_CHECKPOINT: Final = 16
# A SOCKS client sends greeting and request at once; 10 s allows a slow one and bounds a silent one.
HANDSHAKE_TIMEOUT_S: Final = 10.0
# Bytes in flight per direction of one session: one pipe's default capacity (16 pages). Nothing more is read
# until the other side took them (backpressure), so a session holds at most 2 x 64 KiB, in the kernel's pipe
# (or a buffer of its own without splice), and none while idle, whatever it relays.
RELAY_CHUNK_BYTES: Final = 65536
# Client connections served at once: each relayed session holds two sockets; 4,096 sessions stay well
# inside a default 65,536 file-descriptor limit (raise the ulimit before raising this).
DEFAULT_MAX_SESSIONS: Final = 4096
# A host's Guard stays open this long after its last session, so a scanner that opens one connection after
# another (nmap -sT through proxychains is serial) does not pay a new Guard and a first heartbeat each time.
GUARD_LINGER_S: Final = 5.0
# Healthy beats in a row that end a trip (with release="auto"): one good beat right after a hang can be a
# device half-way through rebooting; three seconds of health at the default interval is a working one.
DEFAULT_RELEASE_BEATS: Final = 3
# Session records kept in memory for ``Shield.sessions`` (the store keeps all of them).
MAX_RECENT_SESSIONS: Final = 10_000
# Store writes: session records queue here and are committed in batches (one transaction each), so a scan
# of thousands of ports does not pay thousands of fsyncs; when the queue is full, sessions wait to end.
AUDIT_QUEUE_ROWS: Final = 1024
AUDIT_BATCH_ROWS: Final = 256
# Printer raw ports (JetDirect): they print whatever they receive (nmap -sV excludes them for that reason).
PRINTER_PORTS: Final = range(9100, 9108)

_LOOPBACK_CLIENTS: Final = ("127.0.0.0/8", "::1")
_NET_ERRNOS: Final = frozenset({errno.ENETUNREACH, errno.ENETDOWN})
_HOST_ERRNOS: Final = frozenset({errno.EHOSTUNREACH, errno.EHOSTDOWN, errno.EADDRNOTAVAIL})


class SessionOutcome(enum.Enum):
    """How one client session through the shield ended."""

    RELAYED = "relayed"  # connected and relayed until one side closed
    IDLE_TIMEOUT = "idle_timeout"
    TOTAL_TIMEOUT = "total_timeout"
    CLIENT_RESET = "client_reset"
    DEVICE_RESET = "device_reset"
    CANCELLED_BY_WATCHDOG = "cancelled_by_watchdog"  # the device tripped while the session ran
    PREEMPTED_IDLE = "preempted_idle"  # idle while the same client waited for a slot of the same host
    REFUSED_SCOPE = "refused_scope"
    REFUSED_NAME = "refused_name"
    REFUSED_COMMAND = "refused_command"
    REFUSED_PRINTER_PORT = "refused_printer_port"
    REFUSED_DO_NOT_SCAN = "refused_do_not_scan"
    REFUSED_TRIPPED = "refused_tripped"
    CEILING_WAIT_TIMEOUT = "ceiling_wait_timeout"
    CONNECT_REFUSED = "connect_refused"
    CONNECT_TIMEOUT = "connect_timeout"
    NETWORK_UNREACHABLE = "network_unreachable"
    HOST_UNREACHABLE = "host_unreachable"
    CONNECT_FAILED = "connect_failed"
    SHIELD_CLOSED = "shield_closed"  # the shield stopped while the session ran


@dataclass(frozen=True, slots=True)
class ShieldSession:
    """One CONNECT through the shield, as audited.

    Attributes:
        client: the client's address and port (``"127.0.0.1:40112"``).
        username: the RFC 1929 user, or None without authentication.
        host: the destination address.
        port: the destination port.
        started_at_s: when the request arrived (epoch seconds).
        ended_at_s: when the session ended (epoch seconds).
        bytes_up: bytes relayed client -> device.
        bytes_down: bytes relayed device -> client.
        outcome: how it ended (a :class:`SessionOutcome` value).
        reply: the SOCKS5 reply code sent (None if the session ended before a reply was due).
        ceiling: the ceiling applied to the host (None when refused before a ceiling applied).
        limit_source: where that ceiling came from ("stored ceiling of model X", "medical default", ...).
        waited_s: seconds from the request to the reply (slot wait plus connect).
    """

    client: str
    username: str | None
    host: str
    port: int
    started_at_s: float
    ended_at_s: float
    bytes_up: int
    bytes_down: int
    outcome: str
    reply: int | None
    ceiling: int | None
    limit_source: str | None
    waited_s: float

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the store's row)."""
        return asdict(self)


@dataclass(frozen=True, slots=True)
class ShieldTrip:
    """A device the shield's watchdog declared down.

    Attributes:
        host: the device.
        tripped_at_s: when (epoch seconds).
        reason: the failed heartbeat's error.
        sessions_closed: relayed sessions in flight at that moment (all closed by the Guard).
        ceiling: the ceiling the host had.
        limit_source: where it came from.
        released_at_s: when the block ended (None while blocked).
        released_by: "healthy_beats" or "operator" (None while blocked).
    """

    host: str
    tripped_at_s: float
    reason: str | None
    sessions_closed: int
    ceiling: int
    limit_source: str
    released_at_s: float | None = None
    released_by: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (also what the alert sinks write, with ``kind: "shield_trip"``)."""
        return {"kind": "shield_trip", **asdict(self)}

    def to_json(self) -> str:
        """One line of JSON (the alert sinks' format)."""
        import json

        return json.dumps(self.to_dict(), sort_keys=True)


@dataclass(frozen=True, slots=True)
class ShieldStats:
    """Counters of a running shield.

    Attributes:
        clients_refused: connections closed unread (outside the allow-list, or over ``max_sessions``).
        auth_failures: RFC 1929 logins refused (or no acceptable method).
        sessions: CONNECT/BIND/UDP requests answered (every :class:`ShieldSession`).
        relayed: sessions that were connected and relayed.
        refused: sessions refused (policy, ceiling wait, trip) or whose connect failed.
        active: client connections open now.
        hosts: destination hosts with an open Guard now.
        tripped_hosts: hosts blocked by a trip now.
        trips: trips so far.
        bytes_up: bytes relayed client -> device so far.
        bytes_down: bytes relayed device -> client so far.
    """

    clients_refused: int
    auth_failures: int
    sessions: int
    relayed: int
    refused: int
    active: int
    hosts: int
    tripped_hosts: int
    trips: int
    bytes_up: int
    bytes_down: int


def reply_for(exc: BaseException) -> tuple[Reply, SessionOutcome]:
    """The SOCKS5 reply for a failed upstream connect (the one mapping; see docs/shield.md).

    * refused (RST to our SYN): 0x05 connection refused;
    * timed out: 0x06 "TTL expired". RFC 1928 has no "timed out" code; 0x06 is what Tor answers for a
      connect timeout, and unlike 0x04 it does not claim the host is gone (a hung device still has a host);
    * ENETUNREACH/ENETDOWN: 0x03 network unreachable; EHOSTUNREACH/EHOSTDOWN/EADDRNOTAVAIL: 0x04 host
      unreachable;
    * the watchdog refused it: 0x02 not allowed by ruleset;
    * anything else: 0x01 general failure.
    """
    if isinstance(exc, DeviceDownError):
        return Reply.NOT_ALLOWED, SessionOutcome.REFUSED_TRIPPED
    if isinstance(exc, ProbeRefusedError):
        return Reply.CONNECTION_REFUSED, SessionOutcome.CONNECT_REFUSED
    if isinstance(exc, ProbeTimeoutError):
        return Reply.TTL_EXPIRED, SessionOutcome.CONNECT_TIMEOUT
    cause = exc.__cause__
    code = cause.errno if isinstance(cause, OSError) else None
    if code in _NET_ERRNOS:
        return Reply.NETWORK_UNREACHABLE, SessionOutcome.NETWORK_UNREACHABLE
    if code in _HOST_ERRNOS:
        return Reply.HOST_UNREACHABLE, SessionOutcome.HOST_UNREACHABLE
    if isinstance(exc, ProbeError) and isinstance(cause, ConnectionResetError):
        return Reply.CONNECTION_REFUSED, SessionOutcome.CONNECT_REFUSED
    return Reply.GENERAL_FAILURE, SessionOutcome.CONNECT_FAILED


def preemptions(
    waiting: Sequence[tuple[str, float]], relaying: Sequence[tuple[str, float]], now: float, after_s: float
) -> list[int]:
    """Which relayed sessions to end for CONNECTs waiting at a full host (pure; indices into ``relaying``).

    ``waiting``: (client, waiting since) per waiting CONNECT; ``relaying``: (client, last byte at) per
    relayed session. Each CONNECT that has waited ``after_s`` ends at most one session: the idlest one of
    *its own* client that has carried no byte for ``after_s``, and never one already chosen.
    """
    chosen: list[int] = []
    for client, since in waiting:
        if now - since < after_s:
            continue
        idle = [
            i
            for i, (owner, last) in enumerate(relaying)
            if owner == client and now - last >= after_s and i not in chosen
        ]
        if idle:
            chosen.append(min(idle, key=lambda i: relaying[i][1]))
    return chosen


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _Host:
    """One destination host: its Guard (owned by its host task), its limit and its trip state."""

    __slots__ = (
        "address",
        "ceiling",
        "guard",
        "heartbeat",
        "last_active",
        "limit_source",
        "live",
        "ready",
        "release_event",
        "sessions",
        "trip",
        "trip_index",
        "wake",
    )

    def __init__(self, address: str, ceiling: int, limit_source: str, heartbeat: Heartbeat | None) -> None:
        self.address = address
        self.ceiling = ceiling
        self.limit_source = limit_source
        self.heartbeat = heartbeat
        self.guard: Guard | None = None
        self.ready = anyio.Event()
        self.wake = anyio.Event()
        self.release_event = anyio.Event()
        self.sessions = 0
        self.live: set[_Counters] = set()  # sessions waiting for a slot or relaying
        self.last_active = anyio.current_time()
        self.trip: ShieldTrip | None = None
        self.trip_index = -1

    @property
    def blocked(self) -> bool:
        return self.trip is not None or (self.guard is not None and self.guard.device_down)

    def poke(self) -> None:
        self.wake.set()
        self.wake = anyio.Event()


class _Counters:
    """One session's relay state: byte counts, last activity, and what preemption needs (who, since when)."""

    __slots__ = ("client", "down", "eof", "last", "outcome", "relay", "replied", "up", "waiting_since")

    def __init__(self, client: str) -> None:
        self.client = client  # the client's address and login: whose idle session may be preempted
        self.up = 0
        self.down = 0
        self.eof = False
        self.last = anyio.current_time()
        self.outcome = SessionOutcome.RELAYED
        self.waiting_since: float | None = None  # set while waiting for a slot and connecting
        self.relay: anyio.CancelScope | None = None  # set while relaying
        self.replied: Reply | None = None  # the reply the client was sent, once it was sent

    def count(self, way: _Way, n: int) -> None:
        if way.upstream:
            self.up += n
        else:
            self.down += n


@dataclass(frozen=True, slots=True)
class _Way:
    """One direction of a relay: which side's failure is which outcome, and which total it adds to."""

    upstream: bool
    src_reset: SessionOutcome
    dst_reset: SessionOutcome
    total: str


_UP: Final = _Way(True, SessionOutcome.CLIENT_RESET, SessionOutcome.DEVICE_RESET, "bytes_up")
_DOWN: Final = _Way(False, SessionOutcome.DEVICE_RESET, SessionOutcome.CLIENT_RESET, "bytes_down")
# Linux's splice(2) moves bytes socket -> pipe -> socket inside the kernel: the relay never copies a byte
# through Python (the bulk transfer cost of a user-space relay is two copies and two allocations per chunk).
_SPLICE: Final = hasattr(os, "splice") and sys.platform == "linux"
_SPLICE_FLAGS: Final = getattr(os, "SPLICE_F_MOVE", 0) | getattr(os, "SPLICE_F_NONBLOCK", 0)


class _Splice:
    """One direction's bytes in flight, in a kernel pipe (created at the first byte: a scanner's session
    that carries none costs no pipe). ``fill`` and ``flush`` raise ``BlockingIOError`` when the socket is
    not ready and ``OSError`` when it broke; ``fill`` returns 0 at the peer's FIN."""

    __slots__ = ("pending", "r", "w")

    def __init__(self) -> None:
        self.pending = 0
        self.r = self.w = -1

    def fill(self, src: socket.socket) -> int:
        if self.w < 0:
            if not src.recv(1, socket.MSG_PEEK):  # BlockingIOError when nothing is there yet
                return 0
            self.r, self.w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        n = os.splice(src.fileno(), self.w, RELAY_CHUNK_BYTES, flags=_SPLICE_FLAGS)
        self.pending += n
        return n

    def flush(self, dst: socket.socket) -> int:
        n = os.splice(self.r, dst.fileno(), self.pending, flags=_SPLICE_FLAGS)
        self.pending -= n
        return n

    def close(self) -> None:
        for fd in (self.r, self.w):
            if fd >= 0:
                os.close(fd)
        self.r = self.w = -1


class _Copy:
    """The same through one user-space buffer, allocated at the first byte (where splice(2) is missing)."""

    __slots__ = ("buf", "pending", "start")

    def __init__(self) -> None:
        self.buf: bytearray | None = None
        self.pending = self.start = 0

    def fill(self, src: socket.socket) -> int:
        if self.buf is None:
            self.buf = bytearray(RELAY_CHUNK_BYTES)
        n = src.recv_into(self.buf)
        self.start, self.pending = 0, n
        return n

    def flush(self, dst: socket.socket) -> int:
        assert self.buf is not None
        n = dst.send(memoryview(self.buf)[self.start : self.start + self.pending])
        self.start += n
        self.pending -= n
        return n

    def close(self) -> None:
        self.buf = None


class Shield:
    """A SOCKS5 server enforcing per-device ceilings and a watchdog (see the module docstring).

    Args:
        scope: the authorized destinations.
        listen_host: address to listen on (an IP literal; loopback by default).
        listen_port: port to listen on (0: any free port; see :attr:`address`).
        store: the profile store: ceilings of known models, the inventory (model keys, groups, web ports),
            and where sessions and trips are recorded.
        default_ceiling: ceiling of hosts the inventory knows nothing fragile about.
        medical_ceiling: ceiling of "Medical Device?" hosts whose model has no stored ceiling.
        ceilings: per-host ceiling overrides (address -> ceiling; 0 refuses the host).
        heartbeats: per-host heartbeats (address -> Heartbeat), before the inventory's web port.
        default_heartbeat: heartbeat for hosts with neither (None: such hosts run without a watchdog).
        heartbeat_interval_s: seconds between beats.
        failures_to_down: failed beats in a row that trip a device.
        release: "auto" (blocked until ``release_beats`` healthy beats) or "operator" (:meth:`release`).
        release_beats: healthy beats in a row that end a trip with ``release="auto"``.
        slot_wait_s: how long a CONNECT over the ceiling waits for a slot before it is refused.
        preempt_idle_s: a CONNECT that has waited this long for a slot of a full host ends the same
            client's session to that host that has been idle as long (outcome ``preempted_idle``), so a
            tool frozen in ``connect()`` (anything behind proxychains) does not deadlock on the sockets it
            is done with; None: never (the wait then runs out and the CONNECT is refused).
        connect_timeout_s: bound on the upstream connect.
        idle_timeout_s: a relayed session silent this long in both directions is closed.
        total_timeout_s: bound on one relayed session.
        allow_printer_ports: relay to ports 9100-9107 too.
        users: RFC 1929 credentials (username -> password); required on a non-loopback listen address.
        allow_clients: client addresses/networks allowed to connect (default: loopback only); required on
            a non-loopback listen address.
        max_sessions: client connections served at once (more are closed unread).
        alert_file: JSON-lines file every trip is appended to.
        webhook_url: URL every trip is POSTed to.

    Raises:
        ConfigError: an invalid argument (named), or a non-loopback listen address without ``users`` and
            ``allow_clients``.
    """

    def __init__(
        self,
        *,
        scope: Scope,
        listen_host: str = "127.0.0.1",
        listen_port: int = DEFAULT_LISTEN_PORT,
        store: ProfileStore | None = None,
        default_ceiling: int = DEFAULT_CEILING,
        medical_ceiling: int = MEDICAL_CEILING,
        ceilings: Mapping[str, int] | None = None,
        heartbeats: Mapping[str, Heartbeat] | None = None,
        default_heartbeat: Heartbeat | None = None,
        heartbeat_interval_s: float = 1.0,
        failures_to_down: int = 1,
        release: Literal["auto", "operator"] = "auto",
        release_beats: int = DEFAULT_RELEASE_BEATS,
        slot_wait_s: float = DEFAULT_SLOT_WAIT_S,
        preempt_idle_s: float | None = DEFAULT_PREEMPT_IDLE_S,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S,
        total_timeout_s: float = DEFAULT_TOTAL_TIMEOUT_S,
        allow_printer_ports: bool = False,
        users: Mapping[str, str] | None = None,
        allow_clients: Iterable[str] | None = None,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        alert_file: str | None = None,
        webhook_url: str | None = None,
    ) -> None:
        if not isinstance(scope, Scope):
            raise _validate.fail("scope", "a Scope", scope)
        self._scope = scope
        try:
            listen = ipaddress.ip_address(listen_host)
        except (ValueError, TypeError):
            raise _validate.fail("listen_host", "an IP address literal", listen_host) from None
        self._listen_host = str(listen)
        self._listen_port = _validate.count("listen_port", listen_port, minimum=0, maximum=65535)
        if not listen.is_loopback and (not users or allow_clients is None):
            # An open SOCKS proxy into a medical network is refused.
            raise _validate.fail(
                "listen_host",
                "a loopback address unless users= (RFC 1929 login) and "
                "allow_clients= (who may connect) are given",
                listen_host,
            )
        self._users = {str(k).encode(): str(v).encode() for k, v in (users or {}).items()}
        try:
            self._clients = Scope(
                list(allow_clients) if allow_clients is not None else _LOOPBACK_CLIENTS, allow_large=True
            )
        except ConfigError as exc:
            raise ConfigError(f"allow_clients: {exc}", field="allow_clients") from exc
        self._store = store
        self._default_ceiling = _validate.count("default_ceiling", default_ceiling, minimum=1)
        self._medical_ceiling = _validate.count("medical_ceiling", medical_ceiling, minimum=1)
        self._ceilings = {
            self._literal("ceilings", h): _validate.count(f"ceilings[{h}]", c, minimum=0)
            for h, c in (ceilings or {}).items()
        }
        self._heartbeats = {self._literal("heartbeats", h): hb for h, hb in (heartbeats or {}).items()}
        for h, hb in [*self._heartbeats.items(), ("default_heartbeat", default_heartbeat)]:
            if hb is not None and not callable(getattr(hb, "beat", None)):
                raise _validate.fail(f"heartbeats[{h}]", "a heartbeat (an object with beat(host))", hb)
        self._default_heartbeat = default_heartbeat
        self._interval_s = _validate.positive("heartbeat_interval_s", heartbeat_interval_s)
        self._failures_to_down = _validate.count("failures_to_down", failures_to_down, minimum=1)
        self._release_mode = _validate.one_of("release", release, ("auto", "operator"))
        self._release_beats = _validate.count("release_beats", release_beats, minimum=1)
        self._slot_wait_s = _validate.positive("slot_wait_s", slot_wait_s)
        self._preempt_idle_s = _validate.optional_positive("preempt_idle_s", preempt_idle_s)
        self._connect_timeout_s = _validate.positive("connect_timeout_s", connect_timeout_s)
        self._idle_timeout_s = _validate.positive("idle_timeout_s", idle_timeout_s)
        self._total_timeout_s = _validate.positive("total_timeout_s", total_timeout_s)
        self._allow_printer_ports = bool(allow_printer_ports)
        self._max_sessions = _validate.count("max_sessions", max_sessions, minimum=1)
        self._jsonl: JsonlAlertSink | None = None
        self._webhook: WebhookAlertSink | None = None
        if alert_file is not None or webhook_url is not None:
            from fragileprobe._groups import JsonlAlertSink, WebhookAlertSink

            self._jsonl = JsonlAlertSink(alert_file) if alert_file is not None else None
            self._webhook = WebhookAlertSink(webhook_url) if webhook_url is not None else None
        self._hosts: dict[str, _Host] = {}
        self._profiles: dict[str, tuple[str, int | None]] = {}
        self._assets: dict[str, Any] = {}
        self._recent: deque[ShieldSession] = deque(maxlen=MAX_RECENT_SESSIONS)
        self._trips: list[ShieldTrip] = []
        self._tg: anyio.abc.TaskGroup | None = None
        self._listener: socket.socket | None = None
        self._address: tuple[str, int] | None = None
        self._audit_send: Any = None
        self._audit_receive: Any = None
        self._closed = anyio.Event()
        self._active = 0
        self._idle = anyio.Event()  # set while no client is connected (a new one each time one connects)
        self._idle.set()
        self._n = {
            "clients_refused": 0,
            "auth_failures": 0,
            "sessions": 0,
            "relayed": 0,
            "refused": 0,
            "bytes_up": 0,
            "bytes_down": 0,
        }

    @staticmethod
    def _literal(name: str, host: str) -> str:
        try:
            return str(ipaddress.ip_address(host))
        except (ValueError, TypeError):
            raise _validate.fail(name, "keyed by IP address literals", host) from None

    def __repr__(self) -> str:
        return (
            f"Shield(listen={self._listen_host}:{self._listen_port}, scope={self._scope}, "
            f"default_ceiling={self._default_ceiling}, auth={'on' if self._users else 'off'}, "
            f"release={self._release_mode!r})"
        )

    # --- lifecycle ----------------------------------------------------------------------------------------

    async def __aenter__(self) -> Shield:
        if self._tg is not None:
            raise RuntimeError("a Shield can be entered once")
        if self._store is not None:
            await self._store.aio.call(self._load_inventory, self._store)
        family = socket.AF_INET6 if ":" in self._listen_host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self._listen_host, self._listen_port))
            listener.listen(LISTEN_BACKLOG)
            listener.setblocking(False)
        except OSError as exc:
            listener.close()
            raise ConfigError(
                f"Shield: cannot listen on {_hostport(self._listen_host, self._listen_port)}: "
                f"{exc.strerror or exc}"
            ) from exc
        self._listener = listener
        sockname = listener.getsockname()
        self._address = (str(sockname[0]), int(sockname[1]))
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        send, receive = anyio.create_memory_object_stream[ShieldSession](AUDIT_QUEUE_ROWS)
        self._audit_send = send
        self._audit_receive = receive
        self._tg.start_soon(self._audit_writer, receive)
        self._tg.start_soon(self._accept_loop, listener, self._tg)
        log.info(
            "shield.listening",
            host=self._address[0],
            port=self._address[1],
            scope=str(self._scope),
            auth=bool(self._users),
            clients=str(self._clients),
            release=self._release_mode,
        )
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        tg, self._tg = self._tg, None
        if tg is None:
            return
        tg.cancel_scope.cancel()
        try:
            await tg.__aexit__(None, None, None)
        finally:
            if self._listener is not None:
                self._listener.close()
            self._flush_audit()
            for stream in (self._audit_send, self._audit_receive):
                if stream is not None:
                    stream.close()
            self._closed.set()
            stats = self.stats
            log.info(
                "shield.closed",
                sessions=stats.sessions,
                relayed=stats.relayed,
                refused=stats.refused,
                trips=stats.trips,
                bytes_up=stats.bytes_up,
                bytes_down=stats.bytes_down,
            )

    async def wait_closed(self) -> None:
        """Wait until the shield is closed (run it until cancelled: ``await shield.wait_closed()``)."""
        await self._closed.wait()

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait, at most ``timeout_s``, until no client session is open on the shield's side; True if so.

        Closing the shield ends the sessions still open (audited ``shield_closed``); a caller that knows
        its clients are done (``--exec`` once the tool exited) waits here first, so each session ends as
        the client ended it.
        """
        with anyio.move_on_after(_validate.non_negative("timeout_s", timeout_s)):
            await self._idle.wait()
        return self._idle.is_set()

    def _load_inventory(self, store: ProfileStore) -> None:
        from fragileprobe._fingerprint import model_key_digest

        self._profiles = {model_key_digest(p.model_key): (p.model_key, p.ceiling) for p in store.profiles()}
        self._assets = {a.host: a for a in store.assets()}

    # --- state --------------------------------------------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) the shield listens on (port resolved when ``listen_port=0``)."""
        if self._address is None:
            raise RuntimeError("use the Shield inside 'async with Shield(...) as shield:'")
        return self._address

    @property
    def stats(self) -> ShieldStats:
        return ShieldStats(
            clients_refused=self._n["clients_refused"],
            auth_failures=self._n["auth_failures"],
            sessions=self._n["sessions"],
            relayed=self._n["relayed"],
            refused=self._n["refused"],
            active=self._active,
            hosts=sum(1 for h in self._hosts.values() if h.guard is not None),
            tripped_hosts=sum(1 for h in self._hosts.values() if h.blocked),
            trips=len(self._trips),
            bytes_up=self._n["bytes_up"],
            bytes_down=self._n["bytes_down"],
        )

    @property
    def sessions(self) -> tuple[ShieldSession, ...]:
        """The most recent session records (at most :data:`MAX_RECENT_SESSIONS`), oldest first."""
        return tuple(self._recent)

    @property
    def trips(self) -> tuple[ShieldTrip, ...]:
        """Every trip so far (updated when a trip ends)."""
        return tuple(self._trips)

    def guard_for(self, host: str) -> Guard | None:
        """The open Guard of ``host`` (None when it has none now)."""
        entry = self._hosts.get(host)
        return entry.guard if entry is not None else None

    def blocked(self, host: str) -> bool:
        """True while ``host`` is blocked by a trip."""
        entry = self._hosts.get(host)
        return entry is not None and entry.blocked

    def release(self, host: str) -> bool:
        """Operator release: end ``host``'s trip now (returns False if it is not blocked)."""
        entry = self._hosts.get(host)
        if entry is None or not entry.blocked:
            return False
        log.warning("shield.operator_release", host=host)
        entry.release_event.set()
        entry.poke()
        return True

    def limit_for(self, host: str) -> tuple[int, str]:
        """The ceiling the shield applies to ``host`` and where it comes from (pure lookup)."""
        if host in self._ceilings:
            return self._ceilings[host], "configured for this host"
        asset = self._assets.get(host)
        if asset is not None and asset.model_key:
            from fragileprobe._fingerprint import model_key_digest

            known = self._profiles.get(model_key_digest(asset.model_key))
            if known is not None and known[1] is not None:
                return int(known[1]), f"stored ceiling of model {known[0]}"
            if known is not None:
                return self._medical_ceiling, f"model {known[0]} has a profile but no ceiling yet"
        if asset is not None and MEDICAL_GROUP in asset.groups:
            return self._medical_ceiling, "medical default (Medical Device? of unknown model)"
        return self._default_ceiling, "configured default"

    def heartbeat_for(self, host: str) -> Heartbeat | None:
        """The heartbeat the shield's watchdog uses for ``host`` (None: no watchdog)."""
        if host in self._heartbeats:
            return self._heartbeats[host]
        asset = self._assets.get(host)
        if asset is not None:
            web = sorted(
                {
                    int(s["port"])
                    for s in asset.services
                    if isinstance(s, dict) and s.get("service") in ("http", "https") and s.get("port")
                }
            )
            if web:
                # 8080 first: the management web server of the devices this project exists for (the same
                # rule as the model key's Server: header).
                port = 8080 if 8080 in web else web[0]
                return HttpHeartbeat(port=port, expect_status=None)
        return self._default_heartbeat

    # --- client connections -------------------------------------------------------------------------------

    async def _accept_loop(self, listener: socket.socket, tg: anyio.abc.TaskGroup) -> None:
        """Accept clients on our own non-blocking socket: no asyncio transport per client, so the relay can
        move bytes with plain recv_into/send (a transport buys nothing for a byte pipe and costs a copy)."""
        while True:
            await anyio.wait_readable(listener)
            try:
                conn, remote = listener.accept()
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as exc:  # EMFILE, ENFILE, ENOBUFS: back off instead of spinning
                log.error("shield.accept_failed", error=exc.strerror or str(exc))
                await anyio.sleep(ACCEPT_BACKOFF_S)
                continue
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            tg.start_soon(self._handle, conn, remote)

    async def _handle(self, conn: socket.socket, remote: Any) -> None:
        client = SocketConnection(conn, str(remote[0]), int(remote[1]))
        try:
            peer_host = str(remote[0])
            peer = _hostport(peer_host, int(remote[1]))
            if peer_host not in self._clients:
                self._n["clients_refused"] += 1
                log.warning("shield.client_refused", client=peer, reason="not in the client allow-list")
                return
            if self._active >= self._max_sessions:
                self._n["clients_refused"] += 1
                log.warning(
                    "shield.client_refused",
                    client=peer,
                    reason="max_sessions",
                    max_sessions=self._max_sessions,
                )
                return
            self._active += 1
            if self._idle.is_set():
                self._idle = anyio.Event()
            try:
                await self._serve_client(client, peer)
            finally:
                self._active -= 1
                if self._active == 0:
                    self._idle.set()
        finally:
            conn.close()

    async def _serve_client(self, client: SocketConnection, peer: str) -> None:
        machine = _socks.SocksServer()
        started = time.time()
        user: str | None = None
        try:
            with anyio.fail_after(HANDSHAKE_TIMEOUT_S):
                event, user = await self._handshake(client, machine, peer)
        except TimeoutError:
            log.info("shield.handshake_timeout", client=peer, after_s=HANDSHAKE_TIMEOUT_S)
            return
        except _socks.SocksProtocolError as exc:
            log.info("shield.protocol_error", client=peer, error=str(exc))
            if exc.reply:
                await _send_quietly(client, exc.reply)
            return
        except (anyio.EndOfStream, OSError):
            return
        if event is None:
            return
        if isinstance(event, _socks.RequestRefused):
            outcome = (
                SessionOutcome.REFUSED_NAME
                if event.reason == "domain_name"
                else SessionOutcome.REFUSED_COMMAND
            )
            await _send_quietly(client, machine.reply(event.reply))
            await self._audit(
                ShieldSession(
                    peer,
                    user,
                    event.host,
                    event.port,
                    started,
                    time.time(),
                    0,
                    0,
                    outcome.value,
                    int(event.reply),
                    None,
                    None,
                    0.0,
                ),
                reason=event.reason,
            )
            return
        await self._connect(client, machine, event, peer, user, started)

    async def _handshake(
        self, client: SocketConnection, machine: _socks.SocksServer, peer: str
    ) -> tuple[_socks.ConnectRequest | _socks.RequestRefused | None, str | None]:
        user: str | None = None
        while True:
            event = machine.next_event()
            if isinstance(event, _socks.NeedData):
                machine.receive_data(await client.receive(_socks.MAX_BUFFER_BYTES))
            elif isinstance(event, _socks.Greeting):
                wanted = AuthMethod.USERNAME_PASSWORD if self._users else AuthMethod.NO_AUTH
                chosen = wanted if wanted in event.methods else AuthMethod.NO_ACCEPTABLE
                await client.send(machine.select_method(chosen))
                if chosen is AuthMethod.NO_ACCEPTABLE:
                    self._n["auth_failures"] += 1
                    log.warning(
                        "shield.auth_refused", client=peer, offered=list(event.methods), wanted=int(wanted)
                    )
                    return None, None
            elif isinstance(event, _socks.AuthRequest):
                expected = self._users.get(event.username)
                # compare_digest: the answer's timing says nothing about how much of a password was right.
                ok = expected is not None and hmac.compare_digest(expected, event.password)
                await client.send(machine.auth_result(ok))
                if not ok:
                    self._n["auth_failures"] += 1
                    log.warning(
                        "shield.auth_failed",
                        client=peer,
                        username=event.username.decode("utf-8", "backslashreplace"),
                    )
                    return None, None
                user = event.username.decode("utf-8", "backslashreplace")
            else:
                return event, user

    # --- CONNECT ------------------------------------------------------------------------------------------

    def _refusal(self, host: str, port: int) -> SessionOutcome | None:
        if host not in self._scope:
            return SessionOutcome.REFUSED_SCOPE
        if port in PRINTER_PORTS and not self._allow_printer_ports:
            return SessionOutcome.REFUSED_PRINTER_PORT
        return None

    async def _connect(
        self,
        client: SocketConnection,
        machine: _socks.SocksServer,
        request: _socks.ConnectRequest,
        peer: str,
        user: str | None,
        started: float,
    ) -> None:
        host, port = request.host, request.port
        t0 = anyio.current_time()
        counters = _Counters(f"{peer.rpartition(':')[0]} {user}")
        entry: _Host | None = None

        def record(outcome: SessionOutcome, reply: Reply | None, waited_s: float) -> ShieldSession:
            return ShieldSession(
                peer,
                user,
                host,
                port,
                started,
                time.time(),
                counters.up,
                counters.down,
                outcome.value,
                None if reply is None else int(reply),
                entry.ceiling if entry else None,
                entry.limit_source if entry else None,
                round(waited_s, 6),
            )

        async def finish(outcome: SessionOutcome, reply: Reply | None, waited_s: float = 0.0) -> None:
            if reply is not None and reply is not Reply.SUCCEEDED:
                await _send_quietly(client, machine.reply(reply))
            await self._audit(record(outcome, reply, waited_s))

        refusal = self._refusal(host, port)
        if refusal is not None or port == 0:
            await finish(
                refusal or SessionOutcome.CONNECT_FAILED,
                Reply.NOT_ALLOWED if refusal else Reply.GENERAL_FAILURE,
            )
            return
        entry = self._host(host)
        if entry.ceiling == 0:
            await finish(SessionOutcome.REFUSED_DO_NOT_SCAN, Reply.NOT_ALLOWED)
            return
        entry.sessions += 1
        entry.live.add(counters)
        try:
            outcome, reply, waited_s = await self._open_and_relay(client, machine, entry, port, t0, counters)
        except anyio.get_cancelled_exc_class():
            # The shield is closing: the session still gets its record (synchronously: nothing may await).
            # Its reply is the one the client saw: a session relayed until the close was a relayed session
            # (nmap counted its port open), so the audit says 0 (succeeded), not "no reply".
            waited = anyio.current_time() - t0
            self._record_now(record(SessionOutcome.SHIELD_CLOSED, counters.replied, waited))
            raise
        finally:
            entry.sessions -= 1
            entry.live.discard(counters)
            entry.last_active = anyio.current_time()
            entry.poke()
        await finish(outcome, reply, waited_s)

    async def _open_and_relay(
        self,
        client: SocketConnection,
        machine: _socks.SocksServer,
        entry: _Host,
        port: int,
        t0: float,
        counters: _Counters,
    ) -> tuple[SessionOutcome, Reply | None, float]:
        """Take a slot and connect through the host's Guard, then relay; (outcome, reply, waited_s)."""
        await entry.ready.wait()
        guard = entry.guard
        if guard is None or entry.blocked:
            return SessionOutcome.REFUSED_TRIPPED, Reply.NOT_ALLOWED, anyio.current_time() - t0
        connected = False
        waited_s = 0.0
        outcome = SessionOutcome.RELAYED
        reply: Reply = Reply.SUCCEEDED
        # One deadline for the slot wait and the connect; lifted the moment the connect succeeded, so it
        # never bounds the relay (the relay has its own idle and total timeouts).
        with anyio.CancelScope(deadline=t0 + self._slot_wait_s + self._connect_timeout_s) as waiting:
            try:
                counters.waiting_since = t0
                if self._preempt_idle_s is not None:
                    # wake the host's task, which checks waiting CONNECTs every PREEMPT_CHECK_S from now
                    # on, instead of at its next heartbeat-interval wake-up
                    entry.poke()
                async with guard.connect(port, timeout_s=self._connect_timeout_s) as stream:
                    connected = True
                    counters.waiting_since = None
                    waiting.deadline = math.inf
                    waited_s = anyio.current_time() - t0
                    outcome = await self._relay(client, machine, stream, counters)
            except DeviceDownError as exc:
                if connected:
                    outcome = SessionOutcome.CANCELLED_BY_WATCHDOG
                else:
                    reply, outcome = reply_for(exc)
                entry.poke()
            except ProbeError as exc:
                if connected:  # only the close can raise here; the relay handles its own errors
                    outcome = SessionOutcome.DEVICE_RESET
                else:
                    reply, outcome = reply_for(exc)
        if waiting.cancelled_caught and not connected:
            reply, outcome = Reply.NOT_ALLOWED, SessionOutcome.CEILING_WAIT_TIMEOUT
        if not connected:
            waited_s = anyio.current_time() - t0
        return outcome, reply, waited_s

    async def _relay(
        self,
        client: SocketConnection,
        machine: _socks.SocksServer,
        device: ProbeStream,
        counters: _Counters,
    ) -> SessionOutcome:
        local = device.extra(SocketAttribute.local_address)
        try:
            await client.send(machine.reply(Reply.SUCCEEDED, str(local[0]), int(local[1])))
            counters.replied = Reply.SUCCEEDED
        except OSError:
            return SessionOutcome.CLIENT_RESET
        device.send_timeout_s = self._idle_timeout_s
        first = machine.trailing_data()
        if first:
            try:
                await device.send(first)
            except ProbeError:
                return SessionOutcome.DEVICE_RESET
            counters.count(_UP, len(first))
            self._n["bytes_up"] += len(first)
        # The bytes move on the socket of the Guard's own connection (the stream's typed attribute): the
        # Guard keeps the session in its device-side ledger and ends it as usual when this block is left;
        # only the byte copying skips the stream's per-call layers.
        sock: socket.socket | None = device.extra(SocketAttribute.raw_socket, None)
        if sock is None:
            return SessionOutcome.CONNECT_FAILED  # the shield's Guards always run on real sockets
        with anyio.CancelScope(deadline=anyio.current_time() + self._total_timeout_s) as total:
            async with anyio.create_task_group() as tg:
                counters.relay = tg.cancel_scope  # what a preemption cancels
                tg.start_soon(self._pump, client.sock, sock, _UP, counters, tg.cancel_scope)
                await self._pump(sock, client.sock, _DOWN, counters, tg.cancel_scope)
        if total.cancelled_caught:
            return SessionOutcome.TOTAL_TIMEOUT
        return counters.outcome

    async def _pump(
        self, src: socket.socket, dst: socket.socket, way: _Way, counters: _Counters, relay: anyio.CancelScope
    ) -> None:
        """One direction: ``src`` -> kernel pipe -> ``dst`` (or a small buffer where splice is missing).

        Backpressure: nothing more is read from ``src`` until ``dst`` took everything read so far, so at most
        :data:`RELAY_CHUNK_BYTES` per direction are in flight, in the kernel, whatever the session relays.
        """
        mover = _Splice() if _SPLICE else _Copy()
        try:
            moved = 0
            while True:
                try:
                    n = mover.fill(src)
                except BlockingIOError:
                    if not await self._wait(src, counters, relay):
                        return
                    continue
                except OSError:
                    return self._broken(counters, way.src_reset, relay)
                if n == 0:
                    return self._forward_eof(dst, counters, relay)
                counters.last = anyio.current_time()
                if not await self._drain(mover, dst, way, counters, relay):
                    return
                moved += 1
                if moved % CHUNKS_PER_CHECKPOINT == 0:
                    # When every read and write completes at once nothing awaits: let others run.
                    await anyio.lowlevel.checkpoint()
        finally:
            mover.close()

    async def _drain(
        self,
        mover: _Splice | _Copy,
        dst: socket.socket,
        way: _Way,
        counters: _Counters,
        relay: anyio.CancelScope,
    ) -> bool:
        """Write what ``mover`` holds to ``dst``; False when the relay is over (reset, or idle)."""
        while mover.pending:
            try:
                n = mover.flush(dst)
            except BlockingIOError:
                if not await self._wait(dst, counters, relay, readable=False):
                    return False
                continue
            except OSError:
                self._broken(counters, way.dst_reset, relay)
                return False
            counters.count(way, n)
            self._n[way.total] += n
        return True

    def _forward_eof(self, dst: socket.socket, counters: _Counters, relay: anyio.CancelScope) -> None:
        """``src`` sent FIN: pass it on (the first one), or end the relay (both sides are done)."""
        first = not counters.eof
        counters.eof = True
        counters.last = anyio.current_time()
        if not first:
            relay.cancel()
            return
        with contextlib.suppress(OSError):  # the other side is gone too: its pump sees it
            dst.shutdown(socket.SHUT_WR)

    def _broken(self, counters: _Counters, outcome: SessionOutcome, relay: anyio.CancelScope) -> None:
        counters.outcome = outcome
        relay.cancel()

    async def _wait(
        self, sock: socket.socket, counters: _Counters, relay: anyio.CancelScope, *, readable: bool = True
    ) -> bool:
        """Wait until ``sock`` is ready, bounded by the idle rule; False (and the relay cancelled) if idle."""
        idle = HALF_CLOSE_IDLE_S if counters.eof else self._idle_timeout_s
        remaining = counters.last + idle - anyio.current_time()
        if remaining > 0:
            with anyio.move_on_after(remaining):
                await (anyio.wait_readable(sock) if readable else anyio.wait_writable(sock))
                return True
        if not counters.eof:
            counters.outcome = SessionOutcome.IDLE_TIMEOUT
        relay.cancel()
        return False

    # --- hosts: one Guard each ----------------------------------------------------------------------------

    def _host(self, host: str) -> _Host:
        entry = self._hosts.get(host)
        if entry is None:
            ceiling, source = self.limit_for(host)
            entry = _Host(host, ceiling, source, self.heartbeat_for(host))
            self._hosts[host] = entry
            if ceiling > 0:
                assert self._tg is not None  # sessions only run inside the shield's task group
                self._tg.start_soon(self._host_task, entry)
        return entry

    async def _host_task(self, entry: _Host) -> None:
        heartbeat = entry.heartbeat
        if heartbeat is not None and entry.ceiling < 2 and opens_session(heartbeat):
            # N counts the heartbeat's session: at N = 1 there is room for the relayed session or for the
            # heartbeat, not both. Never more than N on the device comes first: relay without liveness.
            log.warning("shield.no_room_for_heartbeat", host=entry.address, ceiling=entry.ceiling)
            heartbeat = None
        guard = Guard(
            Target(entry.address) if heartbeat is None else Target(entry.address, heartbeat=heartbeat),
            ceiling=entry.ceiling,
            scope=self._scope,
            watchdog=heartbeat is not None,
            interval_s=self._interval_s,
            failures_to_down=self._failures_to_down,
            connect_timeout_s=self._connect_timeout_s,
        )
        try:
            try:
                async with guard:
                    entry.guard = guard
                    entry.ready.set()
                    log.info(
                        "shield.host_open",
                        host=entry.address,
                        ceiling=entry.ceiling,
                        limit_source=entry.limit_source,
                        heartbeat=repr(heartbeat),
                    )
                    await self._hold(entry, guard)
            except DeviceDownError as exc:  # dead at the first beat: no session was started
                entry.guard = None
                await self._tripped(entry, str(exc), 0)
                entry.ready.set()
                await self._recover_unguarded(entry)
        finally:
            entry.ready.set()
            if self._hosts.get(entry.address) is entry:
                del self._hosts[entry.address]
            log.info("shield.host_closed", host=entry.address)

    async def _hold(self, entry: _Host, guard: Guard) -> None:
        """Keep the Guard open while the host has sessions or is tripped; close it after the linger."""
        while True:
            if guard.device_down:
                down = guard.timeline.downs[-1] if guard.timeline.downs else None
                await self._tripped(entry, down.reason if down else None, down.in_flight if down else 0)
                await self._await_release(entry, guard)
                continue
            now = anyio.current_time()
            idle_for = now - entry.last_active
            if entry.sessions == 0 and idle_for >= GUARD_LINGER_S:
                del self._hosts[entry.address]  # new CONNECTs from now on get a fresh entry
                return
            wake = entry.wake
            # Sessions end with a poke; the timeout only bounds how late a trip without sessions is seen.
            wait = self._interval_s if entry.sessions else min(self._interval_s, GUARD_LINGER_S - idle_for)
            if self._preempt_idle_s is not None and self._preempt(entry, guard, now):
                wait = min(wait, PREEMPT_CHECK_S)
            with anyio.move_on_after(max(wait, 0.01)):
                await wake.wait()

    def _preempt(self, entry: _Host, guard: Guard, now: float) -> bool:
        """End idle sessions of clients that wait for a slot of this full host (see :func:`preemptions`);
        True while any CONNECT waits (the host's task then looks again soon)."""
        assert self._preempt_idle_s is not None
        waiting = [c for c in entry.live if c.waiting_since is not None]
        # Full when the work's places are taken, counted as the Guard counts them (until the device let go):
        # the heartbeat keeps its place whether or not a beat is in flight, so the device's momentary count
        # (a beat out or not) does not tell whether a CONNECT can get a slot.
        stats = guard.stats
        if not waiting or stats.in_flight < stats.ceiling - stats.heartbeat_reserved:
            return bool(waiting)
        relaying = [c for c in entry.live if c.relay is not None]
        chosen = preemptions(
            [(c.client, c.waiting_since) for c in waiting if c.waiting_since is not None],
            [(c.client, c.last) for c in relaying],
            now,
            self._preempt_idle_s,
        )
        for i in chosen:
            victim = relaying[i]
            log.info(
                "shield.preempted",
                host=entry.address,
                client=victim.client,
                idle_s=round(now - victim.last, 3),
            )
            victim.outcome = SessionOutcome.PREEMPTED_IDLE
            assert victim.relay is not None
            victim.relay.cancel()
            victim.relay = None
        return True

    async def _tripped(self, entry: _Host, reason: str | None, in_flight: int) -> None:
        trip = ShieldTrip(entry.address, time.time(), reason, in_flight, entry.ceiling, entry.limit_source)
        entry.trip = trip
        entry.trip_index = len(self._trips)
        self._trips.append(trip)
        log.warning(
            "shield.trip",
            host=entry.address,
            reason=reason,
            sessions_closed=in_flight,
            ceiling=entry.ceiling,
            release=self._release_mode,
        )
        assert self._tg is not None
        self._tg.start_soon(self._deliver_alert, trip)

    async def _released(self, entry: _Host, by: str) -> None:
        trip = entry.trip
        entry.trip = None
        entry.release_event = anyio.Event()
        if trip is None:
            return
        from dataclasses import replace

        released_at_s = time.time()
        done = replace(trip, released_at_s=released_at_s, released_by=by)
        self._trips[entry.trip_index] = done
        log.warning(
            "shield.released",
            host=entry.address,
            released_by=by,
            blocked_s=round(released_at_s - trip.tripped_at_s, 3),
        )
        if self._store is not None:
            await self._store.aio.finish_shield_trip(trip.host, trip.tripped_at_s, released_at_s, by)

    async def _await_release(self, entry: _Host, guard: Guard) -> None:
        if self._release_mode == "operator":
            await entry.release_event.wait()
            guard.rearm()
            await self._released(entry, "operator")
            return
        # The Guard's watchdog beats again while someone waits for beats; nothing else is sent meanwhile.
        await guard.wait_healthy(self._release_beats)
        guard.rearm()
        await self._released(entry, "healthy_beats")

    async def _recover_unguarded(self, entry: _Host) -> None:
        """A host that failed its very first beat: beat it (spaced) until healthy, or wait for release."""
        heartbeat = entry.heartbeat
        assert heartbeat is not None  # without a heartbeat there is no watchdog and no DeviceDownError
        if self._release_mode == "operator":
            await entry.release_event.wait()
            await self._released(entry, "operator")
            return
        run = 0
        while run < self._release_beats:
            started = anyio.current_time()
            beat = await heartbeat.beat(entry.address)
            run = run + 1 if beat.ok else 0
            await anyio.sleep(max(self._interval_s - (anyio.current_time() - started), 0.0))
        await self._released(entry, "healthy_beats")

    # --- audit and alerts ---------------------------------------------------------------------------------

    def _record_now(self, record: ShieldSession, **extra: Any) -> bool:
        """Count, keep and log one record; queue it for the store if there is room (no await)."""
        self._n["sessions"] += 1
        relayed = record.reply == Reply.SUCCEEDED
        self._n["relayed" if relayed else "refused"] += 1
        self._recent.append(record)
        # A policy refusal is worth a warning; a closed port answering a scanner is the scan's normal result.
        policy = record.outcome.startswith("refused_") or record.outcome == "ceiling_wait_timeout"
        event = "shield.session" if relayed else "shield.refused"
        (log.warning if policy else log.info)(event, **record.to_dict(), **extra)
        if self._store is None or self._audit_send is None:
            return True
        try:
            self._audit_send.send_nowait(record)
        except anyio.WouldBlock:
            return False
        return True

    async def _audit(self, record: ShieldSession, **extra: Any) -> None:
        if not self._record_now(record, **extra):
            await self._audit_send.send(record)  # the queue is full: the session waits for the writer

    async def _audit_writer(self, receive: Any) -> None:
        store = self._store
        async for first in receive:
            batch = [first]
            while len(batch) < AUDIT_BATCH_ROWS:
                try:
                    batch.append(receive.receive_nowait())
                except anyio.WouldBlock:
                    break
            if store is not None:
                rows = [r.to_dict() for r in batch]
                # Shielded: a batch already taken from the queue is written even while closing.
                with anyio.CancelScope(shield=True):
                    await store.aio.record_shield_sessions(rows)

    def _flush_audit(self) -> None:
        """Write what the writer did not get to before the shield closed (records of the last sessions)."""
        rows = []
        while self._audit_receive is not None:
            try:
                rows.append(self._audit_receive.receive_nowait().to_dict())
            except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                break
        if rows and self._store is not None:
            self._store.record_shield_sessions(rows)

    async def _deliver_alert(self, trip: ShieldTrip) -> None:
        with anyio.CancelScope(shield=True):  # an alert raised is delivered, even while closing
            if self._store is not None:
                await self._store.aio.record_shield_trip(trip.to_dict())
                await self._store.aio.record_alert(trip.to_dict())
            if self._jsonl is not None:
                await anyio.to_thread.run_sync(self._jsonl.write, trip)
            if self._webhook is not None:
                await self._webhook.send(trip)


async def _send_quietly(stream: SocketConnection, data: bytes) -> None:
    """Send a last answer to a client we are about to close; a client already gone changes nothing."""
    with contextlib.suppress(OSError), anyio.move_on_after(HANDSHAKE_TIMEOUT_S):
        await stream.send(data)


def recent_by_host(sessions: Sequence[ShieldSession]) -> dict[str, list[ShieldSession]]:
    """Group session records by destination host (for reports and tests)."""
    out: dict[str, list[ShieldSession]] = {}
    for s in sessions:
        out.setdefault(s.host, []).append(s)
    return out


# --- running a tool behind the shield (proxychains-ng) ------------------------------------------------------

PROXYCHAINS: Final = "proxychains4"
# proxychains-ng waits this much longer than the shield's own bound (slot wait + connect) for our reply, so
# the tool always hears the shield's answer instead of proxychains giving up first.
PROXYCHAINS_READ_MARGIN_S: Final = 2.0
# After the tool run by --exec exits: how long the shield waits for the sessions it still holds to see their
# client's close (milliseconds on loopback; a session the device is slow to let go of is not waited for,
# the Guard's ledger lingers it in the background either way).
EXEC_DRAIN_S: Final = 2.0
# nmap scan types and options that send raw packets: proxychains hooks only connect(), so these would go
# straight to the device, past the ceiling and the watchdog.
_NMAP_RAW_SCANS: Final = frozenset("SUAWMNFXYZOI")
_NMAP_RAW_OPTIONS: Final = frozenset(
    {
        "-O",
        "--osscan-guess",
        "--traceroute",
        "-sn",
        "-PE",
        "-PP",
        "-PM",
        "-PO",
        "-PR",
        "--send-eth",
        "--send-ip",
    }
)
_NMAP_RAW_PREFIXES: Final = ("-PS", "-PA", "-PU", "-PY", "-PO", "-b")


def proxychains_config(
    host: str,
    port: int,
    *,
    read_timeout_s: float,
    connect_timeout_s: float,
    username: str | None = None,
    password: str | None = None,
) -> str:
    """The proxychains-ng configuration that sends every TCP connect through the shield (pure).

    ``strict_chain`` (one proxy, no fallback to a direct connection), no ``proxy_dns`` (names are never
    sent to the shield, which refuses them anyway; give the tool IP literals).
    """
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(f"proxychains: the shield address must be an IP literal, got {host!r}") from None
    auth = ""
    if username is not None:
        if password is None or any(c.isspace() for c in username + password):
            raise ConfigError("proxychains: username and password must be given together, without spaces")
        auth = f" {username} {password}"
    return (
        "# written by fragileprobe shield --exec\n"
        "strict_chain\n"
        "quiet_mode\n"
        f"tcp_read_time_out {int(read_timeout_s * 1000)}\n"
        f"tcp_connect_time_out {int(connect_timeout_s * 1000)}\n"
        "[ProxyList]\n"
        f"socks5 {host} {port}{auth}\n"
    )


def check_exec_command(argv: Sequence[str], *, root: bool) -> list[str]:
    """Refuse a command whose traffic would bypass proxychains; return warnings for the rest (pure).

    For nmap: raw scan types (-sS, -sU, ...; -sS is nmap's default as root), -O, raw host discovery
    (-PE, -PS, ...; nmap's default ping as root) and --traceroute are refused: proxychains hooks connect()
    only, so a SYN scan never goes through the shield and would reach the device unguarded.

    Raises:
        ConfigError: an empty command, or an nmap run that would send raw packets.
    """
    if not argv:
        raise ConfigError("--exec: give the command after '--', e.g. -- nmap -sT -Pn -n 10.0.0.5")
    import os

    warnings: list[str] = []
    tool = os.path.basename(argv[0])
    if tool != "nmap":
        warnings.append(
            f"{tool}: only its TCP connect() calls go through the shield; UDP, ICMP and raw packets do not"
        )
        return warnings
    args = list(argv[1:])
    scan_types: set[str] = set()
    for arg in args:
        if arg.startswith("-s") and not arg.startswith("--") and len(arg) > 2 and arg[2:].isalpha():
            scan_types.update(arg[2:])
        if arg in _NMAP_RAW_OPTIONS or arg.startswith(_NMAP_RAW_PREFIXES):
            raise ConfigError(f"--exec nmap {arg}: sends raw packets, which never pass through the shield")
    raw = sorted(scan_types & _NMAP_RAW_SCANS)
    if raw:
        raise ConfigError(
            f"--exec nmap -s{''.join(raw)}: half-open/raw scans never pass through the shield (proxychains "
            "hooks connect() only); use -sT"
        )
    if root and "T" not in scan_types and "L" not in scan_types:
        raise ConfigError(
            "--exec nmap as root defaults to a SYN scan (-sS), which bypasses the shield: add -sT"
        )
    if root and "-Pn" not in args:
        raise ConfigError("--exec nmap as root pings hosts with raw packets first: add -Pn")
    if "-n" not in args:
        warnings.append("nmap without -n resolves addresses itself (DNS does not go through the shield)")
    if "--max-parallelism" not in args:
        warnings.append(
            "nmap through proxychains stops inside every connect() until the shield answers, so at a "
            "device's ceiling its parallel probes starve each other (-sV finds nothing at ceiling 1); add "
            "--max-parallelism 1 (docs/shield.md: the recommended command line)"
        )
    return warnings


async def run_behind(
    shield: Shield, argv: Sequence[str], *, username: str | None = None, password: str | None = None
) -> int:
    """Run ``argv`` under proxychains-ng with every TCP connect sent through ``shield``; its exit code.

    Raises:
        ConfigError: proxychains4 is not installed, or the command would bypass the shield.
    """
    import os
    import shutil
    import tempfile

    binary = shutil.which(PROXYCHAINS)
    if binary is None:
        raise ConfigError("--exec needs proxychains-ng (Debian/Ubuntu: apt-get install proxychains4)")
    for warning in check_exec_command(argv, root=os.geteuid() == 0):
        log.warning("shield.exec_warning", warning=warning)
    host, port = shield.address
    if ipaddress.ip_address(host).is_unspecified:
        host = "127.0.0.1" if ipaddress.ip_address(host).version == 4 else "::1"
    text = proxychains_config(
        host,
        port,
        read_timeout_s=shield._slot_wait_s + shield._connect_timeout_s + PROXYCHAINS_READ_MARGIN_S,
        connect_timeout_s=shield._connect_timeout_s,
        username=username,
        password=password,
    )
    with tempfile.TemporaryDirectory(prefix="fragileprobe-shield-") as tmp:
        conf = os.path.join(tmp, "proxychains.conf")
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # it may hold the password
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        cmd = [binary, "-q", "-f", conf, *argv]
        log.info("shield.exec", command=list(argv), proxy=_hostport(host, port))
        proc = await anyio.run_process(cmd, check=False, stdin=None, stdout=None, stderr=None)
    # The tool has exited, so the kernel has closed every socket it had; let the shield see those closes
    # before it is closed, so the tool's last sessions end as the tool ended them, not cut by the shield.
    await shield.wait_idle(EXEC_DRAIN_S)
    return proc.returncode
