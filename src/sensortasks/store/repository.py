"""`TaskStore`, composed of the per-concern mixins (why mixins: see the package docstring)."""

from __future__ import annotations

from sensortasks.store.base import StaleBatch
from sensortasks.store.dispatch import DispatchQueries
from sensortasks.store.idempotency import IdempotencyQueries
from sensortasks.store.outbox import Outbox
from sensortasks.store.sensors import SensorQueries
from sensortasks.store.tasks import TaskQueries

__all__ = ["StaleBatch", "TaskStore"]


class TaskStore(TaskQueries, SensorQueries, DispatchQueries, Outbox, IdempotencyQueries):
    """The persistence interface the dispatcher and the API talk to."""
