"""The backend's wire contract: a task as REST and ``tasks/commands/*`` show it, what creates
one, and the command requests and reply.

The REST API's models (`sensortasks.api.models`) are these, with examples added; the field
schemas here are documentation only (no validation on what we emit), so nothing we send can
fail them. Timestamps are strings in the seed's format, not ``date-time`` (which would
promise RFC 3339's ``T`` and offset).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, get_args
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from sensortasks.protocol.messages import TaskStatusName, _Message
from sensortasks.protocol.topics import MAX_ID

#: Examples of the documents (the REST API's examples reuse them).
SERIAL_EXAMPLE = 12345678909789
FILE_ID_EXAMPLE = "a3e4aed2-b091-41a6-8265-2185040e2c32"
TASK_CREATE_EXAMPLE: dict[str, Any] = {
    "sensor_serial": SERIAL_EXAMPLE,
    "file_id": FILE_ID_EXAMPLE,
    "type": "update_configuration",
}
STATUS_NAMES: tuple[TaskStatusName, ...] = get_args(TaskStatusName)
#: "1 Pending, 2 Completed, ...": a status id is its position in `TaskStatusName`.
STATUS_IDS = ", ".join(f"{i} {name}" for i, name in enumerate(STATUS_NAMES, 1))
TIME = "UTC, in the seed's format `YYYY-MM-DD HH:MM:SS`"


class TaskType(StrEnum):
    """The wire's task types (the domain's `TaskType` has the same values)."""

    UPDATE_FIRMWARE = "update_firmware"
    UPDATE_CONFIGURATION = "update_configuration"


Timestamp = Annotated[
    str,
    Field(json_schema_extra={"pattern": r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$", "examples": ["2022-10-17 16:00:07"]}),
]
StatusId = Annotated[int, Field(json_schema_extra={"enum": list(range(1, len(STATUS_NAMES) + 1))})]
StatusName = Annotated[str, Field(json_schema_extra={"enum": list(STATUS_NAMES)})]
Serial = Annotated[
    int,
    Field(
        gt=0,
        le=MAX_ID,
        strict=True,
        description="The sensor's serial number: a positive integer up to 2^63-1 (the seeds use 14-15 digits).",
        examples=[SERIAL_EXAMPLE],
    ),
]
TaskTypeField = Annotated[TaskType, Field(description="`update_firmware` or `update_configuration`.")]
Version = Annotated[int, Field(ge=1, le=1, strict=True)]


def time_field(what: str, null: str | None = None) -> Any:  # noqa: ANN401
    """The description of a timestamp: `what` it is, and what null means when it can be null."""
    return Field(description=f"{what} ({TIME})." + (f" Null {null}." if null else ""))


def status_field(what: str) -> Any:  # noqa: ANN401
    return Field(description=f"{what}: {STATUS_IDS}.")


class TaskCreate(BaseModel):
    """Seed 000's create body, plus optional per-task retry settings."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [TASK_CREATE_EXAMPLE]})

    sensor_serial: Annotated[Serial, Field(description="The sensor to update (registered to you).")]
    file_id: UUID = Field(description="UUID of the firmware or configuration file the sensor is to apply.")
    type: TaskTypeField
    max_attempts: Annotated[int, Field(ge=1, le=10, strict=True)] | None = Field(
        default=None,
        description="Attempts allowed (the first send and each retry) before the task ends in Error, 1-10. "
        "Absent or null: the server's default (3 unless configured).",
    )
    timeout_s: Annotated[int, Field(ge=10, le=86400, strict=True)] | None = Field(
        default=None,
        description="Seconds an Ongoing task may run before it is timed out (then retried or Error), 10-86400. "
        "Absent or null: the server's default (3600 unless configured).",
    )


class Task(BaseModel):
    """A task in the seed's shape (field for field), followed by the extensions."""

    id: int = Field(description="Assigned by the server; a newer task has a larger id.")
    sensor_serial: int = Field(description="The sensor the task is for.")
    type: TaskTypeField
    status_id: StatusId = status_field("The status")
    status_name: StatusName = Field(description="The name of `status_id`.")
    attempt_count: int = Field(
        description="Attempts started: 0 until the task is first sent to the sensor, +1 for each retry. "
        "Re-sending the current attempt (the sensor came back online, the dispatcher restarted) does not count."
    )
    created_at: Timestamp = time_field("When the task was created")
    updated_at: Timestamp = time_field("When the task last changed")
    file_id: str = Field(description="UUID of the file the sensor is to apply.", json_schema_extra={"format": "uuid"})
    max_attempts: int = Field(description="Attempts allowed before the task ends in Error (1-10).")
    timeout_s: int = Field(description="Seconds an Ongoing attempt may run before it is timed out (10-86400).")
    progress: int | None = Field(
        description="Percent done (0-100) as the sensor last reported it: 0 when it picks the task up, "
        "100 once Completed. Null until the sensor first picks the task up."
    )
    started_at: Timestamp | None = time_field("When the sensor last picked the task up", "until it first does")
    completed_at: Timestamp | None = time_field(
        "When the task ended (Completed, Error or Cancelled)", "while it is Pending or Ongoing"
    )
    error: str | None = Field(
        description="Why the last attempt failed (kept while a retry waits) or why the task ended in Error. "
        "Null when nothing failed, and always once Completed."
    )
    rollout_id: int | None = Field(default=None, description="The rollout that made the task; null if none did.")


class CommandCreate(TaskCreate):
    """The REST create body, with ``"v": 1`` as on every protocol message."""

    model_config = ConfigDict(extra="forbid")

    v: Version


class CommandTarget(BaseModel):
    model_config = ConfigDict(extra="forbid")

    v: Version
    task_id: Annotated[int, Field(gt=0, le=MAX_ID, strict=True)]


class CommandError(BaseModel):
    code: str
    message: str


class CommandReply(_Message):
    """Reply to a backend command on `tasks/commands/*` (MQTT 5 request/response)."""

    ok: bool
    task: Task | None = None
    error: CommandError | None = None
