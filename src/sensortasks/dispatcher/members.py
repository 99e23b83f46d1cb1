"""This instance as a member of the group of dispatchers that share one database.

- It beats (`DispatchStore.beat`) every quarter of ``instance_timeout_s``, but only while it
  holds the broker connection: an instance without the broker cannot be handed statuses, and
  its silence is what makes the others recover its share.
- The beat takes or renews the leader lease. The leader alone publishes the outbox and the
  aggregate ``ops/stats``, re-sends on sensors' reconnects, and recovers silent members; it
  counts as leader only until one beat interval before its lease runs out, so two instances
  never both act as leader while their clocks agree (docs/scaling.md).
- An instance that cannot reach the database for half the timeout leaves the broker
  (`Link.pause`): statuses it cannot commit then stop coming to it, and what its session holds
  is recovered by the others. It rejoins when the database answers again. A beat that gets no
  answer within its interval has failed: behind a partition the database is silent, and a
  statement waits for TCP's own timeouts (many minutes) before it fails.
- The session expiry it reports with each beat, which tells the leader when nothing of its
  share can be held by the broker any more (`store.membership`), is how long after its last beat
  the broker may still route statuses to it (`broker_hold_s`): a broker cut off from it by a
  partition finds out only through the keepalive, and late, before the session expiry starts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy.exc import SQLAlchemyError

from sensortasks.dispatcher.clock import Clock
from sensortasks.dispatcher.link import Link, keepalive_for
from sensortasks.errors import Unavailable
from sensortasks.ops.metrics import Counters
from sensortasks.store import StaleBatch
from sensortasks.store.interface import DispatchStore
from sensortasks.store.membership import Beat, Member

log = logging.getLogger(__name__)

#: What a database action can raise that retrying (later) may fix.
STORE_ERRORS = (SQLAlchemyError, StaleBatch, Unavailable, OSError)
#: Back off after a database failure, doubling up to the maximum.
DB_RETRY_S = 0.1
DB_RETRY_MAX_S = 5.0
_R = TypeVar("_R")


class Retrying:
    """Runs a database action until it succeeds: a locked or unreachable database slows the
    dispatcher down instead of crashing it or dropping work. Not only the failures that mean
    `Unavailable` (a 503 over REST): the dispatcher has nobody to answer, and dropping the work
    loses it."""

    def __init__(self, counters: Counters, clock: Clock) -> None:
        self.counters = counters
        self.clock = clock

    async def __call__(self, what: str, action: Callable[..., Awaitable[_R]], *args: Any, **kwargs: Any) -> _R:  # noqa: ANN401
        delay = DB_RETRY_S
        while True:
            try:
                return await action(*args, **kwargs)
            except STORE_ERRORS as exc:
                self.counters.db_retries += 1
                log.warning("%s failed (%s: %s); retrying in %.1f s", what, type(exc).__name__, exc, delay)
            await self.clock.sleep(delay)
            delay = min(delay * 2, DB_RETRY_MAX_S)


#: How late, past 1.5 keepalives (MQTT 5, 3.1.2.10), a broker may drop a connection that fell
#: silent and then expire its session: Mosquitto 2.0 checks keepalives every 6 s and session
#: expiries every second (its src/keepalive.c and src/session_expiry.c; measured here: a client
#: with a keepalive of 1 s dropped 4.2 to 5.0 s after a partition, its 4 s session gone 5 s later).
BROKER_TIMERS_S = 7


def broker_hold_s(timeout_s: float, session_expiry_s: int) -> int:
    """How long after an instance's last beat the broker may still route its share of statuses
    to its session: until it drops the silent connection (`keepalive_for`), then the expiry."""
    return int(1.5 * keepalive_for(timeout_s)) + 1 + BROKER_TIMERS_S + session_expiry_s


class Membership:
    def __init__(
        self,
        instance: str,
        store: DispatchStore,
        link: Link,
        clock: Clock,
        counters: Counters,
        *,
        timeout_s: float,
        session_expiry_s: int,
        on_resend: Callable[[str], None],
        on_lead: Callable[[], None],
    ) -> None:
        self.instance = instance
        self.store = store
        self.link = link
        self.clock = clock
        self.counters = counters
        self.timeout_s = timeout_s
        self.interval_s = timeout_s / 4
        self.hold_s = broker_hold_s(timeout_s, session_expiry_s)
        self.on_resend = on_resend
        self.on_lead = on_lead
        self.started_at = clock.now()
        #: The live members at the last beat (this one included).
        self.live: tuple[Member, ...] = ()
        self._lead_until: datetime | None = None
        self._reachable_at = self.started_at
        self._left_broker = False
        self._poke = asyncio.Event()
        self._last = (counters.dispatched, counters.completed, self.started_at)

    @property
    def leader(self) -> bool:
        return self._lead_until is not None and self.clock.now() < self._lead_until

    def poke(self) -> None:
        """Beat now (the broker connection came up: take the lead without waiting)."""
        self._poke.set()

    async def run(self) -> None:
        while True:
            await self.clock.wait(self._poke, self.interval_s)
            self._poke.clear()
            await self._step()

    async def leave(self) -> None:
        """A clean stop: give the lead up (best effort: an unreachable database lets it expire)."""
        self._lead_until = None
        now = self.clock.now()
        try:
            async with asyncio.timeout(self.interval_s):  # a silent database must not hold the stop
                await self.store.leave(self._me(now), now=now, timeout_s=self.timeout_s)
        except STORE_ERRORS as exc:  # TimeoutError is an OSError
            log.warning("could not leave the group cleanly (%s); the lead expires in %.0f s", exc, self.timeout_s)

    async def _step(self) -> None:
        now = self.clock.now()
        beat = None
        try:
            # Bounded: a database behind a partition does not fail, it just never answers.
            async with asyncio.timeout(self.interval_s):
                if self.link.connected.is_set():
                    beat = await self.store.beat(self._me(now), now=now, timeout_s=self.timeout_s)
                else:
                    await self.store.ping()
        except STORE_ERRORS as exc:
            silent = (self.clock.now() - self._reachable_at).total_seconds()
            why = (
                f"no answer in {self.interval_s:.1f} s"
                if isinstance(exc, TimeoutError)
                else f"{type(exc).__name__}: {exc}"
            )
            log.warning("heartbeat failed (%s) for %.1f s", why, silent)
            if silent >= self.timeout_s / 2 and not self._left_broker:
                self._left_broker = True
                self._lead_until = None
                self.link.pause(f"the database has been unreachable for {silent:.1f} s")
            return
        if beat is not None:
            self._apply(beat, now)
        self._reachable_at = now
        if self._left_broker:
            self._left_broker = False
            self.link.resume()

    def _apply(self, beat: Beat, now: datetime) -> None:
        was_leader = self.leader
        self._lead_until = now + timedelta(seconds=self.timeout_s - self.interval_s) if beat.leader else None
        self.live = beat.live
        if beat.leader != was_leader:
            log.info(
                "instance %s %s the lead", self.instance, "took" if beat.leader else "lost",
                extra={"instance": self.instance, "action": "lead" if beat.leader else "follow"},
            )  # fmt: skip
        if beat.leader and not was_leader:
            self.on_lead()
        if beat.reasons:
            self.on_resend("; ".join(beat.reasons))

    def _me(self, now: datetime) -> Member:
        dispatched, completed, since = self._last
        elapsed = max((now - since).total_seconds(), 1e-9)
        self._last = (self.counters.dispatched, self.counters.completed, now)
        return Member(
            self.instance,
            self.started_at,
            now,
            self.hold_s,
            dispatch_rate=round((self.counters.dispatched - dispatched) / elapsed, 2),
            complete_rate=round((self.counters.completed - completed) / elapsed, 2),
            rejected=self.counters.rejected.total(),
        )
