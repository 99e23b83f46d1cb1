"""The rollout models of SPEC section 10: what customers send (`RolloutCreate`, `RolloutCancel`)
and what they get back (`RolloutPublic`, `RolloutsPublic`), each with a real example.

Every rule names its field: a rule between two fields is checked on the later one (``end_at``
against ``start_at``), so that the error's ``field`` points at what to change. What the store
keeps is the validated JSON (`RolloutCreate.new`), times in ISO 8601; what the API shows is the
same JSON with times in the seed's format.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal
from uuid import UUID

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    StringConstraints,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
)
from pydantic_core import PydanticCustomError

from sensortasks.api.params import FORMATS_HELP, parse_time
from sensortasks.api.rollout_examples import ROLLOUT, ROLLOUT_CANCEL, ROLLOUT_CREATE, ROLLOUT_CREATED, ROLLOUT_LIST
from sensortasks.domain.rollout import DAYS, RolloutState, clock_seconds
from sensortasks.errors import InvalidInput
from sensortasks.labels import KEY_PATTERN, KEY_RULE, MAX_KEY, MAX_VALUE, VALUE_PATTERN, VALUE_RULE
from sensortasks.protocol.commands import SERIAL_EXAMPLE, Serial, TaskType, TaskTypeField, Timestamp
from sensortasks.protocol.commands import time_field as _time
from sensortasks.store import format_time
from sensortasks.store.records import NewRollout

if TYPE_CHECKING:
    from sensortasks.store.records import RolloutInfo

MAX_TARGETS = 100_000
MAX_RATE = 1_000_000
#: The smallest increase factor: a float, so checked by `_at_least` rather than a schema bound
#: (the document's bounds are integers).
MIN_FACTOR = 1.1
MAX_WINDOWS = 100


def _at_least(bound: float) -> AfterValidator:
    def check(value: float) -> float:
        if value < bound:
            raise PydanticCustomError(
                "greater_than_equal", "Input should be greater than or equal to {ge}", {"ge": bound}
            )
        return value

    return AfterValidator(check)


def _moment(value: object, info: ValidationInfo) -> datetime:
    """A time in any of the API's formats (as `GET /v1/tasks` reads `created_since`), UTC."""
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or not value.strip():
        raise PydanticCustomError(
            "datetime_type", "Input should be a time as text: {formats}", {"formats": FORMATS_HELP}
        )
    try:
        moment = parse_time(info.field_name or "time", value, until=False)
    except InvalidInput as exc:
        raise PydanticCustomError("datetime_from_text", "{why}", {"why": exc.message.partition(": ")[2]}) from None
    assert moment is not None  # noqa: S101  (a blank one was refused above)
    return moment


Moment = Annotated[
    datetime,
    BeforeValidator(_moment),
    PlainSerializer(format_time, when_used="json"),
    WithJsonSchema({"type": "string", "examples": ["2022-10-17 22:00:00"]}),
]


def _time_of_day(value: str) -> str:
    clock_seconds(value)  # a ValueError names the rule
    return value


def _day(value: str) -> str:
    if value not in DAYS:
        raise PydanticCustomError("enum", "Input should be one of {days}", {"days": ", ".join(DAYS)})
    return value


HhMm = Annotated[
    str,
    StringConstraints(pattern=r"^[0-9]{2}:[0-9]{2}$"),
    AfterValidator(_time_of_day),
    Field(examples=["22:00"]),
]
Day = Annotated[str, AfterValidator(_day), Field(json_schema_extra={"enum": list(DAYS)})]
#: The sensors' label syntax (`sensortasks.labels`), checked by pydantic so that a 422 names the key.
LabelKey = Annotated[str, StringConstraints(min_length=1, max_length=MAX_KEY, pattern=KEY_PATTERN)]
LabelValue = Annotated[str, StringConstraints(max_length=MAX_VALUE, pattern=VALUE_PATTERN)]


def _unique(values: list[Any], what: str) -> None:
    seen: set[Any] = set()
    for index, value in enumerate(values):
        if value in seen:
            raise PydanticCustomError(
                "unique_items", "{what} {value} is listed twice (again at index {index})",
                {"what": what, "value": value, "index": index},
            )  # fmt: skip
        seen.add(value)


class RolloutSelector(BaseModel):
    """The sensors whose labels include all of these (`POST /v1/sensors` sets a sensor's labels)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [ROLLOUT_CREATE["selector"]]})

    labels: Annotated[dict[LabelKey, LabelValue], Field(min_length=1)] = Field(
        description=f"At least one `key: value`; a sensor matches when it carries every one ({KEY_RULE}; {VALUE_RULE})."
    )


class RolloutIncrease(BaseModel):
    """Exponential rollout: the rate grows by `factor` after every `every_completed` completions."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [ROLLOUT_CREATE["rate"]["increase"]]})

    factor: Annotated[float, Field(le=5, strict=True), _at_least(MIN_FACTOR)] = Field(
        description="What the rate is multiplied by at each step, 1.1-5."
    )
    every_completed: Annotated[int, Field(ge=1, strict=True)] = Field(
        description="Completed rollout tasks per step (at least 1)."
    )
    max_per_minute: Annotated[float, Field(gt=0, le=MAX_RATE, strict=True)] = Field(
        description="The rate never grows beyond this (at least `per_minute`)."
    )


class RolloutRate(BaseModel):
    """Tasks started per minute, evenly paced, without an initial burst."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [ROLLOUT_CREATE["rate"]]})

    per_minute: Annotated[float, Field(gt=0, le=MAX_RATE, strict=True)] = Field(
        description="Starts per minute to begin with: more than 0, at most 1,000,000."
    )
    increase: RolloutIncrease | None = Field(default=None, description="How the rate grows; null: it does not.")

    @field_validator("increase")
    @classmethod
    def _grows(cls, value: RolloutIncrease | None, info: ValidationInfo) -> RolloutIncrease | None:
        start = info.data.get("per_minute")
        if value is not None and start is not None and value.max_per_minute < start:
            raise PydanticCustomError(
                "greater_than_equal", "max_per_minute ({top:g}) should be at least per_minute ({start:g})",
                {"top": value.max_per_minute, "start": start},
            )  # fmt: skip
        return value


class RolloutAbort(BaseModel):
    """Stop the rollout when too many of its tasks fail."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [ROLLOUT_CREATE["abort"]]})

    failure_percent: Annotated[float, Field(ge=0, le=100, strict=True)] = Field(
        description="The rollout aborts when more than this share (0-100 %) of its finished tasks ended in Error."
    )
    min_finished: Annotated[int, Field(ge=1, strict=True)] = Field(
        description="Judged only once at least this many rollout tasks are finished (at least 1)."
    )


class RolloutWindow(BaseModel):
    """Days of the week and a span of the day (UTC) in which new tasks may start."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [ROLLOUT_CREATE["schedule"]["windows"][0]]}
    )

    days: Annotated[list[Day], Field(min_length=1, max_length=len(DAYS))] = Field(
        description="`mon` to `sun`, each at most once."
    )
    start: HhMm = Field(description="`HH:MM` (UTC), 00:00-23:59: starts from this minute on.")
    end: HhMm = Field(description="`HH:MM` (UTC), after `start`; `24:00` is midnight at the end of the day.")

    @field_validator("days")
    @classmethod
    def _no_repeats(cls, value: list[str]) -> list[str]:
        _unique(value, "day")
        return value

    @field_validator("end")
    @classmethod
    def _after_start(cls, value: str, info: ValidationInfo) -> str:
        start = info.data.get("start")
        if start is not None and clock_seconds(value) <= clock_seconds(start):
            raise PydanticCustomError("greater_than", "end ({end}) should be after start ({start})",
                                      {"end": value, "start": start})  # fmt: skip
        return value


class RolloutSchedule(BaseModel):
    """When new tasks may start (all UTC); tasks already started go on outside it."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [ROLLOUT_CREATE["schedule"]]})

    start_at: Moment | None = Field(
        default=None, description=f"Nothing starts before this time (until then: `scheduled`); {FORMATS_HELP}."
    )
    end_at: Moment | None = Field(
        default=None, description=f"Nothing starts from this time on (after `start_at`); {FORMATS_HELP}."
    )
    windows: Annotated[list[RolloutWindow], Field(min_length=1, max_length=MAX_WINDOWS)] | None = Field(
        default=None, description="Tasks start only inside one of these (up to 100); null: at any time."
    )

    @field_validator("end_at")
    @classmethod
    def _after_start(cls, value: datetime | None, info: ValidationInfo) -> datetime | None:
        start = info.data.get("start_at")
        if value is not None and start is not None and value <= start:
            raise PydanticCustomError("greater_than", "end_at should be after start_at ({start})",
                                      {"start": format_time(start)})  # fmt: skip
        return value

    def stored(self) -> dict[str, Any]:
        """As the store keeps it: times in ISO 8601, what is not given left out."""
        given = {
            "start_at": self.start_at.isoformat() if self.start_at else None,
            "end_at": self.end_at.isoformat() if self.end_at else None,
            "windows": [w.model_dump() for w in self.windows] if self.windows else None,
        }
        return {key: value for key, value in given.items() if value is not None}


class RolloutCreate(BaseModel):
    """One task (type, file, attempts, timeout) for many sensors, paced and guarded."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [ROLLOUT_CREATE]})

    name: Annotated[str, StringConstraints(min_length=1, max_length=100)] = Field(
        description="Yours to choose, 1-100 characters.", examples=[ROLLOUT_CREATE["name"]]
    )
    type: TaskTypeField
    file_id: UUID = Field(description="UUID of the firmware or configuration file every target is to apply.")
    max_attempts: Annotated[int, Field(ge=1, le=10, strict=True)] | None = Field(
        default=None, description="Each task's attempts, 1-10, as in `POST /v1/tasks` (absent: the server's default)."
    )
    timeout_s: Annotated[int, Field(ge=10, le=86400, strict=True)] | None = Field(
        default=None, description="Each task's run timeout, 10-86400 s (absent: the server's default)."
    )
    sensors: Annotated[list[Serial], Field(min_length=1, max_length=MAX_TARGETS)] | None = Field(
        default=None,
        description="Serials of your sensors to target, 1 to 100,000, each once; with `selector`, both are targets.",
        examples=[[SERIAL_EXAMPLE]],
    )
    selector: RolloutSelector | None = Field(
        default=None,
        validate_default=True,
        description="Target your sensors whose labels match (at least one of `sensors` and `selector` is needed).",
    )
    continuous: bool = Field(
        default=False,
        strict=True,
        description="Sensors that come to match `selector` later join the rollout while it runs (needs `selector`).",
    )
    max_in_flight: Annotated[int, Field(ge=1, le=MAX_TARGETS, strict=True)] = Field(
        default=100, description="At most this many of its tasks Pending or Ongoing at once, 1-100,000."
    )
    rate: RolloutRate | None = Field(default=None, description="How fast tasks start; null: as fast as the cap allows.")
    abort: RolloutAbort | None = Field(default=None, description="When failures abort the rollout; null: never.")
    schedule: RolloutSchedule | None = Field(default=None, description="When tasks may start; null: from now on.")

    @field_validator("sensors")
    @classmethod
    def _once_each(cls, value: list[int] | None) -> list[int] | None:
        if value is not None:
            _unique(value, "sensor")
        return value

    @field_validator("selector")
    @classmethod
    def _has_targets(cls, value: RolloutSelector | None, info: ValidationInfo) -> RolloutSelector | None:
        if value is None and "sensors" in info.data and info.data["sensors"] is None:
            raise PydanticCustomError("missing", "give sensors, selector or both: the rollout needs targets")
        return value

    @field_validator("continuous")
    @classmethod
    def _needs_selector(cls, value: bool, info: ValidationInfo) -> bool:
        if value and "selector" in info.data and info.data["selector"] is None:
            raise PydanticCustomError("missing", "continuous needs a selector: only a selector can match new sensors")
        return value

    def new(self, *, max_attempts: int, timeout_s: int) -> NewRollout:
        """What the store creates, with the server's task defaults where none was given."""
        return NewRollout(
            name=self.name,
            type=self.type.value,
            file_id=str(self.file_id),
            max_attempts=self.max_attempts or max_attempts,
            timeout_s=self.timeout_s or timeout_s,
            sensors=tuple(self.sensors) if self.sensors is not None else None,
            selector=dict(self.selector.labels) if self.selector else None,
            continuous=self.continuous,
            max_in_flight=self.max_in_flight,
            rate=self.rate.model_dump(exclude_none=True) if self.rate else None,
            abort=self.abort.model_dump() if self.abort else None,
            schedule=self.schedule.stored() if self.schedule else None,
        )


class RolloutCancel(BaseModel):
    """What becomes of the rollout's tasks already sent."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [ROLLOUT_CANCEL]})

    in_flight: Literal["finish", "cancel"] = Field(
        default="finish",
        description="`finish`: its Pending and Ongoing tasks go on to their end; `cancel`: they are cancelled too. "
        "Targets not started yet never start either way.",
    )


class RolloutTotals(BaseModel):
    """The rollout's targets, and its tasks by status."""

    model_config = ConfigDict(json_schema_extra={"examples": [ROLLOUT["totals"]]})

    targets: int = Field(description="Sensors the rollout is for (a continuous one gains more).")
    not_started: int = Field(description="Targets without a task yet.")
    pending: int = Field(description="Its tasks Pending (queued at the sensor, or sent and not yet picked up).")
    ongoing: int = Field(description="Its tasks Ongoing.")
    completed: int = Field(description="Its tasks Completed.")
    error: int = Field(description="Its tasks that ended in Error.")
    cancelled: int = Field(description="Its tasks Cancelled.")


class RolloutPublic(BaseModel):
    """A rollout: what was asked for, where it stands, and its totals."""

    model_config = ConfigDict(json_schema_extra={"examples": [ROLLOUT, ROLLOUT_CREATED]})

    id: int = Field(description="Assigned by the server; a newer rollout has a larger id.")
    name: str = Field(description="The name given.")
    type: TaskTypeField
    file_id: str = Field(description="UUID of the file its tasks apply.", json_schema_extra={"format": "uuid"})
    max_attempts: int = Field(description="Each task's attempts (1-10).")
    timeout_s: int = Field(description="Each task's run timeout in seconds (10-86400).")
    sensors: list[int] | None = Field(description="The serials listed; null if none were.")
    selector: RolloutSelector | None = Field(description="The label selector; null if none was given.")
    continuous: bool = Field(description="Whether sensors that come to match the selector join it.")
    max_in_flight: int = Field(description="Its cap of tasks Pending or Ongoing at once.")
    rate: RolloutRate | None = Field(description="The rate asked for; null: unpaced.")
    abort: RolloutAbort | None = Field(description="The abort rule; null: none.")
    schedule: RolloutSchedule | None = Field(description="The schedule (times UTC in the seed's format); null: none.")
    state: RolloutState = Field(
        description="`scheduled` (before `start_at`), `running`, `paused`, or finished: `completed` (every task "
        "ended), `aborted` (too many failures, see `reason`) or `cancelled`."
    )
    totals: RolloutTotals = Field(description="Targets and tasks, counted now.")
    created_at: Timestamp = _time("When it was created")
    updated_at: Timestamp = _time("When its state or totals last changed")
    started_at: Timestamp | None = _time("When its first task started", "until then")
    finished_at: Timestamp | None = _time("When it finished (completed, aborted or cancelled)", "until then")
    reason: str | None = Field(description="Why it aborted, was cancelled or ended early; null otherwise.")
    rate_per_minute: float | None = Field(description="Its current rate (after increases); null when unpaced.")

    @classmethod
    def of(cls, info: RolloutInfo) -> RolloutPublic:
        return cls.model_validate(
            {
                "id": info.id,
                "name": info.name,
                "type": TaskType(info.type),
                "file_id": info.file_id,
                "max_attempts": info.max_attempts,
                "timeout_s": info.timeout_s,
                "sensors": info.sensors,
                "selector": info.selector,
                "continuous": info.continuous,
                "max_in_flight": info.max_in_flight,
                "rate": info.rate,
                "abort": info.abort,
                "schedule": info.schedule,
                "state": info.state,
                "totals": RolloutTotals.model_validate(info.totals, from_attributes=True),
                "created_at": format_time(info.created_at),
                "updated_at": format_time(info.updated_at),
                "started_at": format_time(info.started_at),
                "finished_at": format_time(info.finished_at),
                "reason": info.reason,
                "rate_per_minute": info.rate_per_minute,
            }
        )


class RolloutsPublic(BaseModel):
    """A page of rollouts, newest first."""

    model_config = ConfigDict(json_schema_extra={"examples": [ROLLOUT_LIST]})

    data: list[RolloutPublic] = Field(description="The rollouts of this page, newest (largest id) first.")
    has_more: bool = Field(description="True when more rollouts match: ask again with `cursor=<next_cursor>`.")
    next_cursor: str | None = Field(
        description="Pass as `cursor` to get the next page; null on the last page. Opaque: do not build one."
    )
