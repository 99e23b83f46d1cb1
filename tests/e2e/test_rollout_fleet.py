"""SPEC 10 at fleet scale, end to end: one rollout over a real fleet of 2,000 bare paho sensors
(one selector thread, `PahoFleet(one_thread=True)`) on a real `serve` and broker.

The cap is counted at the sensors (`PahoFleet.most_held_at_once`, as in
test_rollout_processes.py): it must be reached and never passed. The cost of the pacing engine
is serve's CPU per task against the same work paced from outside: first one plain task per
sensor, created through the API so that `CAP` are in flight (a new batch each `PACE_S` for the
tasks completed meanwhile, as a round does); then the rollout, one task per sensor.
"""

from __future__ import annotations

import asyncio
import re
import time

import httpx
import pytest

from sensortasks.testing import MosquittoBroker
from sensortasks.tools.deployment import cpu_seconds
from tests.integration.conftest import eventually

from .cluster import fleet_completed, report, task_body
from .conftest import ServeProcess, all_tasks
from .paho_fleet import PahoFleet
from .test_rollout_processes import all_completed, create_rollout

SERIALS = [830000000000000 + i for i in range(2000)]
#: 200 tasks of 1 s in flight: 200 a second at most, well within what serve dispatches here.
CAP = 200
WORK_S = 1.0
TIMEOUT_S = 120
#: How often the outside pacer tops the tasks in flight up to `CAP` (a round's `MIN_GAP_S`).
PACE_S = 0.05
#: serve's CPU per task under the rollout against the same tasks paced from outside: measured
#: 1.0-1.7 on 2 loaded cores (docs/performance.md). Twice means the rounds cost as much as the
#: dispatching of the tasks they make.
MOST_CPU_RATIO = 2.0


async def seen_online(api: httpx.AsyncClient) -> None:
    """Until serve has heard every sensor come online (`sensortasks_sensors_online` on /metrics):
    a fresh "online" heard after a sensor's task was sent re-sends it, a legitimate duplicate."""

    async def all_online() -> bool:
        found = re.search(r"^sensortasks_sensors_online (\d+)", (await api.get("/metrics")).text, re.MULTILINE)
        return found is not None and int(found.group(1)) == len(SERIALS)

    await eventually(all_online, timeout=60, what="every sensor to be seen online")


async def paced_from_outside(api: httpx.AsyncClient, fleet: PahoFleet) -> None:
    """One plain task per sensor, `CAP` of them in flight: each `PACE_S`, as many more as the
    fleet completed meanwhile, in one bulk request; returns once all are completed."""
    created = 0
    while (done := fleet.completed()) < len(SERIALS):
        batch = SERIALS[created : min(len(SERIALS), done + CAP)]
        if batch:
            response = await api.post("/v1/tasks/bulk", json={"tasks": [task_body(s) for s in batch]})
            assert response.status_code == 201, response.text
            created += len(batch)
        await asyncio.sleep(PACE_S)  # the pacing interval itself, not a wait for something


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_a_rollout_over_2000_real_sensors_fills_its_cap_and_never_passes_it(
    serve: ServeProcess, broker: MosquittoBroker
) -> None:
    serve.start()
    assert serve.process is not None
    pid = serve.process.pid
    async with httpx.AsyncClient(base_url=serve.url, timeout=30) as api:
        with PahoFleet(broker.host, broker.port, SERIALS, work_s=WORK_S, one_thread=True).running() as fleet:
            await seen_online(api)

            cpu, started = cpu_seconds(pid), time.monotonic()
            await paced_from_outside(api, fleet)
            plain_cpu, plain_s = cpu_seconds(pid) - cpu, time.monotonic() - started

            cpu, started = cpu_seconds(pid), time.monotonic()
            created = await create_rollout(api, SERIALS, max_in_flight=CAP)
            await fleet_completed(fleet, 2 * len(SERIALS), timeout=TIMEOUT_S)
            rollout_cpu, rollout_s = cpu_seconds(pid) - cpu, time.monotonic() - started

            async def finished() -> bool:
                return (await api.get(f"/v1/rollouts/{created['id']}")).json()["state"] == "completed"

            await eventually(finished, timeout=30, what="the rollout to be completed")
            rollout = (await api.get(f"/v1/rollouts/{created['id']}")).json()
            tasks = await all_tasks(api, rollout_id=created["id"])
            held = fleet.most_held_at_once(tasks)

    assert rollout["totals"] == all_completed(len(SERIALS)), rollout
    assert sorted(t["sensor_serial"] for t in tasks.values()) == SERIALS
    assert {t["status_name"] for t in tasks.values()} == {"Completed"}
    assert fleet.violations() == []
    ratio = rollout_cpu / plain_cpu
    per_task = {"paced from outside": (plain_s, plain_cpu), "rollout": (rollout_s, rollout_cpu)}
    report(
        f"{len(SERIALS)} sensors, {CAP} in flight, {WORK_S} s of work: "
        + "; ".join(f"{k} {s:.1f} s, {c / len(SERIALS) * 1e6:.0f} µs CPU/task" for k, (s, c) in per_task.items())
        + f"; rollout/outside x{ratio:.2f}; at most {held} held at once"
    )
    # Above the cap: the cap was not held. Below it: the fleet never pressed against it.
    assert held == CAP, serve.log()
    assert ratio < MOST_CPU_RATIO
