"""The prober against hostile devices: every layer (probes, Guard, characterize, discover) ends within its
time bound, with a truthful outcome and bounded memory, whatever the device does.

The hostile devices are the emulator's own behaviours (``ServiceSpec(kind=...)``: mute, drip, flood, reset,
reset-mid-banner, http-bad-status, http-endless-headers, http-endless-chunked) and model options
(``banners_after_crash``: firmware changed across a crash; ``flap_period_s``: up and down by itself). Each
test builds a variant of the infusion pump whose services misbehave, on its own loopback address.
tests/test_probes.py covers the probes against hand-written hostile peers byte by byte; here the point is
the whole stack against an emulated device.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
import tracemalloc
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from structlog.testing import capture_logs

from _support.timings import FAST_CHARACTERIZE
from fragileprobe import (
    DeviceDownError,
    Guard,
    HttpHeartbeat,
    HttpResult,
    Outcome,
    ProbeError,
    ProbeTimeoutError,
    RecoveryError,
    Scope,
    Target,
    grab_banner,
    http_get,
    tcp_connect,
)
from fragileprobe._characterize import characterize
from fragileprobe._discovery_run import discover
from fragileprobe._recovery import emulator_recovery
from fragileprobe._sessions import DISCOVERY_LINGER_S
from fragileprobe._store import ProfileStore
from fragileprobe.emulator import MODELS, DeviceModel, DeviceState, EmulatedDevice, ServiceSpec

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from pathlib import Path

PUMP = MODELS["infusion-pump"]

BANNER_KINDS = ("mute", "drip", "flood", "reset", "reset-mid-banner")
HTTP_KINDS = ("http-bad-status", "http-endless-headers", "http-endless-chunked")
HOSTILE_KINDS = BANNER_KINDS + HTTP_KINDS

# Probe bounds used throughout: short, so each hostile case costs well under a second.
CONNECT_S, READ_S, TOTAL_S = 0.5, 0.3, 0.8
# Slack on top of a bound for scheduling on a loaded 2-core machine (never the thing being measured).
SLACK_S = 2.0
# A probe's whole memory use while facing a flood: results are capped at a few KiB, buffers at 64 KiB;
# 4 MiB leaves room for the emulator's own chunks and anyio's internals while catching any buffering of the
# flood (8 MiB by default).
PROBE_PEAK_BYTES = 4 << 20

CHAR_TIMINGS: dict[str, Any] = FAST_CHARACTERIZE


def hostile_model(kind: str, *, web: str = "http", name: str | None = None, **spec: Any) -> DeviceModel:
    """The pump with ``kind`` on its FTP, SSH and Telnet ports and ``web`` on 8080."""
    banner = spec.pop("banner", b"220 (vsFTPd 2.3.4)\r\n")
    services = {p: ServiceSpec(kind=kind, banner=banner, **spec) for p in (21, 22, 23)}
    web_spec = PUMP.services[8080] if web == "http" else ServiceSpec(kind=web, banner=banner)
    services[8080] = web_spec
    return dataclasses.replace(PUMP, name=name or f"hostile-{kind}-{web}", services=services)


@contextlib.asynccontextmanager
async def device(host: str, model: DeviceModel, **kw: Any) -> AsyncIterator[EmulatedDevice]:
    async with EmulatedDevice(host, model=model, seed=1, boot_delay_s=0.05, **kw) as dev:
        yield dev


def target_of(dev: EmulatedDevice, ports: tuple[int, ...] | None = None) -> Target:
    return Target(
        dev.host,
        ports=ports or tuple(dev.ports.values()),
        heartbeat=HttpHeartbeat(port=dev.web_port, timeout_s=0.25),
    )


async def timed(coro: Any) -> tuple[Any, float, int]:
    """Await ``coro``; return its result, its wall time and the peak traced memory while it ran."""
    tracemalloc.start()
    try:
        t0 = time.monotonic()
        result = await coro
        elapsed = time.monotonic() - t0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, elapsed, peak


# --- probes -----------------------------------------------------------------------------------------------

BANNER_EXPECTED = {
    # kind: outcomes that tell the truth about what the device did
    "mute": {Outcome.OPEN},  # accepted, said nothing: open and empty
    "drip": {Outcome.OPEN, Outcome.TIMEOUT},  # a few bytes before the deadline
    "flood": {Outcome.OPEN},  # truncated at the cap
    "reset": {Outcome.RESET, Outcome.CLOSED},
    "reset-mid-banner": {Outcome.RESET},
}


@pytest.mark.parametrize("kind", BANNER_KINDS)
async def test_banner_grab_against_hostile_service_is_bounded_and_truthful(
    loopback_host: str, kind: str
) -> None:
    async with device(loopback_host, hostile_model(kind)) as dev:
        with anyio.fail_after(TOTAL_S + 5):
            res, elapsed, peak = await timed(
                grab_banner(
                    dev.host,
                    dev.port(21),
                    timeout_s=CONNECT_S,
                    read_timeout_s=READ_S,
                    total_timeout_s=TOTAL_S,
                )
            )
    assert elapsed <= TOTAL_S + SLACK_S, (kind, elapsed)
    assert res.outcome in BANNER_EXPECTED[kind], (kind, res)
    assert len(res.data) <= 1024
    assert peak < PROBE_PEAK_BYTES, (kind, peak)
    if kind == "mute":
        assert res.data == b""
    if kind == "drip":
        assert len(res.data) <= 2, "one byte a second: at most a byte or two within the bound"
    if kind == "flood":
        assert res.truncated
        assert len(res.data) == 1024
    if kind in ("reset", "reset-mid-banner"):
        assert res.error


HTTP_EXPECTED = {
    "mute": {Outcome.TIMEOUT},
    "drip": {Outcome.TIMEOUT, Outcome.PROTOCOL_ERROR},
    "flood": {Outcome.PROTOCOL_ERROR},
    "reset": {Outcome.RESET, Outcome.CLOSED, Outcome.PROTOCOL_ERROR},
    "reset-mid-banner": {Outcome.RESET, Outcome.PROTOCOL_ERROR},
    "http-bad-status": {Outcome.PROTOCOL_ERROR},
    "http-endless-headers": {Outcome.PROTOCOL_ERROR, Outcome.TIMEOUT},
    "http-endless-chunked": {Outcome.OPEN, Outcome.PROTOCOL_ERROR, Outcome.TIMEOUT},
}


@pytest.mark.parametrize("kind", HOSTILE_KINDS)
async def test_http_get_against_hostile_web_server_is_bounded_and_truthful(
    loopback_host: str, kind: str
) -> None:
    async with device(loopback_host, hostile_model("banner", web=kind)) as dev:
        with anyio.fail_after(TOTAL_S + 5):
            res, elapsed, peak = await timed(
                http_get(
                    dev.host,
                    dev.web_port,
                    timeout_s=CONNECT_S,
                    read_timeout_s=READ_S,
                    total_timeout_s=TOTAL_S,
                    max_bytes=4096,
                )
            )
    assert isinstance(res, HttpResult)
    assert elapsed <= TOTAL_S + SLACK_S, (kind, elapsed)
    assert res.outcome in HTTP_EXPECTED[kind], (kind, res.outcome, res.error)
    assert len(res.data) <= 16384 + 4096
    assert len(res.body) <= 4096
    assert peak < PROBE_PEAK_BYTES, (kind, peak)
    if kind == "http-bad-status":
        assert res.status is None, "a malformed status line is not turned into a status"
    if kind == "http-endless-chunked" and res.outcome is Outcome.OPEN:
        assert res.status == 200
        assert res.truncated, "an endless body is reported cut short, not complete"


async def test_our_sends_to_a_device_that_never_reads_are_bounded(loopback_host: str) -> None:
    """Accepts, never reads: once the receive window is full our send would block for ever. Every send
    fragileprobe makes on its own (a banner probe's wake bytes, an HTTP request) ends at its deadline."""
    async with device(loopback_host, hostile_model("mute", web="mute")) as dev:
        with anyio.fail_after(TOTAL_S * 3 + 5):
            t0 = time.monotonic()
            res = await grab_banner(
                dev.host,
                dev.port(21),
                send=b"x" * 1024,
                timeout_s=CONNECT_S,
                read_timeout_s=READ_S,
                total_timeout_s=TOTAL_S,
            )
            banner_s = time.monotonic() - t0
            t0 = time.monotonic()
            http = await http_get(
                dev.host, dev.web_port, timeout_s=CONNECT_S, read_timeout_s=READ_S, total_timeout_s=TOTAL_S
            )
            http_s = time.monotonic() - t0
    assert banner_s <= TOTAL_S + SLACK_S
    assert http_s <= TOTAL_S + SLACK_S
    assert res.outcome in (Outcome.TIMEOUT, Outcome.OPEN, Outcome.PROTOCOL_ERROR), res
    assert http.outcome is Outcome.TIMEOUT


async def test_a_tools_own_sends_on_a_guarded_stream_are_bounded_too(loopback_host: str) -> None:
    """Another tool sending through ``guard.connect`` to a device that never reads: once the receive
    window is full the send ends with ProbeTimeoutError after the stream's send bound (it used to block for
    ever: the heartbeat stays healthy, so no watchdog would have cancelled it). The device never closes its
    side, so the slot stays charged for the linger bound, and comes back then (the connection reset)."""
    async with device(loopback_host, hostile_model("mute")) as dev:
        with capture_logs(), anyio.fail_after(10):
            async with Guard(
                target_of(dev), ceiling=2, scope=Scope([dev.host]), interval_s=0.1, linger_s=0.5
            ) as guard:

                async def stuff_it() -> None:
                    async with guard.connect(dev.port(21)) as stream:
                        stream.send_timeout_s = 0.5
                        for _ in range(10_000):  # 640 MB: far beyond any socket buffer
                            await stream.send(b"x" * 65536)

                t0 = time.monotonic()
                with pytest.raises(ProbeTimeoutError, match=rf"send to {dev.host}.*not reading"):
                    await stuff_it()
                elapsed = time.monotonic() - t0
                assert guard.limiter.in_flight == 1  # the device has not let go: still charged
                await guard.wait_let_go()
                assert guard.limiter.in_flight == 0
                assert guard.stats.linger_expired == 1
                assert not guard.device_down
    assert elapsed < 0.5 + SLACK_S + 1.0


async def test_tcp_connect_is_indifferent_to_what_the_service_does(loopback_host: str) -> None:
    """A plain connect + close: open for every hostile kind that accepts (nothing is read)."""
    async with device(loopback_host, hostile_model("flood")) as dev:
        results = [await tcp_connect(dev.host, dev.port(p), timeout_s=CONNECT_S) for p in (21, 22, 23)]
    assert all(r.outcome is Outcome.OPEN and r.data == b"" for r in results), results


# --- Guard ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["mute", "drip", "reset", "http-bad-status", "http-endless-headers"])
async def test_guard_whose_heartbeat_port_is_hostile_refuses_at_entry(loopback_host: str, kind: str) -> None:
    """A web port that misbehaves is no sign of life: the Guard refuses at entry with DeviceDownError
    naming the device, within the heartbeat timeout (never a hang, never a false "healthy")."""
    async with device(loopback_host, hostile_model("banner", web=kind)) as dev:
        with capture_logs(), anyio.fail_after(5):
            t0 = time.monotonic()
            with pytest.raises(DeviceDownError, match=dev.host):
                async with Guard(target_of(dev), ceiling=2, scope=Scope([dev.host]), interval_s=0.05):
                    pass  # pragma: no cover - never entered
            elapsed = time.monotonic() - t0
    assert elapsed <= 0.25 + SLACK_S


@pytest.mark.parametrize("kind", BANNER_KINDS)
async def test_guard_probes_against_hostile_services_release_every_slot(
    loopback_host: str, kind: str
) -> None:
    """Many guarded probes and raw sessions against a hostile service (healthy web port): each ends within
    its bound, the device never holds more than the ceiling while it is counted, and every slot comes back.

    A service that never reads (mute) or reads only between slow sends (drip) does not notice our close: its
    slot stays charged for the linger bound, then the connection is reset. The emulated pump goes on
    counting a session it never reads even after the reset (a device that ignores RST), so it can still go
    down; then the truthful outcome is the watchdog's: declared down, work cancelled, the rest refused."""
    async with device(loopback_host, hostile_model(kind)) as dev:
        port = dev.port(21)
        refused: list[str] = []

        async def one(fn: Callable[[], Any]) -> None:
            try:
                await fn()
            except DeviceDownError:
                refused.append("down")
            except ProbeError as exc:
                refused.append(type(exc).__name__)

        async def raw_session() -> None:
            async with guard.connect(port) as stream:
                with anyio.move_on_after(READ_S):
                    await stream.receive(4096)

        with capture_logs(), anyio.fail_after(15):
            async with Guard(
                target_of(dev), ceiling=3, scope=Scope([dev.host]), interval_s=0.05, linger_s=0.4
            ) as guard:
                async with anyio.create_task_group() as tg:
                    for _ in range(6):
                        tg.start_soon(one, lambda: guard.grab_banner(port))
                        tg.start_soon(one, raw_session)
                await guard.wait_let_go()
                stats = guard.stats
                assert guard.limiter.in_flight == 0
        crashed = dev.stats.crashes > 0
    assert stats.peak_in_flight <= 2  # three on the device: two work sessions and the heartbeat
    assert stats.peak_device_sessions <= 3
    assert stats.device_down == crashed, "down exactly when the device really went down"
    if not crashed:
        assert stats.sessions == 12
        assert not refused or kind in ("reset", "reset-mid-banner")
    if kind in ("flood", "reset"):  # services that notice our close at once
        assert not crashed
        assert dev.stats.peak_sessions <= 3  # the ceiling counts the heartbeat's session too


# --- characterization ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["mute", "drip", "flood", "reset", "reset-mid-banner"])
async def test_characterize_a_device_with_hostile_services_ends_with_a_true_result(
    loopback_host: str, kind: str
) -> None:
    """The sessions of the ramp meet a hostile service on every probe port while the web port answers: the
    run ends within its budget, the sessions' failures are counted (not crashes) and, since the device
    never went down, no ceiling is claimed."""
    # A short idle timeout (real daemons have one): a service that never notices our close lets go soon.
    async with device(loopback_host, hostile_model(kind, idle_timeout_s=0.3), threshold=60, jitter=0) as dev:
        with capture_logs(), anyio.fail_after(30):
            char, elapsed, peak = await timed(
                characterize(
                    target_of(dev), scope=Scope([dev.host]), ladder=(1, 2, 4), trials=1, **CHAR_TIMINGS
                )
            )
        assert dev.stats.crashes == 0
    assert char.crashes == 0
    assert not char.ceiling_found
    levels = char.trials[0].levels
    assert [lv.level for lv in levels] == [2, 4]  # level 1 would be the heartbeat's session alone
    loaded = levels
    if kind in ("reset", "reset-mid-banner"):
        assert all(lv.sessions_failed > 0 for lv in loaded), "failed sessions are counted, not hidden"
    if kind == "reset":  # every session is reset at once: the device never held the level
        assert all(lv.not_held for lv in loaded), [(lv.level, lv.held_at_beats) for lv in loaded]
        # a pass counts only at what the device held: no recommendation above it
        assert char.highest_passed == max(lv.credited_level for lv in loaded) < 4
        assert char.safe_ceiling == 1
    elif all(not lv.not_held for lv in loaded):
        assert char.highest_passed == 4
        assert char.safe_ceiling == 2  # the margin (3 levels) below H + 1 = 5 (no limit was found)
    else:  # held only part of the time: credited with what it held
        assert char.highest_passed == max(lv.credited_level for lv in loaded)
    assert peak < 16 << 20, peak
    assert elapsed < 15


@pytest.mark.parametrize("kind", ["mute", "drip", "reset", "http-bad-status", "http-endless-headers"])
async def test_characterize_with_a_hostile_heartbeat_port_refuses_before_any_load(
    loopback_host: str, kind: str
) -> None:
    """The web port used as the heartbeat misbehaves: DeviceDownError before any load, naming the port."""
    async with device(loopback_host, hostile_model("banner", web=kind)) as dev:
        expected = rf"{dev.host}.*port {dev.web_port}"
        with capture_logs(), anyio.fail_after(10), pytest.raises(DeviceDownError, match=expected):
            await characterize(target_of(dev), scope=Scope([dev.host]), ladder=(1, 2), **CHAR_TIMINGS)
        assert dev.stats.peak_sessions <= 1, "no load was put on the device"


async def test_web_port_answering_200_then_streaming_for_ever_is_alive_and_bounded(
    loopback_host: str,
) -> None:
    """A web server that answers 200 and then streams a chunked body that never ends does answer: the
    heartbeat reads the status and a few hundred bytes, calls it alive, and a characterization completes
    (each heartbeat bounded by its timeout, each level by its dwell and settle bounds)."""
    streamer = hostile_model("banner", web="http-endless-chunked")
    async with device(loopback_host, streamer, threshold=60) as dev:
        beat = await HttpHeartbeat(port=dev.web_port, timeout_s=0.25).beat(dev.host)
        with capture_logs(), anyio.fail_after(40):
            char = await characterize(
                target_of(dev), scope=Scope([dev.host]), ladder=(1, 2), trials=1, **CHAR_TIMINGS
            )
    assert beat.ok
    assert beat.latency_s <= 0.25 + SLACK_S
    assert char.crashes == 0
    level = char.trials[0].levels[0]
    assert level.level == 2
    assert level.outcome.value == "passed"  # alive and bounded; what it is credited with is held_at_beats'
    assert level.held_at_beats, "the beats under load recorded what the device held"


async def test_firmware_that_changes_after_a_crash_keeps_the_run_key_and_breaks_the_match(
    loopback_hosts: Callable[[], str], tmp_path: Path
) -> None:
    """After a crash the device comes back with another FTP banner (a firmware update on reboot).

    characterize() derives the model key once, before any load, so every trial of the run belongs to the
    model that was measured. A later discovery sees the new banner, computes another key and does not
    apply the old profile to the changed firmware: the host is held to the lowest stored ceiling instead
    (never above the measured one)."""
    changed = dataclasses.replace(
        PUMP, name="firmware-changes", banners_after_crash={21: b"220 (vsFTPd 3.0.5)\r\n"}
    )
    store = ProfileStore(tmp_path / "fw.db")
    # threshold 6: a crash near 5-6 leaves a ceiling of at least 2 below the 3-level margin
    async with device(loopback_hosts(), changed, threshold=6, jitter=0) as dev:
        ports = tuple(dev.ports.values())
        aliases = {b: m for m, b in dev.ports.items() if b != m}

        async def look() -> Any:
            report = await discover(
                dev.host,
                scope=Scope([dev.host]),
                ports=ports,
                port_aliases=aliases,
                store=store,
                per_host_sessions=4,
                banner_timeout_s=0.3,
            )
            (asset,) = report.assets
            return asset

        with capture_logs(), anyio.fail_after(30):
            first = await look()
            char = await characterize(
                target_of(dev),
                scope=Scope([dev.host]),
                ladder=(1, 2, 4, 6, 8),
                recovery=emulator_recovery(dev),
                store=store,
                **CHAR_TIMINGS,
            )
            assert dev.firmware_changed
            again = await look()
    assert char.crashes >= 1
    assert char.safe_ceiling is not None
    assert char.safe_ceiling >= 1
    assert first.model_key == char.model_key, "before the crash, discovery and characterize agree"
    assert store.ceiling_for(char.model_key) == char.safe_ceiling
    assert again.service(dev.port(21)).version != first.service(dev.port(21)).version
    assert again.model_key != char.model_key, "the changed firmware is another model key"
    assert again.known_model is None
    assert again.sessions_limit <= char.safe_ceiling, "held to the lowest stored ceiling, not above"


async def test_flapping_device_characterization_ends_with_a_clear_conservative_result(
    loopback_host: str,
) -> None:
    """A device that goes down and comes back by itself every 0.4 s, whatever the load (its real
    threshold is far above the ladder). fragileprobe cannot tell a flap from a crash the load caused, so it
    must end in bounded time with either a clear error or a result that errs low: the safe ceiling is
    below every level at which the device went down."""
    flappy = dataclasses.replace(PUMP, name="flappy", flap_period_s=0.4)
    async with device(loopback_host, flappy, threshold=80, jitter=0) as dev:
        with capture_logs(), anyio.fail_after(60):
            try:
                char = await characterize(
                    target_of(dev),
                    scope=Scope([dev.host]),
                    ladder=(1, 2, 3, 4, 5),
                    **{**CHAR_TIMINGS, "recovery_timeout_s": 2.0},
                )
            except (DeviceDownError, RecoveryError) as exc:
                message = str(exc)
                char = None
        if char is None:
            assert dev.host in message  # a clear error naming the device
            return
    assert dev.stats.crashes >= 1
    failed = [lv.level for t in char.trials for lv in t.levels if lv.outcome.value == "failed"]
    assert failed, "the flaps were seen"
    assert char.safe_ceiling is None or char.safe_ceiling < min(failed)


# --- discovery over a fleet full of hostile devices ------------------------------------------------------


async def test_discovery_over_a_hostile_fleet_is_bounded_in_time_and_memory(
    loopback_hosts: Callable[[], str],
) -> None:
    """Every hostile behaviour, on banner ports and on the web port, next to two healthy pumps: discovery
    finishes within the sum of its per-port bounds, holds a bounded amount of memory, reports the healthy
    pumps as medical devices and puts no silent or broken device in "safe to scan" on no evidence."""
    models = [hostile_model(kind, web=web) for kind in BANNER_KINDS for web in ("http", kind)]
    models += [hostile_model("banner", web=kind) for kind in HTTP_KINDS]
    async with contextlib.AsyncExitStack() as stack:
        hostile = [await stack.enter_async_context(device(loopback_hosts(), m)) for m in models]
        healthy = [await stack.enter_async_context(device(loopback_hosts(), PUMP)) for _ in range(2)]
        everyone = hostile + healthy
        hosts = [d.host for d in everyone]
        ports = sorted({p for d in everyone for p in d.ports.values()})
        aliases = {b: m for d in everyone for m, b in d.ports.items() if b != m}
        connect_s, banner_s = 0.5, 0.3
        with capture_logs(), anyio.fail_after(60):
            report, elapsed, peak = await timed(
                discover(
                    hosts,
                    scope=Scope(hosts),
                    ports=ports,
                    port_aliases=aliases,
                    rate_per_host=50,
                    connect_timeout_s=connect_s,
                    banner_timeout_s=banner_s,
                    max_hosts_in_parallel=64,
                )
            )
        assert all(d.state is DeviceState.UP for d in everyone)
    # Hosts run in parallel, ports one at a time per host: the slowest host bounds the run. A session that
    # the device never lets go of (mute, drip) stays counted for the linger bound before the next port.
    assert elapsed <= len(ports) * (connect_s + banner_s + DISCOVERY_LINGER_S) + 3.0, elapsed
    assert peak < 32 << 20, peak
    by_host = {a.host: a for a in report.assets}
    assert set(by_host) == set(hosts), "every device that accepts connections is an asset"
    for d in healthy:
        assert "Medical Device?" in by_host[d.host].groups
    # a pump that accepts and never says anything on any port is reported, and never "safe to scan"
    silent = [d.host for d, m in zip(hostile, models, strict=True) if m.name == "hostile-mute-mute"]
    assert silent
    assert by_host[silent[0]].groups == ()
    assert silent[0] in {u.host for u in report.unresponsive}
    size = len(report.to_json())
    assert size < 200_000, size  # results are bounded: no flood bytes were kept


async def test_discovery_memory_does_not_grow_with_the_port_range(loopback_hosts: Callable[[], str]) -> None:
    """Every port of four hosts ("1-65535", nothing listening): memory stays that of a few sessions per
    host while the scan crawls along at its gentle rate (it held one task per port: 1.7 GB)."""
    hosts = [loopback_hosts() for _ in range(4)]
    tracemalloc.start()
    try:
        with capture_logs(), anyio.move_on_after(1.5):
            await discover(
                hosts, scope=Scope(hosts), ports="1-65535", rate_per_host=20, connect_timeout_s=0.2
            )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 32 << 20, peak


async def test_the_emulated_device_survives_clients_that_reset_before_it_accepts(loopback_host: str) -> None:
    """The test bed itself must not crash on a hostile client: connections reset (SO_LINGER 0) before the
    device's accept loop ran (what nmap -sT does) used to end the device with ValueError."""
    import socket
    import struct

    async with device(loopback_host, PUMP) as dev:
        for _ in range(20):  # no await in between: every RST lands before the device can accept
            s = socket.create_connection((dev.host, dev.port(21)), timeout=2)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()
        await anyio.sleep(0.1)
        res = await grab_banner(dev.host, dev.port(21), read_timeout_s=1.0)
    assert res.outcome is Outcome.OPEN
    assert res.data.startswith(b"220")
