"""What the console shows at a glance, for any client of the REST API: a customer's live tail of
task transitions, its fleet overview, and a selector's match count before a rollout starts.

The tail polls the events table (`store.glance`): a reader of the table sees what every instance
sharing the database wrote, so nothing needs to reach across instances to wake it. One poll is
one primary-key range read; a stream in a quiet fleet costs two small reads per `POLL_S`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

from sensortasks.store import TaskStore, Transition, utcnow
from sensortasks.store.glance import FEED_BATCH, Overview

#: How often a tail looks for new events: the latency of the live strip (plus the commit's).
POLL_S = 0.5
#: A quiet stream still says something this often (proxies close silent connections).
KEEPALIVE_S = 15.0
#: A stream ends after this long: the client reconnects where it left off (``Last-Event-ID``),
#: so that no connection (and no key checked once) lives for ever.
STREAM_S = 600.0


@dataclass(frozen=True, slots=True)
class Batch:
    """What a tail yields: new transitions (none for a keep-alive) and the cursor after them."""

    events: list[tuple[int, Transition]]
    cursor: int


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
        while not self.closing.is_set() and time.monotonic() < ends:
            events, cursor = await self.store.transitions_after(cursor, customer_id=customer_id)
            if events or time.monotonic() - quiet_since >= keepalive_s:
                yield Batch(events, cursor)
                quiet_since = time.monotonic()
            if len(events) < FEED_BATCH:  # a full batch: more are waiting, read on at once
                await self._pause(min(poll_s, max(0.0, ends - time.monotonic())))

    async def _pause(self, seconds: float) -> None:
        """Sleep `seconds`, or less if the service closes meanwhile."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.closing.wait(), seconds)
