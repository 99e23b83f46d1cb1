"""Customers and their API keys."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from sensortasks.store.engine import Database
from sensortasks.store.records import utcnow
from sensortasks.store.tables import ApiKey, Customer

C = Customer.__table__  # type: ignore[attr-defined]
K = ApiKey.__table__  # type: ignore[attr-defined]
KEY_PREFIX = "stk_"


@dataclass(frozen=True, slots=True)
class Principal:
    customer_id: int
    customer: str


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    @staticmethod
    async def _customer(conn: AsyncConnection, customer: str) -> int:
        customer_id = (await conn.execute(select(C.c.id).where(C.c.name == customer))).scalar()
        if customer_id is None:
            result = await conn.execute(insert(C).values(name=customer, created_at=utcnow()).returning(C.c.id))
            customer_id = result.scalar_one()
        return int(customer_id)

    async def customer_id(self, customer: str) -> int:
        """The id of `customer`, created if new."""
        async with self.db.writer.begin() as conn:
            return await self._customer(conn, customer)

    async def create_key(self, customer: str) -> str:
        """Create `customer` if new and return a fresh key (shown once, stored hashed)."""
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        now = utcnow()
        async with self.db.writer.begin() as conn:
            customer_id = await self._customer(conn, customer)
            await conn.execute(
                insert(K).values(customer_id=customer_id, key_hash=hash_key(key), prefix=key[:12], created_at=now)
            )
        return key

    async def authenticate(self, key: str) -> Principal | None:
        query = select(C.c.id, C.c.name).join(K, K.c.customer_id == C.c.id).where(K.c.key_hash == hash_key(key))
        async with self.db.reader.connect() as conn:
            row = (await conn.execute(query)).first()
        return None if row is None else Principal(row.id, row.name)
