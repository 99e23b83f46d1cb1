"""The examples of /openapi.json have the shape of the API's real answers (keys, nulls, codes)."""

from __future__ import annotations

from typing import Any

from sensortasks.api import examples

from .conftest import ServiceFactory

SERIAL = examples.SERIAL


def shape(value: Any) -> Any:
    """Keys and types (null, number, text...) of a JSON value, not its contents."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    return type(value).__name__


async def test_task_and_sensor_examples_are_real_answers(make_service: ServiceFactory) -> None:
    service = await make_service()
    created = await service.api.post("/v1/tasks", json={**examples.TASK_CREATE, "type": "update_configuration"})
    assert created.status_code == 201
    task = created.json()
    # A fresh task: everything the example of the 201 says, but its id and times.
    moving = {"id", "created_at", "updated_at"}
    assert {k: v for k, v in task.items() if k not in moving} == {
        k: v for k, v in examples.TASK_PENDING.items() if k not in moving
    }
    assert shape(task) == shape(examples.TASK_PENDING)
    listed = (await service.api.get("/v1/tasks")).json()
    assert shape(listed) | {"next_cursor": "str"} == shape(examples.TASK_LIST)
    events = (await service.api.get(f"/v1/tasks/{task['id']}/events")).json()
    assert events["data"][0] == examples.EVENTS["data"][0] | {"at": events["data"][0]["at"]}
    cancelled = (await service.api.delete(f"/v1/tasks/{task['id']}")).json()
    assert shape(cancelled) == shape(examples.TASK_CANCELLED)
    assert cancelled["status_name"] == examples.TASK_CANCELLED["status_name"]

    await service.sensor(SERIAL)
    second = await service.create(SERIAL)
    completed = await service.wait_status(second["id"], "Completed")
    assert shape(completed) == shape(examples.TASK_COMPLETED)
    result = (await service.api.get(f"/v1/tasks/{second['id']}/result")).json()
    assert shape(result | {"result": examples.RESULT["result"]}) == shape(examples.RESULT)  # any object
    sensor = (await service.api.get(f"/v1/sensors/{SERIAL}")).json()
    # An unregistered sensor has no labels; their examples: test_sensor_labels.py.
    assert shape(sensor) | {"task_in_flight": "int", "labels": shape(examples.LABELS)} == shape(examples.SENSOR)
    assert (await service.api.get("/healthz")).json() == examples.HEALTH_OK
    metrics = (await service.api.get("/metrics")).text.splitlines()
    assert {line for line in examples.METRICS.splitlines() if line.startswith("#")} <= set(metrics)
    exported = (await service.api.get(f"/v1/tasks/export.csv?sensor_serial={SERIAL}")).text
    assert exported.split("\n")[0] == examples.CSV.split("\n")[0]


async def test_error_examples_are_real_answers(make_service: ServiceFactory) -> None:
    service = await make_service()
    invalid = await service.api.post("/v1/tasks", json={**examples.TASK_CREATE, "sensor_serial": 0})
    assert invalid.json() == examples.ERRORS[422]
    unreadable = await service.api.post("/v1/tasks", content=b"\x80", headers={"content-type": "application/json"})
    assert unreadable.json() == examples.ERRORS[400]
    unknown = await service.api.get("/v1/tasks/16624171")
    assert unknown.json() == examples.ERRORS[404]
    huge = await service.api.post(
        "/v1/tasks", content=b" " * (5 * 1024 * 1024), headers={"content-type": "application/json"}
    )
    assert huge.json() == examples.ERRORS[413]

    await service.sensor(SERIAL)
    task = await service.create(SERIAL)
    await service.wait_status(task["id"], "Completed")
    refused = (await service.api.delete(f"/v1/tasks/{task['id']}")).json()
    assert refused == examples.ERRORS[409] | {
        "error": examples.ERRORS[409]["error"]
        | {"message": f"task {task['id']} is Completed and can no longer be cancelled"}
    }


async def test_unauthorized_example_is_a_real_answer(make_service: ServiceFactory) -> None:
    service = await make_service(auth="required")
    response = await service.api.get("/v1/tasks")
    assert response.status_code == 401
    assert response.json() == examples.ERRORS[401]
