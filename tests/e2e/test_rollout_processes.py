"""SPEC 10 with real processes: a rollout survives ``kill -9`` of its only dispatcher (SQLite),
and its cap holds with three instances on PostgreSQL, across the death of the leader that paces it.

The cap is counted where it matters, at the bare paho sensors (`PahoFleet.most_held_at_once`):
a sensor holds a task from its arrival to its ``completed``, which lies inside the time the
database counts the task in flight (created Pending to Completed), so the count at the sensors
can never be above the cap while the cap holds. Each test also sees the cap reached, so a test
whose fleet never pressed against it cannot pass by accident.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sensortasks.testing import MosquittoBroker
from tests.conftest import postgres_database
from tests.integration.conftest import eventually

from .cluster import (
    FILE_ID,
    SERIALS,
    STRANDED_BOUND_S,
    Cluster,
    check_exactly_once,
    fleet_completed,
    leader,
    report,
    running_cluster,
    seen_online,
)
from .conftest import ServeProcess, all_tasks
from .paho_fleet import PahoFleet

FINISHED = ("completed", "aborted", "cancelled")
#: Test 1: at 600 starts a minute and 1 s of work, an uncapped rollout holds about 10 tasks at
#: once, twice its cap of 5.
RATE_PER_MINUTE = 600
KILL_WORK_S = 1.0
#: Test 2: 40 sensors and no rate, so a broken cap would start all 40 at once.
SCALE_SERIALS = [820000000000000 + i for i in range(40)]
SCALE_WORK_S = 0.4
#: How long a rollout may take when nothing is killed (test 1's whole rollout takes about 8 s).
ROLLOUT_TIMEOUT_S = 30


async def create_rollout(api: httpx.AsyncClient, serials: list[int], **extra: Any) -> dict[str, Any]:
    body = {"name": "fw e2e", "type": "update_firmware", "file_id": FILE_ID, "sensors": serials, **extra}
    response = await api.post("/v1/rollouts", json=body)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def finished_rollout(cluster: Cluster, rollout_id: int, *, timeout: float) -> dict[str, Any]:
    """The rollout once it has finished (through whichever instance is live)."""
    seen: dict[str, Any] = {}

    async def finished() -> bool:
        seen.update((await cluster.api().get(f"/v1/rollouts/{rollout_id}")).json())
        return seen.get("state") in FINISHED

    try:
        await eventually(finished, timeout=timeout, what=f"rollout {rollout_id} to finish")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last seen: {seen}") from None
    return seen


def all_completed(targets: int) -> dict[str, int]:
    """The totals of a rollout whose every target's task Completed."""
    zero = dict.fromkeys(("not_started", "pending", "ongoing", "error", "cancelled"), 0)
    return {"targets": targets, "completed": targets, **zero}


async def check_completed_once_per_sensor(cluster: Cluster, rollout: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """The rollout completed: one task per target sensor, each Completed; its tasks, by id."""
    assert (rollout["state"], rollout["reason"]) == ("completed", None), rollout
    assert rollout["totals"] == all_completed(len(rollout["sensors"])), rollout
    tasks = await all_tasks(cluster.api(), rollout_id=rollout["id"])
    assert sorted(t["sensor_serial"] for t in tasks.values()) == sorted(rollout["sensors"])
    assert {t["status_name"] for t in tasks.values()} == {"Completed"}
    assert {t["rollout_id"] for t in tasks.values()} == {rollout["id"]}
    return tasks


@pytest.mark.slow
async def test_a_rollout_survives_kill_9_of_its_dispatcher_with_its_cap_held(
    serve: ServeProcess, broker: MosquittoBroker
) -> None:
    serve.start()
    async with httpx.AsyncClient(base_url=serve.url, timeout=10) as api:
        with PahoFleet(broker.host, broker.port, SERIALS, work_s=KILL_WORK_S).running() as fleet:
            cluster = Cluster({"e2e": serve}, {"e2e": api}, fleet)
            await seen_online(cluster)
            created = await create_rollout(api, SERIALS, max_in_flight=5, rate={"per_minute": RATE_PER_MINUTE})
            await fleet_completed(cluster.fleet, len(SERIALS) // 3, timeout=ROLLOUT_TIMEOUT_S)
            before = fleet.completed()
            await cluster.kill("e2e")
            assert before < len(SERIALS), "the kill came after the rollout"
            await cluster.restart("e2e")  # on the same database: the rollout goes on from its last round
            rollout = await finished_rollout(cluster, created["id"], timeout=ROLLOUT_TIMEOUT_S)
            tasks = await check_completed_once_per_sensor(cluster, rollout)
            await check_exactly_once(cluster, tasks)
            held = fleet.most_held_at_once(tasks)
            report(f"rollout over {len(SERIALS)} sensors, SIGKILLed at {before} completed: at most {held} held at once")
            # Above 5: the cap was not held (the restarted pacer forgot what was in flight, or
            # made up the slots it missed while down in a burst). Below 5: the test never pressed
            # against the cap, and would not see it broken.
            assert held == 5, serve.log()


@pytest.fixture
async def cluster(broker: MosquittoBroker, tmp_path: Path) -> AsyncIterator[Cluster]:
    async with (
        postgres_database() as url,
        running_cluster(broker, tmp_path, url, serials=SCALE_SERIALS, work_s=SCALE_WORK_S) as running,
    ):
        yield running


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_three_instances_hold_a_rollouts_cap_across_the_leaders_death(cluster: Cluster) -> None:
    fleet = cluster.fleet
    first = await create_rollout(cluster.apis["beta"], SCALE_SERIALS, max_in_flight=4)
    rollout = await finished_rollout(cluster, first["id"], timeout=ROLLOUT_TIMEOUT_S)
    first_tasks = await check_completed_once_per_sensor(cluster, rollout)
    # Above 4: the instances' rounds did not serialise on the rollout's row (each counted what
    # was in flight before the other's tasks were committed), or a non-leader paced too.
    assert fleet.most_held_at_once(first_tasks) == 4

    led_by = await leader(cluster, timeout=10)
    second = await create_rollout(cluster.apis[cluster.live()[-1]], SCALE_SERIALS, max_in_flight=4)
    await fleet_completed(cluster.fleet, len(first_tasks) + 8, timeout=ROLLOUT_TIMEOUT_S)
    before = fleet.completed() - len(first_tasks)
    await cluster.kill(led_by)
    assert before < len(SCALE_SERIALS), "the kill came after the second rollout"
    # The lead moves once the dead leader's lease runs out; its share of the statuses comes back
    # within the stranding bound, and until then the tasks it held keep their slots.
    rollout = await finished_rollout(cluster, second["id"], timeout=STRANDED_BOUND_S + ROLLOUT_TIMEOUT_S)
    second_tasks = await check_completed_once_per_sensor(cluster, rollout)
    took_over = await leader(cluster, timeout=10)
    report(f"leader {led_by} SIGKILLed at {before}/{len(SCALE_SERIALS)} of rollout 2; {took_over} led it to the end")
    assert took_over != led_by
    # Above 4: the new leader started tasks while the dead one's were still in flight, uncounted.
    assert fleet.most_held_at_once(second_tasks) == 4
    await check_exactly_once(cluster, first_tasks | second_tasks)
