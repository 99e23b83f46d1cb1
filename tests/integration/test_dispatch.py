"""The dispatcher end to end: SDK sensors on a real Mosquitto, the store on SQLite."""

from __future__ import annotations

import asyncio
from typing import Any

from sensortasks.protocol import CancelMessage, TaskMessage
from sensortasks.sensor import Job, TaskFailed

from .conftest import FILE_ID, OpsWatcher, ServiceFactory, complete, eventually

SERIAL = 12345678909789
SEED_KEYS = [
    "id", "sensor_serial", "type", "status_id", "attempt_count", "created_at", "updated_at", "file_id", "status_name",
]  # fmt: skip
EXTENSIONS = ["max_attempts", "timeout_s", "progress", "started_at", "completed_at", "error", "rollout_id"]
TIMESTAMP = r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$"


async def test_happy_path_both_types_in_the_seed_shape(make_service: ServiceFactory) -> None:
    service = await make_service()
    await service.sensor(SERIAL)
    await service.sensor(SERIAL + 1)
    firmware = await service.create(SERIAL, "update_firmware")
    config = await service.create(SERIAL + 1, "update_configuration")
    assert firmware["status_id"] == 1
    assert firmware["status_name"] == "Pending"

    for created, task_type in ((firmware, "update_firmware"), (config, "update_configuration")):
        task = await service.wait_status(created["id"], "Completed")
        assert sorted(task) == sorted(SEED_KEYS + EXTENSIONS)
        assert task["type"] == task_type
        assert task["status_id"] == 2
        assert task["attempt_count"] == 1
        assert task["file_id"] == FILE_ID
        assert task["progress"] == 100
        assert task["error"] is None
        assert isinstance(task["sensor_serial"], int)
        for key in ("created_at", "updated_at", "started_at", "completed_at"):
            assert __import__("re").match(TIMESTAMP, task[key]), (key, task[key])
        kinds = [(e["kind"], e["to_status_name"]) for e in await service.events(created["id"])]
        assert kinds == [
            ("transition", "Pending"),
            ("sent", None),
            ("transition", "Ongoing"),
            ("transition", "Completed"),
        ]


async def test_one_task_at_a_time_per_sensor_in_order(make_service: ServiceFactory) -> None:
    service = await make_service()
    running: list[int] = []
    order: list[int] = []
    overlaps: list[tuple[int, int]] = []

    async def slow(job: Job) -> None:
        if running:
            overlaps.append((running[0], job.task_id))
        running.append(job.task_id)
        order.append(job.task_id)
        await asyncio.sleep(0.1)
        running.remove(job.task_id)

    ids = [
        (await service.create(SERIAL, "update_firmware" if i % 2 else "update_configuration"))["id"] for i in range(5)
    ]
    await service.sensor(SERIAL, slow)
    for task_id in ids:
        await service.wait_status(task_id, "Completed")
    assert order == ids
    assert overlaps == []


async def test_many_sensors_in_parallel(make_service: ServiceFactory) -> None:
    service = await make_service()
    serials = [SERIAL + i for i in range(40)]
    received: dict[int, list[int]] = {s: [] for s in serials}

    def recorder(serial: int) -> Any:
        async def handle(job: Job) -> None:
            received[serial].append(job.task_id)
            await asyncio.sleep(0.05)

        return handle

    await asyncio.gather(*(service.sensor(s, recorder(s)) for s in serials))
    created = {s: [(await service.create(s))["id"] for _ in range(3)] for s in serials}
    started = asyncio.get_running_loop().time()

    async def all_done() -> bool:
        counts = await service.store.counts()
        return counts[2] == len(serials) * 3  # type: ignore[index]

    await eventually(all_done, timeout=20, what="120 tasks to complete")
    elapsed = asyncio.get_running_loop().time() - started
    assert received == created
    # 3 sequential tasks of 50 ms per sensor, sensors in parallel: far less than 40 * 3 * 50 ms.
    assert elapsed < 6.0


async def test_retryable_error_then_success_on_the_next_attempt(make_service: ServiceFactory) -> None:
    service = await make_service()
    attempts: list[int] = []

    async def flaky(job: Job) -> dict[str, Any]:
        attempts.append(job.attempt)
        if job.attempt == 1:
            raise TaskFailed("flash write failed")
        return {"ok": True}

    await service.sensor(SERIAL, flaky)
    task = await service.wait_status((await service.create(SERIAL))["id"], "Completed")
    assert attempts == [1, 2]
    assert task["attempt_count"] == 2
    assert task["error"] is None
    steps = [
        (e["from_status_name"], e["to_status_name"])
        for e in await service.events(task["id"])
        if e["kind"] == "transition"
    ]
    assert steps == [
        (None, "Pending"),
        ("Pending", "Ongoing"),
        ("Ongoing", "Pending"),
        ("Pending", "Ongoing"),
        ("Ongoing", "Completed"),
    ]


async def test_non_retryable_error_ends_in_error(make_service: ServiceFactory) -> None:
    service = await make_service()

    async def fatal(job: Job) -> None:
        raise TaskFailed("checksum mismatch", retryable=False)

    await service.sensor(SERIAL, fatal)
    task = await service.wait_status((await service.create(SERIAL))["id"], "Error")
    assert task["attempt_count"] == 1
    assert task["status_id"] == 3
    assert "checksum mismatch" in task["error"]
    assert "not retryable" in task["error"]


async def test_attempts_used_up_end_in_error(make_service: ServiceFactory) -> None:
    service = await make_service()
    attempts: list[int] = []

    async def broken(job: Job) -> None:
        attempts.append(job.attempt)
        raise TaskFailed("disk full")

    await service.sensor(SERIAL, broken)
    task = await service.wait_status((await service.create(SERIAL, max_attempts=3))["id"], "Error")
    assert attempts == [1, 2, 3]
    assert task["attempt_count"] == 3
    assert "attempts used up" in task["error"]


async def test_offline_sensor_pauses_the_clock_and_gets_its_task_back(make_service: ServiceFactory) -> None:
    """End to end with SDK sensors; tests/behaviour drives the same rule with a fake clock.

    The acknowledgement timeout must outlast the sensor's stop and its offline presence being
    recorded (tens of ms); 0.3 s did not always on a loaded 2-core machine in the full suite."""
    service = await make_service(ack_timeout_s=1.0)
    stalled = asyncio.Event()

    async def never(job: Job) -> None:
        await stalled.wait()

    # The sensor gets attempt 1, never acknowledges it (silent) and goes offline.
    silent = await service.sensor(SERIAL, never, silent=True)
    task_id = (await service.create(SERIAL, max_attempts=2))["id"]
    await eventually(lambda: _received(silent, 1), what="attempt 1 to arrive")
    await silent.stop()
    await eventually(lambda: _online(service, SERIAL, online=False), what="offline presence")
    # A second task is queued behind it while the sensor is away.
    queued_id = (await service.create(SERIAL))["id"]
    # A silent sensor that stays online, sent its task after ours: once its acknowledgement
    # timeout has fired, ours would have fired too if the offline sensor's clock ran.
    witness = await service.sensor(SERIAL + 1, silent=True)
    witness_id = (await service.create(SERIAL + 1, max_attempts=3))["id"]
    await eventually(lambda: _received(witness, 2), what="the online sensor's acknowledgement timeout")
    task = await service.task(task_id)
    assert (task["status_name"], task["attempt_count"]) == ("Pending", 1)
    assert (await service.task(queued_id))["attempt_count"] == 0
    assert (await service.task(witness_id))["attempt_count"] >= 2

    # It comes back (a reboot: a new client with no memory) and gets the same attempt again.
    back = await service.sensor(SERIAL, complete)
    done = await service.wait_status(task_id, "Completed")
    assert done["attempt_count"] == 1
    assert next(m.attempt for m in back.received if isinstance(m, TaskMessage) and m.task_id == task_id) == 1
    await service.wait_status(queued_id, "Completed")
    assert "redelivered" in [e["kind"] for e in await service.events(task_id)]


async def test_cancel_while_pending_never_reaches_the_sensor(make_service: ServiceFactory) -> None:
    service = await make_service()
    gate = asyncio.Event()

    async def waits(job: Job) -> None:
        await gate.wait()

    sensor = await service.sensor(SERIAL, waits)
    first = await service.create(SERIAL)
    second = await service.create(SERIAL)
    await service.wait_status(first["id"], "Ongoing")
    response = await service.api.delete(f"/v1/tasks/{second['id']}")
    assert response.status_code == 200
    assert (response.json()["status_id"], response.json()["status_name"]) == (5, "Cancelled")
    again = await service.api.delete(f"/v1/tasks/{second['id']}")
    assert (again.status_code, again.json()["status_name"]) == (200, "Cancelled")
    third = await service.create(SERIAL)
    gate.set()
    await service.wait_status(first["id"], "Completed")
    # One task at a time, in order: once the third arrives, the second was passed over for good.
    await eventually(lambda: _received_task(sensor, third["id"]), what="the task after the cancelled one")
    assert [m.task_id for m in sensor.received if isinstance(m, TaskMessage)] == [first["id"], third["id"]]
    assert not any(isinstance(m, CancelMessage) and m.task_id == second["id"] for m in sensor.received)
    assert (await service.task(second["id"]))["attempt_count"] == 0


async def test_cancel_while_ongoing_tells_the_sensor_and_ignores_late_statuses(
    make_service: ServiceFactory,
) -> None:
    service = await make_service()
    cancelled = asyncio.Event()

    async def waits_for_cancel(job: Job) -> None:
        try:
            await job.cancelled.wait()
        finally:
            cancelled.set()

    sensor = await service.sensor(SERIAL, waits_for_cancel)
    task_id = (await service.create(SERIAL))["id"]
    await service.wait_status(task_id, "Ongoing")
    response = await service.api.delete(f"/v1/tasks/{task_id}")
    assert response.json()["status_name"] == "Cancelled"
    await asyncio.wait_for(cancelled.wait(), 5)
    assert any(isinstance(m, CancelMessage) and m.task_id == task_id for m in sensor.received)

    await service.publish(f"sensors/{SERIAL}/status", {"v": 1, "task_id": task_id, "attempt": 1, "status": "completed"})
    await eventually(lambda: _has_event(service, task_id, "ignored"), what="the late status to be recorded")
    task = await service.task(task_id)
    assert task["status_name"] == "Cancelled"
    conflict = await service.api.delete(f"/v1/tasks/{task_id}")
    assert conflict.status_code == 200  # already Cancelled: idempotent


async def test_cancelling_a_finished_task_is_a_conflict(make_service: ServiceFactory) -> None:
    service = await make_service()
    await service.sensor(SERIAL)
    task_id = (await service.create(SERIAL))["id"]
    await service.wait_status(task_id, "Completed")
    response = await service.api.delete(f"/v1/tasks/{task_id}")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "conflict"
    assert (await service.task(task_id))["status_name"] == "Completed"


async def test_bad_reports_change_nothing_and_are_visible(make_service: ServiceFactory, ops: OpsWatcher) -> None:
    service = await make_service()
    gate = asyncio.Event()

    async def waits(job: Job) -> None:
        await gate.wait()

    await service.sensor(SERIAL, waits)
    task_id = (await service.create(SERIAL, max_attempts=3))["id"]
    before = await service.wait_status(task_id, "Ongoing")
    status_topic = f"sensors/{SERIAL}/status"
    report = {"v": 1, "task_id": task_id, "status": "completed"}

    await service.publish(status_topic, report | {"attempt": 0})  # invalid attempt: malformed
    await service.publish(status_topic, report | {"attempt": 7})  # an attempt never sent
    await service.publish(f"sensors/{SERIAL + 5}/status", report | {"attempt": 1})  # wrong sensor
    await service.publish(status_topic, b"{not json")  # malformed
    await service.publish(status_topic, b'{"v": 1, "padding": "' + b"x" * 20_000 + b'"}')  # oversized
    await service.publish(status_topic, report | {"attempt": 1, "task_id": 999_999})  # unknown task
    await service.publish(status_topic, {"v": 2, "task_id": task_id, "attempt": 1, "status": "completed"})

    await eventually(lambda: _count(ops, "ops/rejected", 6), what="6 rejections")
    reasons = " | ".join(r["reason"] for r in ops.on("ops/rejected"))
    for expected in ("malformed status", "another sensor", "payload too large", "unknown task 999999"):
        assert expected in reasons
    await eventually(lambda: _has_event(service, task_id, "ignored"), what="the unknown attempt to be recorded")
    after = await service.task(task_id)
    assert {k: after[k] for k in ("status_id", "attempt_count")} == {
        k: before[k] for k in ("status_id", "attempt_count")
    }

    # The real completion, then a duplicate and a stale one.
    gate.set()
    await service.wait_status(task_id, "Completed")
    await service.publish(status_topic, report | {"attempt": 1})
    await eventually(lambda: _ignored(service, task_id, "already Completed"), what="the duplicate to be recorded")
    events = await service.events(task_id)
    assert [e["to_status_name"] for e in events if e["kind"] == "transition"].count("Completed") == 1
    assert service.dispatcher.counters.rejected.total() >= 6
    codes = sorted(r["code"] for r in ops.on("ops/rejected"))
    assert codes == ["malformed", "malformed", "malformed", "oversized", "unknown_task", "wrong_sensor"]


async def test_ops_topics_show_transitions_stats_and_dispatcher_presence(
    make_service: ServiceFactory, ops: OpsWatcher
) -> None:
    service = await make_service()
    await service.sensor(SERIAL)
    task_id = (await service.create(SERIAL))["id"]
    await service.wait_status(task_id, "Completed")
    await eventually(lambda: _count(ops, f"ops/events/{SERIAL}/{task_id}", 3), what="3 ops events")
    events = ops.on(f"ops/events/{SERIAL}/{task_id}")
    assert [(e["from"], e["to"]) for e in events] == [
        (None, "Pending"),
        ("Pending", "Ongoing"),
        ("Ongoing", "Completed"),
    ]
    assert set(events[-1]) >= {"v", "task_id", "sensor_serial", "type", "from", "to", "attempt", "reason", "at"}
    await eventually(lambda: _count(ops, "ops/stats", 1), what="stats")
    assert set(ops.on("ops/stats")[-1]["tasks"]) == {"Pending", "Ongoing", "Completed", "Error", "Cancelled"}
    presence = ops.on(f"ops/dispatchers/{service.settings.instance}")
    assert presence
    assert presence[-1]["status"] == "online"


async def _received(sensor: Any, attempt: int) -> bool:
    return any(isinstance(m, TaskMessage) and m.attempt == attempt for m in sensor.received)


async def _received_task(sensor: Any, task_id: int) -> bool:
    return any(isinstance(m, TaskMessage) and m.task_id == task_id for m in sensor.received)


async def _online(service: Any, serial: int, *, online: bool) -> bool:
    response = await service.api.get(f"/v1/sensors/{serial}")
    return bool(response.status_code == 200 and response.json()["online"] is online)


async def _has_event(service: Any, task_id: int, kind: str) -> bool:
    return kind in [e["kind"] for e in await service.events(task_id)]


async def _ignored(service: Any, task_id: int, text: str) -> bool:
    return any(e["kind"] == "ignored" and text in e["reason"] for e in await service.events(task_id))


async def _count(ops: OpsWatcher, prefix: str, n: int) -> bool:
    return len(ops.on(prefix)) >= n
