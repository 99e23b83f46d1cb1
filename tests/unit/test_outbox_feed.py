"""The outbox publishes from the store's commit feed (`dispatcher.outbox`), on fakes: no read of
the database's outbox while the feed flows, every event exactly once, each task's events in
commit order behind a backlog of creations, and the database read for what the feed never had."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import pytest

from sensortasks.config import Settings
from sensortasks.dispatcher import Dispatcher
from sensortasks.dispatcher.outbox import OUTBOX_COALESCE_S, OUTBOX_POLL_S, OUTBOX_SWEEP_S, RECENT_S, Outbox
from sensortasks.domain import TaskStatus
from sensortasks.protocol import OpsEvent, StatusReport, TaskMessage
from sensortasks.store import NewTask, Transition
from sensortasks.store.interface import CLAIM_BATCH
from sensortasks.store.notify import Wake
from sensortasks.testing import FakeClock, FakeLink, InMemoryStore

FILE_ID = "a3e4aed2-b091-41a6-8265-2185040e2c32"
SENSORS = range(100, 110)
BACKLOG = 5_000
#: Event-loop turns a test spins for something the clock cannot wait for.
LOOP_TURNS = 1_000


class CountingStore(InMemoryStore):
    """Counts the outbox reads (`unpublished`) and marks begun; `during_read`, if set, runs once,
    after a read has taken what it found and before it returns; a mark waits for `writer_free`
    (a writer held by someone else, a bulk create say), then raises `mark_fails` if set."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0
        self.marks = 0
        self.during_read: Callable[[], Awaitable[None]] | None = None
        self.writer_free = asyncio.Event()
        self.writer_free.set()
        self.mark_fails: Exception | None = None

    async def mark_published(self, event_ids: Sequence[int]) -> None:
        self.marks += 1
        await self.writer_free.wait()
        if self.mark_fails is not None:
            raise self.mark_fails
        await super().mark_published(event_ids)

    async def unpublished(self, *, limit: int = 500) -> list[tuple[int, Transition]]:
        self.reads += 1
        found = await super().unpublished(limit=limit)
        if self.during_read is not None:
            during, self.during_read = self.during_read, None
            await during()
        return found


@dataclass
class Running:
    clock: FakeClock
    store: CountingStore
    link: FakeLink
    dispatcher: Dispatcher

    def events(self) -> list[tuple[int, str]]:
        """``ops/events`` published, as (task id, to), in publish order."""
        prefix = self.dispatcher.topics.ops_event(0, 0).split("/0/")[0]
        published = [p for p in self.link.published if p.topic.startswith(prefix + "/")]
        return [(e.task_id, e.to) for e in (OpsEvent.model_validate_json(p.payload) for p in published)]

    def committed(self) -> list[tuple[int, str]]:
        """Every transition in the store, as (task id, to), in commit order."""
        return [
            (e["task_id"], TaskStatus(e["to_status"]).label)
            for e in self.store.task_events.values()
            if e["kind"] == "transition"
        ]

    def sent(self) -> list[TaskMessage]:
        return [
            TaskMessage.model_validate_json(p.payload)
            for p in self.link.published
            if p.topic.endswith("/tasks") and b'"task"' in p.payload
        ]

    def report(self, serial: int, task_id: int, status: str) -> None:
        report = StatusReport(task_id=task_id, attempt=1, status=status)  # type: ignore[arg-type]
        self.link.deliver(self.dispatcher.topics.status(serial), report.to_json())

    async def create(self, serials: Sequence[int]) -> list[int]:
        tasks = [NewTask(s, "update_firmware", FILE_ID, 3, 3600) for s in serials]
        created = await self.store.create(tasks, now=self.clock.now())
        return [t.id or 0 for t in created]


async def _started(
    clock: FakeClock, store: CountingStore, **settings: Any
) -> tuple[FakeLink, Dispatcher, asyncio.Task[None]]:
    """A dispatcher on `store`, running: the start's read is done, this instance leads."""
    link = FakeLink(clock)
    config = Settings(instance="feed", database_url="sqlite+aiosqlite:///unused.db", **settings)
    dispatcher = Dispatcher(config, store, link, clock=clock)
    runner = asyncio.create_task(dispatcher.run())
    await clock.advance(0.1)
    assert dispatcher.members.leader
    return link, dispatcher, runner


async def _spin_until(condition: Callable[[], bool]) -> None:
    """Turn the event loop until `condition()` (at most `LOOP_TURNS`), for what the clock
    cannot wait for: a mark held on the database's side."""
    for _ in range(LOOP_TURNS):
        if condition():
            return
        await asyncio.sleep(0)


@pytest.fixture
async def running() -> AsyncIterator[Running]:
    clock, store = FakeClock(), CountingStore()
    link, dispatcher, runner = await _started(clock, store, ack_timeout_s=3600)
    yield Running(clock, store, link, dispatcher)
    dispatcher.stop()
    await asyncio.wait_for(runner, 5)


def assert_each_once_in_commit_order(r: Running) -> None:
    published, committed = r.events(), r.committed()
    assert sorted(published) == sorted(committed)  # every event, none twice
    for task_id in {t for t, _ in committed}:
        assert [to for t, to in published if t == task_id] == [to for t, to in committed if t == task_id]
    assert all(e["published"] for e in r.store.task_events.values())


async def test_steady_state_events_go_out_from_the_feed_with_no_outbox_read(running: Running) -> None:
    r = running
    reads_at_start = r.store.reads
    assert reads_at_start >= 1  # the start reads what a previous life left
    await r.create([s for s in SENSORS for _ in range(3)])
    r.dispatcher.kick(SENSORS)
    for _ in range(3):  # each sensor's three tasks in turn; the feed never falls quiet for OUTBOX_POLL_S
        await r.clock.advance(0.2)
        heads = r.sent()[-len(SENSORS) :]
        for sent in heads:
            r.report(_serial_of(r, sent.task_id), sent.task_id, "ongoing")
        await r.clock.advance(0.2)
        for sent in heads:
            r.report(_serial_of(r, sent.task_id), sent.task_id, "completed")
    await r.clock.advance(0.2)
    assert len(r.committed()) == 3 * len(SENSORS) * 3  # created, Ongoing, Completed
    assert_each_once_in_commit_order(r)
    assert r.store.reads == reads_at_start
    assert r.dispatcher.outbox.reads == reads_at_start


async def test_a_round_goes_out_while_the_one_before_waits_to_be_marked(running: Running) -> None:
    r = running
    r.store.writer_free.clear()
    marks = r.store.marks
    await r.create([1000])
    await r.clock.advance(OUTBOX_COALESCE_S)
    assert len(r.events()) == 1
    assert r.store.marks == marks + 1  # and held
    await r.create([1001])
    # The outbox now waits for the first mark, as for a database thread: the clock cannot settle.
    advancing = asyncio.ensure_future(r.clock.advance(OUTBOX_COALESCE_S))
    await _spin_until(lambda: len(r.events()) == 2)
    assert r.events() == r.committed()  # the second round published, the first still unmarked
    assert r.store.marks == marks + 1  # its own mark waits for the first one: one outstanding
    assert not r.dispatcher.outbox.idle
    r.store.writer_free.set()
    await advancing
    assert r.store.marks == marks + 2
    assert_each_once_in_commit_order(r)
    assert r.dispatcher.outbox.idle


async def test_a_sensor_whose_cancel_waits_to_be_marked_gets_its_next_task_once_it_is(running: Running) -> None:
    """The claim refuses a sensor whose cancel is not marked published; the mark, not the next
    sweep (`SWEEP_INTERVAL_S`), is what lets its next task go."""
    r = running
    serial = SENSORS[0]
    first, second = await r.create([serial, serial])
    r.dispatcher.kick([serial])
    await r.clock.advance(OUTBOX_COALESCE_S)
    assert [m.task_id for m in r.sent()] == [first]
    r.store.writer_free.clear()
    await r.store.cancel(first, now=r.clock.now())
    r.dispatcher.notify_outbox()
    # The cancel is published, its mark held: the clock cannot settle, so spin the loop instead.
    advancing = asyncio.ensure_future(r.clock.advance(OUTBOX_COALESCE_S))
    await _spin_until(lambda: r.dispatcher.outbox.marking)
    assert r.dispatcher.outbox.marking
    assert [m.task_id for m in r.sent()] == [first]
    r.store.writer_free.set()
    await advancing
    assert [m.task_id for m in r.sent()] == [first, second]


async def test_a_mark_that_fails_stops_the_dispatcher_without_waiting_for_another_round() -> None:
    """Store errors are retried inside the mark; anything else is a bug, raised at once (it
    would otherwise wait for the next round's mark, which a quiet feed may never bring)."""
    clock, store = FakeClock(), CountingStore()
    _link, dispatcher, runner = await _started(clock, store)
    store.mark_fails = RuntimeError("a bug in the mark")
    await store.create([NewTask(5, "update_firmware", FILE_ID, 3, 60)], now=clock.now())
    dispatcher.outbox.wake()
    await clock.advance(OUTBOX_COALESCE_S)  # the round: published, its mark fails
    await clock.advance(OUTBOX_COALESCE_S)  # the loop, woken by it, raises it
    with pytest.raises(ExceptionGroup) as raised:
        await asyncio.wait_for(runner, 5)
    assert raised.group_contains(RuntimeError, match="a bug in the mark")


def _serial_of(r: Running, task_id: int) -> int:
    return int(r.store.tasks[task_id]["sensor_serial"])


async def test_a_backlog_of_creations_keeps_each_tasks_order_and_a_change_pulls_its_creation_ahead(
    running: Running,
) -> None:
    r = running
    reads_at_start = r.store.reads
    ids = await r.create([1000 + i for i in range(BACKLOG)])
    oldest = ids[2]
    await r.store.cancel(oldest, now=r.clock.now())  # committed before the outbox took anything
    await r.clock.advance(OUTBOX_COALESCE_S)
    published = r.events()
    # The change goes first, right behind its own creation; then the creations, newest first.
    assert published[:2] == [(oldest, "Pending"), (oldest, "Cancelled")]
    creations = [task_id for task_id, to in published[2:] if to == "Pending"]
    assert creations == sorted(set(ids) - {oldest}, reverse=True)
    assert len(published) == BACKLOG + 1
    assert_each_once_in_commit_order(r)
    assert r.store.reads == reads_at_start


async def test_a_task_created_just_before_a_bulk_is_not_held_back_by_it(running: Running) -> None:
    """Creations go out by the transaction that made them, the smallest first: a task created
    just before a bulk (older than all of the bulk, so last of all newest first) is published
    in the first round, and the bulk drains behind it."""
    r = running
    (early,) = await r.create([7])
    await r.create([3000 + i for i in range(BACKLOG)])
    await r.clock.advance(OUTBOX_COALESCE_S)
    published = [task_id for task_id, _ in r.events()]
    assert published.index(early) < CLAIM_BATCH
    assert len(published) == BACKLOG + 1
    assert_each_once_in_commit_order(r)


async def test_a_change_of_a_queued_task_waits_for_nothing_but_its_creation(running: Running) -> None:
    """A task created after the backlog but changed before the outbox took it: its creation and
    change go out in the first round, together and in order."""
    r = running
    await r.create([2000 + i for i in range(BACKLOG)])
    (late,) = await r.create([7])
    r.dispatcher.kick([7])
    await r.clock.settle()  # claimed (the outbox is still coalescing)
    (sent,) = [s for s in r.sent() if s.task_id == late]
    r.report(7, late, "ongoing")
    await r.clock.advance(OUTBOX_COALESCE_S)
    mine = [(i, e) for i, e in enumerate(r.events()) if e[0] == late]
    assert [e for _, e in mine] == [(late, "Pending"), (late, "Ongoing")]
    assert mine[0][0] < 500  # in the first round, not behind the backlog
    assert sent.attempt == 1
    assert_each_once_in_commit_order(r)


async def test_a_read_that_meets_the_feed_publishes_each_event_once(running: Running) -> None:
    """Another instance's wake-up makes the outbox read the database while the feed holds the
    same events: neither path publishes them again."""
    r = running
    reads = r.store.reads
    await r.create([300, 301, 302])
    r.dispatcher._on_wake(Wake("another", ()))  # as LISTEN delivers it
    await r.clock.advance(OUTBOX_COALESCE_S)
    assert r.store.reads == reads + 1
    assert_each_once_in_commit_order(r)
    await r.clock.advance(0.5)
    assert len(r.events()) == 3


async def test_a_wake_up_that_comes_during_a_read_brings_another_read(running: Running) -> None:
    """Another instance commits, and wakes us, while a read that began before its commit is under
    way: that read cannot have seen it, so the wake-up must not be taken as answered by it (it
    was, and the event waited for the next sweep: up to `OUTBOX_SWEEP_S`)."""
    r = running
    theirs: list[int] = []

    async def another_instance_writes() -> None:
        r.store.watch_commits(lambda _events: None)  # "another process" writes
        theirs.extend(await r.create([500]))
        r.store.watch_commits(r.dispatcher.outbox.on_commit)
        r.dispatcher._on_wake(Wake("another", ()))

    r.store.during_read = another_instance_writes
    r.dispatcher._on_wake(Wake("another", ()))  # a first wake-up: a read begins
    await r.clock.advance(OUTBOX_POLL_S / 2)  # well before a quiet feed would read anyway
    assert r.events() == [(theirs[0], "Pending")]


async def test_a_quiet_feed_reads_the_database_for_what_it_never_had(running: Running) -> None:
    """Events another process committed (the feed is this process's): read once the feed is quiet."""
    r = running
    r.store.watch_commits(lambda _events: None)  # "another process" writes
    await r.create([400])
    r.store.watch_commits(r.dispatcher.outbox.on_commit)
    await r.clock.advance(OUTBOX_POLL_S / 2)
    assert r.events() == []
    await r.clock.advance(OUTBOX_POLL_S)
    assert r.events() == [(1, "Pending")]


async def test_a_feed_that_never_goes_quiet_still_lets_a_read_in(running: Running) -> None:
    """Another process's event waits for a read at most `OUTBOX_SWEEP_S`, however busy the feed."""
    r = running
    r.store.watch_commits(lambda _events: None)  # "another process" writes
    [theirs] = await r.create([400])
    r.store.watch_commits(r.dispatcher.outbox.on_commit)
    step = OUTBOX_POLL_S / 2
    for _ in range(int(OUTBOX_SWEEP_S / step) + 2):  # a creation every half poll: never quiet
        await r.create([401])
        await r.clock.advance(step)
    published = [task_id for task_id, _ in r.events()]
    assert theirs in published
    assert published.count(theirs) == 1


async def test_what_was_committed_before_the_start_is_published_at_the_start() -> None:
    """A crash between a commit and its round leaves the event unpublished: the start reads it."""
    clock, store = FakeClock(), CountingStore()
    (task,) = await store.create([NewTask(5, "update_firmware", FILE_ID, 3, 60)], now=clock.now())
    link, dispatcher, runner = await _started(clock, store)
    ops = [OpsEvent.model_validate_json(p.payload) for p in link.published if "/events/" in p.topic]
    assert [(e.task_id, e.to) for e in ops] == [(task.id, "Pending")]
    dispatcher.stop()
    await asyncio.wait_for(runner, 5)


async def test_published_ids_are_forgotten_once_their_round_was_marked_long_enough_ago() -> None:
    """The ids kept against double publication are exactly those of the rounds marked in the last
    `RECENT_S`, however many rounds went before (they are forgotten a round at a time: a dict
    popped from its front cost 33 µs an id with 50,000 kept, 16 % of serve's CPU)."""
    clock = FakeClock()
    link = FakeLink(clock)
    link.connected.set()
    outbox = Outbox(cast(Any, Marks()), link, Leader(), clock, Settings(instance="x").topics, _call, lambda _: None)
    transition = Transition(1, 5, "update_firmware", TaskStatus.PENDING, TaskStatus.ONGOING, 1, None, clock.now())
    per_round, rounds, kept = 100, 1_000, 50  # a round marked every RECENT_S / 50
    for round_ in range(rounds):
        assert await outbox._publish([(round_ * per_round + i, transition) for i in range(per_round)])
        await clock.advance(RECENT_S / kept)
    newest = {(rounds - 1 - back) * per_round + i for back in range(kept) for i in range(per_round)}
    assert outbox._recent == newest
    assert len(outbox._marked) == kept


class Leader:
    leader = True


class Marks:
    async def mark_published(self, event_ids: Sequence[int]) -> None:
        pass


async def _call(_what: str, call: Callable[..., Awaitable[object]], *args: object, **kwargs: object) -> object:
    return await call(*args, **kwargs)
