"""A rollout's totals at a cost that does not grow with it: the counts kept on its row
(migration 0009) and its tasks that are not Completed."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from sensortasks.domain import TaskStatus
from sensortasks.domain.rollout import Totals
from sensortasks.store.base import R, T
from sensortasks.store.tables import ROLLOUT_TASK_SQL

_NOT_COMPLETED = [s for s in TaskStatus if s is not TaskStatus.COMPLETED]


async def totals_of(conn: AsyncConnection, ids: Sequence[int]) -> dict[int, Totals]:
    """Each rollout's totals, at a cost that does not grow with its targets or its Completed
    tasks: its two counts, and its other tasks by status (``ix_tasks_rollout_status``, a few
    rows while it goes well). Every target started has exactly one task (tasks are never
    deleted), so the Completed ones are the started ones that are not in another status."""
    if not ids:
        return {}
    counts: dict[int, dict[str, int]] = {}
    started: dict[int, int] = {}
    for rollout_id, targets, begun in await conn.execute(
        select(R.c.id, R.c.target_count, R.c.started_count).where(R.c.id.in_(ids))
    ):
        counts[rollout_id] = {"targets": targets, "not_started": targets - begun}
        started[rollout_id] = begun
    tasks = (
        select(T.c.rollout_id, T.c.status_id, func.count())
        .where(T.c.rollout_id.in_(ids), ROLLOUT_TASK_SQL, T.c.status_id.in_(_NOT_COMPLETED))
        .group_by(T.c.rollout_id, T.c.status_id)
    )
    for rollout_id, status, n in await conn.execute(tasks):
        counts[rollout_id][TaskStatus(status).name.lower()] = n
        started[rollout_id] -= n
    return {i: Totals(**c, completed=started[i]) for i, c in counts.items()}


def after_starts(totals: Totals, started: int, dropped: int) -> Totals:
    """The totals once a round started `started` targets' tasks (Pending) and dropped `dropped`
    targets: known without counting again."""
    return replace(
        totals,
        targets=totals.targets - dropped,
        not_started=totals.not_started - started - dropped,
        pending=totals.pending + started,
    )
