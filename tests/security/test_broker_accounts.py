"""Every broker account is bound to its client id; what each kind of account can and cannot do.

The attacks of issue 8 on the shipped configuration: a sensor logging in with the dispatcher's
client id (it got the dispatcher's session and kicked it off), a sensor taking over another
sensor's session, and backends and operators needing the dispatcher's account.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from sensortasks.broker.accounts import backend_account, ops_account
from sensortasks.broker.dynsec import DynsecAdmin
from sensortasks.protocol import Topics
from sensortasks.sensor import Job, SensorClient, SensorOptions
from sensortasks.testing import free_port
from tests.integration.conftest import FILE_ID, eventually

from .conftest import ADMIN, DISPATCHER, INSTANCE, SecureBroker, ServiceFactory
from .probes import NOT_AUTHORIZED, REFUSED, Probe, acl_codes, connack

A, B = 111111111111111, 222222222222222
TOPICS = Topics()


async def complete(job: Job) -> dict[str, str]:
    return {"done": str(job.task_id)}


async def issued(broker: SecureBroker) -> dict[str, tuple[str, str]]:
    """One account of each kind: kind -> (username, password)."""
    admin = broker.admin()
    made = {
        "sensor": await admin.add_sensor(A),
        "backend": await admin.issue(backend_account(TOPICS)),
        "ops": await admin.issue(ops_account(TOPICS, "alice")),
    }
    accounts = {kind: (c.username, c.password) for kind, c in made.items()}
    assert all(c.client_id == c.username for c in made.values())
    return accounts | {"dispatcher": DISPATCHER}


@pytest.mark.parametrize("kind", ["sensor", "backend", "ops", "dispatcher"])
async def test_every_account_is_refused_under_any_other_client_id(secure_broker: SecureBroker, kind: str) -> None:
    accounts = await issued(secure_broker)
    username, password = accounts[kind]
    others = [u for k, (u, _) in accounts.items() if k != kind]
    client_ids = ["intruder", "", username.upper(), username + "x", *others, username]
    codes = await asyncio.gather(
        *(asyncio.to_thread(connack, secure_broker, username, password, client_id) for client_id in client_ids)
    )
    assert [code in REFUSED for code in codes] == [True] * (len(client_ids) - 1) + [False], dict(
        zip(client_ids, codes, strict=True)
    )
    assert codes[-1] == 0


async def test_a_sensor_cannot_hijack_the_dispatcher_session(secure_service: ServiceFactory) -> None:
    """Issue 8's critical finding: with its own credentials and the dispatcher's client id a sensor
    got the dispatcher's persistent session (others' statuses, other customers' commands and keys)
    and kicked it off. Now the login is refused, and the dispatcher never notices."""
    service = await secure_service()
    assert service.dispatcher is not None
    api = await service.api()
    mqtt = (await api.post("/v1/sensors", json={"serial": A})).json()["mqtt"]
    stolen = (mqtt["username"], mqtt["password"])
    attempts = [
        Probe(service.broker, *stolen, f"sensortasks-{INSTANCE}", clean_start=False),
        Probe(service.broker, *stolen, f"sensortasks-{INSTANCE}", clean_start=True),
        Probe(service.broker, DISPATCHER[0], "guessed", f"sensortasks-{INSTANCE}", clean_start=False),
    ]
    for attempt in attempts:
        assert await asyncio.to_thread(attempt.connect) in REFUSED
    async with SensorClient(A, complete, SensorOptions(host=service.broker.host, port=service.broker.port, **mqtt)):
        task = await api.post("/v1/tasks", json={"sensor_serial": A, "file_id": FILE_ID, "type": "update_firmware"})
        task_id = task.json()["id"]

        async def completed() -> bool:
            return bool((await api.get(f"/v1/tasks/{task_id}")).json()["status_name"] == "Completed")

        await eventually(completed, what="the sensor's statuses to reach the dispatcher")
    for attempt in attempts:
        attempt.close()
        assert attempt.messages == []
    assert service.dispatcher.link.connects == 1  # never kicked off
    assert service.dispatcher.link.connected.is_set()


async def test_a_sensor_cannot_take_over_another_sensors_session(secure_broker: SecureBroker) -> None:
    """Sensor A's account under client id ``sensor-<B>``: refused, B stays connected, and a task
    queued in B's persistent session is delivered to B, not to A."""
    admin = secure_broker.admin()
    a, b = await admin.add_sensor(A), await admin.add_sensor(B)
    dispatcher = Probe(secure_broker, *DISPATCHER, DISPATCHER[0])
    sensor_b = Probe(secure_broker, b.username, b.password, b.client_id, clean_start=False)
    assert await asyncio.to_thread(dispatcher.connect) == 0
    assert await asyncio.to_thread(sensor_b.connect) == 0
    try:
        assert await asyncio.to_thread(sensor_b.subscribe, TOPICS.tasks(B)) == 1
        # While B is connected: the takeover is refused and B is not kicked off.
        live = await asyncio.to_thread(connack, secure_broker, a.username, a.password, b.client_id, clean_start=False)
        assert live in REFUSED
        assert await asyncio.to_thread(dispatcher.publish, TOPICS.tasks(B), b"live") < 0x80
        assert await asyncio.to_thread(sensor_b.wait_message) == (TOPICS.tasks(B), b"live")
        assert sensor_b.disconnects == []
        assert sensor_b.connected
        # While B is offline, a task waits in its session; A cannot log in to that session.
        sensor_b.close()
        assert await asyncio.to_thread(dispatcher.publish, TOPICS.tasks(B), b"queued") < 0x80
        thief = Probe(secure_broker, a.username, a.password, b.client_id, clean_start=False)
        assert await asyncio.to_thread(thief.connect) in REFUSED
        thief.close()
        back = Probe(secure_broker, b.username, b.password, b.client_id, clean_start=False)
        assert await asyncio.to_thread(back.connect) == 0
        assert await asyncio.to_thread(back.wait_message) == (TOPICS.tasks(B), b"queued")
        back.close()
        assert thief.messages == []
    finally:
        dispatcher.close()
        sensor_b.close()


async def test_what_each_account_may_publish_and_read(secure_broker: SecureBroker) -> None:
    """The ACL matrix: SUBACK/PUBACK reason codes (135: not authorized) for each kind of account."""
    accounts = await issued(secure_broker)
    other_backend = await secure_broker.admin().issue(backend_account(TOPICS))
    own_replies = f"{TOPICS.reply_prefix(accounts['backend'][0])}/#"
    matrix: dict[str, tuple[dict[str, bool], dict[str, bool]]] = {
        # kind: ({subscription: allowed}, {publication: allowed})
        "sensor": (
            {TOPICS.tasks(A): True, TOPICS.tasks(B): False, TOPICS.all_tasks: False, TOPICS.ops_all: False,
             TOPICS.all_commands: False, TOPICS.all_replies: False},
            {TOPICS.status(A): True, TOPICS.presence(A): True, TOPICS.status(B): False, TOPICS.tasks(A): False,
             TOPICS.command("create"): False, TOPICS.ops_stats: False},
        ),
        "backend": (
            {own_replies: True, f"{TOPICS.reply_prefix(other_backend.username)}/#": False,
             TOPICS.all_replies: False, TOPICS.all_commands: False, TOPICS.all_status: False,
             TOPICS.ops_all: False, f"$share/g/{TOPICS.all_commands}": False},
            {TOPICS.command("create"): True, TOPICS.command("get"): True, TOPICS.tasks(A): False,
             TOPICS.status(A): False, TOPICS.ops_stats: False, f"{TOPICS.reply_prefix(other_backend.username)}/x": False},
        ),
        "ops": (
            {TOPICS.ops_all: True, TOPICS.all_status: False, TOPICS.all_commands: False, TOPICS.all_replies: False,
             "#": False},
            {TOPICS.ops_stats: False, TOPICS.command("create"): False, TOPICS.tasks(A): False},
        ),
        "dispatcher": (
            {TOPICS.all_status: True, TOPICS.all_presence: True, TOPICS.all_commands: True,
             f"$share/g/{TOPICS.all_status}": True, f"$share/g/{TOPICS.all_commands}": True,
             TOPICS.all_replies: False, TOPICS.ops_all: False, "#": False},
            {TOPICS.tasks(A): True, TOPICS.ops_stats: True, f"{TOPICS.reply_prefix('backend-x')}/r": True,
             TOPICS.status(A): True, TOPICS.presence(A): False, TOPICS.command("create"): False},
        ),
    }  # fmt: skip
    for kind, (subscriptions, publications) in matrix.items():
        granted, acked = await asyncio.to_thread(
            acl_codes, secure_broker, *accounts[kind], subscribe=list(subscriptions), publish=list(publications)
        )
        assert [c < 0x80 for c in granted] == list(subscriptions.values()), (
            kind,
            dict(zip(subscriptions, granted, strict=True)),
        )
        assert [c < 0x80 for c in acked] == list(publications.values()), (
            kind,
            dict(zip(publications, acked, strict=True)),
        )
        assert all(c == NOT_AUTHORIZED for c in granted + acked if c >= 0x80)


def entry_point(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sensortasks.broker", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_the_dispatcher_account_entry_point(secure_broker: SecureBroker) -> None:
    """``python -m sensortasks.broker ADMIN_URL INSTANCE PASSWORD`` (used by ./scripts/run):
    creates or updates ``sensortasks-INSTANCE``, bound to that client id; exit 1 and one line when
    the broker is unreachable or refuses."""
    url = secure_broker.admin_url
    username = "sensortasks-edge-1"
    for password in ("first-secret", "second-secret"):  # idempotent; again rotates the password
        done = await asyncio.to_thread(entry_point, url, "edge-1", password)
        assert (done.returncode, done.stderr) == (0, "")
        assert await asyncio.to_thread(connack, secure_broker, username, password, username) == 0
        assert await asyncio.to_thread(connack, secure_broker, username, password, "edge-2") in REFUSED
    assert await asyncio.to_thread(connack, secure_broker, username, "first-secret", username) in REFUSED
    closed = f"mqtt://admin:x@127.0.0.1:{free_port()}"  # nothing listens there
    for bad_url in (url.replace("admin-secret", "wrong"), closed):
        failed = await asyncio.to_thread(entry_point, bad_url, "edge-1", "third-secret")
        assert failed.returncode == 1
        assert len(failed.stderr.strip().splitlines()) == 1, failed.stderr
        assert "sensortasks-edge-1" in failed.stderr
    usage = await asyncio.to_thread(entry_point, url, "edge-1")
    assert usage.returncode == 2
    assert "usage" in usage.stderr


async def test_custom_topic_prefixes_shape_the_acls(secure_broker: SecureBroker) -> None:
    """ACLs come from `Topics`; re-issuing an account with other prefixes replaces its ACLs."""
    custom = Topics(sensors="fleet/a", ops="fleet/a-ops", commands="fleet/a-cmd", replies="fleet/a-replies")
    async with DynsecAdmin(secure_broker.host, secure_broker.port, *ADMIN, topics=custom) as admin:
        sensor = await admin.add_sensor(A)
        await admin.add_dispatcher("custom", "custom-secret")
    expected = {custom.tasks(A): True, TOPICS.tasks(A): False}
    granted, acked = await asyncio.to_thread(
        acl_codes, secure_broker, sensor.username, sensor.password, subscribe=list(expected),
        publish=[custom.status(A), TOPICS.status(A)],
    )  # fmt: skip
    assert [c < 0x80 for c in granted + acked] == [True, False, True, False]
    granted, acked = await asyncio.to_thread(
        acl_codes, secure_broker, "sensortasks-custom", "custom-secret",
        subscribe=[custom.all_status, f"$share/g/{custom.all_commands}", TOPICS.all_status],
        publish=[custom.tasks(A), custom.ops_stats, f"{custom.reply_prefix('backend-x')}/r", TOPICS.tasks(A)],
    )  # fmt: skip
    assert [c < 0x80 for c in granted + acked] == [True, True, False, True, True, True, False]
    again = await secure_broker.admin().add_sensor(A)  # the default prefixes now
    granted, _ = await asyncio.to_thread(
        acl_codes, secure_broker, again.username, again.password, subscribe=list(expected), publish=[]
    )
    assert [c < 0x80 for c in granted] == [False, True]
