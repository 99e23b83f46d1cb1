"""Rollouts end to end in process: the API, the dispatcher's pacing, a real Mosquitto, SDK
sensors and a real database (SQLite and PostgreSQL). What is counted is what the sensors saw."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from sensortasks.protocol import CancelMessage, TaskMessage
from sensortasks.sensor import Job, TaskFailed
from sensortasks.store import TaskFilter
from tests.integration.conftest import FILE_ID, OpsWatcher, Service, ServiceFactory, eventually

FIRST = 4_100_000_000_000


@dataclass
class Fleet:
    """What SDK sensors running rollout tasks saw: how many ran at once, and when each started."""

    running: int = 0
    most: int = 0
    starts: list[float] = field(default_factory=list)
    #: Set to let the held tasks finish (None: tasks finish at once).
    release: asyncio.Event | None = None
    fail: bool = False

    async def handle(self, job: Job) -> dict[str, Any]:
        self.running += 1
        self.most = max(self.most, self.running)
        self.starts.append(time.monotonic())
        try:
            if self.release is not None:
                await self.release.wait()
            else:
                await asyncio.sleep(0.02)  # the work itself, not a wait for something
            if self.fail:
                raise TaskFailed("flash write failed", retryable=False)
            return {"version": "2.5", "task": job.task_id}
        finally:
            self.running -= 1


async def start_fleet(service: Service, fleet: Fleet, count: int, **labels: str) -> list[int]:
    serials = [FIRST + i for i in range(count)]
    for serial in serials:
        response = await service.api.post("/v1/sensors", json={"serial": serial, "labels": labels})
        assert response.status_code in (200, 201), response.text
    await asyncio.gather(*(service.sensor(serial, fleet.handle) for serial in serials))
    return serials


async def create(service: Service, **body: Any) -> dict[str, Any]:
    response = await service.api.post(
        "/v1/rollouts", json={"name": "fw 2.5", "type": "update_firmware", "file_id": FILE_ID} | body
    )
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def rollout(service: Service, rollout_id: int) -> dict[str, Any]:
    response = await service.api.get(f"/v1/rollouts/{rollout_id}")
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()
    return found


async def until(service: Service, rollout_id: int, done: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
    last: dict[str, Any] = {}

    async def check() -> bool:
        nonlocal last
        last = await rollout(service, rollout_id)
        return done(last)

    try:
        await eventually(check, timeout=20, what=what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; rollout is {last}") from None
    return last


def state_is(state: str) -> Callable[[dict[str, Any]], bool]:
    return lambda r: bool(r["state"] == state)


async def test_the_cap_holds_at_the_sensors_and_every_target_completes_once(
    make_service: ServiceFactory, ops: OpsWatcher
) -> None:
    service = await make_service()
    fleet = Fleet()
    serials = await start_fleet(service, fleet, 12)
    created = await create(service, sensors=serials, max_in_flight=3)
    done = await until(service, created["id"], state_is("completed"), "the rollout to complete")

    assert fleet.most == 3  # more would break the cap; fewer would not use it
    assert done["totals"] | {"targets": 12} == {
        "targets": 12, "not_started": 0, "pending": 0, "ongoing": 0, "completed": 12, "error": 0, "cancelled": 0
    }  # fmt: skip
    tasks = (await service.api.get("/v1/tasks", params={"rollout_id": created["id"], "limit": 100})).json()["data"]
    assert sorted(t["sensor_serial"] for t in tasks) == serials  # one task per sensor
    assert {t["rollout_id"] for t in tasks} == {created["id"]}

    async def last_copy_completed() -> bool:
        copies = ops.on(f"ops/rollouts/{created['id']}")
        return bool(copies) and copies[-1]["state"] == "completed" and copies[-1]["totals"]["completed"] == 12

    await eventually(last_copy_completed, what="ops/rollouts to say completed")
    text = (await service.api.get("/metrics")).text
    assert 'sensortasks_rollouts{state="completed"} 1.0' in text
    assert 'sensortasks_rollouts{state="running"} 0.0' in text
    events = [e for e in ops.on("ops/events/") if e["task_id"] in {t["id"] for t in tasks}]
    assert events
    assert {e["rollout_id"] for e in events} == {created["id"]}


async def test_starts_are_spread_at_the_rate_without_a_burst(make_service: ServiceFactory) -> None:
    service = await make_service()
    fleet = Fleet()
    serials = await start_fleet(service, fleet, 8)
    created = await create(service, sensors=serials, max_in_flight=100, rate={"per_minute": 600})
    await until(service, created["id"], state_is("completed"), "the rollout to complete")

    tasks, _ = await service.store.list_tasks(TaskFilter(rollout_id=created["id"]), limit=100)
    made = sorted(t.created_at for t in tasks if t.created_at is not None)  # the API shows whole seconds
    assert len(made) == 8
    # 10 a second, never ahead of it: the k-th task is made no sooner than 0.1 s after the one
    # before it would have been at the rate (a pacer running late may catch up to the rate, never
    # pass it). Unpaced, all 8 would be made in one round. What the sensors see follows the
    # pacer's clock, later by the delivery.
    offsets = [(m - made[0]).total_seconds() for m in made]
    assert all(offset >= k * 0.1 - 0.001 for k, offset in enumerate(offsets)), offsets
    assert len(fleet.starts) == 8


async def test_an_abort_stops_the_starts_and_nothing_is_sent_after_it(make_service: ServiceFactory) -> None:
    service = await make_service()
    fleet = Fleet(fail=True)
    serials = await start_fleet(service, fleet, 10)
    created = await create(
        service, sensors=serials, max_in_flight=2, max_attempts=1, abort={"failure_percent": 50, "min_finished": 2}
    )
    await until(service, created["id"], state_is("aborted"), "the rollout to abort")
    aborted = await until(
        service, created["id"], lambda r: r["totals"]["pending"] + r["totals"]["ongoing"] == 0, "what was sent to end"
    )

    assert "above the abort threshold of 50 %" in aborted["reason"]
    assert aborted["totals"]["not_started"] > 0
    tasks, _ = await service.store.list_tasks(TaskFilter(rollout_id=created["id"]), limit=100)
    sent = [t for t in tasks if t.sent_at is not None]
    finished_at = (await service.store.get_rollout(created["id"])).finished_at
    assert finished_at is not None
    assert all(t.sent_at is not None and t.sent_at <= finished_at for t in sent)
    assert len(fleet.starts) == len(sent) <= 4  # two at a time, and the third maybe, before the threshold


async def test_continuous_rollouts_take_in_sensors_that_come_to_match(make_service: ServiceFactory) -> None:
    service = await make_service()
    fleet = Fleet()
    canaries = await start_fleet(service, fleet, 2, ring="canary")
    other = FIRST + 100
    await service.api.post("/v1/sensors", json={"serial": other, "labels": {"ring": "main"}})
    sensor = await service.sensor(other, fleet.handle)
    created = await create(service, selector={"labels": {"ring": "canary"}}, continuous=True)
    await until(service, created["id"], lambda r: r["totals"]["completed"] == 2, "the canaries to complete")
    assert not [c for c in sensor.received if isinstance(c, TaskMessage)]

    patched = await service.api.patch(f"/v1/sensors/{other}", json={"labels": {"ring": "canary"}})
    assert patched.status_code == 200, patched.text
    late = await until(service, created["id"], lambda r: r["totals"]["completed"] == 3, "the relabelled one")
    assert late["state"] == "running"  # continuous: still open to sensors that come to match
    assert late["totals"]["targets"] == 3
    assert canaries  # registered with the label, they were targets from the start


async def test_pause_holds_the_starts_and_resume_goes_on(make_service: ServiceFactory) -> None:
    service = await make_service()
    fleet = Fleet(release=asyncio.Event())
    serials = await start_fleet(service, fleet, 4)
    created = await create(service, sensors=serials, max_in_flight=1)
    await eventually(_started(fleet, 1), what="the first task to start")
    paused = await service.api.post(f"/v1/rollouts/{created['id']}/pause")
    assert paused.json()["state"] == "paused"
    assert fleet.release is not None
    fleet.release.set()
    await until(service, created["id"], lambda r: r["totals"]["completed"] == 1, "the first to complete")
    await _round(service)  # a pacing round with a free slot: a paused rollout starts nothing
    assert (await rollout(service, created["id"]))["totals"]["not_started"] == 3
    assert len(fleet.starts) == 1

    resumed = await service.api.post(f"/v1/rollouts/{created['id']}/resume")
    assert resumed.json()["state"] == "running"
    await until(service, created["id"], state_is("completed"), "the rollout to complete")
    assert len(fleet.starts) == 4


async def test_cancel_lets_what_runs_finish_or_cancels_it_too(make_service: ServiceFactory) -> None:
    service = await make_service()
    fleet = Fleet(release=asyncio.Event())
    serials = await start_fleet(service, fleet, 4)
    finishing = await create(service, sensors=serials[:2], max_in_flight=1)
    cancelling = await create(service, sensors=serials[2:], max_in_flight=1)
    await eventually(_started(fleet, 2), what="one task of each rollout to start")

    response = await service.api.post(f"/v1/rollouts/{finishing['id']}/cancel", json={"in_flight": "finish"})
    assert response.json()["state"] == "cancelled"
    response = await service.api.post(f"/v1/rollouts/{cancelling['id']}/cancel", json={"in_flight": "cancel"})
    assert response.json()["reason"] == "cancelled by the customer"

    await eventually(_cancel_heard(service), what="the cancelled sensor to hear of it")
    assert fleet.release is not None
    fleet.release.set()
    kept = await until(service, finishing["id"], lambda r: r["totals"]["completed"] == 1, "the kept task to finish")
    assert kept["totals"]["not_started"] == 1
    stopped = await rollout(service, cancelling["id"])
    assert stopped["totals"]["cancelled"] == 1
    assert stopped["totals"]["completed"] == 0
    assert len(fleet.starts) == 2  # nothing started after the cancels


def _started(fleet: Fleet, n: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return len(fleet.starts) >= n

    return check


def _cancel_heard(service: Service) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return any(isinstance(c, CancelMessage) for s in service.sensors for c in s.received)

    return check


async def _round(service: Service) -> None:
    pacer = service.dispatcher.rollouts
    assert pacer is not None
    assert await pacer.round() is not None
