"""Prometheus metrics: one registry per process (not the global one, so tests can run many)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from sensortasks.protocol.messages import REJECT_CODES

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from sensortasks.dispatcher.service import Counters

#: Seconds from a task's creation to its first send.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
COUNTERS = {
    "dispatched": "Task messages sent for a new attempt",
    "redelivered": "Task messages re-sent for the current attempt",
    "reports": "Status reports received",
    "transitions": "Task transitions applied by the dispatcher",
    "completed": "Tasks completed",
    "db_retries": "Database operations retried after a failure",
}


@dataclass(eq=False)  # registries keep collectors in sets
class _Snapshot(Collector):
    """Values read asynchronously just before each scrape (collectors themselves are sync)."""

    tasks: dict[str, int] = field(default_factory=dict)
    counters: Counters | None = None
    connected: bool | None = None

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily("sensortasks_tasks", "Tasks by status", labels=["status"])
        for status, count in self.tasks.items():
            gauge.add_metric([status], count)
        yield gauge
        if self.connected is not None:
            yield GaugeMetricFamily(
                "sensortasks_mqtt_connected", "1 while the dispatcher is connected to the broker", value=self.connected
            )
        if self.counters is not None:
            for name, help_text in COUNTERS.items():
                yield CounterMetricFamily(f"sensortasks_{name}", help_text, value=getattr(self.counters, name))
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
        self._snapshot = _Snapshot()
        self.registry.register(self._snapshot)

    def render(self, *, tasks: dict[str, int], counters: Counters | None, connected: bool | None) -> bytes:
        self._snapshot.tasks, self._snapshot.counters, self._snapshot.connected = tasks, counters, connected
        return generate_latest(self.registry)
