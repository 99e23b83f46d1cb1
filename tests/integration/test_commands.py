"""``tasks/commands/*``: MQTT 5 request/response sharing the REST rules."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.exc import IntegrityError, OperationalError

from sensortasks.commands.mqtt import CommandHandler
from sensortasks.service.ratelimit import FailureLimiter

from .conftest import (
    FILE_ID,
    OpsWatcher,
    Service,
    ServiceFactory,
    Wiretap,
    add_backend,
    command_properties,
    eventually,
    request,
    send_command,
)

SERIAL = 12345678909789


async def test_create_get_cancel_over_mqtt(make_service: ServiceFactory) -> None:
    service = await make_service()
    body = {"v": 1, "sensor_serial": SERIAL, "file_id": FILE_ID, "type": "update_firmware"}
    created = await request(service, "create", body)
    assert created["v"] == 1
    assert created["ok"] is True
    task = created["task"]
    assert (task["status_name"], task["attempt_count"]) == ("Pending", 0)
    stored = await service.task(task["id"])
    for field in ("id", "sensor_serial", "type", "file_id", "created_at", "max_attempts", "timeout_s"):
        assert task[field] == stored[field]
    got = await request(service, "get", {"v": 1, "task_id": task["id"]})
    assert got["task"]["id"] == task["id"]
    cancelled = await request(service, "cancel", {"v": 1, "task_id": task["id"]})
    assert cancelled["task"]["status_name"] == "Cancelled"
    missing = await request(service, "get", {"v": 1, "task_id": 10**9})
    assert missing == {
        "v": 1,
        "ok": False,
        "task": None,
        "error": {"code": "not_found", "message": "task 1000000000 not found"},
    }


async def test_bad_commands_get_clear_errors_and_are_rejected(make_service: ServiceFactory, ops: OpsWatcher) -> None:
    service = await make_service()
    bad_type = await request(service, "create", {"v": 1, "sensor_serial": SERIAL, "file_id": FILE_ID, "type": "reboot"})
    assert bad_type["ok"] is False
    assert bad_type["error"]["code"] == "invalid_input"
    assert bad_type["error"]["message"].startswith("type:")
    garbage = await request(service, "get", b"\x00\xff")
    assert garbage["error"]["code"] == "invalid_input"
    unversioned = await request(service, "get", {"task_id": 1})
    assert unversioned["error"] == {"code": "invalid_input", "message": "v: Field required"}
    unknown = await request(service, "foo", {"v": 1, "task_id": 1})
    assert unknown["error"]["code"] == "unknown_command"
    assert "create, cancel, get" in unknown["error"]["message"]
    await eventually(lambda: _rejected(ops, 4), what="4 rejections")
    assert [r["code"] for r in ops.on("ops/rejected")] == ["malformed", "malformed", "malformed", "unknown_command"]
    assert dict(service.dispatcher.counters.rejected) == {"malformed": 3, "unknown_command": 1}
    assert (await service.api.get("/v1/tasks")).json()["data"] == []


async def test_commands_authenticate_and_isolate_tenants(make_service: ServiceFactory) -> None:
    service = await make_service(auth="required")
    a, b = await add_backend(service, "alice"), await add_backend(service, "bob")
    alice, bob = a.key, b.key
    body = {"v": 1, "sensor_serial": SERIAL, "file_id": FILE_ID, "type": "update_firmware"}
    registered = await service.api.post(
        "/v1/sensors", json={"serial": SERIAL}, headers={"Authorization": f"Bearer {alice}"}
    )
    assert registered.status_code == 201
    anonymous = await request(service, "create", body, reply_prefix=a.reply_prefix)
    assert anonymous["error"]["code"] == "unauthorized"
    created = await request(service, "create", body, reply_prefix=a.reply_prefix, authorization=f"Bearer {alice}")
    task_id = created["task"]["id"]
    foreign = await request(
        service, "cancel", {"v": 1, "task_id": task_id}, reply_prefix=b.reply_prefix, authorization=f"Bearer {bob}"
    )
    assert foreign["error"]["code"] == "not_found"
    mine = await request(
        service, "get", {"v": 1, "task_id": task_id}, reply_prefix=a.reply_prefix, authorization=f"Bearer {alice}"
    )
    assert mine["task"]["status_name"] == "Pending"


async def test_idempotent_create_over_mqtt(make_service: ServiceFactory) -> None:
    service = await make_service()
    body = {"v": 1, "sensor_serial": SERIAL, "file_id": FILE_ID, "type": "update_firmware"}
    first = await request(service, "create", body, **{"idempotency-key": "k1"})
    second = await request(service, "create", body, **{"idempotency-key": "k1"})
    assert first == second
    assert len((await service.api.get("/v1/tasks")).json()["data"]) == 1


async def _rejected(ops: OpsWatcher, n: int) -> bool:
    return len(ops.on("ops/rejected")) >= n


CREATE = {"v": 1, "sensor_serial": SERIAL, "file_id": FILE_ID, "type": "update_firmware"}


async def _create_while_the_store_raises(service: Service, exc: Exception) -> dict[str, Any]:
    """The reply to a create while the store's `create` raises `exc` (restored after)."""
    original = service.store.create

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise exc

    service.store.create = broken  # type: ignore[method-assign]
    try:
        return await request(service, "create", CREATE)
    finally:
        service.store.create = original  # type: ignore[method-assign]


async def test_a_database_failure_gets_an_error_reply_and_the_dispatcher_keeps_running(
    make_service: ServiceFactory,
) -> None:
    service = await make_service()
    locked = OperationalError("INSERT", {}, Exception("database is locked"))
    reply = await _create_while_the_store_raises(service, locked)
    assert reply["error"]["code"] == "unavailable"
    assert (await request(service, "create", CREATE))["ok"] is True
    assert service.dispatcher.link.connected.is_set()


async def test_a_database_bug_is_an_internal_error_as_over_rest_not_unavailable(
    make_service: ServiceFactory, ops: OpsWatcher
) -> None:
    """Only what `store.engine.unavailable` calls down is ``unavailable`` (REST: 503); a
    constraint violation is a bug (REST: 500): answered ``internal_error`` and refused."""
    service = await make_service()
    bug = IntegrityError("INSERT", {}, Exception("UNIQUE constraint failed"))
    reply = await _create_while_the_store_raises(service, bug)
    assert reply["error"]["code"] == "internal_error"
    await eventually(lambda: _rejected(ops, 1), what="the refusal on ops/rejected")
    assert service.dispatcher.counters.rejected == {"internal_error": 1}
    assert service.dispatcher.link.connected.is_set()


async def test_replies_go_only_to_the_callers_own_reply_prefix(
    make_service: ServiceFactory, ops: OpsWatcher, wiretap: Wiretap
) -> None:
    service = await make_service(auth="required")
    alice, bob = await add_backend(service, "alice"), await add_backend(service, "bob")
    get = {"v": 1, "task_id": 1}
    refused = {
        "bob's key, alice's reply topic": (f"{alice.reply_prefix}/x", bob.key),
        "a topic under no backend's prefix": ("elsewhere/x", alice.key),
        "a prefix of alice's prefix": ("replies", alice.key),
        "a sensor's task topic": ("sensors/5/tasks", alice.key),
        "no response topic": (None, alice.key),
    }
    correlations = []
    for i, (topic, key) in enumerate(refused.values()):
        correlations.append(f"refused-{i}".encode())
        properties = command_properties(topic, correlations[-1], authorization=f"Bearer {key}")
        await send_command(service, "get", get, properties)
    # Commands are handled in order: once a later one is answered, those before it were handled.
    sentinel = await request(service, "get", get, reply_prefix=alice.reply_prefix, authorization=f"Bearer {alice.key}")
    assert sentinel["error"]["code"] == "not_found"
    await eventually(lambda: _rejected(ops, len(refused)), what="the refusals")
    assert [r["code"] for r in ops.on("ops/rejected")] == ["response_topic_refused"] * len(refused)
    for correlation in correlations:
        assert wiretap.carrying(correlation) == []
    assert service.dispatcher.counters.rejected == {"response_topic_refused": len(refused)}
    assert service.dispatcher.connected


async def test_repeated_bad_keys_are_slowed_down_per_reply_account(
    make_service: ServiceFactory, ops: OpsWatcher, caplog: pytest.LogCaptureFixture
) -> None:
    service = await make_service(auth="required")
    alice, bob = await add_backend(service, "alice"), await add_backend(service, "bob")
    handler = service.dispatcher.commands
    assert isinstance(handler, CommandHandler)
    now = [1000.0]
    handler.limiter = FailureLimiter(max_failures=3, window_s=60, clock=lambda: now[0])
    get = {"v": 1, "task_id": 1}
    guesses = [f"stk_guess{i}-secret-tail" for i in range(3)]
    for guess in guesses:
        reply = await request(service, "get", get, reply_prefix=alice.reply_prefix, authorization=f"Bearer {guess}")
        assert reply["error"]["code"] == "unauthorized"
    # Over the budget: refused without checking the key, even a good one.
    limited = await request(service, "get", get, reply_prefix=alice.reply_prefix, authorization=f"Bearer {alice.key}")
    assert limited["error"]["code"] == "too_many_requests"
    assert limited["error"]["message"].endswith("retry after 60 s")
    other = await request(service, "get", get, reply_prefix=bob.reply_prefix, authorization=f"Bearer {bob.key}")
    assert other["error"]["code"] == "not_found"  # bob's account has its own budget
    now[0] += 61
    again = await request(service, "get", get, reply_prefix=alice.reply_prefix, authorization=f"Bearer {alice.key}")
    assert again["error"]["code"] == "not_found"
    await eventually(lambda: _rejected(ops, 4), what="4 rejections")
    assert service.dispatcher.counters.rejected == {"unauthorized": 3, "rate_limited": 1}
    failures = [r.getMessage() for r in caplog.records if "authentication failed" in r.getMessage()]
    assert len(failures) == 3
    for guess, line in zip(guesses, failures, strict=True):
        assert guess[:8] in line
        assert "secret" not in line
    assert all(alice.key not in r.getMessage() and "secret" not in r.getMessage() for r in caplog.records)


async def test_an_exception_in_a_command_is_an_internal_error_not_a_stopped_dispatcher(
    make_service: ServiceFactory, ops: OpsWatcher
) -> None:
    service = await make_service()
    original = service.store.get

    async def buggy(task_id: int, **kwargs: Any) -> Any:
        if task_id == 666:
            raise RuntimeError("a bug")
        return await original(task_id, **kwargs)

    service.store.get = buggy  # type: ignore[method-assign]
    reply = await request(service, "get", {"v": 1, "task_id": 666})
    assert reply["error"]["code"] == "internal_error"
    assert "a bug" not in reply["error"]["message"]
    assert (await request(service, "get", {"v": 1, "task_id": 1}))["error"]["code"] == "not_found"
    await eventually(lambda: _rejected(ops, 1), what="the rejection")
    assert [r["code"] for r in ops.on("ops/rejected")] == ["internal_error"]
    assert service.dispatcher.connected
