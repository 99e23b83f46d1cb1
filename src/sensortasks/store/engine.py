"""Engines for the configured database, with SQLite made safe for concurrent writers.

SQLite: WAL, a busy timeout, and ``BEGIN IMMEDIATE`` on the writer engine, so that
read-modify-write transactions serialise instead of losing updates (NOTES.md); reads go
through a second engine with deferred transactions, which WAL lets run beside a writer.
PostgreSQL: one engine for both.

SQLite's hot write transactions (`StoreBase._transact`) run whole on one thread of their own,
on a third, synchronous engine: through aiosqlite every statement took three or four hops
between the event loop and its thread, and while the loop was busy each hop waited its turn,
so a status batch held the one writer 8.6 ms (p50) for well under one of SQLite's own work.

A SQLite database holds customer data, so its file is created readable by its owner only
(0600, whatever the umask); SQLite gives the ``-wal`` and ``-shm`` files it creates beside
it the main file's mode (checked with SQLite 3.40: a 0600 database gets 0600 ``-wal`` and
``-shm`` under umask 022), so they follow.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import stat
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from sensortasks.errors import ConfigError, Unavailable

log = logging.getLogger(__name__)

SQLITE_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA busy_timeout=5000",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA foreign_keys=ON",
)
#: How a new connection waits out a lock its pragmas hit (see `_locked_retry`).
LOCKED_RETRIES = 100
LOCKED_PAUSE_S = 0.01
#: Owner read and write, nothing for group and others.
PRIVATE_MODE = 0o600
#: Errors that say the database cannot take the request now (unreachable, restarting, locked
#: past the busy timeout, out of connections, pool exhausted), not that the request is wrong.
#: asyncpg's errors while connecting escape SQLAlchemy unwrapped (``ConnectionRefusedError``,
#: ``TimeoutError``: OSError; ``CannotConnectNowError`` while PostgreSQL starts or stops).
DATABASE_DOWN: tuple[type[Exception], ...] = (
    OperationalError,
    PoolTimeout,
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
)
#: PostgreSQL ends a session idle inside a transaction this long (ms). Every store transaction
#: runs its statements back to back; one left idle belongs to a process that was cut off or
#: frozen mid-transaction, and its row locks would otherwise block every other instance until
#: TCP gives up (minutes). The instance that loses it retries on a new connection.
IDLE_IN_TRANSACTION_MS = 3000
#: PostgreSQL keeps this many bytes of ``application_name`` (NAMEDATALEN - 1).
APPLICATION_NAME_MAX = 63
#: What a caller is told when the database cannot take its request.
DATABASE_UNAVAILABLE = "database unavailable; retry the request"


def database_down(exc: BaseException) -> bool:
    """Whether `exc` means "the database is unavailable, retry later" (a 503), not a bug; a
    connection lost in the middle of a statement is any DBAPIError that invalidated it."""
    return isinstance(exc, DATABASE_DOWN) or (isinstance(exc, DBAPIError) and exc.connection_invalidated)


def unavailable(exc: BaseException) -> Unavailable | None:
    """The one boundary for database failures: the `Unavailable` that `exc` means (itself if it
    already is one; a driver failure translated, with it as the cause), or None for anything
    else (a bug). REST (503), the MQTT commands (``unavailable``) and ``/healthz`` all ask this."""
    if isinstance(exc, Unavailable):
        return exc
    if not database_down(exc):
        return None
    translated = Unavailable(DATABASE_UNAVAILABLE)
    translated.__cause__ = exc
    return translated


def _private_file(path: Path) -> None:
    """Create `path` 0600 if missing; tighten it and its -wal/-shm if group or others have access.

    Existing files are tightened too, so that a database created by an older version (0644 under
    the usual umask) stops being world-readable; each change is logged.
    """
    with contextlib.suppress(FileExistsError):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, PRIVATE_MODE)
        try:
            os.fchmod(fd, PRIVATE_MODE)  # the umask may have taken owner bits away too
        finally:
            os.close(fd)
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            mode = stat.S_IMODE(file.stat().st_mode)
            if mode & 0o077:
                file.chmod(mode & 0o700)
                log.warning("database file %s was mode %03o, now %03o (owner only)", file, mode, mode & 0o700)
        except FileNotFoundError:
            continue
        except PermissionError as exc:
            log.warning("database file %s cannot be made owner-only: %s", file, exc)


def _sqlite_path(url: str) -> Path | None:
    """The database file of a SQLite `url` (its directory created), None for other databases."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    if parsed.database in (None, "", ":memory:"):
        raise ConfigError("in-memory SQLite is not supported: give a file path")
    path = Path(parsed.database).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    _private_file(path)
    return path


def _locked_retry(cursor: Any, pragma: str) -> None:  # noqa: ANN401
    """Run a connection's pragma, waiting out a "database is locked" that came at once:
    ``journal_mode`` on a new connection answered it without waiting for the busy timeout
    while another connection wrote (a 503 in about 1 of 15 runs of two instances racing on one
    file). One that came after the busy timeout is a real lock, and raised."""
    for attempt in range(LOCKED_RETRIES):
        started = time.monotonic()
        try:
            cursor.execute(pragma)
            return
        except Exception as exc:
            waited = time.monotonic() - started
            if "locked" not in str(exc) or waited > LOCKED_PAUSE_S * 10 or attempt == LOCKED_RETRIES - 1:
                raise
            time.sleep(LOCKED_PAUSE_S)  # rare, and a new connection only


def _sqlite_engine(url: str, *, immediate: bool) -> AsyncEngine:
    engine = create_async_engine(url)
    _prepare_sqlite(engine.sync_engine, immediate=immediate)
    return engine


def _sqlite_thread_engine(url: str) -> Engine:
    """The writer engine of `_transact` on the standard library's driver: its connections live on
    the writer thread, but SQLAlchemy may close them from another at dispose."""
    engine = create_engine(
        make_url(url).set(drivername="sqlite"), connect_args={"check_same_thread": False}, pool_size=1, max_overflow=0
    )
    _prepare_sqlite(engine, immediate=True)
    return engine


def _prepare_sqlite(engine: Engine, *, immediate: bool) -> None:
    """Every connection of `engine` gets `SQLITE_PRAGMAS`; every transaction begins as we say."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:  # noqa: ANN401
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_connection.cursor()
        for pragma in SQLITE_PRAGMAS:
            _locked_retry(cursor, pragma)
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:  # noqa: ANN401
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


@dataclass
class Database:
    url: str
    writer: AsyncEngine
    reader: AsyncEngine
    #: SQLite: the synchronous writer engine of `StoreBase._transact` and its one thread.
    thread_writer: Engine | None = None
    writer_thread: ThreadPoolExecutor | None = field(default=None, repr=False)

    @property
    def is_sqlite(self) -> bool:
        return self.writer.dialect.name == "sqlite"

    @property
    def writer_engines(self) -> tuple[Engine, ...]:
        """Every synchronous engine that writes (for hooks on the statements of each)."""
        writer = self.writer.sync_engine
        return (writer,) if self.thread_writer is None else (writer, self.thread_writer)

    def write_session(self) -> async_sessionmaker[Any]:
        return async_sessionmaker(self.writer, expire_on_commit=False)

    async def dispose(self) -> None:
        await self.writer.dispose()
        if self.reader is not self.writer:
            await self.reader.dispose()
        if self.writer_thread is not None and self.thread_writer is not None:
            # Usable again after, as SQLAlchemy's engines are: a new executor starts no thread
            # until it is given work.
            thread, self.writer_thread = self.writer_thread, _writer_thread()
            await asyncio.get_running_loop().run_in_executor(thread, self.thread_writer.dispose)
            thread.shutdown(wait=False)


def _writer_thread() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")


def _sqlite_database(url: str) -> Database:
    writer, reader = _sqlite_engine(url, immediate=True), _sqlite_engine(url, immediate=False)
    return Database(url, writer, reader, _sqlite_thread_engine(url), _writer_thread())


def application_name(instance: str) -> str:
    """How an instance's PostgreSQL sessions are named (``pg_stat_activity.application_name``),
    so that the leader can end them once the instance is silent (`MemberQueries.beat`)."""
    return f"sensortasks:{instance}".encode()[:APPLICATION_NAME_MAX].decode(errors="ignore")


def open_database(url: str, *, instance: str | None = None) -> Database:
    """Engines for `url`; on PostgreSQL, sessions named after `instance` (`application_name`)."""
    if _sqlite_path(url) is not None:
        return _sqlite_database(url)
    settings = {"idle_in_transaction_session_timeout": str(IDLE_IN_TRANSACTION_MS)}
    if instance is not None:
        settings["application_name"] = application_name(instance)
    engine = create_async_engine(
        url, pool_size=10, max_overflow=10, pool_pre_ping=True, connect_args={"server_settings": settings}
    )
    return Database(url, engine, engine)


def safe_url(url: str) -> str:
    """`url` without its password, for messages."""
    return make_url(url).render_as_string(hide_password=True)


async def upgrade(url: str) -> None:
    """Bring the schema at `url` up to date with the Alembic migrations.

    Raises `Unavailable` naming the database (never its password) when it cannot be used:
    this is the first thing every command that needs the database does.
    """
    from sensortasks.store.migrate import upgrade_to_head  # noqa: PLC0415

    def run() -> None:
        # Created 0600 here, so that the migration does not create it with the umask's mode.
        path = _sqlite_path(url)
        if path is not None:
            # Open it plainly first: aiosqlite, failing to open a file, may report it to an
            # event loop that is already closed (a thread traceback after our error line).
            sqlite3.connect(path).close()
        upgrade_to_head(url)

    try:
        await asyncio.to_thread(run)
    except (DBAPIError, sqlite3.Error, OSError) as exc:
        reason = exc.orig if isinstance(exc, DBAPIError) else exc
        raise Unavailable(f"cannot use the database {safe_url(url)}: {reason}") from exc
