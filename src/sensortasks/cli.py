"""The ``sensortasks`` command line. Flags override the environment (``SENSORTASKS_*``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import httpx
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn
from rich.table import Table

from sensortasks.cli_accounts import account_service, mqtt_clients_app
from sensortasks.config import Settings, get_settings
from sensortasks.errors import SensortasksError

app = typer.Typer(help="MQTT task dispatcher for sensor fleets.", no_args_is_help=True, add_completion=False)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
keys_app = typer.Typer(help="Customers' API keys.", no_args_is_help=True)
tasks_app = typer.Typer(help="Tasks, through the REST API of a running server.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(keys_app, name="keys")
app.add_typer(tasks_app, name="tasks")

#: Piped output is not cut to 80 columns (scripts should still prefer --json).
console = Console(width=None if sys.stdout.isatty() else 250)
err = Console(stderr=True)

LogLevel = Annotated[str, typer.Option("--log-level", help="debug, info, warning, error")]
MqttUrl = Annotated[str | None, typer.Option("--mqtt-url", help="Overrides SENSORTASKS_MQTT_URL.")]
DatabaseUrl = Annotated[str | None, typer.Option("--database-url", help="Overrides SENSORTASKS_DATABASE_URL.")]


def _settings(**overrides: Any) -> Settings:  # noqa: ANN401
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**given) if given else get_settings()
    except ValidationError as exc:
        err.print(f"[red]invalid configuration:[/red] {exc}")
        raise typer.Exit(2) from None


def _logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )


@app.command()
def serve(
    api_only: Annotated[bool, typer.Option("--api-only", help="Run the REST API without the dispatcher.")] = False,
    dispatcher_only: Annotated[bool, typer.Option("--dispatcher-only", help="Run the dispatcher alone.")] = False,
    host: Annotated[str | None, typer.Option(help="Overrides SENSORTASKS_HTTP_HOST.")] = None,
    port: Annotated[int | None, typer.Option(help="Overrides SENSORTASKS_HTTP_PORT.")] = None,
    mqtt_url: MqttUrl = None,
    database_url: DatabaseUrl = None,
    instance: Annotated[str | None, typer.Option(help="Dispatcher instance name.")] = None,
    log_level: LogLevel = "info",
) -> None:
    """Run the REST API and the dispatcher (one process)."""
    from sensortasks.server import serve as run_server  # noqa: PLC0415

    if api_only and dispatcher_only:
        err.print("[red]--api-only and --dispatcher-only exclude each other[/red]")
        raise typer.Exit(2)
    _logging(log_level)
    settings = _settings(
        http_host=host, http_port=port, mqtt_url=mqtt_url, database_url=database_url, instance=instance
    )
    asyncio.run(run_server(settings, api=not dispatcher_only, dispatcher=not api_only))


@db_app.command("upgrade")
def db_upgrade(database_url: DatabaseUrl = None) -> None:
    """Create or migrate the schema to the latest version."""
    from sensortasks.store import upgrade  # noqa: PLC0415

    settings = _settings(database_url=database_url)
    asyncio.run(upgrade(settings.database_url))
    console.print("database is up to date")


@keys_app.command("create")
def keys_create(customer: str, database_url: DatabaseUrl = None) -> None:
    """Create an API key for CUSTOMER (created if new). The key is the last line printed."""
    from sensortasks.store import open_database, upgrade  # noqa: PLC0415
    from sensortasks.store.keys import KeyStore  # noqa: PLC0415

    if not 0 < len(customer) <= 100:  # noqa: PLR2004
        err.print("[red]CUSTOMER must be 1 to 100 characters[/red]")
        raise typer.Exit(2)
    settings = _settings(database_url=database_url)

    async def create() -> str:
        await upgrade(settings.database_url)
        db = open_database(settings.database_url)
        try:
            return await KeyStore(db).create_key(customer)
        finally:
            await db.dispose()

    key = asyncio.run(create())
    err.print(f"API key for customer {customer!r} (shown once; stored hashed):")
    print(key)  # noqa: T201  (plain, so scripts can take the last line)


sensors_app = typer.Typer(help="Sensors and their broker credentials.", no_args_is_help=True)
app.add_typer(sensors_app, name="sensors")
app.add_typer(mqtt_clients_app, name="mqtt-clients")


@sensors_app.command("add")
def sensors_add(
    serial: Annotated[int, typer.Argument(min=1, max=2**63 - 1)],
    customer: Annotated[str, typer.Option(help="The customer the sensor belongs to (created if new).")],
    database_url: DatabaseUrl = None,
) -> None:
    """Register SERIAL for CUSTOMER and issue its broker credentials (printed once); again: new password."""
    from sensortasks.store.keys import KeyStore  # noqa: PLC0415

    settings = _settings(database_url=database_url)

    async def add() -> tuple[bool, Any]:
        async with account_service(settings) as accounts:
            customer_id = await KeyStore(accounts.store.db).customer_id(customer)
            return await accounts.register_sensor(serial, customer_id)

    try:
        created, credentials = asyncio.run(add())
    except SensortasksError as exc:
        err.print(f"[red]{exc.code}:[/red] {exc.message}")
        raise typer.Exit(1) from None
    err.print(f"sensor {serial} {'registered' if created else 'already registered'} for {customer!r}")
    if credentials is None:
        err.print("no broker admin configured (SENSORTASKS_BROKER_ADMIN_URL): no MQTT credentials issued")
        print(json.dumps({"serial": serial, "mqtt": None}))  # noqa: T201
    else:
        mqtt = {"username": credentials.username, "password": credentials.password, "client_id": credentials.client_id}
        print(json.dumps({"serial": serial, "mqtt": mqtt}))  # noqa: T201


# -- REST client -----------------------------------------------------------------
ApiUrl = Annotated[str | None, typer.Option("--url", help="Server URL (default from SENSORTASKS_HTTP_*).")]
ApiKey = Annotated[str | None, typer.Option("--api-key", envvar="SENSORTASKS_API_KEY", help="API key.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
TASK_COLUMNS = ("id", "sensor_serial", "type", "status_name", "attempt_count", "progress", "created_at", "updated_at")


def _client(url: str | None, api_key: str | None) -> httpx.Client:
    if url is None:
        settings = get_settings()
        host = "127.0.0.1" if settings.http_host in ("0.0.0.0", "::") else settings.http_host  # noqa: S104
        url = f"http://{host}:{settings.http_port}"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return httpx.Client(base_url=url, headers=headers, timeout=30.0)


def _fail(response: httpx.Response) -> NoReturn:
    body = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
    error = body.get("error", {}) if isinstance(body, dict) else {}
    err.print(f"[red]{response.status_code} {error.get('code', '')}:[/red] {error.get('message', response.text)}")
    raise typer.Exit(1)


def _call(url: str | None, api_key: str | None, method: str, path: str, **kwargs: Any) -> Any:  # noqa: ANN401
    with _client(url, api_key) as client:
        try:
            response = client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            err.print(f"[red]cannot reach the server:[/red] {exc}")
            raise typer.Exit(1) from None
    if response.is_error:
        _fail(response)
    return response.json()


def _show(tasks: list[dict[str, Any]], *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(tasks if len(tasks) != 1 else tasks[0], indent=2))  # noqa: T201
        return
    table = Table(*TASK_COLUMNS)
    for task in tasks:
        table.add_row(*("" if task.get(c) is None else str(task[c]) for c in TASK_COLUMNS))
    console.print(table)


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
    _show([_call(url, api_key, "POST", "/v1/tasks", json=body)], as_json=as_json)


@tasks_app.command("get")
def tasks_get(task_id: int, url: ApiUrl = None, api_key: ApiKey = None, as_json: AsJson = False) -> None:
    """Show one task."""
    _show([_call(url, api_key, "GET", f"/v1/tasks/{task_id}")], as_json=as_json)


SensorOpt = Annotated[int | None, typer.Option("--sensor", help="Sensor serial.")]
StatusOpt = Annotated[str | None, typer.Option(help="Names or ids, comma-separated.")]
TypeOpt = Annotated[str | None, typer.Option("--type", help="update_firmware or update_configuration.")]
TimeOpt = Annotated[str | None, typer.Option(help="YYYY-MM-DD, 'YYYY-MM-DD HH:MM:SS' or ISO 8601 (UTC).")]


def _filters(**given: Any) -> dict[str, Any]:  # noqa: ANN401
    return {"sensor_serial" if k == "sensor" else k: v for k, v in given.items() if v is not None}


@tasks_app.command("list")
def tasks_list(
    sensor: SensorOpt = None,
    status: StatusOpt = None,
    task_type: TypeOpt = None,
    created_since: TimeOpt = None,
    created_until: TimeOpt = None,
    updated_since: TimeOpt = None,
    updated_until: TimeOpt = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="Page size.")] = 100,
    cursor: Annotated[str | None, typer.Option(help="next_cursor of a previous page.")] = None,
    url: ApiUrl = None,
    api_key: ApiKey = None,
    as_json: AsJson = False,
) -> None:
    """List tasks, newest first (one page; the next page's cursor is printed)."""
    params = _filters(
        sensor=sensor, status=status, type=task_type, created_since=created_since, created_until=created_until,
        updated_since=updated_since, updated_until=updated_until, limit=limit, cursor=cursor,
    )  # fmt: skip
    page = _call(url, api_key, "GET", "/v1/tasks", params=params)
    if as_json:
        print(json.dumps(page, indent=2))  # noqa: T201
        return
    _show(page["data"], as_json=False)
    if page["has_more"]:
        err.print(f"more: --cursor {page['next_cursor']}")


@tasks_app.command("export")
def tasks_export(
    output: Annotated[Path, typer.Option("--output", "-o", help="CSV file to write.")],
    sensor: SensorOpt = None,
    status: StatusOpt = None,
    task_type: TypeOpt = None,
    created_since: TimeOpt = None,
    created_until: TimeOpt = None,
    updated_since: TimeOpt = None,
    updated_until: TimeOpt = None,
    url: ApiUrl = None,
    api_key: ApiKey = None,
) -> None:
    """Export tasks as CSV (the list's filters), streamed to a file with a progress bar."""
    params = _filters(
        sensor=sensor, status=status, type=task_type, created_since=created_since, created_until=created_until,
        updated_since=updated_since, updated_until=updated_until,
    )  # fmt: skip
    rows = 0
    with (
        _client(url, api_key) as client,
        client.stream("GET", "/v1/tasks/export.csv", params=params) as response,
    ):
        if response.is_error:
            response.read()
            _fail(response)
        with (
            output.open("wb") as out,
            Progress(
                SpinnerColumn(), TextColumn("{task.description}"), TextColumn("{task.completed:,} rows"), console=err
            ) as progress,
        ):
            bar = progress.add_task(f"exporting to {output}", total=None)
            for chunk in response.iter_bytes():
                out.write(chunk)
                rows += chunk.count(b"\n")
                progress.update(bar, completed=max(rows - 1, 0))
    err.print(f"{max(rows - 1, 0)} task(s) written to {output}")


@tasks_app.command("cancel")
def tasks_cancel(task_id: int, url: ApiUrl = None, api_key: ApiKey = None, as_json: AsJson = False) -> None:
    """Cancel a task."""
    _show([_call(url, api_key, "DELETE", f"/v1/tasks/{task_id}")], as_json=as_json)


# -- fleet ---------------------------------------------------------------------------
@app.command()
def simulate(
    sensors: Annotated[int, typer.Option(min=1, max=100_000, help="How many sensors.")] = 10,
    first_serial: Annotated[int, typer.Option(min=1)] = 100_000_000_000_000,
    work_s: Annotated[float, typer.Option(min=0, help="Mean work time per task.")] = 0.5,
    error_rate: Annotated[float, typer.Option(min=0, max=1, help="Share of runs failing (retryable).")] = 0.0,
    fatal_rate: Annotated[float, typer.Option(min=0, max=1, help="Share failing for good.")] = 0.0,
    silent_share: Annotated[float, typer.Option(min=0, max=1, help="Share of sensors that never answer.")] = 0.0,
    seconds: Annotated[float | None, typer.Option(help="Stop after this long (default: until Ctrl-C).")] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    credentials: Annotated[
        Path | None,
        typer.Option(help="JSON lines as `sensors add` prints them: exactly these sensors, each its own account."),
    ] = None,
    mqtt_url: MqttUrl = None,
    log_level: LogLevel = "warning",
) -> None:
    """Run a fleet of simulated sensors (the sensor SDK) against the broker."""
    from sensortasks.dispatcher.link import tls_context  # noqa: PLC0415
    from sensortasks.sensor.simulator import SimulationConfig, run_fleet  # noqa: PLC0415

    _logging(log_level)
    settings = _settings(mqtt_url=mqtt_url)
    logins = _credentials(credentials) if credentials else {}
    if logins:
        sensors, first_serial = len(logins), min(logins)
    target = settings.mqtt
    config = SimulationConfig(
        sensors=sensors,
        first_serial=first_serial,
        work_s=work_s,
        error_rate=error_rate,
        fatal_rate=fatal_rate,
        silent_share=silent_share,
        seed=seed,
        host=target.host,
        port=target.port,
        username=target.username,
        password=target.password,
        tls_context=tls_context(settings.mqtt_ca_file) if target.tls else None,
        credentials=logins,
    )

    async def run() -> Any:  # noqa: ANN401
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        import signal  # noqa: PLC0415

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if seconds is not None:
            loop.call_later(seconds, stop.set)
        err.print(f"simulating {sensors} sensor(s) from serial {first_serial}; Ctrl-C to stop")
        return await run_fleet(config, stop=stop)

    stats = asyncio.run(run())
    console.print(stats)


def _credentials(path: Path) -> dict[int, Any]:
    from sensortasks.sensor.simulator import read_credentials  # noqa: PLC0415

    try:
        with path.open() as lines:
            return read_credentials(lines)
    except (OSError, ValueError) as exc:
        err.print(f"[red]--credentials {path}:[/red] {exc}")
        raise typer.Exit(2) from None


@app.command()
def watch(
    seconds: Annotated[float | None, typer.Option(help="Stop after this long (default: until Ctrl-C).")] = None,
    mqtt_url: MqttUrl = None,
) -> None:
    """Live view of ops/#: tasks by status, recent transitions, rejections, dispatchers online."""
    from sensortasks.dispatcher.link import tls_context  # noqa: PLC0415
    from sensortasks.watch import watch as run_watch  # noqa: PLC0415

    settings = _settings(mqtt_url=mqtt_url)
    target = settings.mqtt
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(
            run_watch(
                host=target.host,
                port=target.port,
                username=target.username,
                password=target.password,
                tls_context=tls_context(settings.mqtt_ca_file) if target.tls else None,
                topics=settings.topics,
                seconds=seconds,
                console=console,
            )
        )


@app.command()
def soak(
    minutes: Annotated[float, typer.Option(min=0.1, help="How long to inject faults.")] = 10.0,
    sensors: Annotated[int, typer.Option(min=1, max=5000)] = 100,
    seed: Annotated[int, typer.Option(help="Seed of the fault schedule.")] = 1,
    workdir: Annotated[Path | None, typer.Option(help="Keep logs and the database here.")] = None,
) -> None:
    """Mixed faults (SIGKILLed dispatcher and broker, sensor reboots and outages) then an audit table."""
    from sensortasks.soak import soak as run_soak  # noqa: PLC0415

    report = run_soak(minutes=minutes, sensors=sensors, seed=seed, workdir=workdir, say=err.print)
    for line in report.lines():
        print(line)  # noqa: T201
    if report.lost or report.completed_twice:
        raise typer.Exit(1)


@app.command("bench")
def bench_command(
    tasks: Annotated[int, typer.Option(min=1, max=1_000_000, help="Tasks to run through.")] = 2000,
    sensors: Annotated[int, typer.Option(min=1, max=10_000, help="Simulated sensors.")] = 100,
    mqtt_url: Annotated[str | None, typer.Option("--mqtt-url", help="Use this broker instead of starting one.")] = None,
) -> None:
    """Lifecycles per second and latency, with the raw MQTT baseline of the same run."""
    from sensortasks.bench import bench, summary  # noqa: PLC0415
    from sensortasks.config import parse_mqtt_url  # noqa: PLC0415

    target = parse_mqtt_url(mqtt_url) if mqtt_url else None
    product, baseline = bench(
        tasks=tasks,
        sensors=sensors,
        mqtt_host=target.host if target else None,
        mqtt_port=target.port if target else None,
        say=err.print,
    )
    for line in summary(product, baseline):
        print(line)  # noqa: T201


def main() -> None:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    app()
