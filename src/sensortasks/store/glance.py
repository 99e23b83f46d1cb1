"""What the console reads at a glance: a customer's live tail of task transitions (the rows the
outbox publishes on ``ops/events``), its fleet overview, and how many sensors a selector matches.

Every query here is bounded by what is recent, not by the size of a tenant's history:

- the tail reads events by primary key after a cursor, at most `FEED_BATCH` of them, and never
  more than `FEED_BACKLOG` ids behind the newest (a cursor further back jumps forward);
- the per-minute rates read only the tenant's tasks updated in the window
  (``ix_tasks_customer_updated``) and their events in it (``ix_task_events_task``);
- the counts by status read the tenant's index entries alone (``ix_tasks_customer_status``,
  an index-only scan: one entry per task of the tenant, ~30 ms per million on SQLite).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from sensortasks.domain import TaskStatus
from sensortasks.store.base import E, S, StoreBase, T, labelled, owned, registered_to
from sensortasks.store.changes import transition_of
from sensortasks.store.records import Transition

#: Events one read of the tail returns at most.
FEED_BATCH = 200
#: How far behind the newest event a tail may start: a client back after a long absence gets
#: the last ones, not a replay of everybody's history (nor a scan of it).
FEED_BACKLOG = 10_000
#: The overview's rate chart: this many minutes, one bucket each.
RATE_MINUTES = 60


@dataclass(frozen=True, slots=True)
class Minute:
    """One bucket of the rate chart: attempts sent and tasks completed in the minute from `start`."""

    start: datetime
    dispatched: int
    completed: int


@dataclass(frozen=True, slots=True)
class Overview:
    statuses: dict[TaskStatus, int]
    sensors: int
    sensors_online: int
    minutes: list[Minute]


class GlanceQueries(StoreBase):
    async def latest_event_id(self) -> int:
        """The newest event's id (0 with none): where a tail that asks for nothing old starts."""
        async with self._read() as conn:
            return await _latest_event_id(conn)

    async def transitions_after(
        self, after_id: int, *, customer_id: int | None, limit: int = FEED_BATCH
    ) -> tuple[list[tuple[int, Transition]], int]:
        """The customer's transitions with an id above `after_id`, oldest first, and the cursor to
        read from next: the last id returned, or the newest id looked at when none of the
        customer's were among them (other tenants' events are passed over once, not re-read)."""
        async with self._read() as conn:
            newest = await _latest_event_id(conn)
            start = max(after_id, newest - FEED_BACKLOG)
            rows = (await conn.execute(_tail(start, newest, customer_id, limit))).all()
        found = [(r.id, transition_of(r._mapping, r.sensor_serial, r.type, r.rollout_id)) for r in rows]
        return found, found[-1][0] if len(found) == limit else max(start, newest)

    async def overview(self, *, customer_id: int | None, now: datetime) -> Overview:
        """Tasks by status, sensors registered and online, and the last `RATE_MINUTES` minutes'
        attempts sent and tasks completed, minute by minute (the last bucket is the current minute)."""
        first = now.replace(second=0, microsecond=0) - timedelta(minutes=RATE_MINUTES - 1)
        by_status = owned(select(T.c.status_id, func.count()), customer_id).group_by(T.c.status_id)
        sensors = select(func.count(), func.count().filter(S.c.online.is_(True))).where(registered_to(customer_id))
        touched = owned(select(T.c.id), customer_id).where(T.c.updated_at >= first)
        recent = select(E.c.at, E.c.kind).where(
            E.c.task_id.in_(touched.scalar_subquery()),
            E.c.at >= first,
            or_(E.c.kind == "sent", E.c.to_status == TaskStatus.COMPLETED),
        )
        async with self._read() as conn:
            statuses = dict.fromkeys(TaskStatus, 0) | {TaskStatus(s): n for s, n in await conn.execute(by_status)}
            total, online = (await conn.execute(sensors)).one()
            events = (await conn.execute(recent)).all()
        sent, completed = [0] * RATE_MINUTES, [0] * RATE_MINUTES
        for at, kind in events:
            minute = int((at - first).total_seconds() // 60)
            if 0 <= minute < RATE_MINUTES:
                (sent if kind == "sent" else completed)[minute] += 1
        minutes = [Minute(first + timedelta(minutes=i), sent[i], completed[i]) for i in range(RATE_MINUTES)]
        return Overview(statuses, int(total), int(online), minutes)

    async def count_sensors(self, *, customer_id: int | None, labels: Mapping[str, str]) -> int:
        """How many of the customer's registered sensors carry every pair of `labels` (what a
        rollout's selector would target now; `list_sensors` lists the same ones)."""
        query = select(func.count()).where(registered_to(customer_id), *labelled(labels))
        async with self._read() as conn:
            return int((await conn.execute(query)).scalar_one())


async def _latest_event_id(conn: AsyncConnection) -> int:
    return int((await conn.execute(select(func.max(E.c.id)))).scalar_one() or 0)


def _tail(start: int, newest: int, customer_id: int | None, limit: int) -> Select[Any]:
    """Transition events with ids in (`start`, `newest`], oldest first, of the customer's tasks."""
    query = (
        select(E, T.c.sensor_serial, T.c.type, T.c.rollout_id)
        .join(T, T.c.id == E.c.task_id)
        .where(E.c.id > start, E.c.id <= newest, E.c.kind == "transition")
        .order_by(E.c.id)
        .limit(limit)
    )
    if customer_id is not None:
        # ``+ 0``: no index on it, so that the read is driven by the events' id range (a few
        # rows), never by the tenant's tasks (SQLite, without statistics, would pick them).
        query = query.where(T.c.customer_id + 0 == customer_id)
    return query
