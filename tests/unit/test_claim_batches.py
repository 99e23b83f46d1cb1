"""A sweep claims in batches of `CLAIM_BATCH`; each batch is stamped with its own time, since
its ``sent_at`` starts the attempts' acknowledgement timeout (a batch that waited behind a bulk
create for a second, stamped with the sweep's start, lost that second of its timeout)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime, timedelta

from sensortasks.config import Settings
from sensortasks.dispatcher import Dispatcher
from sensortasks.store import Dispatch, NewTask
from sensortasks.store.interface import CLAIM_BATCH
from sensortasks.testing import FakeClock, FakeLink, InMemoryStore

FILE_ID = "a3e4aed2-b091-41a6-8265-2185040e2c32"
#: How long the first batch of a sweep waits for the writer.
HELD_S = 1.5


class HeldStore(InMemoryStore):
    """The first full claim batch comes back `HELD_S` after it was asked for (the writer was held)."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self.clock = clock
        self.asked: list[datetime] = []

    async def claim_next(self, serials: Sequence[int] | None, *, now: datetime) -> list[Dispatch]:
        self.asked.append(now)
        claimed = await super().claim_next(serials, now=now)
        if len(claimed) == CLAIM_BATCH and len(self.asked) == 1:
            await self.clock.sleep(HELD_S)
        return claimed


async def test_each_claim_batch_of_a_sweep_is_stamped_when_it_is_asked_for() -> None:
    clock = FakeClock()
    store, link = HeldStore(clock), FakeLink(clock)
    serials = range(1000, 1000 + CLAIM_BATCH + 10)
    await store.create([NewTask(s, "update_firmware", FILE_ID, 3, 3600) for s in serials], now=clock.now())
    settings = Settings(instance="batches", database_url="sqlite+aiosqlite:///unused.db", ack_timeout_s=3600)
    dispatcher = Dispatcher(settings, store, link, clock=clock)
    runner = asyncio.create_task(dispatcher.run())
    await clock.advance(HELD_S + 0.1)  # the start's sweep: both batches
    dispatcher.stop()
    await asyncio.wait_for(runner, 5)
    first, second = store.asked[:2]
    assert second - first >= timedelta(seconds=HELD_S)
    sent = sorted(row["sent_at"] for row in store.tasks.values())
    assert sent[0] == first
    assert sent[-1] == second
    assert sum(at == second for at in sent) == len(serials) - CLAIM_BATCH
