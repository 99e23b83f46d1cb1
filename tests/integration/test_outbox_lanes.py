"""The outbox's two lanes: a bulk of new tasks does not hold back the events of tasks under way,
and each task's events still go out in the order they were committed."""

from __future__ import annotations

from sensortasks.domain import TaskStatus
from sensortasks.store import IncomingReport, NewTask, TaskStore, utcnow

SERIAL = 800_000_000_000_000
BULK = 3_000


async def _publish_all(store: TaskStore) -> None:
    while pending := await store.unpublished(limit=1_000):
        await store.mark_published([event_id for event_id, _ in pending])


async def test_a_change_goes_before_a_bulk_of_creations(store: TaskStore) -> None:
    [early] = await store.create([NewTask(SERIAL, "update_firmware", "f", 3, 60)], customer_id=None, now=utcnow())
    await _publish_all(store)
    [dispatch] = await store.claim_next([SERIAL], now=utcnow())
    bulk = [NewTask(SERIAL + 1 + i % 50, "update_firmware", "f", 3, 60) for i in range(BULK)]
    await store.create(bulk, customer_id=None, now=utcnow())
    report = IncomingReport(SERIAL, dispatch.task_id, dispatch.attempt, "ongoing")
    await store.apply_reports([report], now=utcnow())  # committed after the bulk

    first = await store.unpublished(limit=100)
    assert (first[0][1].task_id, first[0][1].target) == (early.id, TaskStatus.ONGOING)
    assert [t.source for _, t in first[1:]] == [None] * 99  # then the bulk's creations, newest first
    assert [i for i, _ in first[1:]] == sorted((i for i, _ in first[1:]), reverse=True)


async def test_a_task_created_after_a_bulk_is_published_before_it(store: TaskStore) -> None:
    """Its creation first, and its change in the same round right after, though the bulk's
    creations are older."""
    bulk = [NewTask(SERIAL + 1 + i % 50, "update_firmware", "f", 3, 60) for i in range(BULK)]
    await store.create(bulk, customer_id=None, now=utcnow())
    [late] = await store.create([NewTask(SERIAL, "update_firmware", "f", 3, 60)], customer_id=None, now=utcnow())
    await store.cancel(late.id or 0, now=utcnow())
    first = [(t.task_id, t.target) for _, t in await store.unpublished(limit=100)]
    assert first[0] == (late.id, TaskStatus.PENDING)
    assert first[-1] == (late.id, TaskStatus.CANCELLED)


async def test_a_change_waits_for_its_own_creation(store: TaskStore) -> None:
    """A task of the bulk that moves on before its creation is out: its change is not published
    ahead of its creation."""
    bulk = [NewTask(SERIAL + i, "update_firmware", "f", 3, 60) for i in range(BULK)]
    created = await store.create(bulk, customer_id=None, now=utcnow())
    last = created[-1]
    await store.cancel(last.id or 0, now=utcnow())
    published: list[tuple[int, TaskStatus]] = []
    while pending := await store.unpublished(limit=500):
        published += [(t.task_id, t.target) for _, t in pending]
        await store.mark_published([event_id for event_id, _ in pending])
    mine = [target for task_id, target in published if task_id == last.id]
    assert mine == [TaskStatus.PENDING, TaskStatus.CANCELLED]
    assert len(published) == BULK + 1
