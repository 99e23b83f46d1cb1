"""TaskStore on a real SQLite file and a real PostgreSQL: guarded updates, batches, races."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from sqlalchemy import event

from sensortasks.domain import RetryPolicy, TaskStatus
from sensortasks.errors import Conflict, InvalidInput, NotFound
from sensortasks.store import (
    IncomingReport,
    NewTask,
    PastTask,
    TaskFilter,
    TaskStore,
    open_database,
    upgrade,
    utcnow,
)
from tests.conftest import postgres_database

FILE_ID = "a3e4aed2-b091-41a6-8265-2185040e2c32"


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, sqlite_url: str) -> AsyncIterator[TaskStore]:
    async with contextlib.AsyncExitStack() as stack:
        url = sqlite_url if request.param == "sqlite" else await stack.enter_async_context(postgres_database())
        await upgrade(url)
        db = open_database(url)
        stack.push_async_callback(db.dispose)
        yield TaskStore(db, RetryPolicy(0, 0))


def new(serial: int, n: int = 1) -> list[NewTask]:
    return [NewTask(serial, "update_firmware", FILE_ID, 3, 3600) for _ in range(n)]


async def test_a_sensor_gets_one_task_at_a_time_oldest_first(store: TaskStore) -> None:
    first, second = await store.create(new(1, 2), customer_id=None, now=utcnow())
    claimed = await store.claim_next([1], now=utcnow())
    assert [(d.task_id, d.attempt) for d in claimed] == [(first.id, 1)]
    assert await store.claim_next(None, now=utcnow()) == []  # the head is in flight
    done = await store.apply_reports([IncomingReport(1, first.id or 0, 1, "completed")], now=utcnow())
    assert [t.target for t in done.transitions] == [TaskStatus.ONGOING, TaskStatus.COMPLETED]
    # The batch that freed the sensor claimed its next task, in the same transaction.
    assert [(d.task_id, d.attempt) for d in done.dispatches] == [(second.id, 1)]
    assert await store.claim_next([1], now=utcnow()) == []  # in flight already


async def test_concurrent_claims_never_send_an_attempt_twice(store: TaskStore) -> None:
    await store.create([t for s in range(1, 51) for t in new(s, 2)], customer_id=None, now=utcnow())
    results = await asyncio.gather(*(store.claim_next(None, now=utcnow()) for _ in range(4)))
    claimed = [(d.task_id, d.attempt) for batch in results for d in batch]
    assert len(claimed) == len(set(claimed)) == 50
    assert len({d.sensor_serial for batch in results for d in batch}) == 50


async def test_a_burst_of_reports_is_applied_in_order_in_one_batch(store: TaskStore) -> None:
    tasks = await store.create([t for s in range(1, 201) for t in new(s)], customer_id=None, now=utcnow())
    await store.claim_next(None, now=utcnow())
    reports = [IncomingReport(t.sensor_serial, t.id or 0, 1, "ongoing", progress=10) for t in tasks]
    reports += [IncomingReport(t.sensor_serial, t.id or 0, 1, "completed") for t in tasks]
    reports += [IncomingReport(t.sensor_serial, t.id or 0, 1, "completed") for t in tasks[:5]]  # duplicates
    reports += [IncomingReport(999, tasks[0].id or 0, 1, "completed"), IncomingReport(1, 10**9, 1, "ongoing")]
    result = await store.apply_reports(reports, now=utcnow())
    assert len(result.transitions) == 400
    assert result.ignored == 5
    assert sorted(r.reason.split(" ")[0] for r in result.refused) == ["task", "unknown"]
    counts = await store.counts()
    assert counts[TaskStatus.COMPLETED] == 200


async def test_cancel_rules_and_tenancy(store: TaskStore) -> None:
    with pytest.raises(InvalidInput):
        await store.create(new(7), customer_id=1, now=utcnow())
    for serial in (7, 8):
        assert await store.register_sensor(serial, customer_id=1, now=utcnow())
    with pytest.raises(Conflict):
        await store.register_sensor(7, customer_id=2, now=utcnow())
    (mine,) = await store.create(new(7), customer_id=1, now=utcnow())
    assert mine.id is not None
    with pytest.raises(NotFound):
        await store.get(mine.id, customer_id=2)
    with pytest.raises(NotFound):
        await store.cancel(mine.id, customer_id=2, now=utcnow())
    cancelled = await store.cancel(mine.id, customer_id=1, now=utcnow())
    assert cancelled.status_id == TaskStatus.CANCELLED
    assert (await store.cancel(mine.id, customer_id=1, now=utcnow())).status_id == TaskStatus.CANCELLED
    (done,) = await store.create(new(8), customer_id=1, now=utcnow())
    await store.claim_next([8], now=utcnow())
    await store.apply_reports([IncomingReport(8, done.id or 0, 1, "completed")], now=utcnow())
    with pytest.raises(Conflict):
        await store.cancel(done.id or 0, customer_id=1, now=utcnow())


async def test_unregistered_sensors_are_data_not_wording(store: TaskStore) -> None:
    """The store names every unregistered serial in the details (the service words it for its
    caller, HTTP or MQTT), and creates nothing."""
    await store.register_sensor(5, customer_id=1, now=utcnow())
    tasks = [t for s in (5, *range(300, 100, -1), 9, 7) for t in new(s)]
    with pytest.raises(InvalidInput) as refused:
        await store.create(tasks, customer_id=1, now=utcnow())
    assert refused.value.details == {"unregistered_serials": [7, 9, *range(101, 301)]}
    assert "POST" not in refused.value.message
    assert "/v1/" not in refused.value.message
    assert await store.count_tasks(TaskFilter()) == 0


async def test_bulk_insert_writes_a_history_as_given(store: TaskStore) -> None:
    at = utcnow() - timedelta(days=3)
    history = [
        PastTask(new(serial)[0], serial % 2 + 1, status, 1, at + timedelta(hours=serial), at + timedelta(days=1))
        for serial, status in ((1, TaskStatus.COMPLETED), (2, TaskStatus.ERROR), (3, TaskStatus.COMPLETED))
    ]
    await store.bulk_insert(history)
    await store.bulk_insert([])
    listed, more = await store.list_tasks(TaskFilter(customer_id=2, statuses=(TaskStatus.COMPLETED,)))
    assert not more
    assert [(t.sensor_serial, t.attempt_count, t.created_at, t.updated_at) for t in listed] == [
        (3, 1, at + timedelta(hours=3), at + timedelta(days=1)),
        (1, 1, at + timedelta(hours=1), at + timedelta(days=1)),
    ]
    assert (await store.counts())[TaskStatus.ERROR] == 1
    assert await store.count_tasks(TaskFilter(created_since=at + timedelta(hours=2))) == 2
    assert await store.events(listed[0].id or 0) == []  # a history, not transitions to publish
    assert await store.unpublished() == []
    assert await store.claim_next(None, now=utcnow()) == []


async def test_timeouts_skip_offline_sensors(store: TaskStore) -> None:
    tasks = await store.create(new(1) + new(2), customer_id=None, now=utcnow())
    await store.claim_next(None, now=utcnow())
    await store.record_presence([(2, False, utcnow())])
    expiry = await store.expire(now=utcnow(), ack_timeout_s=0)
    assert [(d.task_id, d.attempt) for d in expiry.dispatches] == [(tasks[0].id, 2)]


async def test_an_older_presence_never_replaces_a_newer_one_and_instances_may_add_a_sensor_at_once(
    store: TaskStore,
) -> None:
    """Every instance writes every presence it hears: the copy of one that lagged must lose."""
    earlier, later = utcnow(), utcnow() + timedelta(seconds=1)
    other = TaskStore(store.db)  # a second instance on the same database
    await asyncio.gather(*(s.record_presence([(7, True, later)]) for s in (store, other, store, other)))
    await other.record_presence([(7, False, earlier)])
    info = await store.sensor(7)
    assert (info.online, info.last_seen) == (True, later)
    await store.record_presence([(7, False, later + timedelta(seconds=1))])
    assert (await store.sensor(7)).online is False


async def test_a_bulk_create_is_a_few_statements_and_keeps_the_request_order(store: TaskStore) -> None:
    """Not one INSERT per task (SQLAlchemy's fallback for ordered RETURNING on SQLite)."""
    await store.create(new(9), customer_id=None, now=utcnow())  # ids do not start at 1
    statements = 0

    def count(*_args: object, **_kwargs: object) -> None:
        nonlocal statements
        statements += 1

    for engine in store.db.writer_engines:
        event.listen(engine, "before_cursor_execute", count)
    try:
        tasks = [NewTask(1000 + i % 7, "update_firmware", FILE_ID, 3, 3600 + i) for i in range(1000)]
        created = await store.create(tasks, customer_id=None, now=utcnow())
    finally:
        for engine in store.db.writer_engines:
            event.remove(engine, "before_cursor_execute", count)
    assert 0 < statements <= 6
    assert [(t.sensor_serial, t.timeout_s) for t in created] == [(t.sensor_serial, t.timeout_s) for t in tasks]
    ids = [t.id or 0 for t in created]
    assert ids == sorted(ids)
    assert len(await store.unpublished(limit=2000)) == 1001


async def test_upgrade_is_idempotent(store: TaskStore) -> None:
    await upgrade(store.db.url)
    assert await store.counts() == dict.fromkeys(TaskStatus, 0)
