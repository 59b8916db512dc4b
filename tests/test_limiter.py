"""ConcurrencyLimiter: the ceiling holds under cancellation and ceiling changes; rate cap; statistics."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools

import anyio
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from fragileprobe import ConcurrencyLimiter, ConfigError, LimiterStatistics


@pytest.mark.parametrize("bad", [0, -1, True, 2.5, "3", None])
def test_ceiling_below_one_or_not_int_is_config_error(bad: object) -> None:
    with pytest.raises(ConfigError, match=r"^ceiling: must be an integer >= 1, got ") as info:
        ConcurrencyLimiter(bad)  # type: ignore[arg-type]
    assert info.value.field == "ceiling"


@pytest.mark.parametrize("bad", [0, -1.0, float("inf"), float("nan"), True])
def test_bad_rate_is_config_error(bad: object) -> None:
    with pytest.raises(ConfigError, match=r"^rate_per_s: must be a positive number, got ") as info:
        ConcurrencyLimiter(2, rate_per_s=bad)  # type: ignore[arg-type]
    assert info.value.field == "rate_per_s"


async def test_set_ceiling_validates() -> None:
    limiter = ConcurrencyLimiter(2)
    with pytest.raises(ConfigError, match="ceiling"):
        await limiter.set_ceiling(0)
    assert limiter.ceiling == 2


async def test_sessions_never_exceed_the_ceiling_and_statistics_count() -> None:
    limiter = ConcurrencyLimiter(3)
    inside = 0
    seen_max = 0

    async def work() -> None:
        nonlocal inside, seen_max
        async with limiter.session():
            inside += 1
            seen_max = max(seen_max, inside)
            await anyio.sleep(0.01)
            inside -= 1

    async with anyio.create_task_group() as tg:
        for _ in range(20):
            tg.start_soon(work)
    stats = limiter.statistics()
    assert seen_max == 3
    assert stats == LimiterStatistics(
        ceiling=3,
        target_ceiling=3,
        in_flight=0,
        peak_in_flight=3,
        started=20,
        finished=20,
        waiting=0,
        rate_per_s=None,
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.ceiling = 9  # type: ignore[misc]


async def test_lowering_waits_for_in_flight_work_to_drain() -> None:
    limiter = ConcurrencyLimiter(4)
    release = anyio.Event()
    lowered = anyio.Event()

    async def hold() -> None:
        async with limiter.session():
            await release.wait()

    async def lower() -> None:
        await limiter.set_ceiling(1)
        lowered.set()

    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(hold)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(lower)
        await anyio.wait_all_tasks_blocked()
        # Lowering is pending: the old ceiling is still the one in effect, new sessions already wait.
        assert not lowered.is_set()
        assert limiter.ceiling == 4
        assert limiter.target_ceiling == 1
        tg.start_soon(hold)
        await anyio.wait_all_tasks_blocked()
        stats = limiter.statistics()
        assert stats.in_flight == 4
        assert stats.waiting == 1
        release.set()
    assert lowered.is_set()
    assert limiter.ceiling == 1
    assert limiter.statistics().peak_in_flight == 4


async def test_raising_wakes_waiting_sessions_at_once() -> None:
    limiter = ConcurrencyLimiter(1)
    release = anyio.Event()

    async def hold() -> None:
        async with limiter.session():
            await release.wait()

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(hold)
        await anyio.wait_all_tasks_blocked()
        assert limiter.statistics().in_flight == 1
        await limiter.set_ceiling(3)
        await anyio.wait_all_tasks_blocked()
        assert limiter.statistics().in_flight == 3
        assert limiter.ceiling == 3
        release.set()


async def test_a_later_set_ceiling_releases_an_earlier_pending_lowering() -> None:
    limiter = ConcurrencyLimiter(3)
    release = anyio.Event()
    done: list[int] = []

    async def hold() -> None:
        async with limiter.session():
            await release.wait()

    async def lower(n: int) -> None:
        await limiter.set_ceiling(n)
        done.append(n)

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(hold)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(lower, 1)
        await anyio.wait_all_tasks_blocked()
        await limiter.set_ceiling(5)  # raising: in effect at once, and the pending lowering gives up
        await anyio.wait_all_tasks_blocked()
        assert done == [1]
        assert limiter.ceiling == 5
        release.set()


async def test_cancelled_while_waiting_gives_nothing_away() -> None:
    limiter = ConcurrencyLimiter(1)
    release = anyio.Event()

    async def hold() -> None:
        async with limiter.session():
            await release.wait()

    async with anyio.create_task_group() as tg:
        tg.start_soon(hold)
        await anyio.wait_all_tasks_blocked()
        with anyio.move_on_after(0.05) as scope:
            async with limiter.session():
                pytest.fail("entered a session beyond the ceiling")
        assert scope.cancelled_caught
        assert limiter.statistics().waiting == 0
        release.set()
    stats = limiter.statistics()
    assert (stats.started, stats.finished, stats.in_flight) == (1, 1, 0)


async def test_rate_cap_spaces_session_starts() -> None:
    limiter = ConcurrencyLimiter(10, rate_per_s=50)  # one start per 20 ms
    starts: list[float] = []

    async def work() -> None:
        async with limiter.session():
            starts.append(anyio.current_time())

    async with anyio.create_task_group() as tg:
        for _ in range(6):
            tg.start_soon(work)
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert len(gaps) == 5
    assert all(gap >= 0.02 - 0.002 for gap in gaps), gaps  # never a burst (timer granularity allowed)


async def test_cancelled_during_rate_wait_releases_its_slot() -> None:
    limiter = ConcurrencyLimiter(1, rate_per_s=1)
    async with limiter.session():
        pass
    with anyio.move_on_after(0.05):
        async with limiter.session():  # waits for its rate turn (1 s away) holding the only slot
            pytest.fail("rate cap not applied")
    stats = limiter.statistics()
    assert stats.in_flight == 0
    assert stats.waiting == 0
    assert limiter._limiter.borrowed_tokens == 0


# --- the stateful proof ---------------------------------------------------------------------------------


class LimiterMachine(RuleBasedStateMachine):
    """Drive real asyncio tasks through a limiter: start, release, cancel (waiting or inside), change the
    ceiling; after every step the sessions inside (counted by the tasks themselves) fit the ceiling."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.limiter: ConcurrencyLimiter = self.loop.run_until_complete(self._make())
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self.releases: dict[int, asyncio.Event] = {}
        self.inside: set[int] = set()
        self.violations: list[str] = []
        self.setters: list[asyncio.Task[None]] = []
        self.next_id = 0

    @staticmethod
    async def _make() -> ConcurrencyLimiter:
        return ConcurrencyLimiter(2)

    def settle(self) -> None:
        for _ in range(12):
            self.loop.run_until_complete(asyncio.sleep(0))

    async def session(self, ident: int) -> None:
        async with self.limiter.session():
            self.inside.add(ident)
            # Checked at the moment of entry, not only between steps.
            if len(self.inside) > self.limiter.ceiling:
                self.violations.append(f"{len(self.inside)} inside > ceiling {self.limiter.ceiling}")
            if len(self.inside) > self.limiter.target_ceiling:
                self.violations.append(f"admitted above the requested ceiling {self.limiter.target_ceiling}")
            try:
                await asyncio.sleep(0)  # the connect: a cancellation may land here
                await self.releases[ident].wait()
            finally:
                self.inside.discard(ident)

    def live(self) -> list[int]:
        return [i for i, t in self.tasks.items() if not t.done()]

    @rule(count=st.integers(1, 3))
    def start(self, count: int) -> None:
        for _ in range(count):
            ident = self.next_id
            self.next_id += 1
            self.releases[ident] = asyncio.Event()
            self.tasks[ident] = self.loop.create_task(self.session(ident))
        self.settle()

    @precondition(lambda self: bool(self.inside))
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        ident = data.draw(st.sampled_from(sorted(self.inside)))
        self.releases[ident].set()
        self.settle()

    @precondition(lambda self: bool(self.live()))
    @rule(data=st.data(), settle_first=st.booleans())
    def cancel(self, data: st.DataObject, settle_first: bool) -> None:
        ident = data.draw(st.sampled_from(self.live()))
        self.tasks[ident].cancel()
        if settle_first:
            self.settle()

    @rule(ceiling=st.integers(1, 5))
    def set_ceiling(self, ceiling: int) -> None:
        self.setters.append(self.loop.create_task(self.limiter.set_ceiling(ceiling)))
        self.settle()

    @rule()
    def step(self) -> None:
        self.settle()

    @invariant()
    def ceiling_holds(self) -> None:
        self.settle()
        stats = self.limiter.statistics()
        assert not self.violations, self.violations
        assert len(self.inside) <= stats.ceiling
        assert stats.in_flight == len(self.inside)
        assert stats.started - stats.finished == stats.in_flight
        assert stats.peak_in_flight >= stats.in_flight
        # No lost wake-ups: nobody waits while there is room under the requested ceiling.
        assert stats.waiting == 0 or stats.in_flight >= stats.target_ceiling
        # A lowering that drained has been committed.
        if self.limiter._limiter.borrowed_tokens <= stats.target_ceiling:
            assert stats.ceiling == stats.target_ceiling

    def teardown(self) -> None:
        for task in [*self.tasks.values(), *self.setters]:
            task.cancel()
        self.settle()
        assert self.limiter.statistics().in_flight == 0
        self.loop.close()


LimiterMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
TestLimiterMachine = LimiterMachine.TestCase
