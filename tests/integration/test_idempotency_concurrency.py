"""One ``Idempotency-Key``, one creation, whatever happens around it: the same ``POST /v1/tasks``
sent at the same moment to two instances sharing one database (two apps, two engines, as two
processes would have) creates one task and both callers get the same answer; a request that
failed, died before or after its commit, or was taken over while it ran, is never run twice."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import timedelta
from operator import itemgetter
from typing import Any

import httpx
import pytest
from sqlalchemy import event

from sensortasks.api import create_app
from sensortasks.config import Settings
from sensortasks.errors import Conflict, InvalidInput
from sensortasks.protocol.commands import TaskCreate
from sensortasks.runtime import build_service, build_store
from sensortasks.service import tasks as tasks_service
from sensortasks.service.tasks import IDEMPOTENCY_STALE, TaskService
from sensortasks.store import Remembered, Task, TaskFilter, TaskStore, upgrade, utcnow

from .conftest import FILE_ID

PAIRS = 20
SERIAL = 345678901234567


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


BODY = TaskCreate.model_validate({"sensor_serial": SERIAL, "file_id": FILE_ID, "type": "update_firmware"})
REQUEST = {"path": "/v1/tasks", "body": BODY.model_dump(mode="json")}


def answer_ids(tasks: Sequence[Task]) -> tuple[int, str]:
    return 201, json.dumps([t.id for t in tasks])


async def task_ids(store: TaskStore) -> list[int]:
    rows, _ = await store.list_tasks(TaskFilter())
    return sorted(t.id for t in rows if t.id is not None)


async def test_a_failed_request_releases_its_key(database_url: str) -> None:
    async with service_on(database_url) as service:
        with pytest.raises(InvalidInput, match="not registered"):
            await service.create_once("retry-me", 7, lambda: REQUEST, [BODY], answer_ids)
        assert await service.store.remembered(7, "retry-me") is None
        await service.store.register_sensor(SERIAL, customer_id=7, now=utcnow())
        status, body = await service.create_once("retry-me", 7, lambda: REQUEST, [BODY], answer_ids)
        assert (status, json.loads(body)) == (201, await task_ids(service.store))


async def test_a_claim_left_by_a_dead_request_is_taken_over(database_url: str) -> None:
    async with service_on(database_url) as service:
        died_at = utcnow() - IDEMPOTENCY_STALE - timedelta(seconds=1)
        keep = timedelta(days=2)
        assert await service.store.claim(0, "orphan", "x" * 64, now=died_at, keep=keep, stale=IDEMPOTENCY_STALE) is None
        status, body = await service.create_once("orphan", None, lambda: REQUEST, [BODY], answer_ids)
        assert (status, json.loads(body)) == (201, await task_ids(service.store))


async def test_a_request_still_running_elsewhere_is_waited_for_then_a_conflict(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tasks_service, "IDEMPOTENCY_WAIT_S", 0.3)
    async with service_on(database_url) as elsewhere, service_on(database_url) as here:
        running = asyncio.Event()

        async def stuck(*_: object, **__: object) -> Remembered | None:
            running.set()
            await asyncio.Event().wait()  # never answers: cancelled below
            raise AssertionError

        monkeypatch.setattr(elsewhere.store, "create_answering", stuck)
        first = asyncio.create_task(elsewhere.create_once("slow", None, lambda: REQUEST, [BODY], answer_ids))
        await running.wait()
        with pytest.raises(Conflict, match="still being processed"):
            await here.create_once("slow", None, lambda: REQUEST, [BODY], answer_ids)
        with pytest.raises(Conflict, match="different request"):
            await here.create_once("slow", None, lambda: {**REQUEST, "body": {"n": 2}}, [BODY], answer_ids)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        status, body = await here.create_once("slow", None, lambda: REQUEST, [BODY], answer_ids)
        assert (status, json.loads(body)) == (201, await task_ids(here.store))


def lose_the_connection_after_the_tasks_commit(store: TaskStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """From the commit of the transaction that inserts tasks on, `store`'s database is gone: that
    commit goes through but its caller gets a connection error (as when the link drops while the
    COMMIT is acknowledged), and every later statement fails the same way (as a process killed
    there would send none). The real transaction, cut at the seam where an answer stored after
    the commit would be lost."""
    inserted = lost = False

    @event.listens_for(store.db.writer.sync_engine, "after_cursor_execute")
    def _inserting(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        nonlocal inserted
        inserted = inserted or statement.lstrip().upper().startswith("INSERT INTO TASKS ")

    def cut() -> None:
        if lost:
            raise OSError("connection lost")

    write, read = store._write, store._read

    @contextlib.asynccontextmanager
    async def lossy_write() -> AsyncIterator[Any]:
        nonlocal lost
        cut()
        async with write() as conn:
            yield conn
        lost = inserted
        cut()

    @contextlib.asynccontextmanager
    async def lossy_read() -> AsyncIterator[Any]:
        cut()
        async with read() as conn:
            yield conn

    monkeypatch.setattr(store, "_write", lossy_write)
    monkeypatch.setattr(store, "_read", lossy_read)


TWO = {"tasks": [REQUEST["body"], {**REQUEST["body"], "sensor_serial": SERIAL + 1}]}


@pytest.mark.parametrize(
    ("path", "body", "created"),
    [("/v1/tasks", REQUEST["body"], lambda answer: [answer["id"]]), ("/v1/tasks/bulk", TWO, itemgetter("ids"))],
    ids=["one", "bulk"],
)
async def test_a_request_that_died_after_its_commit_is_answered_not_run_again(
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    path: str,
    body: dict[str, Any],
    created: Callable[[Any], list[int]],
) -> None:
    """The tasks are committed, then the instance loses its database before it can answer (or
    dies): the client's retry, at another instance once the claim is stale, gets the first
    answer, and the tasks exist once."""
    await upgrade(database_url)
    headers = {"Idempotency-Key": "order-42"}
    async with instance(database_url) as (dying, dying_store), instance(database_url) as (other, store):
        lose_the_connection_after_the_tasks_commit(dying_store, monkeypatch)
        lost = await dying.post(path, json=body, headers=headers)
        assert lost.status_code == 503, lost.text
        monkeypatch.setattr(tasks_service, "IDEMPOTENCY_STALE", timedelta(0))  # every claim is stale by now
        retried = await other.post(path, json=body, headers=headers)
        assert retried.status_code == 201, retried.text
        assert sorted(created(retried.json())) == await task_ids(store)
        assert len(await task_ids(store)) == len(body.get("tasks", [body]))


async def test_a_request_whose_claim_was_taken_over_creates_nothing(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request so slow that its claim looked dead: another takes the key over and answers it;
    the slow one, when it gets to create its tasks, creates nothing and returns that answer."""
    monkeypatch.setattr(tasks_service, "IDEMPOTENCY_STALE", timedelta(0))
    async with service_on(database_url) as slow, service_on(database_url) as fast:
        claim = slow.store.claim
        answers: list[tuple[int, str]] = []

        async def overtaken(*args: Any, **kwargs: Any) -> Remembered | None:
            known = await claim(*args, **kwargs)
            if known is None and not answers:  # slow holds the key: fast takes it over meanwhile
                answers.append(await fast.create_once("late", None, lambda: REQUEST, [BODY], answer_ids))
            return known

        monkeypatch.setattr(slow.store, "claim", overtaken)
        assert await slow.create_once("late", None, lambda: REQUEST, [BODY], answer_ids) == answers[0]
        assert json.loads(answers[0][1]) == await task_ids(slow.store)
