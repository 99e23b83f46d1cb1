"""Models and examples of what the console reads at a glance: the fleet overview, a selector's
match count, and the live stream of task transitions (`routes.glance`)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from sensortasks.domain import TaskStatus
from sensortasks.protocol.commands import Timestamp, time_field
from sensortasks.store import format_time
from sensortasks.store.glance import RATE_MINUTES, Minute, Overview

_STATUSES = {s.label: 0 for s in TaskStatus}
MINUTE: dict[str, Any] = {"start": "2022-10-17 16:49:00", "dispatched": 12, "completed": 11}
OVERVIEW: dict[str, Any] = {
    "tasks": _STATUSES | {"Pending": 40, "Ongoing": 10, "Completed": 1250, "Error": 3},
    "sensors": 120,
    "sensors_online": 117,
    "minutes": [MINUTE],
}
SENSOR_COUNT: dict[str, Any] = {"count": 42}
#: Two events and a keep-alive as they appear on the wire.
EVENT_STREAM = (
    'id: 981\nevent: transition\ndata: {"v":1,"task_id":16624171,"sensor_serial":12345678909789,'
    '"type":"update_firmware","from":"Pending","to":"Ongoing","attempt":1,"reason":"sensor reported ongoing",'
    '"at":"2022-10-17 16:40:01","rollout_id":null}\n\n'
    ": keep-alive\nid: 1017\n\n"
)


class MinutePublic(BaseModel):
    """One minute of the overview's chart."""

    start: Timestamp = time_field("When the minute starts")
    dispatched: int = Field(ge=0, description="Attempts sent to sensors in the minute (re-deliveries not counted).")
    completed: int = Field(ge=0, description="Tasks that reached Completed in the minute.")

    @classmethod
    def of(cls, minute: Minute) -> MinutePublic:
        return cls(start=format_time(minute.start) or "", dispatched=minute.dispatched, completed=minute.completed)


class OverviewPublic(BaseModel):
    """Your fleet at a glance."""

    model_config = ConfigDict(json_schema_extra={"examples": [OVERVIEW]})

    tasks: dict[str, int] = Field(
        description="How many of your tasks are in each status, by name (every status, 0 included)."
    )
    sensors: int = Field(ge=0, description="How many sensors are registered to you.")
    sensors_online: int = Field(ge=0, description="How many of them said last that they are online.")
    minutes: list[MinutePublic] = Field(
        description=f"The last {RATE_MINUTES} minutes, oldest first; the last one is the current minute."
    )

    @classmethod
    def of(cls, overview: Overview) -> OverviewPublic:
        return cls(
            tasks={status.label: n for status, n in overview.statuses.items()},
            sensors=overview.sensors,
            sensors_online=overview.sensors_online,
            minutes=[MinutePublic.of(m) for m in overview.minutes],
        )


class SensorCount(BaseModel):
    """How many sensors match."""

    model_config = ConfigDict(json_schema_extra={"examples": [SENSOR_COUNT]})

    count: int = Field(ge=0, description="How many of your registered sensors carry every label given.")
