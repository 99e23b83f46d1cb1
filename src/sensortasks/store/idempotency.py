"""Answers to idempotent requests, per customer and key, for ``Idempotency-Key`` and the
MQTT ``idempotency-key`` user property (how long they are kept is the service's call).

A request *claims* its key before it runs, so that two instances receiving the same request
at the same moment create one task, not two: the claim is the key's row without an answer yet
(`IN_PROGRESS`), inserted only if no row exists (``INSERT ... ON CONFLICT DO NOTHING``, so the
loser of a race gets the winner's row, not an IntegrityError). Its holder then creates the
tasks and stores the answer in the same transaction (`create_answering`) or, if the request
failed, deletes the claim (`release`) for a retry to run. A claim older than `stale` is from a
request that died with it and is taken over.

Why one transaction: were the answer stored after the tasks' commit, a process killed (or a
connection lost) between the two would leave the key claimed, and the retry that takes the
stale claim over would create the tasks a second time. Committed together, the tasks exist
exactly when their answer does; and a request whose claim was taken over while it ran (it
looked dead) creates nothing, since its transaction first checks that the claim is still its own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from sensortasks.store.base import I, StoreBase
from sensortasks.store.records import NewTask, Remembered
from sensortasks.store.tasks import Created, insert_tasks

log = logging.getLogger(__name__)

#: The `status_code` of a claimed key whose request is still running: it has no answer yet.
IN_PROGRESS = 0


#: How a request answers, ``(status_code, response)``, from the tasks it created. It runs inside
#: their transaction (holding SQLite's write lock): it must be quick and do no I/O.
Answer = Callable[[Created], tuple[int, str]]


@dataclass(frozen=True, slots=True)
class Claim:
    """A key the caller holds: `claim` returned None when called with these values."""

    #: The key's owner, as in `claim` (0 without customers).
    customer_id: int
    key: str
    request_hash: str
    claimed_at: datetime


def _key(customer_id: int, key: str) -> tuple[Any, ...]:
    return (I.c.customer_id == customer_id, I.c.key == key)


def _held(claim: Claim) -> tuple[Any, ...]:
    """The claim's row, unless it was answered or taken over since."""
    return (*_key(claim.customer_id, claim.key), I.c.status_code == IN_PROGRESS, I.c.created_at == claim.claimed_at)


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
        `create_answering` or `release` it), else the row that is there (an answer, or
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

    async def create_answering(
        self, claim: Claim, tasks: Sequence[NewTask], answer: Answer, *, customer_id: int | None, now: datetime
    ) -> Remembered | None:
        """Create `tasks` (as `TaskQueries.create`) and store `answer(created tasks)` in `claim`,
        in one transaction.

        None, and nothing created, if the claim is no longer the caller's: another request took
        it over as stale, and will answer (or has answered) it; ask `claim` again. The claim's row
        is locked first (PostgreSQL; SQLite's writer holds the database), so a takeover cannot
        slip in before the answer is stored."""
        async with self._write() as conn:
            if (await conn.execute(self._locked(select(I.c.key).where(*_held(claim))))).first() is None:
                return None
            created = await conn.run_sync(insert_tasks, tasks, customer_id=customer_id, now=now, origin=self.origin)
            answered = Remembered(claim.request_hash, *answer(created))
            await conn.execute(
                update(I).where(*_held(claim)).values(status_code=answered.status_code, response=answered.response)
            )
        return answered

    async def release(self, claim: Claim) -> None:
        """Delete the claim of a failed request, unless it was taken over."""
        async with self._write() as conn:
            await conn.execute(delete(I).where(*_held(claim)))
