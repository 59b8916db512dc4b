"""``fragileprobe demo``: the story on an emulated infusion pump, in-process on loopback.

Stage 1 of the README's main job: start an emulated pump, show its services and banners, show its response
time rising with load, drive it into a hang at its threshold, show that it stays hung (the heartbeat fails
even after every session is closed), power-cycle it and show it back. The logic lives here and reports
:class:`DemoEvent` records through a callback; the CLI only prints them.

The demo talks to the pump with fragileprobe's own probes (``tcp_connect``, ``grab_banner``, ``http_get``
and ``open_stream`` for the sessions it holds), so every read is bounded.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio

from fragileprobe._errors import ConfigError, ProbeError
from fragileprobe._probes import Outcome, grab_banner, http_get, open_stream, tcp_connect
from fragileprobe.emulator._device import EmulatedPump, check_loopback_host
from fragileprobe.emulator._fragility import DeviceState, threshold_bounds

if TYPE_CHECKING:
    from collections.abc import Callable

    from fragileprobe._probes import ProbeStream

__all__ = ["DemoEvent", "DemoResult", "run_demo"]

# The heartbeat's deadline during the demo: the pump answers in a few ms when healthy, so half a second of
# silence means it is hung (a real watchdog would use a longer bound; the demo must stay short).
HEARTBEAT_TIMEOUT_S = 0.5
# Most sessions the demo opens while looking for the crash: above every threshold the pump can draw.
MAX_DEMO_SESSIONS = 20
# Loads at which the demo measures the heartbeat latency (probe sessions held, plus the heartbeat).
LATENCY_LOADS = (0, 2, 4, 5)
# Random demo addresses come from 127.200.0.0/16, away from the test fixtures' 127.64.0.0/10.
_DEMO_NET = "127.200"
_BIND_ATTEMPTS = 5


@dataclass(frozen=True, slots=True)
class DemoEvent:
    """One thing the demo reports. ``kind``: "section", "info", "ok", "warn" or "row"."""

    kind: str
    text: str


@dataclass(frozen=True, slots=True)
class DemoResult:
    """What the demo found."""

    host: str
    seed: int
    threshold: int | None  # the pump's drawn threshold on the first boot (ground truth)
    banners: dict[int, str] = field(default_factory=dict)
    latency_by_load_s: tuple[tuple[int, float], ...] = ()
    hung_at_sessions: int | None = None  # concurrent sessions (probes + heartbeat) when it stopped answering
    stayed_hung: bool = False
    refused_while_booting: bool = False
    recovered: bool = False
    threshold_after_cycle: int | None = None
    wall_time_s: float = 0.0


def _printable(data: bytes) -> str:
    """Banner bytes as one readable line (telnet negotiation shown as <IAC...>)."""
    out = []
    for byte in data[:200]:
        if 32 <= byte < 127:
            out.append(chr(byte))
        elif byte in (10, 13):
            out.append(" ")
        else:
            out.append(f"<{byte:02x}>")
    return " ".join("".join(out).split())


async def _heartbeat(host: str, port: int) -> tuple[bool, float]:
    """GET / on the web port: (answered 200, seconds until the whole response was in)."""
    bound = HEARTBEAT_TIMEOUT_S
    result = await http_get(host, port, "/", timeout_s=bound, total_timeout_s=bound)
    return result.outcome is Outcome.OPEN and result.status == 200, result.duration_s


async def _wait_for(predicate: Callable[[], bool], timeout_s: float) -> None:
    """Poll ``predicate`` (the emulator exposes state, not events) for at most ``timeout_s``."""
    for _ in range(int(timeout_s / 0.005)):
        if predicate():
            return
        await anyio.sleep(0.005)


async def _open_session(host: str, port: int) -> ProbeStream:
    stream = await open_stream(host, port, timeout_s=HEARTBEAT_TIMEOUT_S)
    # Read the FTP greeting so the session is really established on the device side.
    with anyio.move_on_after(HEARTBEAT_TIMEOUT_S):
        await stream.receive(512)
    return stream


def _random_host() -> str:
    return f"{_DEMO_NET}.{secrets.randbelow(254) + 1}.{secrets.randbelow(253) + 2}"


async def run_demo(
    *,
    emit: Callable[[DemoEvent], None],
    host: str | None = None,
    seed: int = 2026,
    boot_delay_s: float = 1.0,
    port_offset: int | None = None,
) -> DemoResult:
    """Run the demo against an in-process emulated pump and report through ``emit``.

    Args:
        emit: Called with every :class:`DemoEvent`, in order.
        host: Loopback address for the pump (default: a random one in 127.200.0.0/16).
        seed: Seed of the pump's threshold draws.
        boot_delay_s: The pump's boot delay after a power cycle.
        port_offset: Offset for privileged ports (default: 0 as root, 10000 otherwise).

    Raises:
        ConfigError: a bad argument (the message names it).
    """
    started = time.monotonic()
    if host is not None:
        check_loopback_host(host)
    for attempt in range(_BIND_ATTEMPTS):
        address = host or _random_host()
        pump = EmulatedPump(address, seed=seed, boot_delay_s=boot_delay_s, port_offset=port_offset)
        try:
            async with pump:
                return await _story(pump, emit, started)
        except ConfigError as exc:
            # A random address already in use by someone else: try another one.
            if host is not None or not str(exc).startswith("port:") or attempt == _BIND_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


async def _story(pump: EmulatedPump, emit: Callable[[DemoEvent], None], started: float) -> DemoResult:
    host = pump.host
    model = pump.model
    first_threshold = pump.threshold
    bounds = threshold_bounds(model.fragility)
    emit(DemoEvent("section", f"An emulated {model.product} on {host}"))
    ports = ", ".join(f"{p}->{b}" if p != b else str(p) for p, b in pump.ports.items())
    offset_note = "" if pump.port_offset == 0 else f" (ports below 1024 at +{pump.port_offset}: not root)"
    emit(DemoEvent("info", f"{model.vendor}; ports {ports}{offset_note}"))
    if bounds is not None:
        emit(
            DemoEvent(
                "info",
                f"It hangs when it holds T concurrent sessions, T drawn per boot uniformly from "
                f"{bounds[0]}..{bounds[1]} (seed {pump.seed}); this boot T = {pump.threshold}.",
            )
        )

    # 1. services and banners
    emit(DemoEvent("section", "1. Services and banners (one connection at a time)"))
    banners: dict[int, str] = {}
    for model_port in model.ports:
        port = pump.port(model_port)
        if model_port == model.web_port:
            result = await http_get(host, port, "/")
            text = f"HTTP {result.status} Server: {result.server!s}; title: {result.title!s}"
        else:
            probe = await grab_banner(host, port, read_timeout_s=1.0)
            text = _printable(probe.data) or f"({probe.outcome.value})"
        banners[model_port] = text
        emit(DemoEvent("row", f"{model_port:>5}/tcp  {model.services[model_port].kind:<7} {text}"))

    # 2. latency under load
    emit(DemoEvent("section", "2. Heartbeat latency as load rises (sessions held open on FTP)"))
    latencies: list[tuple[int, float]] = []
    held: list[ProbeStream] = []
    try:
        for load in LATENCY_LOADS:
            while len(held) < load:
                held.append(await _open_session(host, pump.port(21)))
            ok, latency = await _heartbeat(host, pump.web_port)
            latencies.append((load, latency))
            emit(
                DemoEvent(
                    "row" if ok else "warn",
                    f"{load} sessions + 1 heartbeat = {load + 1}: GET / in {latency * 1000:6.1f} ms"
                    + ("" if ok else "  (no answer!)"),
                )
            )
    finally:
        for stream in held:
            await stream.aclose()
        held.clear()
    await _wait_for(lambda: pump.stats.sessions_now == 0, 2.0)

    # 3. the crash
    emit(DemoEvent("section", "3. More sessions, one at a time, heartbeat after each"))
    hung_at: int | None = None
    try:
        for count in range(1, MAX_DEMO_SESSIONS + 1):
            try:
                held.append(await _open_session(host, pump.port(21)))
            except ProbeError as exc:
                emit(DemoEvent("warn", f"session {count}: {exc}"))
                hung_at = count
                break
            ok, latency = await _heartbeat(host, pump.web_port)
            if ok:
                emit(DemoEvent("row", f"{count} sessions + heartbeat: answered in {latency * 1000:6.1f} ms"))
                continue
            hung_at = count + 1
            emit(
                DemoEvent(
                    "warn",
                    f"{count} sessions + heartbeat = {count + 1}: no answer within "
                    f"{HEARTBEAT_TIMEOUT_S} s. The pump is {pump.state.value.upper()}.",
                )
            )
            break
    finally:
        for stream in held:
            await stream.aclose()
        held.clear()

    # 4. stays hung
    emit(DemoEvent("section", "4. Every session closed: does it come back by itself?"))
    await anyio.sleep(1.0)
    ok, _ = await _heartbeat(host, pump.web_port)
    stayed_hung = not ok and pump.state is DeviceState.HUNG
    emit(
        DemoEvent(
            "warn" if stayed_hung else "ok",
            "No: the heartbeat still fails one second later; only a power cycle helps."
            if stayed_hung
            else "It answers again.",
        )
    )
    stats = pump.stats
    emit(
        DemoEvent(
            "info",
            f"peak sessions {stats.peak_sessions}, crashes {stats.crashes}, "
            f"connection attempts while hung {stats.attempts_while_hung}",
        )
    )

    # 5. power cycle
    emit(DemoEvent("section", f"5. Power cycle (boot delay {pump.boot_delay_s} s)"))
    refused = False
    async with anyio.create_task_group() as tg:
        tg.start_soon(pump.power_cycle)
        await _wait_for(lambda: pump.state is DeviceState.BOOTING, 2.0)
        if pump.state is DeviceState.BOOTING:
            probe = await tcp_connect(host, pump.web_port, timeout_s=HEARTBEAT_TIMEOUT_S)
            refused = probe.outcome is Outcome.CLOSED
            emit(DemoEvent("row", f"while booting: connect to the web port -> {probe.outcome.value}"))
    ok, latency = await _heartbeat(host, pump.web_port)
    emit(
        DemoEvent(
            "ok" if ok else "warn",
            f"after boot: GET / -> {'200 OK' if ok else 'no answer'} in {latency * 1000:.1f} ms; "
            f"new threshold T = {pump.threshold}",
        )
    )

    # summary
    emit(DemoEvent("section", "What this means"))
    if bounds is not None:
        safe = bounds[0] - 1
        emit(
            DemoEvent(
                "info",
                f"This model hangs somewhere in {bounds[0]}..{bounds[1]} concurrent sessions. A scanner "
                f"must stay at or below {safe} including its own heartbeat: at most {safe - 1} probe "
                "sessions plus 1 heartbeat. fragileprobe enforces such a ceiling and stops the moment the "
                "heartbeat fails.",
            )
        )
    return DemoResult(
        host=host,
        seed=pump.seed,
        threshold=first_threshold,
        banners=banners,
        latency_by_load_s=tuple(latencies),
        hung_at_sessions=hung_at,
        stayed_hung=stayed_hung,
        refused_while_booting=refused,
        recovered=ok,
        threshold_after_cycle=pump.threshold,
        wall_time_s=time.monotonic() - started,
    )
