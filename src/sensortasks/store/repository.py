"""`TaskStore`, composed of the per-concern mixins (why mixins: see the package docstring)."""

from __future__ import annotations

from sensortasks.store.base import StaleBatch
from sensortasks.store.dispatch import DispatchQueries
from sensortasks.store.glance import GlanceQueries
from sensortasks.store.idempotency import IdempotencyQueries
from sensortasks.store.members import MemberQueries
from sensortasks.store.notify import OnWake, listen
from sensortasks.store.outbox import Outbox
from sensortasks.store.rollouts import RolloutQueries
from sensortasks.store.sensors import SensorQueries
from sensortasks.store.tasks import TaskQueries

__all__ = ["StaleBatch", "TaskStore"]


class TaskStore(
    TaskQueries,
    SensorQueries,
    DispatchQueries,
    Outbox,
    IdempotencyQueries,
    MemberQueries,
    RolloutQueries,
    GlanceQueries,
):
    """The persistence interface the dispatcher and the API talk to."""

    async def listen(self, on_wake: OnWake) -> None:
        """Other instances' wake-ups, until cancelled (`store.notify`; never on SQLite)."""
        await listen(self.db.url, on_wake)
