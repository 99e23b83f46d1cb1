"""``sensortasks soak``: mixed faults for M minutes, then a table of what happened.

Real processes on this machine: a persistent Mosquitto (started here), N ``sensortasks
serve`` instances (tools/deployment.py: one by default, on SQLite; with ``--database``
on a scratch PostgreSQL database, several in one share group) and a fleet of SDK
sensors in this process. Tasks are created continuously through the REST API of a random
serving instance (a health-checked load balancer) while, at random (seeded) moments, an
instance is killed with SIGKILL and restarted, the broker is killed with SIGKILL and
restarted, sensors reboot with no memory (mid-task or idle), some stay offline longer than
the acknowledgement timeout, and some report errors.

With several instances, one of them is also frozen once for minutes (SIGSTOP, then
SIGCONT): nastier than a kill followed by a late start, because the frozen process keeps
its broker connection (until the broker's keep-alive gives up on it), its database
connections and whatever they hold, and its memory, and then wakes up acting on what it
knew minutes ago, while the others must have taken over its share.

After the fault phase the fleet behaves until every accepted task is terminal (bounded),
and the database is audited (tools/audit.py).
"""

from __future__ import annotations

import asyncio
import os
import random
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from sensortasks.sensor import Job, SensorClient, SensorOptions, TaskFailed
from sensortasks.testing import MosquittoBroker
from sensortasks.tools.audit import Audit, audit
from sensortasks.tools.baseline import FILE_ID
from sensortasks.tools.deployment import Deployment, Instance, InstanceFigures, tool_database
from sensortasks.tools.stats import percentile

FIRST_SERIAL = 600_000_000_000_000
#: Seconds between two faults, drawn uniformly.
FAULT_GAP_S = (3.0, 10.0)
#: Seconds between two task creations, drawn uniformly.
CREATE_GAP_S = (0.1, 0.5)
DRAIN_TIMEOUT_S = 300.0
ACK_TIMEOUT_S = 5
FAULTS = ("dispatcher", "broker", "reboot", "reboot", "offline")


@dataclass(frozen=True, slots=True)
class SoakOptions:
    minutes: float
    sensors: int
    seed: int
    instances: int = 1
    #: How long one instance is frozen (several instances only); at most half the fault phase.
    freeze_minutes: float = 2.0


@dataclass
class SoakReport:
    #: Task id -> wall-clock time its 201 arrived.
    accepted: dict[int, float] = field(default_factory=dict)
    faults: Counter[str] = field(default_factory=Counter)
    instances: list[InstanceFigures] = field(default_factory=list)
    audit: Audit = field(default_factory=Audit)

    def lines(self) -> list[str]:
        found = self.audit
        durations = found.durations

        def pct(p: float) -> str:
            return f"{percentile(durations, p):.2f} s" if durations else "n/a"

        rows = [
            ("accepted", len(self.accepted)),
            ("completed", found.statuses["Completed"]),
            ("error", found.statuses["Error"]),
            ("cancelled", found.statuses["Cancelled"]),
            ("lost (must be 0)", found.lost),
            ("completed twice (must be 0)", found.completed_twice),
            ("sent twice in one attempt (must be 0)", found.sent_twice),
            ("sent out of per-sensor order (must be 0)", found.out_of_order),
            ("attempt_count != attempts sent", found.attempts_mismatch),
            ("dispatcher restarts (SIGKILL)", self.faults["dispatcher"]),
            ("dispatcher frozen (SIGSTOP)", self.faults["freeze"]),
            ("broker restarts (SIGKILL)", self.faults["broker"]),
            ("sensor reboots", self.faults["reboot"]),
            ("sensors offline > ack timeout", self.faults["offline"]),
            ("p50 time to completion", pct(50)),
            ("p99 time to completion", pct(99)),
        ]
        width = max(len(name) for name, _ in rows)
        lines = [f"{name:<{width}}  {value}" for name, value in rows]
        if found.lost_sensors:
            lines.append(f"  lost tasks are queued on {len(found.lost_sensors)} sensor(s)")
        lines += [f"  lost: {n} {state}" for state, n in found.lost_states.most_common(5)]
        lines.append(f"{'instance':<12} {'accepted':>8} {'kills':>6} {'restarts':>8} {'frozen s':>8} {'CPU s':>8}")
        lines += [
            f"{i.name:<12} {i.accepted:>8} {i.kills:>6} {i.starts - 1:>8} {i.frozen_s:>8.0f} {i.cpu_s:>8.1f}"
            for i in self.instances
        ]
        return lines


class _Fleet:
    """SDK sensors that can be rebooted (a new client, no memory) at any moment."""

    def __init__(self, broker: MosquittoBroker, sensors: int, rng: random.Random, error_rate: float) -> None:
        self.broker = broker
        self.rng = rng
        self.error_rate = error_rate
        self.faulty = True
        self.clients: dict[int, SensorClient] = {}
        self.serials = [FIRST_SERIAL + i for i in range(sensors)]

    async def _work(self, job: Job) -> dict[str, Any]:
        await asyncio.sleep(self.rng.uniform(0.05, 0.5))
        if self.faulty and self.rng.random() < self.error_rate:
            raise TaskFailed("simulated flash error")
        return {"task": job.task_id}

    async def start(self, serial: int) -> None:
        options = SensorOptions(host=self.broker.host, port=self.broker.port, reconnect_backoff_max_s=2.0)
        client = SensorClient(serial, self._work, options)
        self.clients[serial] = client
        await client.start(timeout=None)

    async def reboot(self, serial: int, *, offline_s: float) -> None:
        client = self.clients.pop(serial)
        await client.stop()
        await asyncio.sleep(offline_s)
        await self.start(serial)

    async def stop(self) -> None:
        await asyncio.gather(*(c.stop() for c in self.clients.values()), return_exceptions=True)


async def _soak(options: SoakOptions, database_url: str, workdir: Path, say: Callable[[str], None]) -> SoakReport:
    rng = random.Random(options.seed)
    report = SoakReport()
    broker = MosquittoBroker(persistence=True, workdir=workdir / "broker")
    broker.start()
    env = os.environ | {
        "SENSORTASKS_MQTT_URL": broker.url,
        "SENSORTASKS_AUTH": "disabled",
        "SENSORTASKS_ACK_TIMEOUT_S": str(ACK_TIMEOUT_S),
        "SENSORTASKS_RETRY_BACKOFF_S": "0.5",
        "SENSORTASKS_RETRY_BACKOFF_MAX_S": "5",
    }
    deployment = Deployment(options.instances, env, database_url, workdir, "soak")
    fleet = _Fleet(broker, options.sensors, rng, error_rate=0.05)
    try:
        await deployment.start()
        for instance in deployment.instances:
            say(f"instance {instance.name}: {instance.url}, pid {instance.pid}")
        await asyncio.gather(*(fleet.start(s) for s in fleet.serials))
        say(f"soak: {options.sensors} sensors, {options.minutes} min of faults, seed {options.seed}, workdir {workdir}")
        await _fault_phase(options, deployment, broker, fleet, report, say)
        fleet.faulty = False
        say(f"faults over; {len(report.accepted)} tasks accepted; draining ...")
        await _drain(deployment)
    finally:
        await fleet.stop()
        deployment.stop()
        broker.stop()
    report.instances = deployment.figures()
    report.audit = await audit(database_url, report.accepted)
    return report


async def _fault_phase(
    options: SoakOptions,
    deployment: Deployment,
    broker: MosquittoBroker,
    fleet: _Fleet,
    report: SoakReport,
    say: Callable[[str], None],
) -> None:
    """Create tasks and inject faults until the phase is over; then wait for the requests in flight."""
    rng = fleet.rng
    phase_s = options.minutes * 60
    deadline = time.monotonic() + phase_s
    over = asyncio.Event()
    side = [asyncio.create_task(_create(deployment, fleet, report, over))]
    if len(deployment.instances) > 1:
        freeze_s = min(options.freeze_minutes * 60, phase_s / 2)
        at = rng.uniform(0, phase_s - freeze_s)
        side.append(asyncio.create_task(_freeze(deployment, rng, at, freeze_s, report, say)))
    try:
        while time.monotonic() < deadline:
            await asyncio.sleep(rng.uniform(*FAULT_GAP_S))
            await _inject(rng.choice(FAULTS), deployment, broker, fleet, report, say)
        over.set()
        await asyncio.gather(*side)
    finally:
        for task in side:
            task.cancel()


async def _create(deployment: Deployment, fleet: _Fleet, report: SoakReport, over: asyncio.Event) -> None:
    """Bulk creations of 1-20 tasks, each request on its own so that one hanging on an
    instance frozen under it does not hold the others up."""
    rng = fleet.rng

    async def post(api: httpx.AsyncClient, instance: Instance) -> None:
        tasks = [
            {"sensor_serial": rng.choice(fleet.serials), "file_id": FILE_ID, "type": "update_firmware"}
            for _ in range(rng.randint(1, 20))
        ]
        try:
            response = await api.post(f"{instance.url}/v1/tasks/bulk", json={"tasks": tasks})
        except httpx.HTTPError:
            return  # killed or frozen meanwhile: not accepted, not counted
        if response.status_code == 201:  # noqa: PLR2004
            ids = response.json()["ids"]
            report.accepted.update(dict.fromkeys(ids, time.time()))
            instance.accepted += len(ids)

    async with httpx.AsyncClient(timeout=30) as api:
        posts: set[asyncio.Task[None]] = set()
        while not over.is_set():
            if serving := deployment.serving():
                posts.add(asyncio.create_task(post(api, rng.choice(serving))))
            try:
                await asyncio.wait_for(over.wait(), rng.uniform(*CREATE_GAP_S))
            except TimeoutError:
                posts = {p for p in posts if not p.done()}
        await asyncio.gather(*posts)


async def _freeze(
    deployment: Deployment,
    rng: random.Random,
    at: float,
    seconds: float,
    report: SoakReport,
    say: Callable[[str], None],
) -> None:
    await asyncio.sleep(at)
    instance = rng.choice(deployment.serving())
    instance.freeze()
    report.faults["freeze"] += 1
    say(f"  fault: {instance.name} frozen (SIGSTOP) for {seconds:.0f} s")
    await asyncio.sleep(seconds)
    instance.thaw()
    say(f"  {instance.name} resumed (SIGCONT)")


async def _inject(
    fault: str,
    deployment: Deployment,
    broker: MosquittoBroker,
    fleet: _Fleet,
    report: SoakReport,
    say: Callable[[str], None],
) -> None:
    rng = fleet.rng
    report.faults[fault] += 1
    if fault == "dispatcher":
        instance = rng.choice(deployment.serving())
        say(f"  fault: {instance.name} killed (SIGKILL)")
        instance.kill()
        await asyncio.sleep(rng.uniform(0.2, 2.0))
        await instance.start()
    elif fault == "broker":
        say("  fault: broker killed (SIGKILL)")
        broker.kill()
        await asyncio.sleep(rng.uniform(0.2, 2.0))
        broker.start()
    else:
        say(f"  fault: {fault}")
        offline = rng.uniform(ACK_TIMEOUT_S + 1, ACK_TIMEOUT_S * 3) if fault == "offline" else 0.1
        loop = asyncio.get_running_loop()
        for serial in rng.sample(fleet.serials, k=max(1, len(fleet.serials) // 20)):
            loop.create_task(fleet.reboot(serial, offline_s=offline))  # noqa: RUF006


async def _drain(deployment: Deployment) -> None:
    """Until no task is Pending or Ongoing, or `DRAIN_TIMEOUT_S` (the audit then says what is lost)."""
    until = time.monotonic() + DRAIN_TIMEOUT_S
    async with httpx.AsyncClient(base_url=deployment.instances[0].url, timeout=30) as api:
        while time.monotonic() < until:
            try:
                active = await api.get("/v1/tasks", params={"status": "Pending,Ongoing", "limit": 1})
                if not active.json()["data"]:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(1)


def soak(options: SoakOptions, *, database: str | None, workdir: Path | None, say: Callable[[str], None]) -> SoakReport:
    """`database` is a PostgreSQL server URL to run on (in a scratch database); default SQLite."""
    with ExitStack() as stack:
        where = workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sensortasks-soak-")))
        where.mkdir(parents=True, exist_ok=True)
        url = stack.enter_context(tool_database(database, where, "soak", say))
        return asyncio.run(_soak(options, url, where, say))
