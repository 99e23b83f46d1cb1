"""One harness for the dispatcher's behaviour tests, whatever the backend.

The tests speak to it as the sensors and the customers would (create, cancel, report,
go online or offline) and read what the sensors were sent, what was rejected and what
the store says; time moves only through `advance` (a `FakeClock`), and every call
returns once the dispatcher has handled its consequences (`settle`). Backends:

    memory    InMemoryStore + FakeLink                       the fast tier
    sqlite    TaskStore on a SQLite file + FakeLink
    postgres  TaskStore on a fresh PostgreSQL database + FakeLink
    broker    TaskStore on SQLite + the real link (PahoLink) on a real Mosquitto, the test
              playing the sensors with a raw MQTT client
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiomqtt
import pytest
from sqlalchemy import text

from sensortasks.config import Settings
from sensortasks.dispatcher import Dispatcher, Link, dispatcher_link
from sensortasks.dispatcher.link import Incoming, OnConnect
from sensortasks.domain import RetryPolicy, TaskStatus
from sensortasks.protocol import (
    CancelMessage,
    OpsEvent,
    Presence,
    Rejection,
    StatusReport,
    TaskMessage,
    parse_sensor_command,
)
from sensortasks.store import NewTask, Task, TaskEvent, TaskStore, open_database
from sensortasks.testing import FakeClock, FakeLink, InMemoryStore, MosquittoBroker

FILE_ID = "a3e4aed2-b091-41a6-8265-2185040e2c32"
BACKENDS = ("memory", "sqlite", "postgres")
#: The core rules also go through a real broker and the real link.
EVERYWHERE = pytest.mark.parametrize("backend", [*BACKENDS, "broker"])
DEFAULTS: dict[str, Any] = {
    "auth": "disabled",
    "instance": "behaviour",
    # Short, so that the SQL backends run few timer ticks (each one is a query).
    "ack_timeout_s": 3.0,
    "retry_backoff_s": 1.0,
    "retry_backoff_max_s": 60.0,
    "stats_interval_s": 30.0,
}
#: A task's run timeout (the API's floor is 10 s; the store takes any).
RUN_TIMEOUT_S = 4
START_TIMEOUT_S = 10.0
DISPATCH_TABLES = ("tasks", "task_events", "sensors", "dispatcher_instances")


@dataclass(frozen=True)
class Backing:
    #: A migrated database's URL (None for memory); PostgreSQL's is the session's, emptied per test.
    database: str | None = None
    broker: MosquittoBroker | None = None
    #: On a shared broker, the test's own topic prefixes and instance name.
    namespace: str | None = None

    def settings(self) -> dict[str, Any]:
        if self.broker is None or self.namespace is None:
            return {}
        ns = self.namespace
        return {
            "mqtt_url": self.broker.url,
            "instance": f"behaviour-{ns}",
            "topic_sensors": f"{ns}/sensors",
            "topic_ops": f"{ns}/ops",
            "topic_commands": f"{ns}/tasks/commands",
        }


class Sensors(Protocol):
    """The sensors' side of the broker."""

    async def publish(self, topic: str, payload: bytes, *, replay: bool = False) -> None: ...

    def received(self) -> list[tuple[str, bytes]]: ...


@dataclass
class FakeSensors:
    link: FakeLink

    async def publish(self, topic: str, payload: bytes, *, replay: bool = False) -> None:
        self.link.deliver(topic, payload, retain=replay)

    def received(self) -> list[tuple[str, bytes]]:
        return [(p.topic, p.payload) for p in self.link.published]


@dataclass
class ObservedLink:
    """The real link, counting what `settle` must see through: messages the dispatcher
    acknowledged, publishes it attempted, and its `on_connect` still running."""

    inner: Link
    acked: int = 0
    attempted: int = 0
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    connecting: bool = False

    @property
    def messages(self) -> asyncio.Queue[Incoming]:
        return self.inner.messages

    @property
    def connected(self) -> asyncio.Event:
        return self.inner.connected

    @property
    def connects(self) -> int:
        return self.inner.connects

    async def run(self, on_connect: OnConnect | None = None) -> None:
        async def observed() -> None:
            self.connecting = True
            try:
                if on_connect is not None:
                    await on_connect()
            finally:
                self.connecting = False
                self.ready.set()

        await self.inner.run(observed)

    def ack(self, messages: Sequence[Incoming]) -> None:
        self.inner.ack(messages)
        self.acked += len(messages)

    async def publish(self, topic: str, payload: bytes, **options: Any) -> None:
        self.attempted += 1
        await self.inner.publish(topic, payload, **options)

    async def publish_many(self, messages: Sequence[tuple[str, bytes]], *, limit: int = 500) -> int:
        self.attempted += len(messages)
        return await self.inner.publish_many(messages, limit=limit)


@dataclass
class MqttSensors:
    """Every sensor at once, as one raw MQTT 5 client subscribed to what sensors and operators read."""

    client: aiomqtt.Client
    link: ObservedLink
    published: int = 0
    inbox: list[tuple[str, bytes]] = field(default_factory=list)

    async def listen(self) -> None:
        async for message in self.client.messages:
            payload = message.payload if isinstance(message.payload, bytes) else b""
            self.inbox.append((str(message.topic), payload))

    async def publish(self, topic: str, payload: bytes, *, replay: bool = False) -> None:
        if replay:
            raise NotImplementedError("a retained replay needs a re-subscription; FakeLink backends only")
        self.published += 1
        # Retained, as real sensors publish presence; live subscribers get it without the retain flag.
        await self.client.publish(topic, payload, qos=1, retain=topic.endswith("/presence"))

    def received(self) -> list[tuple[str, bytes]]:
        return self.inbox

    def quiet(self) -> bool:
        link = self.link
        return not link.connecting and link.acked >= self.published and len(self.inbox) >= link.attempted


@dataclass
class Harness:
    backend: str
    settings: Settings
    clock: FakeClock
    store: Any  # InMemoryStore or TaskStore: DispatchStore plus create/cancel/get/events
    dispatcher: Dispatcher
    sensors: Sensors
    runner: asyncio.Task[None]

    @property
    def link(self) -> Link:
        return self.dispatcher.link

    # -- acting -------------------------------------------------------------------
    async def settle(self) -> None:
        await self.clock.settle()
        self._check_running()

    async def advance(self, seconds: float) -> None:
        await self.clock.advance(seconds)
        self._check_running()

    async def create(self, serial: int, *, max_attempts: int = 3, timeout_s: int = RUN_TIMEOUT_S) -> int:
        """A customer creates a task (as the API does: store it, wake the dispatcher)."""
        new = NewTask(serial, "update_firmware", FILE_ID, max_attempts, timeout_s)
        (task,) = await self.store.create([new], customer_id=None, now=self.clock.now())
        self.dispatcher.kick([serial])
        self.dispatcher.notify_outbox()
        await self.settle()
        return int(task.id)

    async def cancel(self, task_id: int) -> Task:
        task: Task = await self.store.cancel(task_id, now=self.clock.now())
        self.dispatcher.notify_outbox()
        await self.settle()
        return task

    async def report(self, serial: int, task_id: int, attempt: int, status: str, **fields: Any) -> None:
        """Sensor `serial` reports on its status topic."""
        report = StatusReport(task_id=task_id, attempt=attempt, status=status, **fields)
        await self.sensors.publish(self.settings.topics.status(serial), report.to_json())
        await self.settle()

    async def presence(self, serial: int, *, online: bool, replay: bool = False) -> None:
        """A fresh presence message (`replay`: the broker's retained copy, on a re-subscribe)."""
        payload = Presence(online=online).to_json()
        await self.sensors.publish(self.settings.topics.presence(serial), payload, replay=replay)
        await self.settle()

    # -- reading --------------------------------------------------------------------
    def sent(self, serial: int) -> list[TaskMessage | CancelMessage]:
        """Everything sensor `serial` was sent, in order."""
        topic = self.settings.topics.tasks(serial)
        return [parse_sensor_command(p) for t, p in self.sensors.received() if t == topic]

    def attempts(self, serial: int) -> list[tuple[int, int]]:
        """(task id, attempt) of each task message sensor `serial` got."""
        return [(m.task_id, m.attempt) for m in self.sent(serial) if isinstance(m, TaskMessage)]

    def rejected(self) -> list[Rejection]:
        topic = self.settings.topics.ops_rejected
        return [Rejection.model_validate_json(p) for t, p in self.sensors.received() if t == topic]

    def ops_events(self, serial: int, task_id: int) -> list[OpsEvent]:
        topic = self.settings.topics.ops_event(serial, task_id)
        return [OpsEvent.model_validate_json(p) for t, p in self.sensors.received() if t == topic]

    async def task(self, task_id: int) -> Task:
        task: Task = await self.store.get(task_id)
        return task

    async def status(self, task_id: int) -> tuple[str, int]:
        """(status name, attempt count)."""
        task = await self.task(task_id)
        return _label(task.status_id), task.attempt_count

    async def events(self, task_id: int) -> list[TaskEvent]:
        events: list[TaskEvent] = await self.store.events(task_id)
        return events

    async def steps(self, task_id: int) -> list[tuple[str | None, str]]:
        return [
            (None if e.from_status is None else _label(e.from_status), _label(e.to_status or 0))
            for e in await self.events(task_id)
            if e.kind == "transition"
        ]

    async def ignored(self, task_id: int) -> list[str]:
        return [e.reason or "" for e in await self.events(task_id) if e.kind == "ignored"]

    def _check_running(self) -> None:
        if self.runner.done():
            self.runner.result()  # raises what stopped it
            raise AssertionError("the dispatcher stopped")


def _label(status_id: int) -> str:
    return TaskStatus(status_id).label


@contextlib.asynccontextmanager
async def running(backend: str, backing: Backing, **overrides: Any) -> AsyncIterator[Harness]:
    """A dispatcher on `backend` with a fake clock, stopped (and checked) afterwards."""
    async with contextlib.AsyncExitStack() as stack:
        broker = backing.broker
        url = backing.database or "sqlite+aiosqlite:///unused.db"
        options = DEFAULTS | {"database_url": url} | backing.settings() | overrides
        settings = Settings(**options)
        policy = RetryPolicy(settings.retry_backoff_s, settings.retry_backoff_max_s)
        if backend == "memory":
            store: Any = InMemoryStore(policy)
        else:
            store = TaskStore(open_database(url), policy)
            stack.push_async_callback(store.db.dispose)
            if backend == "postgres":
                async with store.db.writer.begin() as conn:
                    await conn.execute(text(f"TRUNCATE {', '.join(DISPATCH_TABLES)} RESTART IDENTITY"))
                    await conn.execute(text("UPDATE leases SET holder = NULL, expires_at = NULL"))
        clock = FakeClock()
        sensors: Sensors
        link: Link
        if broker is None:
            fake = FakeLink(clock)
            link, sensors = fake, FakeSensors(fake)
        else:
            observed = ObservedLink(dispatcher_link(settings))
            client = aiomqtt.Client(
                broker.host, broker.port, identifier=f"{settings.instance}-sensors", protocol=aiomqtt.ProtocolVersion.V5
            )
            await stack.enter_async_context(client)
            topics = settings.topics
            await client.subscribe([(f"{topics.sensors}/+/tasks", 1), (topics.ops_all, 1)])
            mqtt = MqttSensors(client, observed)
            listener = asyncio.create_task(mqtt.listen(), name="sensors")
            stack.push_async_callback(_cancel, listener)
            clock.quiet_when(mqtt.quiet)
            link, sensors = observed, mqtt
        dispatcher = Dispatcher(settings, store, link, clock=clock)
        # A round's mark runs beside the outbox's loop, on the database's thread: wait for it too.
        clock.quiet_when(lambda: not dispatcher.outbox.marking)
        runner = asyncio.create_task(dispatcher.run(), name="dispatcher")
        stack.push_async_callback(_stop, dispatcher, runner)
        async with asyncio.timeout(START_TIMEOUT_S):
            # In a task of its own: one that waits on FakeLink's connection becomes one the clock tracks.
            await asyncio.create_task(_connected(link))
        harness = Harness(backend, settings, clock, store, dispatcher, sensors, runner)
        await harness.settle()
        yield harness


async def _connected(link: Link) -> None:
    await link.connected.wait()
    if isinstance(link, ObservedLink):
        await link.ready.wait()  # its on_connect has run


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _stop(dispatcher: Dispatcher, runner: asyncio.Task[None]) -> None:
    dispatcher.stop()
    async with asyncio.timeout(START_TIMEOUT_S):
        await runner
