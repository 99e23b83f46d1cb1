"""Filtered listing on a large table: builds N tasks and prints the p50/p99 of the common queries.

``python -m sensortasks.listbench [ROWS]`` (default 1,000,000) on a temporary SQLite file.
The rows are `tools.history`'s (20,000 sensors, 3 customers, mostly Completed, 90 days of
history); every query goes through `TaskStore.list_tasks`, the code path of
``GET /v1/tasks``, and export through `TaskStore.iter_tasks`. The polls follow the cursor of
"what changed since T" to its last page, every page a sample: the last one reads the furthest.
"""

from __future__ import annotations

import asyncio
import random
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sensortasks.domain import TaskStatus
from sensortasks.store import TaskFilter, TaskStore, open_database, upgrade
from sensortasks.tools.history import CUSTOMERS, DAYS, FIRST_SERIAL, SENSORS, fill
from sensortasks.tools.stats import percentile

#: A query to time: its filter and cursor, drawn from the run's random numbers.
Query = Callable[[random.Random], tuple[TaskFilter, int | None]]


def _one_day(start: datetime) -> TaskFilter:
    return TaskFilter(created_since=start, created_until=start + timedelta(days=1))


async def _time(store: TaskStore, make: Query, n: int, *, walk: bool = False) -> list[float]:
    """`n` runs of `make`'s query, each a sample; with `walk`, each run follows the cursor to the
    last page as a poller does, and every page is a sample."""
    rng = random.Random(1)
    samples = []
    for _ in range(n):
        where, before = make(rng)
        more = True
        while more:
            started = time.perf_counter()
            page, more = await store.list_tasks(where, before_id=before, limit=100)
            samples.append(time.perf_counter() - started)
            more = more and walk
            before = page[-1].id if page else None
    return samples


async def _measure(store: TaskStore, rows: int, now: datetime, samples: int, say: Callable[[str], None]) -> list[str]:
    """The p50/p99 of each list query and the export rate, as the lines to print."""

    def serial(rng: random.Random) -> int:
        return FIRST_SERIAL + rng.randrange(SENSORS)

    def day(rng: random.Random) -> datetime:
        return now - timedelta(days=rng.randrange(1, DAYS))

    def recent(rng: random.Random) -> datetime:
        return now - timedelta(minutes=rng.randrange(1, 11))

    queries: dict[str, Query] = {
        "newest page": lambda _r: (TaskFilter(), None),
        "one sensor": lambda r: (TaskFilter(sensor_serial=serial(r)), None),
        "status=Error (rare)": lambda _r: (TaskFilter(statuses=(TaskStatus.ERROR,)), None),
        "status=Pending,Ongoing": lambda _r: (TaskFilter(statuses=(TaskStatus.PENDING, TaskStatus.ONGOING)), None),
        "type": lambda _r: (TaskFilter(type="update_configuration"), None),
        "created in one day": lambda r: (_one_day(day(r)), None),
        "updated in the last hour": lambda _r: (TaskFilter(updated_since=now - timedelta(hours=1)), None),
        "updated in the last 30 days": lambda _r: (TaskFilter(updated_since=now - timedelta(days=30)), None),
        "customer + one day": lambda r: (
            replace(_one_day(day(r)), customer_id=r.randrange(1, CUSTOMERS + 1)),
            None,
        ),
        "customer + updated last 5 min": lambda r: (
            TaskFilter(customer_id=r.randrange(1, CUSTOMERS + 1), updated_since=now - timedelta(minutes=5)),
            None,
        ),
        "sensor + status": lambda r: (TaskFilter(sensor_serial=serial(r), statuses=(TaskStatus.COMPLETED,)), None),
        "customer": lambda r: (TaskFilter(customer_id=r.randrange(1, CUSTOMERS + 1)), None),
        "customer + status=Error": lambda r: (
            TaskFilter(customer_id=r.randrange(1, CUSTOMERS + 1), statuses=(TaskStatus.ERROR,)),
            None,
        ),
        "deep page (cursor)": lambda r: (TaskFilter(), r.randrange(100, rows)),
        "customer, deep page": lambda r: (TaskFilter(customer_id=1), r.randrange(100, rows)),
    }
    #: What changed since a poll 1-10 minutes ago, every page of it (auth off, then one customer's).
    polls: dict[str, Query] = {
        "poll: updated since T": lambda r: (TaskFilter(updated_since=recent(r)), None),
        "customer poll: since T": lambda r: (
            TaskFilter(customer_id=r.randrange(1, CUSTOMERS + 1), updated_since=recent(r)),
            None,
        ),
    }
    lines = [f"{'query (limit 100)':<28} {'p50 ms':>8} {'p99 ms':>8}"]
    for table, walk in ((queries, False), (polls, True)):
        for name, make in table.items():
            timings = await _time(store, make, samples, walk=walk)
            p50, p99 = percentile(timings, 50) * 1000, percentile(timings, 99) * 1000
            lines.append(f"{name:<28} {p50:>8.2f} {p99:>8.2f}")
            say(lines[-1])
    started = time.perf_counter()
    exported = 0
    async for page in store.iter_tasks(TaskFilter(statuses=(TaskStatus.PENDING,))):
        exported += len(page)
    elapsed = time.perf_counter() - started
    lines.append(f"export of Pending: {exported:,} rows in {elapsed:.2f} s ({exported / elapsed:,.0f} rows/s)")
    return lines


async def run(rows: int = 1_000_000, *, samples: int = 200, say: Callable[[str], None] = print) -> list[str]:
    now = datetime.now(UTC)
    with tempfile.TemporaryDirectory(prefix="sensortasks-listbench-") as tmp:
        url = f"sqlite+aiosqlite:///{Path(tmp) / 'list.db'}"
        await upgrade(url)
        store = TaskStore(open_database(url))
        try:
            started = time.perf_counter()
            await fill(store, rows, now, random.Random(7))
            lines = [f"{rows:,} tasks inserted in {time.perf_counter() - started:.1f} s", ""]
            return lines + await _measure(store, rows, now, samples, say)
        finally:
            await store.db.dispose()


def main() -> None:
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    for line in asyncio.run(run(rows, say=lambda _: None)):
        print(line)  # noqa: T201


if __name__ == "__main__":
    main()
