"""``sensortasks sensors add``: register a sensor and issue its broker credentials (database and
broker directly, no running server)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from sensortasks.cli.accounts import account_service
from sensortasks.cli.common import DatabaseUrl, err, fail, run_or_exit, settings
from sensortasks.errors import InvalidInput
from sensortasks.labels import assignments
from sensortasks.protocol.topics import MAX_ID

sensors_app = typer.Typer(help="Sensors and their broker credentials.", no_args_is_help=True)


def label_options(texts: list[str] | None, option: str = "--label") -> dict[str, str] | None:
    """Repeated ``--label KEY=VALUE`` (None when there were none); a bad one exits 2 naming it."""
    if not texts:
        return None
    try:
        return assignments(texts, field=option)
    except InvalidInput as exc:
        fail(exc.message, 2)


@sensors_app.command("add")
def sensors_add(
    serial: Annotated[int, typer.Argument(min=1, max=MAX_ID)],
    customer: Annotated[str, typer.Option(help="The customer the sensor belongs to (created if new).")],
    label: Annotated[
        list[str] | None,
        typer.Option(help="A label KEY=VALUE; repeat it. Given, the labels replace the sensor's; else it keeps them."),
    ] = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Register SERIAL for CUSTOMER and issue its broker credentials (printed once); again: new password.

    The last line is JSON, `{"serial", "mqtt", "labels"}` (`labels` as given, null if none were):
    `simulate --credentials` reads these lines."""
    from sensortasks.store.keys import KeyStore  # noqa: PLC0415

    config = settings(database_url=database_url)
    labels = label_options(label)

    async def add() -> tuple[bool, Any]:
        async with account_service(config) as accounts:
            customer_id = await KeyStore(accounts.store.db).customer_id(customer)
            return await accounts.register_sensor(serial, customer_id, labels)

    created, credentials = run_or_exit(add())
    err.print(f"sensor {serial} {'registered' if created else 'already registered'} for {customer!r}")
    mqtt = None
    if credentials is None:
        err.print("no broker admin configured (SENSORTASKS_BROKER_ADMIN_URL): no MQTT credentials issued")
    else:
        mqtt = {"username": credentials.username, "password": credentials.password, "client_id": credentials.client_id}
    print(json.dumps({"serial": serial, "mqtt": mqtt, "labels": labels}))  # noqa: T201
