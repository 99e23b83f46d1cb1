"""``sensortasks rollouts ...``: a client of the REST API's rollouts (SPEC section 10).

`create` builds the body from its options (or takes it from ``--body FILE``, the options given
overriding it); the server validates it, so its 422 names the field to fix.
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
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
    fail,
    fail_response,
    show_record,
)

rollouts_app = typer.Typer(
    help="Rollouts (one task for many sensors, paced and guarded), through the REST API.", no_args_is_help=True
)

COLUMNS = ("id", "name", "state", "type", "targets", "completed", "error", "in flight", "created_at", "finished_at")
#: `watch` exits with 0 when the rollout ends so, with 1 when it ends otherwise (aborted, cancelled).
SUCCESS = "completed"
FINISHED = ("completed", "aborted", "cancelled")


def _selector(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise typer.BadParameter(f"{text!r} is not KEY=VALUE")
    return key, value


def window(text: str) -> dict[str, Any]:
    """``"mon,tue 01:00-05:00"`` as the API's window (the server checks the days and times)."""
    days, _, span = text.strip().partition(" ")
    start, sep, end = span.strip().partition("-")
    if not days or not sep:
        raise typer.BadParameter(f"{text!r} is not 'DAYS HH:MM-HH:MM' (e.g. 'mon,tue 01:00-05:00')")
    return {"days": [d.strip() for d in days.split(",")], "start": start.strip(), "end": end.strip()}


def _given(**values: Any) -> dict[str, Any]:  # noqa: ANN401
    return {key: value for key, value in values.items() if value is not None}


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`base` with `extra`'s members, objects merged member by member (an option overrides only its own)."""
    merged = dict(base)
    for key, value in extra.items():
        merged[key] = (
            _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
        )
    return merged


def _totals(rollout: dict[str, Any]) -> dict[str, Any]:
    totals: dict[str, Any] = rollout.get("totals") or {}
    return totals | {"in flight": totals.get("pending", 0) + totals.get("ongoing", 0)}


def _show(rollouts: list[dict[str, Any]]) -> None:
    table = Table(*COLUMNS)
    for rollout in rollouts:
        values = rollout | _totals(rollout)
        table.add_row(*(cell(values.get(column)) for column in COLUMNS))
    console.print(table)


def _detail(rollout: dict[str, Any], *, as_json: bool) -> None:
    """One rollout, every field on its own row (objects as JSON), then its totals."""
    aborted = rollout.get("state") == "aborted"
    fields = (
        (
            name,
            json.dumps(value) if isinstance(value, dict | list) else value,
            "red" if aborted and name == "reason" else None,
        )
        for name, value in rollout.items()
        if value is not None and name != "totals"
    )
    totals = ((f"totals.{name}", value, None) for name, value in _totals(rollout).items())
    show_record(rollout, f"rollout {rollout.get('id')}", itertools.chain(fields, totals), as_json=as_json)


Repeated = Annotated[list[str] | None, typer.Option()]


@rollouts_app.command("create")
def rollouts_create(
    name: Annotated[str | None, typer.Option(help="1-100 characters.")] = None,
    task_type: Annotated[str | None, typer.Option("--type", help="update_firmware or update_configuration.")] = None,
    file_id: Annotated[str | None, typer.Option("--file-id", help="UUID of the file to apply.")] = None,
    max_attempts: Annotated[int | None, typer.Option(help="Each task's attempts, 1-10.")] = None,
    timeout_s: Annotated[int | None, typer.Option(help="Each task's run timeout, 10-86400 s.")] = None,
    sensor: Annotated[list[int] | None, typer.Option("--sensor", help="A target's serial (repeatable).")] = None,
    selector: Annotated[
        list[str] | None, typer.Option("--selector", help="KEY=VALUE: target sensors with this label (repeatable).")
    ] = None,
    continuous: Annotated[bool, typer.Option("--continuous", help="Sensors matching later join.", metavar="")] = False,
    max_in_flight: Annotated[int | None, typer.Option(help="Tasks Pending or Ongoing at once (default 100).")] = None,
    rate: Annotated[float | None, typer.Option("--rate", help="Starts per minute.")] = None,
    increase_factor: Annotated[float | None, typer.Option(help="Multiply the rate by this (1.1-5)...")] = None,
    increase_every: Annotated[int | None, typer.Option(help="...after every this many completions...")] = None,
    increase_max: Annotated[float | None, typer.Option(help="...up to this many per minute.")] = None,
    abort_percent: Annotated[float | None, typer.Option(help="Abort above this share (%) of failures...")] = None,
    abort_min: Annotated[int | None, typer.Option(help="...once this many tasks are finished.")] = None,
    start_at: Annotated[
        str | None, typer.Option(help="Start no task before (UTC; YYYY-MM-DD[ HH:MM:SS], ISO).")
    ] = None,
    end_at: Annotated[str | None, typer.Option(help="Start no task from (UTC).")] = None,
    windows: Annotated[
        list[str] | None, typer.Option("--window", help="'mon,tue 01:00-05:00': start tasks only then (repeatable).")
    ] = None,
    body_file: Annotated[
        Path | None, typer.Option("--body", help="A JSON file with the body (options override).")
    ] = None,
    url: ApiUrl = None,
    api_key: ApiKey = None,
    as_json: AsJson = False,
) -> None:
    """Create a rollout."""
    body: dict[str, Any] = {}
    if body_file is not None:
        try:
            body = json.loads(body_file.read_text())
        except (OSError, ValueError) as exc:
            fail(f"--body: cannot read {body_file} as JSON: {exc}")
        if not isinstance(body, dict):
            fail(f"--body: {body_file} does not hold a JSON object")
    increase = _given(factor=increase_factor, every_completed=increase_every, max_per_minute=increase_max)
    given = _given(
        name=name,
        type=task_type,
        file_id=file_id,
        max_attempts=max_attempts,
        timeout_s=timeout_s,
        sensors=sensor or None,
        selector={"labels": dict(_selector(s) for s in selector)} if selector else None,
        continuous=continuous or None,
        max_in_flight=max_in_flight,
        rate=_given(per_minute=rate, increase=increase or None) or None,
        abort=_given(failure_percent=abort_percent, min_finished=abort_min) or None,
        schedule=_given(start_at=start_at, end_at=end_at, windows=[window(w) for w in windows or ()] or None) or None,
    )
    _detail(api_call(url, api_key, "POST", "/v1/rollouts", json=_merge(body, given)), as_json=as_json)


@rollouts_app.command("get")
def rollouts_get(rollout_id: int, url: ApiUrl = None, api_key: ApiKey = None, as_json: AsJson = False) -> None:
    """Show one rollout with its totals."""
    _detail(api_call(url, api_key, "GET", f"/v1/rollouts/{rollout_id}"), as_json=as_json)


@rollouts_app.command("list")
def rollouts_list(
    state: Annotated[
        str | None, typer.Option(help="scheduled, running, paused, completed, aborted, cancelled.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="Page size.")] = 100,
    cursor: Annotated[str | None, typer.Option(help="next_cursor of a previous page.")] = None,
    url: ApiUrl = None,
    api_key: ApiKey = None,
    as_json: AsJson = False,
) -> None:
    """List rollouts, newest first (one page; the next page's cursor is printed)."""
    params = _given(state=state, limit=limit, cursor=cursor)
    page = api_call(url, api_key, "GET", "/v1/rollouts", params=params)
    if as_json:
        print(json.dumps(page, indent=2))  # noqa: T201
        return
    _show(page["data"])
    if page["has_more"]:
        err.print(f"more: --cursor {page['next_cursor']}", soft_wrap=True)


@rollouts_app.command("pause")
def rollouts_pause(rollout_id: int, url: ApiUrl = None, api_key: ApiKey = None, as_json: AsJson = False) -> None:
    """Pause a rollout: no new task starts; those in flight go on."""
    _detail(api_call(url, api_key, "POST", f"/v1/rollouts/{rollout_id}/pause"), as_json=as_json)


@rollouts_app.command("resume")
def rollouts_resume(rollout_id: int, url: ApiUrl = None, api_key: ApiKey = None, as_json: AsJson = False) -> None:
    """Resume a paused rollout."""
    _detail(api_call(url, api_key, "POST", f"/v1/rollouts/{rollout_id}/resume"), as_json=as_json)


@rollouts_app.command("cancel")
def rollouts_cancel(
    rollout_id: int,
    in_flight: Annotated[
        str, typer.Option("--in-flight", help="finish: its tasks in flight go on; cancel: they are cancelled.")
    ] = "finish",
    url: ApiUrl = None,
    api_key: ApiKey = None,
    as_json: AsJson = False,
) -> None:
    """Cancel a rollout."""
    body = {"in_flight": in_flight}
    _detail(api_call(url, api_key, "POST", f"/v1/rollouts/{rollout_id}/cancel", json=body), as_json=as_json)


def progress_of(rollout: dict[str, Any]) -> tuple[int, int, str]:
    """What the bar shows: tasks ended (completed or error), of targets, and the rest in words."""
    totals = _totals(rollout)
    rate = rollout.get("rate_per_minute")
    pace = f"{rate:g}/min" if rate is not None else "unpaced"
    words = (
        f"{rollout['state']}: {totals.get('completed', 0)} completed, {totals.get('error', 0)} error, "
        f"{totals['in flight']} in flight, {pace}"
    )
    return totals.get("completed", 0) + totals.get("error", 0), totals.get("targets", 0), words


def _changes(rollout: dict[str, Any]) -> tuple[Any, ...]:
    return rollout["state"], rollout.get("reason"), json.dumps(rollout.get("totals"), sort_keys=True)


@rollouts_app.command("watch")
def rollouts_watch(
    rollout_id: int,
    interval: Annotated[float, typer.Option(min=0.1, help="Seconds between polls.")] = 1.0,
    url: ApiUrl = None,
    api_key: ApiKey = None,
    as_json: AsJson = False,
) -> None:
    """Follow a rollout until it finishes: a progress bar (with --json: one line per change).
    Exits 0 when it completes, 1 when it is aborted or cancelled."""
    last: tuple[Any, ...] | None = None
    with (
        api_client(url, api_key) as client,
        Progress(
            TextColumn("rollout {task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[words]}"),
            TimeRemainingColumn(),
            console=console,
            disable=as_json,
        ) as progress,
    ):
        bar = progress.add_task(str(rollout_id), total=None, words="")
        while True:
            response = client.get(f"/v1/rollouts/{rollout_id}")
            if response.is_error:
                progress.stop()
                fail_response(response)
            rollout: dict[str, Any] = response.json()
            done, targets, words = progress_of(rollout)
            progress.update(
                bar, description=f"{rollout_id} {rollout['name']}", completed=done, total=targets, words=words
            )
            if as_json and _changes(rollout) != last:
                print(json.dumps(rollout), flush=True)  # noqa: T201
            last = _changes(rollout)
            if rollout["state"] in FINISHED:
                break
            time.sleep(interval)
    reason = f" ({rollout['reason']})" if rollout.get("reason") else ""
    if not as_json:
        err.print(f"rollout {rollout_id} {rollout['state']}{reason}", soft_wrap=True, markup=False)
    raise typer.Exit(0 if rollout["state"] == SUCCESS else 1)
