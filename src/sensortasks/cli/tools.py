"""``sensortasks bench`` and ``sensortasks soak``: the performance and fault-injection runs."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from sensortasks.cli.common import err, fail, settings

Instances = Annotated[
    int,
    typer.Option(min=1, max=16, help="sensortasks serve processes: several share one share group and need --database."),
]
Database = Annotated[
    str | None,
    typer.Option(
        "--database",
        help="A PostgreSQL server to run on, as postgresql+asyncpg://user@host:port/DB. The tool creates a "
        "scratch database DB_<tool>_<hex> there and drops it at the end, Ctrl-C included; DB itself is only "
        "connected to, never read or written. Default: a new SQLite file of the tool's own.",
    ),
]


def _database_server(database: str | None, instances: int) -> str | None:
    """The PostgreSQL server URL to make a scratch database on, or None for SQLite."""
    from sensortasks.tools.deployment import is_postgres  # noqa: PLC0415

    if database is None:
        if instances > 1:
            fail("--instances above 1 needs --database postgresql+asyncpg://...: instances share PostgreSQL", 2)
        return None
    url = settings(database_url=database).database_url
    if not is_postgres(url):
        fail(f"--database: {database!r} is not a PostgreSQL URL (postgresql+asyncpg://user@host:port/db)", 2)
    return url


def soak(
    minutes: Annotated[float, typer.Option(min=0.1, help="How long to inject faults.")] = 10.0,
    sensors: Annotated[int, typer.Option(min=1, max=5000)] = 100,
    seed: Annotated[int, typer.Option(help="Seed of the fault schedule.")] = 1,
    workdir: Annotated[Path | None, typer.Option(help="Keep logs (and the SQLite database) here.")] = None,
    instances: Instances = 1,
    database: Database = None,
    freeze_minutes: Annotated[
        float, typer.Option(min=0.01, help="With several instances: how long one is frozen (at most half the run).")
    ] = 2.0,
) -> None:
    """Mixed faults (SIGKILLed dispatcher instances and broker, one instance frozen with SIGSTOP
    for minutes, sensor reboots and outages) then an audit table; exit 1 when a promise broke.

    Settings the tool does not choose itself, such as SENSORTASKS_INSTANCE_TIMEOUT_S and
    SENSORTASKS_SESSION_EXPIRY_S, are passed from the environment to every instance."""
    from sensortasks.tools.soak import SoakOptions  # noqa: PLC0415
    from sensortasks.tools.soak import soak as run_soak  # noqa: PLC0415

    server = _database_server(database, instances)
    options = SoakOptions(minutes, sensors, seed, instances, freeze_minutes)
    report = run_soak(options, database=server, workdir=workdir, say=err.print)
    for line in report.lines():
        print(line)  # noqa: T201
    if report.audit.broken:
        raise typer.Exit(1)


def bench(
    tasks: Annotated[int, typer.Option(min=1, max=1_000_000, help="Tasks to run through.")] = 10_000,
    sensors: Annotated[int, typer.Option(min=1, max=10_000, help="Simulated sensors.")] = 100,
    mqtt_url: Annotated[
        str | None, typer.Option("--mqtt-url", help="Use this broker instead of starting one with nodelay on.")
    ] = None,
    instances: Instances = 1,
    database: Database = None,
    paced: Annotated[
        bool,
        typer.Option(
            "--paced",
            help="Then pace the product and raw paho at half the product's rate (or --paced-rate): "
            "dispatch latency of each.",
        ),
    ] = False,
    backlog: Annotated[
        int,
        typer.Option(min=0, max=10_000_000, help="Historic tasks put in the product's database before its run."),
    ] = 0,
    resume: Annotated[
        int,
        typer.Option(
            min=0, max=1_000_000, help="kill -9 serve, add this many Pending tasks, restart: seconds to dispatch."
        ),
    ] = 0,
    bulk_during: Annotated[
        int,
        typer.Option(
            min=0, max=1_000_000, help="One bulk of this many tasks during a paced run: how late its events come."
        ),
    ] = 0,
    paced_rate: Annotated[
        float | None,
        typer.Option(
            min=1.0,
            help="Tasks/s of --paced and --bulk-during instead of half the saturated rate: runs of different "
            "code compared at one rate.",
        ),
    ] = None,
) -> None:
    """Lifecycles per second, latency, CPU per lifecycle of every process and serve's peak memory,
    against the raw MQTT flows of the same run on the same broker; the opt-in scenarios after it.
    Everything goes to stdout; the last line is `ratio: X.XX`. Settings the tool does not choose
    itself are passed from the environment to every instance."""
    from sensortasks.mqtt import parse_mqtt_url, probe  # noqa: PLC0415
    from sensortasks.tools.bench import bench as run_bench  # noqa: PLC0415
    from sensortasks.tools.bench import summary  # noqa: PLC0415
    from sensortasks.tools.scenarios import Scenarios  # noqa: PLC0415

    if paced_rate is not None and not (paced or bulk_during):
        fail("--paced-rate sets the rate of --paced or --bulk-during: give one of them", 2)
    server = _database_server(database, instances)
    target = parse_mqtt_url(mqtt_url) if mqtt_url else None
    if target is not None:
        asyncio.run(probe(target.host, target.port, username=target.username, password=target.password))
    report = run_bench(
        tasks=tasks,
        sensors=sensors,
        mqtt_host=target.host if target else None,
        mqtt_port=target.port if target else None,
        instances=instances,
        database=server,
        scenarios=Scenarios(
            paced=paced, backlog=backlog, resume=resume, bulk_during=bulk_during, paced_rate=paced_rate
        ),
        say=_say,
    )
    for line in summary(report):
        print(line)  # noqa: T201


def _say(line: str) -> None:
    """Progress, on stdout with the report: a bench leaves stderr to errors."""
    print(line, flush=True)  # noqa: T201
