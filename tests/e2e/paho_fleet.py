"""A fleet of bare paho-mqtt sensors speaking protocol v1 (SPEC 4), for black-box tests.

Deliberately not our SDK: this is what a device maker writes from the SPEC alone, so a test
built on it proves the wire contract, not that our two halves agree with each other. Each
sensor is one MQTT 5 client on its own paho network thread (`loop_start`); the work a task
takes is timed by one thread the whole fleet shares; none of them spins. A fleet of thousands
runs on one thread instead (`OneThread`): every client, and the timers, on one selector.

What a sensor does (the SDK's ledger rules, SPEC 4.3):
- on connect: subscribe to ``sensors/<serial>/tasks``, then publish ``{"v":1,"online":true}``
  retained on ``sensors/<serial>/presence`` (the same with ``false`` is its last will);
- a new task (or a newer attempt of one): ``ongoing`` at once, ``completed`` `work_s` later;
- a re-send of the attempt it finished: that final status again; of the attempt in progress:
  ``ongoing`` again; of an older attempt: nothing.

Everything it receives is kept with its arrival time, and what the dispatcher must never do
(a new task while the previous one is unfinished, tasks out of id order) is recorded as a
violation at the moment it happens. Cancels are recorded, not acted on (no test here needs them).
"""

from __future__ import annotations

import heapq
import itertools
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from sensortasks.tools.selector import MISC_INTERVAL_S, SelectorLoop

CONNECT_TIMEOUT_S = 30.0
ONLINE = json.dumps({"v": 1, "online": True})
OFFLINE = json.dumps({"v": 1, "online": False})


@dataclass(frozen=True, slots=True)
class Received:
    """One message on a sensor's task topic, as it arrived (`at` is `time.monotonic()`)."""

    at: float
    message: dict[str, Any]


class Scheduler(Protocol):
    def call_later(self, delay_s: float, action: Callable[[], None]) -> None: ...


class Timers:
    """One thread that runs callbacks when they are due (every sensor's work shares it)."""

    def __init__(self) -> None:
        self._due: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self._changed = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="paho-fleet-timers", daemon=True)
        self._thread.start()

    def call_later(self, delay_s: float, action: Callable[[], None]) -> None:
        with self._changed:
            heapq.heappush(self._due, (time.monotonic() + delay_s, next(self._order), action))
            self._changed.notify()

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._closed and (not self._due or self._due[0][0] > time.monotonic()):
                    self._changed.wait(self._due[0][0] - time.monotonic() if self._due else None)
                if self._closed:
                    return
                _, _, action = heapq.heappop(self._due)
            action()


class OneThread:
    """Many sensors' clients and their timers on one thread (a `SelectorLoop`), so that a fleet
    of thousands needs no network thread each. Everything the sensors do happens on that thread,
    so its timers need no lock."""

    def __init__(self) -> None:
        self.loop = SelectorLoop()
        self._due: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="paho-fleet", daemon=True)

    def call_later(self, delay_s: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._due, (time.monotonic() + delay_s, next(self._order), action))

    def start(self, clients: list[mqtt.Client], host: str, port: int, settled: Callable[[], int]) -> None:
        """Connect `clients` (until `settled()` counts them all) on the calling thread, then run."""
        self.loop.connect(clients, host, port, settled)
        self._thread.start()

    def close(self) -> None:
        """Stop the thread (within `MISC_INTERVAL_S`), then disconnect every client cleanly: its
        DISCONNECT written and its socket closed (paho says "not connected" before either)."""
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join()
        for client in self.loop.clients:
            client.disconnect()
        self.loop.run_until(lambda: all(c.socket() is None for c in self.loop.clients), CONNECT_TIMEOUT_S)
        self.loop.close()

    def _run(self) -> None:
        while not self._stopped.is_set():
            now = time.monotonic()
            while self._due and self._due[0][0] <= now:
                heapq.heappop(self._due)[2]()
            self.loop.run_once(min(self._due[0][0] - now, MISC_INTERVAL_S) if self._due else MISC_INTERVAL_S)


class PahoSensor:
    """One device: its MQTT client, what it received, and the tasks it ran."""

    def __init__(self, serial: int, host: str, port: int, timers: Scheduler, *, work_s: float) -> None:
        self.serial = serial
        self.work_s = work_s
        self.received: list[Received] = []
        self.violations: list[str] = []
        #: Distinct task ids in the order they first arrived.
        self.order: list[int] = []
        #: Task id -> `time.monotonic()` when this sensor published its `completed`.
        self.completed_at: dict[int, float] = {}
        self.subscribed = threading.Event()
        self._host, self._port, self._timers = host, port, timers
        self._lock = threading.Lock()
        self._running: dict[int, int] = {}  # task id -> attempt in progress
        self._finished: dict[int, tuple[int, str]] = {}  # task id -> (attempt, final status payload)
        self._tasks = f"sensors/{serial}/tasks"
        self._status = f"sensors/{serial}/status"
        self._presence = f"sensors/{serial}/presence"
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"paho-sensor-{serial}", protocol=mqtt.MQTTv5)
        self.client.will_set(self._presence, OFFLINE, qos=1, retain=True)
        self.client.reconnect_delay_set(0.1, 2)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    def start(self) -> None:
        self.client.connect_async(self._host, self._port, keepalive=10)
        self.client.loop_start()

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def task_messages(self) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.message.get("kind") == "task"]

    # -- paho callbacks (the network thread) ------------------------------------
    def _on_connect(self, client: mqtt.Client, _userdata: object, _flags: object, reason: Any, _props: object) -> None:
        if reason.is_failure:
            with self._lock:
                self.violations.append(f"sensor {self.serial}: connection refused ({reason})")
            return
        client.subscribe(self._tasks, qos=1)
        client.publish(self._presence, ONLINE, qos=1, retain=True)  # after the SUBSCRIBE: nothing is missed

    def _on_subscribe(self, _client: mqtt.Client, _userdata: object, _mid: int, _codes: object, _props: object) -> None:
        self.subscribed.set()

    def _on_message(self, _client: mqtt.Client, _userdata: object, message: mqtt.MQTTMessage) -> None:
        try:
            payload = json.loads(message.payload)
        except ValueError:
            payload = {"unparsed": message.payload.decode(errors="replace")}
        with self._lock:
            self.received.append(Received(time.monotonic(), payload))
        if payload.get("kind") == "task":
            self._on_task(int(payload["task_id"]), int(payload["attempt"]))

    # -- the device's rules --------------------------------------------------------
    def _on_task(self, task_id: int, attempt: int) -> None:
        with self._lock:
            if task_id not in self.order:
                self._check_next(task_id)
                self.order.append(task_id)
            finished = self._finished.get(task_id)
            running = self._running.get(task_id)
            start = False
            if finished is not None and attempt <= finished[0]:
                reply = finished[1] if attempt == finished[0] else None  # older: the dispatcher moved on
            elif running is not None and attempt <= running:
                reply = self._report(task_id, attempt, "ongoing") if attempt == running else None
            else:
                self._running[task_id] = attempt
                reply = self._report(task_id, attempt, "ongoing")
                start = True
        if reply is not None:
            self.client.publish(self._status, reply, qos=1)
        if start:  # after `ongoing` is queued, so that `completed` cannot overtake it
            self._timers.call_later(self.work_s, lambda: self._finish(task_id, attempt))

    def _check_next(self, task_id: int) -> None:
        """A task not seen before: the previous ones must be finished, and older (SPEC 2.3)."""
        busy = [t for t in self._running if t != task_id]
        if busy:
            self.violations.append(f"sensor {self.serial}: task {task_id} arrived while {busy} unfinished")
        if self.order and task_id < self.order[-1]:
            self.violations.append(f"sensor {self.serial}: task {task_id} arrived after task {self.order[-1]}")

    def _finish(self, task_id: int, attempt: int) -> None:
        with self._lock:
            if self._running.get(task_id) != attempt:
                return  # replaced by a newer attempt, or cancelled
            del self._running[task_id]
            report = self._report(task_id, attempt, "completed", result={"serial": self.serial})
            self._finished[task_id] = (attempt, report)
            self.completed_at.setdefault(task_id, time.monotonic())
        self.client.publish(self._status, report, qos=1)

    @staticmethod
    def _report(task_id: int, attempt: int, status: str, **extra: object) -> str:
        return json.dumps({"v": 1, "task_id": task_id, "attempt": attempt, "status": status, **extra})


class PahoFleet:
    """`PahoSensor`s for `serials`, connected and subscribed once `running()` yields; on one
    thread (`OneThread`) with `one_thread`, each on its own network thread otherwise."""

    def __init__(
        self, host: str, port: int, serials: Iterable[int], *, work_s: float = 0.0, one_thread: bool = False
    ) -> None:
        self._host, self._port = host, port
        self.timers: Timers | OneThread = OneThread() if one_thread else Timers()
        self.sensors = {s: PahoSensor(s, host, port, self.timers, work_s=work_s) for s in serials}

    @contextmanager
    def running(self) -> Iterator[PahoFleet]:
        if isinstance(self.timers, OneThread):
            with self._on_one_thread(self.timers):
                yield self
            return
        try:
            for sensor in self.sensors.values():
                sensor.start()
            deadline = time.monotonic() + CONNECT_TIMEOUT_S
            for sensor in self.sensors.values():
                if not sensor.subscribed.wait(max(0.0, deadline - time.monotonic())):
                    raise AssertionError(f"sensor {sensor.serial} did not subscribe within {CONNECT_TIMEOUT_S} s")
            yield self
        finally:
            for sensor in self.sensors.values():
                sensor.stop()
            self.timers.close()

    @contextmanager
    def _on_one_thread(self, network: OneThread) -> Iterator[None]:
        sensors = self.sensors.values()
        try:
            network.start([s.client for s in sensors], self._host, self._port,
                          lambda: sum(s.subscribed.is_set() for s in sensors))  # fmt: skip
            yield
        finally:
            network.close()

    def completed(self) -> int:
        """How many distinct tasks the fleet has reported completed."""
        return sum(len(s.completed_at) for s in self.sensors.values())

    def most_held_at_once(self, task_ids: Iterable[int]) -> int:
        """The most of `task_ids` the fleet held at one moment: a task is held from its first
        arrival at its sensor to its sensor's ``completed`` (or to now, if it has none)."""
        wanted = set(task_ids)
        changes = []  # (time, +1 arrived | -1 completed); a completion sorts before an arrival at the same time
        for sensor in self.sensors.values():
            first: dict[int, float] = {}
            for r in sensor.task_messages():
                first.setdefault(r.message["task_id"], r.at)
            for task_id in wanted & first.keys():
                changes.append((first[task_id], 1))
                if task_id in sensor.completed_at:
                    changes.append((sensor.completed_at[task_id], -1))
        held = most = 0
        for _, change in sorted(changes):
            held += change
            most = max(most, held)
        return most

    def violations(self) -> list[str]:
        return [v for s in self.sensors.values() for v in s.violations]

    def duplicates(self) -> list[tuple[int, int, int]]:
        """(serial, task id, attempt) of every task message a sensor received more than once."""
        found = []
        for sensor in self.sensors.values():
            counts = Counter((r.message["task_id"], r.message["attempt"]) for r in sensor.task_messages())
            found += [(sensor.serial, task, attempt) for (task, attempt), n in counts.items() if n > 1]
        return found
