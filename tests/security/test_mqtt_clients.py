"""Backend and operator accounts: ``/v1/mqtt-clients``, ``sensortasks mqtt-clients``, and
`watch` and `simulate` on the secure broker with the accounts made for them."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from sensortasks.api import create_app
from sensortasks.config import Settings
from sensortasks.ops.watch import Link, WatchState, _follow
from sensortasks.runtime import build_service, build_store
from sensortasks.store import upgrade
from tests.integration.conftest import FILE_ID, eventually

from .conftest import INSTANCE, SecureBroker, SecureService, ServiceFactory
from .probes import REFUSED, acl_codes, connack

SERIAL = 333333333333333


async def test_a_customer_issues_lists_and_deletes_its_backend_accounts(secure_service: ServiceFactory) -> None:
    service = await secure_service(dispatcher=False)
    acme, globex = await service.api("acme"), await service.api("globex")
    created = await acme.post("/v1/mqtt-clients", json={})
    assert created.status_code == 201, created.text
    account = created.json()
    assert set(account) == {"username", "password", "client_id", "reply_topic_prefix", "created_at"}
    assert re.fullmatch(r"backend-[0-9a-f]{10}", account["username"])
    assert account["client_id"] == account["username"]
    assert account["reply_topic_prefix"] == f"replies/{account['client_id']}"
    login = (service.broker, account["username"], account["password"])
    assert await asyncio.to_thread(connack, *login, account["client_id"]) == 0
    assert await asyncio.to_thread(connack, *login, "someone-else") in REFUSED
    other = (await acme.post("/v1/mqtt-clients")).json()  # no body at all is fine too
    assert other["username"] != account["username"]

    public = {k: v for k, v in account.items() if k != "password"}
    listed = (await acme.get("/v1/mqtt-clients")).json()["data"]
    assert public in listed
    assert all("password" not in a for a in listed)
    assert len(listed) == 2
    assert (await acme.get(f"/v1/mqtt-clients/{account['username']}")).json() == public
    # Another customer's account does not exist for globex.
    assert (await globex.get("/v1/mqtt-clients")).json() == {"data": []}
    for method in ("GET", "DELETE"):
        response = await globex.request(method, f"/v1/mqtt-clients/{account['username']}")
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"
    assert (await asyncio.to_thread(connack, *login, account["client_id"])) == 0

    assert (await acme.delete(f"/v1/mqtt-clients/{account['username']}")).status_code == 204
    assert await asyncio.to_thread(connack, *login, account["client_id"]) in REFUSED
    assert (await acme.delete(f"/v1/mqtt-clients/{account['username']}")).status_code == 404
    assert [a["username"] for a in (await acme.get("/v1/mqtt-clients")).json()["data"]] == [other["username"]]

    refused = await acme.post("/v1/mqtt-clients", json={"name": "mine"})
    assert refused.status_code == 422
    accounts = service.app.state.sensortasks.service.accounts
    await accounts.add_client("ops", name="alice")
    await accounts.add_client("dispatcher", name="edge-9")
    for hidden in ("ops-alice", "sensortasks-edge-9"):  # operators' and dispatchers' are nobody's to see
        assert (await acme.get(f"/v1/mqtt-clients/{hidden}")).status_code == 404
        assert (await acme.delete(f"/v1/mqtt-clients/{hidden}")).status_code == 404
    assert len((await acme.get("/v1/mqtt-clients")).json()["data"]) == 1


async def test_without_a_broker_admin_accounts_cannot_be_issued(tmp_path: Path) -> None:
    """409 ``not_configured`` (retrying cannot help, so not a 503); sensors register without credentials."""
    import httpx

    settings = Settings(database_url=f"sqlite+aiosqlite:///{tmp_path}/plain.db", auth="disabled")
    await upgrade(settings.database_url)
    store = build_store(settings)
    app = create_app(build_service(settings, store))
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as api:
            refused = await api.post("/v1/mqtt-clients")
            assert refused.status_code == 409
            assert refused.json()["error"]["code"] == "not_configured"
            assert "SENSORTASKS_BROKER_ADMIN_URL" in refused.json()["error"]["message"]
            assert (await api.get("/v1/mqtt-clients")).json() == {"data": []}
            assert (await api.post("/v1/sensors", json={"serial": SERIAL})).json() == {"serial": SERIAL, "mqtt": None}
            assert (await api.delete(f"/v1/sensors/{SERIAL}")).status_code == 204
    finally:
        await store.db.dispose()


async def follow_until(service: SecureService, username: str, password: str, done: Any) -> WatchState:
    """Run `watch`'s loop as this account until `done(state)` holds."""
    state = WatchState(topics=service.settings.topics, link=Link(host=service.broker.host, port=service.broker.port))
    follow = asyncio.create_task(_follow(state, username, password, None))
    try:
        await eventually(lambda: asyncio.sleep(0, done(state)), what="watch to see the dispatcher")
    finally:
        follow.cancel()
    return state


async def test_watch_works_with_an_operator_account(secure_service: ServiceFactory) -> None:
    """`watch` needs only ``ops/#``: an ops account (bound to its client id) is enough, and can do nothing else."""
    service = await secure_service()
    ops = (await service.app.state.sensortasks.service.accounts.add_client("ops", name="alice")).credentials
    assert (ops.username, ops.client_id) == ("ops-alice", "ops-alice")
    state = await follow_until(
        service, ops.username, ops.password, lambda s: s.dispatchers.get(INSTANCE) and s.sensors_online is not None
    )
    assert state.dispatchers[INSTANCE] is True
    granted, acked = await asyncio.to_thread(
        acl_codes, service.broker, ops.username, ops.password, subscribe=["sensors/#", "tasks/#"], publish=["ops/x"]
    )
    assert granted + acked == [135, 135, 135]


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "sensortasks", *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return done


async def test_the_command_line_issues_accounts_and_simulate_uses_them(
    secure_service: ServiceFactory, tmp_path: Path
) -> None:
    """``sensors add`` prints ``{"serial", "mqtt": {"username", "password", "client_id"}}``, which
    ``simulate --credentials`` takes; ``mqtt-clients add --customer|--ops|--dispatcher``, ``list``, ``remove``."""
    service = await secure_service()
    broker: SecureBroker = service.broker
    env = os.environ | {
        "SENSORTASKS_DATABASE_URL": service.settings.database_url,
        "SENSORTASKS_BROKER_ADMIN_URL": broker.admin_url,
        "SENSORTASKS_MQTT_URL": f"mqtt://{broker.host}:{broker.port}",
    }

    async def run(*args: str) -> dict[str, Any]:
        done = await asyncio.to_thread(cli, env, *args)
        last: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        return last

    registered = await run("sensors", "add", str(SERIAL), "--customer", "acme")
    assert registered["mqtt"]["client_id"] == registered["mqtt"]["username"] == f"sensor-{SERIAL}"
    backend = await run("mqtt-clients", "add", "--customer", "acme")
    ops = await run("mqtt-clients", "add", "--ops", "--name", "bob")
    dispatcher = await run("mqtt-clients", "add", "--dispatcher", "edge-2")
    assert backend["reply_topic_prefix"] == f"replies/{backend['client_id']}"
    assert (ops["username"], ops["reply_topic_prefix"]) == ("ops-bob", None)
    assert dispatcher["username"] == dispatcher["client_id"] == "sensortasks-edge-2"
    for account in (backend, ops, dispatcher):
        assert (
            await asyncio.to_thread(connack, broker, account["username"], account["password"], account["username"]) == 0
        )
    listed = json.loads((await asyncio.to_thread(cli, env, "mqtt-clients", "list", "--json")).stdout)
    assert sorted((a["username"], a["kind"]) for a in listed) == sorted(
        [(backend["username"], "backend"), ("ops-bob", "ops"), ("sensortasks-edge-2", "dispatcher")]
    )
    await asyncio.to_thread(cli, env, "mqtt-clients", "remove", "ops-bob")
    assert await asyncio.to_thread(connack, broker, "ops-bob", ops["password"], "ops-bob") in REFUSED

    # The simulated sensor logs in with the credentials registration printed and completes a task.
    credentials = tmp_path / "fleet.jsonl"
    credentials.write_text(json.dumps(registered) + "\n")
    api = await service.api("acme")
    task = await api.post("/v1/tasks", json={"sensor_serial": SERIAL, "file_id": FILE_ID, "type": "update_firmware"})
    simulate = asyncio.to_thread(
        cli, env, "simulate", "--credentials", str(credentials), "--work-s", "0", "--seconds", "3"
    )
    simulated = asyncio.create_task(simulate)

    async def completed() -> bool:
        return bool((await api.get(f"/v1/tasks/{task.json()['id']}")).json()["status_name"] == "Completed")

    await eventually(completed, timeout=20, what="the simulated sensor to complete its task")
    await simulated
