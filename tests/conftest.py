"""Fixtures shared by all tests: a real Mosquitto per test, database URLs."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from sensortasks.testing import MosquittoBroker

POSTGRES_URL = os.environ.get("SENSORTASKS_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    with MosquittoBroker(workdir=tmp_path / "broker") as running:
        yield running


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path}/sensortasks.db"


async def postgres_admin() -> asyncpg.Connection:
    """A connection to the local PostgreSQL's admin database.

    Skips with a visible reason when PostgreSQL is unreachable, and fails instead when
    ``SENSORTASKS_REQUIRE_POSTGRES=1`` (CI), so it cannot skip silently there.
    """
    admin = make_url(POSTGRES_URL)
    try:
        return await asyncpg.connect(
            host=admin.host,
            port=admin.port,
            user=admin.username,
            password=admin.password,
            database=admin.database,
            timeout=3,
        )
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        reason = f"PostgreSQL not reachable at {admin.host}:{admin.port} ({exc})"
        if os.environ.get("SENSORTASKS_REQUIRE_POSTGRES") == "1":
            pytest.fail(reason + " and SENSORTASKS_REQUIRE_POSTGRES=1")
        pytest.skip(reason)


def postgres_url_of(name: str) -> str:
    return make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)


@contextlib.asynccontextmanager
async def postgres_database() -> AsyncIterator[str]:
    """A fresh database on the local PostgreSQL, dropped afterwards."""
    conn = await postgres_admin()
    name = f"sensortasks_test_{uuid.uuid4().hex[:12]}"
    await conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield postgres_url_of(name)
    finally:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    """A fresh PostgreSQL database, for tests that need PostgreSQL itself (mark them `postgres`)."""
    async with postgres_database() as url:
        yield url


#: The databases `database_url` runs a test on, with the marks each one needs.
DATABASES: dict[str, tuple[pytest.MarkDecorator, ...]] = {"sqlite": (), "postgresql": (pytest.mark.postgres,)}


def _database_params(*names: str) -> list[pytest.ParameterSet]:
    return [pytest.param(name, marks=DATABASES[name], id=name) for name in names]


@pytest.fixture(params=_database_params(*DATABASES))
async def database_url(request: pytest.FixtureRequest, sqlite_url: str) -> AsyncIterator[str]:
    """A fresh, empty database: a SQLite file, then a PostgreSQL database (``test_x[postgresql]``).

    Not migrated: whatever uses it migrates it, as `serve` does."""
    if request.param == "sqlite":
        yield sqlite_url
        return
    async with postgres_database() as url:
        yield url


def only_on(database: str) -> pytest.MarkDecorator:
    """Run a test (or, as ``pytestmark``, a module) whose fixtures take `database_url` on one
    database only. Say at the use why the other one proves nothing there."""
    return pytest.mark.parametrize("database_url", _database_params(database), indirect=True)
