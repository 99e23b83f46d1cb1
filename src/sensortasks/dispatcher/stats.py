"""``ops/stats``, what the leading dispatcher instance publishes, retained, every `interval_s`,
for the whole group; and the per-task accounting (transitions by from/to, DEBUG lines per task).

Tasks per status and sensors online come from the database every instance shares; rates and
rejections are the sums of what each live instance reported with its last heartbeat
(`dispatcher.members`). One publisher, the leader, so the copy never flips between instances.

A live copy says ``"online": true`` and carries an MQTT 5 Message Expiry Interval of
`EXPIRY_INTERVALS` intervals, so the copy of a group that crashed vanishes from the broker's
retained store instead of showing its last counts as if live. The last instance to stop
cleanly publishes a final copy with ``"online": false`` and no expiry: the last word of a
group that stopped on purpose stays, and says so.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from sensortasks.dispatcher.members import STORE_ERRORS
from sensortasks.errors import Unavailable
from sensortasks.protocol import OpsEvent, OpsStats
from sensortasks.store import format_time

if TYPE_CHECKING:
    from sensortasks.dispatcher.clock import Clock
    from sensortasks.dispatcher.link import Link
    from sensortasks.dispatcher.members import Membership
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
        members: Membership,
        clock: Clock,
    ) -> None:
        self.instance = instance
        self.topic = topic
        self.interval_s = interval_s
        self.expiry_s = max(1, math.ceil(EXPIRY_INTERVALS * interval_s))
        self.store = store
        self.link = link
        self.members = members
        self.clock = clock

    async def run(self) -> None:
        while True:
            await self.clock.sleep(self.interval_s)
            if self.link.connected.is_set() and self.members.leader:
                await self.publish(online=True)

    async def publish(self, *, online: bool) -> bool:
        """Publish one copy; False (logged) if the database or the broker could not be reached."""
        try:
            counts = await self.store.counts()
            sensors_online = await self.store.sensors_online()
        except STORE_ERRORS as exc:
            log.warning("stats skipped: %s", exc)
            return False
        live = self.members.live
        stats = OpsStats(
            instance=self.instance,
            at=format_time(self.clock.now()) or "",
            tasks={status.label: n for status, n in counts.items()},
            dispatch_rate=round(sum(m.dispatch_rate for m in live), 2) if online else 0.0,
            complete_rate=round(sum(m.complete_rate for m in live), 2) if online else 0.0,
            sensors_online=sensors_online,
            rejected=sum(m.rejected for m in live),
            online=online,
            interval_s=self.interval_s,
            instances=[m.instance for m in live] if online else [],
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


def event_json(t: Transition) -> bytes:
    """The ``ops/events`` payload of a committed transition."""
    return OpsEvent.model_validate(
        {
            "task_id": t.task_id,
            "sensor_serial": t.sensor_serial,
            "type": t.type,
            "from": None if t.source is None else t.source.label,
            "to": t.target.label,
            "attempt": t.attempt,
            "reason": t.reason,
            "at": format_time(t.at) or "",
            "rollout_id": t.rollout_id,
        }
    ).to_json()
