"""The dispatcher: sends each sensor its tasks one at a time and applies what sensors report.

Side tasks, each named and watched by one TaskGroup (one crashing stops the service
loudly): the MQTT link, ``consume`` (status and presence batches), ``dispatch``
(claims the next attempt of sensors that may move on), ``timers`` (acknowledgement
and run timeouts), ``outbox`` (ops events and cancel messages committed with their
transitions) and ``stats``. The database, not memory, says what to send: the in-memory
set of "dirty" sensors only makes things faster, and a periodic sweep catches
everything else (tasks created by another process, back offs that ran out).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError

from sensortasks.config import Settings
from sensortasks.dispatcher.clock import SYSTEM_CLOCK, Clock
from sensortasks.dispatcher.link import Incoming, Link
from sensortasks.domain import TaskStatus
from sensortasks.errors import Unavailable
from sensortasks.metrics import Metrics
from sensortasks.protocol import (
    MAX_PAYLOAD_BYTES,
    CancelMessage,
    DispatcherPresence,
    OpsEvent,
    OpsStats,
    Presence,
    Rejection,
    StatusReport,
    TaskMessage,
)
from sensortasks.store import (
    Dispatch,
    IncomingReport,
    StaleBatch,
    Transition,
    format_time,
)
from sensortasks.store.interface import CLAIM_BATCH, DispatchStore

log = logging.getLogger(__name__)

#: A full look at every sensor's queue, for what no wake-up announced.
SWEEP_INTERVAL_S = 2.0
TIMER_TICK_S = 0.5
OUTBOX_POLL_S = 1.0
#: After a wake-up the outbox waits this long so that one transaction marks many events
#: published (SQLite has one writer; many tiny transactions slow everyone down).
OUTBOX_COALESCE_S = 0.05
#: Incoming messages handled (and committed) together.
MAX_BATCH = 1000
#: Back off after a database failure, doubling up to the maximum.
DB_RETRY_S = 0.1
DB_RETRY_MAX_S = 5.0
REJECTED_COPY_CHARS = 256
IDLE_POLL_S = 0.2

_R = TypeVar("_R")


@dataclass
class Counters:
    """Monotonic counters, read by ``ops/stats`` and ``/metrics``."""

    dispatched: int = 0
    redelivered: int = 0
    reports: int = 0
    transitions: int = 0
    completed: int = 0
    rejected: int = 0
    db_retries: int = 0


def _summary(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "payload"
    return f"{where}: {first['msg']}" + (f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else "")


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
    ) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.store = store
        self.topics = settings.topics
        self.clock = clock
        self.counters = Counters()
        self.instance = settings.instance
        self.link = link
        self._dirty: set[int] = set()
        self._sweep = True
        self._resync = False
        self._wake = asyncio.Event()
        self._outbox_wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Serves ``tasks/commands/*`` (installed by the API layer, which owns the rules).
        self.on_command: Callable[[Incoming], Awaitable[None]] | None = None

    # -- public --------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self.link.connected.is_set()

    def kick(self, serials: Iterable[int]) -> None:
        """These sensors' queues may move on (new task, finished task, sensor back)."""
        self._dirty.update(serials)
        self._wake.set()

    def notify_outbox(self) -> None:
        """New transitions were committed (e.g. a cancel through the API): publish them soon."""
        self._outbox_wake.set()

    def stop(self) -> None:
        self._stop.set()

    async def run(self, *, until_idle: bool = False) -> None:
        """Run until `stop()` (or, with `until_idle`, until no task is Pending or Ongoing)."""
        self._loop = asyncio.get_running_loop()
        async with asyncio.TaskGroup() as group:
            link = group.create_task(self.link.run(self._on_connect), name="mqtt-link")
            workers = [
                group.create_task(coro, name=name)
                for name, coro in (
                    ("consume", self._consume()),
                    ("dispatch", self._dispatch_loop()),
                    ("timers", self._timers()),
                    ("outbox", self._outbox()),
                    ("stats", self._stats()),
                )
            ]
            if until_idle:
                workers.append(group.create_task(self._stop_when_idle(), name="idle"))
            await self._stop.wait()
            log.info("dispatcher %s stopping", self.instance)
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            await self._publish_presence(online=False)
            link.cancel()
        log.info("dispatcher %s stopped", self.instance)

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
        self._resync = True
        self._wake.set()
        self._outbox_wake.set()

    async def _retrying(self, what: str, action: Callable[..., Awaitable[_R]], *args: Any, **kwargs: Any) -> _R:  # noqa: ANN401
        """Run a database action until it succeeds: a locked or unreachable database slows
        the dispatcher down instead of crashing it or dropping work."""
        delay = DB_RETRY_S
        while True:
            try:
                return await action(*args, **kwargs)
            except (SQLAlchemyError, StaleBatch, OSError) as exc:
                self.counters.db_retries += 1
                log.warning("%s failed (%s: %s); retrying in %.1f s", what, type(exc).__name__, exc, delay)
            await self.clock.sleep(delay)
            delay = min(delay * 2, DB_RETRY_MAX_S)

    def _after(
        self, transitions: Sequence[Transition], wake: Iterable[int], retries: Iterable[tuple[int, float]]
    ) -> None:
        self.counters.transitions += len(transitions)
        self.counters.completed += sum(t.target is TaskStatus.COMPLETED for t in transitions)
        if transitions:
            self._outbox_wake.set()
        self.kick(wake)
        for serial, delay in retries:
            self.clock.call_later(delay, self.kick, (serial,))

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
            log.debug("sent %d task message(s)", len(messages))

    async def reject(self, rejections: Sequence[tuple[str, bytes, str]]) -> None:
        """Count, log and publish refused messages on ``ops/rejected`` with a truncated copy."""
        self.counters.rejected += len(rejections)
        at = format_time(self.clock.now()) or ""
        messages = []
        for topic, payload, reason in rejections:
            log.info("rejected message on %s: %s", topic, reason)
            copy = payload[:REJECTED_COPY_CHARS].decode("utf-8", errors="replace")
            messages.append(
                (self.topics.ops_rejected, Rejection(topic=topic, reason=reason, payload=copy, at=at).to_json())
            )
        await self.link.publish_many(messages)

    # -- consume -----------------------------------------------------------
    async def _consume(self) -> None:
        queue = self.link.messages
        while True:
            batch = [await queue.get()]
            while len(batch) < MAX_BATCH and not queue.empty():
                batch.append(queue.get_nowait())
            await self._handle(batch)
            self.link.ack(batch)

    async def _handle(self, batch: Sequence[Incoming]) -> None:  # noqa: PLR0912
        reports: list[IncomingReport] = []
        origin: dict[int, Incoming] = {}  # id(report) -> its message, to quote refusals
        presence: list[tuple[int, bool]] = []
        back_online: list[int] = []
        commands: list[Incoming] = []
        rejections: list[tuple[str, bytes, str]] = []
        for message in batch:
            topic = self.topics.parse_sensor(message.topic)
            if self.topics.parse_command(message.topic) is not None and self.on_command is not None:
                commands.append(message)
            elif len(message.payload) > MAX_PAYLOAD_BYTES:
                size = len(message.payload)
                rejections.append(
                    (message.topic, message.payload, f"payload too large ({size} > {MAX_PAYLOAD_BYTES} bytes)")
                )
            elif topic is None or topic.channel == "tasks":
                rejections.append((message.topic, message.payload, "not a topic the dispatcher reads"))
            elif topic.channel == "status":
                try:
                    report = StatusReport.model_validate_json(message.payload)
                except ValidationError as exc:
                    rejections.append((message.topic, message.payload, f"malformed status: {_summary(exc)}"))
                    continue
                incoming = IncomingReport(
                    topic.serial,
                    report.task_id,
                    report.attempt,
                    report.status,
                    report.progress,
                    report.result,
                    report.error,
                    report.retryable,
                )
                reports.append(incoming)
                origin[id(incoming)] = message
            else:
                try:
                    online = Presence.model_validate_json(message.payload).online
                except ValidationError as exc:
                    rejections.append((message.topic, message.payload, f"malformed presence: {_summary(exc)}"))
                    continue
                presence.append((topic.serial, online))
                # A retained copy is the broker replaying history on our subscribe; the
                # reconnect re-sync covers those sensors. A fresh "online" is a (re)boot.
                if online and not message.retain:
                    back_online.append(topic.serial)
        now = self.clock.now()
        if presence:
            await self._retrying("presence", self.store.record_presence, presence, now=now)
        if reports:
            self.counters.reports += len(reports)
            result = await self._retrying("status batch", self.store.apply_reports, reports, now=now)
            for refusal in result.refused:
                message = origin[id(refusal.report)]
                rejections.append((message.topic, message.payload, refusal.reason))
            self._after(result.transitions, result.wake, result.retries)
        if back_online:
            serials = sorted(set(back_online))
            redelivered = await self._retrying(
                "redeliver", self.store.redeliver, serials, now=now, reason="sensor came online"
            )
            self.counters.redelivered += len(redelivered)
            await self._send(redelivered)
            self.kick(serials)
        if rejections:
            await self.reject(rejections)
        for command in commands:
            await self.on_command(command)  # type: ignore[misc]

    # -- dispatch ------------------------------------------------------------
    async def _dispatch_loop(self) -> None:
        while True:
            if not await self.clock.wait(self._wake, SWEEP_INTERVAL_S):
                self._sweep = True
            self._wake.clear()
            await self.link.connected.wait()
            now = self.clock.now()
            if self._resync:
                self._resync = False
                redelivered = await self._retrying(
                    "re-sync", self.store.redeliver, None, now=now, reason="dispatcher (re)connected"
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
                claimed = await self._retrying("claim", self.store.claim_next, serials, now=now)
                self.counters.dispatched += len(claimed)
                for dispatch in claimed:
                    if dispatch.attempt == 1:
                        self.metrics.dispatch_latency.observe((now - dispatch.created_at).total_seconds())
                await self._send(claimed)
                if serials is not None or len(claimed) < CLAIM_BATCH:
                    break

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

    # -- outbox --------------------------------------------------------------
    async def _outbox(self) -> None:
        while True:
            if await self.clock.wait(self._outbox_wake, OUTBOX_POLL_S):
                await self.clock.sleep(OUTBOX_COALESCE_S)
            self._outbox_wake.clear()
            await self.link.connected.wait()
            pending = await self._retrying("outbox", self.store.unpublished, limit=CLAIM_BATCH)
            if not pending:
                continue
            cancels = [
                (self.topics.tasks(t.sensor_serial), CancelMessage(task_id=t.task_id).to_json())
                for _, t in pending
                if t.target is TaskStatus.CANCELLED and t.attempt > 0
            ]
            events = [(self.topics.ops_event(t.sensor_serial, t.task_id), _event_json(t)) for _, t in pending]
            # Cancels first: the sensor must hear of the cancel before its next task.
            sent = await self.link.publish_many(cancels) + await self.link.publish_many(events)
            if sent < len(cancels) + len(events):
                continue  # broker went away: publish them all again later (consumers dedupe)
            ids = [event_id for event_id, _ in pending]
            await self._retrying("outbox mark", self.store.mark_published, ids)
            self.kick(t.sensor_serial for _, t in pending if t.target.terminal)
            if len(pending) == CLAIM_BATCH:
                self._outbox_wake.set()

    # -- stats ---------------------------------------------------------------
    async def _stats(self) -> None:
        interval = self.settings.stats_interval_s
        last = (self.counters.dispatched, self.counters.completed)
        while True:
            await self.clock.sleep(interval)
            if not self.connected:
                continue
            try:
                counts = await self.store.counts()
                online = await self.store.sensors_online()
            except SQLAlchemyError as exc:
                log.warning("stats skipped: %s", exc)
                continue
            now = (self.counters.dispatched, self.counters.completed)
            stats = OpsStats(
                instance=self.instance,
                at=format_time(self.clock.now()) or "",
                tasks={status.label: n for status, n in counts.items()},
                dispatch_rate=round((now[0] - last[0]) / interval, 2),
                complete_rate=round((now[1] - last[1]) / interval, 2),
                sensors_online=online,
                rejected=self.counters.rejected,
            )
            last = now
            try:
                await self.link.publish(self.topics.ops_stats, stats.to_json(), retain=True)
            except Unavailable:
                continue

    async def _stop_when_idle(self) -> None:
        while True:
            await self.clock.sleep(IDLE_POLL_S)
            counts = await self.store.counts()
            active = counts[TaskStatus.PENDING] + counts[TaskStatus.ONGOING]
            if active == 0 and not await self.store.unpublished(limit=1):
                self.stop()
                return


def _event_json(t: Transition) -> bytes:
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
        }
    ).to_json()
