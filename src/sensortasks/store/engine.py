"""Engines for the configured database, with SQLite made safe for concurrent writers.

SQLite: WAL, a busy timeout, and ``BEGIN IMMEDIATE`` on the writer engine, so that
read-modify-write transactions serialise instead of losing updates (NOTES.md); reads go
through a second engine with deferred transactions, which WAL lets run beside a writer.
PostgreSQL: one engine for both.
"""

from __future__ import annotations

import asyncio
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from sensortasks.errors import ConfigError, Unavailable

SQLITE_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA busy_timeout=5000",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA foreign_keys=ON",
)


def _sqlite_engine(url: str, *, immediate: bool) -> AsyncEngine:
    engine = create_async_engine(url)

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:  # noqa: ANN401
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_connection.cursor()
        for pragma in SQLITE_PRAGMAS:
            cursor.execute(pragma)
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:  # noqa: ANN401
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


@dataclass
class Database:
    url: str
    writer: AsyncEngine
    reader: AsyncEngine

    @property
    def is_sqlite(self) -> bool:
        return self.writer.dialect.name == "sqlite"

    def write_session(self) -> async_sessionmaker[Any]:
        return async_sessionmaker(self.writer, expire_on_commit=False)

    async def dispose(self) -> None:
        await self.writer.dispose()
        if self.reader is not self.writer:
            await self.reader.dispose()


def _sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL, its directory created; None for another database."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    if parsed.database in (None, "", ":memory:"):
        raise ConfigError("in-memory SQLite is not supported: give a file path")
    path = Path(parsed.database).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def open_database(url: str) -> Database:
    if _sqlite_file(url) is not None:
        return Database(url, _sqlite_engine(url, immediate=True), _sqlite_engine(url, immediate=False))
    engine = create_async_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True)
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
        path = _sqlite_file(url)
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
