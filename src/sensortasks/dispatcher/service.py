"""The dispatcher: sends each sensor its tasks one at a time and applies what sensors report.

Side tasks, each named and watched by one TaskGroup (one crashing stops the service
loudly): the MQTT link, ``consume`` (status and presence batches), ``dispatch``
(claims the next attempt of sensors that may move on), ``timers`` (acknowledgement
and run timeouts), ``outbox`` (ops events and cancel messages committed with their
transitions, published from the store's commit feed: `dispatcher.outbox`), ``rollouts``
(their pacing, `dispatcher.rollouts`), ``stats``, ``members`` (heartbeat and lead,
`dispatcher.members`) and ``wakeups`` (other instances' writes, `store.notify`). The database, not memory, says what
to send: the in-memory set of "dirty" sensors only makes things faster, and a periodic sweep
catches everything else (a wake-up lost, back offs that ran out).

Several instances may share the database (docs/scaling.md): each claims, applies statuses
and expires timers under row locks and guarded updates; the leader alone publishes the outbox
and ``ops/stats`` and re-sends on sensors' reconnects, so nothing is published twice as new.

No input stops the service: ``consume`` handles a batch at once (reports are applied in
one transaction) and, if that raises, each of its messages alone, refusing
(``internal_error``) the one that fails. Every message is acknowledged after what it
said was committed or its rejection was recorded, so nothing poisonous is left in the
persistent session to come back at restart.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import datetime, timedelta

from sensortasks.config import Settings
from sensortasks.dispatcher.clock import SYSTEM_CLOCK, Clock
from sensortasks.dispatcher.intake import QUOTED_TOPIC_CHARS, Refused, isolate, rejection, sort_batch
from sensortasks.dispatcher.link import Incoming, Link
from sensortasks.dispatcher.members import Membership, Retrying
from sensortasks.dispatcher.outbox import Outbox
from sensortasks.dispatcher.rollouts import RolloutPacer
from sensortasks.dispatcher.stats import StatsPublisher, account, log_sent
from sensortasks.domain import TaskStatus
from sensortasks.errors import ConfigError, SensortasksError, Unavailable
from sensortasks.ops.metrics import Counters, Metrics
from sensortasks.protocol import DispatcherPresence, TaskMessage
from sensortasks.store import Dispatch, Transition, format_time
from sensortasks.store.interface import CLAIM_BATCH, DispatchStore, RolloutStore
from sensortasks.store.notify import Wake

log = logging.getLogger(__name__)

#: A full look at every sensor's queue, for what no wake-up announced.
SWEEP_INTERVAL_S = 2.0
TIMER_TICK_S = 0.5
#: Incoming messages handled (and committed) together.
MAX_BATCH = 1000
#: How long a stop waits for the batch being handled to commit and be acknowledged.
STOP_GRACE_S = 10.0
IDLE_POLL_S = 0.2


class Dispatcher:
    """Store, link and clock are injected (`sensortasks.testing` has a fake of each);
    `dispatcher_link(settings)` builds the production link."""

    def __init__(
        self,
        settings: Settings,
        store: DispatchStore,
        link: Link,
        *,
        clock: Clock = SYSTEM_CLOCK,
        metrics: Metrics | None = None,
        rollouts: RolloutStore | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.store = store
        self.topics = settings.topics
        self.clock = clock
        self.counters = Counters()
        self._retrying = Retrying(self.counters, clock)
        self.instance = settings.instance
        self.link = link
        self.members = Membership(
            self.instance,
            store,
            link,
            clock,
            self.counters,
            timeout_s=settings.instance_timeout_s,
            session_expiry_s=settings.session_expiry,
            on_resend=self._resend,
            on_lead=self._read_outbox,
        )
        self.stats = StatsPublisher(
            self.instance, self.topics.ops_stats, settings.stats_interval_s, store, link, self.members, clock
        )
        self.rollouts = (
            RolloutPacer(rollouts, link, self.members, clock, self.topics, on_started=self._rollout_started)
            if rollouts
            else None
        )
        self._dirty: set[int] = set()
        self._sweep = True
        #: Why every in-flight attempt must be re-sent at the next dispatch round (None: no need).
        self._resync: str | None = None
        self._wake = asyncio.Event()
        self.outbox = Outbox(store, link, self.members, clock, self.topics, self._retrying, self.kick)
        store.watch_commits(self.outbox.on_commit)
        self._stop = asyncio.Event()
        self._in_hand: asyncio.Future[None] | None = None
        self._returning = False
        self._commands: Callable[[Incoming], Awaitable[None]] | None = None
        #: Claims of status batches handed to the link, PUBACKs not yet in (`_send_behind`).
        self._sending: set[asyncio.Future[None]] = set()

    # -- public --------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self.link.connected.is_set()

    @property
    def commands(self) -> Callable[[Incoming], Awaitable[None]] | None:
        """What answers ``tasks/commands/*``; None: the topics are not served (messages refused)."""
        return self._commands

    def serve_commands(self, handler: Callable[[Incoming], Awaitable[None]]) -> None:
        """Answer ``tasks/commands/*`` with `handler` (`commands.mqtt.CommandHandler`, which owns
        the rules). Registered once, by the process's composition root (`sensortasks.runtime`)."""
        if self._commands is not None:
            raise ConfigError("the command topics already have a handler")
        self._commands = handler

    def kick(self, serials: Iterable[int]) -> None:
        """These sensors' queues may move on (new task, finished task, sensor back)."""
        before = len(self._dirty)
        self._dirty.update(serials)
        if len(self._dirty) > before:
            self._wake.set()

    def notify_outbox(self) -> None:
        """New transitions were committed (e.g. a cancel through the API): publish them soon
        (this process's store feeds them to the outbox already)."""
        self.outbox.wake()

    def notify_rollouts(self) -> None:
        """A rollout was created, paused, resumed or cancelled: pace it now, and publish the
        events of the tasks a cancel cancelled."""
        self.outbox.wake()
        if self.rollouts is not None:
            self.rollouts.poke()

    def stop(self) -> None:
        self._stop.set()

    def _rollout_started(self, serials: Iterable[int]) -> None:
        self.kick(serials)
        self.outbox.wake()  # their "created" events

    async def run(self, *, until_idle: bool = False) -> None:
        """Run until `stop()` (or, with `until_idle`, until no task is Pending or Ongoing)."""
        # A previous life of this instance may have claimed attempts it never got to publish.
        self._returning = await self._retrying("membership", self.store.member, self.instance) is not None
        async with asyncio.TaskGroup() as group:
            link = group.create_task(self.link.run(self._on_connect), name="mqtt-link")
            workers = [
                group.create_task(coro, name=name)
                for name, coro in (
                    ("consume", self._consume()),
                    ("dispatch", self._dispatch_loop()),
                    ("timers", self._timers()),
                    ("outbox", self.outbox.run()),
                    ("stats", self.stats.run()),
                    ("members", self.members.run()),
                    ("wakeups", self.store.listen(self._on_wake)),
                )
            ]
            if self.rollouts is not None:
                workers.append(group.create_task(self.rollouts.run(), name="rollouts"))
            if until_idle:
                workers.append(group.create_task(self._stop_when_idle(), name="idle"))
            log.info("dispatcher %s started", self.instance, extra={"instance": self.instance, "action": "started"})
            await self._stop.wait()
            log.debug("dispatcher %s stopping", self.instance)
            for worker in (*workers, *self._sending):
                worker.cancel()
            await asyncio.gather(*workers, *self._sending, return_exceptions=True)
            await self._finish_in_hand()
            if self.connected and self.members.leader and len(self.members.live) <= 1:
                await self.stats.publish(online=False)  # the last one out says so
            await self.members.leave()
            await self._publish_presence(online=False)
            link.cancel()
        log.info("dispatcher %s stopped", self.instance, extra={"instance": self.instance, "action": "stopped"})

    async def _finish_in_hand(self) -> None:
        """Wait (bounded) for the batch the consumer was handling when the stop came."""
        if self._in_hand is None or self._in_hand.done():
            return
        try:
            async with asyncio.timeout(STOP_GRACE_S):
                await self._in_hand
        except TimeoutError:
            log.warning("a batch was still being handled %.0f s after the stop; left to redelivery", STOP_GRACE_S)
            self._in_hand.cancel()
        except Exception:  # its failure is the batch's, logged by isolate()
            log.debug("the batch in hand failed while stopping", exc_info=True)

    # -- plumbing --------------------------------------------------------------
    def _presence_payload(self, *, online: bool) -> bytes:
        return DispatcherPresence(instance=self.instance, online=online).to_json()

    async def _publish_presence(self, *, online: bool) -> None:
        try:
            await self.link.publish(
                self.topics.ops_dispatcher(self.instance), self._presence_payload(online=online), retain=True
            )
        except Unavailable:
            log.warning("could not publish dispatcher presence online=%s", online)

    async def _on_connect(self) -> None:
        await self._publish_presence(online=True)
        # Not on a first start: a new member has lost nothing, and a re-send of the others'
        # in-flight work at every join would be a duplicate for each of their sensors.
        if self.link.connects > 1:
            self._resend("dispatcher reconnected")
        elif self._returning:
            self._resend("dispatcher restarted")
        self._sweep_soon()
        self.members.poke()
        self.outbox.read_soon()  # what the feed dropped while disconnected, or a crash left

    def _read_outbox(self) -> None:
        """This instance took the lead: publish what followers and the last leader left."""
        self.outbox.read_soon()

    def _resend(self, reason: str) -> None:
        """Re-send every in-flight attempt soon: statuses may have been lost (`reason`)."""
        self._resync = reason
        self._wake.set()

    def _sweep_soon(self) -> None:
        """Look at every sensor's queue at the next dispatch round."""
        self._sweep = True
        self._wake.set()

    def _on_wake(self, wake: Wake) -> None:
        """Another instance wrote: new tasks for these sensors, or events for the outbox."""
        if wake.origin == self.instance:
            return  # our own process woke us already
        if wake.serials is None:
            self._sweep_soon()
        elif wake.serials:
            self.kick(wake.serials)
        self.outbox.read_soon()  # its events are in the database only

    def _after(
        self, transitions: Sequence[Transition], wake: Iterable[int], retries: Iterable[tuple[int, float]]
    ) -> None:
        self.counters.transitions += len(transitions)
        self.counters.completed += sum(t.target is TaskStatus.COMPLETED for t in transitions)
        account(self.counters.transitions_by, transitions)
        if any(t.rollout_id is not None and t.target.terminal for t in transitions):
            self.notify_rollouts()  # a slot is free, or the abort threshold may be crossed
        self.kick(wake)
        for serial, delay in retries:
            self.clock.call_later(delay, self.kick, (serial,))

    def _send_behind(self, dispatches: Sequence[Dispatch]) -> None:
        """Send claims a status batch made without holding the batch's acknowledgement and the
        next batch back for their PUBACKs: the link keeps them in order, and a claim whose
        publish is lost with the connection is re-sent by the re-sync or times out (G4)."""
        if not dispatches:
            return
        sending = asyncio.ensure_future(self._send(dispatches))
        self._sending.add(sending)
        sending.add_done_callback(self._sent)

    def _sent(self, sending: asyncio.Future[None]) -> None:
        self._sending.discard(sending)
        if not sending.cancelled() and sending.exception() is not None:
            log.error("sending the claims of a status batch failed", exc_info=sending.exception())

    async def _send(self, dispatches: Sequence[Dispatch]) -> None:
        messages = [
            (
                self.topics.tasks(d.sensor_serial),
                TaskMessage(
                    task_id=d.task_id,
                    type=d.type,
                    file_id=d.file_id,
                    attempt=d.attempt,
                    timeout_s=d.timeout_s,
                ).to_json(),
            )
            for d in dispatches
        ]
        if messages:
            await self.link.publish_many(messages)
            log_sent(dispatches)

    async def reject(self, rejections: Sequence[Refused]) -> None:
        """Count, log and publish refused messages on ``ops/rejected`` with a truncated copy."""
        at = format_time(self.clock.now()) or ""
        await self.link.publish_many([rejection(r, self.topics.ops_rejected, at, self.counters) for r in rejections])

    # -- consume -----------------------------------------------------------
    async def _consume(self) -> None:
        queue = self.link.messages
        while True:
            batch = [await queue.get()]
            while len(batch) < MAX_BATCH and not queue.empty():
                batch.append(queue.get_nowait())
            # Shielded: a stop lets the batch in hand finish (`run` waits for it), so what it
            # committed or refused is acknowledged and not delivered, and handled, again.
            self._in_hand = asyncio.ensure_future(self._finish(batch))
            await asyncio.shield(self._in_hand)

    async def _finish(self, batch: Sequence[Incoming]) -> None:
        await isolate(batch, self._handle, self._internal_error)
        self.link.ack(batch)

    async def _internal_error(self, message: Incoming, exc: Exception) -> None:
        """Refuse a message whose handling raised (a bug): logged once, counted, acknowledged."""
        topic = message.topic[:QUOTED_TOPIC_CHARS]
        log.error("handling a message on %s failed; refusing it", topic, exc_info=exc)
        try:
            await self.reject([Refused.of(message, "internal_error", f"internal error ({type(exc).__name__})")])
        except Exception:  # counted already; ops/rejected is best effort
            log.exception("could not publish the rejection of a message on %s", topic)

    async def _command(self, message: Incoming) -> None:
        try:
            assert self._commands is not None  # noqa: S101  (sort_batch sorts none out otherwise)
            await self._commands(message)
        except Exception as exc:
            await self._internal_error(message, exc)

    async def _clear_retained(self, topic: str) -> None:
        try:
            await self.link.publish(topic, b"", retain=True)
        except SensortasksError as exc:
            log.warning("could not clear the retained message on %s: %s", topic[:QUOTED_TOPIC_CHARS], exc)

    async def _handle(self, batch: Sequence[Incoming]) -> None:
        intake = sort_batch(batch, self.topics, commands=self._commands is not None)
        now = self.clock.now()
        if intake.presence:
            heard = [(serial, online, at or now) for serial, online, at in intake.presence]
            await self._retrying("presence", self.store.record_presence, heard)
        if intake.reports:
            self.counters.reports += len(intake.reports)
            result = await self._retrying("status batch", self.store.apply_reports, intake.reports, now=now)
            for refusal in result.refused:
                intake.refused.append(Refused.of(intake.origin[id(refusal.report)], refusal.code, refusal.reason))
            # The sensors the batch freed had their next attempts claimed with it: no wake-up.
            self._after(result.transitions, (), result.retries)
            self._claimed(result.dispatches, now)
            self._send_behind(result.dispatches)
        if intake.back_online:
            serials = sorted(set(intake.back_online))
            if self.members.leader:  # every instance hears it; one re-sends
                redelivered = await self._retrying(
                    "redeliver", self.store.redeliver, serials, now=now, reason="sensor came online"
                )
                self.counters.redelivered += len(redelivered)
                await self._send(redelivered)
            self.kick(serials)
        for topic in intake.clear:
            await self._clear_retained(topic)
        if intake.refused:
            await self.reject(intake.refused)
        for command in intake.commands:
            await self._command(command)

    # -- dispatch ------------------------------------------------------------
    async def _dispatch_loop(self) -> None:
        next_sweep = self.clock.now()
        while True:
            # A sweep every SWEEP_INTERVAL_S however busy: wake-ups must not postpone it for ever.
            wait = (next_sweep - self.clock.now()).total_seconds()
            if wait <= 0 or not await self.clock.wait(self._wake, wait):
                self._sweep = True
            self._wake.clear()
            if self._sweep:
                next_sweep = self.clock.now() + timedelta(seconds=SWEEP_INTERVAL_S)
            await self.link.connected.wait()
            if self._resync is not None:
                reason, self._resync = self._resync, None
                log.info("re-sending every attempt in flight: %s", reason)
                redelivered = await self._retrying(
                    "re-sync", self.store.redeliver, None, now=self.clock.now(), reason=reason
                )
                self.counters.redelivered += len(redelivered)
                await self._send(redelivered)
                self._sweep = True
            serials: list[int] | None
            if self._sweep:
                serials, self._sweep = None, False
                self._dirty.clear()
            else:
                serials = sorted(self._dirty)
                self._dirty.clear()
                if not serials:
                    continue
            while True:
                # Each batch's own now: its sent_at starts the attempt's acknowledgement timeout.
                now = self.clock.now()
                claimed = await self._retrying("claim", self.store.claim_next, serials, now=now)
                self._claimed(claimed, now)
                await self._send(claimed)
                if serials is not None or len(claimed) < CLAIM_BATCH:
                    break

    def _claimed(self, dispatches: Sequence[Dispatch], now: datetime) -> None:
        self.counters.dispatched += len(dispatches)
        for dispatch in dispatches:
            if dispatch.attempt == 1:
                self.metrics.dispatch_latency.observe((now - dispatch.created_at).total_seconds())

    # -- timers --------------------------------------------------------------
    async def _timers(self) -> None:
        while True:
            await self.clock.sleep(TIMER_TICK_S)
            if not self.connected:
                continue  # sensors cannot reach us: their clocks do not run either
            now = self.clock.now()
            expiry = await self._retrying(
                "timeouts", self.store.expire, now=now, ack_timeout_s=self.settings.ack_timeout_s
            )
            self.counters.dispatched += len(expiry.dispatches)
            await self._send(expiry.dispatches)
            self._after(expiry.transitions, expiry.wake, expiry.retries)

    # -- idle ----------------------------------------------------------------
    async def _stop_when_idle(self) -> None:
        while True:
            await self.clock.sleep(IDLE_POLL_S)
            counts = await self.store.counts()
            active = counts[TaskStatus.PENDING] + counts[TaskStatus.ONGOING]
            # The database last: it may hold another process's events the feed never had.
            if active == 0 and self.outbox.idle and not await self.store.unpublished(limit=1):
                self.stop()
                return
