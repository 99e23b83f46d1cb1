"""``sensortasks mqtt-clients``: broker accounts for backends, operators and dispatcher instances.

Like ``sensors add``, these work on the database and the broker directly (no running server):
``SENSORTASKS_DATABASE_URL`` and ``SENSORTASKS_BROKER_ADMIN_URL``. Credentials are printed
once, as the last line on stdout, in JSON.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from sensortasks.cli.common import DatabaseUrl, run_or_exit
from sensortasks.config import Settings, get_settings

if TYPE_CHECKING:  # the API layer is imported only by the commands that need it
    from sensortasks.service.accounts import AccountService, IssuedClient
    from sensortasks.store.accounts import ClientAccount

mqtt_clients_app = typer.Typer(
    help="Broker accounts of backends (command topics), operators (ops/#) and dispatcher instances.",
    no_args_is_help=True,
)
err = Console(stderr=True)


def settings_with(database_url: str | None) -> Settings:
    try:
        return Settings(database_url=database_url) if database_url else get_settings()
    except ValidationError as exc:
        err.print(f"[red]invalid configuration:[/red] {exc}")
        raise typer.Exit(2) from None


@asynccontextmanager
async def account_service(settings: Settings) -> AsyncIterator[AccountService]:
    """The accounts of the configured database and broker, closed afterwards."""
    from sensortasks.runtime import build_accounts, build_store  # noqa: PLC0415
    from sensortasks.service.accounts import AccountService  # noqa: PLC0415
    from sensortasks.store import upgrade  # noqa: PLC0415

    await upgrade(settings.database_url)
    store = build_store(settings)
    broker = build_accounts(settings)
    try:
        yield AccountService(store, settings.topics, broker)
    finally:
        if broker is not None:
            await broker.close()
        await store.db.dispose()


def _public(account: ClientAccount) -> dict[str, Any]:
    return {
        "username": account.username,
        "client_id": account.client_id,
        "kind": account.kind,
        "customer_id": account.customer_id,
        "reply_topic_prefix": account.reply_topic_prefix,
        "created_at": account.created_at.strftime("%Y-%m-%d %H:%M:%S"),
    }


@mqtt_clients_app.command("add")
def mqtt_clients_add(
    customer: Annotated[
        str | None, typer.Option(help="A backend account of this customer (created if new), for tasks/commands/*.")
    ] = None,
    ops: Annotated[bool, typer.Option("--ops", help="A read-only operator account for ops/# (for watch).")] = False,
    name: Annotated[str | None, typer.Option(help="With --ops: the account is ops-NAME (again: new password).")] = None,
    dispatcher: Annotated[
        str | None, typer.Option(metavar="INSTANCE", help="The account of dispatcher INSTANCE (again: new password).")
    ] = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Issue an account; its credentials are the last line printed (JSON, shown once)."""
    if sum((customer is not None, ops, dispatcher is not None)) != 1:
        err.print("[red]give exactly one of --customer C, --ops or --dispatcher INSTANCE[/red]")
        raise typer.Exit(2)
    if name is not None and not ops:
        err.print("[red]--name goes with --ops[/red]")
        raise typer.Exit(2)
    settings = settings_with(database_url)

    async def add() -> IssuedClient:
        from sensortasks.store.keys import KeyStore  # noqa: PLC0415

        async with account_service(settings) as accounts:
            if customer is not None:
                customer_id = await KeyStore(accounts.store.db).customer_id(customer)
                return await accounts.add_client("backend", customer_id=customer_id)
            if ops:
                return await accounts.add_client("ops", name=name)
            return await accounts.add_client("dispatcher", name=dispatcher)

    issued = run_or_exit(add(), to=err)
    account, credentials = issued.account, issued.credentials
    err.print(f"{account.kind} account {account.username}, client id {account.client_id} (password shown once)")
    print(  # noqa: T201  (plain, so scripts can take the last line)
        json.dumps(
            {
                "username": credentials.username,
                "password": credentials.password,
                "client_id": credentials.client_id,
                "reply_topic_prefix": account.reply_topic_prefix,
            }
        )
    )


@mqtt_clients_app.command("list")
def mqtt_clients_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
    database_url: DatabaseUrl = None,
) -> None:
    """Every backend, operator and dispatcher account issued here (no passwords)."""
    settings = settings_with(database_url)

    async def listed() -> list[ClientAccount]:
        async with account_service(settings) as accounts:
            return await accounts.clients.accounts()

    rows = [_public(a) for a in run_or_exit(listed(), to=err)]
    if as_json:
        print(json.dumps(rows, indent=2))  # noqa: T201
        return
    columns = ("username", "kind", "customer_id", "reply_topic_prefix", "created_at")
    table = Table(*columns)
    for row in rows:
        table.add_row(*("" if row[c] is None else str(row[c]) for c in columns))
    Console().print(table)


@mqtt_clients_app.command("remove")
def mqtt_clients_remove(username: str, database_url: DatabaseUrl = None) -> None:
    """Delete an account from the broker (disconnected at once), then its record."""
    settings = settings_with(database_url)

    async def remove() -> None:
        async with account_service(settings) as accounts:
            await accounts.remove_client(username, None, kind=None)

    run_or_exit(remove(), to=err)
    err.print(f"MQTT client {username} removed")
