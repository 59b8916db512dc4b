"""Guard end to end against the emulated pump: the ceiling, the scope and the watchdog's promises."""

from __future__ import annotations

import itertools
import time
from collections import Counter

import anyio
import pytest
from structlog.testing import capture_logs

from fragileprobe import (
    ConfigError,
    DeviceDownError,
    Guard,
    HttpHeartbeat,
    Outcome,
    ProbeRefusedError,
    ProbeResult,
    Scope,
    ScopeError,
    Target,
)
from fragileprobe.emulator import DeviceState, EmulatedPump

# Fast timings: beats every 50 ms, a beat fails after 200 ms.
INTERVAL_S = 0.05
BEAT_TIMEOUT_S = 0.2
# Scheduling slack on two shared cores.
SLACK_S = 0.15


def fast_pump(host: str, **kwargs: object) -> EmulatedPump:
    return EmulatedPump(
        host,
        threshold=7,
        jitter=0,
        seed=7,
        base_latency_s=0.001,
        slowdown_s_per_session=0.001,
        boot_delay_s=0.05,
        **kwargs,  # type: ignore[arg-type]
    )


def pump_target(pump: EmulatedPump) -> Target:
    return Target(
        pump.host,
        ports=[pump.port(p) for p in (21, 22, 23, 8080)],
        heartbeat=HttpHeartbeat(port=pump.web_port, timeout_s=BEAT_TIMEOUT_S),
        name="mis3000-bed-12",
    )


def scope_for(host: str) -> Scope:
    return Scope([f"{host}/32"])


def guard_for(pump: EmulatedPump, ceiling: int, **kwargs: object) -> Guard:
    return Guard(
        pump_target(pump),
        ceiling=ceiling,
        scope=scope_for(pump.host),
        interval_s=INTERVAL_S,
        **kwargs,  # type: ignore[arg-type]
    )


async def check(guard: Guard, pump: EmulatedPump, port: int) -> ProbeResult:
    """One banner-grab check: the web port answers a GET, the consoles their banner."""
    if port == pump.web_port:
        return await guard.http_get(port, read_timeout_s=2.0)
    return await guard.grab_banner(port, read_timeout_s=2.0)


async def run_checks(guard: Guard, pump: EmulatedPump, total: int, workers: int) -> list[ProbeResult]:
    """``workers`` tasks run ``total`` checks round-robin over the pump's ports until done or refused."""
    ports = list(guard.target.ports)
    results: list[ProbeResult] = []
    remaining = iter(range(total))

    async def worker() -> None:
        for n in remaining:
            try:
                results.append(await check(guard, pump, ports[n % len(ports)]))
            except DeviceDownError:
                return

    async with anyio.create_task_group() as tg:
        for _ in range(workers):
            tg.start_soon(worker)
    return results


async def test_ceiling_five_runs_a_thousand_checks_without_hanging_the_pump(loopback_host: str) -> None:
    async with fast_pump(loopback_host) as pump, guard_for(pump, 5) as guard:
        results = await run_checks(guard, pump, total=1000, workers=12)
        assert pump.state is DeviceState.UP
        assert pump.stats.crashes == 0
        assert not guard.device_down
        stats = guard.stats
        assert len(results) == 1000
        assert Counter(r.outcome for r in results) == {Outcome.OPEN: 1000}
        # Twelve workers, never more than five sessions on the pump, the heartbeat's included: the work
        # gets four places, the heartbeat keeps the fifth.
        assert stats.peak_in_flight == 4
        assert stats.heartbeat_reserved == 1
        assert stats.sessions == stats.completed == 1000
        assert stats.peak_device_sessions <= 5
        assert pump.stats.peak_sessions <= 5
        banners = {r.port: r.data[:8] for r in results if r.port != pump.web_port}
        assert banners[pump.port(21)] == b"220 (vsF"
        assert all(r.status == 200 for r in results if r.port == pump.web_port)  # type: ignore[attr-defined]


async def test_connect_only_probes_at_ceiling_two_never_stack_up_on_the_pump(loopback_host: str) -> None:
    """The pump counts a session until it notices our close; a slot stays charged until then, so a tight
    loop of connect-and-close probes cannot pile sessions up on the device beyond the ceiling."""
    async with fast_pump(loopback_host) as pump, guard_for(pump, 2) as guard:
        for _ in range(150):
            assert (await guard.tcp_connect(pump.port(21))).outcome is Outcome.OPEN
        assert pump.state is DeviceState.UP
        assert pump.stats.peak_sessions <= 2  # one probe and the heartbeat: the ceiling counts both


async def test_ceiling_ten_hangs_the_pump_and_the_watchdog_stops_everything(loopback_host: str) -> None:
    async with fast_pump(loopback_host) as pump, guard_for(pump, 10) as guard:
        hung_at: list[float] = []

        async def note_hang() -> None:
            # The emulator has no hang event to wait on; polling every 2 ms timestamps the hang late by
            # at most that, which only makes the measured detection lag look shorter by 2 ms.
            while pump.state is DeviceState.UP:  # noqa: ASYNC110
                await anyio.sleep(0.002)
            hung_at.append(time.monotonic())

        async with anyio.create_task_group() as tg:
            tg.start_soon(note_hang)
            results = await run_checks(guard, pump, total=1000, workers=10)
        timeline = guard.timeline
        stats = guard.stats
        assert pump.state is DeviceState.HUNG
        assert guard.device_down
        assert timeline.down_at_s is not None
        # Declared within interval_s + timeout_s of the hang (the BEAT_SLACK_S bound plus scheduling slack).
        assert timeline.down_at_s - hung_at[0] <= INTERVAL_S + BEAT_TIMEOUT_S + SLACK_S
        # Every check in flight at the declaration was cancelled, and came back as CANCELLED.
        cancelled = [r for r in results if r.outcome is Outcome.CANCELLED]
        assert timeline.in_flight_at_down is not None
        assert timeline.in_flight_at_down >= 6  # it hangs at 7-9 sessions, one of them a heartbeat's
        assert len(cancelled) == timeline.in_flight_at_down == stats.cancelled_by_watchdog
        # Cancelled, but still charged: the hung pump has not let go of them (nor of the failed beat's).
        assert stats.in_flight == len(cancelled)
        assert stats.lingering == stats.device_sessions == len(cancelled) + 1
        # Nothing reaches the pump after the declaration: no probe, no heartbeat.
        await anyio.sleep(5 * INTERVAL_S)
        assert pump.connects_since(timeline.down_at_s) == 0
        with pytest.raises(DeviceDownError, match="mis3000-bed-12"):
            await guard.grab_banner(pump.port(21))
        with pytest.raises(DeviceDownError):
            await guard.run(anyio.sleep, 0)
        assert pump.connects_since(timeline.down_at_s) == 0


async def test_recovery_power_cycle_wait_healthy_and_rearm(loopback_host: str) -> None:
    async with fast_pump(loopback_host) as pump, guard_for(pump, 3) as guard:
        pump.hang()
        assert guard.watchdog is not None
        with anyio.fail_after(3):
            while not guard.device_down:
                await guard.watchdog.next_beat()
        await pump.power_cycle()
        with anyio.fail_after(5):
            await guard.wait_healthy(3)
        guard.rearm()
        assert not guard.device_down
        result = await guard.grab_banner(pump.port(22))
        assert result.data.startswith(b"SSH-2.0-dropbear")
        assert len(guard.timeline.downs) == 1


async def test_out_of_scope_target_raises_at_entry_and_sends_nothing(loopback_host: str) -> None:
    async with fast_pump(loopback_host) as pump:
        guard = Guard(pump_target(pump), ceiling=2, scope=Scope(["127.0.0.0/30"]), interval_s=INTERVAL_S)
        with pytest.raises(ScopeError, match=loopback_host):
            async with guard:
                pytest.fail("entered a guard outside its scope")
        await anyio.sleep(0.05)
        assert pump.stats.connects_total == 0


async def test_device_down_before_the_first_probe_raises_at_entry(loopback_host: str) -> None:
    async with fast_pump(loopback_host) as pump:
        pump.hang()
        with pytest.raises(DeviceDownError, match="before any probe"):
            async with guard_for(pump, 2):
                pytest.fail("entered a guard on a dead device")
        assert pump.stats.connects_total == 1  # the one heartbeat, nothing else


async def test_run_is_one_limited_session_and_cancelled_when_down(loopback_host: str) -> None:
    async with fast_pump(loopback_host) as pump, guard_for(pump, 2) as guard:
        inside: list[int] = []

        async def my_check(port: int) -> bytes:
            inside.append(guard.limiter.in_flight)
            async with guard.connect(port) as stream:
                return await stream.receive()

        assert (await guard.run(my_check, pump.port(22))).startswith(b"SSH-2.0")
        assert inside == [1]

        started = anyio.Event()

        async def slow_check() -> None:
            started.set()
            await anyio.sleep_forever()

        async with anyio.create_task_group() as tg:

            async def expect_down() -> None:
                with pytest.raises(DeviceDownError, match="cancelled"):
                    await guard.run(slow_check)

            tg.start_soon(expect_down)
            await started.wait()
            assert guard.watchdog is not None
            guard.watchdog.declare_down("test")
        assert guard.stats.cancelled_by_watchdog == 1


async def test_a_nested_connect_in_run_is_cancelled_and_counted_once(loopback_host: str) -> None:
    async with fast_pump(loopback_host) as pump, guard_for(pump, 3) as guard:
        inside = anyio.Event()

        async def check_with_a_socket() -> None:
            async with guard.connect(pump.port(23)) as stream:
                await stream.receive()
                inside.set()
                await anyio.sleep_forever()

        async def expect_down() -> None:
            with pytest.raises(DeviceDownError):
                await guard.run(check_with_a_socket)

        async with anyio.create_task_group() as tg:
            tg.start_soon(expect_down)
            await inside.wait()
            assert guard.limiter.in_flight == 1  # run's session and its connection share one slot
            assert guard.watchdog is not None
            guard.watchdog.declare_down("test")
        stats = guard.stats
        assert stats.cancelled_by_watchdog == 2
        assert stats.failures == 0
        with anyio.fail_after(2):
            await guard.wait_let_go()
        assert guard.stats.in_flight == 0


async def test_connect_holds_a_slot_until_the_device_let_go(loopback_host: str) -> None:
    async with fast_pump(loopback_host) as pump, guard_for(pump, 2) as guard:
        async with guard.connect(pump.port(21)) as stream:
            assert guard.limiter.in_flight == 1
            assert (await stream.receive()).startswith(b"220")
            with anyio.move_on_after(0.1) as waited:
                await guard.tcp_connect(pump.port(22))  # the only work slot is taken
            assert waited.cancelled_caught
        with anyio.fail_after(2):
            await guard.wait_let_go()  # the pump answered our FIN with its own
        assert guard.limiter.in_flight == 0
        assert guard.stats.linger_expired == 0
        assert (await guard.tcp_connect(pump.port(22))).outcome is Outcome.OPEN


async def test_connect_refused_raises_probe_error_and_counts_a_failure(loopback_host: str) -> None:
    async with fast_pump(loopback_host) as pump, guard_for(pump, 2) as guard:
        with pytest.raises(ProbeRefusedError):
            async with guard.connect(1):
                pytest.fail("connected to a closed port")
        assert guard.stats.failures == 1
        assert guard.limiter.in_flight == 0


async def test_set_ceiling_changes_the_limit_while_running(loopback_host: str) -> None:
    async with fast_pump(loopback_host) as pump, guard_for(pump, 2) as guard:
        await guard.set_ceiling(4)
        await run_checks(guard, pump, total=40, workers=8)
        assert guard.stats.peak_in_flight == 3  # four on the device: three checks and the heartbeat
        assert guard.stats.peak_device_sessions <= 4
        await guard.set_ceiling(2)
        assert guard.stats.ceiling == 2
        with pytest.raises(ConfigError, match="no room for work"):
            await guard.set_ceiling(1)


async def test_rate_cap_spaces_guarded_sessions(loopback_host: str) -> None:
    async with fast_pump(loopback_host) as pump, guard_for(pump, 4, rate_per_s=40) as guard:
        results = await run_checks(guard, pump, total=8, workers=4)
    starts = sorted(r.started_at_s for r in results)
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert min(gaps) >= 1 / 40 - 0.003  # one start per 25 ms, never a burst


async def test_heartbeat_port_never_open_is_a_clear_error_at_entry(loopback_host: str) -> None:
    async with fast_pump(loopback_host) as pump:
        guard = Guard(
            pump_target(pump),
            ceiling=2,
            scope=scope_for(pump.host),
            interval_s=INTERVAL_S,
            heartbeat=HttpHeartbeat(port=1, timeout_s=BEAT_TIMEOUT_S),
        )
        with pytest.raises(DeviceDownError, match="refused"):
            async with guard:
                pytest.fail("entered with a dead heartbeat")
        assert pump.stats.connects_total == 0


async def test_without_watchdog_nothing_is_cancelled(loopback_host: str) -> None:
    async with fast_pump(loopback_host) as pump, guard_for(pump, 2, watchdog=False) as guard:
        assert guard.watchdog is None
        result = await guard.grab_banner(pump.port(21))
        assert result.outcome is Outcome.OPEN
        assert not guard.device_down
        assert guard.timeline.beats == ()


async def test_events_carry_the_target(loopback_host: str) -> None:
    async with fast_pump(loopback_host) as pump:
        with capture_logs() as logs:
            async with guard_for(pump, 2) as guard:
                await guard.grab_banner(pump.port(21))
                assert guard.watchdog is not None
                guard.watchdog.declare_down("test")
    events = Counter(e["event"] for e in logs if e.get("target") == "mis3000-bed-12")
    for name in (
        "guard.open",
        "probe.connect",
        "probe.closed",
        "watchdog.beat",
        "watchdog.device_down",
        "guard.close",
    ):
        assert events[name] >= 1, name


async def test_guard_misuse() -> None:
    scope = Scope(["127.0.0.0/30"])
    with pytest.raises(ConfigError, match="ceiling"):
        Guard("127.0.0.1", ceiling=0, scope=scope)
    with pytest.raises(ConfigError, match="interval_s"):
        Guard("127.0.0.1", ceiling=2, scope=scope, interval_s=0)
    with pytest.raises(ConfigError, match="scope"):
        Guard("127.0.0.1", ceiling=2, scope=["127.0.0.0/30"])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="linger_s"):
        Guard("127.0.0.1", ceiling=2, scope=scope, interval_s=1.0, linger_s=2.0)  # not past 1 s + 2 s
    guard = Guard("127.0.0.1", ceiling=1, scope=scope, watchdog=False)  # no heartbeat: all of N is work
    with pytest.raises(RuntimeError, match="async with"):
        await guard.tcp_connect(80)
    assert "127.0.0.1" in repr(guard)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"ceiling": 0}, "ceiling"),
        ({"ceiling": 1}, "ceiling"),  # no room beside the session heartbeat
        ({"interval_s": 0}, "Watchdog.interval_s"),
        ({"failures_to_down": 0}, "Watchdog.failures_to_down"),
        ({"connect_timeout_s": -1}, "connect_timeout_s"),
        ({"linger_s": float("nan")}, "linger_s"),
        ({"linger_s": 2.0}, "linger_s"),  # not past the detection bound
        ({"scope": ["127.0.0.1"]}, "Guard.scope"),
        ({"network": object()}, "Guard.network"),
    ],
)
def test_bad_guard_settings_name_their_field(kwargs: dict[str, object], field: str) -> None:
    """ConfigError.field names the setting, so a front end can point at it without reading the message."""
    settings: dict[str, object] = {"ceiling": 2, "scope": Scope(["127.0.0.1"]), **kwargs}
    with pytest.raises(ConfigError) as info:
        Guard("127.0.0.1", **settings)  # type: ignore[arg-type]
    assert info.value.field == field


def test_ceiling_one_with_a_session_heartbeat_names_the_ways_out() -> None:
    """N counts the heartbeat's session too: N = 1 leaves the work nothing, and the error says what to do."""
    scope = Scope(["127.0.0.0/30"])
    with pytest.raises(ConfigError) as info:
        Guard("127.0.0.1", ceiling=1, scope=scope)
    message = str(info.value)
    assert "ceiling: 1 leaves no room for work" in message
    for way_out in ("a ceiling of 2 or more", "IcmpHeartbeat", "watchdog=False"):
        assert way_out in message
    assert Guard("127.0.0.1", ceiling=1, scope=scope, watchdog=False).heartbeat_reserved == 0
