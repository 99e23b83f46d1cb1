"""Answers to idempotent requests, per customer and key, for ``Idempotency-Key`` and the
MQTT ``idempotency-key`` user property (how long they are kept is the service's call)."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import delete, insert, select

from sensortasks.store.base import I, StoreBase
from sensortasks.store.records import Remembered


class IdempotencyQueries(StoreBase):
    async def remembered(self, customer_id: int, key: str) -> Remembered | None:
        async with self._read() as conn:
            row = (await conn.execute(select(I).where(I.c.customer_id == customer_id, I.c.key == key))).first()
        return None if row is None else Remembered(row.request_hash, row.status_code, row.response)

    async def remember(
        self, customer_id: int, key: str, answer: Remembered, *, now: datetime, keep: timedelta
    ) -> Remembered:
        """Store an answer; if another request stored one first, return that one instead.
        Answers older than `keep` are deleted on the way."""
        async with self._write() as conn:
            existing = (await conn.execute(select(I).where(I.c.customer_id == customer_id, I.c.key == key))).first()
            if existing is not None:
                return Remembered(existing.request_hash, existing.status_code, existing.response)
            await conn.execute(delete(I).where(I.c.created_at < now - keep))
            await conn.execute(
                insert(I).values(
                    customer_id=customer_id,
                    key=key,
                    request_hash=answer.request_hash,
                    status_code=answer.status_code,
                    response=answer.response,
                    created_at=now,
                )
            )
        return answer
