"""The soak's verdict: the whole history read back from the database and the promises of
SPEC 2.3, 5 and 7 checked on it, whichever instance wrote it.

Order is judged on the event history, in event id order. That order is causal: an instance
can only act on a transition after it was committed, and ids are drawn before the commit,
so an event written because of another always has the larger id.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from sensortasks.domain import TaskStatus
from sensortasks.store import Task, TaskEvent, open_database

TASKS = Task.__table__  # type: ignore[attr-defined]
EVENTS = TaskEvent.__table__  # type: ignore[attr-defined]


@dataclass
class Audit:
    statuses: Counter[str] = field(default_factory=Counter)
    #: Accepted (201) but missing or not terminal.
    lost: int = 0
    completed_twice: int = 0
    #: (task, attempt) pairs with more than one "sent" event: two instances sent one attempt.
    sent_twice: int = 0
    #: Sends that broke per-sensor order (`out_of_order`).
    out_of_order: int = 0
    attempts_mismatch: int = 0
    #: What the lost tasks were left at ("Pending, last event: sent 'first attempt'") -> how many.
    lost_states: Counter[str] = field(default_factory=Counter)
    lost_sensors: set[int] = field(default_factory=set)
    durations: list[float] = field(default_factory=list)

    @property
    def broken(self) -> bool:
        """A promise was broken (the attempts mismatch is a figure, not a promise)."""
        return bool(self.lost or self.completed_twice or self.sent_twice or self.out_of_order)


async def audit(url: str, accepted: Mapping[int, float]) -> Audit:
    """Audit the database at `url`; `accepted` maps each task id the API accepted to the
    (wall clock) time its 201 arrived."""
    db = open_database(url)
    try:
        async with db.reader.connect() as conn:
            tasks = {r.id: r for r in await conn.execute(select(TASKS))}
            events = (await conn.execute(select(EVENTS).order_by(EVENTS.c.id))).all()
    finally:
        await db.dispose()
    result = Audit()
    completions: Counter[int] = Counter()
    sent: Counter[int] = Counter()
    sent_attempts: Counter[tuple[int, int]] = Counter()
    finished_at: dict[int, float] = {}
    last: dict[int, Any] = {}
    for event in events:
        last[event.task_id] = event
        if event.kind == "sent":
            sent[event.task_id] += 1
            sent_attempts[event.task_id, event.attempt] += 1
        if event.kind == "transition" and event.to_status == TaskStatus.COMPLETED:
            completions[event.task_id] += 1
            finished_at[event.task_id] = event.at.timestamp()
    for task_id, task in tasks.items():
        status = TaskStatus(task.status_id)
        result.statuses[status.label] += 1
        if task_id in accepted and not status.terminal:
            result.lost += 1
            result.lost_sensors.add(task.sensor_serial)
            final = last[task_id]
            result.lost_states[f"{status.label}, last event: {final.kind} {final.reason!r}"] += 1
        result.attempts_mismatch += task.attempt_count != sent[task_id]
        if task_id in finished_at:
            result.durations.append(finished_at[task_id] - task.created_at.timestamp())
    missing = len(accepted.keys() - tasks.keys())
    result.lost += missing
    if missing:
        result.lost_states["not in the database"] = missing
    result.completed_twice = sum(1 for n in completions.values() if n > 1)
    result.sent_twice = sum(1 for n in sent_attempts.values() if n > 1)
    result.out_of_order = out_of_order(tasks, events, accepted)
    return result


def out_of_order(tasks: Mapping[int, Any], events: Sequence[Any], accepted: Mapping[int, float]) -> int:
    """Sends (new attempts) made while another task of the same sensor was not terminal and
    either had been sent already (one at a time) or had been accepted before this one was
    even created (oldest first: the dispatcher could not miss it). A task accepted while
    this one was being created is not judged: which of the two is older is then a matter of
    commit order, which the tool cannot see."""
    by_sensor: defaultdict[int, list[int]] = defaultdict(list)
    for task_id, task in tasks.items():
        by_sensor[task.sensor_serial].append(task_id)
    terminal: set[int] = set()
    sent: set[int] = set()
    broken = 0
    for event in events:
        task = tasks.get(event.task_id)
        if task is None:
            continue
        if event.kind == "sent":
            created = task.created_at.timestamp()
            broken += any(
                other != event.task_id
                and other not in terminal
                and (other in sent or accepted.get(other, math.inf) < created)
                for other in by_sensor[task.sensor_serial]
            )
            sent.add(event.task_id)
        elif event.kind == "transition" and TaskStatus(event.to_status).terminal:
            terminal.add(event.task_id)
    return broken
