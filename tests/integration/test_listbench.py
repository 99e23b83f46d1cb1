"""The listing benchmark runs (small here; `python -m sensortasks.listbench` for 1,000,000 rows),
and the plans it measured stay chosen."""

from __future__ import annotations

import random
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event, select

from sensortasks.domain import TaskStatus
from sensortasks.store import TaskFilter, TaskStore, open_database, upgrade, utcnow
from sensortasks.store.base import T
from sensortasks.store.tasks import FEW_CHANGES
from sensortasks.tools import history
from sensortasks.tools.listbench import run

#: More rows than `FEW_CHANGES`, so that a wide window changed too many to read by id.
ROWS = FEW_CHANGES + 1_000


async def test_listbench_reports_every_query() -> None:
    lines = await run(5_000, samples=5, say=lambda _: None)
    assert lines[0].startswith("5,000 tasks inserted")
    for query in ("customer + status=Error", "updated in the last 30 days", "poll: updated since T", "customer poll"):
        assert any(line.startswith(query) for line in lines), query
    assert lines[-1].startswith("export of Pending")


async def test_listbench_builds_its_fleet_through_the_store(sqlite_url: str) -> None:
    """The rows go in through `TaskStore.bulk_insert` (no SQL of the benchmark's own), spread
    over the customers, statuses and 90 days the README's figure speaks of."""
    await upgrade(sqlite_url)
    store = TaskStore(open_database(sqlite_url))
    try:
        now = utcnow()
        await history.fill(store, 3_000, now, random.Random(7))
        assert await store.count_tasks(TaskFilter()) == 3_000
        for customer in range(1, history.CUSTOMERS + 1):
            assert await store.count_tasks(TaskFilter(customer_id=customer)) > 0
        counts = await store.counts()
        assert all(counts[status] > 0 for status in history.STATUS_WEIGHTS)
        assert counts[TaskStatus.COMPLETED] > 0.8 * 3_000
        window = TaskFilter(created_since=now - timedelta(days=history.DAYS), created_until=now)
        assert await store.count_tasks(window) == 3_000
        assert await store.count_tasks(TaskFilter(created_until=now - timedelta(days=history.DAYS - 1))) > 0
    finally:
        await store.db.dispose()


@pytest.fixture
async def fleet(sqlite_url: str) -> AsyncIterator[tuple[TaskStore, datetime]]:
    """The benchmark's fleet, `ROWS` tasks, on SQLite (the database without range statistics)."""
    await upgrade(sqlite_url)
    store = TaskStore(open_database(sqlite_url))
    now = utcnow()
    await history.fill(store, ROWS, now, random.Random(7))
    yield store, now
    await store.db.dispose()


async def _page(store: TaskStore, where: TaskFilter, before: int | None) -> tuple[list[int], bool, list[list[str]]]:
    """A page of 10 (its ids, whether more follow) and the plan of each SELECT it ran."""
    statements: list[tuple[str, Sequence[Any]]] = []

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Sequence[Any], *_: Any) -> None:
        statements.append((statement, parameters))

    event.listen(store.db.reader.sync_engine, "before_cursor_execute", record)
    try:
        page, more = await store.list_tasks(where, before_id=before, limit=10)
    finally:
        event.remove(store.db.reader.sync_engine, "before_cursor_execute", record)
    async with store.db.reader.connect() as conn:
        plans = [
            [row[3] for row in await conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", tuple(parameters))]
            for statement, parameters in statements
            if statement.lstrip().upper().startswith("SELECT")
        ]
    return [task.id or 0 for task in page], more, plans


async def _walk(store: TaskStore, where: TaskFilter) -> tuple[list[int], list[list[str]]]:
    """Every id `where` lists, following the cursor, and the plans of the last page (the one
    that reads furthest)."""
    ids: list[int] = []
    more = True
    while more:
        page, more, plans = await _page(store, where, ids[-1] if ids else None)
        ids += page
    return ids, plans


async def _expected(store: TaskStore, where: TaskFilter) -> list[int]:
    """The ids `where` matches, newest first, by a query of the test's own."""
    query = select(T.c.id).where(T.c.updated_at >= where.updated_since).order_by(T.c.id.desc())
    if where.customer_id is not None:
        query = query.where(T.c.customer_id == where.customer_id)
    if where.type is not None:
        query = query.where(T.c.type == where.type)
    if where.statuses:
        query = query.where(T.c.status_id.in_([int(s) for s in where.statuses]))
    async with store.db.reader.connect() as conn:
        return list((await conn.execute(query)).scalars())


@pytest.mark.parametrize(
    ("customer_id", "index"), [(None, "ix_tasks_updated"), (2, "ix_tasks_customer_updated")], ids=["all", "customer"]
)
async def test_a_poll_reads_what_changed_through_the_updated_at_index(
    fleet: tuple[TaskStore, datetime], customer_id: int | None, index: str
) -> None:
    """Polling "what changed since T" pages through the few rows that changed, found in the
    updated_at index and read by id, down to its last page. SQLite's own choice, the id order,
    scanned the whole table on every last page (~200 ms on 1M rows)."""
    store, now = fleet
    where = TaskFilter(customer_id=customer_id, updated_since=now - timedelta(days=2))
    ids, plans = await _walk(store, where)
    assert 20 < len(ids) < FEW_CHANGES
    assert ids == await _expected(store, where)
    assert len(plans) == 2, f"expected a count in the updated_at index, then the page by id: {plans}"
    count, page = plans
    assert any(f"USING COVERING INDEX {index} " in step for step in count), count
    assert page[0].startswith("SEARCH tasks USING INTEGER PRIMARY KEY (rowid=?)"), page
    assert "SCAN tasks" not in page, page


async def test_a_poll_with_more_filters_lists_what_it_matches(fleet: tuple[TaskStore, datetime]) -> None:
    """The filters the updated_at index cannot apply (type, status) still apply to the rows read by id."""
    store, now = fleet
    where = TaskFilter(
        customer_id=1, updated_since=now - timedelta(days=9), type="update_firmware", statuses=(TaskStatus.COMPLETED,)
    )
    ids, _ = await _walk(store, where)
    assert len(ids) > 10
    assert ids == await _expected(store, where)


async def test_a_wide_window_is_read_in_id_order(fleet: tuple[TaskStore, datetime]) -> None:
    """When more than `FEW_CHANGES` rows changed, a page is found soon in id order: no sort of the window."""
    store, now = fleet
    where = TaskFilter(updated_since=now - timedelta(days=history.DAYS + 1))
    page, more, plans = await _page(store, where, None)
    assert more
    assert page == (await _expected(store, where))[:10]
    assert plans[-1] == ["SCAN tasks"], plans


def test_it_runs_as_python_m_sensortasks_listbench() -> None:
    """The name the performance targets give it."""
    done = subprocess.run(
        [sys.executable, "-m", "sensortasks.listbench", "3000"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("3,000 tasks inserted"), done.stdout
