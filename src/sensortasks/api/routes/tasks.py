"""``/v1/tasks``: create (one or in bulk), list, export, get, cancel, history, result."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Query, Response
from fastapi.responses import StreamingResponse

from sensortasks.api import examples
from sensortasks.api.body import documented, json_body
from sensortasks.api.deps import CustomerId, State
from sensortasks.api.models import (
    CSV_COLUMNS,
    EventPublic,
    EventsPublic,
    ResultPublic,
    TaskPublic,
    TasksBulkCreate,
    TasksBulkCreated,
    TasksPublic,
)
from sensortasks.api.params import FORMATS_HELP, decode_cursor, encode_cursor, parse_time
from sensortasks.api.responses import V1, error, errors, ok
from sensortasks.domain import TaskStatus
from sensortasks.errors import InvalidInput, NotFound
from sensortasks.protocol.commands import STATUS_IDS, TaskCreate, TaskType
from sensortasks.protocol.topics import MAX_ID
from sensortasks.store import Created, TaskFilter

router = APIRouter(prefix="/v1/tasks", tags=["tasks"])
#: Not a bound: an id no task has (however large) is a 404, not a 422.
TaskId = Annotated[int, Path(description="The task's id.", examples=[16624171])]
_IDEMPOTENCY_CONFLICT = error(
    409,
    "The Idempotency-Key was already used with a different request; or the first request with it is still "
    "being processed (this one waited for its answer in vain): retry later with the same key and body.",
    examples.error(
        "conflict", "Idempotency-Key was already used with a different request", {"header": "Idempotency-Key"}
    ),
)
#: Response header of the export: the number of rows that follow.
TOTAL_HEADER = "X-Total-Count"


def parse_statuses(text: str | None) -> tuple[TaskStatus, ...]:
    if not text:
        return ()
    try:
        return tuple(TaskStatus.parse(part) for part in text.split(",") if part.strip())
    except ValueError as exc:
        names = ", ".join(f"{s.label} ({s.value})" for s in TaskStatus)
        raise InvalidInput(f"status: {exc}; use names or ids: {names}", details={"field": "status"}) from None


TimeQuery = Annotated[
    str | None,
    Query(
        max_length=40,
        description=f"Bound on the time (`_since` inclusive, `_until` inclusive to its day or second): {FORMATS_HELP}.",
    ),
]


def task_filter(
    customer_id: CustomerId,
    sensor_serial: Annotated[int | None, Query(gt=0, le=MAX_ID, description="Only this sensor's tasks.")] = None,
    status: Annotated[
        str | None,
        Query(
            max_length=200,
            description=f"Only tasks in these statuses: names or ids, comma-separated (`Pending,4`); {STATUS_IDS}.",
        ),
    ] = None,
    type: Annotated[TaskType | None, Query(description="Only tasks of this type.")] = None,
    created_since: TimeQuery = None,
    created_until: TimeQuery = None,
    updated_since: TimeQuery = None,
    updated_until: TimeQuery = None,
    rollout_id: Annotated[int | None, Query(gt=0, le=MAX_ID, description="Only the tasks this rollout made.")] = None,
) -> TaskFilter:
    return TaskFilter(
        customer_id=customer_id,
        sensor_serial=sensor_serial,
        statuses=parse_statuses(status),
        type=type.value if type else None,
        created_since=parse_time("created_since", created_since, until=False),
        created_until=parse_time("created_until", created_until, until=True),
        updated_since=parse_time("updated_since", updated_since, until=False),
        updated_until=parse_time("updated_until", updated_until, until=True),
        rollout_id=rollout_id,
    )


Filter = Annotated[TaskFilter, Depends(task_filter)]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=255,
        description="Retrying with the same key (yours, kept 48 hours) returns the first answer again; "
        "the same key with a different body is a 409, and so is a retry while the first is still being processed "
        "(retry it later).",
    ),
]


@router.post(
    "",
    status_code=201,
    summary="Create a task",
    responses={
        201: ok("The new task, Pending (or, for a repeated Idempotency-Key, the first answer).", examples.TASK_PENDING),
        **errors(*V1, 400, 422),
        409: _IDEMPOTENCY_CONFLICT,
    },
)
async def create_task(
    body: TaskCreate, state: State, customer_id: CustomerId, idempotency_key: IdempotencyKey = None
) -> TaskPublic:
    def answer(tasks: Created) -> tuple[int, str]:
        (task,) = tasks
        return 201, TaskPublic.of(task).model_dump_json()

    def request() -> dict[str, Any]:
        return {"path": "/v1/tasks", "body": body.model_dump(mode="json")}

    status, payload = await state.service.create_once(idempotency_key, customer_id, request, [body], answer)
    return Response(payload, status_code=status, media_type="application/json")  # type: ignore[return-value]


@router.post(
    "/bulk",
    status_code=201,
    summary="Create up to 10,000 tasks in one transaction",
    responses={
        201: ok("The ids of the new tasks, in the order of the request.", examples.BULK_CREATED),
        **errors(*V1, 400, 422),
        409: _IDEMPOTENCY_CONFLICT,
    },
    openapi_extra=documented(TasksBulkCreate),
)
async def create_tasks(
    state: State,
    customer_id: CustomerId,  # before the body: a request without a valid key learns nothing of it
    body: Annotated[TasksBulkCreate, Depends(json_body(TasksBulkCreate))],
    idempotency_key: IdempotencyKey = None,
) -> TasksBulkCreated:
    """All or nothing: one invalid item refuses the whole request, and the error names its index
    (`tasks.<index>.<field>`)."""

    def answer(tasks: Created) -> tuple[int, str]:
        return 201, TasksBulkCreated(ids=tasks.ids).model_dump_json()

    def request() -> dict[str, Any]:
        return {"path": "/v1/tasks/bulk", "body": body.model_dump(mode="json")}

    status, payload = await state.service.create_once(idempotency_key, customer_id, request, body.tasks, answer)
    return Response(payload, status_code=status, media_type="application/json")  # type: ignore[return-value]


@router.get(
    "",
    summary="List tasks, newest first",
    responses={200: ok("A page of tasks.", examples.TASK_LIST), **errors(*V1, 422)},
)
async def list_tasks(
    state: State,
    where: Filter,
    limit: Annotated[int, Query(ge=1, le=1000, description="Tasks per page, 1-1000.")] = 100,
    cursor: Annotated[str | None, Query(max_length=200, description="`next_cursor` of the previous page")] = None,
) -> TasksPublic:
    rows, has_more = await state.service.page(where, before_id=decode_cursor(cursor) if cursor else None, limit=limit)
    next_cursor = encode_cursor(rows[-1].id) if has_more and rows and rows[-1].id is not None else None
    return TasksPublic(data=[TaskPublic.of(t) for t in rows], has_more=has_more, next_cursor=next_cursor)


@router.get(
    "/export.csv",
    summary="Export tasks as CSV (the list's filters)",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "A header row, then one row per task (the fields of a task; empty for null).",
            "content": {"text/csv": {"schema": {"type": "string"}, "example": examples.CSV}},
            "headers": {
                TOTAL_HEADER: {
                    "description": "How many task rows follow the header row (counted when the export starts)",
                    "schema": {"type": "integer", "minimum": 0},
                }
            },
        },
        **errors(*V1, 422),
    },
)
async def export_tasks(state: State, where: Filter) -> StreamingResponse:
    """Streamed a page at a time: memory stays constant however many tasks match.

    The `X-Total-Count` header says how many rows follow (one COUNT of the same filter, taken
    before streaming), so that clients can show a progress bar; tasks created or changed while
    the export runs may make the stream differ from it slightly.
    """

    async def rows() -> AsyncIterator[str]:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        async for page in state.service.pages(where):
            for task in page:
                data = TaskPublic.of(task).model_dump(mode="json")
                writer.writerow(["" if data[c] is None else data[c] for c in CSV_COLUMNS])
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
        if buffer.tell():
            yield buffer.getvalue()

    total = await state.service.count(where)
    # The header row goes out even when nothing matches.
    return StreamingResponse(
        rows(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="tasks.csv"', TOTAL_HEADER: str(total)},
    )


@router.get(
    "/{task_id}",
    summary="Get a task",
    responses={200: ok("The task.", examples.TASK_COMPLETED), **errors(*V1, 404, 422)},
)
async def get_task(task_id: TaskId, state: State, customer_id: CustomerId) -> TaskPublic:
    return TaskPublic.of(await state.service.get(task_id, customer_id))


@router.delete(
    "/{task_id}",
    summary="Cancel a task",
    responses={
        200: ok("The task, Cancelled.", examples.TASK_CANCELLED),
        **errors(*V1, 404, 422),
        409: error(409, "The task is Completed or Error: it can no longer be cancelled."),
    },
)
async def cancel_task(task_id: TaskId, state: State, customer_id: CustomerId) -> TaskPublic:
    """Cancelled at once; the sensor gets a cancel message if the task had been sent.
    Cancelling a Cancelled task again returns it unchanged; a Completed or Error one is a 409."""
    return TaskPublic.of(await state.service.cancel(task_id, customer_id))


@router.get(
    "/{task_id}/events",
    summary="A task's history of transitions and attempts",
    responses={200: ok("The task's history, oldest first.", examples.EVENTS), **errors(*V1, 404, 422)},
)
async def task_events(task_id: TaskId, state: State, customer_id: CustomerId) -> EventsPublic:
    events = await state.service.events(task_id, customer_id)
    return EventsPublic(task_id=task_id, data=[EventPublic.of(e) for e in events])


@router.get(
    "/{task_id}/result",
    summary="What the sensor reported with its final status",
    responses={
        200: ok("The result.", examples.RESULT),
        **errors(*V1, 422),
        404: error(
            404,
            "No such task, or it is not Completed or Error yet.",
            examples.error("not_found", "task 16624172 has no result: it is Pending", {"status_name": "Pending"}),
        ),
    },
)
async def task_result(task_id: TaskId, state: State, customer_id: CustomerId) -> ResultPublic:
    """404 until the task is Completed or has ended in Error."""
    task = await state.service.get(task_id, customer_id)
    status = TaskStatus(task.status_id)
    if status not in (TaskStatus.COMPLETED, TaskStatus.ERROR):
        raise NotFound(f"task {task_id} has no result: it is {status.label}", details={"status_name": status.label})
    return ResultPublic.of(task)
