"""The listing benchmark runs (small here; `python -m sensortasks.tools.listbench` for 1,000,000 rows)."""

from __future__ import annotations

import random
from datetime import timedelta

from sensortasks.domain import TaskStatus
from sensortasks.store import TaskFilter, TaskStore, open_database, upgrade, utcnow
from sensortasks.tools import listbench
from sensortasks.tools.listbench import run


async def test_listbench_reports_every_query() -> None:
    lines = await run(5_000, samples=5, say=lambda _: None)
    assert lines[0].startswith("5,000 tasks inserted")
    assert any(line.startswith("customer + status=Error") for line in lines)
    assert lines[-1].startswith("export of Pending")


async def test_listbench_builds_its_fleet_through_the_store(sqlite_url: str) -> None:
    """The rows go in through `TaskStore.bulk_insert` (no SQL of the benchmark's own), spread
    over the customers, statuses and 90 days the README's figure speaks of."""
    await upgrade(sqlite_url)
    store = TaskStore(open_database(sqlite_url))
    try:
        now = utcnow()
        await listbench._fill(store, 3_000, now, random.Random(7))
        assert await store.count_tasks(TaskFilter()) == 3_000
        for customer in range(1, listbench.CUSTOMERS + 1):
            assert await store.count_tasks(TaskFilter(customer_id=customer)) > 0
        counts = await store.counts()
        assert all(counts[status] > 0 for status in listbench.STATUS_WEIGHTS)
        assert counts[TaskStatus.COMPLETED] > 0.8 * 3_000
        history = TaskFilter(created_since=now - timedelta(days=listbench.DAYS), created_until=now)
        assert await store.count_tasks(history) == 3_000
        assert await store.count_tasks(TaskFilter(created_until=now - timedelta(days=listbench.DAYS - 1))) > 0
    finally:
        await store.db.dispose()
