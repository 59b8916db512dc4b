"""ProfileStore: characterizations, device-model profiles and the discovery inventory (SQLite or PostgreSQL).

The store's location picks the database: a file path is a SQLite file, a ``postgresql://`` URL a shared
PostgreSQL database (``fragileprobe[sites]``: psycopg 3). ``fragileprobe/__init__.py`` loads this module
lazily, so ``import fragileprobe`` stays free of both drivers.

How it is built (each module owns one thing; the ones below it know nothing of the ones above)::

    ProfileStore (here)        the public facade: every method delegates to one repository
    AsyncStore (here)          ``store.aio``: the same methods, awaitable, run in a worker thread
      |- _repo_profiles        runs, trials, profiles, ceilings, import of export documents
      |- _repo_inventory       scans, assets, alerts, the shield's audit trail
    _db.Database               the core: one backend, one lock, the one driver-error -> StoreError table
      |- _db.SqliteBackend / _db.PostgresBackend
    _schema                    the schema as migration steps (SCHEMA_VERSION)

The site ledger (``fragileprobe.sites._ledger``) writes its own tables through :attr:`ProfileStore.db`.

Durability rules:

* WAL journal and ``synchronous=FULL``: a committed transaction survives kill -9 of the writer and a
  power cut of the machine.
* Every trial is its own transaction, committed the moment the trial ends (``record_trial``), so an
  interrupted run loses at most the trial that was running.
* A stored trial is never overwritten: writing a trial index that is already stored with other content
  raises ``StoreError`` (a redone trial is a new trial, with a new index). Writing the same trial again is
  a no-op (``finish_run`` writes every trial of the result).
* Evidence is never lost: profiles and ceilings are derived again from every stored trial of every run of
  the model, finished or not (a run that ended with a failed recovery included), never read from a stored
  ceiling; an imported document whose stated ceiling disagrees with its own trials is refused whole.
* Writers take the write lock up front (SQLite ``BEGIN IMMEDIATE``; PostgreSQL one advisory lock taken
  first in the transaction) and wait up to ``busy_timeout_s`` for it, so two processes writing one store at
  once, on one machine or many, serialize instead of failing; past the timeout: ``StoreError``.
* The schema is versioned (SQLite ``PRAGMA user_version``, PostgreSQL the ``fragileprobe_meta`` table) and
  migrated step by step (``_schema.MIGRATIONS``). A database from a newer fragileprobe, a corrupt file, a
  file that is not a database or a foreign PostgreSQL database raises ``StoreError`` before anything is
  written to it.
* Only our own files are written. Our SQLite stores carry SQLite's ``application_id``
  :data:`APPLICATION_ID` (``0x66507262``, ASCII ``fPrb``; PostgreSQL: the ``fragileprobe_meta`` table).
  An existing file is first inspected without a single write (its header
  read as bytes, then a read-only connection): another application's id, a table, view or trigger that is
  not ours, a newer schema or a failed ``PRAGMA quick_check`` refuse it with ``StoreError`` and leave it
  byte-identical, with no ``-wal``/``-shm`` file left beside it. A store from before the id existed
  (id 0, only our tables) is stamped when it is opened.

Tables: see ``fragileprobe._schema``.
"""

from __future__ import annotations

import functools
import json
from typing import TYPE_CHECKING, Concatenate, ParamSpec, Self, TypeVar

import anyio
import anyio.to_thread

from fragileprobe import _validate
from fragileprobe._db import APPLICATION_ID, Database
from fragileprobe._repo_inventory import AssetRow, InventoryRepository, ScanRow, asset_dict
from fragileprobe._repo_profiles import ProfileRepository, RunRow, characterizations_from_export
from fragileprobe._schema import MIGRATIONS, SCHEMA_VERSION

if TYPE_CHECKING:
    import os
    from collections.abc import Awaitable, Callable
    from pathlib import Path


__all__ = [
    "APPLICATION_ID",
    "DEFAULT_BUSY_TIMEOUT_S",
    "DEFAULT_STORE_PATH",
    "SCHEMA_VERSION",
    "AssetRow",
    "AsyncStore",
    "ProfileStore",
    "RunRow",
    "ScanRow",
]

DEFAULT_STORE_PATH = "fragileprobe.db"
# How long a writer waits for another process's write lock before StoreError. Each of our transactions
# holds the lock for milliseconds; 5 s covers a slow disk with many writers and still fails fast for a
# store that another program keeps locked.
DEFAULT_BUSY_TIMEOUT_S = 5.0

_P = ParamSpec("_P")
_T = TypeVar("_T")


def _on_profiles(
    method: Callable[Concatenate[ProfileRepository, _P], _T],
) -> Callable[Concatenate[ProfileStore, _P], _T]:
    """A ProfileStore method that calls ``method`` on the store's runs-and-profiles repository."""

    @functools.wraps(method)
    def call(self: ProfileStore, /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        return method(self.profile_repo, *args, **kwargs)

    return call


def _on_inventory(
    method: Callable[Concatenate[InventoryRepository, _P], _T],
) -> Callable[Concatenate[ProfileStore, _P], _T]:
    """A ProfileStore method that calls ``method`` on the store's inventory-and-alerts repository."""

    @functools.wraps(method)
    def call(self: ProfileStore, /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        return method(self.inventory_repo, *args, **kwargs)

    return call


class ProfileStore:
    """A store of characterizations, profiles and the discovery inventory: a SQLite file or PostgreSQL.

    Args:
        path: The database file (created if missing), or a ``postgresql://user@host/dbname`` URL of a
            database shared by every site (needs ``fragileprobe[sites]``). Default: ``fragileprobe.db`` in
            the working directory.
        busy_timeout_s: How long a write waits for another process's lock before ``StoreError``.

    Raises:
        StoreError: The database is corrupt, not a database, foreign, from a newer schema, unreachable, or
            locked beyond the timeout.
        ConfigError: ``busy_timeout_s`` is not a positive number, or the URL's scheme is not supported.

    Use it as a context manager, or call :meth:`close`. Thread-safe (one lock around the connection); from
    async code, await the same methods on :attr:`aio`. Every method below is its repository's
    (:class:`~fragileprobe._repo_profiles.ProfileRepository`,
    :class:`~fragileprobe._repo_inventory.InventoryRepository`), reached through :attr:`profile_repo` and
    :attr:`inventory_repo`.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] = DEFAULT_STORE_PATH,
        *,
        busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S,
    ) -> None:
        self.busy_timeout_s = _validate.positive("busy_timeout_s", busy_timeout_s)
        self.db = Database(path, busy_timeout_s=self.busy_timeout_s, migrations=MIGRATIONS)
        # A file store's Path; a PostgreSQL store's URL (password redacted), for messages.
        self.path: Path | str = self.db.path
        self.profile_repo = ProfileRepository(self.db)
        self.inventory_repo = InventoryRepository(self.db)
        # Made here, not on first use, so two threads asking at once still share one limiter.
        self._aio = AsyncStore(self)

    # --- plumbing ------------------------------------------------------------------------------------
    @property
    def aio(self) -> AsyncStore:
        """The same store, awaitable: ``await store.aio.upsert_asset(...)`` (see :class:`AsyncStore`)."""
        return self._aio

    def close(self) -> None:
        """Close the database (idempotent)."""
        self.db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ProfileStore({str(self.path)!r})"

    # --- characterization runs and profiles (_repo_profiles) -----------------------------------------------
    begin_run = _on_profiles(ProfileRepository.begin_run)
    record_trial = _on_profiles(ProfileRepository.record_trial)
    finish_run = _on_profiles(ProfileRepository.finish_run)
    save = _on_profiles(ProfileRepository.save)
    mark_run = _on_profiles(ProfileRepository.mark_run)
    unfinished_run = _on_profiles(ProfileRepository.unfinished_run)
    run = _on_profiles(ProfileRepository.run)
    runs = _on_profiles(ProfileRepository.runs)
    trials = _on_profiles(ProfileRepository.trials)
    history = _on_profiles(ProfileRepository.history)
    profile = _on_profiles(ProfileRepository.profile)
    profiles = _on_profiles(ProfileRepository.profiles)
    ceiling_for = _on_profiles(ProfileRepository.ceiling_for)

    # --- discovery inventory, alerts, the shield's audit (_repo_inventory) ------------------------------
    start_scan = _on_inventory(InventoryRepository.start_scan)
    unfinished_scan = _on_inventory(InventoryRepository.unfinished_scan)
    scans = _on_inventory(InventoryRepository.scans)
    mark_host_done = _on_inventory(InventoryRepository.mark_host_done)
    hosts_done = _on_inventory(InventoryRepository.hosts_done)
    finish_scan = _on_inventory(InventoryRepository.finish_scan)
    upsert_asset = _on_inventory(InventoryRepository.upsert_asset)
    assets = _on_inventory(InventoryRepository.assets)
    asset = _on_inventory(InventoryRepository.asset)
    record_alert = _on_inventory(InventoryRepository.record_alert)
    alerts = _on_inventory(InventoryRepository.alerts)
    record_shield_sessions = _on_inventory(InventoryRepository.record_shield_sessions)
    shield_sessions = _on_inventory(InventoryRepository.shield_sessions)
    record_shield_trip = _on_inventory(InventoryRepository.record_shield_trip)
    finish_shield_trip = _on_inventory(InventoryRepository.finish_shield_trip)
    shield_trips = _on_inventory(InventoryRepository.shield_trips)

    # --- the whole store as one document ---------------------------------------------------------------
    def export_json(self, *, indent: int | None = 2) -> str:
        """Every characterization (unfinished runs included: their trials are evidence too) and inventory
        row as one JSON document (import with :meth:`import_json`)."""
        data = {
            "fragileprobe_store": SCHEMA_VERSION,
            "characterizations": [c.to_dict() for c in self.history(unfinished=True)],
            "profiles": [
                {"model_key": p.model_key, "ceiling": p.ceiling, "devices": list(p.devices)}
                for p in self.profiles()
            ],
            "assets": [asset_dict(a) for a in self.assets()],
            "alerts": self.alerts(),
        }
        return json.dumps(data, indent=indent, default=str)

    def import_json(self, text: str) -> int:
        """Add the characterizations of an :meth:`export_json` document; return how many were new.

        Each characterization's ceiling is derived again from its own trials, and that is what is stored.
        A characterization whose stated ceiling disagrees with its trials refuses the whole document:
        nothing of it is stored. Characterizations whose run id is already stored are skipped, so importing
        twice adds nothing.

        Raises:
            ConfigError: The text is not an export document, is from a newer schema, or a characterization's
                stated ceiling disagrees with its own trials (the message names both values).
        """
        chars = characterizations_from_export(text, schema_version=SCHEMA_VERSION)
        return self.profile_repo.add_new(chars)


def _in_worker(
    method: Callable[Concatenate[ProfileStore, _P], _T],
) -> Callable[Concatenate[AsyncStore, _P], Awaitable[_T]]:
    """An AsyncStore method: ``method`` of the wrapped store, run in a worker thread under its limiter."""

    @functools.wraps(method)
    async def call(self: AsyncStore, /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        return await self.call(method, self.store, *args, **kwargs)

    return call


class AsyncStore:
    """A :class:`ProfileStore` for async code: every method, awaitable, run in a worker thread.

    ``await store.aio.upsert_asset(host, ...)`` replaces ``await anyio.to_thread.run_sync(...)`` at each
    call site. The calls of one store take turns through one :class:`anyio.CapacityLimiter` of one token,
    so a hundred hosts awaiting the store wait in the event loop instead of holding a hundred worker
    threads blocked on the store's lock (the lock stays: it also serializes plain threaded callers).
    A call that has started runs to its end even if the awaiting task is cancelled (anyio's default):
    a write is never abandoned halfway, and the cancellation is delivered once the call returns.

    Args:
        store: The store to call.
        limiter: The limiter to share (default: a new one of one token, one per store).
    """

    def __init__(self, store: ProfileStore, *, limiter: anyio.CapacityLimiter | None = None) -> None:
        self.store = store
        self.limiter = limiter if limiter is not None else anyio.CapacityLimiter(1)

    def __repr__(self) -> str:
        return f"AsyncStore({self.store!r})"

    async def call(self, func: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """``func(*args, **kwargs)`` in a worker thread under this store's limiter: for a caller's own
        function that makes several store calls in one go (the site ledger's rules, an inventory load)."""
        return await anyio.to_thread.run_sync(functools.partial(func, *args, **kwargs), limiter=self.limiter)

    begin_run = _in_worker(ProfileStore.begin_run)
    record_trial = _in_worker(ProfileStore.record_trial)
    finish_run = _in_worker(ProfileStore.finish_run)
    save = _in_worker(ProfileStore.save)
    mark_run = _in_worker(ProfileStore.mark_run)
    unfinished_run = _in_worker(ProfileStore.unfinished_run)
    run = _in_worker(ProfileStore.run)
    runs = _in_worker(ProfileStore.runs)
    trials = _in_worker(ProfileStore.trials)
    history = _in_worker(ProfileStore.history)
    profile = _in_worker(ProfileStore.profile)
    profiles = _in_worker(ProfileStore.profiles)
    ceiling_for = _in_worker(ProfileStore.ceiling_for)
    start_scan = _in_worker(ProfileStore.start_scan)
    unfinished_scan = _in_worker(ProfileStore.unfinished_scan)
    scans = _in_worker(ProfileStore.scans)
    mark_host_done = _in_worker(ProfileStore.mark_host_done)
    hosts_done = _in_worker(ProfileStore.hosts_done)
    finish_scan = _in_worker(ProfileStore.finish_scan)
    upsert_asset = _in_worker(ProfileStore.upsert_asset)
    assets = _in_worker(ProfileStore.assets)
    asset = _in_worker(ProfileStore.asset)
    record_alert = _in_worker(ProfileStore.record_alert)
    alerts = _in_worker(ProfileStore.alerts)
    record_shield_sessions = _in_worker(ProfileStore.record_shield_sessions)
    shield_sessions = _in_worker(ProfileStore.shield_sessions)
    record_shield_trip = _in_worker(ProfileStore.record_shield_trip)
    finish_shield_trip = _in_worker(ProfileStore.finish_shield_trip)
    shield_trips = _in_worker(ProfileStore.shield_trips)
    export_json = _in_worker(ProfileStore.export_json)
    import_json = _in_worker(ProfileStore.import_json)
    close = _in_worker(ProfileStore.close)
