"""Plain values the store hands to the dispatcher and the API."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from sensortasks.domain import TaskStatus
from sensortasks.domain.rollout import RolloutState, Totals
from sensortasks.store.tables import Task

SEED_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


def utcnow() -> datetime:
    return datetime.now(UTC)


def format_time(value: datetime | None) -> str | None:
    """The seed's timestamp format, ``YYYY-MM-DD HH:MM:SS`` in UTC."""
    return None if value is None else value.astimezone(UTC).strftime(SEED_TIME_FORMAT)


@dataclass(frozen=True, slots=True)
class NewTask:
    sensor_serial: int
    type: str
    file_id: str
    max_attempts: int
    timeout_s: int
    #: The rollout that makes the task, if one does.
    rollout_id: int | None = None


@dataclass(frozen=True, slots=True)
class PastTask:
    """A task as it stands after some history, for `TaskStore.bulk_insert` (benchmarks, imports)."""

    task: NewTask
    customer_id: int | None
    status: TaskStatus
    attempt_count: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class TaskFilter:
    """The list filters of ``GET /v1/tasks`` (all optional, combined with AND)."""

    customer_id: int | None = None
    sensor_serial: int | None = None
    statuses: tuple[TaskStatus, ...] = ()
    type: str | None = None
    created_since: datetime | None = None
    created_until: datetime | None = None
    updated_since: datetime | None = None
    updated_until: datetime | None = None
    rollout_id: int | None = None


@dataclass(frozen=True, slots=True)
class Remembered:
    """A stored answer to an idempotent request."""

    request_hash: str
    status_code: int
    response: str


@dataclass(frozen=True, slots=True)
class Dispatch:
    """One task message to publish: a new attempt, or a re-delivery of the current one."""

    task_id: int
    sensor_serial: int
    type: str
    file_id: str
    attempt: int
    timeout_s: int
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Transition:
    """An applied transition, as published on ``ops/events/{serial}/{task_id}``."""

    task_id: int
    sensor_serial: int
    type: str
    source: TaskStatus | None
    target: TaskStatus
    attempt: int
    reason: str | None
    at: datetime
    #: The rollout that made the task, if one did.
    rollout_id: int | None = None

    @property
    def tells_sensor(self) -> bool:
        """A cancel of an attempt the sensor was sent: the outbox sends it a cancel message, and
        its next task waits for that (``ix_task_events_unpublished_cancels`` in SQL)."""
        return self.target is TaskStatus.CANCELLED and self.attempt > 0


def outbox_order(pending: Iterable[tuple[int, Transition]], limit: int) -> list[tuple[int, Transition]]:
    """What the outbox publishes next (`store.outbox` says it in SQL): up to `limit` changes of
    tasks whose creation is out, oldest first; then creations up to `limit` in all, newest
    first, so that a bulk of 50,000 does not hold back tasks created after it (it drains in
    what each round leaves); then the changes of those newly created tasks. A task's change
    never goes before its creation, and goes in the same round as it."""
    ordered = sorted(pending, key=lambda item: item[0])
    waiting = {t.task_id for _, t in ordered if t.source is None}
    changes = [(i, t) for i, t in ordered if t.source is not None and t.task_id not in waiting][:limit]
    creations = [(i, t) for i, t in reversed(ordered) if t.source is None][: limit - len(changes)]
    created = {t.task_id for _, t in creations}
    return changes + creations + [(i, t) for i, t in ordered if t.source is not None and t.task_id in created]


@dataclass(frozen=True, slots=True)
class IncomingReport:
    """A validated status report and the sensor (from the topic) that sent it."""

    serial: int
    task_id: int
    attempt: int
    status: str
    progress: int | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    retryable: bool = True


@dataclass(frozen=True, slots=True)
class Refusal:
    """A report refused before it reached a task (unknown task, wrong sensor)."""

    report: IncomingReport
    reason: str
    code: Literal["unknown_task", "wrong_sensor"] = "unknown_task"


@dataclass(frozen=True, slots=True)
class ReportBatchResult:
    transitions: list[Transition]
    refused: list[Refusal]
    ignored: int
    #: Sensors whose queue may move on (a task finished or will be retried).
    wake: set[int]
    #: Retries scheduled: (sensor serial, back off in seconds).
    retries: list[tuple[int, float]]
    #: The next attempts claimed for the sensors of `wake`, in the same transaction: the
    #: dispatcher sends these and need not wake those sensors again.
    dispatches: list[Dispatch] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Expiry:
    """What applying due timeouts did."""

    dispatches: list[Dispatch]
    transitions: list[Transition]
    wake: set[int]
    retries: list[tuple[int, float]]


@dataclass(frozen=True, slots=True)
class SensorInfo:
    serial: int
    online: bool | None
    last_seen: datetime | None
    in_flight: int | None
    queued: int
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class NewRollout:
    """A rollout as the customer asked for it; `rate`, `abort` and `schedule` are the JSON of
    SPEC section 10, validated by the API (`domain.rollout` reads them)."""

    name: str
    type: str
    file_id: str
    max_attempts: int
    timeout_s: int
    #: The serials the customer listed (None: none listed).
    sensors: tuple[int, ...] | None
    #: Labels a sensor must all carry to be a target (None: no selector).
    selector: dict[str, str] | None
    continuous: bool
    max_in_flight: int
    rate: dict[str, Any] | None
    abort: dict[str, Any] | None
    #: ``{"start_at": iso | None, "end_at": iso | None, "windows": [...]}``
    schedule: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class RolloutInfo:
    """A rollout as ``GET /v1/rollouts/{id}`` shows it, with its totals counted now."""

    id: int
    customer_id: int | None
    name: str
    type: str
    file_id: str
    max_attempts: int
    timeout_s: int
    sensors: list[int] | None
    #: As stored: ``{"labels": {...}}``.
    selector: dict[str, Any] | None
    continuous: bool
    max_in_flight: int
    rate: dict[str, Any] | None
    abort: dict[str, Any] | None
    schedule: dict[str, Any] | None
    state: RolloutState
    reason: str | None
    totals: Totals
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    #: The current rate (after increases); None when unpaced.
    rate_per_minute: float | None
    #: The earliest moment the pacing starts its next task (None: at once, or not paced).
    next_start_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class RolloutAdvance:
    """What a pacing round did: the tasks it created (their sensors are to be kicked) and
    every rollout it looked at or that changed since the last round, as they stand now."""

    started: list[Task]
    rollouts: list[RolloutInfo]
