"""The Node.js example sensor on the shipped secure broker: TLS with the development CA, its own
account, its presence (online, then offline before a clean stop) through its ACL."""

from __future__ import annotations

import asyncio
import json

from sensortasks.protocol import Topics
from tests.node import NODE_SENSOR, NodeSensor, node, npm_ci
from tests.security.conftest import SecureBroker

SERIAL = 12345678909789


async def retained_presence(broker: SecureBroker) -> dict[str, object]:
    """The retained presence, read by an account that may read only that topic."""
    async with await broker.reader_for(Topics().presence(SERIAL)) as client:
        await client.subscribe(Topics().presence(SERIAL), qos=1)
        async with asyncio.timeout(10):
            async for message in client.messages:
                assert message.retain
                assert isinstance(message.payload, bytes)
                presence: dict[str, object] = json.loads(message.payload)
                return presence
    raise AssertionError("no retained presence")


async def node_sensor_over_tls(broker: SecureBroker, *, spoil_password: bool = False) -> NodeSensor:
    """The Node.js example sensor, registered on the shipped broker, logging in over TLS."""
    executable = node()
    npm_ci(NODE_SENSOR)
    account = await broker.admin().add_sensor(SERIAL)
    return await NodeSensor.start(
        executable,
        SERIAL,
        SENSOR_MQTT_URL=f"mqtts://{broker.host}:{broker.tls_port}",
        SENSOR_MQTT_CA_FILE=str(broker.certs / "ca.crt"),
        SENSOR_MQTT_USERNAME=account.username,
        SENSOR_MQTT_PASSWORD=account.password + ("-wrong" if spoil_password else ""),
    )


async def test_the_node_sensor_logs_in_over_tls_and_says_offline_before_stopping(
    secure_broker: SecureBroker,
) -> None:
    sensor = await node_sensor_over_tls(secure_broker)
    try:
        await sensor.wait_logged("online")
        assert await retained_presence(secure_broker) == {"v": 1, "online": True}
        assert await sensor.terminate() == 0
        assert sensor.logged("offline")
        assert await retained_presence(secure_broker) == {"v": 1, "online": False}
    finally:
        await sensor.kill()


async def test_a_wrong_password_stops_the_node_sensor_with_status_2(secure_broker: SecureBroker) -> None:
    sensor = await node_sensor_over_tls(secure_broker, spoil_password=True)
    try:
        async with asyncio.timeout(10):
            assert await sensor.process.wait() == 2
        assert not sensor.logged("online")
    finally:
        await sensor.kill()
