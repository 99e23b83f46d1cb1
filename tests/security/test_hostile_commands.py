"""Poison from a backend's own broker account, on the shipped secure broker (dynamic security):
hostile MQTT 5 properties, another customer's reply prefix, a retained status, then a restart."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from sensortasks.broker.accounts import MqttCredentials
from sensortasks.config import Settings
from sensortasks.dispatcher import Dispatcher
from sensortasks.dispatcher.link import dispatcher_link
from sensortasks.runtime import build_service, build_store
from sensortasks.store import TaskStore, upgrade, utcnow
from sensortasks.store.accounts import ClientAccount, MqttClientStore
from sensortasks.store.keys import KeyStore
from tests.integration.conftest import eventually

from .conftest import DISPATCHER, INSTANCE, SecureBroker

SENSOR = 333333333333333
GET = json.dumps({"v": 1, "task_id": 1}).encode()


class Backend:
    """A backend account as `mqtt-clients add --customer` makes it: it may publish commands and
    read only its own reply prefix."""

    def __init__(self, broker: SecureBroker, customer: str) -> None:
        self.broker = broker
        self.customer = customer
        self.username = f"backend-{uuid.uuid4().hex[:10]}"
        self.password = secrets.token_urlsafe(16)
        self.prefix = f"replies/{self.username}"
        self.key = ""
        self.heard: list[tuple[str, bytes, bytes | None]] = []

    async def register(self, store: TaskStore) -> None:
        await self.broker.admin().execute(
            [
                {"command": "createRole", "rolename": self.username},
                *(
                    {"command": "addRoleACL", "rolename": self.username, "acltype": kind, "topic": topic, "allow": True}
                    for kind, topic in (
                        ("publishClientSend", "tasks/commands/+"),
                        ("subscribePattern", f"{self.prefix}/#"),
                        ("publishClientReceive", f"{self.prefix}/#"),
                    )
                ),
                {
                    "command": "createClient",
                    "username": self.username,
                    "password": self.password,
                    "roles": [{"rolename": self.username}],
                },
            ]
        )
        keys = KeyStore(store.db)
        self.key = await keys.create_key(self.customer)
        customer_id = await keys.customer_id(self.customer)
        account = ClientAccount(self.username, self.username, "backend", customer_id, self.prefix, utcnow())
        await MqttClientStore(store.db).add(account)

    def client(self) -> aiomqtt.Client:
        return aiomqtt.Client(
            self.broker.host, self.broker.port, username=self.username, password=self.password,
            identifier=self.username, protocol=aiomqtt.ProtocolVersion.V5, timeout=5,
        )  # fmt: skip

    @contextlib.asynccontextmanager
    async def listening(self) -> AsyncIterator[aiomqtt.Client]:
        """Connected, reading everything under the account's reply prefix into `heard`."""
        async with self.client() as client:
            await client.subscribe(f"{self.prefix}/#", qos=1)

            async def listen() -> None:
                async for message in client.messages:
                    correlation = getattr(message.properties, "CorrelationData", None)
                    self.heard.append((str(message.topic), bytes(message.payload), correlation))  # type: ignore[arg-type]

            task = asyncio.create_task(listen())
            try:
                yield client
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def command(
        self, client: aiomqtt.Client, verb: str, reply_to: str | None, correlation: bytes, **extra: Any
    ) -> None:
        properties = Properties(PacketTypes.PUBLISH)
        if reply_to is not None:
            properties.ResponseTopic = reply_to
        properties.CorrelationData = correlation
        properties.UserProperty = [("authorization", f"Bearer {self.key}"), *extra.get("user", [])]
        await client.publish(f"tasks/commands/{verb}", GET, qos=1, properties=properties)

    async def answered(self, correlation: bytes) -> None:
        async def heard() -> bool:
            return any(c == correlation for *_, c in self.heard)

        await eventually(heard, what=f"the reply to {correlation!r}")


@contextlib.asynccontextmanager
async def dispatcher(settings: Settings, store: TaskStore) -> AsyncIterator[Dispatcher]:
    running = Dispatcher(settings, store, dispatcher_link(settings))
    build_service(settings, store, running)  # registers the command handler
    runner = asyncio.create_task(running.run())
    await asyncio.wait_for(running.link.connected.wait(), 10)
    try:
        yield running
        assert not runner.done()
    finally:
        running.stop()
        await asyncio.wait_for(runner, 15)


async def test_hostile_commands_and_a_retained_status_on_the_shipped_broker(
    secure_broker: SecureBroker, tmp_path: Path
) -> None:
    host, port = secure_broker.host, secure_broker.port
    settings = Settings(
        mqtt_url=f"mqtt://{DISPATCHER[0]}:{DISPATCHER[1]}@{host}:{port}",
        database_url=f"sqlite+aiosqlite:///{tmp_path}/secure.db",
        instance=INSTANCE,
        auth="required",
    )
    await upgrade(settings.database_url)
    store = build_store(settings)
    alice, bob = Backend(secure_broker, "alice"), Backend(secure_broker, "bob")
    for backend in (alice, bob):
        await backend.register(store)
    sensor = await secure_broker.admin().add_sensor(SENSOR)
    mine = f"{bob.prefix}/r"
    attacks = {  # correlation -> (verb, response topic, extra user properties, expected rejection)
        b"x": ("get", "x/#", [], "bad_property"),
        b"y": ("get", "+/y", [], "bad_property"),
        b"empty": ("get", "", [], "bad_property"),
        b"long": ("get", "r" * 60_000, [], "bad_property"),
        b"sys": ("get", "$SYS/broker/x", [], "bad_property"),
        b"alice": ("get", f"{alice.prefix}/r", [], "response_topic_refused"),
        b"c" * 65_535: ("get", mine, [], "bad_property"),
        b"props": ("get", mine, [(f"k{i}", "v") for i in range(100)], "bad_property"),
        b"verb": ("foo", mine, [], "unknown_command"),
    }
    try:
        async with alice.listening(), bob.listening() as client:
            async with dispatcher(settings, store) as first:
                for correlation, (verb, topic, user, _) in attacks.items():
                    await bob.command(client, verb, topic, correlation, user=user)
                async with aiomqtt.Client(
                    host, port, username=sensor.username, password=sensor.password, identifier=sensor.client_id,
                    protocol=aiomqtt.ProtocolVersion.V5,
                ) as device:  # fmt: skip
                    report = {"v": 1, "task_id": 1, "attempt": 1, "status": "ongoing"}
                    await device.publish(f"sensors/{SENSOR}/status", json.dumps(report), qos=1, retain=True)
                await bob.command(client, "get", mine, b"sentinel-1")
                await bob.answered(b"sentinel-1")
                expected = Counter(code for *_, code in attacks.values()) + Counter(retained_status=1)
                await eventually(lambda: counted(first, expected.total()), what="every refusal")
                assert first.counters.rejected == expected
                # Cleared: a new subscriber gets nothing retained (the marker is refused in turn).
                assert await retained(secure_broker, sensor) is None
                await eventually(lambda: counted(first, expected.total() + 1), what="the marker's refusal")
                assert first.counters.rejected == expected + Counter(malformed=1)
                # Answered in a later batch than the marker's, so the marker has been acknowledged.
                await bob.command(client, "get", mine, b"sentinel-1b")
                await bob.answered(b"sentinel-1b")

            async with dispatcher(settings, store) as again:  # the same session and database
                await bob.command(client, "get", mine, b"sentinel-2")
                await bob.answered(b"sentinel-2")
                assert again.counters.rejected.total() == 0
        assert alice.heard == []
        answered = [(topic, correlation) for topic, _, correlation in bob.heard]
        assert answered == [(mine, b"verb"), (mine, b"sentinel-1"), (mine, b"sentinel-1b"), (mine, b"sentinel-2")]
        assert b'"code":"unknown_command"' in bob.heard[0][1]
    finally:
        await store.db.dispose()


async def counted(dispatcher: Dispatcher, n: int) -> bool:
    return dispatcher.counters.rejected.total() >= n


async def retained(broker: SecureBroker, sensor: MqttCredentials) -> bytes | None:
    """What a new subscriber gets as retained on the sensor's status topic before a marker the
    sensor publishes after subscribing."""
    marker = f"marker-{uuid.uuid4().hex}".encode()
    topic = f"sensors/{SENSOR}/status"
    async with (
        await broker.reader_for(topic) as watcher,
        aiomqtt.Client(
            broker.host, broker.port, username=sensor.username, password=sensor.password,
            identifier=sensor.client_id, protocol=aiomqtt.ProtocolVersion.V5,
        ) as device,
    ):  # fmt: skip
        await watcher.subscribe(topic, qos=1)
        await device.publish(topic, marker, qos=1)
        async with asyncio.timeout(10):
            async for message in watcher.messages:
                if message.payload == marker:
                    return None
                if message.retain:
                    return bytes(message.payload)  # type: ignore[arg-type]
    pytest.fail("unreachable")
