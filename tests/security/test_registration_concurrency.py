"""Broker administration under concurrency and outages, on the shipped broker.

Before: every call read the first answer on the shared response topic, so 32 concurrent calls
got 24 wrong answers, and 128 concurrent registrations gave 18 x 500 and sensors locked out
with a password nobody was given; a removal with the broker down answered 500, kept the
database change and left the account alive for good.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import httpx

from sensortasks.broker.accounts import backend_account
from sensortasks.broker.dynsec import DynsecAdmin
from sensortasks.protocol import Topics

from .conftest import ADMIN, SecureBroker, ServiceFactory
from .probes import REFUSED, connack

log = logging.getLogger(__name__)
A, B = 444444444444444, 555555555555555
FIRST = 600000000000000


async def test_concurrent_admin_calls_get_their_own_answers(secure_broker: SecureBroker) -> None:
    """Two admin connections (two processes, say) share the response topic; 64 calls at once."""
    admins = [secure_broker.admin(), DynsecAdmin(secure_broker.host, secure_broker.port, *ADMIN)]
    try:
        names = [backend_account(Topics()).username for _ in range(32)]
        await asyncio.gather(*(admins[i % 2].issue(backend_account(Topics(), name)) for i, name in enumerate(names)))
        answers = await asyncio.gather(
            *(admins[i % 2].execute([{"command": "getClient", "username": n}]) for i, n in enumerate(names * 2))
        )
        got = [answer[0]["data"]["client"] for answer in answers]
        assert [(c["username"], c["clientid"]) for c in got] == [(n, n) for n in names * 2]
    finally:
        await admins[1].close()


async def test_overlapping_issues_of_one_account_share_one_working_password(secure_broker: SecureBroker) -> None:
    admin = secure_broker.admin()
    issued = await asyncio.gather(*(admin.add_sensor(A) for _ in range(16)))
    assert len({c.password for c in issued}) == 1
    assert await asyncio.to_thread(connack, secure_broker, issued[0].username, issued[0].password, f"sensor-{A}") == 0


async def test_overlapping_registrations_of_one_sensor_get_one_answer(secure_service: ServiceFactory) -> None:
    """In the application layer too: the database step and the broker step are shared."""
    service = await secure_service(dispatcher=False)
    accounts = service.app.state.sensortasks.service.accounts
    results = await asyncio.gather(*(accounts.register_sensor(B, None) for _ in range(16)))
    assert len({(created, c.password if c else None) for created, c in results}) == 1
    created, credentials = results[0]
    assert created
    assert credentials is not None
    assert (
        await asyncio.to_thread(connack, service.broker, credentials.username, credentials.password, f"sensor-{B}") == 0
    )


async def test_concurrent_registrations_through_the_api(secure_service: ServiceFactory) -> None:
    """128 concurrent ``POST /v1/sensors`` (8 serials x 16): all 200/201, and afterwards each sensor
    connects with the password of the answer it got last, and with no other it was given.
    (Requests that overlap share one password; a later one rotates it.)"""
    service = await secure_service(dispatcher=False)
    api = await service.api()
    serials = [FIRST + i for i in range(8)]
    answered: list[tuple[int, int, str]] = []  # (serial, status, password), in the order answered

    async def register(serial: int) -> None:
        response = await api.post("/v1/sensors", json={"serial": serial})
        answered.append((serial, response.status_code, response.json().get("mqtt", {}).get("password", "")))

    started = time.monotonic()
    await asyncio.gather(*(register(serial) for _ in range(16) for serial in serials))
    rate = len(answered) / (time.monotonic() - started)
    log.warning("128 concurrent registrations (8 serials x 16): %.0f registrations/s", rate)
    assert {status for _, status, _ in answered} <= {200, 201}, answered
    for serial in serials:
        mine = [(status, password) for s, status, password in answered if s == serial]
        assert 201 in {status for status, _ in mine}
        given = list(dict.fromkeys(password for _, password in mine))  # distinct, in the order answered
        codes = await asyncio.gather(
            *(asyncio.to_thread(connack, service.broker, f"sensor-{serial}", p, f"sensor-{serial}") for p in given)
        )
        assert [code == 0 for code in codes] == [p == given[-1] for p in given], (serial, codes)


async def test_registration_throughput(secure_service: ServiceFactory) -> None:
    """200 new sensors registered concurrently through the app, then all 200 rotated."""
    service = await secure_service(dispatcher=False)
    api = await service.api()
    serials = [FIRST + 1000 + i for i in range(200)]
    for expected in (201, 200):
        started = time.monotonic()
        responses = await asyncio.gather(*(api.post("/v1/sensors", json={"serial": s}) for s in serials))
        rate = len(serials) / (time.monotonic() - started)
        log.warning(
            "%d concurrent %s: %.0f registrations/s", len(serials), "new" if expected == 201 else "rotations", rate
        )
        assert [r.status_code for r in responses] == [expected] * len(serials)
        assert rate > 2, rate


def error_code(response: httpx.Response) -> str:
    body: dict[str, Any] = response.json()
    return str(body["error"]["code"])


async def test_removal_while_the_broker_is_down_changes_nothing(secure_service: ServiceFactory) -> None:
    """The broker SIGKILLed: removing a sensor or an MQTT client is a 503 and changes nothing
    (the credentials still work once the broker is back); the retry removes them for good.
    A registration or an MQTT client issued meanwhile is not kept."""
    service = await secure_service(dispatcher=False)
    api = await service.api()
    broker = service.broker
    sensor = (await api.post("/v1/sensors", json={"serial": A})).json()["mqtt"]
    backend = (await api.post("/v1/mqtt-clients")).json()
    logins = [(sensor["username"], sensor["password"]), (backend["username"], backend["password"])]

    broker.kill()
    for path in (f"/v1/sensors/{A}", f"/v1/mqtt-clients/{backend['username']}"):
        refused = await api.delete(path)
        assert (refused.status_code, error_code(refused)) == (503, "unavailable"), refused.text
    for method, path, body in (("POST", "/v1/sensors", {"serial": B}), ("POST", "/v1/mqtt-clients", {})):
        refused = await api.request(method, path, json=body)
        assert (refused.status_code, error_code(refused)) == (503, "unavailable"), refused.text
    assert (await api.get(f"/v1/sensors/{A}")).status_code == 200
    assert (await api.get(f"/v1/sensors/{B}")).status_code == 404
    assert [c["username"] for c in (await api.get("/v1/mqtt-clients")).json()["data"]] == [backend["username"]]

    broker.start()
    for username, password in logins:
        assert await asyncio.to_thread(connack, broker, username, password, username) == 0
    assert (await api.delete(f"/v1/sensors/{A}")).status_code == 204
    assert (await api.delete(f"/v1/mqtt-clients/{backend['username']}")).status_code == 204
    for username, password in logins:
        assert await asyncio.to_thread(connack, broker, username, password, username) in REFUSED
    assert (await api.delete(f"/v1/sensors/{A}")).status_code == 404
    assert (await api.post("/v1/sensors", json={"serial": B})).status_code == 201  # the 503 kept nothing


async def test_registrations_racing_removals_leave_no_stray_account(secure_service: ServiceFactory) -> None:
    """Whatever the interleaving, a sensor is registered exactly when its broker account exists."""
    service = await secure_service(dispatcher=False)
    api = await service.api()
    for round_ in range(10):
        calls = [api.post("/v1/sensors", json={"serial": A}), api.delete(f"/v1/sensors/{A}")]
        responses = await asyncio.gather(
            *(calls if round_ % 2 else calls[::-1]), api.post("/v1/sensors", json={"serial": A})
        )
        assert {r.status_code for r in responses} <= {200, 201, 204, 404}, [r.text for r in responses]
        registered = (await api.get(f"/v1/sensors/{A}")).status_code == 200
        answer = await service.accounts.execute(
            [{"command": "getClient", "username": f"sensor-{A}"}], tolerate=("Client not found",)
        )
        assert ("error" not in answer[0]) == registered, (round_, registered, answer)
