"""Issue 11 end to end: one instance of the cluster (`cluster.running_cluster`) is cut off from
the database or from the broker by a `TcpProxy` while tasks flow, then the partition heals.

What must hold: the instance cut off says 503 on ``/healthz`` within a bound, and keeps nothing
it cannot commit: the other two complete every task while it is still cut off, within the bound
of a kill (`STRANDED_BOUND_S`) after the cut, plus, when the broker is cut off, the time the
broker takes to drop a connection that fell silent (`Bounds`). Once healed it is healthy again without a restart and takes work: the other
two are then killed and it completes new tasks alone. Every task is Completed once, each sensor
got its tasks in order. The figures (time to 503, cut to all Completed, heal to healthy) are
printed with ``pytest -s``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import make_url

from sensortasks.dispatcher.link import PUBLISH_TIMEOUT_S, RECONNECT_BACKOFF_MAX_S
from sensortasks.dispatcher.members import broker_hold_s
from sensortasks.testing import MosquittoBroker
from sensortasks.testing.proxy import Mode, TcpProxy
from tests.conftest import postgres_database
from tests.integration.conftest import eventually

from .cluster import (
    INSTANCE_TIMEOUT_S,
    INSTANCES,
    ROUNDS,
    SERIALS,
    SESSION_EXPIRY_S,
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

#: The instance that is cut off.
CUT = "beta"
#: How long a probe of ``/healthz`` waits for an answer (a Kubernetes probe's default is 1 s):
#: a probe that gets none has not been told "unhealthy".
PROBE_S = 1.0


@dataclass(frozen=True, slots=True)
class Bounds:
    """How long the instance cut off may take to answer 503 (`gone_s`), and 200 once healed
    (`back_s`); how long after the cut the other two may take to complete everything (`stranded_s`)."""

    gone_s: float
    stranded_s: float
    back_s: float


#: Database cut: ``/healthz`` pings the database itself and gives up after half a second; the
#: heartbeat gives up on a beat after its interval, leaves the broker once the database has been
#: silent for half the instance timeout, and SQLAlchemy may take 2 s closing the connection it
#: gave up on (a graceful close first): 4 s at most, and slack for a loaded machine. The instance
#: leaves the broker cleanly, so its session expires as a killed instance's does. Healed: the next
#: beat gets its answer and rejoins the broker at once.
DATABASE = Bounds(INSTANCE_TIMEOUT_S + 5, STRANDED_BOUND_S, INSTANCE_TIMEOUT_S + 5)
#: Broker cut: paho notices a silent broker within two keepalives (`keepalive_for`), checked once
#: a second by aiomqtt. Unlike a kill, the broker learns of it only through the keepalive too, and
#: routes the instance's share to it until it drops the silent connection: the others wait for
#: that as well (`broker_hold_s`, past the session expiry). Healed: the connect attempt under way
#: may wait out its CONNACK timeout, then the back off.
BROKER = Bounds(
    INSTANCE_TIMEOUT_S + 5,
    STRANDED_BOUND_S + broker_hold_s(INSTANCE_TIMEOUT_S, SESSION_EXPIRY_S) - SESSION_EXPIRY_S,
    PUBLISH_TIMEOUT_S + RECONNECT_BACKOFF_MAX_S + 5,
)


async def probe(cluster: Cluster, name: str) -> tuple[int, dict[str, Any]] | None:
    """`name`'s ``/healthz`` answer, or None when it gives none within `PROBE_S`."""
    try:
        response = await cluster.apis[name].get("/healthz", timeout=PROBE_S)
    except httpx.TimeoutException:
        return None
    return response.status_code, response.json()


async def answered(
    cluster: Cluster, name: str, wanted: Callable[[int, dict[str, Any]], bool], *, timeout: float, what: str
) -> float:
    """Poll `name`'s ``/healthz`` until an answer is `wanted`: when it came (`time.monotonic()`)."""

    async def check() -> bool:
        answer = await probe(cluster, name)
        return answer is not None and wanted(*answer)

    await eventually(check, timeout=timeout, what=f"{name}'s /healthz to say {what}")
    return time.monotonic()


async def cut_and_heal(cluster: Cluster, proxy: TcpProxy, mode: Mode, what: str, bounds: Bounds) -> None:
    """The scenario of the module docstring; `what` names the connection cut."""
    ids = await create_rounds(cluster, ROUNDS)
    await fleet_completed(cluster.fleet, len(ids) // 3, timeout=60)
    before = cluster.fleet.completed()
    cluster.down.add(CUT)
    cut = time.monotonic()
    await asyncio.to_thread(proxy.cut, mode)
    assert before < len(ids), "the cut came after the flow"

    unhealthy = await answered(cluster, CUT, lambda code, _: code == 503, timeout=bounds.gone_s, what="503")
    left = await answered(
        cluster, CUT, lambda _, body: body["broker"] == "down", timeout=bounds.gone_s, what="it left the broker"
    )
    settled = await settle(cluster, timeout=bounds.stranded_s)
    tasks = await all_tasks(cluster.api())
    when = f"{settled - cut:.1f} s after the cut" if settled else f"NOT within {bounds.stranded_s} s of the cut"
    report(
        f"{CUT}'s {what} cut ({mode}) at {before}/{len(ids)} completed: 503 after {unhealthy - cut:.1f} s, "
        f"off the broker after {left - cut:.1f} s; the others completed all {when} (bound {bounds.stranded_s} s)"
    )
    assert settled is not None, await stuck(cluster, tasks, cut)
    assert {t["status_name"] for t in tasks.values()} == {"Completed"}, await stuck(cluster, tasks, cut)

    healed = time.monotonic()
    await asyncio.to_thread(proxy.heal)
    healthy = await answered(cluster, CUT, lambda code, _: code == 200, timeout=bounds.back_s, what="200")
    cluster.down.discard(CUT)
    for name in INSTANCES:
        if name != CUT:
            await cluster.kill(name)
    alone = time.monotonic()
    response = await cluster.api().post("/v1/tasks/bulk", json={"tasks": [task_body(s) for s in SERIALS]})
    assert response.status_code == 201, response.text
    settled = await settle(cluster, timeout=STRANDED_BOUND_S)
    tasks = await all_tasks(cluster.api())
    when = f"{settled - alone:.1f} s after the others were killed" if settled else "NOT in time"
    report(f"healed: {CUT} healthy {healthy - healed:.1f} s later; alone, it completed {len(SERIALS)} new tasks {when}")
    assert settled is not None, await stuck(cluster, tasks, alone)
    assert sorted(tasks) == sorted(ids + response.json()["ids"])
    assert {t["status_name"] for t in tasks.values()} == {"Completed"}, await stuck(cluster, tasks, alone)
    await check_exactly_once(cluster, tasks)


@pytest.mark.parametrize("mode", ["blackhole", "reset"])
async def test_an_instance_cut_off_from_the_database_steps_aside_and_rejoins(
    broker: MosquittoBroker, tmp_path: Path, mode: Mode
) -> None:
    async with postgres_database() as url:
        database = make_url(url)
        assert database.host is not None
        with TcpProxy(database.host, database.port or 5432) as proxy:
            via = database.set(host=proxy.host, port=proxy.port).render_as_string(hide_password=False)
            env = {CUT: {"SENSORTASKS_DATABASE_URL": via}}
            async with running_cluster(broker, tmp_path, url, env) as cluster:
                await cut_and_heal(cluster, proxy, mode, "database", DATABASE)


async def test_an_instance_cut_off_from_the_broker_steps_aside_and_rejoins(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    async with postgres_database() as url:
        with TcpProxy(broker.host, broker.port) as proxy:
            env = {CUT: {"SENSORTASKS_MQTT_URL": f"mqtt://{proxy.host}:{proxy.port}"}}
            async with running_cluster(broker, tmp_path, url, env) as cluster:
                await cut_and_heal(cluster, proxy, "blackhole", "broker", BROKER)
