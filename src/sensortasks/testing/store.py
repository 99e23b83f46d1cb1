"""The dispatcher's store in memory, for fast tests.

`InMemoryStore` implements `DispatchStore` (plus `create`, `cancel`, `get` and `events`
with `TaskStore`'s signatures, for tests to set up and read tasks). What a decision
does to a row is not written again here: the domain decides and `store.changes` applies
it, exactly as in `TaskStore`. Only the selections are Python instead of SQL (a
sensor's head is its oldest Pending or Ongoing task; sensors known to be offline get
nothing and their acknowledgement clock does not run; a back off holds a task until
`not_before`), and tests/behaviour runs the same tests on both stores to keep them equal.
Its commit feed (`watch_commits`) is `TaskStore`'s: each call that wrote unpublished events
tells the listener their ids and transitions once it is done.
Single tenant: customers and sensor registration are not modelled.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sensortasks.domain import RetryPolicy, TaskStatus
from sensortasks.errors import NotFound
from sensortasks.store.changes import Changes, Work, created_event, task_row, transition_of
from sensortasks.store.interface import CLAIM_BATCH, CommitListener, DispatchStore
from sensortasks.store.membership import RESENT_ONCE, Beat, LeaseState, Member, plan_beat, plan_leave
from sensortasks.store.notify import OnWake
from sensortasks.store.records import (
    Dispatch,
    Expiry,
    IncomingReport,
    NewTask,
    ReportBatchResult,
    Transition,
    outbox_order,
)
from sensortasks.store.tables import Task, TaskEvent

_COLUMNS = tuple(Task.__table__.columns.keys())  # type: ignore[attr-defined]
_ACTIVE = (TaskStatus.PENDING, TaskStatus.ONGOING)


class InMemoryStore:
    """Tasks, events and presence in dicts; every call is one atomic "transaction"."""

    def __init__(self, policy: RetryPolicy | None = None) -> None:
        self.policy = policy or RetryPolicy()
        self.tasks: dict[int, dict[str, Any]] = {}
        #: Task events by id, in insertion order: the history and the outbox.
        self.task_events: dict[int, dict[str, Any]] = {}
        #: serial -> {"online": bool | None, "last_seen": datetime | None, "presence_at": datetime | None}
        self.sensors: dict[int, dict[str, Any]] = {}
        self.members: dict[str, Member] = {}
        self.lease = LeaseState()
        self._task_ids = itertools.count(1)
        self._event_ids = itertools.count(1)
        self._on_commit: CommitListener | None = None

    # -- what tests set up and read ------------------------------------------------
    async def create(self, tasks: Sequence[NewTask], *, customer_id: int | None = None, now: datetime) -> list[Task]:
        created, events = [], []
        for new in tasks:
            row = dict.fromkeys(_COLUMNS) | task_row(new, customer_id=customer_id, now=now)
            row["id"] = next(self._task_ids)
            self.tasks[row["id"]] = row
            events.append(created_event(row["id"], now))
            created.append(Task.model_validate(row))
        ids = self._add_events(events)
        feed = zip(ids, events, strict=True)
        self._committed([(i, transition_of(e, *self._serial_and_type(e["task_id"]))) for i, e in feed])
        return created

    async def get(self, task_id: int, *, customer_id: int | None = None) -> Task:
        return Task.model_validate(self._row(task_id, customer_id))

    async def events(self, task_id: int, *, customer_id: int | None = None) -> list[TaskEvent]:
        self._row(task_id, customer_id)
        return [TaskEvent.model_validate(e) for e in self.task_events.values() if e["task_id"] == task_id]

    async def cancel(self, task_id: int, *, customer_id: int | None = None, now: datetime) -> Task:
        changes = Changes(now)
        changes.cancel(changes.load(dict(self._row(task_id, customer_id))))
        self._commit(changes)
        return Task.model_validate(self.tasks[task_id])

    # -- DispatchStore ---------------------------------------------------------------
    async def claim_next(self, serials: Sequence[int] | None, *, now: datetime) -> list[Dispatch]:
        wanted = None if serials is None else set(serials)
        heads: dict[int, dict[str, Any]] = {}
        for row in self._active():
            if wanted is None or row["sensor_serial"] in wanted:
                heads.setdefault(row["sensor_serial"], row)
        offline = self._offline() | self._cancel_untold()
        due = [
            row
            for row in sorted(heads.values(), key=lambda r: r["id"])
            if row["status_id"] == TaskStatus.PENDING
            and row["sent_at"] is None
            and (row["not_before"] is None or row["not_before"] <= now)
            and row["sensor_serial"] not in offline
        ]
        changes = Changes(now)
        for work in self._load(changes, due[:CLAIM_BATCH] if serials is None else due):
            changes.claim(work)
        return self._commit(changes).dispatches

    async def redeliver(self, serials: Sequence[int] | None, *, now: datetime, reason: str) -> list[Dispatch]:
        wanted = None if serials is None else set(serials)
        offline = self._offline()
        in_flight = [
            row
            for row in self._active()
            if (row["status_id"] == TaskStatus.ONGOING or row["sent_at"] is not None)
            and row["sensor_serial"] not in offline
            and (wanted is None or row["sensor_serial"] in wanted)
        ]
        changes = Changes(now)
        for work in self._load(changes, in_flight):
            changes.redeliver(work, reason)
        return self._commit(changes).dispatches

    async def apply_reports(self, reports: Sequence[IncomingReport], *, now: datetime) -> ReportBatchResult:
        changes = Changes(now)
        self._load(changes, [self.tasks[i] for i in sorted({r.task_id for r in reports}) if i in self.tasks])
        refused = [r for r in (changes.report(report, self.policy) for report in reports) if r is not None]
        self._commit(changes)
        for serial in {r.serial for r in reports}:
            if serial in self.sensors:
                self.sensors[serial]["last_seen"] = now
        claimed = await self.claim_next(sorted(changes.wake), now=now) if changes.wake else []
        return changes.report_result(refused, claimed)

    async def expire(self, *, now: datetime, ack_timeout_s: float) -> Expiry:
        cutoff = now - timedelta(seconds=ack_timeout_s)
        offline = self._offline()
        active = list(self._active())
        unacked = [
            row
            for row in active
            if row["status_id"] == TaskStatus.PENDING
            and row["sent_at"] is not None
            and row["sent_at"] <= cutoff
            and row["sensor_serial"] not in offline
        ]
        overdue = [
            row
            for row in active
            if row["status_id"] == TaskStatus.ONGOING and row["deadline_at"] is not None and row["deadline_at"] <= now
        ]
        changes = Changes(now)
        for work in self._load(changes, unacked[:CLAIM_BATCH] + overdue[:CLAIM_BATCH]):
            changes.expire(work, self.policy)
        return self._commit(changes).expiry()

    async def record_presence(self, updates: Sequence[tuple[int, bool, datetime]]) -> None:
        for serial, online, at in updates:
            known = self.sensors.get(serial)
            if known is None or known["presence_at"] is None or known["presence_at"] <= at:
                self.sensors[serial] = {"online": online, "last_seen": at, "presence_at": at}

    async def unpublished(self, *, limit: int = CLAIM_BATCH) -> list[tuple[int, Transition]]:
        return outbox_order(self._unpublished(), limit)

    async def mark_published(self, event_ids: Sequence[int]) -> None:
        for event_id in event_ids:
            self.task_events[event_id]["published"] = True

    def watch_commits(self, listener: CommitListener) -> None:
        self._on_commit = listener

    async def counts(self) -> dict[TaskStatus, int]:
        counts = dict.fromkeys(TaskStatus, 0)
        for row in self.tasks.values():
            counts[TaskStatus(row["status_id"])] += 1
        return counts

    async def sensors_online(self) -> int:
        return sum(s["online"] is True for s in self.sensors.values())

    async def member(self, instance: str) -> Member | None:
        return self.members.get(instance)

    async def beat(self, me: Member, *, now: datetime, timeout_s: float) -> Beat:
        beat = plan_beat(self.members, self.lease, me, now=now, timeout_s=timeout_s)
        self.members[me.instance] = beat.me
        self.lease = beat.lease
        for name in beat.resent:
            self.members[name] = replace(self.members[name], recovered=RESENT_ONCE)
        for name in beat.removed:
            del self.members[name]
        return beat

    async def leave(self, me: Member, *, now: datetime, timeout_s: float) -> None:
        self.members[me.instance], self.lease = plan_leave(self.lease, me, now=now, timeout_s=timeout_s)

    async def ping(self) -> None:
        """Always answers (tests make a store fail by wrapping it)."""

    async def listen(self, on_wake: OnWake) -> None:  # noqa: ARG002  (one process: nobody else writes)
        await asyncio.Future()

    # -- plumbing --------------------------------------------------------------------
    def _row(self, task_id: int, customer_id: int | None) -> dict[str, Any]:
        row = self.tasks.get(task_id)
        if row is None or (customer_id is not None and row["customer_id"] != customer_id):
            raise NotFound(f"task {task_id} not found")
        return row

    def _active(self) -> Iterable[dict[str, Any]]:
        """Pending and Ongoing tasks, oldest first (ids grow with creation)."""
        return (row for row in self.tasks.values() if row["status_id"] in _ACTIVE)

    def _offline(self) -> set[int]:
        return {serial for serial, s in self.sensors.items() if s["online"] is False}

    def _unpublished(self) -> list[tuple[int, Transition]]:
        pending = [(i, e) for i, e in self.task_events.items() if not e["published"]]
        return [(i, transition_of(e, *self._serial_and_type(e["task_id"]))) for i, e in pending]

    def _cancel_untold(self) -> set[int]:
        """Sensors with a cancel in the outbox: their next task waits for it."""
        return {t.sensor_serial for _, t in self._unpublished() if t.tells_sensor}

    def _serial_and_type(self, task_id: int) -> tuple[int, str, int | None]:
        row = self.tasks[task_id]
        return row["sensor_serial"], row["type"], row["rollout_id"]

    @staticmethod
    def _load(changes: Changes, rows: Iterable[dict[str, Any]]) -> list[Work]:
        """Copies, so that nothing is visible until `_commit`."""
        return [changes.load(dict(row)) for row in rows]

    def _commit(self, changes: Changes) -> Changes:
        for work in changes.works.values():
            if work.changed:
                self.tasks[work.id] = work.row
        ids = self._add_events(changes.events)
        unpublished = [i for i, e in zip(ids, changes.events, strict=True) if not e["published"]]
        self._committed(list(zip(unpublished, changes.transitions, strict=True)))
        return changes

    def _add_events(self, events: Iterable[dict[str, Any]]) -> list[int]:
        ids = []
        for event in events:
            event_id = next(self._event_ids)
            self.task_events[event_id] = {"id": event_id, **event}
            ids.append(event_id)
        return ids

    def _committed(self, feed: list[tuple[int, Transition]]) -> None:
        if feed and self._on_commit is not None:
            self._on_commit(feed)


if TYPE_CHECKING:  # mypy keeps the fake in step with the protocol
    _: DispatchStore = InMemoryStore()
