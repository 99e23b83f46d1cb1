"""A fleet's task history, loaded straight through `TaskStore.bulk_insert` (no API, no events):
the listing benchmark's table and the bench's ``--backlog``.

The rows are spread like a real fleet that has been running for a while: `SENSORS` sensors
from `FIRST_SERIAL` (none of them the bench's simulated fleet), `CUSTOMERS` customers, mostly
Completed, `DAYS` days of history.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta

from sensortasks.domain import TaskStatus
from sensortasks.store import NewTask, PastTask, TaskStore

SENSORS = 20_000
FIRST_SERIAL = 100_000_000_000_000
CUSTOMERS = 3
DAYS = 90
#: Status shares of a fleet that has been running for a while.
STATUS_WEIGHTS = {
    TaskStatus.COMPLETED: 0.90,
    TaskStatus.ERROR: 0.01,
    TaskStatus.CANCELLED: 0.02,
    TaskStatus.PENDING: 0.05,
    TaskStatus.ONGOING: 0.02,
}
#: Tasks per `TaskStore.bulk_insert` transaction.
CHUNK = 50_000
TYPES = ("update_firmware", "update_configuration")
FILE_ID = "a3e4aed2-b091-41a6-8265-2185040e2c32"


async def fill(store: TaskStore, rows: int, now: datetime, rng: random.Random) -> None:
    """Load `rows` tasks of a `DAYS`-day history ending at `now`, a chunk per transaction."""
    statuses, weights = list(STATUS_WEIGHTS), list(STATUS_WEIGHTS.values())
    start = now - timedelta(days=DAYS)
    step = timedelta(days=DAYS) / rows
    for offset in range(0, rows, CHUNK):
        batch = []
        for i in range(offset, min(rows, offset + CHUNK)):
            serial = FIRST_SERIAL + rng.randrange(SENSORS)
            created = start + step * i
            status = rng.choices(statuses, weights)[0]
            updated = created + timedelta(seconds=rng.randrange(1, 3600))
            task = NewTask(serial, rng.choice(TYPES), FILE_ID, max_attempts=3, timeout_s=3600)
            batch.append(PastTask(task, serial % CUSTOMERS + 1, status, 1, created, updated))
        await store.bulk_insert(batch)
