"""The store as a facade over two repositories, and ``store.aio``: the same methods, awaitable, in a worker
thread under one limiter per store."""

from __future__ import annotations

import inspect
import threading
from typing import TYPE_CHECKING

import anyio
import pytest

from fragileprobe._errors import StoreError
from fragileprobe._profile import LevelOutcome, LevelResult, TrialResult
from fragileprobe._repo_inventory import InventoryRepository
from fragileprobe._repo_profiles import ProfileRepository
from fragileprobe._store import AsyncStore, ProfileStore

if TYPE_CHECKING:
    from pathlib import Path

# Methods of ProfileStore that are its own (not a repository's) and have no awaitable twin.
_PLUMBING = {"aio", "close", "export_json", "import_json"}


def _public(cls: type) -> set[str]:
    return {n for n in vars(cls) if not n.startswith("_")}


def test_every_facade_method_is_a_repository_method_with_its_signature() -> None:
    """ProfileStore delegates each method to exactly one repository, keeping its signature and docstring."""
    repos = (ProfileRepository, InventoryRepository)
    delegated = _public(ProfileStore) - _PLUMBING - {"db", "path"}
    assert delegated, "no delegated methods found"
    for name in delegated:
        owners = [r for r in repos if name in vars(r)]
        assert len(owners) == 1, (name, owners)
        method = getattr(owners[0], name)
        assert inspect.signature(getattr(ProfileStore, name)) == inspect.signature(method), name
        assert getattr(ProfileStore, name).__doc__ == method.__doc__
    public_repo_methods = (_public(ProfileRepository) | _public(InventoryRepository)) - {"add_new"}
    assert public_repo_methods <= delegated, public_repo_methods - delegated


def test_every_store_method_has_an_awaitable_twin() -> None:
    store_methods = _public(ProfileStore) - {"aio"}
    assert store_methods <= _public(AsyncStore), store_methods - _public(AsyncStore)
    for name in store_methods:
        assert inspect.iscoroutinefunction(getattr(AsyncStore, name)), name


async def test_aio_calls_run_in_a_worker_thread_and_read_back(tmp_path: Path) -> None:
    with ProfileStore(tmp_path / "s.db") as store:
        assert store.aio is store.aio
        scan = await store.aio.start_scan(["127.0.0.9"], {"ports": [21]})
        row = await store.aio.upsert_asset(
            "127.0.0.9", scan_id=scan, seen_at_s=1.0, zone="icu", open_ports=[21]
        )
        assert row == store.asset("127.0.0.9")
        await store.aio.mark_host_done(scan, "127.0.0.9")
        assert await store.aio.hosts_done(scan) == {"127.0.0.9"}
        run_id = await store.aio.begin_run(host="127.0.0.9", model_key="m")
        level = LevelResult(level=1, outcome=LevelOutcome.PASSED, dwell_s=0.1, elapsed_s=0.1)
        await store.aio.record_trial(run_id, TrialResult(index=0, levels=(level,)))
        stored = await store.aio.run(run_id)
        assert stored is not None
        assert [t.index for t in stored.trials] == [0]
        worker = await store.aio.call(threading.get_ident)
        assert worker != threading.get_ident()
    with pytest.raises(StoreError, match="closed"):
        await store.aio.assets()


async def test_one_store_runs_one_call_at_a_time(tmp_path: Path) -> None:
    """Twenty tasks awaiting one store: its limiter lets one worker thread in at a time, every call lands."""
    inside, most = 0, 0
    guard = threading.Lock()

    def tracked(i: int) -> int:
        nonlocal inside, most
        with guard:
            inside += 1
            most = max(most, inside)
        try:
            return store.record_alert({"i": i})
        finally:
            with guard:
                inside -= 1

    with ProfileStore(tmp_path / "s.db") as store:
        async with anyio.create_task_group() as tg:
            for i in range(20):
                tg.start_soon(store.aio.call, tracked, i)
        assert most == 1
        assert sorted(a["i"] for a in store.alerts()) == list(range(20))
        assert store.aio.limiter.total_tokens == 1


async def test_a_started_write_finishes_when_its_caller_is_cancelled(tmp_path: Path) -> None:
    """Cancelling the awaiting task never abandons a call halfway: the write lands, then the task stops."""
    started, release = threading.Event(), threading.Event()

    def slow_write() -> int:
        started.set()
        release.wait(10)
        return store.record_alert({"slow": True})

    with ProfileStore(tmp_path / "s.db") as store:
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(store.aio.call, slow_write)
                await anyio.to_thread.run_sync(started.wait, 10)
                scope.cancel()
                release.set()
        assert scope.cancelled_caught
        assert store.alerts() == [{"slow": True}]


def test_a_shared_limiter_is_used_as_given(tmp_path: Path) -> None:
    limiter = anyio.CapacityLimiter(2)
    with ProfileStore(tmp_path / "s.db") as store:
        aio = AsyncStore(store, limiter=limiter)
        assert aio.limiter is limiter
        assert repr(aio) == f"AsyncStore({store!r})"
