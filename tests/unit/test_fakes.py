"""The fakes of sensortasks.testing themselves: the clock's timers and `settle`, and a
dispatcher drained with `until_idle` on fakes alone."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from sensortasks.config import Settings
from sensortasks.dispatcher import Dispatcher
from sensortasks.protocol import StatusReport, TaskMessage
from sensortasks.store import NewTask
from sensortasks.testing import FakeClock, FakeLink, InMemoryStore

FILE_ID = "a3e4aed2-b091-41a6-8265-2185040e2c32"


async def test_timers_fire_in_order_each_at_its_own_instant() -> None:
    clock = FakeClock()
    woke: list[tuple[str, float]] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append((name, clock.elapsed))

    tasks = [asyncio.create_task(sleeper(n, s)) for n, s in (("c", 3.0), ("a", 1.0), ("b", 2.5))]
    clock.call_later(2.0, lambda: woke.append(("timer", clock.elapsed)))
    await clock.advance(2.5)
    assert woke == [("a", 1.0), ("timer", 2.0), ("b", 2.5)]
    assert clock.now() == clock.start + timedelta(seconds=2.5)
    await clock.advance(10)
    assert woke[-1] == ("c", 3.0)
    assert clock.elapsed == 12.5
    await asyncio.gather(*tasks)


async def test_wait_returns_on_the_event_or_exactly_at_its_timeout() -> None:
    clock = FakeClock()
    event = asyncio.Event()
    waits = [asyncio.create_task(clock.wait(event, 5)), asyncio.create_task(clock.wait(asyncio.Event(), 5))]
    await clock.advance(4.999)
    assert not any(w.done() for w in waits)
    event.set()
    await clock.settle()
    assert waits[0].result() is True
    assert not waits[1].done()
    await clock.advance(0.001)
    assert waits[1].result() is False


async def test_settle_names_the_task_that_never_parks() -> None:
    clock = FakeClock()
    forever = asyncio.Event()

    async def busy() -> None:
        await clock.sleep(0)  # tracked from here on
        await forever.wait()  # ...but waiting somewhere the clock cannot see

    task = asyncio.create_task(busy(), name="stuck-worker")
    with pytest.raises(AssertionError, match="stuck-worker"):
        await clock.settle(timeout_s=0.05)
    task.cancel()


async def test_until_idle_drains_the_queue_and_returns() -> None:
    clock = FakeClock()
    store, link = InMemoryStore(), FakeLink(clock)
    settings = Settings(instance="drain", database_url="sqlite+aiosqlite:///unused.db")
    dispatcher = Dispatcher(settings, store, link, clock=clock)
    (task,) = await store.create([NewTask(7, "update_firmware", FILE_ID, 3, 60)], now=clock.now())
    run = asyncio.create_task(dispatcher.run(until_idle=True))
    await clock.settle()
    (sent,) = [TaskMessage.model_validate_json(p) for p in link.on(settings.topics.tasks(7))]
    assert (sent.task_id, sent.attempt) == (task.id, 1)

    report = StatusReport(task_id=sent.task_id, attempt=1, status="completed")
    link.deliver(settings.topics.status(7), report.to_json())
    await clock.advance(5)  # the outbox publishes, the idle check sees nothing left
    assert run.done()
    await run
    assert (await store.get(sent.task_id)).status_id == 2
    assert [p.topic for p in link.published][-1] == settings.topics.ops_dispatcher("drain")


class _SlowReports(InMemoryStore):
    """A store whose status batch blocks until released: a stop arrives while it is handled."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def apply_reports(self, reports, *, now):  # type: ignore[no-untyped-def]
        self.entered.set()
        await self.release.wait()
        return await super().apply_reports(reports, now=now)


async def test_a_stop_lets_the_batch_in_hand_commit_and_be_acknowledged() -> None:
    """Cancelled mid-batch, the consumer would leave a committed (or refused) message
    unacknowledged, and the broker would deliver it again at the next start."""
    clock = FakeClock()
    store, link = _SlowReports(), FakeLink(clock)
    settings = Settings(instance="stopping", database_url="sqlite+aiosqlite:///unused.db")
    dispatcher = Dispatcher(settings, store, link, clock=clock)
    (task,) = await store.create([NewTask(7, "update_firmware", FILE_ID, 3, 60)], now=clock.now())
    run = asyncio.create_task(dispatcher.run())
    await clock.settle()
    report = StatusReport(task_id=task.id or 0, attempt=1, status="ongoing")
    message = link.deliver(settings.topics.status(7), report.to_json())
    await store.entered.wait()
    dispatcher.stop()
    await asyncio.sleep(0)  # the stop reaches run(), which cancels the workers
    store.release.set()
    await asyncio.wait_for(run, 5)
    assert message in link.acked
    assert (await store.get(task.id or 0)).status_id == 4  # Ongoing: the batch committed
