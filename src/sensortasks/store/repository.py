"""TaskStore: every read and write of tasks, events and sensors.

Writes follow one pattern: load the rows inside the transaction (locked with
``FOR UPDATE`` on PostgreSQL; SQLite's ``BEGIN IMMEDIATE`` already serialises
writers), let the pure domain decide, then write all changes with one guarded
``UPDATE ... WHERE id = :id AND status_id = :loaded AND attempt_count = :loaded``
executemany and one INSERT of events. A batch of N reports costs a handful of
statements, not N round trips, and a guard that matches fewer rows than expected
rolls the whole batch back (`StaleBatch`) to be retried on fresh rows.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, bindparam, delete, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from sensortasks.domain import RetryPolicy, TaskStatus
from sensortasks.domain import lifecycle as lc
from sensortasks.errors import Conflict, InvalidInput, NotFound, SensortasksError
from sensortasks.store.changes import Changes, Work, created_event, task_row, transition_of
from sensortasks.store.engine import Database
from sensortasks.store.interface import CLAIM_BATCH
from sensortasks.store.records import (
    Dispatch,
    Expiry,
    IncomingReport,
    NewTask,
    Remembered,
    ReportBatchResult,
    SensorInfo,
    TaskFilter,
    Transition,
)
from sensortasks.store.tables import IdempotencyKey, Sensor, Task, TaskEvent

log = logging.getLogger(__name__)

T = Task.__table__  # type: ignore[attr-defined]
E = TaskEvent.__table__  # type: ignore[attr-defined]
S = Sensor.__table__  # type: ignore[attr-defined]
I = IdempotencyKey.__table__  # type: ignore[attr-defined]  # noqa: E741

ACTIVE = (TaskStatus.PENDING, TaskStatus.ONGOING)
#: Columns a state change may write; the guarded UPDATE sets all of them.
MUTABLE = (
    "status_id",
    "attempt_count",
    "progress",
    "error",
    "result",
    "updated_at",
    "started_at",
    "completed_at",
    "sent_at",
    "not_before",
    "deadline_at",
)
#: Largest IN (...) list sent in one statement.
IN_CHUNK = 500

_GUARDED_UPDATE = (
    update(T)
    .where(
        T.c.id == bindparam("g_id"),
        T.c.status_id == bindparam("g_status"),
        T.c.attempt_count == bindparam("g_attempt"),
    )
    .values({name: bindparam(f"v_{name}", type_=T.c[name].type) for name in MUTABLE})
)


class StaleBatch(SensortasksError):
    """A guarded update matched fewer rows than loaded: another writer got there first."""


def _chunks(items: Sequence[int], size: int = IN_CHUNK) -> Iterable[Sequence[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


async def _write_changes(conn: AsyncConnection, changes: Changes) -> None:
    """Write changed rows with one guarded executemany, and the events; `StaleBatch` if a guard missed."""
    changed = [w for w in changes.works.values() if w.changed]
    if changed:
        params = [
            {"g_id": w.id, "g_status": w.guard_status, "g_attempt": w.guard_attempt}
            | {f"v_{name}": w.row[name] for name in MUTABLE}
            for w in changed
        ]
        result = await conn.execute(_GUARDED_UPDATE, params)
        if conn.dialect.supports_sane_multi_rowcount and result.rowcount != len(changed):
            raise StaleBatch(f"{len(changed) - result.rowcount} of {len(changed)} rows changed meanwhile")
    if changes.events:
        await conn.execute(insert(E), changes.events)


class TaskStore:
    """The persistence interface the dispatcher and the API talk to."""

    def __init__(self, db: Database, policy: RetryPolicy | None = None) -> None:
        self.db = db
        self.policy = policy or RetryPolicy()
        self._lock_rows = not db.is_sqlite  # SQLite's BEGIN IMMEDIATE already holds the lock
        # SQLite has one writer. Queue this process's writers here instead of letting them
        # collide in SQLite's busy handler, which sleeps in millisecond steps.
        self._write_lock = asyncio.Lock() if db.is_sqlite else None

    # -- plumbing ----------------------------------------------------------
    @asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        if self._write_lock is None:
            async with self.db.writer.begin() as conn:
                yield conn
            return
        async with self._write_lock, self.db.writer.begin() as conn:
            yield conn

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncConnection]:
        async with self.db.reader.connect() as conn:
            yield conn

    def _locked(self, query: Select[Any], *, skip_locked: bool = False) -> Select[Any]:
        return query.with_for_update(skip_locked=skip_locked) if self._lock_rows else query

    async def _load(self, conn: AsyncConnection, query: Select[Any], changes: Changes) -> list[Work]:
        return [changes.load(dict(row._mapping)) for row in await conn.execute(query)]

    async def ping(self) -> None:
        async with self._read() as conn:
            await conn.execute(select(1))

    # -- customers ---------------------------------------------------------
    async def create(self, tasks: Sequence[NewTask], *, customer_id: int | None, now: datetime) -> list[Task]:
        """Insert tasks in one transaction, all or nothing."""
        rows = [task_row(t, customer_id=customer_id, now=now) for t in tasks]
        async with self._write() as conn:
            if customer_id is not None:
                await self._check_owned(conn, {t.sensor_serial for t in tasks}, customer_id)
            result = await conn.execute(insert(T).returning(*T.c, sort_by_parameter_order=True), rows)
            created = [Task.model_validate(dict(r._mapping)) for r in result]
            await conn.execute(insert(E), [created_event(t.id or 0, now) for t in created])
        return created

    async def _check_owned(self, conn: AsyncConnection, serials: set[int], customer_id: int) -> None:
        owned: set[int] = set()
        for group in _chunks(sorted(serials)):
            query = select(S.c.serial).where(S.c.serial.in_(group), S.c.customer_id == customer_id)
            owned |= set((await conn.execute(query)).scalars())
        if missing := sorted(serials - owned):
            raise InvalidInput(
                f"sensor_serial: sensor {missing[0]} is not registered to you; register it with POST /v1/sensors",
                details={"unregistered_serials": missing[:100]},
            )

    async def register_sensor(self, serial: int, *, customer_id: int | None, now: datetime) -> bool:
        """Register `serial` (to the customer, when there are customers); True if it is new.
        A sensor registered to another customer is a Conflict."""
        async with self._write() as conn:
            row = (await conn.execute(select(S).where(S.c.serial == serial))).first()
            if row is None:
                await conn.execute(insert(S).values(serial=serial, customer_id=customer_id, registered_at=now))
                return True
            if row.registered_at is not None and row.customer_id != customer_id:
                raise Conflict(f"sensor {serial} is registered to another customer")
            if row.registered_at is not None:
                return False
            await conn.execute(update(S).where(S.c.serial == serial).values(customer_id=customer_id, registered_at=now))
            return True

    async def unregister_sensor(self, serial: int, *, customer_id: int | None, now: datetime) -> int:
        """Release a sensor and cancel its Pending and Ongoing tasks; returns how many were cancelled."""
        changes = Changes(now)
        async with self._write() as conn:
            owner = S.c.customer_id.is_(None) if customer_id is None else S.c.customer_id == customer_id
            released = await conn.execute(
                update(S)
                .where(S.c.serial == serial, S.c.registered_at.is_not(None), owner)
                .values(customer_id=None, registered_at=None)
            )
            if released.rowcount == 0:
                raise NotFound(f"sensor {serial} not found")
            active = self._locked(select(T).where(T.c.sensor_serial == serial, T.c.status_id.in_(ACTIVE)))
            for work in await self._load(conn, active, changes):
                changes.apply(work, lc.cancel(work.state))
            await _write_changes(conn, changes)
        return len(changes.transitions)

    def _owned(self, query: Select[Any], customer_id: int | None) -> Select[Any]:
        return query if customer_id is None else query.where(T.c.customer_id == customer_id)

    async def get(self, task_id: int, *, customer_id: int | None = None) -> Task:
        async with self._read() as conn:
            row = (await conn.execute(self._owned(select(T).where(T.c.id == task_id), customer_id))).first()
        if row is None:
            raise NotFound(f"task {task_id} not found")
        return Task.model_validate(dict(row._mapping))

    def _filtered(self, where: TaskFilter) -> Select[Any]:
        query = self._owned(select(T), where.customer_id)
        for column, value in (
            (T.c.sensor_serial, where.sensor_serial),
            (T.c.type, where.type),
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

    async def list_tasks(
        self, where: TaskFilter, *, before_id: int | None = None, limit: int = 100
    ) -> tuple[list[Task], bool]:
        """Newest first; `before_id` is the keyset cursor. Returns the page and whether more follow."""
        query = self._filtered(where)
        if before_id is not None:
            query = query.where(T.c.id < before_id)
        query = query.order_by(T.c.id.desc()).limit(limit + 1)
        async with self._read() as conn:
            rows = [Task.model_validate(dict(r._mapping)) for r in await conn.execute(query)]
        return rows[:limit], len(rows) > limit

    async def count_tasks(self, where: TaskFilter) -> int:
        """How many tasks match (one COUNT over the list's filter)."""
        query = select(func.count()).select_from(self._filtered(where).subquery())
        async with self._read() as conn:
            return int((await conn.execute(query)).scalar_one())

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

    # -- idempotency ---------------------------------------------------------
    async def remembered(self, customer_id: int, key: str) -> Remembered | None:
        async with self._read() as conn:
            row = (await conn.execute(select(I).where(I.c.customer_id == customer_id, I.c.key == key))).first()
        return None if row is None else Remembered(row.request_hash, row.status_code, row.response)

    async def remember(
        self, customer_id: int, key: str, answer: Remembered, *, now: datetime, keep: timedelta
    ) -> Remembered:
        """Store an answer; if another request stored one first, return that one instead."""
        async with self._write() as conn:
            existing = (await conn.execute(select(I).where(I.c.customer_id == customer_id, I.c.key == key))).first()
            if existing is not None:
                return Remembered(existing.request_hash, existing.status_code, existing.response)
            await conn.execute(delete(I).where(I.c.created_at < now - keep))
            await conn.execute(
                insert(I).values(
                    customer_id=customer_id,
                    key=key,
                    request_hash=answer.request_hash,
                    status_code=answer.status_code,
                    response=answer.response,
                    created_at=now,
                )
            )
        return answer

    async def events(self, task_id: int, *, customer_id: int | None = None) -> list[TaskEvent]:
        await self.get(task_id, customer_id=customer_id)
        async with self._read() as conn:
            rows = await conn.execute(select(E).where(E.c.task_id == task_id).order_by(E.c.id))
            return [TaskEvent.model_validate(dict(r._mapping)) for r in rows]

    async def cancel(self, task_id: int, *, customer_id: int | None = None, now: datetime) -> Task:
        """Cancel a task; cancelling a Cancelled task again is a no-op, a finished one a Conflict."""
        changes = Changes(now)
        async with self._write() as conn:
            query = self._locked(self._owned(select(T).where(T.c.id == task_id), customer_id))
            works = await self._load(conn, query, changes)
            if not works:
                raise NotFound(f"task {task_id} not found")
            work = works[0]
            changes.cancel(work)
            await _write_changes(conn, changes)
        return Task.model_validate(work.row)

    async def sensor(self, serial: int, *, customer_id: int | None = None) -> SensorInfo:
        async with self._read() as conn:
            presence = (await conn.execute(select(S).where(S.c.serial == serial))).first()
            active = self._owned(
                select(T.c.id, T.c.status_id, T.c.sent_at).where(
                    T.c.sensor_serial == serial, T.c.status_id.in_(ACTIVE)
                ),
                customer_id,
            ).order_by(T.c.id)
            rows = (await conn.execute(active)).all()
        foreign = customer_id is not None and (presence is None or presence.customer_id != customer_id)
        if foreign or (presence is None and not rows):
            raise NotFound(f"sensor {serial} not found")
        head = rows[0] if rows else None
        in_flight = head.id if head and (head.status_id == TaskStatus.ONGOING or head.sent_at) else None
        return SensorInfo(
            serial=serial,
            online=presence.online if presence else None,
            last_seen=presence.last_seen if presence else None,
            in_flight=in_flight,
            queued=len(rows) - (1 if in_flight else 0),
        )

    async def counts(self) -> dict[TaskStatus, int]:
        async with self._read() as conn:
            rows = await conn.execute(select(T.c.status_id, func.count()).group_by(T.c.status_id))
            counts = dict.fromkeys(TaskStatus, 0)
            counts.update({TaskStatus(s): n for s, n in rows})
            return counts

    async def sensors_online(self) -> int:
        async with self._read() as conn:
            return int((await conn.execute(select(func.count()).where(S.c.online.is_(True)))).scalar_one())

    # -- dispatcher ----------------------------------------------------------
    def _not_offline(self) -> Any:  # noqa: ANN401
        return T.c.sensor_serial.not_in(select(S.c.serial).where(S.c.online.is_(False)))

    async def claim_next(self, serials: Sequence[int] | None, *, now: datetime) -> list[Dispatch]:
        """Start the next attempt of each given sensor's head task, where one is due.

        A sensor's head is its oldest Pending or Ongoing task; it is claimed when it is
        Pending, not yet sent for its current attempt, past any back off, and the sensor
        is not known to be offline. ``serials=None`` looks at every sensor.
        """
        dispatches: list[Dispatch] = []
        groups = [None] if serials is None else list(_chunks(serials))
        for group in groups:
            heads = select(func.min(T.c.id)).where(T.c.status_id.in_(ACTIVE))
            if group is not None:
                heads = heads.where(T.c.sensor_serial.in_(group))
            heads = heads.group_by(T.c.sensor_serial)
            query = (
                select(T)
                .where(
                    T.c.id.in_(heads),
                    T.c.status_id == TaskStatus.PENDING,
                    T.c.sent_at.is_(None),
                    or_(T.c.not_before.is_(None), T.c.not_before <= now),
                    self._not_offline(),
                )
                .order_by(T.c.id)
                .limit(CLAIM_BATCH)
            )
            changes = Changes(now)
            async with self._write() as conn:
                for work in await self._load(conn, self._locked(query, skip_locked=True), changes):
                    changes.claim(work)
                await _write_changes(conn, changes)
            dispatches += changes.dispatches
        return dispatches

    async def redeliver(self, serials: Sequence[int] | None, *, now: datetime, reason: str) -> list[Dispatch]:
        """Re-send the current attempt of every in-flight task (same attempt number).

        Restarts the acknowledgement clock of Pending ones: the sensor gets a fresh
        `ack_timeout_s` to answer after it (or the dispatcher) comes back.
        """
        in_flight = or_(
            T.c.status_id == TaskStatus.ONGOING,
            (T.c.status_id == TaskStatus.PENDING) & T.c.sent_at.is_not(None),
        )
        dispatches: list[Dispatch] = []
        groups = [None] if serials is None else list(_chunks(serials))
        for group in groups:
            after = 0
            while True:
                query = select(T).where(in_flight, self._not_offline(), T.c.id > after)
                if group is not None:
                    query = query.where(T.c.sensor_serial.in_(group))
                query = query.order_by(T.c.id).limit(CLAIM_BATCH)
                changes = Changes(now)
                async with self._write() as conn:
                    works = await self._load(conn, self._locked(query, skip_locked=True), changes)
                    for work in works:
                        changes.redeliver(work, reason)
                    await _write_changes(conn, changes)
                dispatches += changes.dispatches
                if len(works) < CLAIM_BATCH:
                    break
                after = works[-1].id
        return dispatches

    async def apply_reports(self, reports: Sequence[IncomingReport], *, now: datetime) -> ReportBatchResult:
        """Apply a burst of status reports in one transaction, in arrival order."""
        changes = Changes(now)
        ids = sorted({r.task_id for r in reports})
        async with self._write() as conn:
            for group in _chunks(ids):
                await self._load(conn, self._locked(select(T).where(T.c.id.in_(group))), changes)
            refused = [r for r in (changes.report(report, self.policy) for report in reports) if r is not None]
            await _write_changes(conn, changes)
            # A status proves its sensor is connected: refresh what /v1/sensors shows.
            for group in _chunks(sorted({r.serial for r in reports})):
                await conn.execute(update(S).where(S.c.serial.in_(group)).values(last_seen=now))
        return changes.report_result(refused)

    async def expire(self, *, now: datetime, ack_timeout_s: float) -> Expiry:
        """Apply acknowledgement and run timeouts that are due.

        Tasks of sensors known to be offline do not time out unacknowledged.
        """
        ack_cutoff = now - timedelta(seconds=ack_timeout_s)
        unacked = select(T).where(
            T.c.status_id == TaskStatus.PENDING,
            T.c.sent_at.is_not(None),
            T.c.sent_at <= ack_cutoff,
            self._not_offline(),
        )
        overdue = select(T).where(T.c.status_id == TaskStatus.ONGOING, T.c.deadline_at <= now)
        changes = Changes(now)
        async with self._write() as conn:
            for query in (unacked, overdue):
                for work in await self._load(conn, self._locked(query.limit(CLAIM_BATCH), skip_locked=True), changes):
                    changes.expire(work, self.policy)
            await _write_changes(conn, changes)
        return changes.expiry()

    async def record_presence(self, updates: Sequence[tuple[int, bool]], *, now: datetime) -> None:
        """Store the latest presence of each sensor (last message wins)."""
        latest = dict(updates)
        async with self._write() as conn:
            known = set()
            for group in _chunks(sorted(latest)):
                known |= set((await conn.execute(select(S.c.serial).where(S.c.serial.in_(group)))).scalars())
            new = [{"serial": s, "online": o, "last_seen": now} for s, o in latest.items() if s not in known]
            old = [{"k": s, "v_online": o, "v_seen": now} for s, o in latest.items() if s in known]
            if new:
                await conn.execute(insert(S), new)
            if old:
                stmt = (
                    update(S)
                    .where(S.c.serial == bindparam("k"))
                    .values(online=bindparam("v_online"), last_seen=bindparam("v_seen", type_=S.c.last_seen.type))
                )
                await conn.execute(stmt, old)

    async def unpublished(self, *, limit: int = CLAIM_BATCH) -> list[tuple[int, Transition]]:
        """Transitions not yet published on ``ops/events``, oldest first, with their event ids."""
        query = (
            select(E, T.c.sensor_serial, T.c.type)
            .join(T, T.c.id == E.c.task_id)
            .where(E.c.published.is_(False))
            .order_by(E.c.id)
            .limit(limit)
        )
        async with self._read() as conn:
            rows = (await conn.execute(query)).all()
        return [(r.id, transition_of(r._mapping, r.sensor_serial, r.type)) for r in rows]

    async def mark_published(self, event_ids: Sequence[int]) -> None:
        async with self._write() as conn:
            for group in _chunks(sorted(event_ids)):
                await conn.execute(update(E).where(E.c.id.in_(group)).values(published=True))
