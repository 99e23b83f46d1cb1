"""The dispatcher's own statements cost the same however long the queues are: none of them reads
every Pending task or every event (SQLite, the database without statistics, where a plan goes
wrong first). A sweep with 100,000 Pending tasks over 100 sensors took 2 s when it did."""

from __future__ import annotations

import itertools
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Select, event
from sqlmodel import SQLModel

from sensortasks.store import IncomingReport, NewTask, Task, TaskFilter, TaskStore, open_database, upgrade, utcnow

SENSORS = 20
QUEUE = 50
FIRST = 700_000_000_000_000
#: Plan lines that read a whole queue or table: a scan not on a partial index (those hold only
#: the few rows in flight or unpublished), or a search of every task of a status.
WHOLE = re.compile(
    r"^SCAN (tasks|task_events)(?! USING (COVERING )?INDEX ix_\w*(active|unacked|running|unpublished))|\(status_id=\?\)$"
)


@pytest.fixture
async def busy(sqlite_url: str) -> AsyncIterator[TaskStore]:
    """`QUEUE` tasks queued for each of `SENSORS` sensors, each sensor's head sent."""
    await upgrade(sqlite_url)
    store = TaskStore(open_database(sqlite_url))
    tasks = [NewTask(FIRST + i % SENSORS, "update_firmware", "f", 3, 3600) for i in range(SENSORS * QUEUE)]
    await store.create(tasks, customer_id=None, now=utcnow())
    assert len(await store.claim_next(None, now=utcnow())) == SENSORS
    yield store
    await store.db.dispose()


async def _statements(store: TaskStore, action: Callable[[], Awaitable[object]]) -> list[tuple[str, Sequence[Any]]]:
    """Every statement `action` ran, with its parameters."""
    statements: list[tuple[str, Sequence[Any]]] = []

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Sequence[Any], *_: Any) -> None:
        statements.append((statement, parameters))

    engines = {*store.db.writer_engines, store.db.reader.sync_engine}
    for engine in engines:
        event.listen(engine, "before_cursor_execute", record)
    try:
        await action()
    finally:
        for engine in engines:
            event.remove(engine, "before_cursor_execute", record)
    return statements


async def _plans(store: TaskStore, action: Callable[[], Awaitable[object]]) -> list[list[str]]:
    """The plan of every SELECT `action` ran."""
    statements = await _statements(store, action)
    async with store.db.reader.connect() as conn:
        return [
            [row[3] for row in await conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", tuple(parameters))]
            for statement, parameters in statements
            if statement.lstrip().upper().startswith(("SELECT", "WITH"))
        ]


def _whole_reads(plans: list[list[str]]) -> list[str]:
    return [line for plan in plans for line in plan if WHOLE.search(line)]


async def test_the_pattern_catches_what_it_must() -> None:
    assert WHOLE.search("SCAN tasks")
    assert WHOLE.search("SEARCH tasks USING INDEX ix_tasks_status_id (status_id=?)")
    assert WHOLE.search("SCAN task_events")
    assert not WHOLE.search("SCAN task_events USING INDEX ix_task_events_unpublished")
    assert not WHOLE.search("SEARCH tasks USING INDEX ix_tasks_unacked (status_id=? AND sent_at>? AND sent_at<?)")


async def _claim_steps(url: str, queue: int) -> dict[str, int]:
    """SQLite VM steps (in hundreds) of a claim with `queue` tasks waiting behind each sensor's
    head, for the sensors named and for a sweep."""
    await upgrade(url)
    store = TaskStore(open_database(url))
    try:
        tasks = [NewTask(FIRST + i % SENSORS, "update_firmware", "f", 3, 3600) for i in range(SENSORS * (queue + 1))]
        await store.create(tasks, customer_id=None, now=utcnow())
        assert len(await store.claim_next(None, now=utcnow())) == SENSORS
        steps = [0]

        def count() -> int:
            steps[0] += 1
            return 0

        assert store.db.thread_writer is not None
        with store.db.thread_writer.connect() as conn:  # the pool's one connection, reused below
            conn.connection.driver_connection.set_progress_handler(count, 100)  # type: ignore[union-attr]
        serials = [FIRST + i for i in range(SENSORS)]
        found = {}
        for name, claim in (("named", serials), ("sweep", None)):
            steps[0] = 0
            assert await store.claim_next(claim, now=utcnow()) == []  # every head is in flight
            found[name] = steps[0]
        return found
    finally:
        await store.db.dispose()


async def test_a_claim_costs_the_same_however_long_the_queues(tmp_path: Path) -> None:
    short = await _claim_steps(f"sqlite+aiosqlite:///{tmp_path}/short.db", 2)
    long = await _claim_steps(f"sqlite+aiosqlite:///{tmp_path}/long.db", 200)
    for name in ("named", "sweep"):
        assert 0 < long[name] < 2 * short[name] + 5, (name, short, long)


async def test_timeouts_and_the_outbox_read_only_what_is_in_flight(busy: TaskStore) -> None:
    later = utcnow() + timedelta(hours=1)
    for action in (
        lambda: busy.expire(now=later, ack_timeout_s=10),
        lambda: busy.unpublished(limit=100),
    ):
        assert _whole_reads(await _plans(busy, action)) == []


def _set_columns(statements: list[tuple[str, Sequence[Any]]]) -> list[list[str]]:
    """The SET columns of each UPDATE of tasks."""
    found = []
    for statement, _ in statements:
        if match := re.match(r'\s*UPDATE "?tasks"? SET (.*) WHERE', statement, re.S):
            found.append(sorted(re.findall(r'"?(\w+)"? ?=', match.group(1))))
    return found


async def test_a_status_change_writes_only_the_columns_it_changed(busy: TaskStore) -> None:
    """SQLite rewrites an index of every column in an UPDATE's SET list, changed or not."""
    [head] = await busy.redeliver([FIRST], now=utcnow(), reason="the test needs its attempt")
    written = []
    for status in ("ongoing", "completed"):
        report = IncomingReport(serial=FIRST, task_id=head.task_id, attempt=head.attempt, status=status)
        written += _set_columns(await _statements(busy, lambda r=report: busy.apply_reports([r], now=utcnow())))
    written += _set_columns(await _statements(busy, lambda: busy.claim_next([FIRST], now=utcnow())))
    assert written == [
        ["deadline_at", "progress", "started_at", "status_id", "updated_at"],
        ["completed_at", "deadline_at", "error", "progress", "result", "status_id", "updated_at"],
        ["attempt_count", "not_before", "sent_at", "updated_at"],
    ]


async def test_the_claim_and_the_reports_build_no_query(busy: TaskStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Their queries are built once: building the claim and its cache key took 750 µs a call."""
    built = [0]
    select_init = Select.__init__

    def counted(self: Select[Any], *args: Any) -> None:
        built[0] += 1
        select_init(self, *args)

    monkeypatch.setattr(Select, "__init__", counted)
    [head] = await busy.redeliver([FIRST], now=utcnow(), reason="the test needs its attempt")
    assert await busy.claim_next([FIRST], now=utcnow()) == []  # its head is in flight; built now
    built[0] = 0
    claimed = []
    for status in ("ongoing", "completed"):
        report = IncomingReport(serial=FIRST, task_id=head.task_id, attempt=head.attempt, status=status)
        claimed += (await busy.apply_reports([report], now=utcnow())).dispatches  # the next, in the batch
    assert len(claimed) == 1
    assert await busy.claim_next([FIRST], now=utcnow()) == []
    assert built == [0]


async def test_a_claim_after_a_report_takes_the_next_in_line(busy: TaskStore) -> None:
    """The head found by index is the oldest active task: completing it releases the next one."""
    serial = FIRST
    assert await busy.claim_next([serial], now=utcnow()) == []  # its head is in flight
    [head] = await busy.redeliver([serial], now=utcnow(), reason="the test needs its attempt")
    ids = [head.task_id]
    for _ in range(3):
        claimed = []
        for status in ("ongoing", "completed"):
            report = IncomingReport(serial=serial, task_id=head.task_id, attempt=head.attempt, status=status)
            claimed += (await busy.apply_reports([report], now=utcnow())).dispatches
        [head] = claimed  # claimed by the batch that completed the one before
        ids.append(head.task_id)
    assert [b - a for a, b in itertools.pairwise(ids)] == [SENSORS] * 3  # in order, none skipped


async def test_the_migrations_build_the_schema_the_tables_declare(sqlite_url: str) -> None:
    """Every index (partial ones included) is in a migration, and no migration leaves one the
    tables do not declare."""
    await upgrade(sqlite_url)
    db = open_database(sqlite_url)
    try:
        async with db.writer.connect() as conn:
            diff = await conn.run_sync(
                lambda sync: compare_metadata(MigrationContext.configure(sync), SQLModel.metadata)
            )
    finally:
        await db.dispose()
    assert diff == []


async def test_tasks_read_back_unvalidated_are_the_validated_ones(sqlite_url: str) -> None:
    """Tasks are built from rows without pydantic's validation (8x the rest of a bulk create):
    the column types make the same values, time zones included."""
    await upgrade(sqlite_url)
    store = TaskStore(open_database(sqlite_url))
    try:
        [created] = await store.create([NewTask(FIRST, "update_firmware", "f", 3, 60)], customer_id=None, now=utcnow())
        assert created == await store.get(created.id or 0)  # built from the values inserted, not read back
        [dispatch] = await store.claim_next([FIRST], now=utcnow())
        report = IncomingReport(FIRST, dispatch.task_id, dispatch.attempt, "completed", result={"version": "2.1"})
        await store.apply_reports([report], now=utcnow())
        for task in (created, await store.get(created.id or 0), (await store.list_tasks(TaskFilter(), limit=1))[0][0]):
            assert task == Task.model_validate(task.model_dump())
            assert task.created_at.tzinfo is not None
        assert (await store.get(created.id or 0)).result == {"version": "2.1"}
    finally:
        await store.db.dispose()


async def test_the_console_reads_recent_rows_and_one_tenants_index_entries(sqlite_url: str) -> None:
    """The overview, the live tail and the selector count of one customer among others: no read
    of every task or event; the counts by status come from the tenant's index entries alone."""
    await upgrade(sqlite_url)
    store = TaskStore(open_database(sqlite_url))
    try:
        for customer in (7, 8):
            serials = [FIRST + customer * 1000 + i for i in range(SENSORS)]
            for serial in serials:
                await store.register_sensor(serial, customer_id=customer, now=utcnow(), labels={"ring": "canary"})
            tasks = [NewTask(serials[i % SENSORS], "update_firmware", "f", 3, 3600) for i in range(SENSORS * QUEUE)]
            await store.create(tasks, customer_id=customer, now=utcnow())
        await store.claim_next(None, now=utcnow())
        tail = await _plans(store, lambda: store.transitions_after(0, customer_id=7))
        # Driven by the events' id range, each event's task by its key: a poll costs the new events.
        assert tail[-1][:2] == ["SEARCH task_events USING INTEGER PRIMARY KEY (rowid>? AND rowid<?)",
                                "SEARCH tasks USING INTEGER PRIMARY KEY (rowid=?)"], tail  # fmt: skip
        plans = list(tail)
        for action in (
            lambda: store.overview(customer_id=7, now=utcnow()),
            lambda: store.count_sensors(customer_id=7, labels={"ring": "canary"}),
        ):
            plans += await _plans(store, action)
        lines = [line for plan in plans for line in plan]
        assert _whole_reads(plans) == [], lines
        assert any("COVERING INDEX ix_tasks_customer_status (customer_id=?)" in line for line in lines), lines
        assert any("ix_tasks_customer_updated (customer_id=? AND updated_at>?)" in line for line in lines), lines
    finally:
        await store.db.dispose()
