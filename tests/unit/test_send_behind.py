"""A status batch's claims are sent behind it: the batch is acknowledged, and the next one
handled, while the PUBACKs of the tasks it claimed are still out."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from sensortasks.config import Settings
from sensortasks.dispatcher import Dispatcher
from sensortasks.protocol import StatusReport, TaskMessage
from sensortasks.store import NewTask
from sensortasks.testing import FakeClock, FakeLink, InMemoryStore

FILE_ID = "a3e4aed2-b091-41a6-8265-2185040e2c32"


class SlowTasksLink(FakeLink):
    """Tasks' PUBACKs withheld while `held` is set (everything else goes as usual)."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock)
        self.held = False
        self.release = asyncio.Event()

    async def publish_many(self, messages: Sequence[tuple[str, bytes]], *, limit: int = 500) -> int:
        sent = await super().publish_many(messages, limit=limit)
        if self.held and any(topic.endswith("/tasks") for topic, _ in messages):
            await self.release.wait()
        return sent


async def test_the_batch_is_acknowledged_while_its_claims_wait_for_their_pubacks() -> None:
    clock = FakeClock()
    store, link = InMemoryStore(), SlowTasksLink(clock)
    settings = Settings(instance="behind", database_url="sqlite+aiosqlite:///unused.db", ack_timeout_s=3600)
    dispatcher = Dispatcher(settings, store, link, clock=clock)
    runner = asyncio.create_task(dispatcher.run())
    try:
        await clock.advance(0.1)
        first, second = await store.create([NewTask(7, "update_firmware", FILE_ID, 3, 3600)] * 2, now=clock.now())
        dispatcher.kick([7])
        await clock.settle()
        assert [
            TaskMessage.model_validate_json(p.payload).task_id for p in link.published if p.topic.endswith("/tasks")
        ] == [first.id]
        link.held = True
        for status in ("ongoing", "completed"):
            link.deliver(
                dispatcher.topics.status(7), StatusReport(task_id=first.id or 0, attempt=1, status=status).to_json()
            )
        await clock.settle()
        sent = [
            TaskMessage.model_validate_json(p.payload).task_id for p in link.published if p.topic.endswith("/tasks")
        ]
        assert sent == [first.id, second.id]  # claimed by the batch and handed to the link
        assert len(link.acked) == 2  # and the batch acknowledged, its claim's PUBACK still out
        link.deliver(
            dispatcher.topics.status(7), StatusReport(task_id=second.id or 0, attempt=1, status="ongoing").to_json()
        )
        await clock.settle()
        assert len(link.acked) == 3  # the next batch was handled too
    finally:
        link.release.set()
        dispatcher.stop()
        await asyncio.wait_for(runner, 5)
