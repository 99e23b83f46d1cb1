"""Customers' tasks: create (checked against the sensors they registered), get, list,
count, export, cancel, each task's events; and the bulk load of a history."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any, overload

from sqlalchemy import Connection, Select, func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from sensortasks.domain import TaskStatus
from sensortasks.errors import InvalidInput, NotFound
from sensortasks.store.base import E, S, StoreBase, T, chunks, insert_events, owned
from sensortasks.store.changes import Changes, created_event, task_row, transition_of
from sensortasks.store.notify import notify
from sensortasks.store.records import NewTask, PastTask, TaskFilter
from sensortasks.store.rows import insert_rows
from sensortasks.store.tables import Task, TaskEvent


def _task(row: Mapping[Any, Any]) -> Task:
    """A task from one of our rows, not validated again: its column types already made the
    values (validation cost 190 µs a row, eight times the rest of a bulk create)."""
    return Task.model_construct(**row)


def _filtered(where: TaskFilter) -> Select[Any]:
    query = owned(select(T), where.customer_id)
    for column, value in (
        (T.c.sensor_serial, where.sensor_serial),
        (T.c.type, where.type),
        (T.c.rollout_id, where.rollout_id),
    ):
        if value is not None:
            query = query.where(column == value)
    if where.statuses:
        query = query.where(T.c.status_id.in_([int(s) for s in where.statuses]))
    for column, since, until in (
        (T.c.created_at, where.created_since, where.created_until),
        (T.c.updated_at, where.updated_since, where.updated_until),
    ):
        if since is not None:
            query = query.where(column >= since)
        if until is not None:
            query = query.where(column < until)
    return query


#: An `updated_since` listing on SQLite with fewer matches than this below its cursor reads them
#: by id (`TaskQueries._page`); more are found soon enough in id order. At most ~5 ms on 1M rows.
FEW_CHANGES = 5_000


def _changed_ids(where: TaskFilter, before_id: int | None) -> Select[Any]:
    """The ids `where`'s customer and updated_at window match below the cursor, up to
    `FEW_CHANGES`: ordered by updated_at, so that SQLite reads them from ``ix_tasks_updated``
    (``ix_tasks_customer_updated`` for a customer) alone."""
    query = owned(select(T.c.id), where.customer_id).where(T.c.updated_at >= where.updated_since)
    if where.updated_until is not None:
        query = query.where(T.c.updated_at < where.updated_until)
    if before_id is not None:
        query = query.where(T.c.id < before_id)
    return query.order_by(T.c.updated_at).limit(FEW_CHANGES)


def _check_owned(conn: Connection, serials: set[int], customer_id: int) -> None:
    """`InvalidInput` with ``details["unregistered_serials"]`` (all of them, sorted) unless every
    serial is registered to the customer; the service words it for its caller."""
    registered: set[int] = set()
    for group in chunks(sorted(serials)):
        query = select(S.c.serial).where(S.c.serial.in_(group), S.c.customer_id == customer_id)
        registered |= set(conn.execute(query).scalars())
    if missing := sorted(serials - registered):
        raise InvalidInput(
            f"sensor {missing[0]} is not registered to customer {customer_id}",
            details={"unregistered_serials": missing},
        )


#: The largest task id (0 when there is none).
_LARGEST_ID = select(func.coalesce(func.max(T.c.id), 0))
#: Every column of a task, for rows built from what was inserted.
_NO_VALUES = dict.fromkeys(T.c.keys())


def _insert_in_order(conn: Connection, rows: Sequence[dict[str, Any]]) -> list[int]:
    """SQLite: one prepared INSERT run for every row; the new ids, in order. SQLAlchemy cannot
    keep ``RETURNING`` in parameter order there and falls back to one statement per row (1,000
    statements for 1,000 tasks). The writer holds the database (``BEGIN IMMEDIATE``) and rowids
    grow by one from the largest, so the new rows have the ids above the old largest, in
    insertion order (reading them back cost 70 µs a task, a third of a create)."""
    before = conn.execute(_LARGEST_ID).scalar_one()
    insert_rows(conn, T, rows)
    after = conn.execute(_LARGEST_ID).scalar_one()
    if after - before != len(rows):  # someone else wrote inside our transaction: impossible on SQLite
        raise RuntimeError(f"inserted {len(rows)} tasks but the largest id grew by {after - before}")
    return list(range(before + 1, after + 1))


class Created(Sequence[Task]):
    """The tasks one create inserted, in order, each built from its row when it is read: a bulk's
    answer is their `ids` alone, and building its 10,000 tasks took half of the request's time
    on the event loop (a profile of ``POST /v1/tasks/bulk``), which every dispatcher's step waited
    for."""

    __slots__ = ("_rows", "ids")

    def __init__(self, rows: Sequence[dict[str, Any]], ids: Sequence[int]) -> None:
        if len(rows) != len(ids):
            raise ValueError(f"{len(rows)} rows but {len(ids)} ids")
        self._rows = rows
        self.ids = list(ids)

    def __len__(self) -> int:
        return len(self.ids)

    @overload
    def __getitem__(self, index: int) -> Task: ...
    @overload
    def __getitem__(self, index: slice) -> list[Task]: ...
    def __getitem__(self, index: int | slice) -> Task | list[Task]:
        if isinstance(index, slice):
            return [self[at] for at in range(*index.indices(len(self)))]
        return _task(_NO_VALUES | self._rows[index] | {"id": self.ids[index]})


def _insert_rows(
    conn: Connection, rows: Sequence[dict[str, Any]], customer_id: int | None, now: datetime, origin: str
) -> list[int]:
    """Insert task rows with their created events in the caller's transaction (`InvalidInput`
    for a sensor not registered to the customer); their ids. The other instances are woken up
    when it commits."""
    serials = {r["sensor_serial"] for r in rows}
    if customer_id is not None:
        _check_owned(conn, serials, customer_id)
    if conn.dialect.name == "sqlite":
        ids = _insert_in_order(conn, rows)
    else:
        result = conn.execute(insert(T).returning(T.c.id, sort_by_parameter_order=True), rows)
        ids = [int(task_id) for task_id in result.scalars()]
    events = [created_event(task_id, now) for task_id in ids]
    transitions = [
        transition_of(e, r["sensor_serial"], r["type"], r["rollout_id"]) for e, r in zip(events, rows, strict=True)
    ]
    insert_events(conn, events, transitions)
    notify(conn, origin, serials)
    return ids


def insert_tasks(
    conn: Connection, tasks: Sequence[NewTask], *, customer_id: int | None, now: datetime, origin: str
) -> Created:
    """Insert tasks with their created events in the caller's transaction (`_insert_rows`)."""
    rows = [task_row(t, customer_id=customer_id, now=now) for t in tasks]
    return Created(rows, _insert_rows(conn, rows, customer_id, now, origin))


class TaskQueries(StoreBase):
    async def create(self, tasks: Sequence[NewTask], *, customer_id: int | None, now: datetime) -> Created:
        """Insert tasks in one transaction, all or nothing (with an idempotency key claimed:
        `IdempotencyQueries.create_answering`)."""
        # Rows built outside the writer (a bulk of 10,000 held it 200 ms longer), tasks when read.
        rows = [task_row(t, customer_id=customer_id, now=now) for t in tasks]
        return Created(rows, await self._transact(_insert_rows, rows, customer_id, now, self.origin))

    async def bulk_insert(self, tasks: Sequence[PastTask]) -> None:
        """Insert tasks as they are given, in one transaction: for loading a history (the listing
        benchmark, imports). No event is written and no sensor checked; the caller vouches
        that each row is a state the lifecycle can reach. One executemany, no RETURNING."""
        rows = [
            task_row(p.task, customer_id=p.customer_id, now=p.created_at)
            | {"status_id": p.status, "attempt_count": p.attempt_count, "updated_at": p.updated_at}
            for p in tasks
        ]
        if rows:
            async with self._write() as conn:
                await conn.execute(insert(T), rows)

    async def get(self, task_id: int, *, customer_id: int | None = None) -> Task:
        async with self._read() as conn:
            row = (await conn.execute(owned(select(T).where(T.c.id == task_id), customer_id))).first()
        if row is None:
            raise NotFound(f"task {task_id} not found")
        return _task(row._mapping)

    async def list_tasks(
        self, where: TaskFilter, *, before_id: int | None = None, limit: int = 100
    ) -> tuple[list[Task], bool]:
        """Newest first; `before_id` is the keyset cursor. Returns the page and whether more follow."""
        async with self._read() as conn:
            query = await self._page(conn, where, before_id)
            query = query.order_by(T.c.id.desc()).limit(limit + 1)
            rows = [_task(r._mapping) for r in await conn.execute(query)]
        return rows[:limit], len(rows) > limit

    async def _page(self, conn: AsyncConnection, where: TaskFilter, before_id: int | None) -> Select[Any]:
        """The rows a page is taken from.

        SQLite has no range statistics and walks the id order for any `updated_since` window:
        right when many rows changed, but when fewer than a page did (a poller's "what changed
        since T", every poll's last page) it reads the whole table, ~200 ms on 1M rows. So the
        window is counted in the updated_at index first, and a small one is read by id.
        PostgreSQL estimates the window from its statistics and chooses well by itself.
        """
        if self.db.is_sqlite and where.updated_since is not None:
            changed = _changed_ids(where, before_id)
            count = (await conn.execute(select(func.count()).select_from(changed.subquery()))).scalar_one()
            if count < FEW_CHANGES:
                rest = replace(where, customer_id=None, updated_since=None, updated_until=None)
                return _filtered(rest).where(T.c.id.in_(changed))
        query = _filtered(where)
        return query if before_id is None else query.where(T.c.id < before_id)

    async def count_tasks(self, where: TaskFilter) -> int:
        """How many tasks match (one COUNT over the list's filter)."""
        query = select(func.count()).select_from(_filtered(where).subquery())
        async with self._read() as conn:
            return int((await conn.execute(query)).scalar_one())

    async def counts(self) -> dict[TaskStatus, int]:
        """Tasks per status, every customer's (the metrics' gauges)."""
        async with self._read() as conn:
            rows = await conn.execute(select(T.c.status_id, func.count()).group_by(T.c.status_id))
            counts = dict.fromkeys(TaskStatus, 0)
            counts.update({TaskStatus(s): n for s, n in rows})
            return counts

    async def iter_tasks(self, where: TaskFilter, *, page: int = 1000) -> AsyncIterator[list[Task]]:
        """Every matching task, newest first, a page at a time (constant memory for exports)."""
        before: int | None = None
        while True:
            rows, more = await self.list_tasks(where, before_id=before, limit=page)
            if rows:
                yield rows
            if not more:
                return
            before = rows[-1].id

    async def events(self, task_id: int, *, customer_id: int | None = None) -> list[TaskEvent]:
        await self.get(task_id, customer_id=customer_id)
        async with self._read() as conn:
            rows = await conn.execute(select(E).where(E.c.task_id == task_id).order_by(E.c.id))
            return [TaskEvent.model_construct(**r._mapping) for r in rows]

    async def cancel(self, task_id: int, *, customer_id: int | None = None, now: datetime) -> Task:
        """Cancel a task; cancelling a Cancelled task again is a no-op, a finished one a Conflict."""
        query = self._locked(owned(select(T).where(T.c.id == task_id), customer_id))
        return await self._transact(self._cancel, task_id, query, Changes(now))

    def _cancel(self, conn: Connection, task_id: int, query: Select[Any], changes: Changes) -> Task:
        works = self._load(conn, query, changes)
        if not works:
            raise NotFound(f"task {task_id} not found")
        changes.cancel(works[0])
        self._write_changes(conn, changes)
        return _task(works[0].row)
