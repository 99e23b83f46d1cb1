"""The ``sensortasks`` command line. Flags override the environment (``SENSORTASKS_*``)."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.table import Table

from sensortasks.cli.accounts import account_service, mqtt_clients_app
from sensortasks.cli.common import (
    AsJson,  # noqa: F401  (re-exported for the commands added to this module)
    Commands,
    DatabaseUrl,
    LogFormat,
    LogLevel,
    MqttUrl,
    console,
    err,
    fail,
    say,
    setup_logging,
)
from sensortasks.cli.common import settings as _settings
from sensortasks.cli.tasks import tasks_app
from sensortasks.errors import SensortasksError

if TYPE_CHECKING:
    from sensortasks.ops.watch import WatchState
    from sensortasks.sensor.simulator import FleetStats
    from sensortasks.store.keys import KeyStore

T = TypeVar("T")

app = typer.Typer(
    cls=Commands, help="MQTT task dispatcher for sensor fleets.", no_args_is_help=True, add_completion=False
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
keys_app = typer.Typer(help="Customers' API keys.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(keys_app, name="keys")
app.add_typer(tasks_app, name="tasks")


@app.command()
def serve(
    api_only: Annotated[
        bool, typer.Option("--api-only", help="Run the REST API without the dispatcher.", metavar="")
    ] = False,
    dispatcher_only: Annotated[
        bool, typer.Option("--dispatcher-only", help="Run the dispatcher alone.", metavar="")
    ] = False,
    host: Annotated[str | None, typer.Option(help="Overrides SENSORTASKS_HTTP_HOST.")] = None,
    port: Annotated[int | None, typer.Option(help="Overrides SENSORTASKS_HTTP_PORT.")] = None,
    mqtt_url: MqttUrl = None,
    database_url: DatabaseUrl = None,
    instance: Annotated[str | None, typer.Option(help="Dispatcher instance name.")] = None,
    log_level: LogLevel = "info",
    log_format: LogFormat = "text",
) -> None:
    """Run the REST API and the dispatcher (one process).

    Exits 1 with one line when the database cannot be used or the broker refuses the login;
    a broker that is down is waited for (reconnecting with back off)."""
    from sensortasks.runtime import serve as run_server  # noqa: PLC0415

    if api_only and dispatcher_only:
        fail("--api-only and --dispatcher-only exclude each other", 2)
    setup_logging(log_level, log_format)
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


def _with_keys(database_url: str | None, operation: Callable[[KeyStore], Awaitable[T]]) -> T:
    """Run `operation` on the key store of the configured database (migrated first)."""
    from sensortasks.store import open_database, upgrade  # noqa: PLC0415
    from sensortasks.store.keys import KeyStore  # noqa: PLC0415

    settings = _settings(database_url=database_url)

    async def run() -> T:
        await upgrade(settings.database_url)
        db = open_database(settings.database_url)
        try:
            return await operation(KeyStore(db))
        finally:
            await db.dispose()

    try:
        return asyncio.run(run())
    except SensortasksError as exc:
        err.print(f"[red]{exc.code}:[/red] {exc.message}")
        raise typer.Exit(1) from None


@keys_app.command("create")
def keys_create(customer: str, database_url: DatabaseUrl = None) -> None:
    """Create an API key for CUSTOMER (created if new). The key is the last line printed."""
    if not 0 < len(customer) <= 100:  # noqa: PLR2004
        err.print("[red]CUSTOMER must be 1 to 100 characters[/red]")
        raise typer.Exit(2)
    key = _with_keys(database_url, lambda keys: keys.create_key(customer))
    err.print(f"API key for customer {customer!r} (shown once; stored hashed):")
    print(key)  # noqa: T201  (plain, so scripts can take the last line)


@keys_app.command("list")
def keys_list(
    customer: Annotated[str | None, typer.Option(help="Only this customer's keys.")] = None,
    database_url: DatabaseUrl = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """List API keys (revoked ones too) by prefix; the keys themselves are never stored. Times are UTC."""
    keys = [key.public() for key in _with_keys(database_url, lambda store: store.list_keys(customer))]
    if as_json:
        print(json.dumps(keys, indent=2))  # noqa: T201
        return
    table = Table("prefix", "customer", "created", "last used", "revoked")
    for key in keys:
        table.add_row(*(key[c] or "" for c in ("prefix", "customer", "created_at", "last_used_at", "revoked_at")))
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(
    prefix: Annotated[str, typer.Argument(help="The key's prefix as 'keys list' shows it (or the whole key).")],
    database_url: DatabaseUrl = None,
) -> None:
    """Revoke an API key: from now on it authenticates nobody (REST and MQTT commands)."""
    key, already = _with_keys(database_url, lambda store: store.revoke(prefix))
    shown = key.public()
    state = "was already revoked at" if already else "revoked at"
    console.print(f"API key {key.prefix} of customer {key.customer!r} {state} {shown['revoked_at']} UTC")


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
    log_format: LogFormat = "text",
) -> None:
    """Run a fleet of simulated sensors (the sensor SDK) against the broker."""
    import aiomqtt  # noqa: PLC0415

    from sensortasks.errors import Unavailable  # noqa: PLC0415
    from sensortasks.mqtt import (  # noqa: PLC0415
        probe,
        reason,
        refusal,
        refused,
        tls_context,
    )
    from sensortasks.sensor.simulator import SimulationConfig, run_fleet  # noqa: PLC0415

    setup_logging(log_level, log_format)
    settings = _settings(mqtt_url=mqtt_url)
    logins = _credentials(credentials) if credentials else {}
    if logins:
        sensors, first_serial = len(logins), min(logins)
    target = settings.mqtt
    tls = tls_context(settings.mqtt_ca_file) if target.tls else None
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
        tls_context=tls,
        credentials=logins,
    )

    async def run() -> FleetStats:
        import signal  # noqa: PLC0415

        # One connection first: a dead broker or a refused login is one line, not N sensors' warnings.
        # Not with a sensor's own account: it is bound to that sensor's client id, and a probe under
        # it would take over the sensor's session; the sensors then say it themselves, at once.
        if target.username is None and not logins:
            await probe(target.host, target.port, tls_context=tls)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if seconds is not None:
            loop.call_later(seconds, stop.set)

        def started(fleet: FleetStats) -> None:
            say(f"simulating {fleet.connected} sensor(s) from serial {first_serial}; Ctrl-C to stop")

        try:
            return await run_fleet(config, stop=stop, on_started=started)
        except aiomqtt.MqttError as exc:  # not one sensor could connect
            if (why := refusal(exc)) is not None:
                raise refused(target.host, target.port, target.username, why) from None
            raise Unavailable(f"cannot reach the MQTT broker {target.host}:{target.port}: {reason(exc)}") from None

    stats = asyncio.run(run())
    print(fleet_summary(stats))  # noqa: T201
    if stats.connected == 0:
        fail(f"no simulated sensor could connect to the MQTT broker {target.host}:{target.port}")


def fleet_summary(stats: FleetStats) -> str:
    silent = f" ({stats.silent} silent)" if stats.silent else ""
    return (
        f"{stats.connected} of {stats.sensors} sensor(s) connected{silent}; "
        f"{stats.received} task message(s) received, {stats.started} run(s) started: "
        f"{stats.completed} completed, {stats.errors} failed and retryable, {stats.fatal_errors} failed for good, "
        f"{stats.cancelled} interrupted"
    )


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
    """Live view of ops/#: connection state, tasks by status, transitions, rejections, dispatchers.

    Exits 1 with one line when the broker refuses the login, or when it is not connected at the end."""
    from sensortasks.mqtt import tls_context  # noqa: PLC0415
    from sensortasks.ops.watch import watch as run_watch  # noqa: PLC0415

    settings = _settings(mqtt_url=mqtt_url)
    target = settings.mqtt

    async def run() -> WatchState:
        import signal  # noqa: PLC0415

        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGINT, stop.set)
        return await run_watch(
            host=target.host,
            port=target.port,
            username=target.username,
            password=target.password,
            tls_context=tls_context(settings.mqtt_ca_file) if target.tls else None,
            topics=settings.topics,
            seconds=seconds,
            console=console,
            stop=stop,
        )

    state = asyncio.run(run())
    if not state.link.connected:
        fail(f"not connected: {state.link.describe()}")


@app.command()
def soak(
    minutes: Annotated[float, typer.Option(min=0.1, help="How long to inject faults.")] = 10.0,
    sensors: Annotated[int, typer.Option(min=1, max=5000)] = 100,
    seed: Annotated[int, typer.Option(help="Seed of the fault schedule.")] = 1,
    workdir: Annotated[Path | None, typer.Option(help="Keep logs and the database here.")] = None,
) -> None:
    """Mixed faults (SIGKILLed dispatcher and broker, sensor reboots and outages) then an audit table."""
    from sensortasks.tools.soak import soak as run_soak  # noqa: PLC0415

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
    from sensortasks.mqtt import parse_mqtt_url  # noqa: PLC0415
    from sensortasks.tools.bench import bench, summary  # noqa: PLC0415

    target = parse_mqtt_url(mqtt_url) if mqtt_url else None
    if target is not None:
        from sensortasks.mqtt import probe  # noqa: PLC0415

        asyncio.run(probe(target.host, target.port, username=target.username, password=target.password))
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
