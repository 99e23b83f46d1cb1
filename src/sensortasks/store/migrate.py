"""Alembic, driven from code: ``sensortasks db upgrade`` and ``serve`` on start.

Several instances may start at once on one database (SPEC section 7), each upgrading it. So an
upgrade holds a lock, taken before Alembic reads its version table, until it is done: the others
wait for it, then find the schema at head and do nothing.

- PostgreSQL: a *session-level* advisory lock on the migration's own connection. Not a
  transaction-level one, because Alembic may commit before it is done (``transaction_per_migration``,
  or an ``autocommit_block`` for ``CREATE INDEX CONCURRENTLY``), and a transaction-level lock would
  be released at that commit, letting a waiter in half way. The connection serves nothing else
  and is closed at the end (`NullPool`), which releases the lock, also when the upgrade fails or
  its process dies. (Behind a PgBouncer in transaction pooling, migrate on PostgreSQL directly.)
- SQLite: the whole upgrade is one transaction begun with ``BEGIN EXCLUSIVE``. Left to itself,
  Alembic runs SQLite DDL outside any transaction (its SQLite dialect declares non-transactional
  DDL, and the sqlite3 module begins transactions only before DML), so processes starting
  together each see no version table and each create the schema: "index ... already exists".
  One transaction also means that a failed upgrade leaves nothing half done.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import event, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).with_name("migrations")
#: The PostgreSQL advisory lock key of schema upgrades (any fixed number: the locks are per database).
MIGRATION_LOCK_KEY = 0x73656E736F727461  # "sensorta"
#: How long a SQLite upgrade waits for another process's transaction (its busy timeout).
SQLITE_WAIT_S = 120.0


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade_to_head(url: str) -> None:
    logging.getLogger("alembic").setLevel(logging.WARNING)  # one line per plugin otherwise
    command.upgrade(alembic_config(url), "head")


def migration_engine(url: str) -> AsyncEngine:
    """The engine an upgrade runs on: one connection, closed when done.

    Not the store's SQLite engine: migrations run with foreign keys off (batch mode copies and
    drops tables that others reference), and their transaction is exclusive.
    """
    if make_url(url).get_backend_name() != "sqlite":
        return create_async_engine(url, poolclass=NullPool)
    engine = create_async_engine(url, poolclass=NullPool, connect_args={"timeout": SQLITE_WAIT_S})

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:  # noqa: ANN401
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves, DDL included

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:  # noqa: ANN401
        conn.exec_driver_sql("BEGIN EXCLUSIVE")

    return engine


def lock_schema(connection: Connection) -> None:
    """On PostgreSQL, wait until no other upgrade runs and hold the lock for this connection's
    life (see the module docstring); on SQLite the lock is the exclusive transaction Alembic
    begins next."""
    if connection.dialect.name != "postgresql":
        return
    key = {"key": MIGRATION_LOCK_KEY}
    if not connection.scalar(text("SELECT pg_try_advisory_lock(:key)"), key):
        log.info("another process is upgrading the database schema; waiting for it")
        connection.execute(text("SELECT pg_advisory_lock(:key)"), key)
    connection.commit()  # the lock outlives this transaction; Alembic begins its own
