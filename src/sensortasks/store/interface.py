"""What the dispatcher needs of a store, and nothing more.

`TaskStore` (SQLite/PostgreSQL) satisfies it structurally, and so does
`sensortasks.testing.InMemoryStore`; the behaviour suite in tests/behaviour runs the
dispatcher's rules against both. Every method takes the dispatcher's `now`, so a fake
clock drives timeouts and back offs in either store.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Protocol

from sensortasks.domain import TaskStatus
from sensortasks.store.membership import Beat, Member
from sensortasks.store.notify import OnWake
from sensortasks.store.records import (
    Dispatch,
    Expiry,
    IncomingReport,
    ReportBatchResult,
    RolloutAdvance,
    RolloutInfo,
    Transition,
)

#: Rows one dispatcher query claims, expires or publishes at a time; a full batch means "ask again".
CLAIM_BATCH = 500

#: Told the unpublished events of one committed transaction, ``(event_id, transition)`` in order.
CommitListener = Callable[[Sequence[tuple[int, Transition]]], None]


class DispatchStore(Protocol):
    async def claim_next(self, serials: Sequence[int] | None, *, now: datetime) -> list[Dispatch]:
        """Start the next attempt of each sensor's head task where one is due (None: every sensor)."""
        ...

    async def redeliver(self, serials: Sequence[int] | None, *, now: datetime, reason: str) -> list[Dispatch]:
        """Re-send the current attempt of in-flight tasks, restarting their acknowledgement clock."""
        ...

    async def apply_reports(self, reports: Sequence[IncomingReport], *, now: datetime) -> ReportBatchResult:
        """Apply status reports in arrival order, in one transaction."""
        ...

    async def expire(self, *, now: datetime, ack_timeout_s: float) -> Expiry:
        """Apply the acknowledgement and run timeouts that are due."""
        ...

    async def record_presence(self, updates: Sequence[tuple[int, bool, datetime]]) -> None:
        """Store each sensor's presence as heard at the given time, unless a later one is stored
        (several instances hear every presence message, and one may lag or have been frozen)."""
        ...

    async def unpublished(self, *, limit: int = CLAIM_BATCH) -> list[tuple[int, Transition]]:
        """The outbox: transitions not yet published, in `outbox_order`, with their event ids."""
        ...

    async def mark_published(self, event_ids: Sequence[int]) -> None: ...

    def watch_commits(self, listener: CommitListener) -> None:
        """The commit feed: after each of this process's write transactions that wrote
        unpublished events commits (never after a rollback), call `listener` with them and
        their ids, in commit order. One listener; a later call replaces it."""
        ...

    async def counts(self) -> dict[TaskStatus, int]: ...

    async def sensors_online(self) -> int: ...

    async def member(self, instance: str) -> Member | None:
        """The instance's row, if it ever beat (and has not been recovered and removed)."""
        ...

    async def beat(self, me: Member, *, now: datetime, timeout_s: float) -> Beat:
        """This instance is alive: take or renew the lead if free and plan recoveries (`store.membership`)."""
        ...

    async def leave(self, me: Member, *, now: datetime, timeout_s: float) -> None:
        """A clean stop: give the lead up and look silent, so the next leader recovers at once."""
        ...

    async def ping(self) -> None:
        """Raises unless the database answers."""
        ...

    async def listen(self, on_wake: OnWake) -> None:
        """Wake-ups written by other instances, until cancelled (none where there are no others)."""
        ...


class RolloutStore(Protocol):
    """What the dispatcher's pacing of rollouts needs (`dispatcher.rollouts`); `TaskStore` has it."""

    async def advance_rollouts(self, *, now: datetime, changed_since: datetime | None = None) -> RolloutAdvance:
        """One pacing round over the live rollouts (`store.rollouts`)."""
        ...

    async def get_rollout(self, rollout_id: int, *, customer_id: int | None = None) -> RolloutInfo: ...
