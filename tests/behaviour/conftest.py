"""The dispatcher's rules as behaviour tests, run on every backend (see harness.py).

`pytest tests/behaviour -k memory` is the fast tier: the in-memory store, the fake link
and the fake clock, milliseconds per test.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sensortasks.store import upgrade
from sensortasks.testing import MosquittoBroker
from tests.conftest import postgres_admin, postgres_url_of

from .harness import BACKENDS, Backing, Harness, running

Start = Callable[..., Awaitable[Harness]]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file that each test copies (migrating costs ~10x a copy)."""
    path = tmp_path_factory.mktemp("behaviour") / "template.db"
    asyncio.run(upgrade(f"sqlite+aiosqlite:///{path}"))
    assert not path.with_name(path.name + "-wal").exists()  # checkpointed: the file is the whole database
    return path


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """One migrated PostgreSQL database for the session, emptied before each test
    (TRUNCATE costs a tenth of creating a database from a template, and a fortieth of migrating one)."""
    name = f"sensortasks_behaviour_{uuid.uuid4().hex[:12]}"

    async def sql(statement: str) -> None:
        conn = await postgres_admin()  # skips (or fails, in CI) when PostgreSQL is unreachable
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(sql(f'CREATE DATABASE "{name}"'))
    try:
        asyncio.run(upgrade(postgres_url_of(name)))
        yield postgres_url_of(name)
    finally:
        asyncio.run(sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def shared_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoBroker]:
    """One Mosquitto for the session's broker tests; each test gets topic prefixes of its own."""
    with MosquittoBroker(workdir=tmp_path_factory.mktemp("behaviour-broker")) as broker:
        yield broker


@pytest.fixture
def backing(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Backing:
    """What the backend runs on. A sync fixture that `start` depends on, so that the
    session's databases and broker are built outside the test's event loop."""
    if backend == "memory":
        return Backing()
    if backend == "postgres":
        return Backing(str(request.getfixturevalue("postgres_database")))
    path = tmp_path / "behaviour.db"
    shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
    if backend != "broker":
        return Backing(f"sqlite+aiosqlite:///{path}")
    return Backing(f"sqlite+aiosqlite:///{path}", request.getfixturevalue("shared_broker"), f"t{uuid.uuid4().hex[:8]}")


@pytest.fixture
async def start(backend: str, backing: Backing) -> AsyncIterator[Start]:
    """Start the dispatcher with settings overridden for this test."""
    async with contextlib.AsyncExitStack() as stack:

        async def make(**overrides: Any) -> Harness:
            return await stack.enter_async_context(running(backend, backing, **overrides))

        yield make


@pytest.fixture
async def harness(start: Start) -> Harness:
    return await start()
