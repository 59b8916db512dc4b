"""An emulated device on its own loopback address: the sockets around the pure fragility model.

Each of the model's services listens on ``host:port`` (anyio TCP listeners). Every accepted connection is a
session from accept to close, counted across all services. The I/O rules:

* **Up.** Services answer, each response delayed by the model's load-dependent latency.
* **Hung** (the session count reached the boot's threshold ``T``, the connect rate was exceeded, or
  :meth:`EmulatedDevice.hang` / :meth:`EmulatedDevice.wedge` was called). Sessions in progress stall: no
  byte is sent any more and what the client sends is read and discarded. New connections complete the
  TCP handshake (the kernel accepts them) but are never served; they are counted as
  ``attempts_while_hung``. A hung device holds at most :data:`MAX_HELD_CONNECTIONS` connections; beyond
  that it stops calling ``accept()``, so further clients wait in the kernel's accept backlog (still a
  completed handshake and silence) and, once the backlog is full, see their SYNs dropped. A *wedge* is a
  hang that spares some ports, which keep serving.
* **Power cycle.** Every connection is reset (RST: the device lost all its TCP state), the listeners close
  (connects are refused) for the boot delay, then the services listen again and a new threshold is drawn.

Ports below 1024 need root: when not running as root they are served at ``port + 10000`` (logged as
``emulator.port_offset``); ``port_offset`` overrides the offset for privileged ports.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import random
import socket
import types
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Self

import anyio
import anyio.abc
import structlog

from fragileprobe._errors import ConfigError
from fragileprobe.emulator._fragility import (
    ConnectVerdict,
    DeviceState,
    FragilityModel,
    FragilitySpec,
)
from fragileprobe.emulator._models import DeviceModel, get_model
from fragileprobe.emulator._services import RECV_CHUNK, ServiceConn, abort_stream, serve
from fragileprobe.emulator._synwatch import SynWatch

if TYPE_CHECKING:
    from collections.abc import Collection, Mapping

    from anyio.abc import SocketListener, SocketStream

__all__ = [
    "DEFAULT_BOOT_DELAY_S",
    "MAX_HELD_CONNECTIONS",
    "UNPRIVILEGED_PORT_OFFSET",
    "DeviceStats",
    "EmulatedDevice",
    "EmulatedPump",
    "check_loopback_host",
]

log = structlog.get_logger(__name__)

# Offset for privileged ports (< 1024) when not running as root: 21 -> 10021, 80 -> 10080.
UNPRIVILEGED_PORT_OFFSET = 10000
# Boot time after a power cycle. Real pumps take tens of seconds; the emulator defaults to a second so
# demos and tests stay quick, and tests pass shorter delays.
DEFAULT_BOOT_DELAY_S = 1.0
# Connections a hung device keeps open at most (stalled sessions, never-served attempts). Each costs one
# file descriptor and a small task; 256 covers any careful prober and a few scanners at once, while a
# flood cannot make one device hold thousands of sockets. Past it the kernel backlog takes over.
MAX_HELD_CONNECTIONS = 256
# Pause after a failed accept() (EMFILE and the like) before trying again, so the loop cannot spin.
_ACCEPT_RETRY_S = 0.05


@dataclass(frozen=True, slots=True)
class DeviceStats:
    """A snapshot of an emulated device's counters (they survive power cycles, except ``sessions_now``).

    Attributes:
        sessions_now: Sessions the device holds right now (served and stalled).
        peak_sessions: Highest concurrent sessions held while up; at most the threshold.
        sessions_served: Sessions accepted and served.
        connects_total: Connections accepted, up or hung.
        crashes: Times the device hung or was wedged.
        attempts_while_hung: Connections accepted while hung and never served (including the one that
            tipped it over).
        power_cycles: Power cycles so far.
        bytes_received_by_port: Model port -> bytes the device received on that port.
    """

    sessions_now: int
    peak_sessions: int
    sessions_served: int
    connects_total: int
    crashes: int
    attempts_while_hung: int
    power_cycles: int
    bytes_received_by_port: Mapping[int, int]


def check_loopback_host(host: str, *, field: str = "host") -> str:
    """Return ``host`` normalized if it is an IPv4 address in 127.0.0.0/8, else raise ConfigError."""
    try:
        address = ipaddress.IPv4Address(host)
    except (ipaddress.AddressValueError, ValueError, TypeError) as exc:
        raise ConfigError(f"{field}: {host!r} is not an IPv4 address") from exc
    if not address.is_loopback:
        raise ConfigError(f"{field}: {host} is outside 127.0.0.0/8 (the emulator serves on loopback only)")
    return str(address)


def _default_offset() -> int:
    return 0 if os.geteuid() == 0 else UNPRIVILEGED_PORT_OFFSET


def _check_seconds(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise ConfigError(f"{name}: must be a finite number of seconds >= 0, got {value!r}")
    return float(value)


class EmulatedDevice:
    """An emulated device serving its model's services on one loopback address.

    Use as an async context manager; the services listen from ``__aenter__`` until ``__aexit__``.

    Args:
        host: Loopback address (127.0.0.0/8) the device owns.
        model: Catalogue name or a :class:`DeviceModel`.
        seed: Seed of the per-boot threshold draws; ``None`` picks one at random (see :attr:`seed`).
        threshold: Overrides the model's threshold base (``>= 1``).
        jitter: Overrides the model's threshold jitter (``>= 0``).
        port_offset: Offset added to privileged ports (< 1024); default 0 as root, 10000 otherwise.
        boot_delay_s: Seconds between power-off and the services listening again.
        base_latency_s: Overrides the model's base response latency.
        slowdown_s_per_session: Overrides the model's linear slowdown.
        syn_watch: Run the SYN-scan watcher (a sniffer thread; root and scapy only) for a
            ``syn_sensitive`` model. ``None`` (default) means yes for a syn-sensitive model.

    Raises:
        ConfigError: a field is invalid (the message names it).
    """

    def __init__(
        self,
        host: str,
        *,
        model: str | DeviceModel = "infusion-pump",
        seed: int | None = None,
        threshold: int | None = None,
        jitter: int | None = None,
        port_offset: int | None = None,
        boot_delay_s: float | None = None,
        base_latency_s: float | None = None,
        slowdown_s_per_session: float | None = None,
        syn_watch: bool | None = None,
    ) -> None:
        self.host = check_loopback_host(host)
        base_model = get_model(model)
        overrides: dict[str, Any] = {}
        if threshold is not None:
            overrides["threshold"] = threshold
        if jitter is not None:
            overrides["jitter"] = jitter
        if base_latency_s is not None:
            overrides["base_latency_s"] = base_latency_s
        if slowdown_s_per_session is not None:
            overrides["slowdown_s_per_session"] = slowdown_s_per_session
        spec: FragilitySpec = (
            dataclasses.replace(base_model.fragility, **overrides) if overrides else base_model.fragility
        )
        self.model: DeviceModel = dataclasses.replace(base_model, fragility=spec) if overrides else base_model
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ConfigError(f"seed: must be an integer or None, got {seed!r}")
        #: The seed actually used (a random one when none was given), so a run can be replayed.
        self.seed: int = seed if seed is not None else random.SystemRandom().randrange(2**32)
        self.boot_delay_s = _check_seconds(
            "boot_delay_s", DEFAULT_BOOT_DELAY_S if boot_delay_s is None else boot_delay_s
        )
        offset = _default_offset() if port_offset is None else port_offset
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise ConfigError(f"port_offset: must be an integer >= 0, got {port_offset!r}")
        ports: dict[int, int] = {}
        for model_port in self.model.services:
            bound = model_port + offset if model_port < 1024 else model_port
            if bound > 65535:
                raise ConfigError(f"port_offset: {offset} puts port {model_port} at {bound}, above 65535")
            ports[model_port] = bound
        if len(set(ports.values())) != len(ports):
            raise ConfigError(f"port_offset: {offset} makes two of {self.model.name}'s ports collide")
        self.port_offset = offset
        #: Model port -> port actually bound.
        self.ports: Mapping[int, int] = types.MappingProxyType(ports)
        self._fm = FragilityModel(spec, random.Random(self.seed))
        self._bytes: dict[int, int] = dict.fromkeys(ports, 0)
        self._live: dict[anyio.CancelScope, int] = {}  # serving sessions' scopes -> model port
        self._held = 0  # connections this boot holds (served or stalled)
        # anyio primitives need a running event loop: created in __aenter__.
        self._held_changed: anyio.Event | None = None
        self._power_lock: anyio.Lock | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._boot_scope: anyio.CancelScope | None = None
        self._boot_done: anyio.Event | None = None
        self._firmware_changed = False
        self._log = log.bind(host=self.host, model=self.model.name)
        #: The half-open (SYN) scan watcher of a ``syn_sensitive`` model (None otherwise); inactive
        #: without root or scapy. See emulator/_synwatch.py.
        self.synwatch: SynWatch | None = None
        if syn_watch is not None and not isinstance(syn_watch, bool):
            raise ConfigError(f"syn_watch: must be a bool or None, got {syn_watch!r}")
        self._syn_watch = self.model.fragility.syn_sensitive if syn_watch is None else syn_watch

    def __repr__(self) -> str:
        return (
            f"EmulatedDevice(host={self.host!r}, model={self.model.name!r}, seed={self.seed}, "
            f"state={self.state.value!r}, threshold={self.threshold})"
        )

    # --- public state ----------------------------------------------------------------------------------
    def port(self, model_port: int) -> int:
        """Return the port actually bound for the model's ``model_port``."""
        try:
            return self.ports[model_port]
        except KeyError:
            raise ConfigError(
                f"model_port: {model_port} is not a port of {self.model.name} ({list(self.ports)})"
            ) from None

    @property
    def web_port(self) -> int:
        """Bound port of the model's web (heartbeat) port.

        Raises:
            ConfigError: the model has no web port.
        """
        if self.model.web_port is None:
            raise ConfigError(f"web_port: model {self.model.name} has no web port")
        return self.ports[self.model.web_port]

    @property
    def state(self) -> DeviceState:
        """UP, HUNG, BOOTING or OFF."""
        return self._fm.state

    @property
    def threshold(self) -> int | None:
        """This boot's crash threshold ``T`` (``None`` for a device that never hangs)."""
        return self._fm.threshold

    @property
    def spared_ports(self) -> frozenset[int]:
        """Model ports still answering while wedged (empty when up or fully hung)."""
        return self._fm.spared_ports if self._fm.state is DeviceState.HUNG else frozenset()

    @property
    def firmware_changed(self) -> bool:
        """Whether the device serves its post-crash banners (after a crash and a power cycle)."""
        return self._firmware_changed

    @property
    def stats(self) -> DeviceStats:
        """A snapshot of the counters."""
        c = self._fm.counters
        return DeviceStats(
            sessions_now=self._fm.sessions,
            peak_sessions=c.peak_sessions,
            sessions_served=c.sessions_served,
            connects_total=c.connects_total,
            crashes=c.crashes,
            attempts_while_hung=c.attempts_while_hung,
            power_cycles=c.power_cycles,
            bytes_received_by_port=types.MappingProxyType(dict(self._bytes)),
        )

    def connects_since(self, t: float) -> int:
        """Connection attempts accepted at or after instant ``t`` of the event loop's clock.

        That clock is ``anyio.current_time()`` (on asyncio: ``time.monotonic()``, virtual under
        ``fragileprobe.testing.run_virtual``).
        """
        return self._fm.connects_since(t)

    def response_delay_s(self) -> float:
        """The delay the device currently adds before each response."""
        return self._fm.response_delay_s()

    # --- control ---------------------------------------------------------------------------------------
    def hang(self, reason: str = "forced") -> None:
        """Hang the device now, as if its threshold had been reached (until :meth:`power_cycle`)."""
        if self._fm.hang(reason):
            self._on_hung()

    def wedge(self, except_ports: Collection[int] = ()) -> None:
        """Stop every service except the model ports in ``except_ports`` (cleared by a power cycle).

        Used by the SYN-scan watcher: a half-open scan wedges a SYN-sensitive device except its FTP.
        """
        for port in except_ports:
            if port not in self.ports:
                raise ConfigError(f"except_ports: {port} is not a port of {self.model.name}")
        if self._fm.wedge(except_ports):
            self._on_hung()

    async def power_cycle(self, *, boot_delay_s: float | None = None) -> None:
        """Power-cycle: reset every connection, refuse connects for the boot delay, come back up.

        Returns once the services listen again. The cycle itself runs in the device's own task: if the
        caller is cancelled (a recovery hook's timeout), the device still finishes booting rather than
        staying off for good.

        Args:
            boot_delay_s: Overrides the device's boot delay for this cycle.
        """
        delay = self.boot_delay_s if boot_delay_s is None else _check_seconds("boot_delay_s", boot_delay_s)
        if self._tg is None:
            raise RuntimeError("power_cycle() needs the device running (use it as an async context manager)")
        done = anyio.Event()
        self._tg.start_soon(self._cycle, delay, done)
        await done.wait()

    async def _cycle(self, delay_s: float, done: anyio.Event) -> None:
        assert self._power_lock is not None
        try:
            async with self._power_lock:
                crashed_before = self._fm.counters.crashes > 0
                await self._power_off()
                self._log.info("emulator.power_cycle", boot_delay_s=delay_s)
                await anyio.sleep(delay_s)
                if crashed_before and self.model.banners_after_crash:
                    self._firmware_changed = True
                await self._power_on()
        finally:
            done.set()

    # --- lifecycle -------------------------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        if self._tg is not None:
            raise RuntimeError("an EmulatedDevice can be entered only once")
        if self.port_offset and any(p < 1024 for p in self.ports):
            self._log.info(
                "emulator.port_offset",
                offset=self.port_offset,
                reason="not root" if os.geteuid() != 0 else "requested",
                ports=dict(self.ports),
            )
        self._held_changed = anyio.Event()
        self._power_lock = anyio.Lock()
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        started = False
        try:
            await self._power_on()
            if self._syn_watch and self.model.fragility.syn_sensitive:
                self.synwatch = SynWatch(self)
                await tg.start(self.synwatch.run)
            if self.model.flap_period_s is not None:
                tg.start_soon(self._flap, self.model.flap_period_s)
            started = True
        finally:
            if not started:
                # Binding failed (or we were cancelled): close the task group; the error propagates.
                tg.cancel_scope.cancel()
                self._tg = None
                await tg.__aexit__(None, None, None)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        tg = self._tg
        assert tg is not None
        self._fm.shutdown()
        tg.cancel_scope.cancel()
        try:
            # The body's exception (if any) is not handed to the task group: it would come back wrapped in
            # an ExceptionGroup (one level per device in a fleet). Returning None lets it propagate as is.
            await tg.__aexit__(None, None, None)
        finally:
            self._log.info("emulator.device_off")

    async def _power_on(self) -> None:
        assert self._tg is not None
        listeners: dict[int, anyio.abc.Listener[SocketStream]] = {}
        try:
            for model_port, bound in self.ports.items():
                listeners[model_port] = await anyio.create_tcp_listener(
                    local_host=self.host, local_port=bound
                )
        except OSError as exc:
            with anyio.CancelScope(shield=True):
                for listener in listeners.values():
                    await listener.aclose()
            raise ConfigError(
                f"port: cannot listen on {self.host}:{bound} for {self.model.name} port {model_port} "
                f"({exc.strerror or exc})",
                field="port",
            ) from exc
        threshold = self._fm.boot()
        self._held = 0
        scope = anyio.CancelScope()
        done = anyio.Event()
        self._boot_scope, self._boot_done = scope, done
        self._tg.start_soon(self._run_boot, listeners, scope, done)
        self._log.info("emulator.device_up", threshold=threshold, seed=self.seed, ports=dict(self.ports))

    async def _power_off(self) -> None:
        # Order matters: the model forgets its sessions first, so the handlers' closes below cannot
        # decrement a count that belongs to the next boot.
        self._fm.power_off()
        if self._boot_scope is not None and self._boot_done is not None:
            self._boot_scope.cancel()
            await self._boot_done.wait()

    async def _run_boot(
        self,
        listeners: Mapping[int, anyio.abc.Listener[SocketStream]],
        scope: anyio.CancelScope,
        done: anyio.Event,
    ) -> None:
        try:
            with scope:
                async with anyio.create_task_group() as tg:
                    for model_port, multi in listeners.items():
                        for listener in getattr(multi, "listeners", [multi]):
                            tg.start_soon(self._accept_loop, listener, model_port, tg)
        finally:
            with anyio.CancelScope(shield=True):
                for multi in listeners.values():
                    await multi.aclose()
            done.set()

    async def _flap(self, period_s: float) -> None:
        # A flapping device: up for a period, hung for a period, then rebooted (refusing while booting).
        while True:
            await anyio.sleep(period_s)
            self.hang("flap")
            await anyio.sleep(period_s)
            await self.power_cycle(boot_delay_s=min(self.boot_delay_s, period_s))

    # --- connections -----------------------------------------------------------------------------------
    def _notify_held(self) -> None:
        if self._held_changed is not None:
            self._held_changed.set()
        self._held_changed = anyio.Event()

    async def _accept_loop(self, listener: SocketListener, model_port: int, tg: anyio.abc.TaskGroup) -> None:
        while True:
            while not self._fm.answers(model_port) and self._held >= MAX_HELD_CONNECTIONS:
                assert self._held_changed is not None
                await self._held_changed.wait()
            try:
                stream = await _accept(listener)
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                return
            except OSError as exc:
                self._log.warning("emulator.accept_failed", port=model_port, error=str(exc))
                await anyio.sleep(_ACCEPT_RETRY_S)
                continue
            if stream is None:
                continue
            self._held += 1
            tg.start_soon(self._handle, stream, model_port)

    def _on_hung(self) -> None:
        fm = self._fm
        self._log.warning(
            "emulator.device_hung",
            reason=fm.hang_reason,
            sessions=fm.sessions,
            threshold=fm.threshold,
            spared_ports=sorted(fm.spared_ports),
        )
        for scope, port in list(self._live.items()):
            if port not in fm.spared_ports:
                scope.cancel()
        self._notify_held()

    def _count_bytes(self, model_port: int, n: int) -> None:
        self._bytes[model_port] += n

    async def _handle(self, stream: SocketStream, model_port: int) -> None:
        fm = self._fm
        was_up = fm.state is DeviceState.UP
        verdict = fm.on_connect(model_port, anyio.current_time())
        if was_up and fm.state is DeviceState.HUNG:
            self._on_hung()
        stalled = verdict is ConnectVerdict.STALL
        try:
            if not stalled:
                conn = ServiceConn(
                    stream,
                    port=model_port,
                    spec=self.model.services[model_port],
                    model=self.model,
                    delay_s=fm.response_delay_s,
                    on_bytes=lambda n: self._count_bytes(model_port, n),
                    firmware_changed=self._firmware_changed,
                )
                with anyio.CancelScope() as session_scope:
                    self._live[session_scope] = model_port
                    try:
                        await serve(conn)
                    except Exception:
                        # One misbehaving connection must not take the whole device (or fleet) down: log it
                        # and end this session. Cancellation is not an Exception and passes through.
                        self._log.exception("emulator.service_error", port=model_port)
                    finally:
                        self._live.pop(session_scope, None)
                stalled = session_scope.cancelled_caught
            if stalled:
                await self._stall(stream, model_port)
        finally:
            fm.on_close()
            self._held -= 1
            self._notify_held()
            with anyio.CancelScope(shield=True):
                if fm.state is DeviceState.BOOTING or fm.state is DeviceState.OFF:
                    # Power lost: the device forgets the connection; the peer's next segment meets RST.
                    abort_stream(stream)
                await stream.aclose()

    async def _stall(self, stream: SocketStream, model_port: int) -> None:
        """Hold a connection without ever answering; swallow (and count) what the client sends."""
        while True:
            try:
                data = await stream.receive(RECV_CHUNK)
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                return
            self._count_bytes(model_port, len(data))


class EmulatedPump(EmulatedDevice):
    """The infusion pump of the story: :class:`EmulatedDevice` with ``model="infusion-pump"`` by default.

    Serves FTP 21 (vsFTPd 2.3.4), SSH 22 (dropbear 0.52), Telnet 23 (BusyBox) and its status web server on
    8080; hangs at ``T`` uniform in {7, 8, 9} concurrent sessions.
    """


async def _accept(listener: SocketListener) -> SocketStream | None:
    """Accept one connection without ever losing the accepted socket to a cancellation.

    anyio's ``SocketListener.accept()`` can be cancelled after the kernel handed over the socket but before
    it is wrapped (``connect_accepted_socket`` awaits), and the socket is then dropped unclosed: a
    ``ResourceWarning`` at some later garbage collection. Power cycles cancel accept loops all the time, so
    the emulator waits for readiness (cancellable), accepts without blocking, and wraps the socket shielded.

    Returns:
        The new stream, or ``None`` when another waiter took the connection (or the client left) first.
    """
    raw = listener.extra(anyio.abc.SocketAttribute.raw_socket)
    await anyio.wait_readable(raw)
    try:
        conn, _addr = raw.accept()
    except (BlockingIOError, InterruptedError, ConnectionAbortedError):
        return None
    stream: SocketStream | None = None
    try:
        conn.setblocking(False)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with anyio.CancelScope(shield=True):
            try:
                stream = await anyio.abc.SocketStream.from_socket(conn)
            except ValueError:  # "the socket must be connected": the client reset it already (nmap -sT)
                return None
    finally:
        if stream is None:  # wrapping failed: the socket is still ours to close
            conn.close()
    return stream
