"""``sensortasks bench``: task lifecycles per second, against a raw MQTT baseline in the same run.

Both runs use the same broker and the same process topology (a driver, a dispatcher
process and a fleet process with one MQTT client per sensor) and the same message flow
per task (one task message, an "ongoing" and a "completed" status), one task at a
time per sensor:

- product: ``sensortasks serve`` (REST API + dispatcher on SQLite, or with ``--database``
  on a scratch PostgreSQL database; with ``--instances N``, N of them in one share group)
  and ``sensortasks simulate`` (the SDK fleet, zero work time); the driver creates the
  tasks through ``POST /v1/tasks/bulk`` of every instance in turn and watches
  ``ops/events`` for completions. The CPU of each serve process during the run is
  reported, and summed.
- baseline: a bare aiomqtt "dispatcher" holding the queues in memory and a bare
  aiomqtt fleet; no database, no API.

A lifecycle is created -> Completed. Latency is measured from the moment a task was
accepted (baseline: the start, when every task is queued at once) to the moment its
completion was seen. The last line is ``ratio: X.XX`` = product rate / baseline rate.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import statistics
import subprocess
import tempfile
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiomqtt
import httpx

from sensortasks.mqtt import MqttTarget, new_client
from sensortasks.protocol import StatusReport, TaskMessage, Topics
from sensortasks.testing import MosquittoBroker
from sensortasks.tools.deployment import Deployment, Instance, InstanceFigures, spawn_cli, tool_database
from sensortasks.tools.stats import percentile

FILE_ID = "a3e4aed2-b091-41a6-8265-2185040e2c32"
FIRST_SERIAL = 500_000_000_000_000
BULK_CHUNK = 1000
START_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class RunResult:
    name: str
    tasks: int
    seconds: float
    latencies: list[float]

    @property
    def rate(self) -> float:
        return self.tasks / self.seconds if self.seconds > 0 else 0.0

    def percentile(self, p: float) -> float:
        return percentile(self.latencies, p)


def _client(host: str, port: int, identifier: str | None = None) -> aiomqtt.Client:
    return new_client(MqttTarget(host, port, None, None, tls=False), identifier=identifier, max_inflight=1000)


# -- baseline processes -----------------------------------------------------------
async def _bare_sensor(host: str, port: int, serial: int, ready: asyncio.Event, counter: list[int]) -> None:
    topics = Topics()
    async with _client(host, port) as client:
        await client.subscribe(topics.tasks(serial), qos=1)
        counter[0] += 1
        if counter[0] == counter[1]:
            ready.set()
        async for message in client.messages:
            task = TaskMessage.model_validate_json(message.payload if isinstance(message.payload, bytes) else b"")
            status = topics.status(serial)
            for state in ("ongoing", "completed"):
                report = StatusReport(task_id=task.task_id, attempt=task.attempt, status=state)
                await client.publish(status, report.to_json(), qos=1)


def _bare_fleet(host: str, port: int, sensors: int, ready: Any) -> None:  # noqa: ANN401
    async def main() -> None:
        connected = asyncio.Event()
        counter = [0, sensors]
        tasks = [
            asyncio.create_task(_bare_sensor(host, port, FIRST_SERIAL + i, connected, counter)) for i in range(sensors)
        ]
        await connected.wait()
        ready.set()
        await asyncio.gather(*tasks)

    asyncio.run(main())


def _bare_dispatcher(host: str, port: int, sensors: int, tasks: int, results: Any) -> None:  # noqa: ANN401
    async def main() -> None:
        topics = Topics()
        queues: dict[int, deque[int]] = {FIRST_SERIAL + i: deque() for i in range(sensors)}
        for task_id in range(1, tasks + 1):
            queues[FIRST_SERIAL + (task_id - 1) % sensors].append(task_id)
        latencies: list[float] = []
        async with _client(host, port, f"bench-baseline-{uuid.uuid4().hex[:6]}") as client:
            await client.subscribe(topics.all_status, qos=1)

            async def send(serial: int) -> None:
                if queues[serial]:
                    task_id = queues[serial][0]
                    message = TaskMessage(
                        task_id=task_id, type="update_firmware", file_id=FILE_ID, attempt=1, timeout_s=3600
                    )
                    await client.publish(topics.tasks(serial), message.to_json(), qos=1)

            start = time.perf_counter()
            await asyncio.gather(*(send(serial) for serial in queues))
            async for message in client.messages:
                parsed = topics.parse_sensor(str(message.topic))
                report = StatusReport.model_validate_json(
                    message.payload if isinstance(message.payload, bytes) else b""
                )
                if parsed is None or report.status != "completed":
                    continue
                queues[parsed.serial].popleft()
                latencies.append(time.perf_counter() - start)
                if len(latencies) == tasks:
                    break
                asyncio.create_task(send(parsed.serial))  # noqa: RUF006
            results.put((time.perf_counter() - start, latencies))

    asyncio.run(main())


def run_baseline(host: str, port: int, sensors: int, tasks: int) -> RunResult:
    spawn = multiprocessing.get_context("spawn")
    ready, results = spawn.Event(), spawn.Queue()
    fleet = spawn.Process(target=_bare_fleet, args=(host, port, sensors, ready), daemon=True)
    fleet.start()
    try:
        if not ready.wait(START_TIMEOUT_S):
            raise RuntimeError("baseline fleet did not connect")
        dispatcher = spawn.Process(target=_bare_dispatcher, args=(host, port, sensors, tasks, results), daemon=True)
        dispatcher.start()
        seconds, latencies = results.get(timeout=600)
        dispatcher.join(10)
    finally:
        fleet.kill()
        fleet.join()
    return RunResult("raw MQTT baseline", tasks, seconds, latencies)


# -- product -------------------------------------------------------------------
async def _drive(instances: list[Instance], host: str, port: int, sensors: int, tasks: int) -> RunResult:
    """Create the tasks through every instance's API in turn, chunk by chunk, and wait until
    ``ops/events`` reported each one Completed."""
    accepted: dict[int, float] = {}
    completed: dict[int, float] = {}
    done = asyncio.Event()
    async with _client(host, port) as watcher:
        await watcher.subscribe(Topics().all_ops_events, qos=1)

        async def watch() -> None:
            async for message in watcher.messages:
                event = json.loads(message.payload if isinstance(message.payload, bytes) else b"{}")
                if event.get("to") == "Completed":
                    completed[event["task_id"]] = time.perf_counter()
                    if len(completed) == tasks:
                        done.set()

        watching = asyncio.create_task(watch())
        bodies = [
            {"sensor_serial": FIRST_SERIAL + i % sensors, "file_id": FILE_ID, "type": "update_firmware"}
            for i in range(tasks)
        ]
        chunk = min(BULK_CHUNK, -(-tasks // len(instances)))
        start = time.perf_counter()
        async with httpx.AsyncClient(timeout=120) as http:
            for n, offset in enumerate(range(0, tasks, chunk)):
                instance = instances[n % len(instances)]
                body = {"tasks": bodies[offset : offset + chunk]}
                response = await http.post(f"{instance.url}/v1/tasks/bulk", json=body)
                response.raise_for_status()
                now = time.perf_counter()
                ids = response.json()["ids"]
                accepted.update(dict.fromkeys(ids, now))
                instance.accepted += len(ids)
        await asyncio.wait_for(done.wait(), 600)
        seconds = max(completed.values()) - start
        watching.cancel()
    name = "sensortasks" if len(instances) == 1 else f"sensortasks x{len(instances)}"
    return RunResult(name, tasks, seconds, [completed[i] - accepted[i] for i in accepted])


def run_product(
    host: str, port: int, sensors: int, tasks: int, workdir: Path, *, instances: int, database_url: str
) -> tuple[RunResult, list[InstanceFigures]]:
    """The run, and per instance the tasks created through it and the CPU it used during the run."""
    env = os.environ | {
        "SENSORTASKS_MQTT_URL": f"mqtt://{host}:{port}",
        "SENSORTASKS_AUTH": "disabled",
        "SENSORTASKS_ACK_TIMEOUT_S": "600",
    }
    with Deployment(instances, env, database_url, workdir, f"bench-{uuid.uuid4().hex[:6]}") as deployment:
        fleet = spawn_cli(
            ["simulate", "--sensors", str(sensors), "--first-serial", str(FIRST_SERIAL), "--work-s", "0"],
            env,
            workdir / "simulate.log",
        )
        try:
            asyncio.run(deployment.start())
            time.sleep(1.0 + sensors / 500)  # let the fleet connect (it does so in batches)
            idle_cpu = [i.cpu_s() for i in deployment.instances]
            result = asyncio.run(_drive(deployment.instances, host, port, sensors, tasks))
            figures = [
                replace(i.figures(), cpu_s=i.cpu_s() - before)
                for i, before in zip(deployment.instances, idle_cpu, strict=True)
            ]
        finally:
            fleet.terminate()
            try:
                fleet.wait(15)
            except subprocess.TimeoutExpired:
                fleet.kill()
    return result, figures


def bench(
    *,
    tasks: int,
    sensors: int,
    mqtt_host: str | None,
    mqtt_port: int | None,
    instances: int = 1,
    database: str | None = None,
    say: Callable[[str], None],
) -> tuple[RunResult, RunResult, list[InstanceFigures]]:
    """`database` is a PostgreSQL server URL to run on (in a scratch database); default SQLite."""
    with (
        tempfile.TemporaryDirectory(prefix="sensortasks-bench-") as tmp,
        tool_database(database, Path(tmp), "bench", say) as url,
    ):
        workdir = Path(tmp)
        broker = None
        if mqtt_host is None or mqtt_port is None:
            broker = MosquittoBroker(workdir=workdir / "broker")
            broker.start()
            mqtt_host, mqtt_port = broker.host, broker.port
        try:
            say(f"baseline: {tasks} tasks over {sensors} sensors ...")
            baseline = run_baseline(mqtt_host, mqtt_port, sensors, tasks)
            say(f"sensortasks ({instances} instance(s)): {tasks} tasks over {sensors} sensors ...")
            product, figures = run_product(
                mqtt_host, mqtt_port, sensors, tasks, workdir, instances=instances, database_url=url
            )
        finally:
            if broker is not None:
                broker.stop()
    return product, baseline, figures


def summary(product: RunResult, baseline: RunResult, instances: list[InstanceFigures]) -> list[str]:
    """The runs, then each serve process's share (tasks created through it, CPU during the
    run) and their sum; the last line is ``ratio: X.XX``."""
    lines = [f"{'run':<20} {'tasks':>7} {'seconds':>8} {'lifecycles/s':>13} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}"]
    for run in (baseline, product):
        lines.append(
            f"{run.name:<20} {run.tasks:>7} {run.seconds:>8.2f} {run.rate:>13.1f} "
            + " ".join(f"{run.percentile(p) * 1000:>8.0f}" for p in (50, 95, 99))
        )
    lines.append(f"{'serve instance':<20} {'created':>7} {'CPU s':>8} {'CPU ms/lifecycle':>17}")
    total = InstanceFigures("all serve processes", 0, 0, 0.0, product.tasks, sum(i.cpu_s for i in instances))
    for instance in [*instances, total] if len(instances) > 1 else instances:
        lines.append(
            f"{instance.name:<20} {instance.accepted:>7} {instance.cpu_s:>8.2f} "
            f"{instance.cpu_s * 1000 / product.tasks:>17.2f}"
        )
    lines.append(
        f"median latency ratio: {statistics.median(product.latencies) / statistics.median(baseline.latencies):.2f}"
    )
    lines.append(f"ratio: {product.rate / baseline.rate:.2f}")
    return lines
