"""The outbox of ``ops/events``: transition events are written unpublished in the
transaction that applies them; the dispatcher reads them here and marks them published."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select, update

from sensortasks.store.base import E, StoreBase, T, chunks
from sensortasks.store.changes import transition_of
from sensortasks.store.interface import CLAIM_BATCH
from sensortasks.store.records import Transition
from sensortasks.store.tables import UNPUBLISHED_SQL


class Outbox(StoreBase):
    async def unpublished(self, *, limit: int = CLAIM_BATCH) -> list[tuple[int, Transition]]:
        """Transitions not yet published on ``ops/events``, oldest first, with their event ids."""
        query = (
            select(E, T.c.sensor_serial, T.c.type)
            .join(T, T.c.id == E.c.task_id)
            .where(UNPUBLISHED_SQL)  # served by ix_task_events_unpublished
            .order_by(E.c.id)
            .limit(limit)
        )
        async with self._read() as conn:
            rows = (await conn.execute(query)).all()
        return [(r.id, transition_of(r._mapping, r.sensor_serial, r.type)) for r in rows]

    async def mark_published(self, event_ids: Sequence[int]) -> None:
        async with self._write() as conn:
            for group in chunks(sorted(event_ids)):
                await conn.execute(update(E).where(E.c.id.in_(group)).values(published=True))
