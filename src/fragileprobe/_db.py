"""The store's database seam: one SQLite file or one PostgreSQL database, behind the same small interface.

The store's repositories write their SQL once, in the dialect both databases accept (``?``
placeholders, ``INSERT ... ON CONFLICT``, ``RETURNING``), and run it through a backend chosen by the
store's location::

    ProfileStore("fragileprobe.db")                    -> SqliteBackend   (sqlite3, the default)
    ProfileStore("postgresql://user@host/db")          -> PostgresBackend (psycopg 3, fragileprobe[sites])

A backend owns what really differs between the two, and nothing else:

* connecting, and proving the database is ours before anything is written (SQLite: ``PRAGMA user_version``
  and ``quick_check``; PostgreSQL: the ``fragileprobe_meta`` table; a database holding other tables and no
  such table is foreign and refused);
* the write transaction that serializes every writer of the store, on every machine (SQLite:
  ``BEGIN IMMEDIATE``; PostgreSQL: ``pg_advisory_xact_lock`` on one key taken first in the transaction,
  so the read-then-write methods such as ``upsert_asset`` behave as on SQLite) and waits at most
  ``busy_timeout_s`` for it;
* versioned migrations (the store's list of schema steps, applied in one write transaction, under the
  same lock, so two processes opening a new database at once create it once);
* the small dialect translation for PostgreSQL: ``?`` -> ``%s``, ``x IS ?`` -> ``x IS NOT DISTINCT FROM
  %s``, ``INSERT OR IGNORE`` -> ``ON CONFLICT DO NOTHING``, and in the schema ``REAL`` -> ``DOUBLE
  PRECISION``, ``INTEGER`` -> ``BIGINT``, ``AUTOINCREMENT`` keys -> identity columns, ``TEXT`` ->
  ``TEXT COLLATE "C"`` (byte order, as SQLite sorts, so ``ORDER BY host`` agrees on both).

Errors are the same for both: every driver error (``sqlite3.Error``, ``psycopg.Error``) becomes a
:class:`~fragileprobe.StoreError` through :func:`translated` and its one table (``_MESSAGES``), keyed by
what was being done (the :data:`Phase`) and the kind of failure the driver reported (its result code or
exception class, never its text). Nothing else in the store catches a driver error.

Above the backends sits :class:`Database`, the store's core: one open backend, the lock that makes this
process's threads take turns on its one connection (a transaction is never interleaved with another
thread's statements), and the closed flag. The repositories (``_repo_profiles``, ``_repo_inventory``) and
the site ledger write their SQL against it; :class:`RecordColumns` derives a table's column list and row
decoding from a record dataclass, so a field is written once.

``psycopg`` is imported lazily, inside :class:`PostgresBackend`, so ``import fragileprobe`` never loads it
and a SQLite-only install never needs it. The SQL given to a backend contains no ``?`` or ``%`` inside
string literals (the translation is textual, and the store's statements are written so).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import sqlite3
import sys
import threading
import time
import urllib.parse
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Generic, Literal, Protocol, TypeVar

import structlog

from fragileprobe._errors import ConfigError, StoreError

if TYPE_CHECKING:
    import os
    from collections.abc import Callable, Iterator, Mapping, Sequence
    from contextlib import AbstractContextManager

    from _typeshed import DataclassInstance

__all__ = [
    "APPLICATION_ID",
    "PG_APPLICATION",
    "PG_CONNECT_TIMEOUT_S",
    "PG_WRITE_LOCK_KEY",
    "Backend",
    "Connection",
    "Cursor",
    "Database",
    "Phase",
    "PostgresBackend",
    "RecordColumns",
    "SqliteBackend",
    "canonical_json",
    "error_kind",
    "is_busy",
    "is_database_url",
    "open_backend",
    "pg_ddl",
    "pg_sql",
    "store_error",
    "translated",
]

log = structlog.get_logger(__name__)

# The key of the one advisory lock every PostgreSQL writer of a fragileprobe store takes at the start of
# its transaction (the counterpart of SQLite's BEGIN IMMEDIATE). Any fixed 64-bit number works; this one
# is "fragile" in ASCII, so it is recognisable in pg_locks.
PG_WRITE_LOCK_KEY: Final = 0x667261_67696C65
# What fragileprobe_meta.application holds in a database that fragileprobe created.
PG_APPLICATION: Final = "fragileprobe"
# Bound on a PostgreSQL connect: a database that does not answer in 10 s is down or filtered; a store
# should say so rather than hang the agent or the coordinator.
PG_CONNECT_TIMEOUT_S: Final = 10
_URL_SCHEMES: Final = ("postgresql://", "postgres://")


# --- driver errors -> StoreError: the one mapping ---------------------------------------------------------

# What the store was doing when the driver failed; it picks the message (see _MESSAGES).
Phase = Literal["open", "inspect", "write", "use", "commit"]
# What kind of failure the driver reported, read from its result code or exception class, never its text.
ErrorKind = Literal["busy", "down", "damaged", "other"]

# SQLite primary result codes (https://www.sqlite.org/rescode.html). sqlite3 reports the extended code in
# ``sqlite_errorcode``; its low byte is the primary code (SQLITE_BUSY_RECOVERY = 261 -> SQLITE_BUSY).
_SQLITE_BUSY: Final = 5
_SQLITE_LOCKED: Final = 6
_SQLITE_CORRUPT: Final = 11
_SQLITE_NOTADB: Final = 26
_PRIMARY_CODE_MASK: Final = 0xFF

# phase -> kind -> message; a kind missing from a phase reads that phase's "other". {where} is the store's
# path or redacted URL, {detail} the driver's first line, {waited_s} the busy timeout.
_MESSAGES: Final[Mapping[Phase, Mapping[ErrorKind, str]]] = {
    "open": {"other": "cannot open profile store {where}: {detail}"},
    "inspect": {
        "busy": "profile store {where} is locked: {detail}",
        "down": "profile store {where} is unusable: {detail}",
        "other": "profile store {where} is corrupt or not a fragileprobe store: {detail}",
    },
    "write": {
        "busy": "profile store {where} is locked by another writer (waited {waited_s:g} s): {detail}",
        "down": "profile store {where} is unreachable or unusable: {detail}",
        "damaged": "profile store {where} is corrupt: {detail}",
        "other": "profile store {where}: {detail}",
    },
    "use": {
        "busy": "profile store {where} is locked: {detail}",
        "down": "profile store {where} is unreachable or unusable: {detail}",
        "damaged": "profile store {where} is corrupt: {detail}",
        "other": "profile store {where}: {detail}",
    },
    "commit": {"other": "profile store {where}: commit failed: {detail}"},
}


def _driver_errors() -> tuple[type[Exception], ...]:
    """The drivers' base error classes; psycopg's only once it is loaded (it is imported lazily)."""
    pg = sys.modules.get("psycopg")
    return (sqlite3.Error,) if pg is None else (sqlite3.Error, pg.Error)


def error_kind(exc: Exception) -> ErrorKind:
    """Classify a driver error by its result code (SQLite) or class (psycopg)."""
    if isinstance(exc, sqlite3.Error):
        code = (getattr(exc, "sqlite_errorcode", None) or 0) & _PRIMARY_CODE_MASK
        if code in (_SQLITE_BUSY, _SQLITE_LOCKED):
            return "busy"
        if code in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
            return "damaged"
        return "down" if isinstance(exc, sqlite3.OperationalError) else "other"
    pg = sys.modules.get("psycopg")
    if pg is not None and isinstance(exc, pg.errors.LockNotAvailable):
        return "busy"
    if pg is not None and isinstance(exc, pg.OperationalError):
        return "down"
    return "other"


def store_error(exc: Exception, *, where: str, phase: Phase, waited_s: float = 0.0) -> StoreError:
    """The StoreError for driver error ``exc`` raised while doing ``phase`` on the store ``where``."""
    messages = _MESSAGES[phase]
    template = messages.get(error_kind(exc), messages["other"])
    return StoreError(template.format(where=where, detail=_one_line(exc), waited_s=waited_s))


@contextmanager
def translated(where: str, phase: Phase, *, waited_s: float = 0.0) -> Iterator[None]:
    """Run a block whose driver errors come out as :func:`store_error` (``raise ... from`` the original)."""
    try:
        yield
    except _driver_errors() as exc:
        raise store_error(exc, where=where, phase=phase, waited_s=waited_s) from exc


def is_busy(exc: BaseException) -> bool:
    """True for a StoreError caused by the database being busy or locked (by its code, not its text)."""
    cause = exc.__cause__
    return isinstance(cause, Exception) and error_kind(cause) == "busy"


class Cursor(Protocol):
    """What the store reads back from one statement (sqlite3 and psycopg cursors both fit)."""

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Connection(Protocol):
    """What the store's methods use inside a write transaction: ``execute(sql, args)`` with ``?``."""

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Cursor: ...


class Backend(Protocol):
    """One database under a ProfileStore."""

    location: str

    def write(self) -> AbstractContextManager[Connection]: ...

    def query(self, sql: str, args: Sequence[Any]) -> list[tuple[Any, ...]]: ...

    def close(self) -> None: ...


def is_database_url(location: object) -> bool:
    """True for a PostgreSQL URL (``postgresql://...`` or ``postgres://...``)."""
    return isinstance(location, str) and location.startswith(_URL_SCHEMES)


def open_backend(
    location: str | os.PathLike[str], *, busy_timeout_s: float, migrations: Sequence[str]
) -> SqliteBackend | PostgresBackend:
    """Open the backend for a path or URL, check it, and bring its schema up to ``len(migrations)``."""
    if is_database_url(location):
        assert isinstance(location, str)
        return PostgresBackend(location, busy_timeout_s=busy_timeout_s, migrations=migrations)
    if isinstance(location, str) and "://" in location:
        scheme = location.split("://", 1)[0]
        raise ConfigError(
            f"store: unsupported URL scheme {scheme!r}; use a file path or postgresql://user@host/dbname"
        )
    return SqliteBackend(location, busy_timeout_s=busy_timeout_s, migrations=migrations)


# --- the core: one open database, its lock, and records <-> rows ------------------------------------------

R = TypeVar("R", bound="DataclassInstance")


class Database:
    """One open store database: its backend, one lock for this process's threads, and the closed flag.

    Every statement of the store runs through :meth:`write` (one transaction holding the database's write
    lock) or :meth:`query` (one read statement). Both hold :attr:`lock` for their whole duration, which is
    what makes sharing the one connection between threads correct: the SQLite connection is opened with
    ``check_same_thread=False`` precisely because this lock, not the thread, guarantees that one thread at
    a time uses it, and that no thread's statement lands inside another thread's transaction.

    Args:
        location: A SQLite file path or a ``postgresql://`` URL (see :func:`open_backend`).
        busy_timeout_s: How long a writer waits for another process's write lock.
        migrations: The schema steps (``fragileprobe._schema.MIGRATIONS``).

    Raises:
        StoreError: See the backends.
        ConfigError: An unsupported URL scheme, or psycopg missing for a PostgreSQL URL.
    """

    def __init__(
        self, location: str | os.PathLike[str], *, busy_timeout_s: float, migrations: Sequence[str]
    ) -> None:
        self.busy_timeout_s = busy_timeout_s
        self.backend: SqliteBackend | PostgresBackend = open_backend(
            location, busy_timeout_s=busy_timeout_s, migrations=migrations
        )
        # A file store's Path; a PostgreSQL store's URL with its password redacted (for messages).
        self.path: Path | str = getattr(self.backend, "path", self.backend.location)
        self.lock = threading.Lock()
        self._closed = False

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"profile store {self.path} is closed")

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """One write transaction (all or nothing); driver errors come out as StoreError."""
        with self.lock:
            self._check_open()  # under the lock: a close() that ran while we waited is seen
            with self.backend.write() as conn:
                yield conn

    def query(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one read statement; driver errors come out as StoreError."""
        with self.lock:
            self._check_open()
            return self.backend.query(sql, args)

    def close(self) -> None:
        """Close the database (idempotent; waits for a statement another thread is running)."""
        with self.lock:
            if not self._closed:
                self._closed = True
                self.backend.close()


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no spaces, so equal values compare equal as text (scan params, targets).

    Raises:
        ConfigError: The value is not JSON-able.
    """
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"store: value is not JSON-able: {exc}") from exc


class RecordColumns(Generic[R]):
    """A table's columns and row decoding, derived from the fields of a record dataclass.

    Field ``f`` is column ``f``; a field named in ``json`` is column ``f_json`` holding JSON text, turned
    back into the field's value by its converter (``tuple``, or None to keep the decoded JSON; a NULL
    column stays None). Fields named in ``derived`` are not columns: the caller passes them to
    :meth:`decode` (a run's trials, read from their own table).

    Args:
        record: The frozen dataclass of one row.
        json: Field name -> converter for the fields stored as JSON.
        derived: Fields that are not columns of the table.
    """

    __slots__ = ("_convert", "columns", "fields", "record", "sql")

    def __init__(
        self,
        record: type[R],
        *,
        json: Mapping[str, Callable[[Any], Any] | None] | None = None,
        derived: Sequence[str] = (),
    ) -> None:
        convert = dict(json or {})
        names = tuple(f.name for f in dataclasses.fields(record) if f.name not in derived)
        unknown = (set(convert) | set(derived)) - {f.name for f in dataclasses.fields(record)}
        if unknown:
            raise TypeError(f"RecordColumns({record.__name__}): no such fields: {sorted(unknown)}")
        self.record = record
        self.fields: tuple[str, ...] = names
        self.columns: tuple[str, ...] = tuple(f"{n}_json" if n in convert else n for n in names)
        self.sql = ", ".join(self.columns)
        self._convert = convert

    def _value(self, name: str, raw: Any) -> Any:
        if name not in self._convert or raw is None:
            return raw
        value = json.loads(raw)
        converter = self._convert[name]
        return value if converter is None else converter(value)

    def decode(self, row: Sequence[Any], **derived: Any) -> R:
        """The record for one row selected with :attr:`sql`, plus the derived fields."""
        values = {n: self._value(n, raw) for n, raw in zip(self.fields, row, strict=True)}
        return self.record(**values, **derived)


def _statements(script: str) -> list[str]:
    return [s for s in (part.strip() for part in script.split(";")) if s]


# --- SQLite ------------------------------------------------------------------------------------------------


# SQLite's header field for "which program's file is this" (https://www.sqlite.org/fileformat.html#appid,
# the same mechanism Fossil and GeoPackage use). ASCII "fPrb"; not in SQLite's registry of magic numbers.
APPLICATION_ID = 0x66507262
_SQLITE_MAGIC = b"SQLite format 3\x00"
# The database header is the first 100 bytes: user_version at offset 60, application_id at 68 (big-endian
# 32-bit), the read/write format versions at 18/19 (2 = WAL).
_HEADER_BYTES = 100
# Pause between attempts to open a store another process holds busy while creating or migrating it.
_OPEN_RETRY_S = 0.05


def _our_objects(migrations: Sequence[str], kind: str) -> frozenset[str]:
    """Every table or index of ours, read from the migrations themselves (so one added there is ours at
    once). Names starting with ``sqlite_`` are SQLite's own (sqlite_sequence, sqlite_stat1, autoindexes)."""
    return frozenset(re.findall(rf"CREATE {kind} IF NOT EXISTS (\w+)", "\n".join(migrations)))


class SqliteBackend:
    """A SQLite file: WAL, ``synchronous=FULL``, ``BEGIN IMMEDIATE`` writers, ``PRAGMA user_version``.

    Raises:
        StoreError: The file is corrupt, not a database, from a newer schema, or locked beyond the timeout.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, busy_timeout_s: float, migrations: Sequence[str]
    ) -> None:
        self.path = Path(path)
        self.location = str(self.path)
        self.busy_timeout_s = busy_timeout_s
        # Opening races another process that is creating or migrating the same file: switching a new file
        # to WAL, or a read-only inspection during that switch, can answer SQLITE_BUSY at once instead of
        # waiting in the busy handler. Such a refusal (SQLITE_BUSY / SQLITE_LOCKED, see is_busy) is retried
        # until busy_timeout_s has passed. This runs in the caller's thread, outside any event loop, so the
        # deadline is on time.monotonic() (anyio.current_time() needs a running loop).
        deadline = time.monotonic() + busy_timeout_s
        while True:
            try:
                self._open_once(migrations)
                return
            except StoreError as exc:
                if not is_busy(exc) or time.monotonic() >= deadline:
                    raise
            time.sleep(_OPEN_RETRY_S)

    def _open_once(self, migrations: Sequence[str]) -> None:
        # Before the read-write connection: a foreign or damaged file is never opened for writing.
        self._inspect_existing(migrations)
        with translated(self.location, "open"):
            # isolation_level=None: we issue BEGIN/COMMIT ourselves (BEGIN IMMEDIATE for writers).
            # check_same_thread=False: Database.lock, not the opening thread, owns the connection (the
            # store is called from anyio worker threads).
            self._conn = sqlite3.connect(
                self.path, timeout=self.busy_timeout_s, isolation_level=None, check_same_thread=False
            )
        opened = False
        try:
            self._open(migrations)
            opened = True
        finally:
            if not opened:  # never leave a half-opened connection (and its file handle) behind
                self._conn.close()

    def _inspect_existing(self, migrations: Sequence[str]) -> None:
        """Refuse an existing file that is not a healthy fragileprobe store, without writing anything.

        Raises:
            StoreError: not a SQLite database, another application's id, objects that are not ours, a newer
                schema, or a failed quick check. The file is left byte-identical.
        """
        try:
            with self.path.open("rb") as fh:
                header = fh.read(_HEADER_BYTES)
        except FileNotFoundError:
            return  # a new store: created below
        except IsADirectoryError:
            raise StoreError(f"cannot open profile store {self.path}: it is a directory") from None
        except OSError as exc:
            raise StoreError(f"cannot open profile store {self.path}: {exc.strerror or exc}") from exc
        if not header:
            return  # an empty file is an empty database (sqlite3.connect leaves one when nothing was written)
        if len(header) < _HEADER_BYTES or not header.startswith(_SQLITE_MAGIC):
            raise StoreError(
                f"profile store {self.path} is corrupt or not a fragileprobe store: file is not a database"
            )
        page_size = int.from_bytes(header[16:18], "big")
        # SQLite itself requires these: a page size that is a power of two in 512-65536 (1 means 65536) and
        # the fixed payload fractions 64, 32, 32 at offsets 21-23. Anything else is damage, not a database.
        if not (page_size == 1 or (512 <= page_size <= 32768 and page_size & (page_size - 1) == 0)) or (
            tuple(header[21:24]) != (64, 32, 32)
        ):
            raise StoreError(
                f"profile store {self.path} is corrupt or not a fragileprobe store: malformed database header"
            )
        app_id = int.from_bytes(header[68:72], "big")
        if app_id not in (0, APPLICATION_ID):
            raise StoreError(
                f"profile store {self.path} is not a fragileprobe store: it belongs to another application "
                f"(SQLite application_id 0x{app_id:08x}, ours is 0x{APPLICATION_ID:08x}); nothing was written"
            )
        version = int.from_bytes(header[60:64], "big")
        if version > len(migrations):
            raise StoreError(
                f"profile store {self.path} has schema version {version}, newer than this fragileprobe "
                f"supports ({len(migrations)}); upgrade fragileprobe or use another file"
            )
        self._inspect_read_only(migrations, wal=header[18] == 2 or header[19] == 2)

    def _inspect_read_only(self, migrations: Sequence[str], *, wal: bool) -> None:
        """Schema objects and quick_check, through a connection that cannot write."""
        # A read-only connection to a WAL database creates -wal and -shm files beside it; when no -wal
        # exists nobody has the database open, and immutable=1 reads the file as it is, creating nothing.
        wal_file = self.path.with_name(self.path.name + "-wal")
        mode = "immutable=1" if wal and not wal_file.exists() else "mode=ro"
        uri = f"{self.path.resolve().as_uri()}?{mode}"
        with translated(self.location, "open"):
            conn = sqlite3.connect(uri, uri=True, timeout=self.busy_timeout_s, isolation_level=None)
        try:
            with translated(self.location, "inspect"):
                objects = conn.execute("SELECT type, name FROM sqlite_master").fetchall()
                self._refuse_foreign(objects, migrations)
                check = conn.execute("PRAGMA quick_check(1)").fetchone()[0]
        finally:
            conn.close()
        if check != "ok":
            raise StoreError(
                f"profile store {self.path} failed its integrity check: {check}; nothing was written"
            )

    def _refuse_foreign(self, objects: Sequence[tuple[str, str]], migrations: Sequence[str]) -> None:
        """StoreError if ``sqlite_master`` lists a table, index, view or trigger that is not ours."""
        tables, indexes = _our_objects(migrations, "TABLE"), _our_objects(migrations, "INDEX")
        foreign = sorted(
            f"{kind} {name!r}"
            for kind, name in objects
            if not str(name).startswith("sqlite_")
            and not (kind == "table" and name in tables)
            and not (kind == "index" and name in indexes)
        )
        if foreign:
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            raise StoreError(
                f"profile store {self.path} is not a fragileprobe store: it holds {shown}, which are not "
                "ours; nothing was written (give another --store path)"
            )

    def _open(self, migrations: Sequence[str]) -> None:
        conn = self._conn
        target = len(migrations)
        with translated(self.location, "inspect"):
            # Reading user_version first also proves the file is a database before anything is written.
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if version > target:
            raise StoreError(
                f"profile store {self.path} has schema version {version}, newer than this fragileprobe "
                f"supports ({target}); upgrade fragileprobe or use another file"
            )
        with translated(self.location, "inspect"):
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            if version < target:
                self._migrate(migrations)
            if int(conn.execute("PRAGMA application_id").fetchone()[0]) != APPLICATION_ID:
                with self.write():  # ours (inspected above): a new store, or one from before the id
                    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            # A quick structural check: catches files whose header is fine but whose pages are damaged.
            check = conn.execute("PRAGMA quick_check(1)").fetchone()[0]
        if check != "ok":
            raise StoreError(f"profile store {self.path} failed its integrity check: {check}")
        log.debug("store.opened", path=str(self.path), journal_mode=mode, schema_version=target)

    def _migrate(self, migrations: Sequence[str]) -> None:
        """Apply the schema steps still missing, in one write transaction."""
        conn, target = self._conn, len(migrations)
        with self.write():
            current = int(conn.execute("PRAGMA user_version").fetchone()[0])
            # Another process may have migrated meanwhile: apply only the steps still missing.
            for step in migrations[current:]:
                for statement in _statements(step):
                    conn.execute(statement)
            if current < target:
                conn.execute(f"PRAGMA user_version = {target}")

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """One write transaction, holding the write lock from the start (``BEGIN IMMEDIATE``)."""
        conn = self._conn
        with translated(self.location, "write", waited_s=self.busy_timeout_s):
            conn.execute("BEGIN IMMEDIATE")
        committed = False
        try:
            with translated(self.location, "use"):
                yield conn
            with translated(self.location, "commit"):
                conn.execute("COMMIT")
            committed = True
        finally:
            # Whatever interrupted the transaction (an error, KeyboardInterrupt), nothing half-written stays.
            if not committed and conn.in_transaction:
                with translated(self.location, "use"):
                    conn.execute("ROLLBACK")

    def query(self, sql: str, args: Sequence[Any]) -> list[tuple[Any, ...]]:
        """Run one read statement outside a transaction."""
        with translated(self.location, "use"):
            return list(self._conn.execute(sql, tuple(args)).fetchall())

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()


# --- PostgreSQL --------------------------------------------------------------------------------------------

_IS_PARAM = re.compile(r"\bIS\s+\?")
_INSERT_OR_IGNORE = re.compile(r"^\s*INSERT\s+OR\s+IGNORE\s+INTO\b", re.IGNORECASE)
_INSERT_OR_REPLACE = re.compile(r"^\s*INSERT\s+OR\s+REPLACE\b", re.IGNORECASE)
_RETURNING = re.compile(r"\bRETURNING\b", re.IGNORECASE)


@functools.lru_cache(maxsize=256)
def pg_sql(sql: str) -> str:
    """Translate one of the store's statements (``?`` placeholders) to psycopg's ``%s`` form.

    Raises:
        StoreError: The statement uses SQLite-only syntax with no mechanical translation
            (``INSERT OR REPLACE``: write ``INSERT ... ON CONFLICT (key) DO UPDATE`` instead).
    """
    if _INSERT_OR_REPLACE.match(sql):
        raise StoreError(
            "store statement uses INSERT OR REPLACE, which PostgreSQL lacks; "
            f"write INSERT ... ON CONFLICT (...) DO UPDATE instead: {sql[:80]!r}"
        )
    out = sql.replace("%", "%%")
    out = _IS_PARAM.sub("IS NOT DISTINCT FROM ?", out)
    if _INSERT_OR_IGNORE.match(out):
        out = _INSERT_OR_IGNORE.sub("INSERT INTO", out, count=1)
        returning = _RETURNING.search(out)
        if returning is None:
            out = out.rstrip() + " ON CONFLICT DO NOTHING"
        else:
            out = out[: returning.start()] + "ON CONFLICT DO NOTHING " + out[returning.start() :]
    return out.replace("?", "%s")


_DDL_RULES: Final = (
    (
        re.compile(r"\bINTEGER\s+PRIMARY\s+KEY\s+AUTOINCREMENT\b", re.IGNORECASE),
        "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
    ),
    (re.compile(r"\bREAL\b"), "DOUBLE PRECISION"),
    (re.compile(r"\bINTEGER\b"), "BIGINT"),
    (re.compile(r"\bTEXT\b"), 'TEXT COLLATE "C"'),
)


def pg_ddl(statement: str) -> str:
    """Translate one schema statement written for SQLite to PostgreSQL types (see the module docstring)."""
    out = statement
    for pattern, replacement in _DDL_RULES:
        out = pattern.sub(replacement, out)
    return out


def _redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = parts.username or ""
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[-1]}"))


class _PgConnection:
    """A psycopg connection that takes the store's ``?`` statements."""

    def __init__(self, raw: Any) -> None:
        self._raw = raw

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> Cursor:
        cursor: Cursor = self._raw.execute(pg_sql(sql), tuple(parameters))
        return cursor


def _import_psycopg() -> Any:
    try:
        import psycopg
    except ImportError as exc:
        raise ConfigError(
            "store: a postgresql:// store needs psycopg 3: pip install 'fragileprobe[sites]'"
        ) from exc
    return psycopg


class PostgresBackend:
    """A PostgreSQL database: one advisory lock serializes writers; ``fragileprobe_meta`` holds the version.

    The connection runs in autocommit mode: reads see every committed write at once, and each write
    transaction is an explicit ``BEGIN ... COMMIT`` that first takes the store's advisory write lock
    (waiting at most ``busy_timeout_s``: ``lock_timeout``). A committed transaction is durable by
    PostgreSQL's own rules (WAL, ``synchronous_commit`` on by default). A connection lost between calls
    is re-opened once on the next call; a transaction cut by a lost connection is rolled back by the server
    and reported as StoreError, never retried blindly.

    Raises:
        StoreError: The server cannot be reached, the database is foreign (other tables and no
            ``fragileprobe_meta``), from a newer schema, or locked beyond the timeout.
        ConfigError: psycopg is not installed.
    """

    def __init__(self, url: str, *, busy_timeout_s: float, migrations: Sequence[str]) -> None:
        self._psycopg = _import_psycopg()
        self._url = url
        self.location = _redact(url)
        self.busy_timeout_s = busy_timeout_s
        self._raw: Any = None
        self._connect()
        opened = False
        try:
            self._migrate(migrations)
            opened = True
        finally:
            if not opened:
                self.close()

    def _connect(self) -> None:
        with translated(self.location, "open"):
            self._raw = self._psycopg.connect(
                self._url,
                autocommit=True,
                connect_timeout=PG_CONNECT_TIMEOUT_S,
                application_name="fragileprobe",
            )

    def _ensure(self) -> None:
        if self._raw is None or self._raw.closed or self._raw.broken:
            log.info("store.reconnect", location=self.location)
            self._connect()

    def _migrate(self, migrations: Sequence[str]) -> None:
        """Claim a new database (or prove an existing one ours) and apply the missing schema steps."""
        target = len(migrations)
        with self.write() as conn:
            version = self._stored_version(conn, target)
            for step in migrations[version:]:
                for statement in _statements(step):
                    self._raw.execute(pg_ddl(statement))
            if version < target:
                conn.execute(
                    "UPDATE fragileprobe_meta SET value = ? WHERE key = 'schema_version'", (str(target),)
                )
        log.debug("store.opened", location=self.location, schema_version=target)

    def _stored_version(self, conn: Connection, target: int) -> int:
        """The schema version in ``fragileprobe_meta`` (created, at 0, in an empty database).

        Raises:
            StoreError: Other tables and no ``fragileprobe_meta`` (a foreign database), another
                application's meta table, a version that is not a number or newer than ``target``.
        """
        if not conn.execute("SELECT to_regclass('fragileprobe_meta') IS NOT NULL").fetchone()[0]:
            others = conn.execute(
                "SELECT count(*) FROM information_schema.tables WHERE table_schema = current_schema()"
            ).fetchone()[0]
            if others:
                raise StoreError(
                    f"profile store {self.location} holds {others} other tables and no "
                    "fragileprobe_meta: a foreign database, refused (give fragileprobe its own database)"
                )
            conn.execute("CREATE TABLE fragileprobe_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            conn.execute(
                "INSERT INTO fragileprobe_meta(key, value) VALUES ('application', ?), "
                "('schema_version', '0')",
                (PG_APPLICATION,),
            )
        rows = dict(conn.execute("SELECT key, value FROM fragileprobe_meta").fetchall())
        if rows.get("application") != PG_APPLICATION:
            raise StoreError(
                f"profile store {self.location}: fragileprobe_meta names application "
                f"{rows.get('application')!r}, not {PG_APPLICATION!r}: refused"
            )
        try:
            version = int(rows.get("schema_version", ""))
        except ValueError:
            raise StoreError(
                f"profile store {self.location} is corrupt: schema_version "
                f"{rows.get('schema_version')!r} is not a number"
            ) from None
        if version > target:
            raise StoreError(
                f"profile store {self.location} has schema version {version}, newer than this "
                f"fragileprobe supports ({target}); upgrade fragileprobe or use another database"
            )
        return version

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """One write transaction holding the store's advisory write lock from its first statement."""
        pg = self._psycopg
        with translated(self.location, "use"):
            self._ensure()
            raw = self._raw
            raw.execute("BEGIN")
        committed = False
        try:
            with translated(self.location, "write", waited_s=self.busy_timeout_s):
                raw.execute(f"SET LOCAL lock_timeout = {int(self.busy_timeout_s * 1000)}")
                raw.execute("SELECT pg_advisory_xact_lock(%s)", (PG_WRITE_LOCK_KEY,))
            with translated(self.location, "use"):
                yield _PgConnection(raw)
            with translated(self.location, "commit"):
                raw.execute("COMMIT")
            committed = True
        finally:
            if not committed and not raw.closed and not raw.broken:
                # Whatever interrupted the transaction, nothing half-written stays.
                with _suppress(pg.Error):
                    raw.execute("ROLLBACK")

    def query(self, sql: str, args: Sequence[Any]) -> list[tuple[Any, ...]]:
        """Run one read statement (autocommit: it sees every committed write)."""
        with translated(self.location, "use"):
            self._ensure()
            return list(self._raw.execute(pg_sql(sql), tuple(args)).fetchall())

    def close(self) -> None:
        """Close the connection."""
        if self._raw is not None:
            with _suppress(self._psycopg.Error):
                self._raw.close()


@contextmanager
def _suppress(kind: type[BaseException]) -> Iterator[None]:
    try:
        yield
    except kind as exc:
        log.debug("store.cleanup_failed", error=_one_line(exc))


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
