"""The plumbing every part of `TaskStore` shares: connections, the SQLite writer queue,
row locks, chunked IN lists and the one guarded write of a transaction's `Changes`.

Writes follow one pattern: load the rows inside the transaction (locked with
``FOR UPDATE`` on PostgreSQL; SQLite's ``BEGIN IMMEDIATE`` already serialises
writers), let the pure domain decide, then write all changes with one guarded
``UPDATE ... WHERE id = :id AND status_id = :loaded AND attempt_count = :loaded``
executemany and one INSERT of events. A batch of N reports costs a handful of
statements, not N round trips, and a guard that matches fewer rows than expected
rolls the whole batch back (`StaleBatch`) to be retried on fresh rows.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import ColumnElement, Select, Table, and_, bindparam, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from sensortasks.domain import RetryPolicy, TaskStatus
from sensortasks.errors import SensortasksError
from sensortasks.store.changes import Changes, Work
from sensortasks.store.engine import Database
from sensortasks.store.notify import notify
from sensortasks.store.tables import IdempotencyKey, Rollout, RolloutTarget, Sensor, Task, TaskEvent

T = Task.__table__  # type: ignore[attr-defined]
E = TaskEvent.__table__  # type: ignore[attr-defined]
S = Sensor.__table__  # type: ignore[attr-defined]
I = IdempotencyKey.__table__  # type: ignore[attr-defined]  # noqa: E741
R = Rollout.__table__  # type: ignore[attr-defined]
RT = RolloutTarget.__table__  # type: ignore[attr-defined]

ACTIVE = (TaskStatus.PENDING, TaskStatus.ONGOING)
#: Columns a state change may write; the guarded UPDATE sets those a transaction changed.
MUTABLE = (
    "status_id",
    "attempt_count",
    "progress",
    "error",
    "result",
    "updated_at",
    "started_at",
    "completed_at",
    "sent_at",
    "not_before",
    "deadline_at",
)
#: Largest IN (...) list sent in one statement.
IN_CHUNK = 500


@functools.cache
def _guarded_update(columns: tuple[str, ...]) -> Any:  # noqa: ANN401
    """The guarded UPDATE of these columns, one statement object per set of them (a claim
    writes 4 columns, a completion 7: SQLite rewrites an index of every column in the SET list,
    so writing all of `MUTABLE` for a claim took 21 µs a row against 12 for its own 4)."""
    if unknown := set(columns) - set(MUTABLE):
        raise ValueError(f"a state change cannot write {sorted(unknown)}")
    return (
        update(T)
        .where(
            T.c.id == bindparam("g_id"),
            T.c.status_id == bindparam("g_status"),
            T.c.attempt_count == bindparam("g_attempt"),
        )
        .values({name: bindparam(f"v_{name}", type_=T.c[name].type) for name in columns})
    )


class StaleBatch(SensortasksError):
    """A guarded update matched fewer rows than loaded: another writer got there first."""


def chunks(items: Sequence[int], size: int = IN_CHUNK) -> Iterable[Sequence[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def owned(query: Select[Any], customer_id: int | None, table: Table = T) -> Select[Any]:
    """Only the customer's tasks, or rows of `table` (every row when there are no customers)."""
    return query if customer_id is None else query.where(table.c.customer_id == customer_id)


def registered_to(customer_id: int | None) -> ColumnElement[bool]:
    """Sensors registered to the customer (with no customers: registered, to nobody)."""
    owner = S.c.customer_id.is_(None) if customer_id is None else S.c.customer_id == customer_id
    return and_(S.c.registered_at.is_not(None), owner)


def labelled(labels: Mapping[str, str]) -> list[ColumnElement[bool]]:
    """Sensors carrying every label (JSON element access: the same SQL shape on both databases)."""
    return [S.c.labels[key].as_string() == value for key, value in labels.items()]


class StoreBase:
    """Connections and locking, shared by the per-concern parts of `TaskStore`."""

    def __init__(self, db: Database, policy: RetryPolicy | None = None, *, origin: str = "") -> None:
        self.db = db
        self.policy = policy or RetryPolicy()
        #: Who writes (the instance name): other instances ignore no wake-up of theirs.
        self.origin = origin
        self._lock_rows = not db.is_sqlite  # SQLite's BEGIN IMMEDIATE already holds the lock
        # SQLite has one writer. Queue this process's writers here instead of letting them
        # collide in SQLite's busy handler, which sleeps in millisecond steps.
        self._write_lock = asyncio.Lock() if db.is_sqlite else None

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        if self._write_lock is None:
            async with self.db.writer.begin() as conn:
                yield conn
            return
        async with self._write_lock, self.db.writer.begin() as conn:
            yield conn

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncConnection]:
        async with self.db.reader.connect() as conn:
            yield conn

    async def _write_changes(self, conn: AsyncConnection, changes: Changes) -> None:
        """Write changed rows with one guarded executemany, and the events; `StaleBatch` if a
        guard missed. Unpublished events wake the other instances' outboxes (`notify`)."""
        shapes: dict[tuple[str, ...], list[Work]] = {}
        for work in changes.works.values():
            if work.dirty:
                shapes.setdefault(tuple(sorted(work.dirty)), []).append(work)
        for columns, works in shapes.items():
            params = [
                {"g_id": w.id, "g_status": w.guard_status, "g_attempt": w.guard_attempt}
                | {f"v_{name}": w.row[name] for name in columns}
                for w in works
            ]
            result = await conn.execute(_guarded_update(columns), params)
            if conn.dialect.supports_sane_multi_rowcount and result.rowcount != len(works):
                raise StaleBatch(f"{len(works) - result.rowcount} of {len(works)} rows changed meanwhile")
        if changes.events:
            await conn.execute(insert(E), changes.events)
            if not all(e["published"] for e in changes.events):
                await notify(conn, self.origin, ())

    def _locked(self, query: Select[Any], *, skip_locked: bool = False) -> Select[Any]:
        return query.with_for_update(skip_locked=skip_locked) if self._lock_rows else query

    async def _load(
        self, conn: AsyncConnection, query: Select[Any], changes: Changes, params: Mapping[str, Any] | None = None
    ) -> list[Work]:
        return [changes.load(dict(row._mapping)) for row in await conn.execute(query, params)]

    async def ping(self) -> None:
        async with self._read() as conn:
            await conn.execute(select(1))
