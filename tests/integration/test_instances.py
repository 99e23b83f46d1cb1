"""Two dispatcher instances on one database and one share group, in process: MQTT commands are
handled once each, and only the leader publishes ``ops/stats``, for both."""

from __future__ import annotations

import asyncio
import json
import uuid

import aiomqtt

from .conftest import FILE_ID, OpsWatcher, ServiceFactory, command_properties, eventually

COMMANDS = 30


async def test_commands_are_handled_once_each_by_one_of_the_instances(
    make_service: ServiceFactory,
) -> None:
    first = await make_service(mqtt_share_group="g")
    await make_service(mqtt_share_group="g")
    replies: dict[bytes, list[dict[str, object]]] = {}
    broker = first.broker
    async with aiomqtt.Client(broker.host, broker.port, protocol=aiomqtt.ProtocolVersion.V5) as client:
        await client.subscribe("replies/anyone/#", qos=1)
        for n in range(COMMANDS):
            body = {"v": 1, "sensor_serial": 1000 + n, "file_id": FILE_ID, "type": "update_firmware"}
            correlation = uuid.uuid4().bytes
            replies[correlation] = []
            properties = command_properties(f"replies/anyone/{n}", correlation)
            await client.publish("tasks/commands/create", json.dumps(body), qos=1, properties=properties)
        async with asyncio.timeout(20):
            async for message in client.messages:
                assert message.properties is not None
                replies[message.properties.CorrelationData].append(json.loads(message.payload))  # type: ignore[arg-type]
                if all(replies.values()):
                    break
    assert all(len(r) == 1 and r[0]["ok"] for r in replies.values())
    listed = (await first.api.get("/v1/tasks", params={"limit": 1000})).json()["data"]
    assert sorted(t["sensor_serial"] for t in listed) == [1000 + n for n in range(COMMANDS)]


async def test_only_the_leader_publishes_ops_stats_for_both(make_service: ServiceFactory, ops: OpsWatcher) -> None:
    first = await make_service(mqtt_share_group="g")

    async def leads() -> bool:
        return first.dispatcher.members.leader

    await eventually(leads, what="the first instance to lead")
    second = await make_service(mqtt_share_group="g")
    names = sorted([first.settings.instance, second.settings.instance])

    async def both_listed() -> bool:
        return any(s.get("instances") == names for s in ops.on("ops/stats"))

    await eventually(both_listed, what="an ops/stats copy listing both instances")
    assert {s["instance"] for s in ops.on("ops/stats")} == {first.settings.instance}
    assert (first.dispatcher.members.leader, second.dispatcher.members.leader) == (True, False)
