"""``tasks/commands/*``: MQTT 5 request/response sharing the REST rules."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from sqlalchemy.exc import OperationalError

from sensortasks.store.keys import KeyStore

from .conftest import FILE_ID, OpsWatcher, Service, ServiceFactory, eventually

SERIAL = 12345678909789


async def request(service: Service, command: str, payload: bytes | dict[str, Any], **user: str) -> dict[str, Any]:
    reply_topic = f"replies/{uuid.uuid4().hex}"
    correlation = uuid.uuid4().bytes
    async with aiomqtt.Client(service.broker.host, service.broker.port, protocol=aiomqtt.ProtocolVersion.V5) as client:
        await client.subscribe(reply_topic, qos=1)
        properties = Properties(PacketTypes.PUBLISH)
        properties.ResponseTopic = reply_topic
        properties.CorrelationData = correlation
        if user:
            properties.UserProperty = list(user.items())
        data = json.dumps(payload).encode() if isinstance(payload, dict) else payload
        await client.publish(f"tasks/commands/{command}", data, qos=1, properties=properties)
        async with asyncio.timeout(10):
            async for message in client.messages:
                assert message.properties is not None
                assert message.properties.CorrelationData == correlation
                return dict(json.loads(message.payload))  # type: ignore[arg-type]
    raise AssertionError("no reply")


async def test_create_get_cancel_over_mqtt(make_service: ServiceFactory) -> None:
    service = await make_service()
    body = {"sensor_serial": SERIAL, "file_id": FILE_ID, "type": "update_firmware"}
    created = await request(service, "create", body)
    assert created["v"] == 1
    assert created["ok"] is True
    task = created["task"]
    assert (task["status_name"], task["attempt_count"]) == ("Pending", 0)
    stored = await service.task(task["id"])
    for field in ("id", "sensor_serial", "type", "file_id", "created_at", "max_attempts", "timeout_s"):
        assert task[field] == stored[field]
    got = await request(service, "get", {"task_id": task["id"]})
    assert got["task"]["id"] == task["id"]
    cancelled = await request(service, "cancel", {"v": 1, "task_id": task["id"]})
    assert cancelled["task"]["status_name"] == "Cancelled"
    missing = await request(service, "get", {"task_id": 10**9})
    assert missing == {
        "v": 1,
        "ok": False,
        "task": None,
        "error": {"code": "not_found", "message": "task 1000000000 not found"},
    }


async def test_bad_commands_get_clear_errors_and_are_rejected(make_service: ServiceFactory, ops: OpsWatcher) -> None:
    service = await make_service()
    bad_type = await request(service, "create", {"sensor_serial": SERIAL, "file_id": FILE_ID, "type": "reboot"})
    assert bad_type["ok"] is False
    assert bad_type["error"]["code"] == "invalid_input"
    assert bad_type["error"]["message"].startswith("type:")
    garbage = await request(service, "get", b"\x00\xff")
    assert garbage["error"]["code"] == "invalid_input"
    await eventually(lambda: _rejected(ops, 2), what="2 rejections")
    assert (await service.api.get("/v1/tasks")).json()["data"] == []


async def test_commands_authenticate_and_isolate_tenants(make_service: ServiceFactory) -> None:
    service = await make_service(auth="required")
    keys = KeyStore(service.store.db)
    alice, bob = await keys.create_key("alice"), await keys.create_key("bob")
    body = {"sensor_serial": SERIAL, "file_id": FILE_ID, "type": "update_firmware"}
    registered = await service.api.post(
        "/v1/sensors", json={"serial": SERIAL}, headers={"Authorization": f"Bearer {alice}"}
    )
    assert registered.status_code == 201
    anonymous = await request(service, "create", body)
    assert anonymous["error"]["code"] == "unauthorized"
    created = await request(service, "create", body, authorization=f"Bearer {alice}")
    task_id = created["task"]["id"]
    foreign = await request(service, "cancel", {"task_id": task_id}, authorization=f"Bearer {bob}")
    assert foreign["error"]["code"] == "not_found"
    mine = await request(service, "get", {"task_id": task_id}, authorization=f"Bearer {alice}")
    assert mine["task"]["status_name"] == "Pending"


async def test_idempotent_create_over_mqtt(make_service: ServiceFactory) -> None:
    service = await make_service()
    body = {"sensor_serial": SERIAL, "file_id": FILE_ID, "type": "update_firmware"}
    first = await request(service, "create", body, **{"idempotency-key": "k1"})
    second = await request(service, "create", body, **{"idempotency-key": "k1"})
    assert first == second
    assert len((await service.api.get("/v1/tasks")).json()["data"]) == 1


async def _rejected(ops: OpsWatcher, n: int) -> bool:
    return len(ops.on("ops/rejected")) >= n


async def test_a_database_failure_gets_an_error_reply_and_the_dispatcher_keeps_running(
    make_service: ServiceFactory,
) -> None:
    service = await make_service()
    await service.store.db.writer.dispose()
    original = service.store.create

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise OperationalError("INSERT", {}, Exception("database is locked"))

    service.store.create = broken  # type: ignore[method-assign]
    body = {"sensor_serial": SERIAL, "file_id": FILE_ID, "type": "update_firmware"}
    reply = await request(service, "create", body)
    assert reply["error"]["code"] == "unavailable"
    service.store.create = original  # type: ignore[method-assign]
    assert (await request(service, "create", body))["ok"] is True
    assert service.dispatcher.link.connected.is_set()
