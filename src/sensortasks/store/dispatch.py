"""What the dispatcher does to tasks: claim each sensor's next attempt, re-deliver the
ones in flight, apply status reports and expire what timed out.

Each runs the pure domain on rows loaded (and locked) in one transaction and writes the
outcome with `write_changes`; batches are bounded by `CLAIM_BATCH`, so a full batch
means "ask again".
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import exists, func, or_, select, update

from sensortasks.domain import TaskStatus
from sensortasks.store.base import ACTIVE, E, S, StoreBase, T, chunks
from sensortasks.store.changes import Changes
from sensortasks.store.interface import CLAIM_BATCH
from sensortasks.store.records import Dispatch, Expiry, IncomingReport, ReportBatchResult


def _not_offline() -> Any:  # noqa: ANN401
    return T.c.sensor_serial.not_in(select(S.c.serial).where(S.c.online.is_(False)))


def _no_cancel_untold() -> Any:  # noqa: ANN401
    """No cancel of the sensor's waits in the outbox: it must reach the sensor before the next
    task does (whichever instance, or sweep, claims that one). Served by the partial index
    ``ix_task_events_unpublished_cancels``."""
    cancelled = T.alias("cancelled")
    untold = (
        select(1)
        .select_from(E.join(cancelled, cancelled.c.id == E.c.task_id))
        .where(
            E.c.published.is_(False),
            E.c.to_status == TaskStatus.CANCELLED,
            E.c.attempt > 0,
            cancelled.c.sensor_serial == T.c.sensor_serial,
        )
    )
    return ~exists(untold)


class DispatchQueries(StoreBase):
    async def claim_next(self, serials: Sequence[int] | None, *, now: datetime) -> list[Dispatch]:
        """Start the next attempt of each given sensor's head task, where one is due.

        A sensor's head is its oldest Pending or Ongoing task; it is claimed when it is
        Pending, not yet sent for its current attempt, past any back off, and the sensor
        is not known to be offline. ``serials=None`` looks at every sensor.
        """
        dispatches: list[Dispatch] = []
        groups = [None] if serials is None else list(chunks(serials))
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
                    _not_offline(),
                    _no_cancel_untold(),
                )
                .order_by(T.c.id)
                .limit(CLAIM_BATCH)
            )
            changes = Changes(now)
            async with self._write() as conn:
                for work in await self._load(conn, self._locked(query, skip_locked=True), changes):
                    changes.claim(work)
                await self._write_changes(conn, changes)
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
        groups = [None] if serials is None else list(chunks(serials))
        for group in groups:
            after = 0
            while True:
                query = select(T).where(in_flight, _not_offline(), T.c.id > after)
                if group is not None:
                    query = query.where(T.c.sensor_serial.in_(group))
                query = query.order_by(T.c.id).limit(CLAIM_BATCH)
                changes = Changes(now)
                async with self._write() as conn:
                    works = await self._load(conn, self._locked(query, skip_locked=True), changes)
                    for work in works:
                        changes.redeliver(work, reason)
                    await self._write_changes(conn, changes)
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
            for group in chunks(ids):
                await self._load(conn, self._locked(select(T).where(T.c.id.in_(group))), changes)
            refused = [r for r in (changes.report(report, self.policy) for report in reports) if r is not None]
            await self._write_changes(conn, changes)
            # A status proves its sensor is connected: refresh what /v1/sensors shows.
            for group in chunks(sorted({r.serial for r in reports})):
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
            _not_offline(),
        )
        overdue = select(T).where(T.c.status_id == TaskStatus.ONGOING, T.c.deadline_at <= now)
        changes = Changes(now)
        async with self._write() as conn:
            for query in (unacked, overdue):
                for work in await self._load(conn, self._locked(query.limit(CLAIM_BATCH), skip_locked=True), changes):
                    changes.expire(work, self.policy)
            await self._write_changes(conn, changes)
        return changes.expiry()
