"""The pacing of rollouts: the leader runs a round every `ROUND_S`, sooner when a paced
rollout's next start is due or when woken (a rollout created, paused or resumed, a rollout
task finished), at most one every `MIN_GAP_S`, and publishes each rollout's
progress on ``ops/rollouts/{id}``, retained.

A round is one store transaction (`RolloutStore.advance_rollouts`): the rollout rows are
locked, the totals counted, `domain.rollout.step` decides, and the tasks it allows are created
in the same transaction. The database holds everything a round needs, so a new leader (or a
restarted one) goes on where the last round stopped, and two instances that both believe they
lead still cannot exceed a cap together. A failed round is logged and tried at the next one.

Progress copies are rate limited per rollout: a state change goes out at once, a change of the
totals at most every `PUBLISH_EVERY_S`. A finished rollout whose tasks still run (aborted, or
cancelled with ``in_flight: finish``) is followed until they end.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict
from datetime import datetime, timedelta

from sensortasks.dispatcher.clock import Clock
from sensortasks.dispatcher.link import Link
from sensortasks.dispatcher.members import STORE_ERRORS, Membership
from sensortasks.domain.rollout import RolloutState
from sensortasks.errors import Unavailable
from sensortasks.protocol import RolloutProgress, Topics
from sensortasks.store import format_time
from sensortasks.store.interface import RolloutStore
from sensortasks.store.records import RolloutAdvance, RolloutInfo

log = logging.getLogger(__name__)

ROUND_S = 0.25
#: Rounds woken by finished tasks come at most this often (each is a write transaction).
MIN_GAP_S = 0.05
PUBLISH_EVERY_S = 1.0


def progress(rollout: RolloutInfo, at: datetime) -> RolloutProgress:
    return RolloutProgress(
        rollout_id=rollout.id,
        name=rollout.name,
        state=str(rollout.state),
        totals=asdict(rollout.totals),
        rate_per_minute=rollout.rate_per_minute,
        reason=rollout.reason,
        at=format_time(at) or "",
    )


class RolloutPacer:
    def __init__(
        self,
        store: RolloutStore,
        link: Link,
        members: Membership,
        clock: Clock,
        topics: Topics,
        *,
        on_started: Callable[[Iterable[int]], None],
    ) -> None:
        self.store = store
        self.link = link
        self.members = members
        self.clock = clock
        self.topics = topics
        self.on_started = on_started
        self._wake = asyncio.Event()
        #: What each rollout's last published copy said, and when it went out.
        self._published: dict[int, tuple[RolloutProgress, datetime]] = {}
        #: Finished rollouts with tasks still in flight: followed until these end.
        self._draining: set[int] = set()
        self._last_round: datetime | None = None

    def poke(self) -> None:
        """Run a round soon: a rollout was created or changed, or one of its tasks finished."""
        self._wake.set()

    async def run(self) -> None:
        wait = ROUND_S
        while True:
            await self.clock.wait(self._wake, wait)
            self._wake.clear()
            if self.link.connected.is_set() and self.members.leader:
                advance = await self.round()
                await self.clock.sleep(MIN_GAP_S)
                wait = self._until_next(advance.rollouts if advance else ())

    def _until_next(self, rollouts: Sequence[RolloutInfo]) -> float:
        """Seconds to the next start a running rollout is due (within `MIN_GAP_S` and
        `ROUND_S`), so that starts are spread at the rate rather than bunched per round."""
        due = [r.next_start_at for r in rollouts if r.state is RolloutState.RUNNING and r.next_start_at is not None]
        if not due:
            return ROUND_S
        return min(ROUND_S, max(0.0, (min(due) - self.clock.now()).total_seconds()))

    async def round(self) -> RolloutAdvance | None:
        """One round; None (logged) if the database could not be reached."""
        now = self.clock.now()
        try:
            advance = await self.store.advance_rollouts(now=now, changed_since=self._last_round)
            draining = [await self.store.get_rollout(i) for i in sorted(self._draining)]
        except STORE_ERRORS as exc:
            log.warning("rollout round skipped (%s: %s)", type(exc).__name__, exc)
            return None
        self._last_round = now
        if advance.started:
            self.on_started(t.sensor_serial for t in advance.started)
            log.debug("rollouts started %d tasks", len(advance.started))
        await self._publish([*advance.rollouts, *draining], now)
        return advance

    async def _publish(self, rollouts: Sequence[RolloutInfo], now: datetime) -> None:
        for rollout in {r.id: r for r in rollouts}.values():
            copy = progress(rollout, now)
            if rollout.state.finished and rollout.totals.in_flight:
                self._draining.add(rollout.id)
            else:
                self._draining.discard(rollout.id)
            if self._due(copy, now):
                try:
                    await self.link.publish(self.topics.ops_rollout(rollout.id), copy.to_json(), retain=True)
                except Unavailable:
                    return  # the next round says it again: nothing was recorded as published
                self._published[rollout.id] = (copy, now)
            if rollout.state.finished and rollout.id not in self._draining:
                self._published.pop(rollout.id, None)  # its last word is out: forget it

    def _due(self, copy: RolloutProgress, now: datetime) -> bool:
        last = self._published.get(copy.rollout_id)
        if last is None or last[0].state != copy.state:
            return True
        same = last[0].model_copy(update={"at": copy.at}) == copy
        return not same and now - last[1] >= timedelta(seconds=PUBLISH_EVERY_S)
