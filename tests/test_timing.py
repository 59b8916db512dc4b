"""Adaptive timeouts (RFC 6298 estimator, floors and ceilings) and the global pacer."""

from __future__ import annotations

import math

import anyio
import anyio.lowlevel
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fragileprobe import ConfigError
from fragileprobe._discovery_policy import estimate_remaining_s
from fragileprobe._timing import (
    PACER_MAX_BURST,
    PRIORITY_FIRST_LOOK,
    PRIORITY_LIVE,
    PRIORITY_LOOK_AGAIN,
    GlobalPacer,
    RttEstimator,
    TimeoutBounds,
)

BOUNDS = TimeoutBounds(floor_s=0.5, ceiling_s=2.0, initial_s=0.9)


def test_estimator_follows_rfc_6298() -> None:
    e = RttEstimator()
    assert e.timeout_s(BOUNDS) == 0.9, "no sample: the initial value"
    e.observe(0.2)
    assert (e.srtt_s, e.rttvar_s) == (0.2, 0.1)
    assert e.rto_s() == pytest.approx(0.6)
    e.observe(0.4)
    # rttvar = 3/4 * 0.1 + 1/4 * |0.2 - 0.4| = 0.125; srtt = 7/8 * 0.2 + 1/8 * 0.4 = 0.225
    assert e.rttvar_s == pytest.approx(0.125)
    assert e.srtt_s == pytest.approx(0.225)
    assert e.timeout_s(BOUNDS) == pytest.approx(0.725)


def test_timeouts_stay_within_floor_and_ceiling() -> None:
    fast, slow = RttEstimator(), RttEstimator()
    for _ in range(50):
        fast.observe(0.0002)
        slow.observe(3.0)
    assert fast.timeout_s(BOUNDS) == 0.5
    assert slow.timeout_s(BOUNDS) == 2.0


@given(st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=50))
def test_any_samples_give_a_bounded_timeout(samples: list[float]) -> None:
    e = RttEstimator()
    for x in samples:
        e.observe(x)
    t = e.timeout_s(BOUNDS)
    assert math.isfinite(t)
    assert BOUNDS.floor_s <= t <= BOUNDS.ceiling_s


def test_bounds_are_validated() -> None:
    with pytest.raises(ConfigError, match=r"^floor_s: must be at most ceiling_s \(2\), got 3\.0$") as info:
        TimeoutBounds(floor_s=3.0, ceiling_s=2.0, initial_s=1.0)
    assert info.value.field == "floor_s"
    with pytest.raises(ConfigError, match=r"^initial_s: must be a positive number, got nan$") as info:
        TimeoutBounds(floor_s=0.1, ceiling_s=2.0, initial_s=math.nan)
    assert info.value.field == "initial_s"
    with pytest.raises(ConfigError, match=r"^global_rate: must be a positive number, got 0$") as info:
        GlobalPacer(0)
    assert info.value.field == "global_rate"


async def test_pacer_serves_the_most_urgent_callers_first_each_in_arrival_order() -> None:
    """Second liveness probes wait behind first ones, and both behind the ports of hosts known alive."""
    pacer = GlobalPacer(200.0)
    order: list[str] = []

    async def caller(name: str, priority: int) -> None:
        await pacer.acquire(priority)
        order.append(name)

    async with anyio.create_task_group() as tg:
        for i in range(2):
            tg.start_soon(caller, f"again{i}", PRIORITY_LOOK_AGAIN)
        for i in range(3):
            tg.start_soon(caller, f"first{i}", PRIORITY_FIRST_LOOK)
        for i in range(2):
            tg.start_soon(caller, f"live{i}", PRIORITY_LIVE)
        await anyio.lowlevel.checkpoint()  # every caller is queued before the pacer runs
        tg.start_soon(pacer.run)
        with anyio.fail_after(10):
            while len(order) < 7:  # noqa: ASYNC110 - polls a list the callers fill, bounded in time
                await anyio.sleep(0.01)
        tg.cancel_scope.cancel()
    assert order == ["live0", "live1", "first0", "first1", "first2", "again0", "again1"]
    assert pacer.granted == 7


async def test_pacer_never_bursts_past_its_bucket() -> None:
    """However late the loop wakes, one wake-up grants at most PACER_MAX_BURST."""
    pacer = GlobalPacer(1e6)  # a huge rate: every wake-up is "late"
    granted_per_tick: list[int] = []

    async def caller() -> None:
        await pacer.acquire()

    async with anyio.create_task_group() as tg:
        for _ in range(50):
            tg.start_soon(caller)
        await anyio.lowlevel.checkpoint()
        tg.start_soon(pacer.run)
        last = 0
        while pacer.granted < 50:
            await anyio.lowlevel.checkpoint()
            granted_per_tick.append(pacer.granted - last)
            last = pacer.granted
        tg.cancel_scope.cancel()
    assert max(granted_per_tick) <= PACER_MAX_BURST


def test_eta_counts_silent_space_at_its_cost() -> None:
    """4,096 addresses, all in flight; 500 finished at 2 probes each (silent), 6,500 probes sent: about 1.7 s
    of connects are left at 1,000/s, plus the tail; not the hours a per-live-host average would say, nor
    the 45 s the throughput of the first finished addresses would."""
    eta = estimate_remaining_s(
        done=500,
        total=4096,
        elapsed_s=6.5,
        probes_done=1000,
        probes_sent=6500,
        rate_per_s=1000,
        tail_s=1.0,
        in_flight=4096,
    )
    assert eta is not None
    assert eta == pytest.approx((4096 * 2 - 6500) / 1000 + 1.0)
    kw = {"elapsed_s": 1.0, "probes_done": 5, "probes_sent": 5, "rate_per_s": 1000.0, "tail_s": 1.0}
    assert estimate_remaining_s(done=0, total=10, **kw) is None
    assert estimate_remaining_s(done=10, total=10, **kw) == 0.0
    # Every address alive and slow (loopback, per-host work dominates): the throughput bound wins.
    slow = estimate_remaining_s(
        done=100,
        total=200,
        elapsed_s=50,
        probes_done=1000,
        probes_sent=1100,
        rate_per_s=1000,
        tail_s=1,
        in_flight=10,
    )
    assert slow == pytest.approx(50.0)
