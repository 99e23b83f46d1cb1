"""The REST API of SPEC 3 against the real app, a real broker and SQLite."""

from __future__ import annotations

import csv
import io
from typing import Any

import httpx

from sensortasks.store.keys import KeyStore

from .conftest import FILE_ID, Service, ServiceFactory

SERIAL = 234545767890987
BODY = {"sensor_serial": SERIAL, "file_id": FILE_ID, "type": "update_configuration"}


def error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code
    return body["error"]


async def test_create_validation_names_the_field_and_the_rule(make_service: ServiceFactory) -> None:
    service = await make_service()
    cases = [
        ({**BODY, "sensor_serial": 0}, "sensor_serial"),
        ({**BODY, "sensor_serial": "12"}, "sensor_serial"),
        ({**BODY, "file_id": "not-a-uuid"}, "file_id"),
        ({**BODY, "type": "reboot"}, "type"),
        ({**BODY, "max_attempts": 11}, "max_attempts"),
        ({**BODY, "timeout_s": 9}, "timeout_s"),
        ({**BODY, "colour": "red"}, "colour"),
        ({"file_id": FILE_ID, "type": "update_firmware"}, "sensor_serial"),
    ]
    for body, field in cases:
        details = error(await service.api.post("/v1/tasks", json=body), 422, "invalid_input")
        assert field in details["message"], details
        assert details["details"][0]["field"] == field
    not_json = await service.api.post("/v1/tasks", content=b"{", headers={"content-type": "application/json"})
    error(not_json, 422, "invalid_input")
    assert (await service.store.counts())[1] == 0  # type: ignore[index]


async def test_optional_attempts_and_timeout(make_service: ServiceFactory) -> None:
    service = await make_service()
    task = await service.create(SERIAL, max_attempts=5, timeout_s=120)
    assert (task["max_attempts"], task["timeout_s"]) == (5, 120)
    default = await service.create(SERIAL)
    assert (default["max_attempts"], default["timeout_s"]) == (3, 3600)


async def test_idempotency_key(make_service: ServiceFactory) -> None:
    service = await make_service()
    headers = {"Idempotency-Key": "order-42"}
    first = await service.api.post("/v1/tasks", json=BODY, headers=headers)
    again = await service.api.post("/v1/tasks", json=BODY, headers=headers)
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json()
    other = await service.api.post("/v1/tasks", json={**BODY, "type": "update_firmware"}, headers=headers)
    error(other, 409, "conflict")
    page = (await service.api.get("/v1/tasks")).json()
    assert len(page["data"]) == 1


async def test_bulk_is_all_or_nothing_and_names_the_bad_index(make_service: ServiceFactory) -> None:
    service = await make_service()
    good = [{**BODY, "sensor_serial": SERIAL + i} for i in range(3)]
    refused = await service.api.post("/v1/tasks/bulk", json={"tasks": [*good, {**BODY, "type": "x"}]})
    details = error(refused, 422, "invalid_input")
    assert details["details"][0]["field"] == "tasks.3.type"
    assert (await service.api.get("/v1/tasks")).json()["data"] == []
    created = await service.api.post("/v1/tasks/bulk", json={"tasks": good})
    assert created.status_code == 201
    assert len(created.json()["ids"]) == 3
    error(await service.api.post("/v1/tasks/bulk", json={"tasks": []}), 422, "invalid_input")


async def test_bulk_of_ten_thousand(make_service: ServiceFactory) -> None:
    service = await make_service()
    tasks = [{**BODY, "sensor_serial": SERIAL + i % 500} for i in range(10_000)]
    response = await service.api.post("/v1/tasks/bulk", json={"tasks": tasks})
    assert response.status_code == 201
    assert len(set(response.json()["ids"])) == 10_000
    error(await service.api.post("/v1/tasks/bulk", json={"tasks": [*tasks, BODY]}), 422, "invalid_input")


async def _seed(service: Service) -> list[dict[str, Any]]:
    created = [
        await service.create(SERIAL + i % 3, "update_firmware" if i % 2 else "update_configuration") for i in range(9)
    ]
    await service.api.delete(f"/v1/tasks/{created[0]['id']}")
    return created


async def test_list_filters_and_pagination(make_service: ServiceFactory) -> None:
    service = await make_service()
    created = await _seed(service)

    async def ids(**params: Any) -> list[int]:
        response = await service.api.get("/v1/tasks", params=params)
        assert response.status_code == 200, response.text
        return [t["id"] for t in response.json()["data"]]

    everything = [t["id"] for t in reversed(created)]
    assert await ids() == everything
    assert await ids(sensor_serial=SERIAL + 1) == [
        t["id"] for t in reversed(created) if t["sensor_serial"] == SERIAL + 1
    ]
    assert await ids(status="Cancelled") == [created[0]["id"]]
    assert await ids(status="cancelled,1") == everything
    assert await ids(status="5") == [created[0]["id"]]
    assert await ids(type="update_firmware") == [t["id"] for t in reversed(created) if t["type"] == "update_firmware"]
    today = created[0]["created_at"][:10]
    assert await ids(created_since=today, created_until=today) == everything
    assert await ids(created_until="2000-01-01") == []
    assert await ids(updated_since=created[0]["created_at"]) == everything
    assert await ids(updated_since=today + "T00:00:00Z") == everything
    assert await ids(sensor_serial=SERIAL, type="update_configuration", status="Pending") == [
        t["id"] for t in reversed(created[1:]) if t["sensor_serial"] == SERIAL and t["type"] == "update_configuration"
    ]

    seen: list[int] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 4} | ({"cursor": cursor} if cursor else {})
        page = (await service.api.get("/v1/tasks", params=params)).json()
        seen += [t["id"] for t in page["data"]]
        await service.create(SERIAL)  # new tasks do not disturb a walk in progress
        if not page["has_more"]:
            assert page["next_cursor"] is None
            break
        cursor = page["next_cursor"]
    assert seen == everything


async def test_list_refuses_bad_parameters(make_service: ServiceFactory) -> None:
    service = await make_service()
    for params, field in [
        ({"status": "done"}, "status"),
        ({"limit": 0}, "limit"),
        ({"limit": 1001}, "limit"),
        ({"created_since": "yesterday"}, "created_since"),
        ({"cursor": "bm9wZQ"}, "cursor"),
        ({"sensor_serial": -1}, "sensor_serial"),
        ({"type": "reboot"}, "type"),
        ({"created_until": "9999-12-31"}, "created_until"),
        ({"updated_since": "0001-01-01T00:00:00+01:00"}, "updated_since"),
    ]:
        details = error(await service.api.get("/v1/tasks", params=params), 422, "invalid_input")
        assert field in details["message"], (params, details)


async def test_export_csv_streams_the_filtered_list(make_service: ServiceFactory) -> None:
    service = await make_service()
    created = await _seed(service)
    response = await service.api.get("/v1/tasks/export.csv", params={"status": "Pending"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert [int(r["id"]) for r in rows] == [t["id"] for t in reversed(created[1:])]
    assert rows[0]["status_name"] == "Pending"
    assert list(rows[0])[:9] == [
        "id", "sensor_serial", "type", "status_id", "status_name", "attempt_count", "created_at", "updated_at", "file_id",
    ]  # fmt: skip
    empty = await service.api.get("/v1/tasks/export.csv", params={"created_until": "2000-01-01"})
    assert empty.text.startswith("id,sensor_serial")
    assert len(empty.text.strip().splitlines()) == 1


async def test_result_events_and_sensor(make_service: ServiceFactory) -> None:
    service = await make_service()
    task = await service.create(SERIAL)
    error(await service.api.get(f"/v1/tasks/{task['id']}/result"), 404, "not_found")
    await service.sensor(SERIAL)
    await service.wait_status(task["id"], "Completed")
    result = (await service.api.get(f"/v1/tasks/{task['id']}/result")).json()
    assert result["result"] == {"version": "2.4.1", "task": task["id"]}
    assert result["status_name"] == "Completed"
    sensor = (await service.api.get(f"/v1/sensors/{SERIAL}")).json()
    assert sensor["online"] is True
    assert sensor["task_in_flight"] is None
    assert sensor["queued"] == 0
    assert sensor["last_seen"]
    error(await service.api.get("/v1/sensors/1"), 404, "not_found")
    error(await service.api.get("/v1/tasks/99999/events"), 404, "not_found")


async def test_unknown_routes_methods_and_huge_ids_use_the_error_format(make_service: ServiceFactory) -> None:
    service = await make_service()
    error(await service.api.get("/v1/nothing"), 404, "not_found")
    error(await service.api.put("/v1/tasks"), 405, "method_not_allowed")
    error(await service.api.get(f"/v1/tasks/{2**70}"), 404, "not_found")
    error(await service.api.get("/v1/tasks/abc"), 422, "invalid_input")
    error(await service.api.delete("/v1/tasks/0"), 404, "not_found")


async def test_oversized_bodies_get_413(make_service: ServiceFactory) -> None:
    service = await make_service()
    huge = b'{"tasks": [' + b" " * (5 * 1024 * 1024) + b"]}"
    response = await service.api.post("/v1/tasks/bulk", content=huge, headers={"content-type": "application/json"})
    error(response, 413, "payload_too_large")


async def test_health_and_metrics(make_service: ServiceFactory) -> None:
    service = await make_service()
    await service.sensor(SERIAL)
    task = await service.create(SERIAL)
    await service.wait_status(task["id"], "Completed")
    health = await service.api.get("/healthz")
    assert health.json() == {"status": "ok", "database": "up", "broker": "up"}
    await service.publish(f"sensors/{SERIAL}/status", b"nonsense")
    text = ""
    for _ in range(50):
        text = (await service.api.get("/metrics")).text
        if 'sensortasks_rejected_total{reason="malformed"} 1.0' in text:
            break
        await __import__("asyncio").sleep(0.1)
    assert 'sensortasks_tasks{status="Completed"} 1.0' in text
    assert 'sensortasks_rejected_total{reason="malformed"} 1.0' in text
    assert 'sensortasks_rejected_total{reason="oversized"} 0.0' in text  # every code, from 0 on
    assert "sensortasks_mqtt_connected 1.0" in text
    assert "sensortasks_dispatch_latency_seconds_count 1.0" in text
    assert "sensortasks_transitions_total" in text


async def test_api_keys_and_tenant_isolation(make_service: ServiceFactory) -> None:
    service = await make_service(auth="required")
    keys = KeyStore(service.store.db)
    alice, bob = await keys.create_key("alice"), await keys.create_key("bob")
    error(await service.api.get("/v1/tasks"), 401, "unauthorized")
    error(await service.api.get("/v1/tasks", headers={"Authorization": "Bearer nope"}), 401, "unauthorized")
    as_alice = {"Authorization": f"Bearer {alice}"}
    as_bob = {"Authorization": f"Bearer {bob}"}
    assert (await service.api.post("/v1/sensors", json={"serial": SERIAL}, headers=as_alice)).status_code == 201
    task = (await service.api.post("/v1/tasks", json=BODY, headers=as_alice)).json()
    assert (await service.api.get(f"/v1/tasks/{task['id']}", headers=as_alice)).status_code == 200
    for method, path in [
        ("GET", f"/v1/tasks/{task['id']}"),
        ("DELETE", f"/v1/tasks/{task['id']}"),
        ("GET", f"/v1/tasks/{task['id']}/events"),
        ("GET", f"/v1/tasks/{task['id']}/result"),
        ("GET", f"/v1/sensors/{SERIAL}"),
        ("DELETE", f"/v1/sensors/{SERIAL}"),
    ]:
        error(await service.api.request(method, path, headers=as_bob), 404, "not_found")
    assert (await service.api.get("/v1/tasks", headers=as_bob)).json()["data"] == []
    assert len((await service.api.get("/v1/tasks/export.csv", headers=as_bob)).text.strip().splitlines()) == 1
    assert (await service.api.get(f"/v1/tasks/{task['id']}", headers=as_alice)).json()["status_name"] == "Pending"


async def test_openapi_documents_every_route(make_service: ServiceFactory) -> None:
    service = await make_service()
    spec = (await service.api.get("/openapi.json")).json()
    for path in ["/v1/tasks", "/v1/tasks/bulk", "/v1/tasks/{task_id}", "/v1/tasks/{task_id}/events",
                 "/v1/tasks/{task_id}/result", "/v1/tasks/export.csv", "/v1/sensors/{serial}", "/v1/sensors/count",
                 "/v1/overview", "/v1/events", "/healthz", "/metrics"]:  # fmt: skip
        assert path in spec["paths"], path
        for operation in spec["paths"][path].values():
            assert operation.get("summary"), (path, operation)
    assert spec["paths"]["/v1/tasks"]["post"]["responses"]["422"]
    assert (await service.api.get("/docs")).status_code == 200


async def test_sensor_registration_and_ownership(make_service: ServiceFactory) -> None:
    service = await make_service(auth="required")
    keys = KeyStore(service.store.db)
    as_alice = {"Authorization": f"Bearer {await keys.create_key('alice')}"}
    as_bob = {"Authorization": f"Bearer {await keys.create_key('bob')}"}

    unregistered = await service.api.post("/v1/tasks", json=BODY, headers=as_alice)
    assert "not registered" in error(unregistered, 422, "invalid_input")["message"]
    first = await service.api.post("/v1/sensors", json={"serial": SERIAL}, headers=as_alice)
    assert first.status_code == 201
    assert first.json() == {"serial": SERIAL, "mqtt": None}  # no broker admin configured in this test
    assert (await service.api.post("/v1/sensors", json={"serial": SERIAL}, headers=as_alice)).status_code == 200
    error(await service.api.post("/v1/sensors", json={"serial": SERIAL}, headers=as_bob), 409, "conflict")
    error(await service.api.post("/v1/sensors", json={"serial": 0}, headers=as_bob), 422, "invalid_input")

    foreign = await service.api.post("/v1/tasks", json=BODY, headers=as_bob)
    assert "not registered" in error(foreign, 422, "invalid_input")["message"]
    bulk = {"tasks": [{**BODY, "sensor_serial": SERIAL + 1}, BODY]}
    refused = error(await service.api.post("/v1/tasks/bulk", json=bulk, headers=as_bob), 422, "invalid_input")
    assert refused["message"].startswith("tasks.0.sensor_serial")
    assert refused["details"]["fields"] == ["tasks.0.sensor_serial", "tasks.1.sensor_serial"]

    task = (await service.api.post("/v1/tasks", json=BODY, headers=as_alice)).json()
    sensor = (await service.api.get(f"/v1/sensors/{SERIAL}", headers=as_alice)).json()
    assert (sensor["task_in_flight"], sensor["queued"]) in ((task["id"], 0), (None, 1))
    assert (await service.api.delete(f"/v1/sensors/{SERIAL}", headers=as_alice)).status_code == 204
    assert (await service.api.get(f"/v1/tasks/{task['id']}", headers=as_alice)).json()["status_name"] == "Cancelled"
    error(await service.api.delete(f"/v1/sensors/{SERIAL}", headers=as_alice), 404, "not_found")
    # Released, it can be registered by someone else.
    assert (await service.api.post("/v1/sensors", json={"serial": SERIAL}, headers=as_bob)).status_code == 201
