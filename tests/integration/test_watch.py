"""`watch` against a real broker."""

from __future__ import annotations

import io

import aiomqtt
from rich.console import Console

from sensortasks.ops.watch import watch
from sensortasks.protocol import DispatcherPresence
from sensortasks.testing import MosquittoBroker


async def test_watch_shows_retained_and_live_ops_messages(broker: MosquittoBroker) -> None:
    async with aiomqtt.Client(broker.host, broker.port, protocol=aiomqtt.ProtocolVersion.V5) as client:
        await client.publish(
            "ops/dispatchers/d1", DispatcherPresence(instance="d1", online=True).to_json(), qos=1, retain=True
        )
        await client.publish("ops/stats", b'{"v":1,"tasks":{"Completed":5},"sensors_online":2}', qos=1, retain=True)
    state = await watch(host=broker.host, port=broker.port, seconds=1.0, console=Console(file=io.StringIO()))
    assert state.dispatchers == {"d1": True}
    assert state.tasks == {"Completed": 5}
    assert state.sensors_online == 2
