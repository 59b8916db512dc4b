"""The store's database seam: one SQLite file or one PostgreSQL database, behind the same small interface.

:class:`~fragileprobe.ProfileStore` writes its SQL once, in the dialect both databases accept (``?``
placeholders, ``INSERT ... ON CONFLICT``, ``RETURNING``), and runs it through a backend chosen by the
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
  ``TEXT COLLATE "C"`` (byte order, as SQLite sorts, so ``ORDER BY host`` agrees on both);
* translating the driver's errors to :class:`~fragileprobe.StoreError`, here and nowhere else.

``psycopg`` is imported lazily, inside :class:`PostgresBackend`, so ``import fragileprobe`` never loads it
and a SQLite-only install never needs it. The SQL given to a backend contains no ``?`` or ``%`` inside
string literals (the translation is textual, and the store's statements are written so).
"""

from __future__ import annotations

import functools
import re
import sqlite3
import time
import urllib.parse
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol

import structlog

from fragileprobe._errors import ConfigError, StoreError

if TYPE_CHECKING:
    import os
    from collections.abc import Iterator, Sequence
    from contextlib import AbstractContextManager

__all__ = [
    "PG_APPLICATION",
    "PG_CONNECT_TIMEOUT_S",
    "PG_WRITE_LOCK_KEY",
    "Backend",
    "Connection",
    "Cursor",
    "PostgresBackend",
    "SqliteBackend",
    "is_database_url",
    "open_backend",
    "pg_sql",
    "pg_ddl",
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
        # waiting in the busy handler. Such a refusal is retried until busy_timeout_s has passed.
        deadline = time.monotonic() + busy_timeout_s
        while True:
            try:
                self._open_once(migrations)
                return
            except StoreError as exc:
                cause = exc.__cause__
                locked = isinstance(cause, sqlite3.OperationalError) and (
                    "locked" in str(cause) or "busy" in str(cause)
                )
                if not locked or time.monotonic() >= deadline:
                    raise
            time.sleep(_OPEN_RETRY_S)

    def _open_once(self, migrations: Sequence[str]) -> None:
        # Before the read-write connection: a foreign or damaged file is never opened for writing.
        self._inspect_existing(migrations)
        try:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves (BEGIN IMMEDIATE for writers).
            self._conn = sqlite3.connect(
                self.path, timeout=self.busy_timeout_s, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open profile store {self.path}: {exc}") from exc
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
        try:
            conn = sqlite3.connect(uri, uri=True, timeout=self.busy_timeout_s, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open profile store {self.path}: {exc}") from exc
        tables, indexes = _our_objects(migrations, "TABLE"), _our_objects(migrations, "INDEX")
        try:
            objects = conn.execute("SELECT type, name FROM sqlite_master").fetchall()
            foreign = sorted(
                f"{kind} {name!r}" for kind, name in objects
                if not str(name).startswith("sqlite_")
                and not (kind == "table" and name in tables)
                and not (kind == "index" and name in indexes)
            )  # fmt: skip
            if foreign:
                shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
                raise StoreError(
                    f"profile store {self.path} is not a fragileprobe store: it holds {shown}, which are not "
                    "ours; nothing was written (give another --store path)"
                )
            check = conn.execute("PRAGMA quick_check(1)").fetchone()[0]
        except sqlite3.OperationalError as exc:
            raise StoreError(f"profile store {self.path} is locked or unusable: {exc}") from exc
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"profile store {self.path} is corrupt or not a fragileprobe store: {exc}"
            ) from exc
        finally:
            conn.close()
        if check != "ok":
            raise StoreError(
                f"profile store {self.path} failed its integrity check: {check}; nothing was written"
            )

    def _open(self, migrations: Sequence[str]) -> None:
        conn = self._conn
        target = len(migrations)
        try:
            # Reading user_version first also proves the file is a database before anything is written.
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"profile store {self.path} is corrupt or not a fragileprobe store: {exc}"
            ) from exc
        if version > target:
            raise StoreError(
                f"profile store {self.path} has schema version {version}, newer than this fragileprobe "
                f"supports ({target}); upgrade fragileprobe or use another file"
            )
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            if version < target:
                with self.write():
                    current = int(conn.execute("PRAGMA user_version").fetchone()[0])
                    # Another process may have migrated meanwhile: apply only the steps still missing.
                    for step in migrations[current:]:
                        for statement in _statements(step):
                            conn.execute(statement)
                    if current < target:
                        conn.execute(f"PRAGMA user_version = {target}")
            if int(conn.execute("PRAGMA application_id").fetchone()[0]) != APPLICATION_ID:
                with self.write():  # ours (inspected above): a new store, or one from before the id
                    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            # A quick structural check: catches files whose header is fine but whose pages are damaged.
            check = conn.execute("PRAGMA quick_check(1)").fetchone()[0]
        except sqlite3.OperationalError as exc:
            raise StoreError(f"profile store {self.path} is locked or unusable: {exc}") from exc
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"profile store {self.path} is corrupt: {exc}") from exc
        if check != "ok":
            raise StoreError(f"profile store {self.path} failed its integrity check: {check}")
        log.debug("store.opened", path=str(self.path), journal_mode=mode, schema_version=target)

    @contextmanager
    def _begin(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, holding the write lock from the start (BEGIN IMMEDIATE)."""
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise StoreError(
                f"profile store {self.path} is locked by another writer "
                f"(waited {self.busy_timeout_s:g} s): {exc}"
            ) from exc
        committed = False
        try:
            yield conn
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise StoreError(f"profile store {self.path}: commit failed: {exc}") from exc
            committed = True
        finally:
            # Whatever interrupted the transaction (an error, KeyboardInterrupt), nothing half-written stays.
            if not committed and conn.in_transaction:
                conn.execute("ROLLBACK")

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """One write transaction; sqlite3 errors come out as StoreError."""
        try:
            with self._begin() as conn:
                yield conn
        except sqlite3.OperationalError as exc:
            raise StoreError(f"profile store {self.path} is locked or unusable: {exc}") from exc
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"profile store {self.path}: {exc}") from exc

    def query(self, sql: str, args: Sequence[Any]) -> list[tuple[Any, ...]]:
        """Run one read statement outside a transaction."""
        try:
            return list(self._conn.execute(sql, tuple(args)).fetchall())
        except sqlite3.OperationalError as exc:
            raise StoreError(f"profile store {self.path} is locked or unusable: {exc}") from exc
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"profile store {self.path}: {exc}") from exc

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
    (re.compile(r"\bINTEGER\s+PRIMARY\s+KEY\s+AUTOINCREMENT\b", re.IGNORECASE),
     "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"),
    (re.compile(r"\bREAL\b"), "DOUBLE PRECISION"),
    (re.compile(r"\bINTEGER\b"), "BIGINT"),
    (re.compile(r"\bTEXT\b"), 'TEXT COLLATE "C"'),
)  # fmt: skip


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
        try:
            self._raw = self._psycopg.connect(
                self._url, autocommit=True, connect_timeout=PG_CONNECT_TIMEOUT_S,
                application_name="fragileprobe",
            )  # fmt: skip
        except self._psycopg.Error as exc:
            raise StoreError(f"cannot open profile store {self.location}: {_one_line(exc)}") from exc

    def _ensure(self) -> None:
        if self._raw is None or self._raw.closed or self._raw.broken:
            log.info("store.reconnect", location=self.location)
            self._connect()

    def _migrate(self, migrations: Sequence[str]) -> None:
        target = len(migrations)
        with self.write() as conn:
            meta = conn.execute("SELECT to_regclass('fragileprobe_meta') IS NOT NULL").fetchone()[0]
            if not meta:
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
            for step in migrations[version:]:
                for statement in _statements(step):
                    self._raw.execute(pg_ddl(statement))
            if version < target:
                conn.execute(
                    "UPDATE fragileprobe_meta SET value = ? WHERE key = 'schema_version'", (str(target),)
                )
        log.debug("store.opened", location=self.location, schema_version=target)

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """One write transaction holding the store's advisory write lock from its first statement."""
        pg = self._psycopg
        try:
            self._ensure()
            raw = self._raw
            raw.execute("BEGIN")
        except pg.Error as exc:
            raise StoreError(f"profile store {self.location} is unreachable: {_one_line(exc)}") from exc
        committed = False
        try:
            try:
                raw.execute(f"SET LOCAL lock_timeout = {int(self.busy_timeout_s * 1000)}")
                raw.execute("SELECT pg_advisory_xact_lock(%s)", (PG_WRITE_LOCK_KEY,))
            except pg.errors.LockNotAvailable as exc:
                raise StoreError(
                    f"profile store {self.location} is locked by another writer "
                    f"(waited {self.busy_timeout_s:g} s)"
                ) from exc
            try:
                yield _PgConnection(raw)
                raw.execute("COMMIT")
            except pg.OperationalError as exc:
                raise StoreError(
                    f"profile store {self.location} is unreachable or unusable: {_one_line(exc)}"
                ) from exc
            except pg.Error as exc:
                raise StoreError(f"profile store {self.location}: {_one_line(exc)}") from exc
            committed = True
        finally:
            if not committed and not raw.closed and not raw.broken:
                # Whatever interrupted the transaction, nothing half-written stays.
                with _suppress(pg.Error):
                    raw.execute("ROLLBACK")

    def query(self, sql: str, args: Sequence[Any]) -> list[tuple[Any, ...]]:
        """Run one read statement (autocommit: it sees every committed write)."""
        pg = self._psycopg
        try:
            self._ensure()
            return list(self._raw.execute(pg_sql(sql), tuple(args)).fetchall())
        except pg.OperationalError as exc:
            raise StoreError(
                f"profile store {self.location} is unreachable or unusable: {_one_line(exc)}"
            ) from exc
        except pg.Error as exc:
            raise StoreError(f"profile store {self.location}: {_one_line(exc)}") from exc

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
