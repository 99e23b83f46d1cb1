"""Paced runs for ``sensortasks bench --paced`` and ``--bulk-during``: tasks created at a steady
rate instead of all up front, so that what is measured is how soon each one is dispatched,
not how fast a queue drains.

Both flows create the tasks due at the rate once every `PACE_S`, dealt round-robin over the
fleet, and are timed the same way. **Dispatch latency** is from a task's creation to the
moment its dispatcher handles the sensor's ``ongoing`` (its acknowledgement), both as that
dispatcher recorded them: the raw paho dispatcher creates the tasks itself and stamps both
moments; the product's are ``created_at`` (serve's insert, from a ``POST /v1/tasks/bulk``) and
``started_at`` (serve applying the ``ongoing``) in its database. No watcher runs. The product's
is also split at the task's ``sent_at``, stamped when the claim round that sent it began: the
way to the claim (the create's commit, the dispatch loop's turn), then the claim's transaction,
the fleet's round trip and the "ongoing" batch.

``--bulk-during`` adds one large ``POST /v1/tasks/bulk`` (in chunks of the API's `MAX_BULK`) for
sensors not in the fleet during a paced run, and an `EventTap` in the driver on ``ops/events``:
an event's lateness is its receive time minus its ``at``. The ``at`` of the message has whole
seconds, so the lateness is taken against the same event's ``at`` in the database (microseconds).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any

import httpx
import paho.mqtt.client as paho
from sqlalchemy import func, select

from sensortasks.api.models import MAX_BULK
from sensortasks.domain import TaskStatus
from sensortasks.protocol import StatusReport, Topics
from sensortasks.store import TaskStore
from sensortasks.store.base import E, T
from sensortasks.tools.baseline import (
    DISPATCH_WINDOW,
    FILE_ID,
    FIRST_SERIAL,
    RawFlow,
    paho_fleet,
    raw_processes,
    run_timeout_s,
    start_subscribed,
    task_json,
)
from sensortasks.tools.deployment import Deployment, as_utc
from sensortasks.tools.selector import START_TIMEOUT_S, paho_client
from sensortasks.tools.stats import percentile

#: How often a paced run creates the tasks due.
PACE_S = 0.02
#: The bulk's sensors: none of them in the fleet, none online.
BULK_FIRST_SERIAL = 700_000_000_000_000
BULK_SENSORS = 1000
#: How long the paced run goes on before the bulk, and after the bulk's last event arrived.
LEAD_S = TAIL_S = 1.0
POLL_S = 0.05
SEED_TIME = "%Y-%m-%d %H:%M:%S"


@dataclass(frozen=True, slots=True)
class PacedResult:
    name: str
    tasks: int
    #: Tasks over the span from the first creation to the last.
    rate: float
    latencies: list[float]
    #: The product's latency split at ``sent_at`` (stamped as its claim round began), in seconds:
    #: (created -> sent_at, sent_at -> started_at) of each task.
    stages: list[tuple[float, float]] = field(default_factory=list)

    def row(self) -> str:
        cells = " ".join(f"{percentile(self.latencies, p) * 1000:>8.1f}" for p in (50, 95, 99))
        return f"{self.name:<20} {self.tasks:>7} {self.rate:>8.1f} {cells}"

    def stages_line(self) -> str | None:
        """Where the latency went, for a run that knows (the product's)."""
        if not self.stages:
            return None
        first, second = ([stage[at] * 1000 for stage in self.stages] for at in (0, 1))
        return (
            f"paced: {self.name} stages, p50 / p99 ms: created -> sent_at {percentile(first, 50):.1f} / "
            f"{percentile(first, 99):.1f}; sent_at -> started_at {percentile(second, 50):.1f} / "
            f"{percentile(second, 99):.1f}"
        )


def due_by(elapsed_s: float, rate: float) -> int:
    """How many tasks a run paced at `rate` per second has created `elapsed_s` after it started."""
    return math.floor(elapsed_s * rate)


def task_body(serial: int) -> dict[str, Any]:
    return {"sensor_serial": serial, "file_id": FILE_ID, "type": "update_firmware"}


def product_name(deployment: Deployment) -> str:
    """How the product's runs are named in the tables: ``sensortasks``, or ``sensortasks xN`` with N instances."""
    return "sensortasks" if len(deployment.instances) == 1 else f"sensortasks x{len(deployment.instances)}"


def fleet_serial(n: int, sensors: int) -> int:
    """The sensor of the `n`-th task (from 0), dealt round-robin over the fleet."""
    return FIRST_SERIAL + n % sensors


# -- raw paho -----------------------------------------------------------------------
def _paced_paho_dispatcher(
    rate: float,
    host: str,
    port: int,
    sensors: int,
    tasks: int,
    ready: Any,  # noqa: ANN401
    go: Any,  # noqa: ANN401
    results: Any,  # noqa: ANN401
) -> None:
    """The raw paho dispatcher (`baseline`) creating its `tasks` itself at `rate`; puts the
    creation span and each task's dispatch latency on `results`."""
    topics, guard, done = Topics(), threading.Lock(), threading.Event()
    queues: dict[int, deque[int]] = {fleet_serial(i, sensors): deque() for i in range(sensors)}
    created: dict[int, float] = {}
    acked: dict[int, float] = {}
    client = paho_client(f"bench-raw-paced-{uuid.uuid4().hex[:8]}")
    client.max_inflight_messages_set(DISPATCH_WINDOW)

    def on_message(_c: paho.Client, _u: Any, message: paho.MQTTMessage) -> None:  # noqa: ANN401
        parsed = topics.parse_sensor(message.topic)
        report = StatusReport.from_wire(bytes(message.payload))
        if parsed is None or report.status not in ("ongoing", "completed"):
            return
        if report.status == "ongoing":
            acked.setdefault(report.task_id, time.time())
            return
        with guard:
            queue = queues[parsed.serial]
            queue.popleft()
            following = queue[0] if queue else None
        if following is not None:
            client.publish(topics.tasks(parsed.serial), task_json(following), qos=1)
        elif len(acked) == tasks and not any(queues.values()):
            done.set()

    client.on_message = on_message
    start_subscribed(client, topics.all_status, host, port)
    ready.set()
    go.wait()
    start = time.monotonic()
    for tick in itertools.count(1):
        time.sleep(max(0.0, start + tick * PACE_S - time.monotonic()))
        for task_id in range(len(created) + 1, min(tasks, due_by(time.monotonic() - start, rate)) + 1):
            serial = fleet_serial(task_id - 1, sensors)
            created[task_id] = time.time()
            with guard:
                queues[serial].append(task_id)
                idle = len(queues[serial]) == 1
            if idle:
                client.publish(topics.tasks(serial), task_json(task_id), qos=1)
        if len(created) == tasks:
            break
    if not done.wait(run_timeout_s(tasks)):
        raise RuntimeError(f"raw paho paced dispatcher: {len(acked)} of {tasks} tasks acknowledged")
    span = max(created.values()) - min(created.values())
    results.put((span, [acked[task_id] - at for task_id, at in created.items()]))
    client.disconnect()
    client.loop_stop()


def run_raw_paced(host: str, port: int, sensors: int, tasks: int, rate: float) -> PacedResult:
    flow = RawFlow("raw paho paced", paho_fleet, partial(_paced_paho_dispatcher, rate))
    (span, latencies), _cpu = raw_processes(flow, host, port, sensors, tasks, None)
    return PacedResult("raw paho", tasks, tasks / span if span > 0 else 0.0, latencies)


# -- the product -------------------------------------------------------------------
async def post_tasks(http: httpx.AsyncClient, deployment: Deployment, n: int, body: bytes) -> list[int]:
    """One ``POST /v1/tasks/bulk`` of the JSON `body`, through the instance whose turn `n` is."""
    instance = deployment.instances[n % len(deployment.instances)]
    response = await http.post(
        f"{instance.url}/v1/tasks/bulk", content=body, headers={"content-type": "application/json"}
    )
    response.raise_for_status()
    ids: list[int] = response.json()["ids"]
    instance.accepted += len(ids)
    return ids


def bulk_json(serials: Iterable[int]) -> bytes:
    return json.dumps({"tasks": [task_body(serial) for serial in serials]}).encode()


async def pace(deployment: Deployment, sensors: int, rate: float, cap: float, stop: asyncio.Event) -> list[int]:
    """Create tasks for the fleet at `rate` until `cap` of them or `stop`; their ids, in order."""
    ids: list[int] = []
    start = time.monotonic()
    tick = 0
    async with httpx.AsyncClient(timeout=120) as http:
        while len(ids) < cap and not stop.is_set():
            tick += 1
            await asyncio.sleep(max(0.0, start + tick * PACE_S - time.monotonic()))
            due = min(cap, due_by(time.monotonic() - start, rate))
            if due > len(ids):
                serials = (fleet_serial(n, sensors) for n in range(len(ids), int(due)))
                ids += await post_tasks(http, deployment, tick, bulk_json(serials))
    return ids


def fleet_rows(ids: Sequence[int], sensors: int) -> Any:  # noqa: ANN401
    """The fleet's tasks from the first of `ids` to the last (in between: other sensors' too)."""
    fleet = T.c.sensor_serial.between(FIRST_SERIAL, FIRST_SERIAL + sensors - 1)
    return T.c.id.between(ids[0], ids[-1]) & fleet


async def wait_completed(store: TaskStore, ids: Sequence[int], sensors: int, poll_s: float = POLL_S) -> None:
    """Until the database counts the fleet's tasks `ids` all Completed; raises if one ended
    otherwise or at the deadline."""
    query = select(T.c.status_id, func.count()).where(fleet_rows(ids, sensors)).group_by(T.c.status_id)
    deadline = time.monotonic() + run_timeout_s(len(ids))
    while True:
        async with store.db.reader.connect() as conn:
            counts = {TaskStatus(status): n for status, n in (await conn.execute(query)).all()}
        if counts.get(TaskStatus.COMPLETED) == len(ids):
            return
        if counts.get(TaskStatus.ERROR) or counts.get(TaskStatus.CANCELLED) or time.monotonic() > deadline:
            named = ", ".join(f"{status.label} {n}" for status, n in counts.items())
            raise RuntimeError(f"the product's run did not complete: {named}")
        await asyncio.sleep(poll_s)


async def paced_product(store: TaskStore, deployment: Deployment, sensors: int, tasks: int, rate: float) -> PacedResult:
    """`tasks` tasks at `rate`; each one's dispatch latency as serve recorded it."""
    ids = await pace(deployment, sensors, rate, tasks, asyncio.Event())
    await wait_completed(store, ids, sensors)
    query = select(T.c.created_at, T.c.sent_at, T.c.started_at).where(fleet_rows(ids, sensors))
    async with store.db.reader.connect() as conn:
        rows = [tuple(map(as_utc, row)) for row in (await conn.execute(query)).all()]
    created = [c for c, _, _ in rows]
    latencies = [(started - c).total_seconds() for c, _, started in rows]
    stages = [((sent - c).total_seconds(), (started - sent).total_seconds()) for c, sent, started in rows]
    span = (max(created) - min(created)).total_seconds()
    rate = len(ids) / span if span > 0 else 0.0
    return PacedResult(product_name(deployment), len(ids), rate, latencies, stages)


# -- during a bulk ------------------------------------------------------------------
class EventTap:
    """The driver's subscription to every ``ops/events`` topic: each message's receive time,
    topic and payload, and when the last of the bulk's "created" events arrived."""

    def __init__(self, host: str, port: int, bulk: int) -> None:
        self.topics, self.bulk = Topics(), bulk
        self.received: list[tuple[float, str, bytes]] = []
        self.bulk_seen, self.drained_at = 0, 0.0
        self.arrived = threading.Condition()
        self.client = paho_client(f"bench-events-{uuid.uuid4().hex[:8]}")
        self.client.on_message = self._on_message
        start_subscribed(self.client, self.topics.all_ops_events, host, port)

    def _on_message(self, _c: paho.Client, _u: Any, message: paho.MQTTMessage) -> None:  # noqa: ANN401
        now = time.time()
        with self.arrived:
            self.received.append((now, message.topic, bytes(message.payload)))
            if int(message.topic.split("/")[-2]) >= BULK_FIRST_SERIAL:
                self.bulk_seen += 1
                self.drained_at = now
            self.arrived.notify_all()

    def wait(self, done: Callable[[], bool], timeout_s: float) -> bool:
        """Until `done()` (asked as each message arrives) or `timeout_s`; whether it was done."""
        with self.arrived:
            return self.arrived.wait_for(done, timeout_s)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def lateness(
    received: Iterable[tuple[float, str, bytes]], stored: dict[tuple[int, str], float], since: float, until: float
) -> list[float]:
    """Receive time minus the stored ``at`` of each event `stored` knows (by task id and the status
    it went to) whose transition was applied in [`since`, `until`], whenever it arrived."""
    found = []
    for at, _topic, payload in received:
        event = json.loads(payload)
        applied = stored.get((event["task_id"], event["to"]))
        if applied is not None and since <= applied <= until:
            found.append(at - applied)
    return found


def wire_at(at: str) -> float:
    """An event's ``at`` field (``YYYY-MM-DD HH:MM:SS``, UTC) as a Unix time."""
    return datetime.strptime(at, SEED_TIME).replace(tzinfo=UTC).timestamp()


async def _stored_events(store: TaskStore, ids: Sequence[int]) -> dict[tuple[int, str], float]:
    """The transitions of the tasks `ids` (ascending) by (task id, target label): their ``at``."""
    query = select(E.c.task_id, E.c.to_status, E.c.at).where(
        E.c.task_id.between(ids[0], ids[-1]), E.c.kind == "transition"
    )
    async with store.db.reader.connect() as conn:
        rows = (await conn.execute(query)).all()
    mine = set(ids)
    return {(task_id, TaskStatus(to).label): as_utc(at).timestamp() for task_id, to, at in rows if task_id in mine}


def _summary(name: str, samples: list[float], stored: dict[tuple[int, str], float], since: float, until: float) -> str:
    applied = sum(since <= at <= until for at in stored.values())
    if not samples:
        return f"{name}: 0 of {applied} events received"
    cells = ", ".join(f"{label} {percentile(samples, p) * 1000:.0f} ms" for label, p in (("p50", 50), ("p99", 99)))
    return f"{name}: {len(samples)} of {applied} events received, late {cells}, max {max(samples) * 1000:.0f} ms"


async def bulk_during(
    store: TaskStore, deployment: Deployment, mqtt: tuple[str, int], sensors: int, bulk: int, rate: float
) -> list[str]:
    """A paced run; after `LEAD_S`, `bulk` tasks for sensors not in the fleet in one bulk (its
    chunks posted one after the other); the paced run goes on until the bulk's events have all
    arrived, and `TAIL_S` more. Reports how late the paced tasks' events were."""
    bodies = [
        bulk_json(BULK_FIRST_SERIAL + n % BULK_SENSORS for n in range(first, min(bulk, first + MAX_BULK)))
        for first in range(0, bulk, MAX_BULK)
    ]
    tap = EventTap(*mqtt, bulk)
    try:
        stop = asyncio.Event()
        pacing = asyncio.create_task(pace(deployment, sensors, rate, math.inf, stop))
        await asyncio.sleep(LEAD_S)
        posted_at = time.time()
        async with httpx.AsyncClient(timeout=300) as http:
            for n, body in enumerate(bodies):
                await post_tasks(http, deployment, n, body)
        posted_s = time.time() - posted_at
        drained = await asyncio.to_thread(tap.wait, lambda: tap.bulk_seen == bulk, run_timeout_s(bulk))
        await asyncio.sleep(TAIL_S)
        stop.set()
        ids = await pacing
        await wait_completed(store, ids, sensors)
        # Three transitions each: created, Ongoing, Completed.
        await asyncio.to_thread(tap.wait, lambda: len(tap.received) >= bulk + 3 * len(ids), START_TIMEOUT_S)
        stored = await _stored_events(store, ids)
    finally:
        tap.close()
    until = tap.drained_at if drained else time.time()
    windows = {"before the bulk": (0.0, posted_at), "applied while it drained": (posted_at, until)}
    upper = [
        at - wire_at(json.loads(payload)["at"])
        for at, topic, payload in tap.received
        if posted_at <= at <= until and int(topic.split("/")[-2]) < BULK_FIRST_SERIAL
    ]
    return [
        f"bulk-during: {bulk} tasks for {BULK_SENSORS} sensors not in the fleet, POST /v1/tasks/bulk in "
        f"{len(bodies)} chunk(s) of up to {MAX_BULK}, {LEAD_S:.0f} s into a run paced at {rate:.1f}/s",
        f"bulk-during: posted in {posted_s:.2f} s; its {tap.bulk_seen} of {bulk} 'created' events received "
        + (f"{until - posted_at:.2f} s after the first post" if drained else "by the deadline (NOT all)"),
        "bulk-during: lateness = receive time at the driver - the event's at as stored (µs); "
        f"events still missing {START_TIMEOUT_S:.0f} s after the paced tasks completed are not counted",
        *(
            _summary(f"bulk-during: paced tasks' events {name}", lateness(tap.received, stored, *w), stored, *w)
            for name, w in windows.items()
        ),
        f"bulk-during: received while it drained, against the message's own at field (whole seconds, "
        f"so up to 1 s more): max {max(upper, default=0.0):.2f} s",
    ]
