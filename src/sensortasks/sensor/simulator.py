"""A fleet of simulated sensors in one event loop, for demos, load tests and fault tests.

Every simulated sensor is a real `SensorClient` with its own MQTT connection, so the
dispatcher cannot tell it from a device.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import ssl
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sensortasks.protocol import CancelMessage, StatusReport, TaskMessage
from sensortasks.sensor.client import SensorClient, SensorOptions
from sensortasks.sensor.job import Handler, Job, TaskFailed

logger = logging.getLogger(__name__)


class SilentSensor(SensorClient):
    """An unresponsive device: online and receiving its tasks, but it never runs or reports one
    (to exercise the dispatcher's acknowledgement timeout)."""

    def _on_command(self, command: TaskMessage | CancelMessage) -> None:
        pass

    async def publish_status(self, report: StatusReport) -> bool:  # noqa: ARG002
        return False


@dataclass(frozen=True, slots=True)
class SensorLogin:
    """One sensor's broker credentials, as registration issues them, and the labels it was registered with."""

    username: str
    password: str
    client_id: str
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class LabelShare:
    """`share` of something for a label ``key=value``: of the fleet's sensors to carry it, or of
    the runs of the sensors carrying it to fail."""

    key: str
    value: str
    share: float


def read_credentials(lines: Iterable[str]) -> dict[int, SensorLogin]:
    """Per-serial credentials from JSON lines as ``sensortasks sensors add`` prints them
    (``{"serial": N, "mqtt": {"username", "password", "client_id"}, "labels": {...}}``, labels
    optional); blank lines are skipped, and a later line for the same serial wins (it holds the
    newer password)."""
    found: dict[int, SensorLogin] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            mqtt = entry["mqtt"]
            serial = entry["serial"]
            labels = {str(k): str(v) for k, v in (entry.get("labels") or {}).items()}
            login = SensorLogin(str(mqtt["username"]), str(mqtt["password"]), str(mqtt["client_id"]), labels)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"line {number}: not a registration with credentials ({exc!r})") from None
        if not isinstance(serial, int) or isinstance(serial, bool) or serial <= 0:
            raise ValueError(f"line {number}: serial must be a positive integer")
        found[serial] = login
    return found


def _share_problems(label_shares: Sequence[LabelShare], fail_labels: Sequence[LabelShare]) -> list[str]:
    problems = [
        f"the share of {s.key}={s.value} must be within 0..1"
        for s in (*label_shares, *fail_labels)
        if not 0.0 <= s.share <= 1.0
    ]
    for key in sorted({s.key for s in label_shares}):
        if sum(s.share for s in label_shares if s.key == key) > 1.0:
            problems.append(f"the shares of the values of {key} must add up to <= 1")
    return problems


@dataclass
class SimulationConfig:
    """How many sensors to simulate and how they behave.

    Each run works for `uniform(0.5, 1.5) * work_s` seconds, then fails for good with
    probability `fatal_rate`, fails retryably with probability `error_rate`, else completes.
    The last `round(silent_share * sensors)` serials are silent: online, but they never
    report a status (to exercise the acknowledgement timeout). With `credentials`, the fleet
    is exactly their serials, each with its own account (`username`/`password` are then unused)
    and the labels it was registered with.

    `label_shares` split the fleet into labelled groups, by serial: per key, each value labels
    the next `round(share * sensors)` serials from the first (``region=eu:0.5`` then
    ``region=us:0.5``: the first half eu, the second us); another key starts again at the
    first serial. `fail_labels`: a sensor carrying ``key=value`` fails that share of its runs
    for good (the largest share of its labels, or `fatal_rate` if larger), e.g. a hardware
    revision whose update breaks, for a rollout that aborts.
    """

    sensors: int
    first_serial: int = 100_000_000_000_000
    work_s: float = 0.5
    error_rate: float = 0.0
    fatal_rate: float = 0.0
    silent_share: float = 0.0
    progress_steps: int = 0
    seed: int | None = None
    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = None
    tls_context: ssl.SSLContext | None = None
    credentials: dict[int, SensorLogin] = field(default_factory=dict)
    label_shares: Sequence[LabelShare] = ()
    fail_labels: Sequence[LabelShare] = ()
    #: Sensors connecting at the same time; bounded so that the broker is not flooded.
    connect_batch: int = 50
    connect_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if self.credentials:
            self.sensors = len(self.credentials)
        problems = []
        if self.sensors < 0:
            problems.append("sensors must be >= 0")
        if self.first_serial <= 0:
            problems.append("first_serial must be positive")
        if self.work_s < 0:
            problems.append("work_s must be >= 0")
        for name in ("error_rate", "fatal_rate", "silent_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{name} must be within 0..1")
        if self.error_rate + self.fatal_rate > 1.0:
            problems.append("error_rate + fatal_rate must be <= 1")
        problems += _share_problems(self.label_shares, self.fail_labels)
        if self.progress_steps < 0:
            problems.append("progress_steps must be >= 0")
        if self.connect_batch < 1:
            problems.append("connect_batch must be >= 1")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def serials(self) -> Sequence[int]:
        if self.credentials:
            return sorted(self.credentials)
        return range(self.first_serial, self.first_serial + self.sensors)

    def labels(self) -> dict[int, dict[str, str]]:
        """Each serial's labels: from its credentials, then from `label_shares`."""
        found = {serial: dict(self.credentials[serial].labels) if serial in self.credentials else {}
                 for serial in self.serials}  # fmt: skip
        start: dict[str, int] = {}
        for share in self.label_shares:
            first = start.get(share.key, 0)
            start[share.key] = first + round(share.share * self.sensors)
            for serial in self.serials[first : start[share.key]]:
                found[serial][share.key] = share.value
        return found

    def fatal_rate_of(self, labels: dict[str, str]) -> float:
        """The share of runs failing for good on a sensor with these labels."""
        shares = [f.share for f in self.fail_labels if labels.get(f.key) == f.value]
        return max([self.fatal_rate, *shares])

    @property
    def silent_serials(self) -> Sequence[int]:
        silent = round(self.silent_share * self.sensors)
        return self.serials[self.sensors - silent :]


@dataclass
class FleetStats:
    """Counts over the whole fleet; the handler counts are updated live while it runs."""

    sensors: int = 0
    silent: int = 0
    #: Sensors connected when start-up finished.
    connected: int = 0
    #: Valid commands received (tasks, re-sends and cancels); filled in when the fleet stops.
    received: int = 0
    started: int = 0
    completed: int = 0
    errors: int = 0
    fatal_errors: int = 0
    #: Runs interrupted by a cancel, a newer attempt or the fleet stopping.
    cancelled: int = 0


def _make_handler(config: SimulationConfig, rng: random.Random, stats: FleetStats, fatal_rate: float) -> Handler:
    async def handle(job: Job) -> dict[str, Any] | None:
        stats.started += 1
        work_s = rng.uniform(0.5 * config.work_s, 1.5 * config.work_s)
        step_s = work_s / (config.progress_steps + 1)
        try:
            for step in range(1, config.progress_steps + 1):
                await asyncio.sleep(step_s)
                await job.progress(step * 100 // (config.progress_steps + 1))
            await asyncio.sleep(step_s)
        except asyncio.CancelledError:
            stats.cancelled += 1
            raise
        roll = rng.random()
        if roll < fatal_rate:
            stats.fatal_errors += 1
            raise TaskFailed("simulated fatal failure", retryable=False)
        if roll < fatal_rate + config.error_rate:
            stats.errors += 1
            raise TaskFailed("simulated transient failure")
        stats.completed += 1
        return {"file_id": job.file_id, "type": job.type, "simulated": True}

    return handle


def _options(config: SimulationConfig, serial: int) -> SensorOptions:
    login = config.credentials.get(serial)
    return SensorOptions(
        host=config.host,
        port=config.port,
        username=login.username if login else config.username,
        password=login.password if login else config.password,
        client_id=login.client_id if login else None,
        tls_context=config.tls_context,
    )


async def run_fleet(
    config: SimulationConfig,
    *,
    stop: asyncio.Event | None = None,
    on_started: Callable[[FleetStats], None] | None = None,
) -> FleetStats:
    """Run the fleet until `stop` is set (or until cancelled), then take every sensor offline.

    Sensors connect `connect_batch` at a time; one that cannot connect within
    `connect_timeout_s` is left out (logged). `on_started` gets the live stats once
    start-up is done. If no sensor could start, the first sensor's failure is raised.
    """
    rng = random.Random(config.seed)  # simulation, not security
    stats = FleetStats(sensors=config.sensors, silent=len(config.silent_serials))
    handlers: dict[float, Handler] = {}
    silent = set(config.silent_serials)
    sensors = []
    for serial, labels in config.labels().items():
        fatal_rate = config.fatal_rate_of(labels)
        handler = handlers.setdefault(fatal_rate, _make_handler(config, rng, stats, fatal_rate))
        sensors.append((SilentSensor if serial in silent else SensorClient)(serial, handler, _options(config, serial)))
    failures: list[tuple[int, BaseException]] = []
    try:
        for first in range(0, len(sensors), config.connect_batch):
            batch = sensors[first : first + config.connect_batch]
            outcomes = await asyncio.gather(
                *(sensor.start(config.connect_timeout_s) for sensor in batch),
                return_exceptions=True,
            )
            for sensor, outcome in zip(batch, outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    failures.append((sensor.serial, outcome))
                else:
                    stats.connected += 1
        if stats.connected == 0 and failures:
            raise failures[0][1]  # nobody to simulate: say why once, instead of idling until `stop`
        for serial, failure in failures:
            logger.warning("sensor %s did not start: %s", serial, failure)
        logger.info("fleet started: %d of %d sensors connected", stats.connected, stats.sensors)
        if on_started is not None:
            on_started(stats)
        if stop is None:
            await asyncio.Future()  # until cancelled
        else:
            await stop.wait()
    finally:
        await asyncio.gather(*(sensor.stop() for sensor in sensors), return_exceptions=True)
        stats.received = sum(sensor.received_count for sensor in sensors)
    return stats
