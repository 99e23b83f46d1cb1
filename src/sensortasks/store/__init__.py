"""Persistence: `TaskStore` on SQLite by default, PostgreSQL at scale; the dispatcher sees only `DispatchStore`.

`TaskStore` (repository.py) is one class composed of one mixin per concern over the shared
plumbing of base.py (engines, the SQLite writer queue, row locks, chunked IN lists, the
guarded write of a transaction's `Changes`): tasks.py (customers' tasks), sensors.py
(registration, presence), dispatch.py (claim, re-deliver, reports, timeouts), rollouts.py
(campaigns and their pacing round), idempotency.py and outbox.py. Mixins rather than
delegation: every part needs the same connections and lock and none holds state of its own,
so delegation would only add a forwarding method per operation; the seam that matters, the dispatcher's, is the
`DispatchStore` protocol. The store raises domain errors that carry data (an unregistered
sensor is an `InvalidInput` with ``details["unregistered_serials"]``); wording them for
HTTP or MQTT is the service's job. Customers and keys (keys.py) and broker accounts
(accounts.py) are stores of their own.
"""

from sensortasks.store.engine import Database, open_database, upgrade
from sensortasks.store.interface import CLAIM_BATCH, DispatchStore
from sensortasks.store.records import (
    Dispatch,
    Expiry,
    IncomingReport,
    NewRollout,
    NewTask,
    PastTask,
    Refusal,
    Remembered,
    ReportBatchResult,
    RolloutAdvance,
    RolloutInfo,
    SensorInfo,
    TaskFilter,
    Transition,
    format_time,
    utcnow,
)
from sensortasks.store.repository import StaleBatch, TaskStore
from sensortasks.store.rollouts import join_continuous
from sensortasks.store.tables import MqttClient, Sensor, Task, TaskEvent
from sensortasks.store.tasks import Created

__all__ = [
    "CLAIM_BATCH",
    "Created",
    "Database",
    "Dispatch",
    "DispatchStore",
    "Expiry",
    "IncomingReport",
    "MqttClient",
    "NewRollout",
    "NewTask",
    "PastTask",
    "Refusal",
    "Remembered",
    "ReportBatchResult",
    "RolloutAdvance",
    "RolloutInfo",
    "Sensor",
    "SensorInfo",
    "StaleBatch",
    "Task",
    "TaskEvent",
    "TaskFilter",
    "TaskStore",
    "Transition",
    "format_time",
    "join_continuous",
    "open_database",
    "upgrade",
    "utcnow",
]
