"""``sensortasks tasks ...``: a client of the REST API of a running server."""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn
from rich.table import Table

from sensortasks.cli.common import (
    ApiKey,
    ApiUrl,
    AsJson,
    api_call,
    api_client,
    cell,
    console,
    err,
    fail_response,
    show_record,
)

tasks_app = typer.Typer(help="Tasks, through the REST API of a running server.", no_args_is_help=True)

TASK_COLUMNS = ("id", "sensor_serial", "type", "status_name", "attempt_count", "progress", "created_at", "updated_at")
#: Shown only when at least one task of the table has a value there.
OPTIONAL_COLUMNS = {"rollout_id": 6, "error": len(TASK_COLUMNS) + 1}
#: Header with the number of rows `GET /v1/tasks/export.csv` is about to stream.
TOTAL_HEADER = "X-Total-Count"


def columns(tasks: Sequence[dict[str, Any]]) -> list[str]:
    """The task columns, with `error` and `rollout_id` where at least one task has one."""
    chosen = list(TASK_COLUMNS)
    for name, position in OPTIONAL_COLUMNS.items():
        if any(task.get(name) is not None for task in tasks):
            chosen.insert(min(position, len(chosen)), name)
    return chosen


def _show(tasks: list[dict[str, Any]], *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(tasks if len(tasks) != 1 else tasks[0], indent=2))  # noqa: T201
        return
    chosen = columns(tasks)
    table = Table(*chosen)
    for task in tasks:
        table.add_row(*(cell(task.get(c)) for c in chosen))
    console.print(table)


def _detail(task: dict[str, Any], *, as_json: bool) -> None:
    """One task, every field on its own row (the error of an Error task included)."""
    rows = (
        (name, value, "red" if name == "error" and value else None)
        for name, value in task.items()
        if value is not None or name == "error"
    )
    show_record(task, f"task {task.get('id')}", rows, as_json=as_json)


@tasks_app.command("create")
def tasks_create(
    sensor_serial: Annotated[int, typer.Option("--sensor", help="Sensor serial.")],
    file_id: Annotated[str, typer.Option("--file-id")],
    task_type: Annotated[str, typer.Option("--type", help="update_firmware or update_configuration")],
    max_attempts: Annotated[int | None, typer.Option()] = None,
    timeout_s: Annotated[int | None, typer.Option()] = None,
    url: ApiUrl = None,
    api_key: ApiKey = None,
    as_json: AsJson = False,
) -> None:
    """Create a task."""
    body: dict[str, Any] = {"sensor_serial": sensor_serial, "file_id": file_id, "type": task_type}
    body |= {k: v for k, v in (("max_attempts", max_attempts), ("timeout_s", timeout_s)) if v is not None}
    _detail(api_call(url, api_key, "POST", "/v1/tasks", json=body), as_json=as_json)


@tasks_app.command("get")
def tasks_get(task_id: int, url: ApiUrl = None, api_key: ApiKey = None, as_json: AsJson = False) -> None:
    """Show one task, with its error if it ended in Error."""
    _detail(api_call(url, api_key, "GET", f"/v1/tasks/{task_id}"), as_json=as_json)


SensorOpt = Annotated[int | None, typer.Option("--sensor", help="Sensor serial.")]
StatusOpt = Annotated[str | None, typer.Option(help="Names or ids, comma-separated.")]
TypeOpt = Annotated[str | None, typer.Option("--type", help="update_firmware or update_configuration.")]
TimeOpt = Annotated[str | None, typer.Option(help="YYYY-MM-DD, 'YYYY-MM-DD HH:MM:SS' or ISO 8601 (UTC).")]
#: The list's filters, as options (in this order) and as the query parameters they become.
FILTERS = (
    ("sensor", SensorOpt, "sensor_serial"),
    ("status", StatusOpt, "status"),
    ("task_type", TypeOpt, "type"),
    ("created_since", TimeOpt, "created_since"),
    ("created_until", TimeOpt, "created_until"),
    ("updated_since", TimeOpt, "updated_since"),
    ("updated_until", TimeOpt, "updated_until"),
)


def with_filters(command: Callable[..., None]) -> Callable[..., None]:
    """Give `command` the list's filter options in place of its `filters` parameter, which
    receives them as query parameters (those given only): each filter is declared once."""
    keyword = inspect.Parameter.KEYWORD_ONLY  # typer passes every option by name
    own = [param.replace(kind=keyword) for param in inspect.signature(command, eval_str=True).parameters.values()]
    at = [param.name for param in own].index("filters")
    options = [inspect.Parameter(name, keyword, default=None, annotation=option) for name, option, _ in FILTERS]
    signature = inspect.Signature([*own[:at], *options, *own[at + 1 :]])

    @functools.wraps(command)
    def run(**given: Any) -> None:  # noqa: ANN401
        filters = {query: value for name, _, query in FILTERS if (value := given.pop(name)) is not None}
        command(filters=filters, **given)

    run.__signature__ = signature  # type: ignore[attr-defined]  # what typer reads, as inspect does
    run.__annotations__ = {param.name: param.annotation for param in signature.parameters.values()}
    return run


@tasks_app.command("list")
@with_filters
def tasks_list(
    filters: dict[str, Any],
    limit: Annotated[int, typer.Option(min=1, max=1000, help="Page size.")] = 100,
    cursor: Annotated[str | None, typer.Option(help="next_cursor of a previous page.")] = None,
    url: ApiUrl = None,
    api_key: ApiKey = None,
    as_json: AsJson = False,
) -> None:
    """List tasks, newest first (one page; the next page's cursor is printed)."""
    params = filters | {"limit": limit} | ({"cursor": cursor} if cursor is not None else {})
    page = api_call(url, api_key, "GET", "/v1/tasks", params=params)
    if as_json:
        print(json.dumps(page, indent=2))  # noqa: T201
        return
    _show(page["data"], as_json=False)
    if page["has_more"]:
        err.print(f"more: --cursor {page['next_cursor']}", soft_wrap=True)


class CsvRows:
    """Counts the records of a CSV stream chunk by chunk: a newline inside a quoted field
    (an error message can hold one) does not end a record."""

    def __init__(self) -> None:
        self.lines = 0
        self._quoted = False

    def feed(self, chunk: bytes) -> None:
        parts = chunk.split(b'"')
        for index, part in enumerate(parts):
            if not self._quoted:
                self.lines += part.count(b"\n")
            if index < len(parts) - 1:
                self._quoted = not self._quoted

    @property
    def records(self) -> int:
        """Records after the header row."""
        return max(self.lines - 1, 0)


@tasks_app.command("export")
@with_filters
def tasks_export(
    output: Annotated[Path, typer.Option("--output", "-o", help="CSV file to write.")],
    filters: dict[str, Any],
    url: ApiUrl = None,
    api_key: ApiKey = None,
) -> None:
    """Export tasks as CSV (the list's filters), streamed to a file with a progress bar."""
    rows = CsvRows()
    with (
        api_client(url, api_key) as client,
        client.stream("GET", "/v1/tasks/export.csv", params=filters) as response,
    ):
        if response.is_error:
            response.read()
            fail_response(response)
        given = response.headers.get(TOTAL_HEADER, "")
        total = int(given) if given.isdigit() else None  # an older server sends none: no total then
        count = "{task.completed:,}/{task.total:,} rows" if total is not None else "{task.completed:,} rows"
        with (
            output.open("wb") as out,
            Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TaskProgressColumn(),
                TextColumn(count),
                TimeRemainingColumn(),
                console=err,
            ) as progress,
        ):
            bar = progress.add_task(f"exporting to {output}", total=total)
            for chunk in response.iter_bytes():
                out.write(chunk)
                rows.feed(chunk)
                progress.update(bar, completed=rows.records)
    err.print(f"{rows.records} task(s) written to {output}", soft_wrap=True)


@tasks_app.command("cancel")
def tasks_cancel(task_id: int, url: ApiUrl = None, api_key: ApiKey = None, as_json: AsJson = False) -> None:
    """Cancel a task."""
    _detail(api_call(url, api_key, "DELETE", f"/v1/tasks/{task_id}"), as_json=as_json)
