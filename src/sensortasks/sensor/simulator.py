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
    """One sensor's broker credentials, as registration issues them."""

    username: str
    password: str
    client_id: str


def read_credentials(lines: Iterable[str]) -> dict[int, SensorLogin]:
    """Per-serial credentials from JSON lines as ``sensortasks sensors add`` prints them
    (``{"serial": N, "mqtt": {"username", "password", "client_id"}}``); blank lines are skipped,
    and a later line for the same serial wins (it holds the newer password)."""
    found: dict[int, SensorLogin] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            mqtt = entry["mqtt"]
            serial = entry["serial"]
            login = SensorLogin(str(mqtt["username"]), str(mqtt["password"]), str(mqtt["client_id"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"line {number}: not a registration with credentials ({exc!r})") from None
        if not isinstance(serial, int) or isinstance(serial, bool) or serial <= 0:
            raise ValueError(f"line {number}: serial must be a positive integer")
        found[serial] = login
    return found


@dataclass
class SimulationConfig:
    """How many sensors to simulate and how they behave.

    Each run works for `uniform(0.5, 1.5) * work_s` seconds, then fails for good with
    probability `fatal_rate`, fails retryably with probability `error_rate`, else completes.
    The last `round(silent_share * sensors)` serials are silent: online, but they never
    report a status (to exercise the acknowledgement timeout). With `credentials`, the fleet
    is exactly their serials, each with its own account (`username`/`password` are then unused).
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


def _make_handler(config: SimulationConfig, rng: random.Random, stats: FleetStats) -> Handler:
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
        if roll < config.fatal_rate:
            stats.fatal_errors += 1
            raise TaskFailed("simulated fatal failure", retryable=False)
        if roll < config.fatal_rate + config.error_rate:
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
    handler = _make_handler(config, rng, stats)
    silent = set(config.silent_serials)
    sensors = [
        (SilentSensor if serial in silent else SensorClient)(serial, handler, _options(config, serial))
        for serial in config.serials
    ]
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
