"""``sensortasks keys ...``: customers' API keys, on the database directly (no running server)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
from rich.table import Table

from sensortasks.cli.common import DatabaseUrl, console, err, run_or_exit, settings

if TYPE_CHECKING:
    from sensortasks.store.keys import KeyStore

T = TypeVar("T")

keys_app = typer.Typer(help="Customers' API keys.", no_args_is_help=True)


def _with_keys(database_url: str | None, operation: Callable[[KeyStore], Awaitable[T]]) -> T:
    """Run `operation` on the key store of the configured database (migrated first)."""
    from sensortasks.store import open_database, upgrade  # noqa: PLC0415
    from sensortasks.store.keys import KeyStore  # noqa: PLC0415

    config = settings(database_url=database_url)

    async def run() -> T:
        await upgrade(config.database_url)
        db = open_database(config.database_url)
        try:
            return await operation(KeyStore(db))
        finally:
            await db.dispose()

    return run_or_exit(run())


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
