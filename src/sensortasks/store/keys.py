"""Customers and their API keys: created, checked, listed and revoked.

Every check reads the database (no cache), so a revoked key authenticates nobody from the
next request on, on every instance, over REST and over the MQTT command topics alike.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from sensortasks.errors import Conflict, InvalidInput, NotFound
from sensortasks.store.engine import Database, database_down
from sensortasks.store.records import format_time, utcnow
from sensortasks.store.tables import ApiKey, Customer

log = logging.getLogger(__name__)

C = Customer.__table__  # type: ignore[attr-defined]
K = ApiKey.__table__  # type: ignore[attr-defined]
KEY_PREFIX = "stk_"
#: Stored (and listed) characters of a key: ``stk_`` and 8 random ones, 48 bits, never enough to guess it.
PREFIX_LENGTH = 12
#: A key is ``stk_`` and 43 characters; anything much longer is not worth a hash and a query.
MAX_KEY_LENGTH = 100
#: ``last_used_at`` is refreshed at most this often per key. A write on every request would
#: take SQLite's single writer lock on every read-only request, serialising readers behind
#: writers; once a minute per key costs nothing and still tells a live key from a dead one.
TOUCH_EVERY = timedelta(minutes=1)


@dataclass(frozen=True, slots=True)
class Principal:
    customer_id: int
    customer: str


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """What ``keys list`` shows of a key (the key itself is never stored)."""

    prefix: str
    customer: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None

    def public(self) -> dict[str, str | None]:
        return {
            "prefix": self.prefix,
            "customer": self.customer,
            "created_at": format_time(self.created_at),
            "last_used_at": format_time(self.last_used_at),
            "revoked_at": format_time(self.revoked_at),
        }


@dataclass(frozen=True, slots=True)
class Check:
    """The outcome of checking a key: a principal, or why not (for the log, never the key)."""

    principal: Principal | None
    reason: str = ""


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        #: key id -> monotonic time of its last ``last_used_at`` write from this process.
        self._touched: dict[int, float] = {}

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
                insert(K).values(
                    customer_id=customer_id, key_hash=hash_key(key), prefix=key[:PREFIX_LENGTH], created_at=now
                )
            )
        return key

    async def check(self, key: str) -> Check:
        """Whose `key` is, if it is a live one; refreshes its ``last_used_at`` (see TOUCH_EVERY)."""
        if not key.startswith(KEY_PREFIX) or len(key) > MAX_KEY_LENGTH:
            return Check(None, "malformed API key")
        query = (
            select(K.c.id, K.c.revoked_at, K.c.last_used_at, C.c.id.label("customer_id"), C.c.name)
            .join(C, K.c.customer_id == C.c.id)
            .where(K.c.key_hash == hash_key(key))
        )
        async with self.db.reader.connect() as conn:
            row = (await conn.execute(query)).first()
        if row is None:
            return Check(None, "unknown API key")
        if row.revoked_at is not None:
            return Check(None, "revoked API key")
        await self._touch(row.id, row.last_used_at)
        return Check(Principal(row.customer_id, row.name))

    async def authenticate(self, key: str) -> Principal | None:
        """The customer of a live `key`; None for an unknown, malformed or revoked one."""
        return (await self.check(key)).principal

    async def _touch(self, key_id: int, last_used: datetime | None) -> None:
        """Record the key's use, at most once per TOUCH_EVERY per key and per process; the
        condition in the UPDATE keeps several instances from writing it more often either."""
        now = utcnow()
        if last_used is not None and now - last_used < TOUCH_EVERY:
            return
        clock = time.monotonic()
        if clock - self._touched.get(key_id, -TOUCH_EVERY.total_seconds()) < TOUCH_EVERY.total_seconds():
            return  # a concurrent request of this process is writing it
        self._touched[key_id] = clock
        stale = or_(K.c.last_used_at.is_(None), K.c.last_used_at < now - TOUCH_EVERY)
        try:
            async with self.db.writer.begin() as conn:
                await conn.execute(update(K).where(K.c.id == key_id, stale).values(last_used_at=now))
        except Exception as exc:
            if not database_down(exc):
                raise
            log.warning("could not record the use of API key %d: %s", key_id, exc)  # bookkeeping only

    async def list_keys(self, customer: str | None = None) -> list[KeyInfo]:
        """Every key (revoked ones included), oldest first; only `customer`'s if given."""
        query = (
            select(K.c.prefix, C.c.name, K.c.created_at, K.c.last_used_at, K.c.revoked_at)
            .join(C, K.c.customer_id == C.c.id)
            .order_by(K.c.created_at, K.c.id)
        )
        if customer is not None:
            query = query.where(C.c.name == customer)
        async with self.db.reader.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [KeyInfo(*row) for row in rows]

    async def revoke(self, prefix: str) -> tuple[KeyInfo, bool]:
        """Revoke the one key whose listed prefix starts with `prefix` (or that is `prefix`, a whole key).

        Returns the key and whether it had been revoked already. `NotFound` when no key matches,
        `Conflict` when several do (nothing is revoked then).
        """
        if not prefix.startswith(KEY_PREFIX) or len(prefix) <= len(KEY_PREFIX) or len(prefix) > MAX_KEY_LENGTH:
            raise InvalidInput(f"PREFIX must be a key's start, like {KEY_PREFIX}AbCd1234 (see 'keys list')")
        if len(prefix) <= PREFIX_LENGTH:
            matches = K.c.prefix.startswith(prefix, autoescape=True)
        else:
            matches = K.c.key_hash == hash_key(prefix)
        query = (
            select(K.c.id, K.c.prefix, C.c.name, K.c.created_at, K.c.last_used_at, K.c.revoked_at)
            .join(C, K.c.customer_id == C.c.id)
            .where(matches)
            .limit(11)
        )
        async with self.db.writer.begin() as conn:
            rows = (await conn.execute(query)).all()
            if not rows:
                raise NotFound(f"no API key matches {prefix[:PREFIX_LENGTH]!r} (see 'keys list')")
            if len(rows) > 1:
                shown = ", ".join(sorted(r.prefix for r in rows)[:10])
                raise Conflict(f"{prefix!r} matches several keys ({shown}): give more characters")
            (row,) = rows
            revoked_at = row.revoked_at
            if revoked_at is None:
                revoked_at = utcnow()
                await conn.execute(update(K).where(K.c.id == row.id).values(revoked_at=revoked_at))
                log.info("API key %s of customer %r revoked", row.prefix, row.name)
        key = KeyInfo(row.prefix, row.name, row.created_at, row.last_used_at, revoked_at)
        return key, row.revoked_at is not None
