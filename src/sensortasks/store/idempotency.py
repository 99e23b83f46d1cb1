"""Answers to idempotent requests, per customer and key, for ``Idempotency-Key`` and the
MQTT ``idempotency-key`` user property (how long they are kept is the service's call).

A request *claims* its key before it runs, so that two instances receiving the same request
at the same moment create one task, not two: the claim is the key's row without an answer yet
(`IN_PROGRESS`), inserted only if no row exists (``INSERT ... ON CONFLICT DO NOTHING``, so the
loser of a race gets the winner's row, not an IntegrityError). Its holder then stores the
answer in it (`remember`) or, if the request failed, deletes it (`release`) for a retry to run.
A claim older than `stale` is from a request that died with it and is taken over.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from sensortasks.store.base import I, StoreBase
from sensortasks.store.records import Remembered

log = logging.getLogger(__name__)

#: The `status_code` of a claimed key whose request is still running: it has no answer yet.
IN_PROGRESS = 0


def _key(customer_id: int, key: str) -> tuple[Any, ...]:
    return (I.c.customer_id == customer_id, I.c.key == key)


def _remembered(row: Any) -> Remembered:  # noqa: ANN401
    return Remembered(row.request_hash, row.status_code, row.response)


async def _insert_if_absent(conn: AsyncConnection, values: dict[str, Any]) -> bool:
    """Insert the row unless its key exists (then waiting for a claim being inserted to commit)."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    result = await conn.execute(dialect.insert(I).values(values).on_conflict_do_nothing())
    return bool(result.rowcount == 1)


class IdempotencyQueries(StoreBase):
    async def remembered(self, customer_id: int, key: str) -> Remembered | None:
        """The row of `key`: an answer, a claim (`IN_PROGRESS`), or None."""
        async with self._read() as conn:
            row = (await conn.execute(select(I).where(*_key(customer_id, key)))).first()
        return None if row is None else _remembered(row)

    async def claim(
        self, customer_id: int, key: str, request_hash: str, *, now: datetime, keep: timedelta, stale: timedelta
    ) -> Remembered | None:
        """Claim `key` for a request about to run: None when the caller now holds it (and must
        `remember` its answer or `release` it), else the row that is there (an answer, or
        another request's claim). Answers older than `keep` are deleted on the way."""
        claimed = {"request_hash": request_hash, "status_code": IN_PROGRESS, "response": "", "created_at": now}
        async with self._write() as conn:
            await conn.execute(delete(I).where(I.c.created_at < now - keep))
            while True:
                if await _insert_if_absent(conn, {"customer_id": customer_id, "key": key} | claimed):
                    return None
                dead = (I.c.status_code == IN_PROGRESS, I.c.created_at < now - stale)
                if (await conn.execute(update(I).where(*_key(customer_id, key), *dead).values(claimed))).rowcount:
                    log.warning("idempotency key %r of customer %s: taking over a stale claim", key, customer_id)
                    return None
                row = (await conn.execute(select(I).where(*_key(customer_id, key)))).first()
                if row is not None:
                    return _remembered(row)
                # Released between our statements (PostgreSQL): claim it again.

    async def remember(self, customer_id: int, key: str, answer: Remembered) -> Remembered:
        """Store the answer in a claimed key; if another request answered it first (it took over
        a claim it thought stale), return that answer instead."""
        async with self._write() as conn:
            answered = await conn.execute(
                update(I)
                .where(*_key(customer_id, key), I.c.status_code == IN_PROGRESS)
                .values(status_code=answer.status_code, response=answer.response)
            )
            if answered.rowcount:
                return answer
            row = (await conn.execute(select(I).where(*_key(customer_id, key)))).first()
        return answer if row is None else _remembered(row)

    async def release(self, customer_id: int, key: str, *, claimed_at: datetime) -> None:
        """Delete the claim made at `claimed_at` (a failed request's), unless it was taken over."""
        async with self._write() as conn:
            await conn.execute(
                delete(I).where(*_key(customer_id, key), I.c.status_code == IN_PROGRESS, I.c.created_at == claimed_at)
            )
