"""The raw MQTT flows ``sensortasks bench`` measures the product against, and what every run
of it reports (`RunResult`, `CpuMeter`).

A raw flow does the product's work per task stripped to the wire: a dispatcher process holds
the queues in memory (one task at a time per sensor; no database, no API) and a fleet process
has one MQTT client per sensor, which answers each task with an "ongoing" and a "completed"
status, all QoS 1, messages built and parsed with the protocol's models as the product's are.

- ``raw paho``, the strongest honest Python flow: paho-mqtt driven directly and reading as the
  product's client does (`BufferedClient`), the dispatcher's callbacks on paho's network thread
  (``loop_start``), the fleet's clients all on one thread (`SelectorLoop`), QoS 1 pipelined
  (publish, count the PUBACKs, never wait for one), TCP_NODELAY on every socket (`no_delay`).
- ``raw aiomqtt``: the same flow in asyncio through aiomqtt, each publish awaited, with the
  sockets as aiomqtt leaves them (Nagle on).

Their sessions end with their connections, so a raw flow leaves nothing on the broker. The
dispatcher records the time of each completion as it handles the report, as the product's
dispatcher does in its database.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import aiomqtt
import paho.mqtt.client as paho

from sensortasks.mqtt import MqttTarget, new_client
from sensortasks.mqtt.packets import BufferedClient
from sensortasks.protocol import StatusReport, TaskMessage, Topics, parse_sensor_command
from sensortasks.tools.deployment import cpu_seconds
from sensortasks.tools.selector import CONNECT_BATCH, START_TIMEOUT_S, SelectorLoop, no_delay, paho_client
from sensortasks.tools.stats import percentile

FILE_ID = "a3e4aed2-b091-41a6-8265-2185040e2c32"
FIRST_SERIAL = 500_000_000_000_000
#: QoS 1 tasks the raw paho dispatcher keeps in flight (paho walks them on every PUBACK; 100 = 1000).
DISPATCH_WINDOW = 100
#: The order of a run's processes in every table.
ROLES = ("dispatcher", "fleet", "driver", "broker")


def run_timeout_s(tasks: int) -> float:
    """How long a run of `tasks` may take: generous (20 ms a lifecycle, plus a minute)."""
    return 60.0 + tasks * 0.02


@dataclass(frozen=True, slots=True)
class RunResult:
    name: str
    tasks: int
    seconds: float
    latencies: list[float]
    #: CPU seconds per role during the run; a role whose process is not ours to read is absent.
    cpu_s: dict[str, float]

    @property
    def rate(self) -> float:
        return self.tasks / self.seconds if self.seconds > 0 else 0.0

    def percentile(self, p: float) -> float:
        return percentile(self.latencies, p)

    def cpu_us(self, role: str) -> float | None:
        """CPU microseconds per lifecycle of `role`'s processes, None when not measured."""
        return self.cpu_s[role] * 1e6 / self.tasks if role in self.cpu_s else None


class CpuMeter:
    """CPU seconds (user + system, every thread) of each role's processes since it was made."""

    def __init__(self, roles: dict[str, Sequence[int]]) -> None:
        self.roles = roles
        self._start = {pid: cpu_seconds(pid) for pids in roles.values() for pid in pids}
        #: Per process, filled in by `stop`.
        self.used: dict[int, float] = {}

    def stop(self) -> dict[str, float]:
        self.used = {pid: cpu_seconds(pid) - start for pid, start in self._start.items()}
        return {role: sum(self.used[pid] for pid in pids) for role, pids in self.roles.items()}


def measured_roles(dispatcher: Sequence[int], fleet: int, broker: int | None) -> dict[str, Sequence[int]]:
    """The processes of a run by role; the driver is this process."""
    pids = {"dispatcher": dispatcher, "fleet": [fleet], "driver": [os.getpid()]}
    return pids | ({"broker": [broker]} if broker is not None else {})


def task_json(task_id: int) -> bytes:
    return TaskMessage(task_id=task_id, type="update_firmware", file_id=FILE_ID, attempt=1, timeout_s=3600).to_json()


def task_queues(sensors: int, tasks: int) -> dict[int, deque[int]]:
    """Task ids 1..`tasks` dealt round-robin over the sensors, as the product's driver creates
    them; a sensor with no task has no queue."""
    return {FIRST_SERIAL + i: deque(range(i + 1, tasks + 1, sensors)) for i in range(min(sensors, tasks))}


# -- paho on one thread ---------------------------------------------------------------
def paho_fleet(host: str, port: int, sensors: int, ready: Any) -> None:  # noqa: ANN401
    topics, loop, subscribed = Topics(), SelectorLoop(), [0]

    def on_connect(client: paho.Client, serial: int, *_: Any) -> None:  # noqa: ANN401
        client.subscribe(topics.tasks(serial), qos=1)

    def on_subscribe(*_: Any) -> None:  # noqa: ANN401
        subscribed[0] += 1

    def on_message(client: paho.Client, serial: int, message: paho.MQTTMessage) -> None:
        task = parse_sensor_command(bytes(message.payload))
        if isinstance(task, TaskMessage):
            for state in ("ongoing", "completed"):
                report = StatusReport(task_id=task.task_id, attempt=task.attempt, status=state)
                cast(BufferedClient, client).publish_qos1(topics.status(serial), report.to_json())

    clients = []
    for serial in range(FIRST_SERIAL, FIRST_SERIAL + sensors):
        client = paho_client(f"bench-raw-sensor-{serial}", serial)
        client.on_connect, client.on_subscribe, client.on_message = on_connect, on_subscribe, on_message
        clients.append(client)
    loop.connect(clients, host, port, lambda: subscribed[0])
    ready.set()
    loop.run_until(lambda: False, float("inf"))  # until the driver kills this process


def start_subscribed(client: paho.Client, topic: str, host: str, port: int) -> None:
    """Start paho's network thread for `client` (TCP_NODELAY) subscribed to `topic`; returns at its SUBACK."""
    subscribed = threading.Event()
    client.on_socket_open = no_delay
    client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
    client.on_subscribe = lambda *_: subscribed.set()
    client.connect(host, port, clean_start=True)
    client.loop_start()
    if not subscribed.wait(START_TIMEOUT_S):
        raise RuntimeError(f"no SUBACK for {topic}")


def _paho_dispatcher(host: str, port: int, sensors: int, tasks: int, ready: Any, go: Any, results: Any) -> None:  # noqa: ANN401
    topics, queues = Topics(), task_queues(sensors, tasks)
    completions: list[float] = []
    counts = {"published": 0, "acked": 0}
    #: Guards `counts`: the first sends are made on this thread, the rest on paho's.
    acks = threading.Condition()
    done = threading.Event()
    client = paho_client(f"bench-raw-dispatcher-{uuid.uuid4().hex[:8]}")
    client.max_inflight_messages_set(DISPATCH_WINDOW)

    def send(serial: int) -> None:
        with acks:
            counts["published"] += 1
        client.publish_qos1(topics.tasks(serial), task_json(queues[serial][0]))

    def on_message(_c: paho.Client, _u: Any, message: paho.MQTTMessage) -> None:  # noqa: ANN401
        parsed = topics.parse_sensor(message.topic)
        if parsed is None or StatusReport.from_wire(bytes(message.payload)).status != "completed":
            return
        completions.append(time.time())
        queues[parsed.serial].popleft()
        if queues[parsed.serial]:
            send(parsed.serial)
        elif len(completions) == tasks:
            done.set()

    def on_publish(*_: Any) -> None:  # noqa: ANN401
        with acks:
            counts["acked"] += 1
            acks.notify_all()

    client.on_message, client.on_publish = on_message, on_publish
    start_subscribed(client, topics.all_status, host, port)
    ready.set()
    go.wait()
    start = time.time()
    for serial in list(queues):
        send(serial)
    if not done.wait(run_timeout_s(tasks)):
        raise RuntimeError(f"raw paho dispatcher: {len(completions)} of {tasks} tasks completed")
    with acks:
        acks.wait_for(lambda: counts["acked"] == counts["published"], START_TIMEOUT_S)
        results.put((start, completions, counts["published"] - counts["acked"]))
    client.disconnect()
    client.loop_stop()


# -- aiomqtt ------------------------------------------------------------------------
def _aiomqtt_client(host: str, port: int, identifier: str) -> aiomqtt.Client:
    target = MqttTarget(host, port, None, None, tls=False)
    return new_client(target, identifier=identifier, max_inflight=1000, max_outgoing_calls=1000)


async def _aiomqtt_sensor(host: str, port: int, serial: int, subscribed: asyncio.Event) -> None:
    topics = Topics()
    async with _aiomqtt_client(host, port, f"bench-aiomqtt-sensor-{serial}") as client:
        await client.subscribe(topics.tasks(serial), qos=1)
        subscribed.set()
        async for message in client.messages:
            task = parse_sensor_command(message.payload if isinstance(message.payload, bytes) else b"")
            if isinstance(task, TaskMessage):
                for state in ("ongoing", "completed"):
                    report = StatusReport(task_id=task.task_id, attempt=task.attempt, status=state)
                    await client.publish(topics.status(serial), report.to_json(), qos=1)


def _aiomqtt_fleet(host: str, port: int, sensors: int, ready: Any) -> None:  # noqa: ANN401
    async def main() -> None:
        running = []
        for first in range(FIRST_SERIAL, FIRST_SERIAL + sensors, CONNECT_BATCH):
            batch = [
                (serial, asyncio.Event()) for serial in range(first, min(first + CONNECT_BATCH, FIRST_SERIAL + sensors))
            ]
            running += [asyncio.create_task(_aiomqtt_sensor(host, port, serial, event)) for serial, event in batch]
            await asyncio.wait_for(asyncio.gather(*(event.wait() for _, event in batch)), START_TIMEOUT_S)
        ready.set()
        await asyncio.gather(*running)

    asyncio.run(main())


def _aiomqtt_dispatcher(host: str, port: int, sensors: int, tasks: int, ready: Any, go: Any, results: Any) -> None:  # noqa: ANN401
    async def main() -> None:
        topics, queues = Topics(), task_queues(sensors, tasks)
        completions: list[float] = []
        sending: set[asyncio.Task[None]] = set()
        async with _aiomqtt_client(host, port, f"bench-aiomqtt-dispatcher-{uuid.uuid4().hex[:8]}") as client:
            await client.subscribe(topics.all_status, qos=1)

            def send(serial: int) -> None:
                publishing = asyncio.create_task(
                    client.publish(topics.tasks(serial), task_json(queues[serial][0]), qos=1)
                )
                sending.add(publishing)
                publishing.add_done_callback(sending.discard)

            ready.set()
            await asyncio.to_thread(go.wait)
            start = time.time()
            for serial in queues:
                send(serial)
            async for message in client.messages:
                parsed = topics.parse_sensor(str(message.topic))
                payload = message.payload if isinstance(message.payload, bytes) else b""
                if parsed is None or StatusReport.from_wire(payload).status != "completed":
                    continue
                completions.append(time.time())
                queues[parsed.serial].popleft()
                if queues[parsed.serial]:
                    send(parsed.serial)
                elif len(completions) == tasks:
                    break
            unacknowledged = (await asyncio.wait(sending, timeout=START_TIMEOUT_S))[1] if sending else set()
            results.put((start, completions, len(unacknowledged)))

    asyncio.run(main())


# -- a run --------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RawFlow:
    name: str
    fleet: Callable[[str, int, int, Any], None]
    dispatcher: Callable[[str, int, int, int, Any, Any, Any], None]


RAW_FLOWS = (
    RawFlow("raw paho", paho_fleet, _paho_dispatcher),
    RawFlow("raw aiomqtt", _aiomqtt_fleet, _aiomqtt_dispatcher),
)


def _wait(event: Any, process: multiprocessing.process.BaseProcess, what: str) -> None:  # noqa: ANN401
    deadline = time.monotonic() + START_TIMEOUT_S
    while not event.wait(0.1):
        if not process.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not get ready (exit code {process.exitcode})")


def raw_processes(
    flow: RawFlow, host: str, port: int, sensors: int, tasks: int, broker_pid: int | None
) -> tuple[Any, dict[str, float]]:
    """Start the fleet, then the dispatcher; once both are ready, let the dispatcher go. Returns
    what it puts on its result queue and the CPU of each role until then."""
    spawn = multiprocessing.get_context("spawn")
    fleet_ready, ready, go, results = spawn.Event(), spawn.Event(), spawn.Event(), spawn.Queue()
    fleet = spawn.Process(target=flow.fleet, args=(host, port, sensors, fleet_ready), daemon=True)
    dispatcher = spawn.Process(
        target=flow.dispatcher, args=(host, port, sensors, tasks, ready, go, results), daemon=True
    )
    fleet.start()
    try:
        _wait(fleet_ready, fleet, f"{flow.name} fleet")
        dispatcher.start()
        _wait(ready, dispatcher, f"{flow.name} dispatcher")
        meter = CpuMeter(measured_roles([dispatcher.pid or 0], fleet.pid or 0, broker_pid))
        go.set()
        result = results.get(timeout=run_timeout_s(tasks))
        cpu = meter.stop()
        dispatcher.join(START_TIMEOUT_S)
    finally:
        for process in (dispatcher, fleet):
            if process.is_alive():
                process.kill()
            if process.pid is not None:
                process.join()
    return result, cpu


def run_raw(flow: RawFlow, host: str, port: int, sensors: int, tasks: int, broker_pid: int | None) -> RunResult:
    """Time the run from the dispatcher's first publish (every task is created then) to its last completion."""
    (start, completions, unacknowledged), cpu = raw_processes(flow, host, port, sensors, tasks, broker_pid)
    if unacknowledged:
        raise RuntimeError(f"{flow.name}: {unacknowledged} task messages were never acknowledged")
    return RunResult(flow.name, tasks, completions[-1] - start, [c - start for c in completions], cpu)
