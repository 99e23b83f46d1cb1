"""What the dispatcher does to tasks: claim each sensor's next attempt, re-deliver the
ones in flight, apply status reports and expire what timed out.

Each runs the pure domain on rows loaded (and locked) in one transaction and writes the
outcome with `write_changes`; batches are bounded by `CLAIM_BATCH`, so a full batch
means "ask again".
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import BigInteger, Connection, Select, bindparam, column, func, or_, select, text, update
from sqlalchemy.dialects.postgresql import ARRAY

from sensortasks.domain import TaskStatus
from sensortasks.store.base import E, S, StoreBase, T, chunks
from sensortasks.store.changes import Changes, Work
from sensortasks.store.interface import CLAIM_BATCH
from sensortasks.store.records import Dispatch, Expiry, IncomingReport, ReportBatchResult
from sensortasks.store.tables import ACTIVE_SQL, RUNNING_SQL, UNACKED_SQL, UNPUBLISHED_CANCEL_SQL


def _not_offline() -> Any:  # noqa: ANN401
    return T.c.sensor_serial.not_in(select(S.c.serial).where(S.c.online.is_(False)))


def _no_cancel_untold() -> Any:  # noqa: ANN401
    """No cancel of the sensor's waits in the outbox: it must reach the sensor before the next
    task does (whichever instance, or sweep, claims that one). Read once per query from the
    partial index ``ix_task_events_unpublished_cancels``, which is empty but for a moment."""
    cancelled = T.alias("cancelled")
    untold = (
        select(cancelled.c.sensor_serial)
        .select_from(E.join(cancelled, cancelled.c.id == E.c.task_id))
        .where(UNPUBLISHED_CANCEL_SQL)
    )
    return T.c.sensor_serial.not_in(untold)


#: Every sensor with a Pending or Ongoing task: one index seek per sensor, not per task.
_ACTIVE_SENSORS = """WITH RECURSIVE active(serial) AS (
    SELECT min(sensor_serial) FROM {tasks} WHERE {active}
    UNION ALL
    SELECT (SELECT min(sensor_serial) FROM {tasks} WHERE {active} AND sensor_serial > active.serial)
    FROM active WHERE active.serial IS NOT NULL
) SELECT serial FROM active WHERE serial IS NOT NULL"""


#: The dispatcher's `now`, bound at each execution of a statement built once.
_NOW = bindparam("now", type_=T.c.not_before.type)


def _wanted(*, sqlite: bool, named: bool) -> Any:  # noqa: ANN401
    """The sensors to look at, as a table of one column, ``serial``: the given ones, as one
    array parameter ``serials`` (one statement for any number of them), or every sensor with a
    Pending or Ongoing task, found by a skip scan of ``ix_tasks_active_sensor``."""
    if named:
        if sqlite:
            each = func.json_each(bindparam("serials")).table_valued("value")
            return select(each.c.value.label("serial")).subquery("wanted")
        array = bindparam("serials", type_=ARRAY(BigInteger))
        return select(func.unnest(array).column_valued("serial")).subquery("wanted")
    # SQLite has no statistics to prefer the partial index over ix_tasks_status_id.
    hint = " INDEXED BY ix_tasks_active_sensor" if sqlite else ""
    return (
        text(_ACTIVE_SENSORS.format(tasks=f"tasks{hint}", active=ACTIVE_SQL.text))
        .columns(column("serial", BigInteger))
        .subquery("wanted")
    )


@functools.cache
def _claim_query(*, sqlite: bool, named: bool) -> Any:  # noqa: ANN401
    """The claim, built once per shape: building it and its cache key cost 750 µs a call."""
    wanted = _wanted(sqlite=sqlite, named=named)
    # One index seek per sensor, however long its queue (a GROUP BY would read it all).
    head = select(func.min(T.c.id)).where(T.c.sensor_serial == wanted.c.serial, ACTIVE_SQL)
    query = (
        select(T)
        .where(
            T.c.id.in_(select(head.scalar_subquery()).select_from(wanted)),
            T.c.status_id == TaskStatus.PENDING,
            T.c.sent_at.is_(None),
            or_(T.c.not_before.is_(None), T.c.not_before <= _NOW),
            _not_offline(),
            _no_cancel_untold(),
        )
        .order_by(T.c.id)
        .limit(CLAIM_BATCH)
    )
    # SQLite's BEGIN IMMEDIATE already serialises the writers; PostgreSQL locks the rows.
    return query if sqlite else query.with_for_update(skip_locked=True)


#: A batch of reports' tasks (locked on PostgreSQL), and the sensors whose last_seen they refresh.
_REPORTED = select(T).where(T.c.id.in_(bindparam("ids", expanding=True)))
_REPORTED_LOCKED = _REPORTED.with_for_update()
_SEEN = update(S).where(S.c.serial.in_(bindparam("serials", expanding=True))).values(last_seen=_NOW)


class DispatchQueries(StoreBase):
    async def claim_next(self, serials: Sequence[int] | None, *, now: datetime) -> list[Dispatch]:
        """Start the next attempt of each given sensor's head task, where one is due.

        A sensor's head is its oldest Pending or Ongoing task; it is claimed when it is
        Pending, not yet sent for its current attempt, past any back off, and the sensor
        is not known to be offline. ``serials=None`` looks at every sensor.
        """
        dispatches: list[Dispatch] = []
        # At most one claim per sensor: a group of CLAIM_BATCH sensors fits in one batch.
        groups = [None] if serials is None else list(chunks(serials, CLAIM_BATCH))
        for group in groups:
            dispatches += await self._transact(self._claim, group, now)
        return dispatches

    def _claim(self, conn: Connection, serials: Sequence[int] | None, now: datetime) -> list[Dispatch]:
        """`claim_next` for up to `CLAIM_BATCH` sensors (None: every sensor) in the caller's transaction."""
        params: dict[str, Any] = {"now": now}
        if serials is not None:
            params["serials"] = json.dumps(list(serials)) if self.db.is_sqlite else list(serials)
        changes = Changes(now)
        query = _claim_query(sqlite=self.db.is_sqlite, named=serials is not None)
        for work in self._load(conn, query, changes, params):
            changes.claim(work)
        self._write_changes(conn, changes)
        return changes.dispatches

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
        groups = [None] if serials is None else list(chunks(serials))
        for group in groups:
            after = 0
            while True:
                query = select(T).where(in_flight, _not_offline(), T.c.id > after)
                if group is not None:
                    query = query.where(T.c.sensor_serial.in_(group))
                query = query.order_by(T.c.id).limit(CLAIM_BATCH)
                changes = Changes(now)
                works = await self._transact(self._redeliver, self._locked(query, skip_locked=True), changes, reason)
                dispatches += changes.dispatches
                if len(works) < CLAIM_BATCH:
                    break
                after = works[-1].id
        return dispatches

    def _redeliver(self, conn: Connection, query: Select[Any], changes: Changes, reason: str) -> list[Work]:
        works = self._load(conn, query, changes)
        for work in works:
            changes.redeliver(work, reason)
        self._write_changes(conn, changes)
        return works

    async def apply_reports(self, reports: Sequence[IncomingReport], *, now: datetime) -> ReportBatchResult:
        """Apply a burst of status reports in one transaction, in arrival order, and claim the
        next attempt of each sensor it freed (`ReportBatchResult.dispatches`) in the same one:
        a claim of its own for them was a quarter of SQLite's writer at saturation."""
        return await self._transact(self._apply_reports, reports, now)

    def _apply_reports(self, conn: Connection, reports: Sequence[IncomingReport], now: datetime) -> ReportBatchResult:
        changes = Changes(now)
        reported = _REPORTED if self.db.is_sqlite else _REPORTED_LOCKED
        for group in chunks(sorted({r.task_id for r in reports})):
            self._load(conn, reported, changes, {"ids": list(group)})
        refused = [r for r in (changes.report(report, self.policy) for report in reports) if r is not None]
        self._write_changes(conn, changes)
        claimed: list[Dispatch] = []
        for group in chunks(sorted(changes.wake), CLAIM_BATCH):
            claimed += self._claim(conn, group, now)
        # A status proves its sensor is connected: refresh what /v1/sensors shows.
        for group in chunks(sorted({r.serial for r in reports})):
            conn.execute(_SEEN, {"serials": list(group), "now": now})
        return changes.report_result(refused, claimed)

    async def expire(self, *, now: datetime, ack_timeout_s: float) -> Expiry:
        """Apply acknowledgement and run timeouts that are due.

        Tasks of sensors known to be offline do not time out unacknowledged.
        """
        ack_cutoff = now - timedelta(seconds=ack_timeout_s)
        unacked = select(T).where(UNACKED_SQL, T.c.sent_at <= ack_cutoff, _not_offline())
        overdue = select(T).where(RUNNING_SQL, T.c.deadline_at <= now)
        queries = [self._locked(query.limit(CLAIM_BATCH), skip_locked=True) for query in (unacked, overdue)]
        return await self._transact(self._expire, queries, Changes(now))

    def _expire(self, conn: Connection, queries: Sequence[Select[Any]], changes: Changes) -> Expiry:
        for query in queries:
            for work in self._load(conn, query, changes):
                changes.expire(work, self.policy)
        self._write_changes(conn, changes)
        return changes.expiry()
