"""An in-process sensortasks (dispatcher + API) on a real Mosquitto and a real database: each test
that starts one runs on SQLite and on PostgreSQL (`database_url`), unless marked `only_on` one."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiomqtt
import httpx
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from sensortasks.api import create_app
from sensortasks.config import Settings
from sensortasks.dispatcher import Dispatcher, dispatcher_link
from sensortasks.runtime import build_service, build_store
from sensortasks.sensor import Handler, Job, SensorOptions
from sensortasks.store import TaskStore, open_database, upgrade, utcnow
from sensortasks.store.accounts import ClientAccount, MqttClientStore
from sensortasks.store.keys import KeyStore
from sensortasks.testing import MosquittoBroker
from sensortasks.testing.sensors import RecordingSensor, SilentRecordingSensor

FILE_ID = "a3e4aed2-b091-41a6-8265-2185040e2c32"


async def complete(job: Job) -> dict[str, Any]:
    """A sensor that does its work at once and reports a result."""
    return {"version": "2.4.1", "task": job.task_id}


async def eventually(check: Callable[[], Awaitable[bool]], *, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


@dataclass
class OpsWatcher:
    """Collects every message on ``ops/#`` (and anything else subscribed)."""

    messages: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def on(self, prefix: str) -> list[dict[str, Any]]:
        return [payload for topic, payload in self.messages if topic.startswith(prefix)]


@dataclass
class Service:
    settings: Settings
    store: TaskStore
    dispatcher: Dispatcher
    api: httpx.AsyncClient
    broker: MosquittoBroker
    sensors: list[RecordingSensor] = field(default_factory=list)
    runner: asyncio.Task[None] | None = None
    #: The ASGI app `api` talks to (to serve it over real HTTP where a test needs streaming).
    app: Any = None

    async def stop(self) -> None:
        """Stop the dispatcher (as at shutdown) and wait until it has."""
        self.dispatcher.stop()
        assert self.runner is not None
        await asyncio.wait_for(asyncio.shield(self.runner), 15)

    async def create(self, serial: int, task_type: str = "update_firmware", **extra: Any) -> dict[str, Any]:
        body = {"sensor_serial": serial, "file_id": FILE_ID, "type": task_type, **extra}
        response = await self.api.post("/v1/tasks", json=body)
        assert response.status_code == 201, response.text
        created: dict[str, Any] = response.json()
        return created

    async def task(self, task_id: int) -> dict[str, Any]:
        response = await self.api.get(f"/v1/tasks/{task_id}")
        assert response.status_code == 200, response.text
        task: dict[str, Any] = response.json()
        return task

    async def events(self, task_id: int) -> list[dict[str, Any]]:
        response = await self.api.get(f"/v1/tasks/{task_id}/events")
        assert response.status_code == 200, response.text
        data: list[dict[str, Any]] = response.json()["data"]
        return data

    async def wait_status(self, task_id: int, status: str, *, timeout: float = 10.0) -> dict[str, Any]:
        last: dict[str, Any] = {}

        async def reached() -> bool:
            nonlocal last
            last = await self.task(task_id)
            return bool(last["status_name"] == status)

        try:
            await eventually(reached, timeout=timeout, what=f"task {task_id} to be {status}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; task is {last}") from None
        return last

    async def sensor(
        self, serial: int, handler: Handler = complete, *, silent: bool = False, **options: Any
    ) -> RecordingSensor:
        """Start an SDK sensor (`silent`: one that never reports) and wait until the dispatcher has
        seen it come online, so that its presence cannot race the first task (that would be a
        legitimate re-delivery)."""
        kind = SilentRecordingSensor if silent else RecordingSensor
        client = kind(serial, handler, SensorOptions(host=self.broker.host, port=self.broker.port, **options))
        await client.start()
        self.sensors.append(client)

        async def seen_online() -> bool:
            response = await self.api.get(f"/v1/sensors/{serial}")
            return bool(response.status_code == 200 and response.json()["online"])

        await eventually(seen_online, what=f"sensor {serial} to be seen online")
        return client

    async def publish(self, topic: str, payload: bytes | str | dict[str, Any]) -> None:
        """Publish as a raw client (a misbehaving sensor)."""
        data = json.dumps(payload) if isinstance(payload, dict) else payload
        async with aiomqtt.Client(self.broker.host, self.broker.port, protocol=aiomqtt.ProtocolVersion.V5) as client:
            await client.publish(topic, data, qos=1)


ServiceFactory = Callable[..., Awaitable[Service]]


@dataclass(frozen=True)
class Backend:
    """A customer's backend: its API key and the reply prefix of its MQTT account."""

    customer: str
    key: str
    reply_prefix: str


async def add_backend(service: Service, customer: str) -> Backend:
    """A key and a backend account row, as `mqtt-clients add --customer` records them."""
    keys = KeyStore(service.store.db)
    key = await keys.create_key(customer)
    client_id = f"backend-{uuid.uuid4().hex[:12]}"
    prefix = f"replies/{client_id}"
    account = ClientAccount(client_id, client_id, "backend", await keys.customer_id(customer), prefix, utcnow())
    await MqttClientStore(service.store.db).add(account)
    return Backend(customer, key, prefix)


def command_properties(
    response_topic: str | None = None,
    correlation: bytes | None = None,
    user_properties: Sequence[tuple[str, str]] = (),
    **user: str,
) -> Properties | None:
    """PUBLISH properties of a command (paho does not check them: a hostile client can set any)."""
    named = [*user_properties, *user.items()]
    if response_topic is None and correlation is None and not named:
        return None
    properties = Properties(PacketTypes.PUBLISH)
    if response_topic is not None:
        properties.ResponseTopic = response_topic
    if correlation is not None:
        properties.CorrelationData = correlation
    if named:
        properties.UserProperty = named
    return properties


async def send_command(
    service: Service, command: str, payload: bytes | dict[str, Any], properties: Properties | None
) -> None:
    """Publish a command and wait for the broker's acknowledgement only (no reply expected)."""
    data = json.dumps(payload).encode() if isinstance(payload, dict) else payload
    async with aiomqtt.Client(service.broker.host, service.broker.port, protocol=aiomqtt.ProtocolVersion.V5) as client:
        await client.publish(f"tasks/commands/{command}", data, qos=1, properties=properties)


async def request(
    service: Service,
    command: str,
    payload: bytes | dict[str, Any],
    *,
    reply_prefix: str = "replies/anyone",
    **user: str,
) -> dict[str, Any]:
    """Send a command and wait for its reply on a fresh topic under `reply_prefix`."""
    reply_topic = f"{reply_prefix}/{uuid.uuid4().hex}"
    correlation = uuid.uuid4().bytes
    async with aiomqtt.Client(service.broker.host, service.broker.port, protocol=aiomqtt.ProtocolVersion.V5) as client:
        await client.subscribe(reply_topic, qos=1)
        data = json.dumps(payload).encode() if isinstance(payload, dict) else payload
        properties = command_properties(reply_topic, correlation, **user)
        await client.publish(f"tasks/commands/{command}", data, qos=1, properties=properties)
        async with asyncio.timeout(10):
            async for message in client.messages:
                assert message.properties is not None
                assert message.properties.CorrelationData == correlation
                return dict(json.loads(message.payload))  # type: ignore[arg-type]
    raise AssertionError("no reply")


@pytest.fixture
async def make_service(broker: MosquittoBroker, database_url: str) -> AsyncIterator[ServiceFactory]:
    """Start sensortasks with settings overridden per test (fast timeouts by default)."""
    started: list[tuple[Service, asyncio.Task[None]]] = []

    async def make(**overrides: Any) -> Service:
        options: dict[str, Any] = {
            "mqtt_url": broker.url,
            "database_url": database_url,
            "auth": "disabled",
            "instance": f"test-{uuid.uuid4().hex[:8]}",
            "ack_timeout_s": 5.0,
            "retry_backoff_s": 0.05,
            "retry_backoff_max_s": 0.2,
            "stats_interval_s": 0.5,
        }
        settings = Settings(**(options | overrides))
        await upgrade(settings.database_url)
        store = build_store(settings)
        dispatcher = Dispatcher(settings, store, dispatcher_link(settings), rollouts=store)
        app = create_app(build_service(settings, store, dispatcher))
        runner = asyncio.create_task(dispatcher.run(), name="dispatcher")
        await asyncio.wait_for(dispatcher.link.connected.wait(), 10)
        api = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sensortasks.test")
        service = Service(settings, store, dispatcher, api, broker, runner=runner, app=app)
        started.append((service, runner))
        return service

    yield make
    for service, runner in started:
        for sensor in service.sensors:
            with contextlib.suppress(Exception):
                await sensor.stop()
        service.dispatcher.stop()
        try:
            await asyncio.wait_for(asyncio.shield(runner), 15)
        except TimeoutError:
            for task in asyncio.all_tasks():
                task.print_stack(limit=6)
            raise
        await service.api.aclose()
        await service.store.db.dispose()


@contextlib.asynccontextmanager
async def listening(broker: MosquittoBroker, topic: str, on: Callable[[aiomqtt.Message], None]) -> AsyncIterator[None]:
    """Feed every message on `topic` to `on` while the block runs (subscribed before it starts)."""
    ready = asyncio.Event()

    async def listen() -> None:
        async with aiomqtt.Client(broker.host, broker.port, protocol=aiomqtt.ProtocolVersion.V5) as client:
            await client.subscribe(topic, qos=1)
            ready.set()
            async for message in client.messages:
                on(message)

    task = asyncio.create_task(listen())
    await asyncio.wait_for(ready.wait(), 10)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture
async def ops(broker: MosquittoBroker) -> AsyncIterator[OpsWatcher]:
    """Everything published on ``ops/#`` while the test runs."""
    watcher = OpsWatcher()

    def heard(message: aiomqtt.Message) -> None:
        payload = message.payload if isinstance(message.payload, bytes) else b"{}"
        watcher.messages.append((str(message.topic), json.loads(payload)))

    async with listening(broker, "ops/#", heard):
        yield watcher


@dataclass
class Heard:
    topic: str
    payload: bytes
    retain: bool
    correlation: bytes | None


@dataclass
class Wiretap:
    """Every message published on the broker (``#``: all but ``$SYS``) while the test runs."""

    heard: list[Heard] = field(default_factory=list)

    def carrying(self, correlation: bytes) -> list[Heard]:
        """Messages with this correlation data, other than the commands that carried it in."""
        return [h for h in self.heard if h.correlation == correlation and not h.topic.startswith("tasks/commands/")]

    def on(self, topic: str) -> list[Heard]:
        return [h for h in self.heard if h.topic == topic]


@pytest.fixture
async def wiretap(broker: MosquittoBroker) -> AsyncIterator[Wiretap]:
    tap = Wiretap()

    def heard(message: aiomqtt.Message) -> None:
        props = message.properties
        correlation = getattr(props, "CorrelationData", None) if props else None
        payload = message.payload if isinstance(message.payload, bytes) else b""
        tap.heard.append(Heard(str(message.topic), payload, message.retain, correlation))

    async with listening(broker, "#", heard):
        yield tap


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[TaskStore]:
    """A store on a fresh, migrated database (`database_url`: each database the module runs on)."""
    await upgrade(database_url)
    store = TaskStore(open_database(database_url))
    yield store
    await store.db.dispose()
