"""The bench's opt-in scenarios, each against a target of issue 12 (``sensortasks bench --paced
--backlog N --resume N --bulk-during N``); a default bench runs none of them.

- ``--backlog N``: before the product's saturated run, N historic tasks (`tools.history`:
  mostly Completed, on sensors not in the fleet) go into its database straight through the
  store; the run then reports serve's peak RSS and its lifecycles/s with them there.
- ``--paced``: after the saturated runs, the product and the raw paho flow (the strongest raw
  flow) each create as many tasks at half the product's saturated rate (or at ``--paced-rate``,
  to compare runs of different code at one rate); their dispatch latency (`tools.paced`).
- ``--bulk-during N``: N tasks for sensors not in the fleet in one bulk during a paced run of
  the product; how late its own tasks' ``ops/events`` arrive meanwhile (`tools.paced`).
- ``--resume N``: serve is killed (SIGKILL) with the fleet online, N Pending tasks for the
  fleet go into the database through the store, and serve is started again: the seconds from
  its spawn to its first dispatch (the earliest ``started_at``, the first task a sensor
  acknowledged) and to ``/healthz`` answering 200.

They run in that order on one deployment (resume last: it leaves the fleet N tasks to do).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from sqlalchemy import func, select

from sensortasks.domain import TaskStatus
from sensortasks.store import NewTask, PastTask, TaskStore, open_database, upgrade, utcnow
from sensortasks.store.base import T
from sensortasks.tools import history
from sensortasks.tools.baseline import FILE_ID, FIRST_SERIAL
from sensortasks.tools.deployment import Deployment, as_utc
from sensortasks.tools.paced import PACE_S, PacedResult, bulk_during, fleet_serial, paced_product, run_raw_paced

#: How often the resumed serve's /healthz and first dispatch are looked for.
RESUME_POLL_S = 0.02
RESUME_TIMEOUT_S = 120.0


@dataclass(frozen=True, slots=True)
class Scenarios:
    paced: bool = False
    backlog: int = 0
    resume: int = 0
    bulk_during: int = 0
    #: Tasks/s of the paced runs; None: half the saturated product's rate.
    paced_rate: float | None = None

    def pace(self, saturated: float) -> float:
        """The paced runs' rate, given the saturated product run's: half of it by default, so that
        latency is read with headroom left; one rate given compares two versions of the code."""
        return self.paced_rate if self.paced_rate is not None else saturated / 2

    def pace_said(self) -> str:
        """Where the rate came from, for the report (a reader of the figures must know)."""
        return "as given" if self.paced_rate is not None else "half of the saturated sensortasks run"


@dataclass(frozen=True, slots=True)
class Product:
    """The deployment after its saturated run, its fleet still online."""

    deployment: Deployment
    mqtt: tuple[str, int]
    sensors: int
    tasks: int
    #: The saturated run's lifecycles/s.
    rate: float


@dataclass(slots=True)
class Findings:
    backlog_s: float | None = None
    paced: list[PacedResult] = field(default_factory=list)
    #: Those of ``--bulk-during`` and ``--resume``, ready to print.
    lines: list[str] = field(default_factory=list)

    def report(self, scenarios: Scenarios, tasks: int, rate: float, peak_rss_bytes: int) -> list[str]:
        """Every scenario's lines; `rate` and `peak_rss_bytes` are the saturated run's."""
        lines = []
        if self.backlog_s is not None:
            lines += [
                f"backlog: {scenarios.backlog} historic tasks ({history.STATUS_WEIGHTS[TaskStatus.COMPLETED]:.0%} "
                f"Completed, on {history.SENSORS} sensors not in the fleet) filled through the store in "
                f"{self.backlog_s:.1f} s before the run",
                f"backlog: serve peak RSS {peak_rss_bytes / 2**20:.1f} MiB with {scenarios.backlog + tasks} tasks "
                f"in the database; sensortasks {rate:.1f} lifecycles/s",
            ]
        if self.paced:
            lines += [
                f"paced: {self.paced[0].tasks} tasks at {scenarios.pace(rate):.1f}/s ({scenarios.pace_said()}), "
                f"those due created every {PACE_S * 1000:.0f} ms",
                "paced: dispatch latency = from a task's creation to its dispatcher handling the sensor's "
                '"ongoing" (sensortasks: created_at -> started_at in its database)',
                f"{'paced run':<20} {'tasks':>7} {'rate/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}",
                *(run.row() for run in sorted(self.paced, key=lambda run: not run.name.startswith("raw"))),
                *(line for line in (run.stages_line() for run in self.paced) if line is not None),
            ]
        return lines + self.lines


async def _filled(url: str, fill: Callable[[TaskStore], Awaitable[None]]) -> float:
    """Seconds `fill` took on a store of `url`."""
    store = TaskStore(open_database(url))
    try:
        started = time.perf_counter()
        await fill(store)
        return time.perf_counter() - started
    finally:
        await store.db.dispose()


async def fill_backlog(url: str, rows: int) -> float:
    """Migrate, then load `rows` tasks of `history`; the seconds the load took."""
    await upgrade(url)
    return await _filled(url, lambda store: history.fill(store, rows, utcnow(), random.Random(7)))


async def _pending(store: TaskStore, sensors: int, rows: int) -> None:
    """`rows` new Pending tasks for the fleet, dealt round-robin, a chunk per transaction."""
    now = utcnow()

    def task(n: int) -> PastTask:
        new = NewTask(fleet_serial(n, sensors), "update_firmware", FILE_ID, max_attempts=3, timeout_s=3600)
        return PastTask(new, None, TaskStatus.PENDING, 0, now, now)

    for offset in range(0, rows, history.CHUNK):
        await store.bulk_insert([task(n) for n in range(offset, min(rows, offset + history.CHUNK))])


async def _first_dispatch(store: TaskStore, sensors: int) -> float | None:
    """The earliest ``started_at`` (Unix time) of the fleet's Pending tasks, once every sensor's
    first has one: a sensor's tasks go oldest first, so the first dispatch is one of those."""
    fleet = T.c.sensor_serial.between(FIRST_SERIAL, FIRST_SERIAL + sensors - 1)
    async with store.db.reader.connect() as conn:
        query = select(func.min(T.c.id)).where(fleet, T.c.status_id == TaskStatus.PENDING).group_by(T.c.sensor_serial)
        heads = list((await conn.execute(query)).scalars())
    started = select(func.count(T.c.started_at), func.min(T.c.started_at)).where(T.c.id.in_(heads))
    deadline = time.monotonic() + RESUME_TIMEOUT_S
    while True:
        async with store.db.reader.connect() as conn:
            count, first = (await conn.execute(started)).one()
        if count == len(heads) or time.monotonic() > deadline:
            return None if first is None else as_utc(first).timestamp()
        await asyncio.sleep(RESUME_POLL_S)


async def resume(store: TaskStore, product: Product, rows: int) -> list[str]:
    deployment = product.deployment
    for instance in deployment.instances:
        instance.kill()
    fill_s = await _filled(deployment.database_url, lambda s: _pending(s, product.sensors, rows))

    async def healthy() -> float:
        await asyncio.gather(*(i.start(poll_s=RESUME_POLL_S) for i in deployment.instances))
        return time.time()

    spawned = time.time()
    healthy_at, first = await asyncio.gather(healthy(), _first_dispatch(store, product.sensors))
    dispatch = "none" if first is None else f"{first - spawned:.2f} s"
    return [
        f"resume: {rows} Pending tasks for the fleet's {product.sensors} sensors filled through the store in "
        f"{fill_s:.1f} s while serve was down (kill -9, fleet online)",
        f"resume: from the new serve's spawn: first dispatch (earliest started_at) {dispatch}; "
        f"/healthz 200 {healthy_at - spawned:.2f} s",
    ]


async def _with_product(product: Product, scenarios: Scenarios, findings: Findings, say: Callable[[str], None]) -> None:
    store = TaskStore(open_database(product.deployment.database_url))
    rate = scenarios.pace(product.rate)
    try:
        if scenarios.paced:
            say(f"sensortasks paced: {product.tasks} tasks at {rate:.1f}/s ...")
            findings.paced.append(await paced_product(store, product.deployment, product.sensors, product.tasks, rate))
        if scenarios.bulk_during:
            say(f"sensortasks paced at {rate:.1f}/s with a bulk of {scenarios.bulk_during} tasks ...")
            deployment, sensors = product.deployment, product.sensors
            findings.lines += await bulk_during(store, deployment, product.mqtt, sensors, scenarios.bulk_during, rate)
        if scenarios.resume:
            say(f"sensortasks resume: kill -9, {scenarios.resume} Pending tasks, start ...")
            findings.lines += await resume(store, product, scenarios.resume)
    finally:
        await store.db.dispose()


def with_product(product: Product, scenarios: Scenarios, findings: Findings, say: Callable[[str], None]) -> None:
    """The scenarios that need the product running: paced, bulk-during, resume, in that order."""
    asyncio.run(_with_product(product, scenarios, findings, say))


def raw_paced(mqtt: tuple[str, int], sensors: int, tasks: int, rate: float, findings: Findings) -> None:
    """The raw paho flow paced at `rate` (the product's processes gone)."""
    findings.paced.append(run_raw_paced(*mqtt, sensors, tasks, rate))
