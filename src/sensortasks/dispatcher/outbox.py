"""The outbox's publisher: ``ops/events`` and cancel messages, from the transactions that
committed them.

Every transition is written unpublished in the transaction that applies it (G6); the store's
commit feed (`DispatchStore.watch_commits`) hands this process's committed events, with their
ids, to `Outbox.on_commit` once the transaction has committed. They queue here in two lanes:
changes of tasks under way in commit order, and creations, by the transaction that made them,
the smallest first (each newest first): a bulk of 50,000 new tasks holds back neither the
changes of other tasks nor the creations made before or after it, which go out at the next
round, and the bulk drains in what the rounds leave. (A read of the database orders its
creations newest first, `outbox_order`: there a task created just before a bulk still waits
for it.) A change whose task's creation is still queued takes that creation out just before
itself, so each task's events keep their commit order. A round publishes up to `CLAIM_BATCH` of them, cancels
first (the sensor hears of a cancel before its next task), marks them published in one
transaction, and only then wakes the sensors they finished (the claim refuses a sensor whose
cancel is not marked published yet). The mark goes on beside the next round: that round
publishes at once and waits for it only before marking its own (one mark outstanding at most),
so an event committed while the writer is held, by a bulk create say, is not also held back
behind the previous round's mark. A database read waits for it (it would find that round's
events still unpublished).

The database stays the truth: an event is unpublished there until a round marks it, so none
is lost between its commit and its publication. What the feed cannot know is read from it
(`DispatchStore.unpublished`): everything at the start (a previous life may have crashed
between a commit and its round), after a (re)connect, on taking the lead (a follower drops
its feed: the leader alone publishes), on another instance's wake-up, after a round that
failed, and when the feed has been quiet for `OUTBOX_POLL_S` (another process writing the same
SQLite file wakes nobody). Such a read catches up: the lanes wait until a read comes back
short, so that no task's change goes out before a creation only the database holds. A feed
that never goes quiet still lets one read in every `OUTBOX_SWEEP_S`, which publishes what it
finds beside the lanes instead of holding them (a bulk of 50,000 creations would otherwise
drain through reads): a cancel another process committed then holds its sensor's next task
back for seconds, not for as long as this process stays busy. A read may return events that
the feed delivers as well; the ids published in the last seconds are kept (`RECENT_S`) and
neither path publishes them again.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Protocol

from sensortasks.dispatcher.clock import Clock
from sensortasks.dispatcher.link import Link
from sensortasks.dispatcher.stats import event_json
from sensortasks.protocol import CancelMessage
from sensortasks.protocol.topics import Topics
from sensortasks.store import Transition
from sensortasks.store.interface import CLAIM_BATCH, DispatchStore

log = logging.getLogger(__name__)

#: With nothing from the feed for this long, the outbox looks at the database.
OUTBOX_POLL_S = 1.0
#: After a wake-up the outbox waits this long so that one transaction marks many events
#: published (SQLite has one writer; many tiny transactions slow everyone down).
OUTBOX_COALESCE_S = 0.05
#: However busy the feed, the database is read at least this often (module docstring).
OUTBOX_SWEEP_S = 5.0
#: How long ids stay known as published once marked: longer than any commit takes to reach the feed.
RECENT_S = 5.0
#: Events queued beyond this are dropped from the lanes and read from the database instead.
FEED_MAX = 200_000

Event = tuple[int, Transition]
Retry = Callable[..., Awaitable[Any]]


class Leading(Protocol):
    @property
    def leader(self) -> bool: ...


class Outbox:
    """The feed's lanes and the publishing loop (module docstring); `run` until cancelled."""

    def __init__(
        self,
        store: DispatchStore,
        link: Link,
        members: Leading,
        clock: Clock,
        topics: Topics,
        retrying: Retry,
        on_finished: Callable[[Iterable[int]], None],
    ) -> None:
        self.store = store
        self.link = link
        self.members = members
        self.clock = clock
        self.topics = topics
        self._retrying = retrying
        self._on_finished = on_finished
        self._changes: deque[Event] = deque()
        #: Creations not yet taken: each transaction's by task id (oldest first, `popitem` takes
        #: the newest), and each task's group by its id.
        self._groups: list[dict[int, Event]] = []
        self._creations: dict[int, dict[int, Event]] = {}
        #: Ids published lately or out in a round (`RECENT_S`), and each marked round's ids with
        #: when it was marked, oldest first (a dict popped from its front is O(n) a pop).
        self._recent: set[int] = set()
        self._marked: deque[tuple[float, list[int]]] = deque()
        #: The last round's mark, going on beside the next round (module docstring).
        self._marking: asyncio.Future[None] | None = None
        self._wake = asyncio.Event()
        #: The database may hold what the feed does not: read it before the lanes (module docstring).
        self._read = True
        #: Rounds read from the database (tests count them), and when the last one was.
        self.reads = 0
        self._read_at = clock.now()

    # -- what the dispatcher calls ----------------------------------------------------
    def on_commit(self, events: Sequence[Event]) -> None:
        """The store's commit listener: queue a committed transaction's unpublished events."""
        if not self.members.leader or not self.link.connected.is_set():
            return  # in the database, read when this instance leads or is connected again
        made: dict[int, Event] = {}  # this transaction's creations
        for event in events:
            if event[0] in self._recent:
                continue  # a read published it already
            transition = event[1]
            if transition.source is None:
                made[transition.task_id] = event
                self._creations[transition.task_id] = made
                continue
            group = self._creations.pop(transition.task_id, None)
            if group is not None:
                self._changes.append(group.pop(transition.task_id))
            self._changes.append(event)
        if made:  # in order of size (roughly: groups only shrink once in)
            bisect.insort(self._groups, made, key=len)
        if self.queued > FEED_MAX:
            log.warning("%d events queued for the outbox; reading them from the database instead", self.queued)
            self._drop()
            self._read = True
        self._wake.set()

    def wake(self) -> None:
        """Something may be waiting to be published: look at once (it comes through the feed)."""
        self._wake.set()

    def read_soon(self) -> None:
        """The database may hold events the feed never had (reconnect, lead, another instance)."""
        self._read = True
        self._wake.set()

    @property
    def queued(self) -> int:
        return len(self._changes) + len(self._creations)

    @property
    def marking(self) -> bool:
        """A round's mark is still being written (a test's clock waits for it: `FakeClock.quiet_when`)."""
        return self._marking is not None and not self._marking.done()

    @property
    def idle(self) -> bool:
        """Nothing queued or being marked and no read due (the database may still hold another
        process's events)."""
        return not self.queued and not self._read and not self.marking

    # -- the loop ---------------------------------------------------------------------
    async def run(self) -> None:
        try:
            await self._rounds()
        finally:
            if self._marking is not None:  # unmarked, so published again by the next life: consumers dedupe
                self._marking.cancel()
                await asyncio.gather(self._marking, return_exceptions=True)

    async def _rounds(self) -> None:
        full = False
        while True:
            if not full:  # a full round goes on at once; otherwise let commits gather
                if self._read or self.queued or await self.clock.wait(self._wake, OUTBOX_POLL_S):
                    await self.clock.sleep(OUTBOX_COALESCE_S)
                else:
                    self._read = True  # the feed was quiet: what did others write?
            self._wake.clear()
            self._reap()
            await self.link.connected.wait()
            if not self.members.leader:
                self._drop()  # the leader publishes; it reads these when it wakes on our writes
                self._read, full = False, False
                continue
            sweep = (self.clock.now() - self._read_at).total_seconds() >= OUTBOX_SWEEP_S
            if self._read or sweep:
                catch_up, self._read = self._read, False
                await self._marked_before()
                self.reads += 1
                self._read_at = self.clock.now()
                pending = await self._retrying("outbox", self.store.unpublished, limit=CLAIM_BATCH)
                full = catch_up and len(pending) >= CLAIM_BATCH
                # More in the database (the lanes wait for it), or a `read_soon` came during the
                # read, which may have begun before what it announces was committed.
                self._read = self._read or full
                pending = self._forget(pending)
            else:
                pending = self._take(CLAIM_BATCH)
                full = len(pending) >= CLAIM_BATCH
            if pending and not await self._publish(pending):
                full = False
                self.read_soon()  # the lanes lost them: the database has them all

    def _take(self, limit: int) -> list[Event]:
        """A round from the lanes: changes in commit order, then creations, the transactions
        that made fewest first, each newest first (module docstring)."""
        taken: list[Event] = []
        while self._changes and len(taken) < limit:
            taken.append(self._changes.popleft())
        for group in self._groups:
            if len(taken) >= limit:
                break
            while group and len(taken) < limit:
                event = group.popitem()[1]
                del self._creations[event[1].task_id]
                taken.append(event)
        emptied = next((at for at, group in enumerate(self._groups) if group), len(self._groups))
        del self._groups[:emptied]  # the smallest go first, so the emptied ones lead
        return [event for event in taken if event[0] not in self._recent]

    def _forget(self, pending: Sequence[Event]) -> list[Event]:
        """A read's events that are new, taken out of the lanes, where they may wait as well."""
        fresh = [event for event in pending if event[0] not in self._recent]
        ids = {event_id for event_id, _ in fresh}
        for event_id, t in fresh:
            group = self._creations.get(t.task_id) if t.source is None else None
            if group is not None and group[t.task_id][0] == event_id:
                del self._creations[t.task_id], group[t.task_id]
        if self._changes and any(event_id in ids for event_id, _ in self._changes):
            self._changes = deque(event for event in self._changes if event[0] not in ids)
        return fresh

    def _drop(self) -> None:
        self._changes.clear()
        self._groups.clear()
        self._creations.clear()

    async def _publish(self, pending: Sequence[Event]) -> bool:
        """Publish a round and start its mark, which then wakes the sensors it finished; False if
        the broker went away (publish them all again later: consumers dedupe)."""
        cancels = [
            (self.topics.tasks(t.sensor_serial), CancelMessage(task_id=t.task_id).to_json())
            for _, t in pending
            if t.tells_sensor
        ]
        events = [(self.topics.ops_event(t.sensor_serial, t.task_id), event_json(t)) for _, t in pending]
        ids = [event_id for event_id, _ in pending]
        self._recent.update(ids)
        # Cancels first: the sensor must hear of the cancel before its next task.
        sent = await self.link.publish_many(cancels) + await self.link.publish_many(events)
        if sent < len(cancels) + len(events):
            self._recent.difference_update(ids)
            return False
        await self._marked_before()
        self._marking = asyncio.ensure_future(self._mark(pending, ids))
        self._marking.add_done_callback(self._mark_done)
        return True

    async def _marked_before(self) -> None:
        """One mark outstanding at most, and none under a read: a read would find its round's
        events still unpublished, and a full catch-up would read them again and again."""
        if self._marking is not None:
            await self._marking
            self._marking = None

    def _mark_done(self, marking: asyncio.Future[None]) -> None:
        """A mark that failed wakes the loop, which raises it (`_reap`): store errors are retried
        in the mark, so this is a bug, and it stops the dispatcher now, not at the next round."""
        if not marking.cancelled() and marking.exception() is not None:
            self._wake.set()

    def _reap(self) -> None:
        """Forget a finished mark, raising what it raised."""
        if self._marking is not None and self._marking.done():
            marking, self._marking = self._marking, None
            marking.result()

    async def _mark(self, pending: Sequence[Event], ids: list[int]) -> None:
        """Mark a published round and only then wake the sensors it finished: the claim refuses
        a sensor whose cancel is not marked yet, and would find nothing to do."""
        await self._retrying("outbox mark", self.store.mark_published, ids)
        now = self.clock.now().timestamp()
        self._marked.append((now, ids))
        self._prune(now)
        self._on_finished(t.sensor_serial for _, t in pending if t.target.terminal)

    def _prune(self, now: float) -> None:
        """Forget ids marked more than `RECENT_S` ago (oldest first: rounds mark in turn)."""
        while self._marked and now - self._marked[0][0] >= RECENT_S:
            self._recent.difference_update(self._marked.popleft()[1])
