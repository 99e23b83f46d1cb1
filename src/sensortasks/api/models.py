"""API models as a family: what customers send (`TaskCreate`) and what they get back.

Every field has a description and every model an example: /openapi.json is meant to generate
clients from. Timestamps are strings in the seed's format, not ``date-time`` (which would
promise RFC 3339's ``T`` and offset).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from sensortasks.api import examples
from sensortasks.domain import TaskStatus
from sensortasks.labels import KEY_RULE, LABELS_SCHEMA, MAX_LABELS, PATCH_SCHEMA, VALUE_RULE
from sensortasks.protocol.commands import (
    Serial,
    StatusId,
    StatusName,
    TaskCreate,
    TaskType,
    Timestamp,
    status_field,
    time_field,
)
from sensortasks.protocol.commands import Task as TaskWire
from sensortasks.store import SensorInfo, Task, TaskEvent, format_time
from sensortasks.store.accounts import ClientAccount
from sensortasks.store.sensors import ListedSensor

MAX_BULK = 10_000
_time = time_field
_status = status_field
#: Checked by the service (`sensortasks.labels`: errors name ``labels.<key>`` and the rule); the
#: schema says the same rules for clients.
Labels = Annotated[dict[str, str], WithJsonSchema(LABELS_SCHEMA)]
LabelsPatch = Annotated[dict[str, str | None], WithJsonSchema(PATCH_SCHEMA)]
LABELS_HELP = f"{KEY_RULE}; {VALUE_RULE}; at most {MAX_LABELS}"


class ErrorCode(StrEnum):
    """What went wrong, for programs (the `message` is for people). Every code the API answers:

    - `bad_request` (400): the body cannot be read (not UTF-8).
    - `unauthorized` (401): no API key, or one that is invalid or revoked.
    - `forbidden` (403): the key is valid but may not do this.
    - `not_found` (404): no such path, task or sensor, or one of another customer's.
    - `method_not_allowed` (405): the path exists, the method does not.
    - `conflict` (409): the request contradicts the state (cancel a Completed task, reuse an
      Idempotency-Key with another body, register another customer's sensor).
    - `not_configured` (409): the server is not set up for this (e.g. no broker admin to issue
      broker accounts with); retrying will not help.
    - `payload_too_large` (413): the body is over 4 MiB.
    - `invalid_input` (422): the request fails validation; `details` names the fields.
    - `too_many_requests` (429): too many failed authentications from this client; see `Retry-After`.
    - `internal_error` (500): a bug, logged on the server.
    - `unavailable` (503): the database or the broker is down; retry after `Retry-After`.
    - `invalid_configuration` (500): the server's settings are invalid.
    - `unknown_command`: only in replies on the MQTT command topics, for a verb other than
      create, cancel and get.
    - `error`: any other failure; the HTTP status tells which.
    """

    BAD_REQUEST = "bad_request"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    CONFLICT = "conflict"
    NOT_CONFIGURED = "not_configured"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    INVALID_INPUT = "invalid_input"
    TOO_MANY_REQUESTS = "too_many_requests"
    INTERNAL_ERROR = "internal_error"
    UNAVAILABLE = "unavailable"
    INVALID_CONFIGURATION = "invalid_configuration"
    UNKNOWN_COMMAND = "unknown_command"
    ERROR = "error"


class TasksBulkCreate(BaseModel):
    """Up to 10,000 tasks, created all or none."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [examples.BULK_CREATE]})

    tasks: Annotated[list[TaskCreate], Field(min_length=1, max_length=MAX_BULK)] = Field(
        description="The tasks to create, 1 to 10,000, each as in `POST /v1/tasks`."
    )


class TasksBulkCreated(BaseModel):
    """The ids of the tasks created, in the order of the request."""

    model_config = ConfigDict(json_schema_extra={"examples": [examples.BULK_CREATED]})

    ids: list[int] = Field(description="One id per task of the request, in its order.")


class TaskPublic(TaskWire):
    """A task in the seed's shape (field for field), followed by the extensions."""

    model_config = ConfigDict(json_schema_extra={"examples": [examples.TASK_COMPLETED, examples.TASK_PENDING]})

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
            rollout_id=task.rollout_id,
        )


class TasksPublic(BaseModel):
    """A page of tasks, newest first."""

    model_config = ConfigDict(json_schema_extra={"examples": [examples.TASK_LIST]})

    data: list[TaskPublic] = Field(description="The tasks of this page, newest (largest id) first.")
    has_more: bool = Field(description="True when more tasks match: ask again with `cursor=<next_cursor>`.")
    next_cursor: str | None = Field(
        description="Pass as `cursor` to get the next page; null on the last page. Opaque: do not build one."
    )


#: Columns of ``/v1/tasks/export.csv``, in the seed's order.
CSV_COLUMNS = (
    "id", "sensor_serial", "type", "status_id", "status_name", "attempt_count", "created_at", "updated_at",
    "file_id", "max_attempts", "timeout_s", "progress", "started_at", "completed_at", "error",
)  # fmt: skip


class ResultPublic(BaseModel):
    """What the sensor reported with the task's final status."""

    model_config = ConfigDict(json_schema_extra={"examples": [examples.RESULT]})

    task_id: int = Field(description="The task.")
    status_id: StatusId = _status("The task's status (2 Completed or 3 Error here)")
    status_name: StatusName = Field(description="The name of `status_id`.")
    completed_at: Timestamp | None = _time("When the task ended", "if it has no end time")
    result: dict[str, Any] | None = Field(
        description="The JSON object the sensor reported with `completed`; null if it sent none, or on Error."
    )
    error: str | None = Field(description="Why the task ended in Error; null when Completed.")

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
    """One entry of a task's history."""

    at: Timestamp = _time("When it happened")
    kind: str = Field(
        description="`transition` (a status change), `sent` (a new attempt went to the sensor), `redelivered` "
        "(the current attempt was sent again) or `ignored` (a report that was stale or not a legal transition).",
        json_schema_extra={"examples": ["transition"]},
    )
    from_status: StatusId | None = _status("The status before a transition; null at creation and for other kinds")
    from_status_name: StatusName | None = Field(description="The name of `from_status`; null with it.")
    to_status: StatusId | None = _status("The status after a transition; null for other kinds")
    to_status_name: StatusName | None = Field(description="The name of `to_status`; null with it.")
    attempt: int = Field(description="The task's attempt number when it happened (0 before the first send).")
    reason: str | None = Field(description="Why, in words (`created`, `retry: sensor error: ...`); null if none.")

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
    """A task's history, oldest first."""

    model_config = ConfigDict(json_schema_extra={"examples": [examples.EVENTS]})

    task_id: int = Field(description="The task.")
    data: list[EventPublic] = Field(description="Its transitions and attempts, oldest first.")


class SensorCreate(BaseModel):
    """A sensor to register to the caller."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [examples.SENSOR_CREATE]})

    serial: Serial
    labels: Labels | None = Field(
        default=None,
        description="Its labels, replacing those it has (absent: a sensor registered again keeps its own). "
        f"{LABELS_HELP}.",
        examples=[examples.LABELS],
    )


class SensorLabelsPatch(BaseModel):
    """A JSON Merge Patch of a sensor's labels: a key with a value sets it, a key with null removes it,
    keys not named stay."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [examples.LABELS_PATCH]})

    labels: LabelsPatch = Field(description=f"The labels to set (or, with null, to remove). {LABELS_HELP}.")


class MqttAccount(BaseModel):
    """Broker credentials: connect with this username, password and client identifier
    (the broker refuses the account under any other client id)."""

    username: str = Field(description="The MQTT username (`sensor-<serial>`).")
    password: str = Field(description="The MQTT password; shown only in this answer (the broker keeps a hash).")
    client_id: str = Field(description="The MQTT client identifier the account is bound to (equal to the username).")


class SensorRegistered(BaseModel):
    """A registered sensor and its broker credentials."""

    model_config = ConfigDict(json_schema_extra={"examples": [examples.SENSOR_REGISTERED]})

    serial: int = Field(description="The sensor's serial number.")
    mqtt: MqttAccount | None = Field(
        description="The sensor's broker credentials, shown only here (registering again rotates the password). "
        "Null when the server manages no broker accounts."
    )


class MqttClientCreate(BaseModel):
    """Nothing to choose: the account is the caller's, its name is random (``backend-<10 hex>``)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{}]})


class MqttClientPublic(BaseModel):
    """A backend's broker account for the command topics (``tasks/commands/+``): it may publish
    commands and read only its own ``reply_topic_prefix/#``, where the replies to it go."""

    model_config = ConfigDict(json_schema_extra={"examples": [examples.MQTT_CLIENT]})

    username: str = Field(description="The MQTT username (`backend-<10 hex>`).")
    client_id: str = Field(description="The MQTT client identifier the account is bound to (equal to the username).")
    reply_topic_prefix: str | None = Field(
        description="Command replies go only to response topics under `<prefix>/`; the account reads `<prefix>/#`."
    )
    created_at: Timestamp = _time("When it was issued")

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

    model_config = ConfigDict(json_schema_extra={"examples": [examples.MQTT_CLIENT_CREATED]})

    password: str = Field(description="The MQTT password; shown only in this answer.")


class MqttClientsPublic(BaseModel):
    """The caller's backend accounts, oldest first (no passwords)."""

    model_config = ConfigDict(json_schema_extra={"examples": [examples.MQTT_CLIENTS]})

    data: list[MqttClientPublic] = Field(description="The accounts.")


class SensorPublic(BaseModel):
    """What the dispatcher knows of a sensor."""

    model_config = ConfigDict(json_schema_extra={"examples": [examples.SENSOR]})

    serial: int = Field(description="The sensor's serial number.")
    online: bool | None = Field(description="Its last presence message; null if it never sent one.")
    last_seen: Timestamp | None = _time("When a message from it last arrived", "if none ever did")
    task_in_flight: int | None = Field(description="The id of the task sent to it and not yet ended; null if none.")
    queued: int = Field(description="How many of its tasks are Pending and waiting for their turn.")
    labels: dict[str, str] = Field(description="Its labels (`{}` if none).")

    @classmethod
    def of(cls, info: SensorInfo) -> SensorPublic:
        return cls(
            serial=info.serial,
            online=info.online,
            last_seen=format_time(info.last_seen),
            task_in_flight=info.in_flight,
            queued=info.queued,
            labels=info.labels,
        )


class SensorListed(BaseModel):
    """A registered sensor in a list: its labels and presence (its queue: `GET /v1/sensors/{serial}`)."""

    serial: int = Field(description="The sensor's serial number.")
    labels: dict[str, str] = Field(description="Its labels (`{}` if none).")
    online: bool | None = Field(description="Its last presence message; null if it never sent one.")
    last_seen: Timestamp | None = _time("When a message from it last arrived", "if none ever did")
    registered_at: Timestamp = _time("When it was registered to you")

    @classmethod
    def of(cls, sensor: ListedSensor) -> SensorListed:
        return cls(
            serial=sensor.serial,
            labels=sensor.labels,
            online=sensor.online,
            last_seen=format_time(sensor.last_seen),
            registered_at=format_time(sensor.registered_at) or "",
        )


class SensorsPublic(BaseModel):
    """A page of sensors, by serial ascending."""

    model_config = ConfigDict(json_schema_extra={"examples": [examples.SENSOR_LIST]})

    data: list[SensorListed] = Field(description="The sensors of this page, smallest serial first.")
    has_more: bool = Field(description="True when more sensors match: ask again with `cursor=<next_cursor>`.")
    next_cursor: str | None = Field(
        description="Pass as `cursor` to get the next page; null on the last page. Opaque: do not build one."
    )


class HealthPublic(BaseModel):
    """``/healthz``: the same body with 200 (healthy) and 503 (not)."""

    model_config = ConfigDict(json_schema_extra={"examples": [examples.HEALTH_OK, examples.HEALTH_DOWN]})

    status: Literal["ok", "unavailable"] = Field(description="`ok` (with 200) or `unavailable` (with 503).")
    database: Literal["up", "down"] = Field(description="Whether the database answers.")
    broker: Literal["up", "down", "n/a"] = Field(
        description="The dispatcher's broker connection; `n/a` when this process runs no dispatcher."
    )


class ErrorBody(BaseModel):
    """What went wrong."""

    code: ErrorCode = Field(description="What went wrong, for programs: one of `ErrorCode`.")
    message: str = Field(description="What went wrong, for people: names the field or the object.")
    details: Any = Field(
        default=None,
        description="For `invalid_input` from request validation: a list of `{field, rule, message}`, "
        "`field` a dotted path (`tasks.3.sensor_serial`, `body` for JSON that does not parse). "
        'Otherwise an object with the facts (e.g. `{"status_name": "Completed"}`), or null.',
    )


class ErrorResponse(BaseModel):
    """Every error of the API."""

    model_config = ConfigDict(json_schema_extra={"examples": [examples.ERRORS[404], examples.ERRORS[422]]})

    error: ErrorBody = Field(description="The error.")
