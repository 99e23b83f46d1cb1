"""Pydantic models of every protocol v1 payload.

Every message carries ``"v": 1``; unknown extra fields are ignored so that newer peers
can add fields without breaking older ones. Received payloads are parsed with
``Model.from_wire`` (or `parse_sensor_command`), which requires ``"v"`` to be present;
our own code builds messages without spelling it (the default is 1). Sizes are bounded
before parsing (`MAX_PAYLOAD_BYTES`); booleans are strict (``"yes"`` and ``1`` are not
``true``).
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal, Self, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
    computed_field,
)
from pydantic_core import InitErrorDetails

from sensortasks.protocol.topics import MAX_ID

PROTOCOL_VERSION = 1
#: Largest payload the dispatcher parses on any topic; larger ones are rejected unread.
MAX_PAYLOAD_BYTES = 16 * 1024
MAX_ERROR_CHARS = 1000

TaskTypeName = Literal["update_firmware", "update_configuration"]
StatusName = Literal["ongoing", "completed", "error"]
#: A task's status as events name it (the REST `status_name`), in id order 1-5.
TaskStatusName = Literal["Pending", "Completed", "Error", "Ongoing", "Cancelled"]
#: A task's run timeout on the wire: positive and at most a day. (The REST API's floor is
#: 10 s, a product rule; the store and the tests use shorter ones, which sensors must take.)
MIN_TIMEOUT_S = 1
MAX_TIMEOUT_S = 86400

#: Why the dispatcher refused a message (the ``code`` of a `Rejection`, and the ``reason``
#: label of ``sensortasks_rejected_total``). Readers must accept codes they do not know.
RejectCode = Literal[
    "oversized",  #: payload over MAX_PAYLOAD_BYTES, not parsed
    "malformed",  #: not valid JSON, or not the topic's model
    "wrong_topic",  #: a topic the dispatcher does not read
    "unknown_task",  #: a status for a task that does not exist
    "wrong_sensor",  #: a status for another sensor's task
    "retained_status",  #: a status published retained (cleared by the dispatcher)
    "bad_property",  #: MQTT 5 properties out of bounds (protocol.properties)
    "unknown_command",  #: tasks/commands/<verb> with a verb that does not exist
    "invalid_command",  #: a well-formed command the service refused as invalid
    "unauthorized",  #: a command without a valid API key
    "response_topic_refused",  #: no response topic, or one the caller may not be answered on
    "rate_limited",  #: too many failed authentications for that reply account
    "unavailable",  #: a command that could not be checked (database down), unanswered
    "internal_error",  #: handling the message raised: a bug, refused so it cannot come back
]
REJECT_CODES: tuple[RejectCode, ...] = get_args(RejectCode)

TaskId = Annotated[int, Field(gt=0, le=MAX_ID, strict=True)]
Attempt = Annotated[int, Field(ge=1, le=1000, strict=True)]
StrictBool = Annotated[bool, Field(strict=True)]


def _canonical_uuid(value: str) -> str:
    return str(uuid.UUID(value))


#: A file id is a UUID (kept as its canonical text, as the API stores it).
FileId = Annotated[str, AfterValidator(_canonical_uuid), WithJsonSchema({"type": "string", "format": "uuid"})]


def _require_version(message: BaseModel, payload: bytes | str) -> None:
    """A received message must say its version: a default is for our own code only."""
    if "v" not in message.model_fields_set:
        detail = InitErrorDetails(type="missing", loc=("v",), input=payload)
        raise ValidationError.from_exception_data(type(message).__name__, [detail])


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    #: Strict: `true` and `1.0` are not protocol version 1.
    v: Annotated[int, Field(ge=1, le=1, strict=True)] = PROTOCOL_VERSION

    @classmethod
    def from_wire(cls, payload: bytes | str) -> Self:
        """Parse a received payload (raises pydantic.ValidationError); ``"v"`` is required."""
        message = cls.model_validate_json(payload)
        _require_version(message, payload)
        return message

    def to_json(self) -> bytes:
        return self.model_dump_json().encode()


class TaskMessage(_Message):
    """Dispatcher -> sensor: perform this task (attempt `attempt`)."""

    kind: Literal["task"] = "task"
    task_id: TaskId
    type: TaskTypeName
    file_id: FileId
    attempt: Attempt
    timeout_s: Annotated[int, Field(ge=MIN_TIMEOUT_S, le=MAX_TIMEOUT_S, strict=True)]


class CancelMessage(_Message):
    """Dispatcher -> sensor: stop working on this task."""

    kind: Literal["cancel"] = "cancel"
    task_id: TaskId


SensorCommand = Annotated[TaskMessage | CancelMessage, Field(discriminator="kind")]
_SENSOR_COMMAND: TypeAdapter[TaskMessage | CancelMessage] = TypeAdapter(SensorCommand)


def parse_sensor_command(payload: bytes | str) -> TaskMessage | CancelMessage:
    """Parse what a sensor receives on its task topic (raises pydantic.ValidationError)."""
    command = _SENSOR_COMMAND.validate_json(payload)
    _require_version(command, payload)
    return command


def _no_nul(value: str) -> str:
    # PostgreSQL text cannot hold NUL: such a report could never be stored.
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


class StatusReport(_Message):
    """Sensor -> dispatcher: what happened to attempt `attempt` of a task."""

    task_id: TaskId
    attempt: Attempt
    status: StatusName
    progress: Annotated[int, Field(ge=0, le=100, strict=True)] | None = None
    result: dict[str, Any] | None = None
    error: Annotated[str, Field(max_length=MAX_ERROR_CHARS), AfterValidator(_no_nul)] | None = None
    retryable: StrictBool = True


class Presence(_Message):
    """Sensor presence, retained; the `online: false` copy is the sensor's last will."""

    online: StrictBool


class DispatcherPresence(_Message):
    """Retained on `ops/dispatchers/{instance}`; the offline copy is the dispatcher's last will."""

    instance: str
    online: bool

    @computed_field  # type: ignore[prop-decorator]
    @property
    def status(self) -> Literal["online", "offline"]:
        return "online" if self.online else "offline"


class OpsEvent(_Message):
    """One applied transition, published on `ops/events/{serial}/{task_id}`."""

    task_id: int
    sensor_serial: int
    type: str
    from_: TaskStatusName | None = Field(alias="from", serialization_alias="from")
    to: TaskStatusName
    attempt: int
    reason: str | None
    at: str
    #: The rollout that made the task (optional: null for other tasks and from older dispatchers).
    rollout_id: int | None = None

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    def to_json(self) -> bytes:
        return self.model_dump_json(by_alias=True).encode()


class OpsStats(_Message):
    """Retained on `ops/stats` every few seconds by the leading dispatcher instance, for all
    of them: rates and rejections are the sums over the live instances, so the copy does not
    flip between instances.

    Live copies expire (MQTT 5 Message Expiry Interval, a few `interval_s`), so the copy of a
    group that crashed vanishes; the last instance to stop cleanly leaves a last copy with
    `online` false.
    """

    #: The instance that published this copy (the leader).
    instance: str
    at: str
    #: Tasks per status name (Pending, Completed, Error, Ongoing, Cancelled).
    tasks: dict[str, int]
    dispatch_rate: float
    complete_rate: float
    sensors_online: int
    rejected: int
    #: False on the last copy an instance publishes when it stops (optional: older
    #: publishers omit it, and were live when they published).
    online: bool = True
    #: Seconds between two copies from this instance (optional).
    interval_s: float | None = None
    #: The live dispatcher instances the sums are over (optional: older publishers were alone).
    instances: list[str] | None = None


class RolloutProgress(_Message):
    """Retained on `ops/rollouts/{id}` by the leading dispatcher instance whenever the rollout's
    state or totals change (totals at most once a second per rollout; a state change at once)."""

    rollout_id: int
    name: str
    #: scheduled, running, paused, completed, aborted or cancelled.
    state: str
    #: targets, not_started, pending, ongoing, completed, error, cancelled.
    totals: dict[str, int]
    #: Starts per minute now (after increases); None when unpaced.
    rate_per_minute: float | None
    #: Why it aborted or was cancelled.
    reason: str | None
    at: str


class Rejection(_Message):
    """A refused message, published on `ops/rejected` with a truncated copy."""

    topic: str
    reason: str
    payload: str
    at: str
    #: One of `REJECT_CODES` (optional: older dispatchers did not send it).
    code: str | None = None
