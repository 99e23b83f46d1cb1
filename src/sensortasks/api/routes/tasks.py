"""``/v1/tasks``: create, list, get, cancel, history."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any

from fastapi import APIRouter, Query

from sensortasks.api.deps import AppState, CustomerId, State
from sensortasks.api.models import (
    ErrorResponse,
    EventPublic,
    EventsPublic,
    TaskCreate,
    TaskPublic,
    TasksBulkCreate,
    TasksBulkCreated,
    TasksPublic,
)
from sensortasks.domain import TaskStatus
from sensortasks.errors import InvalidInput, NotFound
from sensortasks.store import NewTask, Task, utcnow

router = APIRouter(prefix="/v1/tasks", tags=["tasks"])
ERRORS: dict[int | str, dict[str, Any]] = {status: {"model": ErrorResponse} for status in (401, 404, 409, 422)}
MAX_ID = 2**63 - 1


def encode_cursor(task_id: int) -> str:
    return base64.urlsafe_b64encode(f"v1:{task_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        version, _, value = text.partition(":")
        if version != "v1" or not value.isdigit():
            raise ValueError(text)
        return int(value)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidInput("cursor: not a cursor returned by this API", details={"field": "cursor"}) from None


def parse_statuses(text: str | None) -> list[TaskStatus]:
    if not text:
        return []
    try:
        return [TaskStatus.parse(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise InvalidInput(
            f"status: {exc}; use names or ids: " + ", ".join(f"{s.label} ({s.value})" for s in TaskStatus),
            details={"field": "status"},
        ) from None


def _new(body: TaskCreate, state: AppState) -> NewTask:
    return NewTask(
        sensor_serial=body.sensor_serial,
        type=body.type.value,
        file_id=str(body.file_id),
        max_attempts=body.max_attempts or state.settings.max_attempts,
        timeout_s=body.timeout_s or state.settings.default_timeout_s,
    )


async def _create(bodies: list[TaskCreate], state: AppState, customer_id: int | None) -> list[Task]:
    tasks = await state.store.create([_new(b, state) for b in bodies], customer_id=customer_id, now=utcnow())
    if state.dispatcher is not None:
        state.dispatcher.kick({t.sensor_serial for t in tasks})
        state.dispatcher.notify_outbox()
    return tasks


@router.post("", status_code=201, summary="Create a task", responses=ERRORS)
async def create_task(body: TaskCreate, state: State, customer_id: CustomerId) -> TaskPublic:
    (task,) = await _create([body], state, customer_id)
    return TaskPublic.of(task)


@router.post("/bulk", status_code=201, summary="Create up to 10,000 tasks in one transaction", responses=ERRORS)
async def create_tasks(body: TasksBulkCreate, state: State, customer_id: CustomerId) -> TasksBulkCreated:
    """All or nothing: one invalid item refuses the whole request (its index is in the error)."""
    return TasksBulkCreated(ids=[t.id for t in await _create(body.tasks, state, customer_id) if t.id is not None])


@router.get("", summary="List tasks, newest first", responses=ERRORS)
async def list_tasks(
    state: State,
    customer_id: CustomerId,
    sensor_serial: Annotated[int | None, Query(gt=0, le=MAX_ID)] = None,
    status: Annotated[str | None, Query(max_length=200, description="Names or ids, comma-separated")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> TasksPublic:
    rows, has_more = await state.store.list_tasks(
        customer_id=customer_id,
        sensor_serial=sensor_serial,
        statuses=parse_statuses(status),
        before_id=decode_cursor(cursor) if cursor else None,
        limit=limit,
    )
    next_cursor = encode_cursor(rows[-1].id) if has_more and rows and rows[-1].id is not None else None
    return TasksPublic(data=[TaskPublic.of(t) for t in rows], has_more=has_more, next_cursor=next_cursor)


@router.get("/{task_id}", summary="Get a task", responses=ERRORS)
async def get_task(task_id: int, state: State, customer_id: CustomerId) -> TaskPublic:
    return TaskPublic.of(await state.store.get(checked_id(task_id), customer_id=customer_id))


@router.delete("/{task_id}", summary="Cancel a task", responses=ERRORS)
async def cancel_task(task_id: int, state: State, customer_id: CustomerId) -> TaskPublic:
    """Cancelled at once; the sensor gets a cancel message if the task had been sent.
    Cancelling a Cancelled task again returns it unchanged; a Completed or Error one is a 409."""
    task = await state.store.cancel(checked_id(task_id), customer_id=customer_id, now=utcnow())
    if state.dispatcher is not None:
        state.dispatcher.notify_outbox()
    return TaskPublic.of(task)


@router.get("/{task_id}/events", summary="A task's history of transitions and attempts", responses=ERRORS)
async def task_events(task_id: int, state: State, customer_id: CustomerId) -> EventsPublic:
    events = await state.store.events(checked_id(task_id), customer_id=customer_id)
    return EventsPublic(task_id=task_id, data=[EventPublic.of(e) for e in events])


def checked_id(task_id: int) -> int:
    if not 0 < task_id <= MAX_ID:
        raise NotFound(f"task {task_id} not found")
    return task_id
