"""Faults injected into a running dispatcher: a locked database, floods of duplicate and
reordered reports. (Crashes of whole processes are in tests/e2e and tests/faults.)"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import threading
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from sensortasks.domain import TaskStatus
from sensortasks.protocol import TaskMessage
from tests.conftest import only_on

from .conftest import ServiceFactory, eventually

pytestmark = pytest.mark.faults
SERIAL = 900000000000000


@only_on("sqlite")  # SQLite's one writer lock and busy timeout; PostgreSQL locks rows, not the database
async def test_a_locked_database_slows_the_dispatcher_down_without_losing_work(make_service: ServiceFactory) -> None:
    service = await make_service()
    path = make_url(service.settings.database_url).database
    assert path is not None
    gate = asyncio.Event()

    async def waits(job: Any) -> None:
        await gate.wait()

    await asyncio.gather(*(service.sensor(SERIAL + i, waits) for i in range(5)))
    ids = [(await service.create(SERIAL + i % 5))["id"] for i in range(10)]
    for task_id in ids[:5]:
        await service.wait_status(task_id, "Ongoing")

    # Another process holds the write lock longer than the busy timeout (5 s) while
    # every sensor reports completion.
    locked, release = threading.Event(), threading.Event()

    def hold_lock() -> None:
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("BEGIN EXCLUSIVE")
        locked.set()
        release.wait(30)
        conn.execute("ROLLBACK")
        conn.close()

    holder = threading.Thread(target=hold_lock)
    holder.start()
    try:
        await asyncio.to_thread(locked.wait, 10)
        gate.set()

        async def retried() -> bool:
            return service.dispatcher.counters.db_retries > 0

        # Held until the dispatcher's write has outlasted the busy timeout and failed.
        await eventually(retried, timeout=30, what="the dispatcher to retry a failed write")
        assert (await service.store.counts())[TaskStatus.COMPLETED] == 0  # nothing was lost or half-done
    finally:
        release.set()
        await asyncio.to_thread(holder.join, 10)

    for task_id in ids:
        await service.wait_status(task_id, "Completed", timeout=30)
    assert service.dispatcher.counters.db_retries > 0


async def test_floods_of_duplicate_and_reordered_reports(make_service: ServiceFactory) -> None:
    service = await make_service()
    rng = random.Random(7)
    serials = [SERIAL + 100 + i for i in range(10)]
    # Silent SDK sensors receive the tasks; the test answers for them, noisily.
    sensors = [await service.sensor(serial, silent=True) for serial in serials]
    ids = [(await service.create(serials[i % 10]))["id"] for i in range(30)]
    by_id = {task_id: serials[i % 10] for i, task_id in enumerate(ids)}

    async def flood(message: TaskMessage) -> None:
        topic = f"sensors/{by_id[message.task_id]}/status"
        base = {"v": 1, "task_id": message.task_id}
        burst: list[dict[str, Any]] = [
            base | {"attempt": message.attempt, "status": "ongoing", "progress": 10},
            base | {"attempt": message.attempt, "status": "completed", "result": {"ok": True}},
        ] * 4
        burst += [base | {"attempt": message.attempt + 1, "status": "error", "error": "from the future"}]
        rng.shuffle(burst)
        for report in burst:
            await service.publish(topic, report)

    answered: set[int] = set()

    async def answer_new() -> bool:
        for sensor in sensors:
            for message in list(sensor.received):
                if isinstance(message, TaskMessage) and message.task_id not in answered:
                    answered.add(message.task_id)
                    await flood(message)
        return len(answered) == len(ids)

    await eventually(answer_new, timeout=30, what="every task to be sent and answered")

    for task_id in ids:
        task = await service.wait_status(task_id, "Completed")
        assert task["attempt_count"] == 1
        events = await service.events(task_id)
        transitions = [(e["from_status_name"], e["to_status_name"]) for e in events if e["kind"] == "transition"]
        assert transitions == [(None, "Pending"), ("Pending", "Ongoing"), ("Ongoing", "Completed")]
        assert sum(e["kind"] == "ignored" for e in events) >= 4

    async def all_completed() -> bool:
        return (await service.store.counts())[2] == 30  # type: ignore[index]

    await eventually(all_completed, what="30 completed")
