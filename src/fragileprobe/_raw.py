"""Raw-packet features behind one narrow, lazily imported scapy seam (the ``fragileprobe[raw]`` extra).

scapy is GPL-2.0-only and needs raw sockets (root or ``CAP_NET_RAW``), so the core never imports it:
this module imports it only inside functions, layer by layer (never ``scapy.all``), keeps scapy's
import-time log lines quiet without touching the logging configuration of the application, and turns every
packet into one of fragileprobe's own frozen records right here, so nothing above this module sees a scapy
object. scapy provides the packet sockets (with their kernel BPF filters compiled by libpcap), the ICMP
layers and the pcap writer; sniffed TCP headers are parsed by :func:`tcp_segment_from_frame`, a small pure
parser, because scapy's dissector costs ~100 µs a packet and the emulator's SYN watcher reads every segment
of every watched device.

What each feature puts on the wire:

* :func:`icmp_reachable` and :class:`IcmpHeartbeat` send ICMP echo requests (``count`` of them, one at a
  time) and nothing else.
* :func:`syn_ack_observer` sends nothing: it reads the SYN-ACKs that fragileprobe's own full connects
  already receive and reports their TTL and window (a passive OS hint).
* :func:`capture` sends nothing: it writes a bounded pcap of everything exchanged with one target.

Without scapy or without the privilege, each feature raises :class:`~fragileprobe.RawUnavailableError`
saying exactly what is missing; :func:`raw_available` answers the same question without raising.
"""

from __future__ import annotations

import contextlib
import ctypes.util
import functools
import importlib
import importlib.util
import ipaddress
import logging
import os
import random
import select
import socket
import struct
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import anyio
import anyio.to_thread
import structlog

from fragileprobe import _validate
from fragileprobe._errors import ConfigError, RawUnavailableError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from types import TracebackType

    from fragileprobe._heartbeat import Beat
    from fragileprobe._scope import Scope

__all__ = [
    "CAPTURE_MAX_BYTES",
    "CAPTURE_MAX_PACKETS",
    "CaptureSummary",
    "IcmpHeartbeat",
    "IcmpResult",
    "PacketCapture",
    "PassiveOsHint",
    "SynAckObservation",
    "SynAckObserver",
    "TcpSegment",
    "tcp_segment_from_frame",
    "capture",
    "icmp_reachable",
    "os_hint_from_ttl",
    "raw_available",
    "require_raw",
    "syn_ack_observer",
]

log = structlog.get_logger(__name__)

RAW_EXTRA_HINT: Final = "pip install 'fragileprobe[raw]'"

# Linux capability number of CAP_NET_RAW (include/uapi/linux/capability.h): what AF_PACKET and SOCK_RAW
# sockets need. Root in a container can lack it, so the capability, not the uid, is the truth.
_CAP_NET_RAW: Final = 13

# ICMP bounds. One echo waits at most ICMP_MAX_TIMEOUT_S (a device that needs longer is not "reachable" in
# any useful sense for a watchdog), and one check sends at most ICMP_MAX_COUNT echoes, so a mistyped count
# can never turn a reachability check into a flood.
ICMP_MAX_TIMEOUT_S: Final = 30.0
ICMP_MAX_COUNT: Final = 100
ICMP_MAX_INTERVAL_S: Final = 10.0

# How often a worker thread waiting on a raw socket wakes up to see whether it was cancelled: the upper
# bound on how long an abandoned thread outlives the task that started it.
_POLL_S: Final = 0.05

# How long starting and stopping a sniffer thread may take. Opening an AF_PACKET socket and attaching a
# BPF program takes milliseconds; a sniffer that does not start or stop in this time is reported, not
# waited for forever.
SNIFFER_START_TIMEOUT_S: Final = 5.0
SNIFFER_STOP_TIMEOUT_S: Final = 5.0

# Receive buffer of a sniffer socket: 8 MiB holds several thousand loopback packets (each costs ~1 KiB of
# kernel memory), seconds of a fast scan, while the reader thread waits for the GIL.
SNIFFER_RCVBUF_BYTES: Final = 8 * 1024 * 1024
# Packets still queued when a sniffer stops are read at most up to this many (traffic may not have stopped).
SNIFFER_DRAIN_MAX_PACKETS: Final = 100_000
# Linux socket options (not all in the socket module): SO_RCVBUFFORCE from asm-generic/socket.h,
# SOL_PACKET / PACKET_STATISTICS from linux/if_packet.h.
_SO_RCVBUFFORCE: Final = getattr(socket, "SO_RCVBUFFORCE", 33)
_SOL_PACKET: Final = 263
_PACKET_STATISTICS: Final = 6

# Capture bounds: a characterization of one device at a few dozen sessions produces a few thousand packets
# a minute, so 100,000 packets / 64 MiB is hours of evidence and still opens in Wireshark on a laptop.
# Packets beyond either bound are counted (CaptureSummary.packets_dropped), not written.
CAPTURE_MAX_PACKETS: Final = 100_000
CAPTURE_MAX_BYTES: Final = 64 * 1024 * 1024

# pcap file header (24 bytes) and per-record header (16 bytes), counted against max_bytes so the bound is
# the file's real size.
_PCAP_FILE_HEADER_BYTES: Final = 24
_PCAP_RECORD_HEADER_BYTES: Final = 16

# The passive OS hint keeps at most this many SYN-ACK observations: one per port is what the hint needs,
# retransmissions and repeated connects add nothing but memory.
OBSERVER_MAX_OBSERVATIONS: Final = 4096

# libpcap's DLT_EN10MB: what Linux reports for Ethernet and for the loopback device.
_DLT_EN10MB: Final = 1

# TCP flag bits (RFC 9293, section 3.1).
FIN: Final = 0x01
SYN: Final = 0x02
RST: Final = 0x04
PSH: Final = 0x08
ACK: Final = 0x10


# --------------------------------------------------------------------------------------------- availability


def _has_net_raw() -> bool:
    """Whether this process may open raw and packet sockets (CAP_NET_RAW in its effective set)."""
    try:
        status = Path("/proc/self/status").read_text(encoding="ascii", errors="replace")
    except OSError:
        # Not Linux: raw sockets need root there.
        geteuid = getattr(os, "geteuid", None)
        return geteuid is not None and geteuid() == 0
    for line in status.splitlines():
        if line.startswith("CapEff:"):
            return bool((int(line.split()[1], 16) >> _CAP_NET_RAW) & 1)
    geteuid = getattr(os, "geteuid", None)
    return geteuid is not None and geteuid() == 0


def _scapy_installed() -> bool:
    """Whether scapy can be found, without importing it (importing it costs ~0.4 s)."""
    try:
        return importlib.util.find_spec("scapy") is not None
    except (ImportError, ValueError):
        # ValueError: sys.modules["scapy"] is None (import deliberately blocked).
        return False


@functools.cache
def _libpcap_installed() -> bool:
    """Whether libpcap can be found (scapy compiles kernel packet filters with it). Cached: a lookup may
    run ``ldconfig -p``."""
    return ctypes.util.find_library("pcap") is not None


def _missing() -> list[str]:
    missing = []
    if not _scapy_installed():
        missing.append(f"scapy is not installed ({RAW_EXTRA_HINT})")
    if not _libpcap_installed():
        missing.append(
            "libpcap is not installed (scapy compiles packet filters with it; apt-get install libpcap0.8)"
        )
    if not _has_net_raw():
        missing.append(
            "raw sockets need root or CAP_NET_RAW, and this process has neither "
            "(run as root, or grant it: sudo setcap cap_net_raw+ep <python>)"
        )
    return missing


def raw_available() -> tuple[bool, str]:
    """Say whether raw-packet features can run here, and if not, what is missing.

    Checks without importing scapy and without opening a socket.

    Returns:
        ``(True, "scapy and raw sockets available")`` or ``(False, reason)``, where the reason names
        everything that is missing (scapy, the privilege, or both) and how to fix it.
    """
    missing = _missing()
    if missing:
        return False, "; ".join(missing)
    return True, "scapy and raw sockets available"


def require_raw(feature: str) -> None:
    """Raise unless ``feature`` can use raw packets here.

    Args:
        feature: what the caller is trying to do, for the message (``"IcmpHeartbeat"``).

    Raises:
        RawUnavailableError: scapy is not installed, or the process lacks root / CAP_NET_RAW; the message
            names the feature and everything that is missing.
    """
    missing = _missing()
    if missing:
        log.info("raw.unavailable", feature=feature, missing=missing)
        raise RawUnavailableError(f"{feature} needs raw packets: " + "; ".join(missing))


# --------------------------------------------------------------------------------------------- scapy seam


@dataclass(frozen=True, slots=True)
class _Scapy:
    """The handful of scapy names fragileprobe uses, imported once.

    Typed ``Any``, as are the sockets, packets and writers they make: scapy ships no type information, and
    its objects stay inside this module (callers get our own records).
    """

    IP: Any
    ICMP: Any
    PcapWriter: Any
    Scapy_Exception: Any
    resolve_iface: Any
    attach_filter: Any
    conf: Any


_scapy_lock = threading.Lock()
_scapy_cache: list[_Scapy] = []


def _scapy(feature: str) -> _Scapy:
    """Import the scapy layers fragileprobe needs (once), quietly, or raise RawUnavailableError."""
    with _scapy_lock:
        if _scapy_cache:
            return _scapy_cache[0]
        # scapy logs (interfaces without addresses, missing optional libraries) and warns (deprecated
        # cryptography) while importing. Quiet exactly its own logger for the import and restore it
        # afterwards: the application's logging configuration is not ours to change.
        scapy_logger = logging.getLogger("scapy")
        saved_level = scapy_logger.level
        if saved_level == logging.NOTSET and "scapy.error" not in sys.modules:
            # scapy sets WARNING on its logger when it finds it unset; keep that default once we are done.
            saved_level = logging.WARNING
        scapy_logger.setLevel(logging.ERROR)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                inet = importlib.import_module("scapy.layers.inet")
                utils = importlib.import_module("scapy.utils")
                config = importlib.import_module("scapy.config")
                error = importlib.import_module("scapy.error")
                interfaces = importlib.import_module("scapy.interfaces")
                arch = importlib.import_module("scapy.arch")
        except ImportError as exc:
            raise RawUnavailableError(
                f"{feature} needs raw packets: scapy is not installed ({RAW_EXTRA_HINT})"
            ) from exc
        finally:
            scapy_logger.setLevel(saved_level)
        loaded = _Scapy(
            IP=inet.IP,
            ICMP=inet.ICMP,
            PcapWriter=utils.PcapWriter,
            Scapy_Exception=error.Scapy_Exception,
            resolve_iface=interfaces.resolve_iface,
            attach_filter=getattr(arch, "attach_filter", None),  # Linux and BSD
            conf=config.conf,
        )
        _scapy_cache.append(loaded)
        return loaded


def _ipv4(host: str, field: str = "host") -> str:
    try:
        addr = ipaddress.ip_address(host)
    except ValueError as exc:
        raise _validate.fail(field, "an IP address", host) from exc
    if addr.version != 4:
        raise _validate.fail(field, "an IPv4 address (raw-packet features support IPv4 only)", host)
    return str(addr)


def _interface_for(sc: _Scapy, host: str) -> str:
    """The interface packets to ``host`` leave by: the loopback device for 127/8, else the routing table's."""
    if ipaddress.ip_address(host).is_loopback:
        return str(sc.conf.loopback_name)
    iface = sc.conf.route.route(host)[0]
    return str(iface)


# A kernel filter names hosts while they are few (libpcap's optimizer makes compiling "host a or host b ..."
# grow superlinearly: ~5 ms for 100 hosts, ~35 ms for 254), then the /24 networks that hold them (a scan or a
# fleet usually spans a few); beyond that the filter does not restrict addresses and Python does.
_FILTER_MAX_HOSTS: Final = 16
_FILTER_MAX_NETS: Final = 16


def _address_filter(hosts: Iterable[str]) -> str | None:
    """A BPF expression matching packets to or from ``hosts`` (maybe more), or None when too spread."""
    ordered = sorted(set(hosts), key=ipaddress.IPv4Address)
    if not ordered:
        return None
    if len(ordered) <= _FILTER_MAX_HOSTS:
        return "(" + " or ".join(f"host {h}" for h in ordered) + ")"
    nets = sorted({ipaddress.IPv4Network(f"{h}/24", strict=False) for h in ordered})
    if len(nets) <= _FILTER_MAX_NETS:
        return "(" + " or ".join(f"net {n}" for n in nets) + ")"
    return None


@dataclass(frozen=True, slots=True)
class TcpSegment:
    """One TCP segment seen on the wire, as fragileprobe's own record (never a scapy object).

    Attributes:
        src: source IPv4 address.
        dst: destination IPv4 address.
        sport: source port.
        dport: destination port.
        flags: TCP flag bits (``SYN``, ``ACK``, ``RST``... constants of this module).
        ttl: IP time to live as received.
        window: TCP receive window field (unscaled).
        mss: the MSS option, if present.
        window_scale: the window-scale option, if present.
        options: names of the TCP options, in order.
        at_s: capture time (kernel timestamp, seconds since the epoch).
    """

    src: str
    dst: str
    sport: int
    dport: int
    flags: int
    ttl: int
    window: int
    mss: int | None
    window_scale: int | None
    options: tuple[str, ...]
    at_s: float

    @property
    def is_syn(self) -> bool:
        """A connection request: SYN without ACK."""
        return self.flags & (SYN | ACK) == SYN

    @property
    def is_syn_ack(self) -> bool:
        """A connection acceptance: SYN and ACK."""
        return self.flags & (SYN | ACK) == SYN | ACK

    @property
    def is_rst(self) -> bool:
        return bool(self.flags & RST)


# Link types whose frames this module parses itself (libpcap DLT numbers): Ethernet (also Linux loopback)
# and raw IP. Other link types are handed to scapy's dissector, which is ~50x slower.
_DLT_RAW: Final = 101
_ETH_HEADER_BYTES: Final = 14
_ETHERTYPE_IPV4: Final = 0x0800
_ETHERTYPE_VLAN: Final = (0x8100, 0x88A8)
_IPPROTO_TCP: Final = 6
# TCP option kinds (RFC 9293 and the IANA registry), named as scapy names them.
_TCP_OPTION_NAMES: Final = {0: "EOL", 1: "NOP", 2: "MSS", 3: "WScale", 4: "SAckOK", 5: "SAck", 8: "Timestamp"}


def _tcp_options(raw: bytes) -> tuple[tuple[str, ...], int | None, int | None]:
    """Names of the TCP options in ``raw``, and the MSS and window-scale values; never raises."""
    names: list[str] = []
    mss: int | None = None
    wscale: int | None = None
    i = 0
    while i < len(raw):
        kind = raw[i]
        names.append(_TCP_OPTION_NAMES.get(kind, str(kind)))
        if kind == 0:
            break
        if kind == 1:
            i += 1
            continue
        if i + 1 >= len(raw) or raw[i + 1] < 2:
            break  # malformed length: stop rather than guess
        length = raw[i + 1]
        value = raw[i + 2 : i + length]
        if kind == 2 and len(value) == 2:
            mss = int.from_bytes(value, "big")
        elif kind == 3 and len(value) == 1:
            wscale = value[0]
        i += length
    return tuple(names), mss, wscale


def tcp_segment_from_frame(frame: bytes, linktype: int, at_s: float) -> TcpSegment | None:
    """Parse one captured frame into a :class:`TcpSegment`; None unless it is a whole IPv4/TCP header.

    Pure and total: any bytes in, a segment or None out. Used on the sniffers' hot path instead of
    scapy's dissector, which costs ~100 µs a packet in Python (the emulator's SYN watcher sees every
    segment of every watched device).

    Args:
        frame: the frame as read from the packet socket.
        linktype: its libpcap link type (1 Ethernet, 101 raw IP).
        at_s: its capture time.
    """
    if linktype == _DLT_EN10MB:
        offset = _ETH_HEADER_BYTES
        if len(frame) < offset:
            return None
        ethertype = int.from_bytes(frame[12:14], "big")
        while ethertype in _ETHERTYPE_VLAN and len(frame) >= offset + 4:
            ethertype = int.from_bytes(frame[offset + 2 : offset + 4], "big")
            offset += 4
        if ethertype != _ETHERTYPE_IPV4:
            return None
    elif linktype == _DLT_RAW:
        offset = 0
    else:
        return None
    ip = frame[offset:]
    if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != _IPPROTO_TCP:
        return None
    ihl = (ip[0] & 0x0F) * 4
    if ihl < 20 or int.from_bytes(ip[6:8], "big") & 0x1FFF:
        return None  # bad header length, or a non-first fragment (no TCP header in it)
    tcp = ip[ihl:]
    if len(tcp) < 20:
        return None
    data_offset = (tcp[12] >> 4) * 4
    if data_offset < 20 or len(tcp) < data_offset:
        return None
    names, mss, wscale = _tcp_options(bytes(tcp[20:data_offset]))
    return TcpSegment(
        src=str(ipaddress.IPv4Address(bytes(ip[12:16]))),
        dst=str(ipaddress.IPv4Address(bytes(ip[16:20]))),
        sport=int.from_bytes(tcp[0:2], "big"),
        dport=int.from_bytes(tcp[2:4], "big"),
        flags=tcp[13],
        ttl=ip[8],
        window=int.from_bytes(tcp[14:16], "big"),
        mss=mss,
        window_scale=wscale,
        options=names,
        at_s=at_s,
    )


def _translate_permission(feature: str, exc: OSError) -> RawUnavailableError:
    return RawUnavailableError(
        f"{feature} needs raw packets: opening a raw socket failed ({exc.strerror or exc}); "
        "raw sockets need root or CAP_NET_RAW"
    )


class _Sniffer:
    """A reader thread on one packet socket (scapy's, with its BPF filter), started and stopped with bounds.

    The socket is opened before the thread starts, so packets arriving meanwhile wait in its buffer.
    ``on_frame(frame, linktype, at_s)`` runs in the reader thread for each frame, undissected (consumers
    parse what they need, see :func:`tcp_segment_from_frame`); it must be quick, and an exception there is
    logged and counted, never allowed to end the thread. Stopping wakes the thread through a pipe, joins
    it (bounded) and, with ``drain_on_stop``, hands over the frames still queued in the socket first.
    """

    def __init__(
        self,
        *,
        feature: str,
        host: str,
        bpf: str,
        on_frame: Callable[[bytes, int, float], None],
        iface: str | None = None,
        drain_on_stop: bool = False,
    ) -> None:
        self._feature = feature
        self._host = host
        self._iface = iface
        self._bpf = bpf
        self._on_frame = on_frame
        self._drain_on_stop = drain_on_stop
        self._socket: Any = None
        self._thread: threading.Thread | None = None
        self._wake: tuple[int, int] | None = None
        self._started = threading.Event()
        self.linktype = _DLT_EN10MB
        self.callback_errors = 0
        self.error: Exception | None = None
        #: Packets the kernel dropped because the reader fell behind (known once stopped).
        self.kernel_drops = 0

    def _open(self, before_run: Callable[[int], None] | None) -> None:
        sc = _scapy(self._feature)
        iface = self._iface or _interface_for(sc, self._host)
        loopback = iface == str(sc.conf.loopback_name)
        # On the loopback device the kernel shows every packet twice to a packet socket: once outgoing and
        # once incoming. scapy's read-write L2 socket drops the outgoing copy, its listen-only socket
        # keeps both; on a real interface our own packets exist only as outgoing, so keep them there.
        socket_class = sc.conf.L2socket if loopback else sc.conf.L2listen
        try:
            sock = socket_class(iface=iface, filter=self._bpf)
        except PermissionError as exc:
            raise _translate_permission(self._feature, exc) from exc
        except (OSError, sc.Scapy_Exception) as exc:
            # "Cannot set filter: libpcap is not available" and the like: a missing raw-packet dependency.
            raise RawUnavailableError(
                f"{self._feature}: cannot open a packet socket on {iface} with filter {self._bpf!r}: {exc}"
            ) from exc
        self._socket = sock
        self._enlarge_buffer(sock.ins)
        self._read_kernel_drops()  # reading resets the kernel's counters: count from now on
        self.linktype = int(sc.conf.l2types.layer2num.get(getattr(sock, "LL", None), _DLT_EN10MB))
        if before_run is not None:
            # The socket already queues packets; whatever consumes them (a pcap writer) is set up now,
            # knowing the link type, before the first frame is handed over.
            before_run(self.linktype)
        self._wake = os.pipe()
        self._thread = threading.Thread(target=self._run, name=f"fragileprobe-{self._feature}", daemon=True)
        self._thread.start()
        if not self._started.wait(SNIFFER_START_TIMEOUT_S):  # pragma: no cover - a thread that never runs
            self._stop()
            raise RawUnavailableError(f"{self._feature}: the packet reader on {iface} did not start")

    @property
    def alive(self) -> bool:
        """Whether the reader thread runs (False before start, after stop, or once its socket failed)."""
        return self._thread is not None and self._thread.is_alive()

    @staticmethod
    def _enlarge_buffer(sock: socket.socket) -> None:
        # The reader thread shares the GIL with the event loop producing the traffic, so on loopback it
        # falls behind in bursts; scapy's 64 KiB buffer holds under a hundred packets. SO_RCVBUFFORCE
        # (CAP_NET_ADMIN) may exceed net.core.rmem_max; without it the kernel caps SO_RCVBUF there.
        for option in (_SO_RCVBUFFORCE, socket.SO_RCVBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, option, SNIFFER_RCVBUF_BYTES)
                return
            except OSError:
                continue

    def _read_kernel_drops(self) -> int:
        """Packets the kernel dropped for this socket since the last read (buffer full); 0 if unknown."""
        sock = self._socket
        if sock is None:
            return 0
        try:
            raw = sock.ins.getsockopt(_SOL_PACKET, _PACKET_STATISTICS, 8)
        except OSError:
            return 0
        _received, dropped = struct.unpack("II", raw)
        return int(dropped)

    def _read_one(self) -> None:
        # recv_raw: the frame's bytes without dissecting them; (None, None, None) for a dropped outgoing copy.
        _cls, frame, at_s = self._socket.recv_raw()
        if frame is not None:
            self._guarded(frame, at_s if at_s is not None else time.time())

    def _run(self) -> None:
        assert self._wake is not None
        wake_r = self._wake[0]
        self._started.set()
        try:
            while True:
                readable, _, _ = select.select([self._socket.ins, wake_r], [], [])
                if wake_r in readable:
                    return
                self._read_one()
        except Exception as exc:  # the thread's boundary: the socket failed or was closed under us
            self.error = exc
            log.warning("raw.sniffer.failed", feature=self._feature, error=repr(exc))

    def _drain(self) -> None:
        # Hand over what is still queued, so a capture holds every packet exchanged before it was stopped.
        # Bounded: traffic may still be flowing.
        for _ in range(SNIFFER_DRAIN_MAX_PACKETS):
            readable, _, _ = select.select([self._socket.ins], [], [], 0)
            if not readable:
                return
            try:
                self._read_one()
            except OSError:
                return

    def _guarded(self, frame: bytes, at_s: float) -> None:
        try:
            self._on_frame(frame, self.linktype, at_s)
        except Exception as exc:  # the reader thread's boundary: one bad frame must not end the capture
            self.callback_errors += 1
            log.warning("raw.sniffer.callback_error", feature=self._feature, error=repr(exc))

    def set_filter(self, bpf: str) -> None:
        """Replace the kernel filter of the open socket (blocking: compiles with libpcap).

        The kernel swaps filters atomically; packets queued under the old filter are still delivered.
        """
        sc = _scapy(self._feature)
        sock = self._socket
        if sock is None:
            raise RuntimeError("set_filter() needs an open sniffer")
        if sc.attach_filter is None:
            raise RawUnavailableError(f"{self._feature}: this platform cannot change a socket filter")
        try:
            sc.attach_filter(sock.ins, bpf, sock.iface)
        except (OSError, sc.Scapy_Exception) as exc:
            raise RawUnavailableError(f"{self._feature}: cannot set filter {bpf!r}: {exc}") from exc
        self._bpf = bpf

    def _stop(self) -> None:
        thread, self._thread = self._thread, None
        wake, self._wake = self._wake, None
        if thread is not None and wake is not None:
            os.write(wake[1], b"x")
            thread.join(SNIFFER_STOP_TIMEOUT_S)
            if thread.is_alive():  # pragma: no cover - the reader only ever blocks in select()
                log.warning(
                    "raw.sniffer.stop_timeout", feature=self._feature, timeout_s=SNIFFER_STOP_TIMEOUT_S
                )
            elif self._drain_on_stop and self._socket is not None and self.error is None:
                self._drain()
        if wake is not None:
            for fd in wake:
                os.close(fd)
        self.kernel_drops += self._read_kernel_drops()
        if self.kernel_drops:
            log.warning("raw.sniffer.kernel_drops", feature=self._feature, dropped=self.kernel_drops)
        if self._socket is not None:
            with contextlib.suppress(OSError):
                self._socket.close()
            self._socket = None

    async def start(self, before_run: Callable[[int], None] | None = None) -> None:
        """Open the socket, call ``before_run(linktype)``, start the reader thread; bounded.

        Not abandoned on cancellation (the thread finishes within SNIFFER_START_TIMEOUT_S); if the start
        fails or is cancelled, whatever it started is stopped before the error propagates.
        """
        ok = False
        try:
            await anyio.to_thread.run_sync(self._open, before_run)
            ok = True
        finally:
            if not ok:
                await self.stop()

    async def stop(self) -> None:
        """Stop the thread and close the socket, even when the caller is being cancelled."""
        # Shielded: stopping must finish even when the caller is being cancelled, or the thread leaks.
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self._stop)


# --------------------------------------------------------------------------------------------------- ICMP


@dataclass(frozen=True, slots=True)
class IcmpResult:
    """The outcome of an ICMP reachability check.

    Attributes:
        host: the address checked.
        sent: echo requests sent.
        received: matching echo replies received in time.
        rtts_s: round-trip time of each reply, in order.
        ttl: IP TTL of the first reply (a hint at the responder's stack), None without replies.
        error: why nothing could be sent or the last non-reply answer (``"destination unreachable"``).
    """

    host: str
    sent: int
    received: int
    rtts_s: tuple[float, ...]
    ttl: int | None
    error: str | None

    @property
    def reachable(self) -> bool:
        """At least one echo reply came back in time."""
        return self.received > 0

    @property
    def rtt_s(self) -> float | None:
        """The smallest round-trip time (the least disturbed by scheduling noise), None without replies."""
        return min(self.rtts_s) if self.rtts_s else None

    @property
    def loss_fraction(self) -> float:
        return 1.0 - self.received / self.sent if self.sent else 1.0


def _seconds_up_to(field: str, value: float, maximum: float, *, zero_ok: bool) -> None:
    """``value`` is a number of seconds in ``0 < value <= maximum`` (``0 <= ...`` when ``zero_ok``)."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not number or not (value >= 0 if zero_ok else value > 0) or not value <= maximum:
        low = ">= 0" if zero_ok else "> 0"
        raise _validate.fail(field, f"a number of seconds {low} and <= {maximum:g}", value)


def _check_icmp_args(timeout_s: float, count: int, interval_s: float) -> None:
    _seconds_up_to("timeout_s", timeout_s, ICMP_MAX_TIMEOUT_S, zero_ok=False)
    _validate.count("count", count, minimum=1, maximum=ICMP_MAX_COUNT)
    _seconds_up_to("interval_s", interval_s, ICMP_MAX_INTERVAL_S, zero_ok=True)


@dataclass(slots=True)
class _EchoTally:
    """What an ICMP check has counted so far (one worker thread owns it)."""

    sent: int = 0
    rtts: list[float] = field(default_factory=list)
    ttl: int | None = None
    error: str | None = None

    def result(self, host: str) -> IcmpResult:
        return IcmpResult(
            host=host,
            sent=self.sent,
            received=len(self.rtts),
            rtts_s=tuple(self.rtts),
            ttl=self.ttl,
            error=self.error,
        )


def _open_icmp_socket(sc: _Scapy, host: str) -> Any:
    """A layer-3 scapy socket that receives ICMP from ``host`` (its filter attached where it can be)."""
    iface = _interface_for(sc, host)
    # The interface picks its layer-3 socket: on Linux loopback a PF_PACKET socket's echo request is never
    # answered, so scapy uses a SOCK_RAW socket there. The filter narrows what reaches Python where the
    # socket supports one; replies are matched by type, id and sequence below either way.
    socket_class = sc.resolve_iface(iface).l3socket(False)
    bpf = f"icmp and src host {host}"
    try:
        sock = socket_class(iface=iface, filter=bpf)
    except PermissionError as exc:
        raise _translate_permission("icmp_reachable", exc) from exc
    if sc.attach_filter is not None:
        # scapy's SOCK_RAW loopback socket ignores its filter argument, and without one its receive side
        # sees every IPv4 packet on the interface: on a busy loopback the echo reply can be dropped from
        # an overflowing buffer before it is read. Attach the filter to the receiving socket directly.
        with contextlib.suppress(OSError, sc.Scapy_Exception):
            sc.attach_filter(sock.ins, bpf, iface)
            # Discard what the socket queued before its filter was attached (bounded).
            for _ in range(SNIFFER_DRAIN_MAX_PACKETS):
                if not select.select([sock.ins], [], [], 0)[0]:
                    break
                sock.ins.recv(65536)
    return sock


def _await_echo_reply(
    sc: _Scapy,
    sock: Any,
    echo: tuple[int, int],
    started: float,
    timeout_s: float,
    stop: threading.Event,
    tally: _EchoTally,
) -> None:
    """Read until the reply to ``echo`` (id, sequence) arrives, ``timeout_s`` passes or ``stop`` is set."""
    deadline = started + timeout_s
    while not stop.is_set():
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
            return
        readable, _, _ = select.select([sock], [], [], min(remaining, _POLL_S))
        reply = sock.recv() if readable else None
        if reply is None or not reply.haslayer(sc.ICMP):
            continue
        icmp = reply[sc.ICMP]
        if int(icmp.type) == 0 and (int(icmp.id), int(icmp.seq)) == echo:
            tally.rtts.append(time.perf_counter() - started)
            if tally.ttl is None:
                tally.ttl = int(reply[sc.IP].ttl)
            return
        if int(icmp.type) == 3:
            tally.error = "destination unreachable"


def _icmp_worker(
    host: str, timeout_s: float, count: int, interval_s: float, stop: threading.Event
) -> IcmpResult:
    """Send ``count`` echo requests one at a time and wait for each reply (runs in a worker thread)."""
    sc = _scapy("icmp_reachable")
    sock = _open_icmp_socket(sc, host)
    ident = random.getrandbits(16)  # tells our replies from another pinger's
    tally = _EchoTally()
    try:
        for seq in range(1, count + 1):
            if stop.is_set() or (seq > 1 and interval_s > 0 and stop.wait(interval_s)):
                break
            request = sc.IP(dst=host) / sc.ICMP(type=8, id=ident, seq=seq)
            started = time.perf_counter()  # a worker thread, outside the event loop and its clock
            sock.send(request)
            tally.sent += 1
            _await_echo_reply(sc, sock, (ident, seq), started, timeout_s, stop, tally)
    finally:
        sock.close()
    return tally.result(host)


async def icmp_reachable(
    host: str,
    *,
    timeout_s: float = 1.0,
    count: int = 1,
    interval_s: float = 0.2,
    scope: Scope | None = None,
) -> IcmpResult:
    """Check whether ``host`` answers ICMP echo, and how fast.

    Sends ``count`` echo requests, one at a time, ``interval_s`` apart, each waiting at most ``timeout_s``
    for its reply; nothing else is sent. The blocking scapy work runs in a worker thread; cancelling the
    call returns at once and the thread stops within 50 ms.

    Args:
        host: IPv4 address to check.
        timeout_s: how long to wait for each reply (at most 30 s).
        count: how many echo requests to send (1 to 100).
        interval_s: pause between requests.
        scope: when given, ``host`` must be inside it (checked before anything is sent).

    Returns:
        An :class:`IcmpResult` with the replies' round-trip times.

    Raises:
        ConfigError: a bad argument (the message names it).
        ScopeError: ``host`` is outside ``scope``; nothing was sent.
        RawUnavailableError: scapy or the raw-socket privilege is missing.
    """
    host = _ipv4(host)
    _check_icmp_args(timeout_s, count, interval_s)
    if scope is not None:
        host = scope.check(host)
    require_raw("icmp_reachable")
    stop = threading.Event()
    try:
        result: IcmpResult = await anyio.to_thread.run_sync(
            _icmp_worker, host, timeout_s, count, interval_s, stop, abandon_on_cancel=True
        )
    finally:
        # On cancellation the thread is abandoned; this makes it close its socket at its next wake-up.
        stop.set()
    log.debug("raw.icmp.result", host=host, sent=result.sent, received=result.received, rtt_s=result.rtt_s)
    return result


@dataclass(frozen=True, slots=True, kw_only=True)
class IcmpHeartbeat:
    """A heartbeat that asks "does the device still answer ICMP echo?" (one echo per beat).

    Implements the :class:`~fragileprobe.Heartbeat` protocol. Its ``port`` is ``0``: ICMP has no port,
    and it uses none of the device's TCP sessions, so unlike an HTTP or TCP heartbeat it does not count
    against the device's session ceiling. Beware that many embedded stacks answer ICMP from the network
    interface's firmware even after the application has hung: pair it with a TCP or HTTP check when the
    question is "is the service alive?".

    Construction checks that raw packets are available, so a missing privilege fails before a run starts.

    Args:
        timeout_s: how long one beat waits for its echo reply (at most 30 s).
        scope: when given, every beat checks the host against it before sending.

    Raises:
        ConfigError: ``timeout_s`` out of range.
        RawUnavailableError: scapy or the raw-socket privilege is missing.
    """

    timeout_s: float = 1.0
    scope: Scope | None = field(default=None, repr=False, compare=False)
    port: int = field(default=0, init=False)
    # An echo request is no TCP session: the Guard gives the work all N places.
    opens_session = False

    def __post_init__(self) -> None:
        _check_icmp_args(self.timeout_s, 1, 0.0)
        require_raw("IcmpHeartbeat")

    async def beat(self, host: str) -> Beat:
        """Send one echo request to ``host``; ok when the reply comes back within ``timeout_s``."""
        from fragileprobe._heartbeat import Beat

        at_s = anyio.current_time()
        try:
            result = await icmp_reachable(host, timeout_s=self.timeout_s, count=1, scope=self.scope)
        except (OSError, RawUnavailableError) as exc:
            # A send error (no route, interface down, privilege dropped since construction) is a failed
            # beat, as the Heartbeat protocol asks: the watchdog then stops probing, the safe side.
            return Beat(
                at_s=at_s, ok=False, latency_s=anyio.current_time() - at_s, error=f"icmp send failed: {exc}"
            )
        if result.reachable:
            return Beat(at_s=at_s, ok=True, latency_s=result.rtt_s or 0.0, error=None)
        reason = result.error or f"no echo reply within {self.timeout_s} s"
        return Beat(at_s=at_s, ok=False, latency_s=anyio.current_time() - at_s, error=reason)


# ------------------------------------------------------------------------------------------ passive OS hint


@dataclass(frozen=True, slots=True)
class SynAckObservation:
    """The first SYN-ACK seen from one port of the target.

    Attributes:
        port: the target's TCP port.
        ttl: IP TTL as received.
        initial_ttl: the initial TTL it was most likely sent with (see :func:`os_hint_from_ttl`).
        window: TCP window of the SYN-ACK (unscaled).
        mss: the MSS option, if present.
        window_scale: the window-scale option, if present.
        options: names of the TCP options, in order.
        syn_acks: how many SYN-ACKs this port sent while observed (retransmissions and repeated connects).
    """

    port: int
    ttl: int
    initial_ttl: int
    window: int
    mss: int | None
    window_scale: int | None
    options: tuple[str, ...]
    syn_acks: int


@dataclass(frozen=True, slots=True)
class PassiveOsHint:
    """What the SYN-ACKs of one target suggest about its network stack.

    Attributes:
        host: the target.
        observations: one :class:`SynAckObservation` per port that answered, by port.
        initial_ttl: the most common initial TTL among the observations, None without any.
        os_family: ``"generic unix"``, ``"windows"``, ``"embedded"`` or ``"unknown"`` (the vocabulary of
            :func:`fragileprobe.guess_os`).
        os_hint: the same, in words (``"embedded/network device"``).
        note: caveats (loopback, mixed TTLs, nothing observed).
    """

    host: str
    observations: tuple[SynAckObservation, ...]
    initial_ttl: int | None
    os_family: str
    os_hint: str
    note: str | None

    @property
    def windows_by_port(self) -> dict[int, int]:
        return {o.port: o.window for o in self.observations}

    @property
    def ttls_by_port(self) -> dict[int, int]:
        return {o.port: o.ttl for o in self.observations}


# Initial TTLs in use, with what usually sends them. 64: Linux, BSD, macOS and most embedded Linux (RFC 1700
# recommends 64); 128: Windows; 255: network gear and RTOS stacks (Cisco IOS, VxWorks, many printers);
# 32: Windows 9x and some old embedded stacks.
_TTL_HINTS: Final[tuple[tuple[int, str, str], ...]] = (
    (32, "embedded", "old embedded stack or Windows 9x"),
    (64, "generic unix", "generic unix"),
    (128, "windows", "windows"),
    (255, "embedded", "embedded/network device"),
)


def os_hint_from_ttl(ttl: int) -> tuple[int, str, str]:
    """Guess the initial TTL a packet was sent with, and what kind of stack uses it.

    A packet's TTL falls by one per router, and real paths are far shorter than the gaps between the
    common initial values, so the initial TTL is the smallest common value at or above the observed one.

    Args:
        ttl: the TTL as received (0 to 255; 0 is not a valid received TTL and gives ``"unknown"``).

    Returns:
        ``(initial_ttl, os_family, os_hint)``; ``initial_ttl`` is 0 for a TTL that is out of range.
    """
    if not 1 <= ttl <= 255:
        return 0, "unknown", "unknown"
    for initial, family, hint in _TTL_HINTS:
        if ttl <= initial:
            return initial, family, hint
    raise AssertionError("unreachable: 255 covers every TTL")  # pragma: no cover


def summarize_syn_acks(
    host: str, observations: tuple[SynAckObservation, ...], *, loopback: bool
) -> PassiveOsHint:
    """Turn per-port SYN-ACK observations into one hint (pure)."""
    notes = []
    if loopback:
        notes.append(
            "loopback: SYN-ACKs come from this machine's own kernel, so the hint describes the local stack"
        )
    if not observations:
        notes.append("no SYN-ACK observed (no port accepted a connection while observing)")
        return PassiveOsHint(host, (), None, "unknown", "unknown", "; ".join(notes))
    counts: dict[int, int] = {}
    for o in observations:
        counts[o.initial_ttl] = counts.get(o.initial_ttl, 0) + 1
    initial = max(counts, key=lambda k: (counts[k], k))
    if len(counts) > 1:
        # Different stacks behind one address: a NAT, a load balancer, or a proxy answering some ports.
        notes.append(f"mixed initial TTLs by port {sorted(counts)}: several stacks may share this address")
    _, family, hint = os_hint_from_ttl(initial)
    return PassiveOsHint(
        host=host,
        observations=tuple(sorted(observations, key=lambda o: o.port)),
        initial_ttl=initial,
        os_family=family,
        os_hint=hint,
        note="; ".join(notes) or None,
    )


class SynAckObserver:
    """Async context manager that watches the SYN-ACKs of one or more targets while other code connects.

    Use :func:`syn_ack_observer` to make one. It sends nothing; it needs raw sockets to read. Several
    targets share one packet socket (one per interface they are reached by) and one thread.
    """

    def __init__(
        self, hosts: str | Iterable[str], *, max_observations: int = OBSERVER_MAX_OBSERVATIONS
    ) -> None:
        if isinstance(hosts, str):
            hosts = (hosts,)
        self.hosts: tuple[str, ...] = tuple(dict.fromkeys(_ipv4(h) for h in hosts))
        if not self.hosts:
            raise _validate.fail("hosts", "at least one address to observe", self.hosts)
        self._max = _validate.positive_int("max_observations", max_observations)
        self._hostset = frozenset(self.hosts)
        self._lock = threading.Lock()
        self._by_host: dict[str, dict[int, SynAckObservation]] = {h: {} for h in self.hosts}
        self._count = 0
        self._sniffers: list[_Sniffer] = []
        self._final: dict[str, PassiveOsHint] | None = None

    @property
    def host(self) -> str:
        """The (first) observed host."""
        return self.hosts[0]

    def _seen(self, frame: bytes, linktype: int, at_s: float) -> None:
        seg = tcp_segment_from_frame(frame, linktype, at_s)
        if seg is None or seg.src not in self._hostset or not seg.is_syn_ack:
            return
        with self._lock:
            ports = self._by_host[seg.src]
            known = ports.get(seg.sport)
            if known is not None:
                ports[seg.sport] = _replace_count(known, known.syn_acks + 1)
                return
            if self._count >= self._max:
                return
            self._count += 1
            initial, _, _ = os_hint_from_ttl(seg.ttl)
            ports[seg.sport] = SynAckObservation(
                port=seg.sport,
                ttl=seg.ttl,
                initial_ttl=initial,
                window=seg.window,
                mss=seg.mss,
                window_scale=seg.window_scale,
                options=seg.options,
                syn_acks=1,
            )

    def _summarize(self, host: str) -> PassiveOsHint:
        with self._lock:
            observations = tuple(self._by_host[host].values())
        return summarize_syn_acks(host, observations, loopback=ipaddress.ip_address(host).is_loopback)

    def hint(self, host: str | None = None) -> PassiveOsHint:
        """The hint for ``host`` (default: the only observed host), final once the context has exited.

        Raises:
            ConfigError: ``host`` was not observed, or is missing while several hosts were observed.
        """
        if host is None:
            if len(self.hosts) != 1:
                raise ConfigError("host: several hosts were observed; say which one", field="host")
            host = self.hosts[0]
        host = _ipv4(host)
        if host not in self._hostset:
            raise _validate.fail("host", f"one of the observed hosts {list(self.hosts)}", host)
        if self._final is not None:
            return self._final[host]
        return self._summarize(host)

    def hints(self) -> dict[str, PassiveOsHint]:
        """One hint per observed host, in the order given."""
        return {h: self.hint(h) for h in self.hosts}

    def _plan(self) -> list[_Sniffer]:
        # One socket per interface the hosts are reached by (all of loopback is one interface).
        sc = _scapy("syn_ack_observer")
        by_iface: dict[str, list[str]] = {}
        for h in self.hosts:
            by_iface.setdefault(_interface_for(sc, h), []).append(h)
        sniffers = []
        for iface, hosts in by_iface.items():
            # Only SYN-ACKs pass the kernel filter (tcp[13] is the flags byte, 0x12 = SYN|ACK), and only
            # those of the observed hosts while they are few enough to name.
            addresses = _address_filter(hosts)
            bpf = "tcp and tcp[13] & 0x12 == 0x12" + (f" and {addresses}" if addresses else "")
            sniffers.append(
                _Sniffer(
                    feature="syn_ack_observer",
                    host=hosts[0],
                    bpf=bpf,
                    on_frame=self._seen,
                    iface=iface,
                    drain_on_stop=True,
                )
            )
        return sniffers

    async def __aenter__(self) -> SynAckObserver:
        require_raw("syn_ack_observer")
        sniffers = await anyio.to_thread.run_sync(self._plan)
        ok = False
        try:
            for sniffer in sniffers:
                await sniffer.start()
                self._sniffers.append(sniffer)
            ok = True
        finally:
            if not ok:
                await self._stop()
        log.debug("raw.os_hint.start", hosts=len(self.hosts))
        return self

    async def _stop(self) -> None:
        sniffers, self._sniffers = self._sniffers, []
        for sniffer in sniffers:
            await sniffer.stop()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stop()
        self._final = {h: self._summarize(h) for h in self.hosts}
        for hint in self._final.values():
            log.info(
                "raw.os_hint.result",
                host=hint.host,
                ports=len(hint.observations),
                initial_ttl=hint.initial_ttl,
                os_family=hint.os_family,
            )


def _replace_count(o: SynAckObservation, syn_acks: int) -> SynAckObservation:
    return SynAckObservation(
        port=o.port,
        ttl=o.ttl,
        initial_ttl=o.initial_ttl,
        window=o.window,
        mss=o.mss,
        window_scale=o.window_scale,
        options=o.options,
        syn_acks=syn_acks,
    )


def syn_ack_observer(
    hosts: str | Iterable[str], *, max_observations: int = OBSERVER_MAX_OBSERVATIONS
) -> SynAckObserver:
    """Watch the SYN-ACKs that targets send while fragileprobe's own full connects run; send nothing.

    Example::

        async with syn_ack_observer("127.0.1.5") as obs:
            await grab_banner("127.0.1.5", 22)
        obs.hint().os_hint      # "generic unix"

        async with syn_ack_observer(hosts) as obs:      # a whole discovery: one socket, one thread
            ...
        obs.hints()             # {host: PassiveOsHint}

    Args:
        hosts: one IPv4 address or several.
        max_observations: at most this many (host, port) pairs are remembered.

    Returns:
        A :class:`SynAckObserver`; ``hint(host)`` is a :class:`PassiveOsHint`. On loopback the SYN-ACKs
        come from the local kernel, so the hint describes this machine (its ``note`` says so).

    Raises:
        ConfigError: no host, or one that is not an IPv4 address.
        RawUnavailableError: on entering, when scapy or the raw-socket privilege is missing.
    """
    return SynAckObserver(hosts, max_observations=max_observations)


# ------------------------------------------------------------------------------------------------ capture


@dataclass(frozen=True, slots=True)
class CaptureSummary:
    """What a :func:`capture` wrote.

    Attributes:
        host: the target whose traffic was captured.
        path: the pcap file.
        packets_written: packets in the file.
        bytes_written: the file's size in bytes (headers included).
        packets_dropped: packets seen after a bound was reached, counted but not written.
        packets_lost: packets the kernel dropped before fragileprobe could read them (the sniffer fell
            behind a burst); 0 means the file holds everything exchanged while the capture ran.
        max_packets: the packet bound in force.
        max_bytes: the byte bound in force.
        duration_s: how long the capture ran.
    """

    host: str
    path: Path
    packets_written: int
    bytes_written: int
    packets_dropped: int
    packets_lost: int
    max_packets: int
    max_bytes: int
    duration_s: float

    @property
    def truncated(self) -> bool:
        """A bound was reached and some packets are missing from the file."""
        return self.packets_dropped > 0

    @property
    def complete(self) -> bool:
        """The file holds every packet exchanged with the host while the capture ran."""
        return self.packets_dropped == 0 and self.packets_lost == 0


class PacketCapture:
    """Async context manager writing a pcap of everything exchanged with one target. See :func:`capture`."""

    def __init__(self, host: str, path: str | os.PathLike[str], *, max_packets: int, max_bytes: int) -> None:
        self.host = _ipv4(host)
        self.path = Path(path)
        for name, value, floor in (("max_packets", max_packets, 1), ("max_bytes", max_bytes, 1024)):
            _validate.count(name, value, minimum=floor)
        self.max_packets = max_packets
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._writer: Any = None
        self._written = 0
        self._bytes = _PCAP_FILE_HEADER_BYTES
        self._dropped = 0
        self._started_s = 0.0
        self._summary: CaptureSummary | None = None
        self._sniffer = _Sniffer(
            feature="capture",
            host=self.host,
            bpf=f"host {self.host}",
            on_frame=self._seen,
            drain_on_stop=True,
        )

    def _seen(self, frame: bytes, linktype: int, at_s: float) -> None:
        size = len(frame) + _PCAP_RECORD_HEADER_BYTES
        with self._lock:
            writer = self._writer
            if writer is None:
                return
            if self._written >= self.max_packets or self._bytes + size > self.max_bytes:
                self._dropped += 1
                return
            sec, fraction = divmod(at_s, 1.0)
            writer.write_packet(frame, sec=int(sec), usec=min(int(fraction * 1_000_000), 999_999))
            self._written += 1
            self._bytes += size

    @property
    def packets_written(self) -> int:
        with self._lock:
            return self._written

    @property
    def summary(self) -> CaptureSummary:
        """The final summary; available after the context has exited."""
        if self._summary is None:
            raise RuntimeError("capture summary is available once the capture has stopped")
        return self._summary

    def _check_path(self) -> None:
        # Fail on an unwritable path before anything is sniffed.
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("wb"):
            pass

    def _open_writer(self, linktype: int) -> None:
        sc = _scapy("capture")
        # sync=True: every packet reaches the file at once, so a prober killed mid-run leaves evidence up
        # to its last packet. The header is written now so that even an empty capture is a valid pcap.
        writer = sc.PcapWriter(str(self.path), linktype=linktype, sync=True)
        writer.write_header(None)
        with self._lock:
            self._writer = writer

    def _close_writer(self) -> None:
        with self._lock:
            writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()

    async def __aenter__(self) -> PacketCapture:
        require_raw("capture")
        self._started_s = anyio.current_time()
        await anyio.to_thread.run_sync(self._check_path)
        ok = False
        try:
            await self._sniffer.start(before_run=self._open_writer)
            ok = True
        finally:
            if not ok:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(self._close_writer)
        log.info("raw.capture.start", host=self.host, path=str(self.path))
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._sniffer.stop()
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self._close_writer)
        self._summary = CaptureSummary(
            host=self.host,
            path=self.path,
            packets_written=self._written,
            bytes_written=self._bytes,
            packets_dropped=self._dropped,
            packets_lost=self._sniffer.kernel_drops,
            max_packets=self.max_packets,
            max_bytes=self.max_bytes,
            duration_s=anyio.current_time() - self._started_s,
        )
        log.info(
            "raw.capture.stop",
            host=self.host,
            path=str(self.path),
            packets=self._written,
            bytes=self._bytes,
            dropped=self._dropped,
            lost=self._sniffer.kernel_drops,
        )


def capture(
    host: str,
    path: str | os.PathLike[str],
    *,
    max_packets: int = CAPTURE_MAX_PACKETS,
    max_bytes: int = CAPTURE_MAX_BYTES,
) -> PacketCapture:
    """Write a pcap of every packet sent to or received from ``host`` while the context is open.

    Evidence for the people who own the device: exactly what fragileprobe (and anything else on this
    machine) exchanged with it. Sends nothing. The BPF filter ``host <host>`` runs in the kernel, so no
    packet of another host is ever written. Bounded: after ``max_packets`` packets or ``max_bytes`` bytes
    (file size, headers included) further packets are counted in ``summary.packets_dropped``, not written.

    Example::

        async with capture("127.0.1.5", "evidence.pcap") as cap:
            await characterize(...)
        cap.summary.packets_written

    Args:
        host: the target's IPv4 address.
        path: the pcap file to write (replaced if it exists).
        max_packets: at most this many packets are written (default 100,000).
        max_bytes: the file grows to at most this many bytes (default 64 MiB).

    Returns:
        A :class:`PacketCapture`; its ``summary`` (a :class:`CaptureSummary`) is available after exit.

    Raises:
        ConfigError: a bad argument.
        RawUnavailableError: on entering, when scapy or the raw-socket privilege is missing.
    """
    return PacketCapture(host, path, max_packets=max_packets, max_bytes=max_bytes)
