"""SPEC 7 end to end: three `serve` processes on one PostgreSQL database and one share group,
a fleet of bare paho sensors (`paho_fleet`), and instances killed for good or in turn.

What must hold: every task reaches Completed, once; a sensor gets its tasks oldest first and
one at a time; nothing stays stranded with a dead instance beyond `STRANDED_BOUND_S`; tasks
created through any instance's API are dispatched by whichever instance is alive.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from sensortasks.testing import MosquittoBroker
from tests.conftest import postgres_database
from tests.integration.conftest import eventually

from .conftest import ServeProcess
from .paho_fleet import PahoFleet

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

FILE_ID = "a3e4aed2-b091-41a6-8265-2185040e2c32"
INSTANCES = ("alpha", "beta", "gamma")
SHARE_GROUP = "e2e-scale"
SERIALS = [810000000000000 + i for i in range(30)]
#: Rounds of one task per sensor (6 x 30 = 180 tasks) in the tests that create a fixed set.
ROUNDS = 6
#: How long a sensor works on a task: long enough that a kill lands mid-flow.
WORK_S = 0.2
#: The multi-instance recovery settings of issue 11 (older code ignores the first and refuses a
#: session expiry under 60 s): an instance not heard from for INSTANCE_TIMEOUT_S is gone, and the
#: broker drops a dead dispatcher's session, and stops routing its share of statuses to it,
#: SESSION_EXPIRY_S after it vanished.
INSTANCE_TIMEOUT_S = 2
SESSION_EXPIRY_S = 4
#: SPEC 7's "bounded, documented time" as tested: the dead instance's session expires, the others
#: notice it is gone and take over what it held (up to 2 x INSTANCE_TIMEOUT_S), and 15 s of slack
#: for re-sending and applying on a loaded 2-core machine.
STRANDED_BOUND_S = SESSION_EXPIRY_S + 2 * INSTANCE_TIMEOUT_S + 15
#: Test 3: completions between one step (kill, restart) and the next, and how far the creator
#: may run ahead of the fleet.
STEP = 30
WINDOW = 30
EVENT_FETCHES = 8


def scale_env(instance: str, database_url: str) -> dict[str, str]:
    """The environment of one instance of the cluster (the one place the recovery settings are set)."""
    return {
        "SENSORTASKS_DATABASE_URL": database_url,
        "SENSORTASKS_MQTT_SHARE_GROUP": SHARE_GROUP,
        "SENSORTASKS_INSTANCE": instance,
        "SENSORTASKS_INSTANCE_TIMEOUT_S": str(INSTANCE_TIMEOUT_S),
        "SENSORTASKS_SESSION_EXPIRY_S": str(SESSION_EXPIRY_S),
    }


@dataclass
class Cluster:
    instances: dict[str, ServeProcess]
    apis: dict[str, httpx.AsyncClient]
    fleet: PahoFleet
    #: Instances being killed (or dead): no new request goes to them.
    down: set[str] = field(default_factory=set)

    def live(self) -> list[str]:
        return [name for name, p in self.instances.items() if name not in self.down and p.process is not None]

    def api(self) -> httpx.AsyncClient:
        return self.apis[self.live()[0]]

    async def kill(self, name: str) -> None:
        self.down.add(name)
        await asyncio.to_thread(self.instances[name].signal, signal.SIGKILL)

    async def restart(self, name: str) -> None:
        await asyncio.to_thread(self.instances[name].start)
        self.down.discard(name)


@pytest.fixture
async def cluster(broker: MosquittoBroker, tmp_path: Path) -> AsyncIterator[Cluster]:
    async with postgres_database() as url:
        instances = {}
        for name in INSTANCES:
            (tmp_path / name).mkdir()
            instances[name] = ServeProcess(broker, tmp_path / name, **scale_env(name, url))
        try:
            # All at once on the fresh database: they migrate it together (one waits for the other).
            await asyncio.gather(*(asyncio.to_thread(p.start) for p in instances.values()))
            apis = {name: httpx.AsyncClient(base_url=p.url, timeout=10) for name, p in instances.items()}
            try:
                with PahoFleet(broker.host, broker.port, SERIALS, work_s=WORK_S).running() as fleet:
                    cluster = Cluster(instances, apis, fleet)
                    await seen_online(cluster)
                    yield cluster
            finally:
                for api in apis.values():
                    await api.aclose()
        finally:
            for process in instances.values():
                process.stop()


async def seen_online(cluster: Cluster) -> None:
    """Wait until the dispatchers have heard every sensor come online: a fresh "online" heard
    after a sensor's task was sent re-sends it (SPEC 4.3), a legitimate duplicate."""

    async def all_online() -> bool:
        api = cluster.api()
        answers = await asyncio.gather(*(api.get(f"/v1/sensors/{serial}") for serial in SERIALS))
        return all(a.status_code == 200 and a.json()["online"] for a in answers)

    await eventually(all_online, timeout=30, what="every sensor to be seen online")


def task_body(serial: int) -> dict[str, Any]:
    return {"sensor_serial": serial, "file_id": FILE_ID, "type": "update_firmware"}


async def create_rounds(cluster: Cluster, rounds: int) -> list[int]:
    """One task per sensor per round, a round in one bulk request, through the APIs in turn (a
    sensor's tasks go through all three); one round after the other, so ids follow the rounds."""
    ids = []
    for r in range(rounds):
        body = {"tasks": [task_body(s) for s in SERIALS]}
        response = await cluster.apis[INSTANCES[r % len(INSTANCES)]].post("/v1/tasks/bulk", json=body)
        assert response.status_code == 201, response.text
        ids += response.json()["ids"]
    return ids


async def all_tasks(api: httpx.AsyncClient) -> dict[int, dict[str, Any]]:
    tasks: dict[int, dict[str, Any]] = {}
    params: dict[str, Any] = {"limit": 1000}
    while True:
        page = (await api.get("/v1/tasks", params=params)).json()
        tasks |= {t["id"]: t for t in page["data"]}
        if not page["has_more"]:
            return tasks
        params["cursor"] = page["next_cursor"]


async def events_of(cluster: Cluster, ids: list[int]) -> dict[int, list[dict[str, Any]]]:
    """Every task's history, fetched through the live instances in turn."""
    gate = asyncio.Semaphore(EVENT_FETCHES)
    live = cluster.live()

    async def one(n: int, task_id: int) -> list[dict[str, Any]]:
        async with gate:
            response = await cluster.apis[live[n % len(live)]].get(f"/v1/tasks/{task_id}/events")
        assert response.status_code == 200, response.text
        data: list[dict[str, Any]] = response.json()["data"]
        return data

    histories = await asyncio.gather(*(one(n, task_id) for n, task_id in enumerate(ids)))
    return dict(zip(ids, histories, strict=True))


def report(figure: str) -> None:
    """A measured figure, shown with ``pytest -s`` (the recovery settings are tuned by them)."""
    print(f"\n{figure}")  # noqa: T201


def completions(history: list[dict[str, Any]]) -> int:
    return sum(e["kind"] == "transition" and e["to_status_name"] == "Completed" for e in history)


async def fleet_completed(cluster: Cluster, count: int, *, timeout: float) -> None:
    async def reached() -> bool:
        return cluster.fleet.completed() >= count

    await eventually(reached, timeout=timeout, what=f"the fleet to complete {count} tasks")


async def settle(cluster: Cluster, *, timeout: float) -> float | None:
    """Wait until no task is Pending or Ongoing: when that was seen (`time.monotonic()`), or
    None if not within `timeout`."""

    async def settled() -> bool:
        page = (await cluster.api().get("/v1/tasks", params={"status": "Pending,Ongoing", "limit": 1})).json()
        return not page["data"]

    try:
        await eventually(settled, timeout=timeout, what="every task to be terminal")
    except AssertionError:
        return None
    return time.monotonic()


async def stuck(cluster: Cluster, tasks: dict[int, dict[str, Any]], since: float) -> str:
    """What the tasks that are not Completed went through, for the failure message: times are
    seconds after `since`."""
    left = sorted((t for t in tasks.values() if t["status_name"] != "Completed"), key=lambda t: t["id"])
    if not left:
        return ""
    lines = [f"{len(left)} of {len(tasks)} tasks not Completed: {dict(Counter(t['status_name'] for t in left))}"]
    histories = await events_of(cluster, [t["id"] for t in left[:10]])
    for task_id, history in histories.items():
        task = tasks[task_id]
        sensor = cluster.fleet.sensors[task["sensor_serial"]]
        got = [
            f"attempt {r.message['attempt']} at {r.at - since:+.1f}s"
            for r in sensor.task_messages()
            if r.message["task_id"] == task_id
        ]
        done = sensor.completed_at.get(task_id)
        said = "never completed" if done is None else f"completed at {done - since:+.1f}s"
        trail = ", ".join(
            f"{e['kind']} {e['from_status_name']}->{e['to_status_name']} #{e['attempt']} ({e['reason']})"
            for e in history
        )
        lines.append(
            f"task {task_id} (sensor {task['sensor_serial']}): {task['status_name']}, "
            f"attempt_count {task['attempt_count']}; the sensor got {got or 'nothing'}, {said}; events: {trail}"
        )
    lines.append(
        "instance logs (serve-<start>.log) in " + ", ".join(str(p.workdir) for p in cluster.instances.values())
    )
    return "\n".join(lines)


async def check_exactly_once(cluster: Cluster, tasks: dict[int, dict[str, Any]]) -> None:
    """Each task Completed once, and each sensor got its tasks in id order, one at a time."""
    assert cluster.fleet.violations() == []
    for serial, sensor in cluster.fleet.sensors.items():
        assert sensor.order == sorted(t["id"] for t in tasks.values() if t["sensor_serial"] == serial), serial
    histories = await events_of(cluster, sorted(tasks))
    twice = {task_id: completions(h) for task_id, h in histories.items() if completions(h) != 1}
    assert twice == {}, "tasks not Completed exactly once (task id: Completed transitions)"


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
    await fleet_completed(cluster, len(ids) // 3, timeout=60)
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
            await fleet_completed(cluster, fleet.completed() + STEP, timeout=60)
            await cluster.kill(name)
            # The others go on while it is down.
            await fleet_completed(cluster, fleet.completed() + STEP, timeout=STRANDED_BOUND_S)
            await cluster.restart(name)
        await fleet_completed(cluster, fleet.completed() + STEP, timeout=STRANDED_BOUND_S)
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
