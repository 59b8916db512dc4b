"""Half-open (SYN) scan sensitivity: the emulator notices a SYN scan and wedges a sensitive device.

Some embedded TCP stacks fall over when scanned half-open: the scanner sends SYN, the device answers
SYN-ACK and allocates a connection, and the scanner never completes the handshake but answers RST. The
story pump wedges this way: after a SYN scan every service but FTP stops answering until it is
power-cycled. fragileprobe itself only ever makes full connects, which such a device survives; this module
lets the emulator show the difference.

The emulated device's handshakes are done by the host kernel, so the emulator cannot see them through its
sockets. :class:`SynWatch` reads them off the loopback device with scapy (root or CAP_NET_RAW only; one
shared socket and thread per process, whatever the number of watched devices) and feeds them to
:class:`HandshakeTracker`, a pure state machine per flow ``(client, client port, device
port)``::

    (none)     --client SYN-->                       SYN_SEEN
    SYN_SEEN   --device SYN-ACK-->                   SYN_ACKED
    (none)     --device SYN-ACK-->                   SYN_ACKED   (the SYN was missed: sniffer just started)
    SYN_ACKED  --client ACK (no SYN, no RST)-->      (forgotten)  full connect, even if RST follows later
    SYN_ACKED  --client RST without ACK-->           (forgotten)  HALF-OPEN PROBE
    SYN_ACKED  --client RST+ACK-->                   (forgotten)  full connect whose ACK the sniffer missed
    SYN_SEEN   --client RST / device RST-->          (forgotten)  refused or abandoned: no open port probed
    any        --older than FLOW_TTL_S-->            (forgotten)

The RST flags tell the two apart even when the sniffer misses packets under load. A client kernel that
gets a SYN-ACK it has no connection for answers ``<SEQ=SEG.ACK><CTL=RST>`` (RFC 9293, 3.10.7.1): RST
without ACK, the signature of ``nmap -sS`` on Linux. A client that aborts an established connection sends
RST+ACK (``nmap -sT`` closes that way). So ``nmap -sS`` (SYN, SYN-ACK, RST) is recognized, while
``nmap -sT`` and fragileprobe's probes (SYN, SYN-ACK, ACK, ... and maybe a RST+ACK later) never are, even
if their ACK is lost. A client that never answers a SYN-ACK at all is forgotten, not counted: the detector
errs towards missing a probe, never towards wedging a device in a test of full connects.
One known blind spot: a client that gives up on a connect in the microseconds between sending its SYN and
receiving the SYN-ACK looks half-open too (its kernel resets the late SYN-ACK); on loopback this needs a
connect timeout far below a millisecond.

Without root or scapy the watcher logs ``emulator.synwatch.inactive`` with the reason and the device runs
without SYN sensitivity.
"""

from __future__ import annotations

import enum
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol

import anyio
import anyio.abc
import anyio.from_thread
import anyio.lowlevel
import structlog

from fragileprobe import _validate
from fragileprobe._errors import RawUnavailableError
from fragileprobe._raw import (
    ACK,
    RST,
    TcpSegment,
    _address_filter,
    _Sniffer,
    raw_available,
    tcp_segment_from_frame,
)
from fragileprobe.emulator._fragility import DeviceState

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Mapping

    from fragileprobe.emulator._fragility import FragilitySpec

__all__ = [
    "FLOW_TTL_S",
    "MAX_FLOWS",
    "HalfOpenProbe",
    "HandshakeTracker",
    "SynWatch",
    "SynWatchStats",
]

log = structlog.get_logger(__name__)

# Handshakes tracked at once. A SYN scan of one device has at most one open flow per port in flight (nmap
# sends them in parallel up to ~100s), so 4,096 is generous; beyond it the oldest flow is forgotten, which
# can only make the detector miss a probe, never invent one.
MAX_FLOWS: Final = 4096
# How long an unfinished handshake is remembered, in seconds. Linux retransmits an unanswered SYN-ACK
# after 1, 3 and 7 s; a client's RST normally follows its SYN-ACK within microseconds on loopback, and 10 s
# covers the retransmissions of a slow client.
FLOW_TTL_S: Final = 10.0


class _Flow(enum.Enum):
    SYN_SEEN = "syn_seen"
    SYN_ACKED = "syn_acked"


@dataclass(frozen=True, slots=True)
class HalfOpenProbe:
    """One half-open probe of an open port: SYN, SYN-ACK, then RST instead of ACK.

    Attributes:
        client: the scanner's address.
        client_port: the scanner's source port.
        device_port: the device's port that was probed (as bound).
        at_s: when the RST was seen (capture time, seconds since the epoch).
    """

    client: str
    client_port: int
    device_port: int
    at_s: float


class HandshakeTracker:
    """Pure per-flow state machine telling half-open probes from full connects (see the module docstring).

    Args:
        device_host: the device's address; segments not to or from it are ignored.
        device_ports: the device's (bound) ports; segments for other ports are ignored.
        max_flows: flows remembered at once (oldest forgotten first).
        flow_ttl_s: an unfinished handshake older than this is forgotten.
    """

    def __init__(
        self,
        device_host: str,
        device_ports: Collection[int],
        *,
        max_flows: int = MAX_FLOWS,
        flow_ttl_s: float = FLOW_TTL_S,
    ) -> None:
        self.device_host = device_host
        self.device_ports = frozenset(device_ports)
        self.max_flows = _validate.positive_int("max_flows", max_flows)
        self.flow_ttl_s = _validate.positive("flow_ttl_s", flow_ttl_s)
        # Insertion order is age order (a flow's entry is replaced, never moved, while it lives), so the
        # oldest flows are at the front.
        self._flows: dict[tuple[str, int, int], tuple[_Flow, float]] = {}
        self.full_connects = 0
        self.half_open = 0

    @property
    def flows(self) -> int:
        """Handshakes being tracked right now."""
        return len(self._flows)

    def _expire(self, now_s: float) -> None:
        horizon = now_s - self.flow_ttl_s
        while self._flows:
            key, (_, started) = next(iter(self._flows.items()))
            if started >= horizon and len(self._flows) <= self.max_flows:
                break
            del self._flows[key]

    def _flow_of(self, seg: TcpSegment) -> tuple[tuple[str, int, int], bool] | None:
        """The flow key (client, client port, device port) of ``seg`` and whether the client sent it."""
        if seg.dst == self.device_host and seg.dport in self.device_ports:
            return (seg.src, seg.sport, seg.dport), True
        if seg.src == self.device_host and seg.sport in self.device_ports:
            return (seg.dst, seg.dport, seg.sport), False
        return None

    def feed(self, seg: TcpSegment) -> HalfOpenProbe | None:
        """Take one segment; return a :class:`HalfOpenProbe` when it completes one, else None."""
        flow = self._flow_of(seg)
        if flow is None:
            return None
        key, from_client = flow
        self._expire(seg.at_s)
        if from_client:
            return self._from_client(key, seg)
        self._from_device(key, seg)
        return None

    def _from_client(self, key: tuple[str, int, int], seg: TcpSegment) -> HalfOpenProbe | None:
        state = self._flows.get(key)
        if seg.is_syn:
            # A new handshake, or a retransmitted SYN; a reused 4-tuple starts over.
            self._flows.pop(key, None)
            self._flows[key] = (_Flow.SYN_SEEN, seg.at_s)
            self._expire(seg.at_s)
            return None
        if state is None:
            return None
        acked = state[0] is _Flow.SYN_ACKED
        if seg.is_rst:
            del self._flows[key]
            if acked and seg.flags & ACK:
                # RST+ACK: the client had the connection (we missed its ACK) and aborted it.
                self.full_connects += 1
            elif acked:
                self.half_open += 1
                return HalfOpenProbe(
                    client=seg.src, client_port=seg.sport, device_port=seg.dport, at_s=seg.at_s
                )
            return None
        if seg.flags & ACK and acked:
            del self._flows[key]
            self.full_connects += 1
        return None

    def _from_device(self, key: tuple[str, int, int], seg: TcpSegment) -> None:
        state = self._flows.get(key)
        if seg.is_syn_ack:
            if state is None:
                self._flows[key] = (_Flow.SYN_ACKED, seg.at_s)
                self._expire(seg.at_s)
            else:
                self._flows[key] = (_Flow.SYN_ACKED, state[1])
        elif seg.flags & RST and state is not None:
            # Refused (nothing listening, or the device is booting): no handshake to judge.
            del self._flows[key]


@dataclass(frozen=True, slots=True)
class SynWatchStats:
    """What the SYN watcher has seen.

    Attributes:
        active: whether the watcher is sniffing (False without root or scapy, or after it stopped).
        inactive_reason: why it is not active, None when it is (or has been).
        segments_seen: TCP segments of the device read off the wire.
        full_connects: completed handshakes.
        half_open_probes: half-open probes of open ports.
        wedges: times the watcher wedged the device.
    """

    active: bool
    inactive_reason: str | None
    segments_seen: int
    full_connects: int
    half_open_probes: int
    wedges: int


class _Wedgeable(Protocol):
    """What the watcher needs of a device (an :class:`~fragileprobe.emulator.EmulatedDevice`)."""

    host: str

    @property
    def ports(self) -> Mapping[int, int]: ...

    @property
    def model(self) -> Any: ...

    @property
    def state(self) -> DeviceState: ...

    def wedge(self, except_ports: Collection[int] = ()) -> None: ...


class SynWatch:
    """Watches a SYN-sensitive emulated device for half-open scans and wedges it when one arrives.

    Run it as a task in the device's task group, started with ``await tg.start(SynWatch(device).run)``;
    cancelling the task group unregisters it. All watchers of a process share one packet socket and one
    sniffer thread (:class:`_Tap`), started with the first watcher and stopped, bounded, with the last.

    Args:
        device: the device to watch and wedge.
        spared_ports: model ports that keep answering when wedged; default the model's
            ``fragility.syn_spared_ports`` (FTP for the story pump).
        on_half_open: called in the event loop for each half-open probe, after the wedge (for tests and
            logs).
    """

    def __init__(
        self,
        device: _Wedgeable,
        *,
        spared_ports: Collection[int] | None = None,
        on_half_open: Callable[[HalfOpenProbe], None] | None = None,
    ) -> None:
        self._device = device
        spec: FragilitySpec | None = getattr(device.model, "fragility", None)
        if spared_ports is None:
            spared_ports = spec.syn_spared_ports if spec is not None else frozenset()
        self.spared_ports = frozenset(spared_ports)
        self._on_half_open = on_half_open
        bound_to_model = {bound: model for model, bound in device.ports.items()}
        self._bound_to_model = bound_to_model
        self._tracker = HandshakeTracker(device.host, bound_to_model)
        self._lock = threading.Lock()
        self._token: anyio.lowlevel.EventLoopToken | None = None
        self._segments = 0
        self._wedges = 0
        self._active = False
        self._inactive_reason: str | None = None
        self._log = log.bind(host=device.host)

    @property
    def stats(self) -> SynWatchStats:
        with self._lock:
            return SynWatchStats(
                active=self._active,
                inactive_reason=self._inactive_reason,
                segments_seen=self._segments,
                full_connects=self._tracker.full_connects,
                half_open_probes=self._tracker.half_open,
                wedges=self._wedges,
            )

    def _feed(self, seg: TcpSegment) -> None:
        # Runs in the tap's sniffer thread.
        with self._lock:
            self._segments += 1
            probe = self._tracker.feed(seg)
        if probe is not None and self._token is not None:
            # Blocks the sniffer thread until the device's event loop has run the wedge: a few µs, and the
            # loop never waits on the sniffer thread while holding anything this needs.
            anyio.from_thread.run_sync(self._half_open, probe, token=self._token)

    def _half_open(self, probe: HalfOpenProbe) -> None:
        # Runs in the event loop thread.
        model_port = self._bound_to_model.get(probe.device_port, probe.device_port)
        self._log.warning(
            "emulator.synwatch.half_open",
            client=probe.client,
            client_port=probe.client_port,
            port=model_port,
            spared_ports=sorted(self.spared_ports),
        )
        was_hung = self._device.state is DeviceState.HUNG
        self._device.wedge(except_ports=self.spared_ports)
        if not was_hung and self._device.state is DeviceState.HUNG:
            # Counted once per wedge: the rest of the same scan finds the device already wedged.
            with self._lock:
                self._wedges += 1
        if self._on_half_open is not None:
            self._on_half_open(probe)

    @property
    def host(self) -> str:
        return self._device.host

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Watch until cancelled; report started once packets are read (or once it is known inactive)."""
        try:
            ok, reason = raw_available()
            if not ok:
                self._inactive(reason)
                task_status.started()
                return
            self._token = anyio.lowlevel.current_token()
            try:
                await anyio.to_thread.run_sync(_Tap.add, self)
            except RawUnavailableError as exc:
                self._inactive(str(exc))
                task_status.started()
                return
            with self._lock:
                self._active = True
            self._log.info("emulator.synwatch.active", spared_ports=sorted(self.spared_ports))
            task_status.started()
            await anyio.sleep_forever()
        finally:
            # Shielded and unconditional: a cancellation that arrived while add() ran in its thread must
            # not leave this watcher registered (remove() of an unregistered watcher does nothing).
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(_Tap.remove, self)
            with self._lock:
                self._active = False
            self._log.debug("emulator.synwatch.stopped", segments=self._segments, wedges=self._wedges)

    def _inactive(self, reason: str) -> None:
        with self._lock:
            self._inactive_reason = reason
        self._log.info("emulator.synwatch.inactive", reason=reason)


def _tap_filter(hosts: Collection[str]) -> str:
    # Packets of unwatched hosts that pass a wider filter are dropped by address in the sniffer thread.
    addresses = _address_filter(hosts)
    return f"tcp and {addresses}" if addresses else "tcp and net 127.0.0.0/8"


class _Tap:
    """One packet socket and one sniffer thread per process, shared by every running :class:`SynWatch`.

    A fleet of syn-sensitive pumps would otherwise hold one thread and one socket per pump (measured: ~17 ms
    to start and ~15 ms to stop each, one thread each). The tap starts with the first watcher and stops with
    the last; in between, adding or removing a watcher only swaps the kernel filter. ``add`` and ``remove``
    block (socket, filter compile, thread join) and are called in worker threads.
    """

    _lock = threading.Lock()
    # host -> watcher. Replaced, never mutated, so the sniffer thread reads it without the lock.
    _watchers: Mapping[str, SynWatch] = {}
    _sniffer: _Sniffer | None = None
    _bpf: str | None = None

    @classmethod
    def add(cls, watch: SynWatch) -> None:
        with cls._lock:
            current = cls._watchers.get(watch.host)
            if current is not None and current is not watch:
                raise RuntimeError(f"{watch.host} is already watched by another device")
            watchers = {**cls._watchers, watch.host: watch}
            bpf = _tap_filter(watchers)
            if cls._sniffer is not None and not cls._sniffer.alive:
                # Its socket failed (logged as raw.sniffer.failed): start a fresh one for everybody.
                cls._sniffer._stop()
                cls._sniffer = None
            if cls._sniffer is None:
                sniffer = _Sniffer(
                    feature="SYN-scan sensitivity", host=watch.host, bpf=bpf, on_frame=cls._dispatch
                )
                sniffer._open(None)
                cls._sniffer = sniffer
            elif bpf != cls._bpf:
                cls._sniffer.set_filter(bpf)
            cls._bpf = bpf
            # Published once the filter lets the device's packets through.
            cls._watchers = watchers

    @classmethod
    def remove(cls, watch: SynWatch) -> None:
        with cls._lock:
            if cls._watchers.get(watch.host) is not watch:
                return
            watchers = {h: w for h, w in cls._watchers.items() if w is not watch}
            cls._watchers = watchers
            sniffer = cls._sniffer
            if sniffer is None:
                return
            if not watchers:
                cls._sniffer = None
                cls._bpf = None
                sniffer._stop()
                return
            bpf = _tap_filter(watchers)
            if bpf != cls._bpf:
                try:
                    sniffer.set_filter(bpf)
                    cls._bpf = bpf
                except RawUnavailableError as exc:
                    # The wider filter stays in place; the departed device's packets are dropped by address.
                    log.warning("emulator.synwatch.filter_failed", error=str(exc))

    @classmethod
    def _dispatch(cls, frame: bytes, linktype: int, at_s: float) -> None:
        # Runs in the reader thread, for every TCP segment that passes the kernel filter.
        seg = tcp_segment_from_frame(frame, linktype, at_s)
        if seg is None:
            return
        watchers = cls._watchers
        watch = watchers.get(seg.dst) or watchers.get(seg.src)
        if watch is not None:
            watch._feed(seg)
