"""The outbox of ``ops/events``: transition events are written unpublished in the
transaction that applies them, and marked published here once they are out.

The dispatcher publishes this process's events from the commit feed (`StoreBase.watch_commits`,
`dispatcher.outbox`) and reads them here only for what the feed cannot know: what a crash
left, what another instance or process wrote, what it dropped while it did not lead or was
disconnected, a round that failed. Reads and the feed keep the same order.

It has two lanes (`outbox_order`): changes of tasks under way first, oldest first, then
creations, newest first. A bulk of 50,000 new tasks then holds back neither the changes of
other tasks nor the creations that came after it, and drains in what each round leaves. A
task's change waits for its own creation, so each task's events still go out in the order
they were committed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, exists, select, text, update

from sensortasks.store.base import E, StoreBase, T, chunks
from sensortasks.store.changes import transition_of
from sensortasks.store.interface import CLAIM_BATCH
from sensortasks.store.records import Transition
from sensortasks.store.tables import UNPUBLISHED_CHANGE_SQL, UNPUBLISHED_CREATION_SQL


def _lane(where: Any, limit: int, *, newest_first: bool = False) -> Any:  # noqa: ANN401
    order = E.c.id.desc() if newest_first else E.c.id
    return (
        select(E, T.c.sensor_serial, T.c.type, T.c.rollout_id)
        .join(T, T.c.id == E.c.task_id)
        .where(where)
        .order_by(order)
        .limit(limit)
    )


class Outbox(StoreBase):
    async def unpublished(self, *, limit: int = CLAIM_BATCH) -> list[tuple[int, Transition]]:
        """Transitions not yet published on ``ops/events``, in `outbox_order`, with their event ids."""
        creation = E.alias("creation")
        # UNPUBLISHED_CREATION_SQL of the alias, so that ix_task_events_unpublished_creations serves it.
        unpublished_creation = text("creation.published = false AND creation.from_status IS NULL")
        created_first = exists(
            select(1).select_from(creation).where(creation.c.task_id == E.c.task_id, unpublished_creation)
        )
        changes = _lane(UNPUBLISHED_CHANGE_SQL, limit).where(~created_first)
        async with self._read() as conn:
            rows = list((await conn.execute(changes)).all())
            if len(rows) < limit:
                creations = _lane(UNPUBLISHED_CREATION_SQL, limit - len(rows), newest_first=True)
                created = list((await conn.execute(creations)).all())
                rows += created
                if created:  # their changes held back above go right after them
                    of_created = E.c.task_id.in_([r.task_id for r in created])
                    rows += (await conn.execute(_lane(UNPUBLISHED_CHANGE_SQL, limit).where(of_created))).all()
        return [(r.id, transition_of(r._mapping, r.sensor_serial, r.type, r.rollout_id)) for r in rows]

    async def mark_published(self, event_ids: Sequence[int]) -> None:
        await self._transact(_mark_published, sorted(event_ids))


def _mark_published(conn: Connection, event_ids: Sequence[int]) -> None:
    for group in chunks(event_ids):
        conn.execute(update(E).where(E.c.id.in_(group)).values(published=True))
