"""API models as a family: what customers send (`TaskCreate`) and what they get back."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from sensortasks.domain import TaskStatus, TaskType
from sensortasks.store import SensorInfo, Task, TaskEvent, format_time
from sensortasks.store.accounts import ClientAccount

MAX_SERIAL = 2**63 - 1
Serial = Annotated[int, Field(gt=0, le=MAX_SERIAL, strict=True, examples=[12345678909789])]

SEED_EXAMPLE: dict[str, Any] = {
    "id": 16624171,
    "sensor_serial": 12345678909789,
    "type": "update_configuration",
    "status_id": 2,
    "status_name": "Completed",
    "attempt_count": 3,
    "created_at": "2022-10-17 16:00:07",
    "updated_at": "2022-10-17 16:49:39",
    "file_id": "a3e4aed2-b091-41a6-8265-2185040e2c32",
    "max_attempts": 3,
    "timeout_s": 3600,
    "progress": 100,
    "started_at": "2022-10-17 16:40:01",
    "completed_at": "2022-10-17 16:49:39",
    "error": None,
}


class TaskCreate(BaseModel):
    """Seed 000's create body, plus optional per-task retry settings."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "sensor_serial": 234545767890987,
                    "file_id": "a3e4aed2-b091-41a6-8265-2185040e2c32",
                    "type": "update_configuration",
                }
            ]
        },
    )

    sensor_serial: Serial
    file_id: UUID
    type: TaskType
    max_attempts: Annotated[int, Field(ge=1, le=10, strict=True)] | None = None
    timeout_s: Annotated[int, Field(ge=10, le=86400, strict=True)] | None = None


MAX_BULK = 10_000


class TasksBulkCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tasks: Annotated[list[TaskCreate], Field(min_length=1, max_length=MAX_BULK)]


class TasksBulkCreated(BaseModel):
    ids: list[int]


class TaskPublic(BaseModel):
    """A task in the seed's shape (field for field), followed by the extensions."""

    model_config = ConfigDict(json_schema_extra={"examples": [SEED_EXAMPLE]})

    id: int
    sensor_serial: int
    type: TaskType
    status_id: int
    status_name: str
    attempt_count: int
    created_at: str
    updated_at: str
    file_id: str
    max_attempts: int
    timeout_s: int
    progress: int | None
    started_at: str | None
    completed_at: str | None
    error: str | None

    @classmethod
    def of(cls, task: Task) -> TaskPublic:
        assert task.id is not None  # noqa: S101
        return cls(
            id=task.id,
            sensor_serial=task.sensor_serial,
            type=TaskType(task.type),
            status_id=task.status_id,
            status_name=TaskStatus(task.status_id).label,
            attempt_count=task.attempt_count,
            created_at=format_time(task.created_at) or "",
            updated_at=format_time(task.updated_at) or "",
            file_id=task.file_id,
            max_attempts=task.max_attempts,
            timeout_s=task.timeout_s,
            progress=task.progress,
            started_at=format_time(task.started_at),
            completed_at=format_time(task.completed_at),
            error=task.error,
        )


class TasksPublic(BaseModel):
    data: list[TaskPublic]
    has_more: bool
    next_cursor: str | None


#: Columns of ``/v1/tasks/export.csv``, in the seed's order.
CSV_COLUMNS = (
    "id", "sensor_serial", "type", "status_id", "status_name", "attempt_count", "created_at", "updated_at",
    "file_id", "max_attempts", "timeout_s", "progress", "started_at", "completed_at", "error",
)  # fmt: skip


class ResultPublic(BaseModel):
    task_id: int
    status_id: int
    status_name: str
    completed_at: str | None
    #: What the sensor reported with "completed" (any JSON object), or null.
    result: dict[str, Any] | None
    error: str | None

    @classmethod
    def of(cls, task: Task) -> ResultPublic:
        assert task.id is not None  # noqa: S101
        return cls(
            task_id=task.id,
            status_id=task.status_id,
            status_name=TaskStatus(task.status_id).label,
            completed_at=format_time(task.completed_at),
            result=task.result,
            error=task.error,
        )


class EventPublic(BaseModel):
    at: str
    kind: str
    from_status: int | None
    from_status_name: str | None
    to_status: int | None
    to_status_name: str | None
    attempt: int
    reason: str | None

    @classmethod
    def of(cls, event: TaskEvent) -> EventPublic:
        def name(status: int | None) -> str | None:
            return None if status is None else TaskStatus(status).label

        return cls(
            at=format_time(event.at) or "",
            kind=event.kind,
            from_status=event.from_status,
            from_status_name=name(event.from_status),
            to_status=event.to_status,
            to_status_name=name(event.to_status),
            attempt=event.attempt,
            reason=event.reason,
        )


class EventsPublic(BaseModel):
    task_id: int
    data: list[EventPublic]


class SensorCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"serial": 12345678909789}]})

    serial: Serial


class MqttAccount(BaseModel):
    """Broker credentials: connect with this username, password and client identifier
    (the broker refuses the account under any other client id)."""

    username: str
    password: str
    client_id: str


class SensorRegistered(BaseModel):
    serial: int
    #: The sensor's broker credentials, shown once (null when no broker admin is configured).
    mqtt: MqttAccount | None


class MqttClientCreate(BaseModel):
    """Nothing to choose: the account is the caller's, its name is random (``backend-<10 hex>``)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{}]})


class MqttClientPublic(BaseModel):
    """A backend's broker account for the command topics (``tasks/commands/+``): it may publish
    commands and read only its own ``reply_topic_prefix/#``, where the replies to it go."""

    username: str
    client_id: str
    reply_topic_prefix: str | None
    created_at: str

    @classmethod
    def of(cls, account: ClientAccount) -> MqttClientPublic:
        return cls(
            username=account.username,
            client_id=account.client_id,
            reply_topic_prefix=account.reply_topic_prefix,
            created_at=format_time(account.created_at) or "",
        )


class MqttClientCreated(MqttClientPublic):
    """The new account with its password, shown only here (the broker keeps a hash)."""

    password: str


class MqttClientsPublic(BaseModel):
    data: list[MqttClientPublic]


class SensorPublic(BaseModel):
    serial: int
    online: bool | None
    last_seen: str | None
    task_in_flight: int | None
    queued: int

    @classmethod
    def of(cls, info: SensorInfo) -> SensorPublic:
        return cls(
            serial=info.serial,
            online=info.online,
            last_seen=format_time(info.last_seen),
            task_in_flight=info.in_flight,
            queued=info.queued,
        )


class ErrorBody(BaseModel):
    code: str
    message: str
    details: Any = None


class ErrorResponse(BaseModel):
    error: ErrorBody
