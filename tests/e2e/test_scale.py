"""SPEC 7 end to end: three `serve` processes on one PostgreSQL database and one share group,
a fleet of bare paho sensors (`paho_fleet`), and instances killed for good or in turn.

What must hold: every task reaches Completed, once; a sensor gets its tasks oldest first and
one at a time; nothing stays stranded with a dead instance beyond `STRANDED_BOUND_S`; tasks
created through any instance's API are dispatched by whichever instance is alive.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from sensortasks.testing import MosquittoBroker
from tests.conftest import postgres_database

from .cluster import (
    INSTANCES,
    ROUNDS,
    SERIALS,
    STRANDED_BOUND_S,
    Cluster,
    check_exactly_once,
    create_rounds,
    fleet_completed,
    report,
    running_cluster,
    settle,
    stuck,
    task_body,
)
from .conftest import all_tasks

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

#: Test 3: completions between one step (kill, restart) and the next, and how far the creator
#: may run ahead of the fleet.
STEP = 30
WINDOW = 30


@pytest.fixture
async def cluster(broker: MosquittoBroker, tmp_path: Path) -> AsyncIterator[Cluster]:
    async with postgres_database() as url, running_cluster(broker, tmp_path, url) as running:
        yield running


async def test_three_instances_share_the_work_exactly_once(cluster: Cluster) -> None:
    started = time.monotonic()
    ids = await create_rounds(cluster, ROUNDS)
    settled = await settle(cluster, timeout=60)
    tasks = await all_tasks(cluster.api())
    assert settled is not None, await stuck(cluster, tasks, started)
    report(f"{len(ids)} tasks through 3 instances: all Completed {settled - started:.1f} s after the first was created")
    assert sorted(tasks) == sorted(ids)
    assert {t["status_name"] for t in tasks.values()} == {"Completed"}, await stuck(cluster, tasks, started)
    assert cluster.fleet.duplicates() == []
    assert {t["attempt_count"] for t in tasks.values()} == {1}
    await check_exactly_once(cluster, tasks)


async def test_an_instance_killed_for_good_strands_nothing_beyond_the_bound(cluster: Cluster) -> None:
    ids = await create_rounds(cluster, ROUNDS)
    await fleet_completed(cluster.fleet, len(ids) // 3, timeout=60)
    before = cluster.fleet.completed()
    killed = time.monotonic()
    await cluster.kill("beta")
    assert before < len(ids), "the kill came after the flow"
    settled = await settle(cluster, timeout=STRANDED_BOUND_S)
    tasks = await all_tasks(cluster.api())
    when = f"{settled - killed:.1f} s after the kill" if settled else f"NOT within {STRANDED_BOUND_S} s of the kill"
    report(f"beta SIGKILLed at {before}/{len(ids)} completed; all Completed {when} (bound {STRANDED_BOUND_S} s)")
    assert sorted(tasks) == sorted(ids)
    assert settled is not None, await stuck(cluster, tasks, killed)
    assert {t["status_name"] for t in tasks.values()} == {"Completed"}, await stuck(cluster, tasks, killed)
    await check_exactly_once(cluster, tasks)


@dataclass
class Creator:
    """Creates tasks one at a time (so a sensor's are created in id order) through the live
    instances in turn, at most `WINDOW` ahead of what the fleet completed, until stopped."""

    cluster: Cluster
    accepted: list[int] = field(default_factory=list)
    #: Answers other than 201, and failed requests to an instance that was not being killed.
    failures: list[str] = field(default_factory=list)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        pick = random.Random(7)  # sensors at random: in turn, each would always meet the same API
        sent = 0
        while not self.stopping.is_set():
            if len(self.accepted) - self.cluster.fleet.completed() >= WINDOW:
                await asyncio.sleep(0.02)  # poll: the fleet catches up
                continue
            live = self.cluster.live()
            name = live[sent % len(live)]
            sent += 1
            try:
                response = await self.cluster.apis[name].post("/v1/tasks", json=task_body(pick.choice(SERIALS)))
            except httpx.TransportError as exc:
                if name not in self.cluster.down:
                    self.failures.append(f"{name}: {exc!r}")
                continue
            if response.status_code == 201:
                self.accepted.append(response.json()["id"])
            else:
                self.failures.append(f"{name}: {response.status_code} {response.text}")


@pytest.mark.timeout(240)
async def test_instances_killed_in_turn_and_restarted_lose_nothing(cluster: Cluster) -> None:
    fleet = cluster.fleet
    creator = Creator(cluster)
    started = time.monotonic()
    creating = asyncio.create_task(creator.run())
    try:
        for name in INSTANCES:
            await fleet_completed(cluster.fleet, fleet.completed() + STEP, timeout=60)
            await cluster.kill(name)
            # The others go on while it is down.
            await fleet_completed(cluster.fleet, fleet.completed() + STEP, timeout=STRANDED_BOUND_S)
            await cluster.restart(name)
        await fleet_completed(cluster.fleet, fleet.completed() + STEP, timeout=STRANDED_BOUND_S)
    finally:
        creator.stopping.set()
        await creating
    stopped = time.monotonic()
    settled = await settle(cluster, timeout=STRANDED_BOUND_S)
    tasks = await all_tasks(cluster.api())
    when = f"{settled - stopped:.1f} s after the last was created" if settled else "NOT in time"
    report(
        f"{len(creator.accepted)} tasks accepted ({len(tasks)} created) in {stopped - started:.1f} s, 3 kills: all Completed {when}"
    )
    assert creator.failures == []
    assert set(creator.accepted) <= set(tasks)
    assert settled is not None, await stuck(cluster, tasks, started)
    assert {t["status_name"] for t in tasks.values()} == {"Completed"}, await stuck(cluster, tasks, started)
    await check_exactly_once(cluster, tasks)
