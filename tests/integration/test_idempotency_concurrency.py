"""The same ``POST /v1/tasks`` with the same ``Idempotency-Key``, sent at the same moment to two
instances sharing one database (two apps, two engines, as two processes would have): one task
per key, and both callers get the same answer."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest

from sensortasks.api import create_app
from sensortasks.config import Settings
from sensortasks.errors import Conflict, Unavailable
from sensortasks.runtime import build_service, build_store
from sensortasks.service import tasks as tasks_service
from sensortasks.service.tasks import IDEMPOTENCY_STALE, TaskService
from sensortasks.store import TaskFilter, TaskStore, upgrade, utcnow
from tests.conftest import postgres_database

from .conftest import FILE_ID

PAIRS = 20
SERIAL = 345678901234567


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def database_url(request: pytest.FixtureRequest, sqlite_url: str) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield sqlite_url
        return
    async with postgres_database() as url:
        yield url


@contextlib.asynccontextmanager
async def instance(url: str) -> AsyncIterator[tuple[httpx.AsyncClient, TaskStore]]:
    """An API-only instance on `url` (its own engines, as its own process would have)."""
    settings = Settings(database_url=url, auth="disabled", instance=f"api-{uuid.uuid4().hex[:8]}")
    store = build_store(settings)
    app = create_app(build_service(settings, store))
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sensortasks.test") as api:
            yield api, store
    finally:
        await store.db.dispose()


async def test_one_task_per_key_when_two_instances_race(database_url: str) -> None:
    await upgrade(database_url)
    async with instance(database_url) as (first, store), instance(database_url) as (second, _):

        async def send_pair(i: int) -> tuple[httpx.Response, httpx.Response]:
            body = {"sensor_serial": SERIAL + i, "file_id": FILE_ID, "type": "update_firmware"}
            headers = {"Idempotency-Key": f"race-{i}"}
            return await asyncio.gather(
                first.post("/v1/tasks", json=body, headers=headers),
                second.post("/v1/tasks", json=body, headers=headers),
            )

        pairs = await asyncio.gather(*(send_pair(i) for i in range(PAIRS)))
        for a, b in pairs:
            assert (a.status_code, b.status_code) == (201, 201), (a.text, b.text)
            assert a.json() == b.json()
        ids: set[Any] = {a.json()["id"] for a, _ in pairs}
        assert len(ids) == PAIRS
        assert await store.count_tasks(TaskFilter()) == PAIRS


@contextlib.asynccontextmanager
async def service_on(url: str) -> AsyncIterator[TaskService]:
    await upgrade(url)
    settings = Settings(database_url=url, auth="disabled")
    store = build_store(settings)
    try:
        yield build_service(settings, store)
    finally:
        await store.db.dispose()


REQUEST = {"path": "/v1/tasks", "body": {"n": 1}}


async def answer() -> tuple[int, str]:
    return 201, '{"id": 1}'


async def test_a_failed_request_releases_its_key(database_url: str) -> None:
    async def fail() -> tuple[int, str]:
        raise Unavailable("database unavailable; retry the request")

    async with service_on(database_url) as service:
        with pytest.raises(Unavailable):
            await service.create_once("retry-me", None, REQUEST, fail)
        assert await service.store.remembered(0, "retry-me") is None
        assert await service.create_once("retry-me", None, REQUEST, answer) == (201, '{"id": 1}')


async def test_a_claim_left_by_a_dead_request_is_taken_over(database_url: str) -> None:
    async with service_on(database_url) as service:
        died_at = utcnow() - IDEMPOTENCY_STALE - timedelta(seconds=1)
        keep = timedelta(days=2)
        assert await service.store.claim(0, "orphan", "x" * 64, now=died_at, keep=keep, stale=IDEMPOTENCY_STALE) is None
        assert await service.create_once("orphan", None, REQUEST, answer) == (201, '{"id": 1}')


async def test_a_request_still_running_elsewhere_is_waited_for_then_a_conflict(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tasks_service, "IDEMPOTENCY_WAIT_S", 0.3)
    async with service_on(database_url) as service:
        running = asyncio.Event()

        async def slow() -> tuple[int, str]:
            running.set()
            await asyncio.Event().wait()  # never answers: cancelled below
            raise AssertionError

        elsewhere = asyncio.create_task(service.create_once("slow", None, REQUEST, slow))
        await running.wait()
        with pytest.raises(Conflict, match="still being processed"):
            await service.create_once("slow", None, REQUEST, answer)
        with pytest.raises(Conflict, match="different request"):
            await service.create_once("slow", None, {**REQUEST, "body": {"n": 2}}, answer)
        elsewhere.cancel()
        with pytest.raises(asyncio.CancelledError):
            await elsewhere
        assert await service.create_once("slow", None, REQUEST, answer) == (201, '{"id": 1}')
