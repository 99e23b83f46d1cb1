"""The store's commit feed (`StoreBase.watch_commits`) on a real database: the listener gets
exactly the unpublished events each committed transaction wrote, with their real ids, in
commit order, and nothing of a transaction that rolled back."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from sensortasks.domain import TaskStatus
from sensortasks.store import IncomingReport, NewTask, Task, TaskStore, Transition, utcnow
from sensortasks.store.tasks import insert_tasks

SERIAL = 810_000_000_000_000

Feed = list[list[tuple[int, Transition]]]


def watched(store: TaskStore) -> Feed:
    feed: Feed = []

    def listener(events: Sequence[tuple[int, Transition]]) -> None:
        feed.append(list(events))

    store.watch_commits(listener)
    return feed


async def test_the_feed_gets_each_committed_unpublished_event_with_its_id(store: TaskStore) -> None:
    feed = watched(store)
    tasks = [NewTask(SERIAL + i % 2, "update_firmware", "f", 3, 60) for i in range(3)]
    created = await store.create(tasks, customer_id=None, now=utcnow())
    dispatches = await store.claim_next([SERIAL, SERIAL + 1], now=utcnow())  # "sent": published already
    first, second = sorted(dispatches, key=lambda d: d.task_id)
    # One batch: an ignored report (a published event) before a transition, so the ids are mixed.
    await store.apply_reports(
        [
            IncomingReport(second.sensor_serial, second.task_id, second.attempt + 5, "ongoing"),
            IncomingReport(first.sensor_serial, first.task_id, first.attempt, "ongoing"),
        ],
        now=utcnow(),
    )
    await store.cancel(created[2].id or 0, now=utcnow())

    assert [[(t.task_id, t.target) for _, t in batch] for batch in feed] == [
        [(c.id, TaskStatus.PENDING) for c in created],
        [(first.task_id, TaskStatus.ONGOING)],
        [(created[2].id, TaskStatus.CANCELLED)],
    ]
    fed = [event for batch in feed for event in batch]
    # Exactly what the outbox would read, ids and transitions alike.
    assert sorted(fed, key=lambda e: e[0]) == sorted(await store.unpublished(limit=100), key=lambda e: e[0])
    ids = [event_id for event_id, _ in fed]
    assert ids == sorted(ids)  # commit order
    await store.mark_published(ids)
    assert await store.unpublished(limit=100) == []


async def _create_then_fail(store: TaskStore) -> None:
    async with store._write() as conn:
        tasks = [NewTask(SERIAL, "update_firmware", "f", 3, 60)]
        await conn.run_sync(insert_tasks, tasks, customer_id=None, now=utcnow(), origin="")
        raise RuntimeError("rolled back")


async def test_a_rolled_back_transaction_tells_the_feed_nothing(store: TaskStore) -> None:
    feed = watched(store)
    with pytest.raises(RuntimeError, match="rolled back"):
        await _create_then_fail(store)
    assert feed == []
    assert await store.unpublished(limit=100) == []
    (task,) = await store.create([NewTask(SERIAL, "update_firmware", "f", 3, 60)], customer_id=None, now=utcnow())
    assert [[(t.task_id, t.source) for _, t in batch] for batch in feed] == [[(task.id, None)]]
    assert [event_id for event_id, _ in feed[0]] == [event_id for event_id, _ in await store.unpublished()]


async def test_a_listener_registered_later_gets_what_commits_after(store: TaskStore) -> None:
    """Before it, nothing is collected (an API-only process registers none)."""
    (task,) = await store.create([NewTask(SERIAL, "update_firmware", "f", 3, 60)], customer_id=None, now=utcnow())
    feed = watched(store)
    await store.cancel(task.id or 0, now=utcnow())
    assert [[(t.task_id, t.target) for _, t in batch] for batch in feed] == [[(task.id, TaskStatus.CANCELLED)]]


async def test_created_tasks_are_the_stored_ones(store: TaskStore) -> None:
    """A create builds its tasks from the values it inserted (outside the writer), not by reading
    them back: they must be what the database holds, time zones included."""
    created = await store.create(
        [NewTask(SERIAL + i, "update_firmware", "f", 3, 60) for i in range(3)], customer_id=None, now=utcnow()
    )
    assert [t.id for t in created] == sorted(t.id for t in created)
    for task in created:
        assert task == await store.get(task.id or 0)


async def test_a_create_builds_its_tasks_only_when_they_are_read(
    store: TaskStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bulk's answer is its ids: building 10,000 tasks nobody reads held the event loop as long
    as the rest of the request. The ids come without a task built; each task, when read, is the
    stored one (slices too)."""
    built: list[int] = []
    construct = Task.model_construct

    def counted(**values: object) -> Task:
        built.append(1)
        return construct(**values)

    monkeypatch.setattr(Task, "model_construct", counted)
    created = await store.create(
        [NewTask(SERIAL + i, "update_firmware", "f", 3, 60) for i in range(200)], customer_id=None, now=utcnow()
    )
    assert (len(created), len(built)) == (200, 0)
    assert created.ids == list(range(created.ids[0], created.ids[0] + 200))
    seventh = created[7]
    assert [t.id for t in created[198:]] == created.ids[198:]
    assert len(built) == 1 + 2
    assert seventh == await store.get(created.ids[7])
    assert [t.sensor_serial for t in created][:3] == [SERIAL, SERIAL + 1, SERIAL + 2]
