"""``sensortasks bench``: task lifecycles per second of the product, against the raw MQTT flows
(`tools.baseline`) measured in the same run, on the same broker with the same settings.

Every run has the same topology and message flow per task: a dispatcher side, a fleet
process with one MQTT client per sensor answering each task with an "ongoing" and a
"completed" status, one task at a time per sensor, and the driver (this process):

- the raw flows (``raw paho``, the strongest; ``raw aiomqtt``): queues in memory, no database;
- ``sensortasks``: ``sensortasks serve`` (REST API + dispatcher on SQLite, or with ``--database``
  on a scratch PostgreSQL database; with ``--instances N``, N of them in one share group) and
  ``sensortasks simulate`` (the SDK fleet, zero work time). The driver creates the tasks
  through ``POST /v1/tasks/bulk`` of every instance in turn.

The broker is the bench's own Mosquitto with ``set_tcp_nodelay true`` (or the one given with
``--mqtt-url``, settings unknown, and said so in the header).

Timing is the same for every run, and no observer is charged to one run only: a lifecycle
runs from its task's creation to its completion **as its dispatcher recorded them** (a raw
dispatcher: every task created when it starts publishing, each completion when it handles the
report; the product: ``created_at`` and ``completed_at`` in its database, written by serve).
The driver watches no event during a run, so its own watching is off the measured work: it
waits on the raw dispatcher's result, or polls the product's task counts every `POLL_S`. The
run's rate is tasks / (last completion - first creation). CPU is read from ``/proc/<pid>/stat``
of every process (serve, fleet, driver, broker) over the run, serve's peak RSS (``VmHWM``) at
its end.

Sessions: whatever session the product's clients leave (the dispatcher's and every sensor's
are persistent) is removed at the end, and the sensors' first too, in case a killed run left
them (they would queue the raw flows' tasks); so are the retained presence messages. The raw
flows use sessions that end with their connections. The last line is ``ratio: X.XX`` =
product rate / the best raw flow's rate.

Opt-in scenarios (`tools.scenarios`: ``--backlog``, ``--paced``, ``--bulk-during``, ``--resume``)
run around the product's saturated run, on the same broker and deployment; their lines come
after the tables, before the ratio. A default bench runs none of them.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
from sqlalchemy import select

from sensortasks.protocol import Topics
from sensortasks.store import TaskStore, open_database, utcnow
from sensortasks.store.base import T
from sensortasks.testing import MosquittoBroker
from sensortasks.testing.broker import mosquitto_binary
from sensortasks.tools.baseline import (
    FIRST_SERIAL,
    RAW_FLOWS,
    ROLES,
    CpuMeter,
    RunResult,
    measured_roles,
    run_raw,
)
from sensortasks.tools.deployment import (
    Deployment,
    InstanceFigures,
    as_utc,
    is_postgres,
    peak_rss_bytes,
    spawn_cli,
    tool_database,
)
from sensortasks.tools.paced import bulk_json, fleet_rows, fleet_serial, post_tasks, product_name, wait_completed
from sensortasks.tools.scenarios import Findings, Product, Scenarios, fill_backlog, raw_paced, with_product
from sensortasks.tools.selector import START_TIMEOUT_S, clear_retained, end_sessions

BULK_CHUNK = 1000
#: How often the driver reads the product's task counts while waiting for the end.
POLL_S = 0.1


@dataclass(frozen=True, slots=True)
class ServeFigures:
    """One serve process over the run: tasks created through it, CPU, peak resident memory."""

    instance: InstanceFigures
    peak_rss_bytes: int


@dataclass(frozen=True, slots=True)
class BenchReport:
    header: list[str]
    baselines: list[RunResult]
    product: RunResult
    serve: list[ServeFigures]
    scenarios: Scenarios
    findings: Findings

    @property
    def best_baseline(self) -> RunResult:
        return max(self.baselines, key=lambda run: run.rate)


def mosquitto_version() -> str:
    """``2.0.11``, from the first line ``mosquitto -h`` prints (``mosquitto version 2.0.11``)."""
    done = subprocess.run([mosquitto_binary(), "-h"], capture_output=True, text=True, check=False)  # noqa: S603
    return done.stdout.splitlines()[0].split()[-1] if done.stdout else "(unknown version)"


# -- the product -------------------------------------------------------------------
async def _wait_online(store: TaskStore, sensors: int, fleet: subprocess.Popen[bytes]) -> None:
    """Until serve has every simulated sensor online (each subscribed before it said so)."""
    deadline = time.monotonic() + START_TIMEOUT_S + sensors / 20
    while await store.sensors_online() < sensors:
        if fleet.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the simulated fleet did not come online (see simulate.log)")
        await asyncio.sleep(POLL_S)


async def _create(deployment: Deployment, sensors: int, tasks: int) -> list[int]:
    """The tasks, through every instance's API in turn, a chunk at a time; their ids."""
    chunk = min(BULK_CHUNK, -(-tasks // len(deployment.instances)))
    ids = []
    async with httpx.AsyncClient(timeout=120) as http:
        for n, offset in enumerate(range(0, tasks, chunk)):
            serials = (fleet_serial(i, sensors) for i in range(offset, min(tasks, offset + chunk)))
            ids += await post_tasks(http, deployment, n, bulk_json(serials))
    return ids


async def _drive(
    deployment: Deployment, fleet: subprocess.Popen[bytes], sensors: int, tasks: int, broker_pid: int | None
) -> tuple[RunResult, CpuMeter]:
    """Create the tasks, wait until the database counts them all Completed, then read their
    creation and completion times from it."""
    store = TaskStore(open_database(deployment.database_url))
    try:
        await _wait_online(store, sensors, fleet)
        serve_pids = [i.pid or 0 for i in deployment.instances]
        meter = CpuMeter(measured_roles(serve_pids, fleet.pid, broker_pid))
        start = utcnow()
        ids = await _create(deployment, sensors, tasks)
        await wait_completed(store, ids, sensors, POLL_S)
        cpu = meter.stop()
        async with store.db.reader.connect() as conn:
            query = select(T.c.created_at, T.c.completed_at).where(fleet_rows(ids, sensors))
            rows = (await conn.execute(query)).all()
    finally:
        await store.db.dispose()
    completed = [(as_utc(created), as_utc(done)) for created, done in rows]
    seconds = (max(done for _, done in completed) - start).total_seconds()
    return RunResult(
        product_name(deployment), tasks, seconds, [(d - c).total_seconds() for c, d in completed], cpu
    ), meter


def run_product(
    deployment: Deployment,
    env: dict[str, str],
    sensors: int,
    tasks: int,
    workdir: Path,
    broker_pid: int | None,
    scenarios: Scenarios,
    mqtt: tuple[str, int],
    say: Callable[[str], None],
) -> tuple[RunResult, list[ServeFigures], Findings]:
    """The run, and per serve process the tasks created through it, its CPU and peak RSS; then
    the scenarios that need the product (`tools.scenarios`)."""
    findings = Findings()
    with deployment:
        if scenarios.backlog:
            say(f"sensortasks backlog: {scenarios.backlog} historic tasks through the store ...")
            findings.backlog_s = asyncio.run(fill_backlog(deployment.database_url, scenarios.backlog))
        # serve first: the fleet's outgoing connections take ephemeral ports, and one of them
        # took the HTTP port picked for serve before it could listen (5,000 sensors).
        asyncio.run(deployment.start())
        fleet = spawn_cli(
            ["simulate", "--sensors", str(sensors), "--first-serial", str(FIRST_SERIAL), "--work-s", "0"],
            env,
            workdir / "simulate.log",
        )
        try:
            result, meter = asyncio.run(_drive(deployment, fleet, sensors, tasks, broker_pid))
            serve = [
                ServeFigures(replace(i.figures(), cpu_s=meter.used[i.pid or 0]), peak_rss_bytes(i.pid or 0))
                for i in deployment.instances
            ]
            with_product(Product(deployment, mqtt, sensors, tasks, result.rate), scenarios, findings, say)
        finally:
            fleet.terminate()
            try:
                fleet.wait(15)
            except subprocess.TimeoutExpired:
                fleet.kill()
                fleet.wait()
    return result, serve, findings


# -- the broker's state -------------------------------------------------------------
def _sensor_leftovers(sensors: int) -> tuple[list[str], list[str]]:
    """The SDK fleet's client ids (`SensorClient`'s default ``sensor-<serial>``) and its retained presence."""
    serials = range(FIRST_SERIAL, FIRST_SERIAL + sensors)
    return [f"sensor-{serial}" for serial in serials], [Topics().presence(serial) for serial in serials]


def _deployment_leftovers(deployment: Deployment) -> tuple[list[str], list[str]]:
    """Each instance's client id (``sensortasks-<instance>``, as `dispatcher_link` names it) and
    its retained presence."""
    names = [i.name for i in deployment.instances]
    return [f"sensortasks-{name}" for name in names], [Topics().ops_dispatcher(name) for name in names]


def clean_broker(host: str, port: int, leftovers: Sequence[tuple[list[str], list[str]]]) -> None:
    """End the sessions and delete the retained messages of `leftovers`."""
    end_sessions(host, port, [identifier for identifiers, _ in leftovers for identifier in identifiers])
    clear_retained(host, port, [topic for _, topics in leftovers for topic in topics])


# -- the bench ------------------------------------------------------------------------
def _header(tasks: int, sensors: int, instances: int, database: str, broker: str, load: float) -> list[str]:
    where = "PostgreSQL (a scratch database)" if is_postgres(database) else "SQLite"
    return [
        f"bench: {tasks} tasks over {sensors} sensors, one at a time per sensor; "
        f"sensortasks: {instances} serve instance(s) on {where}",
        f"machine: {os.cpu_count()} cores, load average {load:.2f} at the start "
        "(anything else running here shares them)",
        broker,
        "timed by each run's dispatcher: from a task's creation to its completion "
        "(sensortasks: created_at, completed_at in its database); no watcher runs during a run",
    ]


def bench(
    *,
    tasks: int,
    sensors: int,
    mqtt_host: str | None,
    mqtt_port: int | None,
    instances: int = 1,
    database: str | None = None,
    scenarios: Scenarios = Scenarios(),  # noqa: B008 (frozen)
    say: Callable[[str], None],
) -> BenchReport:
    """`database` is a PostgreSQL server URL to run on (in a scratch database); default SQLite."""
    with (
        tempfile.TemporaryDirectory(prefix="sensortasks-bench-") as tmp,
        tool_database(database, Path(tmp), "bench", say) as url,
    ):
        load = os.getloadavg()[0]
        workdir = Path(tmp)
        broker = None
        if mqtt_host is None or mqtt_port is None:
            broker = MosquittoBroker(workdir=workdir / "broker", tcp_nodelay=True)
            broker.start()
            mqtt_host, mqtt_port = broker.host, broker.port
            about = f"broker: mosquitto {mosquitto_version()}, set_tcp_nodelay true (the bench's own, for every run)"
        else:
            about = f"broker: {mqtt_host}:{mqtt_port} (--mqtt-url: its version and settings unknown, its CPU not read)"
        broker_pid = broker.process.pid if broker and broker.process else None
        env = os.environ | {
            "SENSORTASKS_MQTT_URL": f"mqtt://{mqtt_host}:{mqtt_port}",
            "SENSORTASKS_AUTH": "disabled",
            "SENSORTASKS_ACK_TIMEOUT_S": "600",
        }
        leftovers = [_sensor_leftovers(sensors)]
        try:
            clean_broker(mqtt_host, mqtt_port, leftovers)
            baselines = []
            for flow in RAW_FLOWS:
                say(f"{flow.name}: {tasks} tasks over {sensors} sensors ...")
                baselines.append(run_raw(flow, mqtt_host, mqtt_port, sensors, tasks, broker_pid))
            say(f"sensortasks ({instances} serve instance(s)): {tasks} tasks over {sensors} sensors ...")
            # Made now, as it picks its free HTTP ports.
            deployment = Deployment(instances, env, url, workdir, f"bench-{uuid.uuid4().hex[:6]}")
            leftovers.append(_deployment_leftovers(deployment))
            mqtt = (mqtt_host, mqtt_port)
            product, serve, findings = run_product(
                deployment, env, sensors, tasks, workdir, broker_pid, scenarios, mqtt, say
            )
            if scenarios.paced:
                rate = scenarios.pace(product.rate)
                say(f"raw paho paced: {tasks} tasks at {rate:.1f}/s ...")
                clean_broker(mqtt_host, mqtt_port, leftovers)  # the product's sessions would queue its messages
                raw_paced(mqtt, sensors, tasks, rate, findings)
        finally:
            clean_broker(mqtt_host, mqtt_port, leftovers)
            if broker is not None:
                broker.stop()
    header = _header(tasks, sensors, instances, url, about, load)
    return BenchReport(header, baselines, product, serve, scenarios, findings)


def summary(report: BenchReport) -> list[str]:
    """The header, the runs, the CPU of each run's processes, each serve process's share (and
    their sum when there are several); the last line is ``ratio: X.XX``."""
    runs = [*report.baselines, report.product]
    lines = [*report.header]
    lines.append(
        f"{'run':<20} {'tasks':>7} {'seconds':>8} {'lifecycles/s':>13} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}"
    )
    for run in runs:
        lines.append(
            f"{run.name:<20} {run.tasks:>7} {run.seconds:>8.2f} {run.rate:>13.1f} "
            + " ".join(f"{run.percentile(p) * 1000:>8.0f}" for p in (50, 95, 99))
        )
    lines.append(f"{'CPU µs per lifecycle':<20} " + " ".join(f"{role:>10}" for role in ROLES) + f" {'total':>10}")
    for run in runs:
        cells = [run.cpu_us(role) for role in ROLES]
        total = sum(cell for cell in cells if cell is not None)
        lines.append(
            f"{run.name:<20} "
            + " ".join("-".rjust(10) if c is None else f"{c:>10.0f}" for c in cells)
            + f" {total:>10.0f}"
        )
    lines.append("(dispatcher: serve for sensortasks; driver: the bench itself, creating tasks and waiting)")
    lines.append(f"{'serve instance':<20} {'created':>7} {'CPU s':>8} {'CPU µs/lifecycle':>17} {'peak RSS MiB':>13}")
    for figures in report.serve:
        serve = figures.instance
        lines.append(
            f"{serve.name:<20} {serve.accepted:>7} {serve.cpu_s:>8.2f} "
            f"{serve.cpu_s * 1e6 / report.product.tasks:>17.0f} {figures.peak_rss_bytes / 2**20:>13.1f}"
        )
    if len(report.serve) > 1:
        cpu_s = sum(f.instance.cpu_s for f in report.serve)
        lines.append(
            f"{'all serve processes':<20} {report.product.tasks:>7} {cpu_s:>8.2f} "
            f"{cpu_s * 1e6 / report.product.tasks:>17.0f} {'-':>13}"
        )
    peak_rss = max(f.peak_rss_bytes for f in report.serve)
    lines += report.findings.report(report.scenarios, report.product.tasks, report.product.rate, peak_rss)
    best = report.best_baseline
    lines.append(f"ratio = {report.product.name} / the best raw flow of this run, {best.name}")
    lines.append(f"ratio: {report.product.rate / best.rate:.2f}")
    return lines
