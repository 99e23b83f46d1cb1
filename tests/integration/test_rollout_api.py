"""The rollout endpoints of SPEC 10 against the real app, a real broker, SQLite and PostgreSQL:
validation, create/list/get, paging, pause/resume/cancel, tenancy and ``GET /v1/tasks?rollout_id``.

Rollout tasks are started by a pacing round of the store (`advance_rollouts`), as the dispatcher does."""

from __future__ import annotations

from typing import Any

from sqlalchemy import update

from sensortasks.api import rollout_examples as examples
from sensortasks.store import utcnow
from sensortasks.store.base import S
from sensortasks.store.keys import KeyStore

from .conftest import FILE_ID, Service, ServiceFactory, eventually
from .test_api import error
from .test_api_examples import shape

SERIAL = 234545767890987
BODY: dict[str, Any] = {"name": "fw 2.4.1", "type": "update_firmware", "file_id": FILE_ID, "sensors": [SERIAL]}
WINDOW = {"days": ["mon"], "start": "01:00", "end": "05:00"}
RATE = {"per_minute": 10, "increase": {"factor": 2, "every_completed": 5, "max_per_minute": 100}}


async def register(service: Service, serials: list[int], headers: dict[str, str] | None = None, **labels: str) -> None:
    for serial in serials:
        response = await service.api.post("/v1/sensors", json={"serial": serial}, headers=headers or {})
        assert response.status_code in (200, 201), response.text
    if labels:  # until registration takes labels, set them as the store keeps them
        async with service.store._write() as conn:
            await conn.execute(update(S).where(S.c.serial.in_(serials)).values(labels=labels))


async def create(service: Service, headers: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
    response = await service.api.post("/v1/rollouts", json=BODY | extra, headers=headers or {})
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def _with(path: str, value: Any) -> dict[str, Any]:
    """BODY with one member set, at a dotted path into the nested objects."""
    body: dict[str, Any] = {**BODY, "rate": {**RATE, "increase": {**RATE["increase"]}}, "abort": {
        "failure_percent": 5, "min_finished": 10}, "schedule": {"start_at": "2030-01-01", "windows": [dict(WINDOW)]}}  # fmt: skip
    *parents, last = path.split(".")
    node: Any = body
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    node[last] = value
    return body


#: One case per rule: the body member changed (a dotted path) and the field the 422 must name.
INVALID: list[tuple[str, Any, str]] = [
    ("name", "", "name"),
    ("name", "x" * 101, "name"),
    ("type", "reboot", "type"),
    ("file_id", "not-a-uuid", "file_id"),
    ("max_attempts", 0, "max_attempts"),
    ("max_attempts", 11, "max_attempts"),
    ("timeout_s", 9, "timeout_s"),
    ("timeout_s", 86401, "timeout_s"),
    ("sensors", [], "sensors"),
    ("sensors", [0], "sensors.0"),
    ("sensors", [SERIAL, "12"], "sensors.1"),
    ("sensors", [2**63], "sensors.0"),
    ("sensors", [SERIAL, SERIAL + 1, SERIAL], "sensors"),
    ("sensors", list(range(1, 100_002)), "sensors"),
    ("sensors", None, "selector"),
    ("selector", {}, "selector.labels"),
    ("selector", {"labels": {}}, "selector.labels"),
    ("selector", {"labels": {"site": "a"}, "other": 1}, "selector.other"),
    ("selector", {"labels": {"-site": "a"}}, "selector.labels.-site.[key]"),
    ("selector", {"labels": {"k" * 64: "a"}}, f"selector.labels.{'k' * 64}.[key]"),
    ("selector", {"labels": {"site": "a b"}}, "selector.labels.site"),
    ("selector", {"labels": {"site": "v" * 64}}, "selector.labels.site"),
    ("continuous", True, "continuous"),
    ("max_in_flight", 0, "max_in_flight"),
    ("max_in_flight", 100_001, "max_in_flight"),
    ("rate.per_minute", 0, "rate.per_minute"),
    ("rate.per_minute", 1_000_001, "rate.per_minute"),
    ("rate.increase.factor", 1.05, "rate.increase.factor"),
    ("rate.increase.factor", 5.5, "rate.increase.factor"),
    ("rate.increase.every_completed", 0, "rate.increase.every_completed"),
    ("rate.increase.max_per_minute", 5, "rate.increase"),
    ("abort.failure_percent", 101, "abort.failure_percent"),
    ("abort.failure_percent", -1, "abort.failure_percent"),
    ("abort.min_finished", 0, "abort.min_finished"),
    ("schedule.start_at", "next tuesday", "schedule.start_at"),
    ("schedule.end_at", "2029-12-31 23:59:59", "schedule.end_at"),
    ("schedule.end_at", "2030-01-01T00:00:00Z", "schedule.end_at"),
    ("schedule.windows", [], "schedule.windows"),
    ("schedule.windows.0.days", [], "schedule.windows.0.days"),
    ("schedule.windows.0.days", ["mon", "mon"], "schedule.windows.0.days"),
    ("schedule.windows.0.days", ["funday"], "schedule.windows.0.days.0"),
    ("schedule.windows.0.start", "1:00", "schedule.windows.0.start"),
    ("schedule.windows.0.start", "25:00", "schedule.windows.0.start"),
    ("schedule.windows.0.end", "00:30", "schedule.windows.0.end"),
    ("schedule.windows.0.end", "24:01", "schedule.windows.0.end"),
    ("colour", "red", "colour"),
]


async def test_every_rule_is_a_422_naming_the_field_and_nothing_is_created(make_service: ServiceFactory) -> None:
    service = await make_service()
    await register(service, [SERIAL])
    for path, value, field in INVALID:
        refused = error(await service.api.post("/v1/rollouts", json=_with(path, value)), 422, "invalid_input")
        assert refused["details"][0]["field"] == field, (path, value, refused)
        assert refused["details"][0]["rule"], refused
    assert (await service.api.get("/v1/rollouts")).json()["data"] == []
    # The same bodies with each member valid are accepted (the cases above fail for their own reason only).
    created = (await service.api.post("/v1/rollouts", json=_with("schedule.windows.0.end", "24:00"))).json()
    assert created["schedule"] == {"start_at": "2030-01-01 00:00:00", "end_at": None, "windows": [WINDOW | {
        "end": "24:00"}]}  # fmt: skip
    assert (created["state"], created["rate"], created["abort"]) == (
        "scheduled",
        {"per_minute": 10.0, "increase": {"factor": 2.0, "every_completed": 5, "max_per_minute": 100.0}},
        {"failure_percent": 5.0, "min_finished": 10},
    )


async def test_create_get_list_pages_and_state_filter(make_service: ServiceFactory) -> None:
    service = await make_service()
    await register(service, [SERIAL, SERIAL + 1, SERIAL + 2], site="a")
    by_selector = await create(service, sensors=None, selector={"labels": {"site": "a"}}, max_in_flight=2)
    assert (by_selector["state"], by_selector["max_attempts"], by_selector["timeout_s"]) == ("running", 3, 3600)
    assert by_selector["totals"] == {"targets": 3, "not_started": 3, "pending": 0, "ongoing": 0, "completed": 0,
                                     "error": 0, "cancelled": 0}  # fmt: skip
    assert (by_selector["sensors"], by_selector["selector"]) == (None, {"labels": {"site": "a"}})
    listed = await create(service, max_attempts=5, timeout_s=60, schedule={"start_at": "2100-01-01"})
    assert (listed["state"], listed["max_attempts"], listed["timeout_s"]) == ("scheduled", 5, 60)
    third = await create(service, sensors=[SERIAL + 1, SERIAL], rate={"per_minute": 30})
    assert (third["totals"]["targets"], third["rate_per_minute"]) == (2, 30.0)
    assert (await service.api.get(f"/v1/rollouts/{listed['id']}")).json() == listed

    first = (await service.api.get("/v1/rollouts", params={"limit": 2})).json()
    assert [r["id"] for r in first["data"]] == [third["id"], listed["id"]]
    assert first["has_more"]
    rest = (await service.api.get("/v1/rollouts", params={"limit": 2, "cursor": first["next_cursor"]})).json()
    assert ([r["id"] for r in rest["data"]], rest["has_more"], rest["next_cursor"]) == (
        [by_selector["id"]],
        False,
        None,
    )
    scheduled = (await service.api.get("/v1/rollouts", params={"state": "scheduled"})).json()
    assert [r["id"] for r in scheduled["data"]] == [listed["id"]]
    for params, field in [({"state": "done"}, "state"), ({"limit": 0}, "limit"), ({"limit": 1001}, "limit"),
                          ({"cursor": "nope"}, "cursor")]:  # fmt: skip
        refused = error(await service.api.get("/v1/rollouts", params=params), 422, "invalid_input")
        assert field in refused["message"], refused


async def test_pause_resume_cancel_and_what_the_state_forbids(make_service: ServiceFactory) -> None:
    service = await make_service()
    await register(service, [SERIAL])
    rollout = await create(service)
    path = f"/v1/rollouts/{rollout['id']}"
    for action, state in [("pause", "paused"), ("pause", "paused"), ("resume", "running"), ("pause", "paused")]:
        response = await service.api.post(f"{path}/{action}")
        assert (response.status_code, response.json()["state"]) == (200, state), response.text
    error(await service.api.post(f"{path}/cancel", json={"in_flight": "later"}), 422, "invalid_input")
    cancelled = (await service.api.post(f"{path}/cancel")).json()
    assert (cancelled["state"], cancelled["reason"]) == ("cancelled", "cancelled by the customer")
    assert cancelled["finished_at"] is not None
    assert (await service.api.post(f"{path}/cancel", json={"in_flight": "cancel"})).json()["state"] == "cancelled"
    for action in ("pause", "resume"):
        refused = error(await service.api.post(f"{path}/{action}"), 409, "conflict")
        assert refused["details"] == {"state": "cancelled"}
    for missing in (rollout["id"] + 1, 2**70):
        for action in ("pause", "resume", "cancel"):
            error(await service.api.post(f"/v1/rollouts/{missing}/{action}"), 404, "not_found")
        error(await service.api.get(f"/v1/rollouts/{missing}"), 404, "not_found")


async def test_cancel_with_its_tasks_in_flight(make_service: ServiceFactory) -> None:
    service = await make_service()
    await register(service, [SERIAL, SERIAL + 1])
    rollout = await create(service, sensors=[SERIAL, SERIAL + 1])
    await service.store.advance_rollouts(now=utcnow())  # the dispatcher's pacing may have run first

    async def both_started() -> bool:
        return (await service.store.get_rollout(rollout["id"])).totals.pending == 2

    await eventually(both_started, what="both tasks to start")
    cancelled = (await service.api.post(f"/v1/rollouts/{rollout['id']}/cancel", json={"in_flight": "cancel"})).json()
    assert cancelled["totals"] | {"targets": 0} == {"targets": 0, "not_started": 0, "pending": 0, "ongoing": 0,
                                                    "completed": 0, "error": 0, "cancelled": 2}  # fmt: skip
    tasks = (await service.api.get("/v1/tasks", params={"rollout_id": rollout["id"]})).json()["data"]
    assert [t["status_name"] for t in tasks] == ["Cancelled", "Cancelled"]


async def test_tasks_list_and_export_filter_by_rollout(make_service: ServiceFactory) -> None:
    service = await make_service()
    await register(service, [SERIAL, SERIAL + 1, SERIAL + 2])
    one = await create(service, sensors=[SERIAL, SERIAL + 1])
    other = await create(service, sensors=[SERIAL + 2])
    alone = await service.create(SERIAL)  # a task of no rollout
    await service.store.advance_rollouts(now=utcnow())

    async def listed(rollout_id: int) -> list[dict[str, Any]]:
        response = await service.api.get("/v1/tasks", params={"rollout_id": rollout_id})
        assert response.status_code == 200, response.text
        data: list[dict[str, Any]] = response.json()["data"]
        return data

    mine = await listed(one["id"])
    assert sorted(t["sensor_serial"] for t in mine) == [SERIAL, SERIAL + 1]
    assert {t["rollout_id"] for t in mine} == {one["id"]}
    assert [t["sensor_serial"] for t in await listed(other["id"])] == [SERIAL + 2]
    assert alone["id"] not in {t["id"] for t in mine}
    assert alone["rollout_id"] is None
    assert await listed(other["id"] + 1) == []
    export = await service.api.get("/v1/tasks/export.csv", params={"rollout_id": one["id"]})
    assert export.headers["X-Total-Count"] == "2"
    assert len(export.text.strip().splitlines()) == 3
    for bad in (0, -1, 2**63):
        error(await service.api.get("/v1/tasks", params={"rollout_id": bad}), 422, "invalid_input")


async def test_tenant_isolation(make_service: ServiceFactory) -> None:
    service = await make_service(auth="required")
    keys = KeyStore(service.store.db)
    as_alice = {"Authorization": f"Bearer {await keys.create_key('alice')}"}
    as_bob = {"Authorization": f"Bearer {await keys.create_key('bob')}"}
    await register(service, [SERIAL], as_alice, site="a")
    await register(service, [SERIAL + 1], as_bob, site="b")
    rollout = await create(service, as_alice)
    path = f"/v1/rollouts/{rollout['id']}"
    error(await service.api.get(path), 401, "unauthorized")
    for action in ("", "/pause", "/resume", "/cancel"):
        error(
            await service.api.request("GET" if not action else "POST", path + action, headers=as_bob), 404, "not_found"
        )
    assert (await service.api.get("/v1/rollouts", headers=as_bob)).json()["data"] == []

    foreign = error(await service.api.post("/v1/rollouts", json=BODY, headers=as_bob), 422, "invalid_input")
    assert foreign["message"].startswith(f"sensors.0: sensor {SERIAL} is not registered to you"), foreign
    assert foreign["details"] == {"unregistered_serials": [SERIAL]}
    mixed = {**BODY, "sensors": [SERIAL + 1, SERIAL]}
    refused = error(await service.api.post("/v1/rollouts", json=mixed, headers=as_bob), 422, "invalid_input")
    assert refused["message"].startswith("sensors.1:")
    assert refused["details"]["fields"] == ["sensors.1"]
    nothing = {**BODY, "sensors": None, "selector": {"labels": {"site": "a"}}}  # only alice's sensor has it
    assert (
        "targets"
        in error(await service.api.post("/v1/rollouts", json=nothing, headers=as_bob), 422, "invalid_input")["message"]
    )
    assert (await service.api.get("/v1/rollouts", headers=as_bob)).json()["data"] == []
    assert (await service.api.get(path, headers=as_alice)).json()["state"] == "running"
    await service.store.advance_rollouts(now=utcnow())
    filtered = await service.api.get("/v1/tasks", params={"rollout_id": rollout["id"]}, headers=as_bob)
    assert filtered.json()["data"] == []


async def test_the_examples_are_real_answers(make_service: ServiceFactory) -> None:
    service = await make_service()
    await register(service, [SERIAL], site="building-a", model="th-200")
    later = examples.ROLLOUT_CREATE["schedule"] | {"start_at": "2100-10-17 22:00:00"}  # still scheduled, as there
    created = (await service.api.post("/v1/rollouts", json=examples.ROLLOUT_CREATE | {"schedule": later})).json()
    assert shape(created) == shape(examples.ROLLOUT_CREATED)
    asked = ("selector", "rate", "abort", "max_in_flight", "state")
    assert {k: created[k] for k in asked} == {k: examples.ROLLOUT_CREATED[k] for k in asked}
    assert created["schedule"] == examples.ROLLOUT_CREATED["schedule"] | {"start_at": later["start_at"]}
    running = (await service.api.post("/v1/rollouts", json=examples.ROLLOUT_CREATE)).json()  # its start is past
    assert shape(running) == shape(examples.ROLLOUT)
    listed = (await service.api.get("/v1/rollouts")).json()
    assert shape(listed) == shape(examples.ROLLOUT_LIST)
    cancelled = (await service.api.post(f"/v1/rollouts/{running['id']}/cancel", json=examples.ROLLOUT_CANCEL)).json()
    assert shape(cancelled) == shape(examples.ROLLOUT_CANCELLED)
    assert cancelled["reason"] == examples.ROLLOUT_CANCELLED["reason"]
    unknown = await service.api.get(f"/v1/rollouts/{examples.ROLLOUT['id']}")
    assert unknown.json() == {"error": {"code": "not_found", "message": f"rollout {examples.ROLLOUT['id']} not found",
                                        "details": None}}  # fmt: skip
    spec = (await service.api.get("/openapi.json")).json()
    for path in ("/v1/rollouts", "/v1/rollouts/{rollout_id}", "/v1/rollouts/{rollout_id}/pause",
                 "/v1/rollouts/{rollout_id}/resume", "/v1/rollouts/{rollout_id}/cancel"):  # fmt: skip
        for operation in spec["paths"][path].values():
            assert operation["summary"], path
            assert operation["responses"]["200" if "201" not in operation["responses"] else "201"]["content"]
    assert "rollout_id" in {p["name"] for p in spec["paths"]["/v1/tasks"]["get"]["parameters"]}
