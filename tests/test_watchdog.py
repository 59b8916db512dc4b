"""Watchdog: beats, declaration, cancellation, pause while down, recovery and re-arm.

Exact timing uses an injected clock and sleep (the beat loop's only time sources) with a scripted heartbeat,
a real implementation of the Heartbeat protocol whose answers the test decides. One test runs against the
emulated pump on the wall clock.
"""

from __future__ import annotations

import time

import anyio
import anyio.lowlevel
import pytest
from structlog.testing import capture_logs

from fragileprobe import Beat, ConfigError, DeviceDownError, HttpHeartbeat, Watchdog
from fragileprobe.emulator import EmulatedPump


class FakeClock:
    """Time that moves only when the watchdog sleeps (or a heartbeat takes its latency)."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await anyio.lowlevel.checkpoint()


class ScriptedHeartbeat:
    """Answers from a script: True = healthy, False = failed; then repeats ``then`` forever."""

    port = 8080
    timeout_s = 0.5

    def __init__(self, clock: FakeClock, script: list[bool], then: bool = True, latency_s: float = 0.01):
        self.clock = clock
        self.script = list(script)
        self.then = then
        self.latency_s = latency_s
        self.calls = 0

    async def beat(self, host: str) -> Beat:
        self.calls += 1
        ok = self.script.pop(0) if self.script else self.then
        at = self.clock.now
        # A failed beat takes its full timeout, like a real one waiting for an answer that never comes.
        self.clock.now += self.latency_s if ok else self.timeout_s
        await anyio.lowlevel.checkpoint()
        return Beat(at, ok, self.clock.now - at, None if ok else "timeout: no answer")


def make(clock: FakeClock, script: list[bool], *, then: bool = True, **kwargs: object) -> Watchdog:
    heartbeat = ScriptedHeartbeat(clock, script, then)
    return Watchdog(heartbeat, host="127.0.0.9", clock=clock, sleep=clock.sleep, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"interval_s": 0}, "interval_s"),
        ({"interval_s": float("inf")}, "interval_s"),
        ({"failures_to_down": 0}, "failures_to_down"),
        ({"failures_to_down": True}, "failures_to_down"),
        ({"timeout_s": -1.0}, "timeout_s"),
    ],
)
def test_bad_settings_are_config_errors(kwargs: dict[str, object], fragment: str) -> None:
    with pytest.raises(ConfigError, match=rf"^Watchdog\.{fragment}: must be ") as info:
        Watchdog(HttpHeartbeat(), host="127.0.0.9", **kwargs)  # type: ignore[arg-type]
    assert info.value.field == f"Watchdog.{fragment}"


def test_heartbeat_without_beat_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="heartbeat"):
        Watchdog(object(), host="127.0.0.9")  # type: ignore[arg-type]


async def test_beats_every_interval_start_to_start() -> None:
    clock = FakeClock()
    watchdog = make(clock, [], interval_s=1.0)
    async with anyio.create_task_group() as tg:
        await tg.start(watchdog.run)
        for _ in range(4):
            await watchdog.next_beat()
        tg.cancel_scope.cancel()
    starts = [beat.at_s for beat in watchdog.timeline.beats]
    assert starts[:5] == [100.0, 101.0, 102.0, 103.0, 104.0]
    assert not watchdog.down
    assert watchdog.timeline.last_good_at_s == starts[-1]


async def test_first_failure_declares_down_and_cancels_work_in_flight() -> None:
    clock = FakeClock()
    watchdog = make(clock, [True, True], then=False, interval_s=1.0)
    outcomes: list[str] = []

    async def work() -> None:
        try:
            with watchdog.watch() as watch:
                await anyio.sleep_forever()
        except DeviceDownError as exc:
            assert watch.cancelled
            outcomes.append(str(exc))

    async with anyio.create_task_group() as tg:
        tg.start_soon(work)
        tg.start_soon(work)
        await anyio.wait_all_tasks_blocked()
        await tg.start(watchdog.run)
        while not watchdog.down:
            await watchdog.next_beat()
        await anyio.wait_all_tasks_blocked()
        timeline = watchdog.timeline
        assert len(outcomes) == 2
        assert "127.0.0.9 was declared down" in outcomes[0]
        assert timeline.down_at_s == 102.5  # the third beat started at 102.0 and failed after its 0.5 s
        assert timeline.last_good_at_s == 101.0
        assert timeline.in_flight_at_down == 2
        assert timeline.downs[0].reason == "timeout: no answer"
        assert timeline.down_at_s - timeline.last_good_at_s <= watchdog.detection_bound_s
        with pytest.raises(DeviceDownError, match="no new session"), watchdog.watch():
            pytest.fail("a session started after the declaration")
        tg.cancel_scope.cancel()


async def test_failures_must_be_consecutive() -> None:
    clock = FakeClock()
    watchdog = make(clock, [False, True, False, True, False, False], interval_s=1.0, failures_to_down=2)
    for _ in range(5):
        await watchdog.beat_once()
        assert not watchdog.down
    await watchdog.beat_once()
    assert watchdog.down
    assert watchdog.timeline.beats_total == 6
    assert watchdog.timeline.downs[0].failures == 2


async def test_down_at_start_is_reported_to_tg_start() -> None:
    clock = FakeClock()
    watchdog = make(clock, [], then=False, interval_s=1.0)
    async with anyio.create_task_group() as tg:
        await tg.start(watchdog.run)
        assert watchdog.down
        assert watchdog.timeline.last_good_at_s is None
        tg.cancel_scope.cancel()


async def test_stops_beating_once_down_until_asked_then_rearms() -> None:
    clock = FakeClock()
    watchdog = make(clock, [True, False, False, False, True, True, False, True, True, True], interval_s=1.0)
    heartbeat = watchdog._heartbeat
    assert isinstance(heartbeat, ScriptedHeartbeat)
    async with anyio.create_task_group() as tg:
        await tg.start(watchdog.run)
        await watchdog.next_beat()
        assert watchdog.down
        calls = heartbeat.calls
        for _ in range(20):
            await anyio.lowlevel.checkpoint()
        assert heartbeat.calls == calls  # paused: nothing reaches a device declared down
        assert not watchdog.beating
        # The recovery driver asks: beating resumes until 2 consecutive healthy beats (F, F, T, T).
        await watchdog.wait_healthy(2)
        assert watchdog.consecutive_ok == 2
        assert watchdog.down  # still down until re-armed
        watchdog.rearm()
        with watchdog.watch():
            pass  # work is allowed again
        await watchdog.next_beat()  # F: declared down a second time
        assert watchdog.down
        timeline = watchdog.timeline
        assert len(timeline.downs) == 2
        assert len(timeline.rearmed_at_s) == 1
        assert timeline.downs[0].at_s < timeline.rearmed_at_s[0] < timeline.downs[1].at_s
        tg.cancel_scope.cancel()


async def test_beat_while_down_keeps_beating() -> None:
    clock = FakeClock()
    watchdog = make(clock, [False], interval_s=1.0, beat_while_down=True)
    async with anyio.create_task_group() as tg:
        await tg.start(watchdog.run)
        assert watchdog.down
        for _ in range(50):
            await anyio.lowlevel.checkpoint()
        assert watchdog.timeline.beats_total > 2
        tg.cancel_scope.cancel()


async def test_manual_declaration_cancels_and_is_idempotent() -> None:
    watchdog = Watchdog(HttpHeartbeat(), host="127.0.0.9")
    cancelled: list[bool] = []

    async def work() -> None:
        with pytest.raises(DeviceDownError), watchdog.watch() as watch:
            await anyio.sleep_forever()
        cancelled.append(watch.cancelled)

    async with anyio.create_task_group() as tg:
        tg.start_soon(work)
        await anyio.wait_all_tasks_blocked()
        watchdog.declare_down("operator pressed stop")
        watchdog.declare_down("again")
    assert cancelled == [True]
    assert [d.reason for d in watchdog.timeline.downs] == ["operator pressed stop"]


async def test_work_finishing_normally_is_untouched() -> None:
    watchdog = Watchdog(HttpHeartbeat(), host="127.0.0.9")
    with watchdog.watch() as watch:
        await anyio.lowlevel.checkpoint()
    assert not watch.cancelled
    assert not watchdog._scopes


class HangingHeartbeat:
    port = 1
    timeout_s = 0.05

    async def beat(self, host: str) -> Beat:
        await anyio.sleep(30)  # ignores its own timeout: the watchdog must bound it
        raise AssertionError("unreachable")


class BrokenHeartbeat:
    port = 1
    timeout_s = 0.05

    async def beat(self, host: str) -> Beat:
        raise RuntimeError("plug-in bug")


async def test_a_heartbeat_ignoring_its_timeout_is_bounded() -> None:
    watchdog = Watchdog(HangingHeartbeat(), host="127.0.0.9")
    with anyio.fail_after(2):
        beat = await watchdog.beat_once()
    assert not beat.ok
    assert "no answer within 0.05 s" in (beat.error or "")
    assert watchdog.down


async def test_a_raising_heartbeat_is_a_failed_beat() -> None:
    watchdog = Watchdog(BrokenHeartbeat(), host="127.0.0.9", failures_to_down=2)
    beat = await watchdog.beat_once()
    assert not beat.ok
    assert "RuntimeError: plug-in bug" in (beat.error or "")
    assert not watchdog.down


async def test_events_are_logged() -> None:
    clock = FakeClock()
    watchdog = make(clock, [True], then=False, interval_s=1.0)
    with capture_logs() as logs:
        await watchdog.beat_once()
        await watchdog.beat_once()
    events = [(e["event"], e.get("ok")) for e in logs]
    assert events == [("watchdog.beat", True), ("watchdog.beat", False), ("watchdog.device_down", None)]
    assert logs[2]["in_flight"] == 0


async def test_detects_a_hung_pump_within_interval_plus_timeout(loopback_host: str) -> None:
    """Wall clock, real pump: hang it; the declaration follows within interval_s + timeout_s (+ slack)."""
    async with EmulatedPump(loopback_host, seed=3) as pump:
        watchdog = Watchdog(
            HttpHeartbeat(port=pump.web_port, timeout_s=0.2), host=loopback_host, interval_s=0.05
        )
        async with anyio.create_task_group() as tg:
            await tg.start(watchdog.run)
            await watchdog.next_beat()
            assert not watchdog.down
            hung_at = time.monotonic()
            pump.hang()
            with anyio.fail_after(5):
                while not watchdog.down:
                    await watchdog.next_beat()
            down_at = watchdog.timeline.down_at_s
            assert down_at is not None
            assert down_at - hung_at <= watchdog.detection_bound_s + 0.1
            tg.cancel_scope.cancel()
