"""Pydantic models of every protocol v1 payload.

Every message carries ``"v": 1``; unknown extra fields are ignored so that newer peers
can add fields without breaking older ones. Payloads are validated at the edge with
``Model.model_validate_json``; sizes are bounded before parsing (`MAX_PAYLOAD_BYTES`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, computed_field

PROTOCOL_VERSION = 1
#: Largest payload the dispatcher parses on any topic; larger ones are rejected unread.
MAX_PAYLOAD_BYTES = 16 * 1024
MAX_TASK_ID = 2**63 - 1
MAX_ERROR_CHARS = 1000

TaskTypeName = Literal["update_firmware", "update_configuration"]
StatusName = Literal["ongoing", "completed", "error"]
TaskId = Annotated[int, Field(gt=0, le=MAX_TASK_ID, strict=True)]
Attempt = Annotated[int, Field(ge=1, le=1000, strict=True)]


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    #: Strict: `true` and `1.0` are not protocol version 1.
    v: Annotated[int, Field(ge=1, le=1, strict=True)] = PROTOCOL_VERSION

    def to_json(self) -> bytes:
        return self.model_dump_json().encode()


class TaskMessage(_Message):
    """Dispatcher -> sensor: perform this task (attempt `attempt`)."""

    kind: Literal["task"] = "task"
    task_id: TaskId
    type: TaskTypeName
    file_id: str
    attempt: Attempt
    timeout_s: int


class CancelMessage(_Message):
    """Dispatcher -> sensor: stop working on this task."""

    kind: Literal["cancel"] = "cancel"
    task_id: TaskId


SensorCommand = Annotated[TaskMessage | CancelMessage, Field(discriminator="kind")]
_SENSOR_COMMAND: TypeAdapter[TaskMessage | CancelMessage] = TypeAdapter(SensorCommand)


def parse_sensor_command(payload: bytes | str) -> TaskMessage | CancelMessage:
    """Parse what a sensor receives on its task topic (raises pydantic.ValidationError)."""
    return _SENSOR_COMMAND.validate_json(payload)


class StatusReport(_Message):
    """Sensor -> dispatcher: what happened to attempt `attempt` of a task."""

    task_id: TaskId
    attempt: Attempt
    status: StatusName
    progress: Annotated[int, Field(ge=0, le=100, strict=True)] | None = None
    result: dict[str, Any] | None = None
    error: Annotated[str, Field(max_length=MAX_ERROR_CHARS)] | None = None
    retryable: bool = True


class Presence(_Message):
    """Sensor presence, retained; the `online: false` copy is the sensor's last will."""

    online: bool


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
    from_: str | None = Field(alias="from", serialization_alias="from")
    to: str
    attempt: int
    reason: str | None
    at: str

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    def to_json(self) -> bytes:
        return self.model_dump_json(by_alias=True).encode()


class OpsStats(_Message):
    """Retained on `ops/stats` every few seconds by each dispatcher.

    Live copies expire (MQTT 5 Message Expiry Interval, a few `interval_s`), so a crashed
    instance's copy vanishes; a clean stop leaves a last copy with `online` false.
    """

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


class Rejection(_Message):
    """A refused message, published on `ops/rejected` with a truncated copy."""

    topic: str
    reason: str
    payload: str
    at: str


class CommandError(BaseModel):
    code: str
    message: str


class CommandReply(_Message):
    """Reply to a backend command on `tasks/commands/*` (MQTT 5 request/response)."""

    ok: bool
    task: dict[str, Any] | None = None
    error: CommandError | None = None
