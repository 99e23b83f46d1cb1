"""Alembic environment: async engines, SQLModel metadata, batch mode for SQLite, and the lock
that lets several instances upgrade one database at once (`sensortasks.store.migrate`)."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection
from sqlmodel import SQLModel

import sensortasks.store.tables  # noqa: F401  (registers the tables)
from sensortasks.store.migrate import lock_schema, migration_engine

target_metadata = SQLModel.metadata


def _run(connection: Connection) -> None:
    lock_schema(connection)
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        transactional_ddl=True,  # one transaction for the whole upgrade, on SQLite too
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_async() -> None:
    engine = migration_engine(context.config.get_main_option("sqlalchemy.url") or "")
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    context.configure(
        url=context.config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(_run_async())
