"""Broker accounts other than sensors': backends, operators and dispatcher instances (and
whether a sensor, whose account is named after its serial, is registered)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from sqlalchemy import delete, insert, select
from sqlalchemy.exc import IntegrityError

from sensortasks.errors import Conflict, NotFound
from sensortasks.store.engine import Database
from sensortasks.store.tables import MqttClient, Sensor

M = MqttClient.__table__  # type: ignore[attr-defined]
S = Sensor.__table__  # type: ignore[attr-defined]

ClientKind = Literal["backend", "ops", "dispatcher"]


@dataclass(frozen=True, slots=True)
class ClientAccount:
    username: str
    client_id: str
    kind: ClientKind
    customer_id: int | None
    reply_topic_prefix: str | None
    created_at: datetime


def _account(row: object) -> ClientAccount:
    values = dict(row._mapping)  # type: ignore[attr-defined]
    return ClientAccount(**values)


class MqttClientStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def add(self, account: ClientAccount) -> None:
        """Record a new account; a username or client id already in use is a Conflict."""
        try:
            async with self.db.writer.begin() as conn:
                await conn.execute(
                    insert(M).values(
                        username=account.username,
                        client_id=account.client_id,
                        kind=account.kind,
                        customer_id=account.customer_id,
                        reply_topic_prefix=account.reply_topic_prefix,
                        created_at=account.created_at,
                    )
                )
        except IntegrityError:
            raise Conflict(f"MQTT client {account.username!r} already exists") from None

    async def get(self, username: str, *, customer_id: int | None = None) -> ClientAccount:
        """One account; with `customer_id`, only that customer's (another's is NotFound)."""
        query = select(M).where(M.c.username == username)
        if customer_id is not None:
            query = query.where(M.c.customer_id == customer_id)
        async with self.db.reader.connect() as conn:
            row = (await conn.execute(query)).first()
        if row is None:
            raise NotFound(f"MQTT client {username!r} not found")
        return _account(row)

    async def accounts(self, *, customer_id: int | None = None, kind: ClientKind | None = None) -> list[ClientAccount]:
        query = select(M).order_by(M.c.created_at, M.c.username)
        if customer_id is not None:
            query = query.where(M.c.customer_id == customer_id)
        if kind is not None:
            query = query.where(M.c.kind == kind)
        async with self.db.reader.connect() as conn:
            return [_account(row) for row in await conn.execute(query)]

    async def remove(self, username: str, *, customer_id: int | None = None) -> None:
        query = delete(M).where(M.c.username == username)
        if customer_id is not None:
            query = query.where(M.c.customer_id == customer_id)
        async with self.db.writer.begin() as conn:
            if (await conn.execute(query)).rowcount == 0:
                raise NotFound(f"MQTT client {username!r} not found")

    async def reply_prefixes(self, customer_id: int) -> list[str]:
        """The reply topic prefixes of the customer's backend accounts: the only places
        command replies for that customer may go."""
        query = select(M.c.reply_topic_prefix).where(
            M.c.customer_id == customer_id, M.c.kind == "backend", M.c.reply_topic_prefix.is_not(None)
        )
        async with self.db.reader.connect() as conn:
            return [str(p) for p in (await conn.execute(query)).scalars()]

    async def sensor_registered(self, serial: int, customer_id: int | None) -> bool:
        """Whether `serial` is registered to the customer (to nobody's when there are no customers),
        under the same rule as `TaskStore.unregister_sensor`."""
        owner = S.c.customer_id.is_(None) if customer_id is None else S.c.customer_id == customer_id
        query = select(S.c.serial).where(S.c.serial == serial, S.c.registered_at.is_not(None), owner)
        async with self.db.reader.connect() as conn:
            return (await conn.execute(query)).first() is not None
