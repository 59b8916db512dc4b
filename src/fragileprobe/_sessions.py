"""Device-side session accounting: a slot is given back only when the device has let go.

A device cannot tell a probe we finished from one we cancelled, or a heartbeat from a probe: it holds a
session from its accept until it notices our close, and a service notices that only when it next reads
(a console that greets one second after the accept holds our session for that second, however early we
gave up on it). So :class:`DeviceSessions` charges a limiter slot from *before* the connect until the
device's FIN or RST has been seen, or a bounded linger has passed (then the connection is reset, so the
device's TCP stack frees it). Every way a session ends takes that path: a normal close, a read deadline, a
caller's cancellation or timeout, an exception in a caller's check, the watchdog's cancel, ``abort()``. The
caller is never delayed by it: the connection is handed to a background task of the ledger, which keeps the
slot charged while it waits.

Rules, and why:

* **Charged before the connect.** The SYN is the start of the device's session; a slot taken after it
  would let one more connect race past the ceiling.
* **Released on the device's FIN/RST, or after** ``linger_s``. The linger must be longer than the
  watchdog's detection bound (``interval_s + timeout_s``; the Guard checks it), so a device that hangs with
  our sessions open is declared down before a slot it still holds can be reused.
* **A failed connect releases at once**: refused means the device's stack answered RST and holds nothing;
  a cancelled or timed-out connect closes the socket, and the kernel answers a late SYN-ACK with RST.
* **Lingering is shielded from cancellation**, bounded by ``linger_s``, so cancelling a whole run cannot
  hand slots back early; leaving the ledger waits for the lingering sessions.
* **Abandoned when nothing more will be sent**: a Guard that closes while its device is declared down
  calls :meth:`DeviceSessions.abandon`, which resets the lingering sessions at once (a hung device sends no
  FIN, and no new session follows from this ledger, so waiting would protect nothing).

The counts (:class:`SessionStatistics`) are the device's side: ``device_sessions`` is every session the
device may hold from us now (connecting, open, or lingering), never more than the sum of the pools' ceilings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import structlog

from fragileprobe import _validate
from fragileprobe._errors import ScopeError
from fragileprobe._net import DEFAULT_NETWORK, Connection, Network, linger_close

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from types import TracebackType

    from anyio.abc import TaskGroup
    from structlog.typing import FilteringBoundLogger

    from fragileprobe._limiter import ConcurrencyLimiter

__all__ = [
    "DEFAULT_LINGER_S",
    "DISCOVERY_LINGER_S",
    "DeviceSessions",
    "SessionPool",
    "SessionStatistics",
    "Slot",
]

log = structlog.get_logger(__name__)

# How long a session stays charged after our close while the device has not closed its side. Healthy
# services answer our FIN within milliseconds; a console that greets after a second or two notices it after
# its greeting. Five seconds covers that and is longer than the default watchdog's detection bound
# (1 s interval + 2 s heartbeat timeout), as the rule above requires.
DEFAULT_LINGER_S = 5.0
# Discovery's linger: it runs no watchdog, so no detection bound applies; one session per host means a
# tarpit port costs one linger each before the next port. One second covers a service that notices our
# close at its next read after a late greeting (discovery waits at most its banner timeout for one).
DISCOVERY_LINGER_S = 1.0


def check_linger(value: float) -> float:
    """Validate a linger bound (a positive finite number of seconds)."""
    return _validate.positive("linger_s", value)


@dataclass(frozen=True, slots=True)
class SessionStatistics:
    """The device's side of a :class:`DeviceSessions`.

    Attributes:
        device_sessions: sessions the device may hold from us now: connecting, open, or waiting for the
            device to let go (the count every ceiling bounds).
        peak_device_sessions: the most there ever were at once.
        open_ours: sessions open on our side now (connected, not yet ended by us).
        lingering: sessions we ended that the device has not let go of yet.
        let_go: lingers that ended with the device's FIN or RST.
        linger_expired: lingers that reached ``linger_s`` first (the connection was then reset).
        linger_s_total: seconds spent lingering, summed over sessions.
        connects: connects started.
    """

    device_sessions: int
    peak_device_sessions: int
    open_ours: int
    lingering: int
    let_go: int
    linger_expired: int
    linger_s_total: float
    connects: int


class DeviceSessions:
    """The ledger of every session one device holds from us; an async context manager.

    Args:
        address: the device's (scope-checked) address; connections anywhere else are refused.
        linger_s: most seconds a session stays charged after our close while the device has not let go.
        network: how connections are made (default: real sockets).
        logger: structlog logger (default: this module's, with the address bound).

    Use :meth:`pool` to get the slots of a limiter accounted here (a Guard has two: work and heartbeat).
    """

    def __init__(
        self,
        address: str,
        *,
        linger_s: float = DEFAULT_LINGER_S,
        network: Network | None = None,
        logger: FilteringBoundLogger | None = None,
    ) -> None:
        self._address = address
        self._linger_s = check_linger(linger_s)
        self._network: Network = network if network is not None else DEFAULT_NETWORK
        if not callable(getattr(self._network, "connect", None)):
            raise _validate.fail("network", "an object with a connect(host, port) method", self._network)
        self._log: FilteringBoundLogger = logger if logger is not None else log.bind(host=address)
        self._tg: TaskGroup | None = None
        self._device = 0
        self._peak = 0
        self._open = 0
        self._lingering = 0
        self._let_go = 0
        self._expired = 0
        self._linger_total = 0.0
        self._connects = 0
        self._lingers: set[anyio.CancelScope] = set()
        self._abandoned = False

    def __repr__(self) -> str:
        return (
            f"DeviceSessions({self._address!r}, linger_s={self._linger_s:g}, "
            f"device_sessions={self._device}, network={self._network!r})"
        )

    @property
    def address(self) -> str:
        return self._address

    @property
    def linger_s(self) -> float:
        return self._linger_s

    @property
    def network(self) -> Network:
        """The network below the ledger (what connections are made with)."""
        return self._network

    @property
    def device_sessions(self) -> int:
        return self._device

    def statistics(self) -> SessionStatistics:
        return SessionStatistics(
            device_sessions=self._device,
            peak_device_sessions=self._peak,
            open_ours=self._open,
            lingering=self._lingering,
            let_go=self._let_go,
            linger_expired=self._expired,
            linger_s_total=self._linger_total,
            connects=self._connects,
        )

    async def __aenter__(self) -> DeviceSessions:
        if self._tg is not None:
            raise RuntimeError("DeviceSessions is already entered")
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        tg, self._tg = self._tg, None
        if tg is None:
            return None
        # The linger tasks are shielded and bounded by linger_s: this waits for the device to let go of
        # every session before the ledger is gone, even when the caller is being cancelled. The caller's
        # exception is not handed to the task group: it has nothing to do with the lingers, and a task group
        # that re-raised the very exception an exit stack is unwinding would link it into its own context
        # chain (a cycle anyio's task bookkeeping then walks for ever). It propagates on its own.
        await tg.__aexit__(None, None, None)
        return None

    def pool(self, limiter: ConcurrencyLimiter, *, gate: Callable[[], None] | None = None) -> SessionPool:
        """The slots of ``limiter``, accounted here. ``gate`` runs synchronously right before each connect
        (a Guard's down check: it raises to refuse)."""
        return SessionPool(self, limiter, gate)

    # --- the connection lifecycle ----------------------------------------------------------------------

    async def _connect(self, pool: SessionPool, port: int, release: Callable[[], None]) -> HeldConnection:
        """Connect under a slot already charged by the caller; ``release`` gives the slot back later."""
        if pool.gate is not None:
            pool.gate()  # synchronous, with no await before the connect: nothing slips past a declaration
        self._device += 1
        pool.device += 1
        self._connects += 1
        self._peak = max(self._peak, self._device)
        connected = False
        try:
            conn = await self._network.connect(self._address, port)
            connected = True
        finally:
            if not connected:  # refused, failed, timed out or cancelled: the device holds nothing
                self._device -= 1
                pool.device -= 1
                pool.maybe_idle()
        self._open += 1
        pool.open += 1
        return HeldConnection(conn, self, pool, release)

    def _end(self, conn: Connection, pool: SessionPool, release: Callable[[], None]) -> None:
        """Our side is done with ``conn`` (normally or not): linger in the background, then release."""
        self._open -= 1
        pool.open -= 1
        self._lingering += 1
        pool.lingering += 1
        if self._tg is None:
            # Not inside the ledger (a bug in the caller, or after exit): reset so the device's stack frees
            # the connection now, rather than release a slot the device may still hold.
            self._log.warning("sessions.linger_outside_ledger", port=conn.port)
            conn.abort()
            self._done(pool, release, seen=False, lingered_s=0.0)
            return
        self._tg.start_soon(self._linger, conn, pool, release)

    async def _linger(self, conn: Connection, pool: SessionPool, release: Callable[[], None]) -> None:
        seen, lingered = False, 0.0
        started = anyio.current_time()
        own = anyio.CancelScope()
        try:
            with anyio.CancelScope(shield=True), own:
                # `own` is cancelled only by abandon(); outside cancellation cannot reach through the shield.
                self._lingers.add(own)
                if self._abandoned:
                    own.cancel()
                result = await linger_close(conn, self._linger_s)
                seen, lingered = result.seen, result.lingered_s
            if own.cancelled_caught:
                lingered = anyio.current_time() - started
                self._log.info("sessions.linger_abandoned", port=conn.port)
            elif not seen:
                self._log.info("sessions.linger_expired", port=conn.port, linger_s=self._linger_s)
        finally:
            self._lingers.discard(own)
            self._done(pool, release, seen=seen, lingered_s=lingered)

    def abandon(self) -> None:
        """Reset every lingering session now, and every later one at once (nothing more will be sent
        through this ledger: its device is declared down and its owner is closing)."""
        self._abandoned = True
        for scope in list(self._lingers):
            scope.cancel()

    def _done(self, pool: SessionPool, release: Callable[[], None], *, seen: bool, lingered_s: float) -> None:
        self._lingering -= 1
        pool.lingering -= 1
        self._device -= 1
        pool.device -= 1
        self._linger_total += lingered_s
        if seen:
            self._let_go += 1
        else:
            self._expired += 1
        release()
        pool.maybe_idle()


class SessionPool:
    """The slots of one limiter, each charged until the device has let go of its connection.

    ``network`` connects under a fresh slot (waiting for one); :meth:`slot` charges a slot first, for work
    that connects later (a Guard's ``run``).
    """

    __slots__ = ("_idle", "device", "gate", "limiter", "lingering", "open", "sessions")

    def __init__(
        self, sessions: DeviceSessions, limiter: ConcurrencyLimiter, gate: Callable[[], None] | None
    ) -> None:
        self.sessions = sessions
        self.limiter = limiter
        self.gate = gate
        self.device = 0  # this pool's sessions the device may hold: connecting, open or lingering
        self.open = 0  # this pool's connections open on our side
        self.lingering = 0  # this pool's connections we ended that the device has not let go of
        self._idle = anyio.Event()

    @property
    def held(self) -> int:
        """This pool's sessions the device holds now: established and not yet let go."""
        return self.open + self.lingering

    def maybe_idle(self) -> None:
        if self.device == 0:
            self._idle.set()
            self._idle = anyio.Event()

    async def wait_idle(self) -> None:
        """Return once the device holds no session of this pool (every linger of it has ended).

        Per pool, so that a steady heartbeat (whose pool is never idle for long) cannot starve a wait for
        the work's sessions.
        """
        while self.device:
            await self._idle.wait()

    @property
    def network(self) -> Network:
        """A :class:`~fragileprobe._net.Network` whose every connection takes (and keeps) one slot."""
        return _PoolNetwork(self)

    async def slot(self) -> Slot:
        """Charge one slot (waiting for it); give it back with :meth:`Slot.release`."""
        token = await self.limiter.acquire()
        return Slot(self, token)

    async def connect(self, host: str, port: int) -> HeldConnection:
        slot = await self.slot()
        try:
            return await slot.connect(host, port)
        finally:
            slot.release()  # the connection keeps its own reference until the device lets go


class Slot:
    """One charged slot: released when its owner is done *and* its connection has been let go.

    Its :attr:`network` puts the first connection at a time on this slot; a second connection made while
    the first is still held takes a slot of its own from the pool.
    """

    __slots__ = ("_attached", "_owner", "_refs", "_token", "pool")

    def __init__(self, pool: SessionPool, token: object) -> None:
        self.pool = pool
        self._token = token
        self._refs = 1  # the owner's reference; each connection on the slot adds one
        self._owner = True
        self._attached = False

    @property
    def network(self) -> Network:
        return _SlotNetwork(self)

    def release(self) -> None:
        """The owner is done (idempotent); the slot returns once its connection is let go too."""
        if self._owner:
            self._owner = False
            self._unref()

    def _unref(self) -> None:
        self._refs -= 1
        if self._refs == 0:
            self.pool.limiter.release(self._token)

    async def connect(self, host: str, port: int) -> HeldConnection:
        sessions = self.pool.sessions
        if host != sessions.address:
            raise ScopeError(
                f"a session of the guarded device {sessions.address} may not connect to {host}: "
                "every connection goes to the scope-checked address"
            )
        if self._attached:
            return await self.pool.connect(host, port)
        self._attached = True
        self._refs += 1

        def release() -> None:
            self._attached = False
            self._unref()

        held: HeldConnection | None = None
        try:
            held = await sessions._connect(self.pool, port, release)
            return held
        finally:
            if held is None:  # no connection: the slot is free again for this owner's next one
                release()


class _PoolNetwork:
    __slots__ = ("_pool",)

    def __init__(self, pool: SessionPool) -> None:
        self._pool = pool

    def __repr__(self) -> str:
        return f"SessionPool.network({self._pool.sessions.address})"

    async def connect(self, host: str, port: int) -> Connection:
        return await self._pool.connect(host, port)


class _SlotNetwork:
    __slots__ = ("_slot",)

    def __init__(self, slot: Slot) -> None:
        self._slot = slot

    async def connect(self, host: str, port: int) -> Connection:
        return await self._slot.connect(host, port)


class HeldConnection:
    """A connection whose slot stays charged until the device has let go; ``close``/``abort`` hand it to the
    ledger's background linger instead of closing here, so the caller goes on at once."""

    __slots__ = ("_conn", "_ended", "_pool", "_release", "_sessions")

    def __init__(
        self, conn: Connection, sessions: DeviceSessions, pool: SessionPool, release: Callable[[], None]
    ) -> None:
        self._conn = conn
        self._sessions = sessions
        self._pool = pool
        self._release = release
        self._ended = False

    def __repr__(self) -> str:
        return f"HeldConnection({self._conn!r}, ended={self._ended})"

    @property
    def address(self) -> str:
        return self._conn.address

    @property
    def port(self) -> int:
        return self._conn.port

    async def receive(self, max_bytes: int) -> bytes:
        return await self._conn.receive(max_bytes)

    async def send(self, data: bytes) -> None:
        await self._conn.send(data)

    def send_eof(self) -> None:
        self._conn.send_eof()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:  # anyio's signature: values of any type
        """The underlying connection's typed attributes (a socket's addresses), if it has any."""
        extra: Mapping[Any, Callable[[], Any]] = getattr(self._conn, "extra_attributes", {})
        return extra

    def end(self) -> None:
        """Our side is done (idempotent): the ledger lingers, then gives the slot back."""
        if self._ended:
            return
        self._ended = True
        self._sessions._end(self._conn, self._pool, self._release)

    close = end
    abort = end
