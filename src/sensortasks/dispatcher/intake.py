"""Sorting a batch of received messages into what to apply, to refuse and to answer.

Pure (no I/O), so that the order of the checks is in one place:

1. MQTT 5 properties within bounds (`protocol.properties`), on every topic: else ``bad_property``.
2. ``tasks/commands/<verb>`` goes to the command handler (which answers, unknown verbs too).
3. A status that arrives *retained* is refused (``retained_status``) and its topic is to be
   cleared: a retained status would be replayed to every new subscriber, at every
   dispatcher restart. The dispatcher sees the flag on statuses stored before it
   subscribed (the broker replays them, flagged) and, because it subscribes to statuses
   with Retain As Published, on live ones too. An *empty* retained message is a clear
   (ours, or the sensor's own) and is ignored.
4. Size, topic and payload (``oversized``, ``wrong_topic``, ``malformed``); ``"v"`` is required.

`isolate` keeps one bad message from taking its batch (or the worker) down with it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from pydantic import ValidationError

from sensortasks.dispatcher.link import Incoming
from sensortasks.ops.metrics import Counters
from sensortasks.protocol import MAX_PAYLOAD_BYTES, Presence, Rejection, StatusReport, Topics
from sensortasks.protocol.messages import RejectCode
from sensortasks.protocol.properties import properties_problem
from sensortasks.store import IncomingReport

log = logging.getLogger(__name__)

REJECTED_COPY_CHARS = 256
#: Topics are quoted this far in logs and on ``ops/rejected`` (a hostile one may be 64 KiB).
QUOTED_TOPIC_CHARS = 256


@dataclass(frozen=True, slots=True)
class Refused:
    """A message the dispatcher does not act on, for ``ops/rejected``."""

    topic: str
    payload: bytes
    code: RejectCode
    reason: str

    @classmethod
    def of(cls, message: Incoming, code: RejectCode, reason: str) -> Refused:
        return cls(message.topic, message.payload, code, reason)


@dataclass
class Intake:
    reports: list[IncomingReport] = field(default_factory=list)
    #: id(report) -> the message it came in, to quote it if the store refuses it.
    origin: dict[int, Incoming] = field(default_factory=dict)
    #: (serial, online, when it was heard: None if the link does not say).
    presence: list[tuple[int, bool, datetime | None]] = field(default_factory=list)
    #: Sensors that announced a fresh "online": a (re)boot, their task in flight is re-sent.
    back_online: list[int] = field(default_factory=list)
    commands: list[Incoming] = field(default_factory=list)
    refused: list[Refused] = field(default_factory=list)
    #: Status topics that hold a retained message, to be cleared.
    clear: list[str] = field(default_factory=list)


def rejection(refused: Refused, topic: str, at: str, counters: Counters) -> tuple[str, bytes]:
    """The ``ops/rejected`` message (on `topic`) for a refused message, counted and logged."""
    counters.rejected[refused.code] += 1
    quoted = refused.topic[:QUOTED_TOPIC_CHARS]
    log.info("rejected message on %s (%s): %s", quoted, refused.code, refused.reason)
    copy = refused.payload[:REJECTED_COPY_CHARS].decode("utf-8", errors="replace")
    return topic, Rejection(topic=quoted, reason=refused.reason, payload=copy, at=at, code=refused.code).to_json()


def summary(exc: ValidationError) -> str:
    """The first validation error, in one line."""
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "payload"
    more = exc.error_count() - 1
    return f"{where}: {first['msg']}" + (f" (+{more} more)" if more else "")


def envelope_problem(message: Incoming) -> str | None:
    """What is wrong with the message's MQTT 5 properties (most messages have none)."""
    bare = message.response_topic is None and message.correlation_data is None and message.content_type is None
    if bare and not message.user_properties:
        return None
    return properties_problem(
        response_topic=message.response_topic,
        correlation_data=message.correlation_data,
        user_properties=message.user_properties,
        content_type=message.content_type,
    )


def sort_batch(batch: Sequence[Incoming], topics: Topics, *, commands: bool) -> Intake:
    intake = Intake()
    command_prefix = topics.commands + "/"
    for message in batch:
        if (problem := envelope_problem(message)) is not None:
            intake.refused.append(Refused.of(message, "bad_property", problem))
            continue
        if commands and message.topic.startswith(command_prefix):
            intake.commands.append(message)
            continue
        topic = topics.parse_sensor(message.topic)
        if topic is not None and topic.channel == "status" and message.retain:
            if message.payload:
                intake.refused.append(Refused.of(message, "retained_status", "status published retained; cleared"))
                intake.clear.append(message.topic)
            continue
        size = len(message.payload)
        if size > MAX_PAYLOAD_BYTES:
            reason = f"payload too large ({size} > {MAX_PAYLOAD_BYTES} bytes)"
            intake.refused.append(Refused.of(message, "oversized", reason))
        elif topic is None or topic.channel == "tasks":
            intake.refused.append(Refused.of(message, "wrong_topic", "not a topic the dispatcher reads"))
        elif topic.channel == "status":
            try:
                report = StatusReport.from_wire(message.payload)
            except ValidationError as exc:
                intake.refused.append(Refused.of(message, "malformed", f"malformed status: {summary(exc)}"))
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
            intake.reports.append(incoming)
            intake.origin[id(incoming)] = message
        else:
            try:
                online = Presence.from_wire(message.payload).online
            except ValidationError as exc:
                intake.refused.append(Refused.of(message, "malformed", f"malformed presence: {summary(exc)}"))
                continue
            intake.presence.append((topic.serial, online, message.heard_at))
            # A retained copy is the broker replaying history on our subscribe; the
            # reconnect re-sync covers those sensors. A fresh "online" is a (re)boot.
            if online and not message.retain:
                intake.back_online.append(topic.serial)
    return intake


async def isolate(
    batch: Sequence[Incoming],
    handle: Callable[[Sequence[Incoming]], Awaitable[None]],
    refuse: Callable[[Incoming, Exception], Awaitable[None]],
) -> None:
    """`handle` the batch; if that raises, each message alone, and `refuse` those that raise.

    The happy path stays batched (reports are applied in one transaction). Retrying is
    safe: applying a report twice is a no-op, and commands (not idempotent) are handled
    last, one at a time, by a handler that does not raise.
    """
    try:
        await handle(batch)
    except Exception as exc:  # one bad message must not stop the worker
        if len(batch) == 1:
            await refuse(batch[0], exc)
            return
        log.warning("a batch of %d messages failed (%s); handling them one at a time", len(batch), exc)
    else:
        return
    for message in batch:
        try:
            await handle([message])
        except Exception as exc:
            await refuse(message, exc)
