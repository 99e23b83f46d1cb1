"""Persistence: `TaskStore` on SQLite by default, PostgreSQL at scale; the dispatcher sees only `DispatchStore`."""

from sensortasks.store.engine import Database, open_database, upgrade
from sensortasks.store.interface import CLAIM_BATCH, DispatchStore
from sensortasks.store.records import (
    Dispatch,
    Expiry,
    IncomingReport,
    NewTask,
    Refusal,
    Remembered,
    ReportBatchResult,
    SensorInfo,
    TaskFilter,
    Transition,
    format_time,
    utcnow,
)
from sensortasks.store.repository import StaleBatch, TaskStore
from sensortasks.store.tables import MqttClient, Sensor, Task, TaskEvent

__all__ = [
    "CLAIM_BATCH",
    "Database",
    "Dispatch",
    "DispatchStore",
    "Expiry",
    "IncomingReport",
    "MqttClient",
    "NewTask",
    "Refusal",
    "Remembered",
    "ReportBatchResult",
    "Sensor",
    "SensorInfo",
    "StaleBatch",
    "Task",
    "TaskEvent",
    "TaskFilter",
    "TaskStore",
    "Transition",
    "format_time",
    "open_database",
    "upgrade",
    "utcnow",
]
