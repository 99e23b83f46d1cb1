"""``ops/stats``, what one dispatcher instance publishes, retained, every `interval_s`;
and the per-task accounting (transitions by from/to, DEBUG lines per task).

A live copy says ``"online": true`` and carries an MQTT 5 Message Expiry Interval of
`EXPIRY_INTERVALS` intervals, so the copy of an instance that crashed vanishes from the
broker's retained store instead of showing its last counts as if live. A clean stop
publishes a final copy with ``"online": false`` and no expiry: the last word of an instance
that stopped on purpose stays, and says so.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy.exc import SQLAlchemyError

from sensortasks.errors import Unavailable
from sensortasks.protocol import OpsStats
from sensortasks.store import format_time

if TYPE_CHECKING:
    from sensortasks.dispatcher.link import Link
    from sensortasks.ops.metrics import Counters
    from sensortasks.store import Dispatch, Transition
    from sensortasks.store.interface import DispatchStore

log = logging.getLogger(__name__)

#: A live copy expires after this many intervals: one late publish is not "gone".
EXPIRY_INTERVALS = 3


class StatsPublisher:
    def __init__(
        self,
        instance: str,
        topic: str,
        interval_s: float,
        store: DispatchStore,
        link: Link,
        counters: Counters,
        clock: Callable[[], datetime],
    ) -> None:
        self.instance = instance
        self.topic = topic
        self.interval_s = interval_s
        self.expiry_s = max(1, math.ceil(EXPIRY_INTERVALS * interval_s))
        self.store = store
        self.link = link
        self.counters = counters
        self.clock = clock
        self._last = (counters.dispatched, counters.completed, time.monotonic())

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            if self.link.connected.is_set():
                await self.publish(online=True)

    async def publish(self, *, online: bool) -> bool:
        """Publish one copy; False (logged) if the database or the broker could not be reached."""
        try:
            counts = await self.store.counts()
            sensors_online = await self.store.sensors_online()
        except (SQLAlchemyError, OSError) as exc:
            log.warning("stats skipped: %s", exc)
            return False
        dispatched, completed, since = self._last
        now = time.monotonic()
        elapsed = max(now - since, 1e-9)
        self._last = (self.counters.dispatched, self.counters.completed, now)
        stats = OpsStats(
            instance=self.instance,
            at=format_time(self.clock()) or "",
            tasks={status.label: n for status, n in counts.items()},
            dispatch_rate=round((self.counters.dispatched - dispatched) / elapsed, 2) if online else 0.0,
            complete_rate=round((self.counters.completed - completed) / elapsed, 2) if online else 0.0,
            sensors_online=sensors_online,
            rejected=self.counters.rejected.total(),
            online=online,
            interval_s=self.interval_s,
        )
        try:
            await self.link.publish(
                self.topic, stats.to_json(), retain=True, expiry_s=self.expiry_s if online else None
            )
        except Unavailable:
            return False
        return True


def account(by_step: dict[tuple[str, str], int], transitions: Sequence[Transition]) -> None:
    """Count applied transitions by (from, to) name ("none" for a creation), one DEBUG line each."""
    for t in transitions:
        step = ("none" if t.source is None else t.source.label, t.target.label)
        by_step[step] = by_step.get(step, 0) + 1
        log.debug(
            "task %d of sensor %d: %s -> %s (attempt %d: %s)", t.task_id, t.sensor_serial, *step, t.attempt, t.reason,
            extra={"task_id": t.task_id, "sensor": t.sensor_serial, "action": "transition"},
        )  # fmt: skip


def log_sent(dispatches: Sequence[Dispatch]) -> None:
    if log.isEnabledFor(logging.DEBUG):
        for d in dispatches:
            log.debug(
                "task %d sent to sensor %d (attempt %d)", d.task_id, d.sensor_serial, d.attempt,
                extra={"task_id": d.task_id, "sensor": d.sensor_serial, "action": "send"},
            )  # fmt: skip
