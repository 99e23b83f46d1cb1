"""Instances that start together each upgrade the one database they share (SPEC section 7):
``sensortasks db upgrade`` run by several processes at the same moment, on a fresh database and
on an up-to-date one, always succeeds and leaves the schema at head, created once."""

from __future__ import annotations

import asyncio
import os
import sys

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from sensortasks.store.migrate import alembic_config
from tests.conftest import postgres_database

PROCESSES = 6
#: Runs ``python -m sensortasks db upgrade`` once the test says go (its stdin closes), with the
#: slow imports done first, so that every process reaches the database at the same moment
#: instead of one after another as their start-up times happen to fall.
AT_THE_START_LINE = """
import runpy, sys
import sensortasks.cli, sensortasks.store.migrate, sensortasks.store.tables
print("ready", flush=True)
sys.stdin.read()
sys.argv = ["sensortasks", "db", "upgrade"]
runpy.run_module("sensortasks", run_name="__main__", alter_sys=True)
"""


async def upgrade_together(url: str, processes: int = PROCESSES) -> None:
    """Start `processes` upgrades of `url` at once; fail with their output unless all exit 0."""
    env = os.environ | {"SENSORTASKS_DATABASE_URL": url}
    children = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            AT_THE_START_LINE,
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        for _ in range(processes)
    ]
    try:
        async with asyncio.timeout(90):
            for child in children:
                assert child.stdout is not None
                assert await child.stdout.readline() == b"ready\n"
            for child in children:
                assert child.stdin is not None
                child.stdin.close()
            outputs = [(await child.communicate())[0].decode() for child in children]
    finally:
        for child in children:
            if child.returncode is None:
                child.kill()
                await child.wait()
    failed = [(child.returncode, out) for child, out in zip(children, outputs, strict=True) if child.returncode != 0]
    assert not failed, f"{len(failed)} of {processes} upgrades failed: {failed}"
    assert all("database is up to date" in out for out in outputs), outputs


async def assert_at_head(url: str) -> None:
    head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            versions = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalars().all()
    finally:
        await engine.dispose()
    assert versions == [head]


async def upgrade_twice_together(url: str) -> None:
    await upgrade_together(url)  # a fresh database: one creates the schema, the others wait
    await assert_at_head(url)
    await upgrade_together(url)  # up to date: nothing to do for anyone
    await assert_at_head(url)


@pytest.mark.slow
async def test_upgrades_started_together_on_sqlite(sqlite_url: str) -> None:
    await upgrade_twice_together(sqlite_url)


@pytest.mark.slow
@pytest.mark.postgres
async def test_upgrades_started_together_on_postgres() -> None:
    async with postgres_database() as url:
        await upgrade_twice_together(url)
