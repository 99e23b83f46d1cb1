"""Prometheus metrics: one registry per process (not the global one, so tests can run many).

Label values are bounded: HTTP requests are labelled with the route's path template
(``/v1/tasks/{task_id}``, never the raw path) and ``unmatched`` for any path no route
serves; methods outside the usual few are ``other``.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from sensortasks.domain.status import TRANSITIONS
from sensortasks.protocol.messages import REJECT_CODES

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric
    from starlette.types import ASGIApp, Message, Receive, Scope, Send


#: Seconds from a task's creation to its first send.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
COUNTERS = {
    "dispatched": "Task messages sent for a new attempt",
    "redelivered": "Task messages re-sent for the current attempt",
    "reports": "Status reports received",
    "completed": "Tasks completed",
    "db_retries": "Database operations retried after a failure",
}
#: Every legal step starts at 0, so that rate() sees it before it first happens.
KNOWN_STEPS = tuple((source.label, target.label) for source, targets in TRANSITIONS.items() for target in targets)
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"


@dataclass
class Counters:
    """Monotonic counters, read by ``ops/stats`` and ``/metrics``."""

    dispatched: int = 0
    redelivered: int = 0
    reports: int = 0
    transitions: int = 0
    completed: int = 0
    #: Refused messages per reason code (`protocol.messages.REJECT_CODES`); ``.total()`` for all.
    rejected: collections.Counter[str] = field(default_factory=collections.Counter)
    db_retries: int = 0
    #: Applied transitions by (from, to) status name; "none" for a task's creation.
    transitions_by: dict[tuple[str, str], int] = field(default_factory=dict)


@dataclass(eq=False)  # registries keep collectors in sets
class _Snapshot(Collector):
    """Values read asynchronously just before each scrape (collectors themselves are sync)."""

    tasks: dict[str, int] = field(default_factory=dict)
    rollouts: dict[str, int] = field(default_factory=dict)
    counters: Counters | None = None
    connected: bool | None = None
    sensors_online: int | None = None
    leader: bool | None = None
    instances: int | None = None

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily("sensortasks_tasks", "Tasks by status", labels=["status"])
        for status, count in self.tasks.items():
            gauge.add_metric([status], count)
        yield gauge
        rollouts = GaugeMetricFamily("sensortasks_rollouts", "Rollouts by state", labels=["state"])
        for state, count in self.rollouts.items():
            rollouts.add_metric([state], count)
        yield rollouts
        if self.sensors_online is not None:
            yield GaugeMetricFamily(
                "sensortasks_sensors_online", "Sensors whose last presence said online", value=self.sensors_online
            )
        if self.connected is not None:
            yield GaugeMetricFamily(
                "sensortasks_mqtt_connected", "1 while the dispatcher is connected to the broker", value=self.connected
            )
        if self.leader is not None:
            lead = "1 while this instance leads (publishes the outbox and ops/stats)"
            yield GaugeMetricFamily("sensortasks_leader", lead, value=self.leader)
        if self.instances is not None:
            yield GaugeMetricFamily(
                "sensortasks_instances", "Dispatcher instances alive at this one's last heartbeat", value=self.instances
            )
        if self.counters is not None:
            for name, help_text in COUNTERS.items():
                yield CounterMetricFamily(f"sensortasks_{name}", help_text, value=getattr(self.counters, name))
            steps = CounterMetricFamily(
                "sensortasks_transitions", "Task transitions applied by the dispatcher", labels=["from", "to"]
            )
            by_step = dict.fromkeys(KNOWN_STEPS, 0) | self.counters.transitions_by
            for (source, target), count in sorted(by_step.items()):
                steps.add_metric([source, target], count)
            yield steps
            yield self._rejected(self.counters)

    @staticmethod
    def _rejected(counters: Counters) -> CounterMetricFamily:
        """Every known reason code from 0 on (so that rates start at once), and any other seen."""
        family = CounterMetricFamily(
            "sensortasks_rejected", "MQTT messages refused, by reason code (ops/rejected)", labels=["reason"]
        )
        for code in dict.fromkeys((*REJECT_CODES, *counters.rejected)):
            family.add_metric([code], counters.rejected[code])
        return family


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.dispatch_latency = Histogram(
            "sensortasks_dispatch_latency_seconds",
            "Time from a task's creation to its first send",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.http_requests = Counter(
            "sensortasks_http_requests",
            "HTTP requests answered, by method, route template and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.http_duration = Histogram(
            "sensortasks_http_request_duration_seconds",
            "Time to answer an HTTP request (a streamed export: until its last byte)",
            ["method", "route", "status"],
            registry=self.registry,
        )
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self._snapshot = _Snapshot()
        self.registry.register(self._snapshot)

    def render(
        self,
        *,
        tasks: dict[str, int],
        counters: Counters | None,
        rollouts: dict[str, int] | None = None,
        connected: bool | None,
        sensors_online: int | None = None,
        leader: bool | None = None,
        instances: int | None = None,
    ) -> bytes:
        snapshot = self._snapshot
        snapshot.tasks, snapshot.counters, snapshot.connected = tasks, counters, connected
        snapshot.rollouts = rollouts or {}
        snapshot.sensors_online, snapshot.leader, snapshot.instances = sensors_online, leader, instances
        return generate_latest(self.registry)


class HttpMetrics:
    """ASGI middleware counting and timing every HTTP request into `metrics`."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets if the application raises before answering

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            method = scope["method"] if scope["method"] in HTTP_METHODS else "other"
            route = getattr(scope.get("route"), "path", None) or UNMATCHED
            labels = (method, route, str(status))
            self.metrics.http_requests.labels(*labels).inc()
            self.metrics.http_duration.labels(*labels).observe(time.perf_counter() - started)
