"""``sensortasks sensors add``: register a sensor and issue its broker credentials (database and
broker directly, no running server)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from sensortasks.cli.accounts import account_service
from sensortasks.cli.common import DatabaseUrl, err, run_or_exit, settings
from sensortasks.protocol.topics import MAX_ID

sensors_app = typer.Typer(help="Sensors and their broker credentials.", no_args_is_help=True)


@sensors_app.command("add")
def sensors_add(
    serial: Annotated[int, typer.Argument(min=1, max=MAX_ID)],
    customer: Annotated[str, typer.Option(help="The customer the sensor belongs to (created if new).")],
    database_url: DatabaseUrl = None,
) -> None:
    """Register SERIAL for CUSTOMER and issue its broker credentials (printed once); again: new password."""
    from sensortasks.store.keys import KeyStore  # noqa: PLC0415

    config = settings(database_url=database_url)

    async def add() -> tuple[bool, Any]:
        async with account_service(config) as accounts:
            customer_id = await KeyStore(accounts.store.db).customer_id(customer)
            return await accounts.register_sensor(serial, customer_id)

    created, credentials = run_or_exit(add())
    err.print(f"sensor {serial} {'registered' if created else 'already registered'} for {customer!r}")
    if credentials is None:
        err.print("no broker admin configured (SENSORTASKS_BROKER_ADMIN_URL): no MQTT credentials issued")
        print(json.dumps({"serial": serial, "mqtt": None}))  # noqa: T201
    else:
        mqtt = {"username": credentials.username, "password": credentials.password, "client_id": credentials.client_id}
        print(json.dumps({"serial": serial, "mqtt": mqtt}))  # noqa: T201
