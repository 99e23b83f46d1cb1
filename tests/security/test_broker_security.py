"""The shipped broker configuration (mosquitto/mosquitto.conf): accounts, per-sensor ACLs, removal, TLS."""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path

import aiomqtt
import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from sensortasks.api import create_app
from sensortasks.broker.dynsec import BrokerAdminError
from sensortasks.config import Settings
from sensortasks.dispatcher import Dispatcher, dispatcher_link
from sensortasks.runtime import build_accounts, build_service, build_store
from sensortasks.sensor import Job, SensorClient, SensorOptions
from sensortasks.store import upgrade
from sensortasks.store.keys import KeyStore

from .conftest import ADMIN, DISPATCHER, SecureBroker

A, B = 111111111111111, 222222222222222


def client(
    broker: SecureBroker, username: str | None = None, password: str | None = None, **kw: object
) -> aiomqtt.Client:
    """A raw MQTT 5 client; its client id is its username (the one its account is bound to)."""
    kw.setdefault("identifier", kw.pop("client_id", username))
    return aiomqtt.Client(
        broker.host, kw.pop("port", broker.port), username=username, password=password,  # type: ignore[arg-type]
        protocol=aiomqtt.ProtocolVersion.V5, timeout=5, **kw,  # type: ignore[arg-type]
    )  # fmt: skip


def puback_codes(broker: SecureBroker, username: str, password: str, topics: list[str]) -> list[int]:
    codes: dict[int, int] = {}
    paho = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=username, protocol=mqtt.MQTTv5)
    paho.username_pw_set(username, password)
    paho.on_publish = lambda _c, _u, mid, reason, _p: codes.__setitem__(mid, reason.value)
    paho.connect(broker.host, broker.port)
    paho.loop_start()
    try:
        mids = []
        for topic in topics:
            info = paho.publish(topic, b"{}", qos=1)
            info.wait_for_publish(5)
            mids.append(info.mid)
        return [codes[mid] for mid in mids]
    finally:
        paho.loop_stop()
        paho.disconnect()


async def test_anonymous_clients_are_refused(secure_broker: SecureBroker) -> None:
    with pytest.raises(aiomqtt.MqttCodeError) as refused:
        async with client(secure_broker):
            pass
    assert refused.value.rc in (ReasonCode(2, identifier=135), ReasonCode(2, identifier=134), 135, 134)


async def test_a_sensor_reaches_only_its_own_topics(secure_broker: SecureBroker) -> None:
    admin = secure_broker.admin()
    a = await admin.add_sensor(A)
    await admin.add_sensor(B)
    async with client(secure_broker, a.username, a.password) as sensor:
        granted = await sensor.subscribe(f"sensors/{A}/tasks", qos=1)
        assert [code.value for code in granted] == [1]  # type: ignore[union-attr]
        denied = await sensor.subscribe(f"sensors/{B}/tasks", qos=1)
        assert [code.value for code in denied] == [135]  # type: ignore[union-attr]
    # aiomqtt does not expose PUBACK reason codes: ask paho directly.
    codes = await asyncio.to_thread(
        puback_codes, secure_broker, a.username, a.password,
        [f"sensors/{A}/status", f"sensors/{A}/presence", f"sensors/{B}/status", f"sensors/{B}/presence"],
    )  # fmt: skip
    assert all(code < 0x80 for code in codes[:2]), codes  # 0 or 16 ("no matching subscribers")
    assert codes[2:] == [135, 135]  # not authorized


async def test_the_dispatcher_account_works_and_sees_statuses(secure_broker: SecureBroker) -> None:
    a = await secure_broker.admin().add_sensor(A)
    async with (
        client(secure_broker, *DISPATCHER) as dispatcher,
        client(secure_broker, a.username, a.password) as sensor,
    ):
        await dispatcher.subscribe("sensors/+/status", qos=1)
        await sensor.subscribe(f"sensors/{A}/tasks", qos=1)
        await dispatcher.publish(f"sensors/{A}/tasks", b"task", qos=1)
        await sensor.publish(f"sensors/{A}/status", b"status", qos=1)
        async with asyncio.timeout(5):
            async for message in dispatcher.messages:
                assert message.payload == b"status"
                break
            async for message in sensor.messages:
                assert message.payload == b"task"
                break


async def test_removed_and_rekeyed_sensors_are_locked_out(secure_broker: SecureBroker) -> None:
    admin = secure_broker.admin()
    first = await admin.add_sensor(A)
    second = await admin.add_sensor(A)  # re-registration rotates the password
    assert first.password != second.password
    with pytest.raises(aiomqtt.MqttCodeError):
        async with client(secure_broker, first.username, first.password):
            pass
    async with client(secure_broker, second.username, second.password) as sensor:
        await admin.remove_sensor(A)
        with pytest.raises(aiomqtt.MqttError):  # the broker disconnects a deleted client at once
            await _read_until_disconnected(sensor)
    with pytest.raises(aiomqtt.MqttCodeError):
        async with client(secure_broker, second.username, second.password):
            pass
    await admin.remove_sensor(A)  # removing twice is fine
    with pytest.raises(BrokerAdminError):
        await admin.execute([{"command": "deleteClient"}])


async def _read_until_disconnected(sensor: aiomqtt.Client) -> None:
    async with asyncio.timeout(5):
        async for _ in sensor.messages:
            pass


async def test_tls_end_to_end(secure_broker: SecureBroker) -> None:
    a = await secure_broker.admin().add_sensor(A)
    tls = secure_broker.client_tls()
    async with client(secure_broker, a.username, a.password, port=secure_broker.tls_port, tls_context=tls) as sensor:
        await sensor.subscribe(f"sensors/{A}/tasks", qos=1)
        await sensor.publish(f"sensors/{A}/status", b"{}", qos=1)
    # The system trust store does not know the development CA: the handshake fails.
    untrusted = ssl.create_default_context()
    with (
        socket.create_connection((secure_broker.host, secure_broker.tls_port), timeout=5) as raw,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        untrusted.wrap_socket(raw, server_hostname="localhost")


@pytest.mark.parametrize("tls", [False, True], ids=["mqtt", "mqtts"])
async def test_registration_through_the_api_issues_working_credentials(
    secure_broker: SecureBroker, tmp_path: Path, tls: bool
) -> None:
    """The whole product on the secure broker: the dispatcher's own account (over TLS too), a key,
    a sensor registered through the API with the credentials it returns, a task completed, removal."""
    host, port = secure_broker.host, secure_broker.port
    scheme, dispatcher_port = ("mqtts", secure_broker.tls_port) if tls else ("mqtt", port)
    settings = Settings(
        mqtt_url=f"{scheme}://{DISPATCHER[0]}:{DISPATCHER[1]}@{host}:{dispatcher_port}",
        mqtt_ca_file=str(secure_broker.certs / "ca.crt"),
        broker_admin_url=f"mqtt://{ADMIN[0]}:{ADMIN[1]}@{host}:{port}",
        database_url=f"sqlite+aiosqlite:///{tmp_path}/secure.db",
        instance="secure-test",
    )
    await upgrade(settings.database_url)
    store = build_store(settings)
    dispatcher = Dispatcher(settings, store, dispatcher_link(settings))
    accounts = build_accounts(settings)
    app = create_app(build_service(settings, store, dispatcher, accounts))
    runner = asyncio.create_task(dispatcher.run())
    key = await KeyStore(store.db).create_key("acme")
    headers = {"Authorization": f"Bearer {key}"}
    try:
        await asyncio.wait_for(dispatcher.link.connected.wait(), 10)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://t", headers=headers
        ) as api:
            registered = (await api.post("/v1/sensors", json={"serial": A})).json()
            assert registered["mqtt"]["username"] == f"sensor-{A}"

            async def work(job: Job) -> dict[str, str]:
                return {"ok": "yes"}

            tls_context = secure_broker.client_tls() if tls else None
            options = SensorOptions(host=host, port=dispatcher_port, tls_context=tls_context, **registered["mqtt"])
            sensor = SensorClient(A, work, options)
            await sensor.start(timeout=10)
            body = {"sensor_serial": A, "file_id": "a3e4aed2-b091-41a6-8265-2185040e2c32", "type": "update_firmware"}
            task = (await api.post("/v1/tasks", json=body)).json()
            for _ in range(100):
                if (await api.get(f"/v1/tasks/{task['id']}")).json()["status_name"] == "Completed":
                    break
                await asyncio.sleep(0.1)
            assert (await api.get(f"/v1/tasks/{task['id']}/result")).json()["result"] == {"ok": "yes"}
            await sensor.stop()
            assert (await api.delete(f"/v1/sensors/{A}")).status_code == 204
        with pytest.raises(aiomqtt.MqttCodeError):
            async with client(secure_broker, **registered["mqtt"]):
                pass
    finally:
        dispatcher.stop()
        await asyncio.wait_for(runner, 15)
        if accounts is not None:
            await accounts.close()
        await store.db.dispose()
