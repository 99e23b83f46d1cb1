"""``sensortasks serve`` and ``sensortasks db upgrade``: run the server, migrate its database."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from sensortasks.cli.common import DatabaseUrl, LogFormat, LogLevel, MqttUrl, console, fail, settings, setup_logging

db_app = typer.Typer(help="Database schema.", no_args_is_help=True)


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
    config = settings(http_host=host, http_port=port, mqtt_url=mqtt_url, database_url=database_url, instance=instance)
    asyncio.run(run_server(config, api=not dispatcher_only, dispatcher=not api_only))


@db_app.command("upgrade")
def db_upgrade(database_url: DatabaseUrl = None) -> None:
    """Create or migrate the schema to the latest version."""
    from sensortasks.store import upgrade  # noqa: PLC0415

    config = settings(database_url=database_url)
    asyncio.run(upgrade(config.database_url))
    console.print("database is up to date")
