"""Several dispatcher instances on one store, on fakes (milliseconds): one leads and publishes,
the others take over when it falls silent and re-send what it may have held; an instance that
loses its database leaves the broker and comes back; a cancel reaches its sensor before the
sensor's next task, whichever instance claims that one."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from sensortasks.config import Settings
from sensortasks.dispatcher import Dispatcher
from sensortasks.dispatcher.members import broker_hold_s
from sensortasks.protocol import CancelMessage, OpsEvent, StatusReport, TaskMessage
from sensortasks.store import NewTask
from sensortasks.testing import FakeClock, FakeLink, InMemoryStore

FILE_ID = "a3e4aed2-b091-41a6-8265-2185040e2c32"
S = 7
TIMEOUT = 10.0
EXPIRY = 30


@dataclass
class Instance:
    name: str
    dispatcher: Dispatcher
    link: FakeLink
    runner: asyncio.Task[None]

    def sent(self, serial: int = S) -> list[Any]:
        """Task and cancel messages this instance published to `serial`, in order."""
        topic = self.dispatcher.topics.tasks(serial)
        parsed: list[Any] = []
        for payload in self.link.on(topic):
            kind = CancelMessage if b'"cancel"' in payload else TaskMessage
            parsed.append(kind.model_validate_json(payload))
        return parsed

    def events(self) -> list[OpsEvent]:
        prefix = self.dispatcher.topics.ops_event(S, 0).rsplit("/", 2)[0]
        return [OpsEvent.model_validate_json(p.payload) for p in self.link.published if p.topic.startswith(prefix)]

    def kill(self) -> None:
        """As kill -9: no clean stop, nothing more published."""
        self.link.disconnect()
        self.runner.cancel()


class Group:
    def __init__(self, store: InMemoryStore) -> None:
        self.clock = FakeClock()
        self.store = store
        self.instances: list[Instance] = []

    async def start(self, name: str, store: Any = None) -> Instance:
        settings = Settings(
            instance=name,
            database_url="sqlite+aiosqlite:///unused.db",
            mqtt_share_group="g",
            instance_timeout_s=TIMEOUT,
            session_expiry_s=EXPIRY,
            ack_timeout_s=3600,
        )
        link = FakeLink(self.clock)
        dispatcher = Dispatcher(settings, store or self.store, link, clock=self.clock)
        instance = Instance(name, dispatcher, link, asyncio.create_task(dispatcher.run(), name=name))
        self.instances.append(instance)
        await self.clock.settle()
        return instance

    async def create(self, count: int = 1) -> list[int]:
        tasks = [NewTask(S, "update_firmware", FILE_ID, 3, 3600) for _ in range(count)]
        created = await self.store.create(tasks, now=self.clock.now())
        return [t.id or 0 for t in created]

    def report(self, via: Instance, task_id: int, status: str) -> None:
        report = StatusReport(task_id=task_id, attempt=1, status=status)  # type: ignore[arg-type]
        via.link.deliver(via.dispatcher.topics.status(S), report.to_json())


@contextlib.asynccontextmanager
async def group() -> AsyncIterator[Group]:
    running = Group(InMemoryStore())
    try:
        yield running
    finally:
        for instance in running.instances:
            instance.runner.cancel()
        await asyncio.gather(*(i.runner for i in running.instances), return_exceptions=True)


def reasons(store: InMemoryStore, task_id: int, kind: str = "redelivered") -> list[str]:
    return [e["reason"] for e in store.task_events.values() if e["task_id"] == task_id and e["kind"] == kind]


def ids(messages: Sequence[Any]) -> list[tuple[str, int]]:
    return [(type(m).__name__, m.task_id) for m in messages]


async def test_one_instance_leads_and_alone_publishes_events_and_stats() -> None:
    async with group() as g:
        a, b = await g.start("a"), await g.start("b")
        assert (a.dispatcher.members.leader, b.dispatcher.members.leader) == (True, False)
        (task,) = await g.create()
        await g.clock.advance(3)  # a sweep: whichever claims it, the leader tells ops
        assert ids(a.sent() + b.sent()) == [("TaskMessage", task)]
        g.report(b, task, "completed")  # b applies it: shared subscriptions split the statuses
        await g.clock.advance(1)
        assert [e.to for e in a.events()] == ["Pending", "Ongoing", "Completed"]
        assert b.events() == []
        await g.clock.advance(10)
        stats = a.link.on(a.dispatcher.topics.ops_stats)
        assert stats
        assert b.link.on(b.dispatcher.topics.ops_stats) == []
        assert b'"instances":["a","b"]' in stats[-1]


async def test_a_dead_leader_is_replaced_and_its_share_resent_twice() -> None:
    async with group() as g:
        a = await g.start("a")
        b = await g.start("b")
        (task,) = await g.create()
        await g.clock.advance(3)
        g.report(b, task, "ongoing")  # b applies it: shared subscriptions split the statuses
        await g.clock.advance(0.5)
        assert (await g.store.get(task)).status_id == 4
        killed_at = g.clock.elapsed
        a.kill()
        # a's lease runs out first (10 s after its last renewal); a is silent 10 s after its last beat
        await g.clock.advance(TIMEOUT + TIMEOUT / 4)
        assert b.dispatcher.members.leader
        assert reasons(g.store, task) == ["instance a went silent"]
        assert ids(b.sent())[-1] == ("TaskMessage", task)
        # ... and again once the broker may hold nothing of a's any more (its 30 s session expiry,
        # after the time a broker takes to drop a silent connection): answers to the first
        # re-send may have been routed to it too
        hold = broker_hold_s(TIMEOUT, EXPIRY)
        await g.clock.advance(killed_at + TIMEOUT + hold - TIMEOUT / 4 - g.clock.elapsed)
        assert len(reasons(g.store, task)) == 1
        await g.clock.advance(TIMEOUT / 2)
        assert reasons(g.store, task) == ["instance a went silent", "the broker session of instance a expired"]
        assert "a" not in g.store.members
        await g.clock.advance(60)
        assert len(reasons(g.store, task)) == 2  # nothing more: a is gone


async def test_a_cancel_reaches_the_sensor_before_its_next_task_whoever_claims_it() -> None:
    async with group() as g:
        a = await g.start("a")
        b = await g.start("b")
        first, second = await g.create(2)
        await g.clock.advance(3)
        g.report(b, first, "ongoing")
        await g.clock.advance(0.5)
        a.link.disconnect()  # the leader cannot publish the cancel for now
        await g.store.cancel(first, now=g.clock.now())
        b.dispatcher.kick([S])
        await g.clock.advance(5)  # b sweeps twice meanwhile, and must leave `second` alone
        assert ids(a.sent() + b.sent()) == [("TaskMessage", first)]
        await g.clock.advance(TIMEOUT)  # b takes the lead, publishes the cancel, then claims
        assert ids(b.sent()) == [("CancelMessage", first), ("TaskMessage", second)]


class _Unreachable(InMemoryStore):
    """A view of a shared store that can be cut off, as a database behind a partition."""

    def __init__(self, shared: InMemoryStore) -> None:
        super().__init__()
        self.shared = shared
        self.cut = False

    def __getattribute__(self, name: str) -> Any:
        if name in {"cut", "shared", "__dict__", "__class__"}:
            return super().__getattribute__(name)
        target = super().__getattribute__("shared")
        value = getattr(target, name)
        if not callable(value) or name.startswith("_") or name == "watch_commits":
            return value  # the commit feed is the process's own, not behind the partition

        async def guarded(*args: Any, **kwargs: Any) -> Any:
            if super(_Unreachable, self).__getattribute__("cut"):
                raise OSError("database unreachable")
            return await value(*args, **kwargs)

        return guarded


async def test_an_instance_without_its_database_leaves_the_broker_and_rejoins() -> None:
    async with group() as g:
        a = await g.start("a")
        view = _Unreachable(g.store)
        b = await g.start("b", view)
        view.cut = True
        await g.clock.advance(TIMEOUT / 2 + TIMEOUT / 4)
        assert b.link.paused is not None
        assert "database" in b.link.paused
        assert not b.link.connected.is_set()
        assert a.link.connected.is_set()
        view.cut = False
        await g.clock.advance(TIMEOUT / 4)
        assert b.link.paused is None
        assert b.link.connected.is_set()
        await g.clock.advance(TIMEOUT / 4)
        assert g.store.members["b"].seen_at == g.clock.now()


async def test_a_task_no_wake_up_announced_is_swept_up_however_busy_the_instance() -> None:
    """The sweep is the safety net for a lost wake-up: steady wake-ups must not postpone it."""
    async with group() as g:
        a = await g.start("a")
        (task,) = await g.create()  # written "elsewhere": nobody kicks sensor S
        for _ in range(10):
            a.dispatcher.kick([S + 1 + _])  # other sensors keep this instance busy
            await g.clock.advance(0.3)
        assert ids(a.sent()) == [("TaskMessage", task)]


async def test_an_instance_that_lagged_does_not_put_an_old_offline_over_a_newer_online() -> None:
    """Every instance hears every presence message; one that applies its copy late (its database
    was away, or it was frozen) must not leave the sensor offline: it would get nothing more."""
    async with group() as g:
        a, b = await g.start("a"), await g.start("b")
        (task,) = await g.create()
        presence = a.dispatcher.topics.presence(S)
        heard = g.clock.now()
        a.link.deliver(presence, b'{"v": 1, "online": false}')
        await g.clock.advance(1)
        a.link.deliver(presence, b'{"v": 1, "online": true}')
        await g.clock.advance(1)
        assert g.store.sensors[S]["online"] is True
        b.link.deliver(presence, b'{"v": 1, "online": false}', heard_at=heard)  # b's copy, applied late
        await g.clock.advance(1)
        assert g.store.sensors[S]["online"] is True
        await g.clock.advance(3)
        assert ("TaskMessage", task) in ids(a.sent() + b.sent())
