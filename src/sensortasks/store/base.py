"""The plumbing every part of `TaskStore` shares: connections, the SQLite writer queue,
row locks, chunked IN lists and the one guarded write of a transaction's `Changes`.

Writes follow one pattern: load the rows inside the transaction (locked with
``FOR UPDATE`` on PostgreSQL; SQLite's ``BEGIN IMMEDIATE`` already serialises
writers), let the pure domain decide, then write all changes with one guarded
``UPDATE ... WHERE id = :id AND status_id = :loaded AND attempt_count = :loaded``
executemany and one INSERT of events. A batch of N reports costs a handful of
statements, not N round trips, and a guard that matches fewer rows than expected
rolls the whole batch back (`StaleBatch`) to be retried on fresh rows.

Transactions on the hot path are synchronous functions of one connection, run by
`StoreBase._transact`: on SQLite whole on the writer thread (`store.engine`), on PostgreSQL
on the asyncio connection through SQLAlchemy's greenlet bridge (``run_sync``). The helpers
every write shares (`insert_events`, `StoreBase._write_changes`, ...) are synchronous too;
the other transactions, still ``async with self._write()``, call them through ``run_sync``.

The commit feed (`StoreBase.watch_commits`): every write transaction collects the unpublished
events it inserts, with their ids, in a buffer on its connection (``conn.info``); once it has
committed, the one listener gets them, in commit order, and nothing of a transaction rolled
back. The dispatcher's outbox publishes from it instead of reading the database each round.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, Concatenate, ParamSpec, TypeVar

from sqlalchemy import ColumnElement, Connection, Engine, Select, Table, and_, bindparam, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from sensortasks.domain import RetryPolicy, TaskStatus
from sensortasks.errors import SensortasksError
from sensortasks.store.changes import Changes, Work
from sensortasks.store.engine import Database
from sensortasks.store.interface import CommitListener
from sensortasks.store.notify import notify
from sensortasks.store.records import Transition
from sensortasks.store.rows import insert_rows, update_rows
from sensortasks.store.tables import IdempotencyKey, Rollout, RolloutTarget, Sensor, Task, TaskEvent

T = Task.__table__  # type: ignore[attr-defined]
E = TaskEvent.__table__  # type: ignore[attr-defined]
S = Sensor.__table__  # type: ignore[attr-defined]
I = IdempotencyKey.__table__  # type: ignore[attr-defined]  # noqa: E741
R = Rollout.__table__  # type: ignore[attr-defined]
RT = RolloutTarget.__table__  # type: ignore[attr-defined]

log = logging.getLogger(__name__)
Out = TypeVar("Out")
P = ParamSpec("P")

ACTIVE = (TaskStatus.PENDING, TaskStatus.ONGOING)
#: Where a write transaction's connection keeps the unpublished events it inserted (`insert_events`).
_FEED = "sensortasks.commit_feed"
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
#: What a guarded UPDATE matches: the row as loaded (`Work`).
_GUARDS = ("id", "status_id", "attempt_count")
#: Largest IN (...) list sent in one statement.
IN_CHUNK = 500


def _writable(columns: Iterable[str]) -> tuple[str, ...]:
    """The columns a transaction changed, in one order, checked against `MUTABLE`. The guarded
    UPDATE writes only these (a claim 4 columns, a completion 7): SQLite rewrites an index of
    every column in the SET list, so writing all of `MUTABLE` for a claim took 21 µs a row
    against 12 for its own 4."""
    ordered = tuple(sorted(columns))
    if unknown := set(ordered) - set(MUTABLE):
        raise ValueError(f"a state change cannot write {sorted(unknown)}")
    return ordered


@functools.cache
def _guarded_update(columns: tuple[str, ...]) -> Any:  # noqa: ANN401
    """PostgreSQL's guarded UPDATE of these columns, one statement object per set of them
    (SQLite's is `store.rows.update_rows`)."""
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


_LAST_ROWID = select(func.last_insert_rowid())


Feed = list[tuple[int, Transition]]


def _feed_of(conn: Connection) -> Feed | None:
    feed = conn.info.get(_FEED)
    return feed if isinstance(feed, list) else None


def _in_transaction(engine: Engine, feed: Feed | None, body: Callable[[Connection], Out]) -> Out:
    """`body(conn)` in one transaction of `engine`, on the calling thread (SQLite's writer)."""
    with engine.begin() as conn:
        conn.info[_FEED] = feed  # set at every start, as in `StoreBase._write`
        result = body(conn)
        conn.info[_FEED] = None
    return result


def _inserted_ids(conn: Connection, events: Sequence[dict[str, Any]]) -> list[int]:
    """Insert `events` with one executemany; their ids, in order. SQLite: the writer holds the
    database (``BEGIN IMMEDIATE``) and each row takes the next rowid, so the ids are the ones
    up to ``last_insert_rowid()`` (the reasoning of `store.tasks._insert_in_order`).
    PostgreSQL: ``RETURNING`` in parameter order."""
    if conn.dialect.name == "sqlite":
        insert_rows(conn, E, events)
        last = int(conn.execute(_LAST_ROWID).scalar_one())
        return list(range(last - len(events) + 1, last + 1))
    result = conn.execute(insert(E).returning(E.c.id, sort_by_parameter_order=True), events)
    return [int(event_id) for event_id in result.scalars()]


def insert_events(conn: Connection, events: Sequence[dict[str, Any]], transitions: Sequence[Transition]) -> None:
    """Insert task events; the unpublished ones (in order, one for each of `transitions`) go
    into the transaction's commit feed with their ids, if it has one (a listener watches)."""
    feed = _feed_of(conn)
    if feed is None or not transitions:
        insert_rows(conn, E, events)
        return
    ids = _inserted_ids(conn, events)
    unpublished = [event_id for event_id, event in zip(ids, events, strict=True) if not event["published"]]
    feed.extend(zip(unpublished, transitions, strict=True))


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
        self._on_commit: CommitListener | None = None

    def watch_commits(self, listener: CommitListener) -> None:
        """Call `listener` with ``(event_id, transition)`` for the unpublished events of every
        write transaction of this store, right after it commits, in commit order (module
        docstring). One listener: a later call replaces it."""
        self._on_commit = listener

    async def _transact(
        self, body: Callable[Concatenate[Connection, P], Out], *args: P.args, **kwargs: P.kwargs
    ) -> Out:
        """``body(conn, *args, **kwargs)`` as one write transaction (module docstring), its commit
        fed to the listener.

        On SQLite a cancelled caller does not cut the transaction short: the thread finishes it,
        and what it committed is fed before the cancellation goes on."""
        if self.db.thread_writer is None or self.db.writer_thread is None or self._write_lock is None:
            async with self._write() as conn:
                return await conn.run_sync(body, *args, **kwargs)
        feed: Feed = []
        fed = feed if self._on_commit is not None else None

        def bound(conn: Connection) -> Out:
            return body(conn, *args, **kwargs)

        run = functools.partial(_in_transaction, self.db.thread_writer, fed, bound)
        async with self._write_lock:
            done = asyncio.get_running_loop().run_in_executor(self.db.writer_thread, run)
            try:
                result = await asyncio.shield(done)
            except asyncio.CancelledError:
                await asyncio.wait([done])
                if done.exception() is None:
                    self._committed(feed)
                raise
        self._committed(feed)
        return result

    def _committed(self, feed: Feed) -> None:
        """Hand a committed transaction's unpublished events to the listener, if there are any."""
        if feed and self._on_commit is not None:
            try:
                self._on_commit(feed)
            except Exception:  # the commit stands; the outbox reads what its feed lost
                log.exception("the commit listener failed on %d events", len(feed))

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        feed: Feed = []
        async with contextlib.AsyncExitStack() as stack:
            if self._write_lock is not None:
                await stack.enter_async_context(self._write_lock)
            conn = await stack.enter_async_context(self.db.writer.begin())
            # Set at every start (so nothing stale is left from a failed one). Never read in a
            # `finally`: the connection of a cancelled statement refuses even that.
            conn.info[_FEED] = feed if self._on_commit is not None else None
            yield conn
            conn.info[_FEED] = None
        # Committed (an exception rolled back and skipped this), and the writer lock is free;
        # no await since, so the next writer has not committed yet.
        self._committed(feed)

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncConnection]:
        async with self.db.reader.connect() as conn:
            yield conn

    def _write_changes(self, conn: Connection, changes: Changes) -> None:
        """Write changed rows with one guarded executemany, and the events; `StaleBatch` if a
        guard missed. Unpublished events wake the other instances' outboxes (`notify`)."""
        shapes: dict[tuple[str, ...], list[Work]] = {}
        for work in changes.works.values():
            if work.dirty:
                shapes.setdefault(_writable(work.dirty), []).append(work)
        for columns, works in shapes.items():
            if self.db.is_sqlite:
                values = [[w.row[name] for name in columns] + [w.id, w.guard_status, w.guard_attempt] for w in works]
                changed = update_rows(conn, T, columns, _GUARDS, values)
            else:
                params = [
                    {"g_id": w.id, "g_status": w.guard_status, "g_attempt": w.guard_attempt}
                    | {f"v_{name}": w.row[name] for name in columns}
                    for w in works
                ]
                result = conn.execute(_guarded_update(columns), params)
                # asyncpg's executemany counts nothing; there the loaded rows are locked anyway.
                changed = result.rowcount if conn.dialect.supports_sane_multi_rowcount else len(works)
            if changed != len(works):
                raise StaleBatch(f"{len(works) - changed} of {len(works)} rows changed meanwhile")
        if changes.events:
            insert_events(conn, changes.events, changes.transitions)
            if not all(e["published"] for e in changes.events):
                notify(conn, self.origin, ())

    def _locked(self, query: Select[Any], *, skip_locked: bool = False) -> Select[Any]:
        return query.with_for_update(skip_locked=skip_locked) if self._lock_rows else query

    @staticmethod
    def _load(
        conn: Connection, query: Select[Any], changes: Changes, params: Mapping[str, Any] | None = None
    ) -> list[Work]:
        return [changes.load(dict(row._mapping)) for row in conn.execute(query, params)]

    async def ping(self) -> None:
        async with self._read() as conn:
            await conn.execute(select(1))
