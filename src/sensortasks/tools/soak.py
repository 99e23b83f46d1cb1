"""``sensortasks soak``: mixed faults for M minutes, then a table of what happened.

Real processes on this machine: a persistent Mosquitto (started here), ``sensortasks
serve`` on SQLite, and a fleet of SDK sensors in this process. Tasks are created
continuously through the REST API while, at random (seeded) moments, the dispatcher
is killed with SIGKILL and restarted, the broker is killed with SIGKILL and restarted,
sensors reboot with no memory (mid-task or idle), some stay offline longer than the
acknowledgement timeout, and some report errors. After the fault phase the fleet
behaves until every accepted task is terminal (bounded), and the database is audited:
lost (accepted but not terminal) and completed twice must both be 0.
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select

from sensortasks.domain import TaskStatus
from sensortasks.sensor import Job, SensorClient, SensorOptions, TaskFailed
from sensortasks.store import Task, TaskEvent, open_database
from sensortasks.testing import MosquittoBroker, free_port
from sensortasks.tools.bench import FILE_ID, spawn_cli, wait_healthy
from sensortasks.tools.stats import percentile

FIRST_SERIAL = 600_000_000_000_000
#: Seconds between two faults, drawn uniformly.
FAULT_GAP_S = (3.0, 10.0)
DRAIN_TIMEOUT_S = 300.0
ACK_TIMEOUT_S = 5


@dataclass
class SoakReport:
    accepted: set[int] = field(default_factory=set)
    faults: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)
    lost: int = 0
    completed_twice: int = 0
    attempts_mismatch: int = 0
    durations: list[float] = field(default_factory=list)

    def lines(self) -> list[str]:
        def pct(p: float) -> str:
            return f"{percentile(self.durations, p):.2f} s" if self.durations else "n/a"

        rows = [
            ("accepted", len(self.accepted)),
            ("completed", self.statuses["Completed"]),
            ("error", self.statuses["Error"]),
            ("cancelled", self.statuses["Cancelled"]),
            ("lost (must be 0)", self.lost),
            ("completed twice (must be 0)", self.completed_twice),
            ("attempt_count != attempts sent", self.attempts_mismatch),
            ("dispatcher restarts (SIGKILL)", self.faults["dispatcher"]),
            ("broker restarts (SIGKILL)", self.faults["broker"]),
            ("sensor reboots", self.faults["reboot"]),
            ("sensors offline > ack timeout", self.faults["offline"]),
            ("p50 time to completion", pct(50)),
            ("p99 time to completion", pct(99)),
        ]
        width = max(len(name) for name, _ in rows)
        return [f"{name:<{width}}  {value}" for name, value in rows]


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


async def _soak(minutes: float, sensors: int, seed: int, workdir: Path, say: Callable[[str], None]) -> SoakReport:
    rng = random.Random(seed)
    report = SoakReport()
    broker = MosquittoBroker(persistence=True, workdir=workdir / "broker")
    broker.start()
    http_port = free_port()
    env = {
        "SENSORTASKS_MQTT_URL": broker.url,
        "SENSORTASKS_DATABASE_URL": f"sqlite+aiosqlite:///{workdir}/soak.db",
        "SENSORTASKS_AUTH": "disabled",
        "SENSORTASKS_HTTP_PORT": str(http_port),
        "SENSORTASKS_INSTANCE": "soak",
        "SENSORTASKS_ACK_TIMEOUT_S": str(ACK_TIMEOUT_S),
        "SENSORTASKS_RETRY_BACKOFF_S": "0.5",
        "SENSORTASKS_RETRY_BACKOFF_MAX_S": "5",
    }
    env = os.environ | env
    url = f"http://127.0.0.1:{http_port}"
    serve = spawn_cli(["serve", "--log-level", "warning"], env, workdir / "serve-0.log")
    await wait_healthy(url)
    fleet = _Fleet(broker, sensors, rng, error_rate=0.05)
    await asyncio.gather(*(fleet.start(s) for s in fleet.serials))
    say(f"soak: {sensors} sensors, {minutes} min of faults, seed {seed}, workdir {workdir}")

    deadline = time.monotonic() + minutes * 60
    async with httpx.AsyncClient(base_url=url, timeout=30) as api:

        async def create_forever() -> None:
            while True:
                body = {
                    "tasks": [
                        {"sensor_serial": rng.choice(fleet.serials), "file_id": FILE_ID, "type": "update_firmware"}
                        for _ in range(rng.randint(1, 20))
                    ]
                }
                try:
                    response = await api.post("/v1/tasks/bulk", json=body)
                    if response.status_code == 201:  # noqa: PLR2004
                        report.accepted.update(response.json()["ids"])
                except httpx.HTTPError:
                    pass  # the dispatcher is being restarted: not accepted, not counted
                await asyncio.sleep(rng.uniform(0.1, 0.5))

        creator = asyncio.create_task(create_forever())
        while time.monotonic() < deadline:
            await asyncio.sleep(rng.uniform(*FAULT_GAP_S))
            serve = await _inject(rng.choice(FAULTS), serve, broker, fleet, report, env, workdir, say)
        creator.cancel()
        fleet.faulty = False
        say(f"faults over; {len(report.accepted)} tasks accepted; draining ...")
        drain_until = time.monotonic() + DRAIN_TIMEOUT_S
        while time.monotonic() < drain_until:
            counts = Counter(
                t["status_name"]
                for t in (await api.get("/v1/tasks", params={"status": "Pending,Ongoing", "limit": 1})).json()["data"]
            )
            if not counts:
                break
            await asyncio.sleep(1)
    await fleet.stop()
    serve.terminate()
    serve.wait(30)
    broker.stop()
    await _audit(f"sqlite+aiosqlite:///{workdir}/soak.db", report)
    return report


FAULTS = ("dispatcher", "broker", "reboot", "reboot", "offline")


async def _inject(
    fault: str,
    serve: subprocess.Popen[bytes],
    broker: MosquittoBroker,
    fleet: _Fleet,
    report: SoakReport,
    env: dict[str, str],
    workdir: Path,
    say: Callable[[str], None],
) -> subprocess.Popen[bytes]:
    """Inject one fault; returns the (possibly new) serve process."""
    rng = fleet.rng
    report.faults[fault] += 1
    say(f"  fault: {fault}")
    if fault == "dispatcher":
        serve.kill()
        serve.wait()
        await asyncio.sleep(rng.uniform(0.2, 2.0))
        serve = spawn_cli(["serve", "--log-level", "warning"], env, workdir / f"serve-{report.faults[fault]}.log")
        await wait_healthy(f"http://127.0.0.1:{env['SENSORTASKS_HTTP_PORT']}")
    elif fault == "broker":
        broker.kill()
        await asyncio.sleep(rng.uniform(0.2, 2.0))
        broker.start()
    else:
        offline = rng.uniform(ACK_TIMEOUT_S + 1, ACK_TIMEOUT_S * 3) if fault == "offline" else 0.1
        loop = asyncio.get_running_loop()
        for serial in rng.sample(fleet.serials, k=max(1, len(fleet.serials) // 20)):
            loop.create_task(fleet.reboot(serial, offline_s=offline))  # noqa: RUF006
    return serve


async def _audit(url: str, report: SoakReport) -> None:
    """Read the whole history back: statuses, double completions, attempts, durations."""
    db = open_database(url)
    try:
        async with db.reader.connect() as conn:
            tasks = {r.id: r for r in await conn.execute(select(Task.__table__))}  # type: ignore[attr-defined]
            events = (await conn.execute(select(TaskEvent.__table__).order_by(TaskEvent.__table__.c.id))).all()  # type: ignore[attr-defined]
    finally:
        await db.dispose()
    completions: Counter[int] = Counter()
    sent: Counter[int] = Counter()
    finished_at: dict[int, float] = {}
    for event in events:
        if event.kind == "sent":
            sent[event.task_id] += 1
        if event.to_status == TaskStatus.COMPLETED:
            completions[event.task_id] += 1
            finished_at[event.task_id] = event.at.timestamp()
    for task_id, task in tasks.items():
        status = TaskStatus(task.status_id)
        report.statuses[status.label] += 1
        report.lost += task_id in report.accepted and not status.terminal
        report.attempts_mismatch += task.attempt_count != sent[task_id]
        if task_id in finished_at:
            report.durations.append(finished_at[task_id] - task.created_at.timestamp())
    report.completed_twice = sum(1 for n in completions.values() if n > 1)
    report.lost += len(report.accepted - tasks.keys())


def soak(*, minutes: float, sensors: int, seed: int, workdir: Path | None, say: Callable[[str], None]) -> SoakReport:
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
        return asyncio.run(_soak(minutes, sensors, seed, workdir, say))
    with tempfile.TemporaryDirectory(prefix="sensortasks-soak-") as tmp:
        return asyncio.run(_soak(minutes, sensors, seed, Path(tmp), say))
