"""What the console shows at a glance, for any client of the REST API: a customer's live tail of
task transitions, its fleet overview, and a selector's match count before a rollout starts.

The tail polls the events table (`store.glance`): a reader of the table sees what every instance
sharing the database wrote, so nothing needs to reach across instances to wake it. A poll reads
by primary key the events written in the last `SETTLE_S` seconds (to catch late commits); a
stream in a quiet fleet costs two small reads per `POLL_S`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Protocol

from sensortasks.store import TaskStore, Transition, utcnow
from sensortasks.store.glance import FEED_BATCH, Overview

#: How often a tail looks for new events: the latency of the live strip (plus the commit's).
POLL_S = 0.5
#: How far back in time each read of a tail looks for events committed late (`Tail`).
SETTLE_S = 2.0
#: A quiet stream still says something this often (proxies close silent connections).
KEEPALIVE_S = 15.0
#: A stream ends after this long: the client reconnects where it left off (``Last-Event-ID``),
#: so that no connection (and no key checked once) lives for ever.
STREAM_S = 600.0


@dataclass(frozen=True, slots=True)
class Batch:
    """What a tail yields: new transitions (none for a keep-alive), each with the resume token
    after it, and the cursor after them all."""

    events: list[tuple[int, Transition]]
    cursor: int


class Reader(Protocol):
    async def transitions_after(
        self, after_id: int, *, customer_id: int | None, limit: int = FEED_BATCH
    ) -> tuple[list[tuple[int, Transition]], int]: ...


class Tail:
    """One stream's place in the events table, which tolerates late commits.

    PostgreSQL hands out ids at insert, so a transaction can commit after another that took a
    higher id: a reader that only ever asked for ids above the highest it saw would miss it.
    So each read starts where the tail stood `settle_s` ago, and passes over what it already
    delivered. (SQLite has one writer: its ids commit in order.) Resume tokens only grow: an
    event that commits late carries the highest id delivered before it, so that a client that
    resumes after it gets nothing twice.
    """

    def __init__(self, cursor: int, *, settle_s: float = SETTLE_S) -> None:
        #: The highest id looked at: every event at or below it was delivered or is not ours.
        self.cursor = cursor
        self.settle_s = settle_s
        self._marks: deque[tuple[float, int]] = deque()  # (when, cursor then), oldest first
        self._delivered: set[int] = set()  # above the oldest mark, which is where reads start

    async def read(self, store: Reader, customer_id: int | None) -> list[tuple[int, Transition]]:
        """The events not delivered yet, each with its resume token."""
        now = time.monotonic()
        self._marks.append((now, self.cursor))
        while len(self._marks) > 1 and self._marks[1][0] <= now - self.settle_s:
            self._marks.popleft()
        start = floor = self._marks[0][1]
        new: list[tuple[int, Transition]] = []
        while True:
            events, start = await store.transitions_after(start, customer_id=customer_id)
            new += [(i, t) for i, t in events if i not in self._delivered]
            if len(events) < FEED_BATCH:
                break
        self._delivered = {i for i in self._delivered if i > floor} | {i for i, _ in new}
        tokened, token = [], self.cursor
        for i, t in new:
            token = max(token, i)
            tokened.append((token, t))
        self.cursor = max(self.cursor, start)
        return tokened


class GlanceService:
    def __init__(self, store: TaskStore) -> None:
        self.store = store
        #: Set when the server shuts down: every stream ends at once instead of holding it up.
        self.closing = asyncio.Event()

    def close(self) -> None:
        self.closing.set()

    async def overview(self, customer_id: int | None) -> Overview:
        return await self.store.overview(customer_id=customer_id, now=utcnow())

    async def count_sensors(self, customer_id: int | None, labels: Mapping[str, str]) -> int:
        return await self.store.count_sensors(customer_id=customer_id, labels=labels)

    async def cursor(self, after_id: int | None) -> int:
        """Where a tail starts: after `after_id`, or (None) after the newest event, from now on."""
        return await self.store.latest_event_id() if after_id is None else after_id

    async def follow(
        self,
        customer_id: int | None,
        cursor: int,
        *,
        poll_s: float = POLL_S,
        keepalive_s: float = KEEPALIVE_S,
        stream_s: float = STREAM_S,
    ) -> AsyncIterator[Batch]:
        """The customer's transitions after the event id `cursor` as they are written, in batches;
        an empty batch every `keepalive_s` of silence. Ends after `stream_s`, or at once when the
        service closes; the caller's cancellation (a client gone) ends it too."""
        ends = time.monotonic() + stream_s
        quiet_since = time.monotonic()
        tail = Tail(cursor)
        while not self.closing.is_set() and time.monotonic() < ends:
            events = await tail.read(self.store, customer_id)
            if events or time.monotonic() - quiet_since >= keepalive_s:
                yield Batch(events, tail.cursor)
                quiet_since = time.monotonic()
            await self._pause(min(poll_s, max(0.0, ends - time.monotonic())))

    async def _pause(self, seconds: float) -> None:
        """Sleep `seconds`, or less if the service closes meanwhile."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.closing.wait(), seconds)
