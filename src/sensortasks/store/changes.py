"""What one store transaction does to task rows: pure, no SQL.

The domain (`sensortasks.domain.lifecycle`) decides; `Changes` turns each decision into
column values, task events (the outbox) and what the dispatcher must hear (messages to
send, sensors to wake, retries to schedule). `TaskStore` writes the result with guarded
UPDATEs; `sensortasks.testing.InMemoryStore` keeps it in dicts, so both stores give a
decision the same effects.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sensortasks.domain import RetryPolicy, TaskState, TaskStatus
from sensortasks.domain import lifecycle as lc
from sensortasks.errors import Conflict
from sensortasks.store.records import Dispatch, Expiry, IncomingReport, NewTask, Refusal, ReportBatchResult, Transition

#: Longest reason kept in a task event (the column's limit).
REASON_CHARS = 1100


def task_row(task: NewTask, *, customer_id: int | None, now: datetime) -> dict[str, Any]:
    """The columns of a new task: Pending, no attempt yet."""
    return {
        "customer_id": customer_id,
        "sensor_serial": task.sensor_serial,
        "type": task.type,
        "file_id": task.file_id,
        "max_attempts": task.max_attempts,
        "timeout_s": task.timeout_s,
        "status_id": TaskStatus.PENDING,
        "attempt_count": 0,
        "created_at": now,
        "updated_at": now,
        "rollout_id": task.rollout_id,
    }


def event_row(
    task_id: int,
    at: datetime,
    kind: str,
    attempt: int,
    reason: str | None,
    *,
    from_status: TaskStatus | None = None,
    to_status: TaskStatus | None = None,
    published: bool = True,
) -> dict[str, Any]:
    """A task event; transitions are written unpublished, for the outbox."""
    return {
        "task_id": task_id,
        "at": at,
        "kind": kind,
        "from_status": from_status,
        "to_status": to_status,
        "attempt": attempt,
        "reason": reason[:REASON_CHARS] if reason else reason,
        "published": published,
    }


def created_event(task_id: int, now: datetime) -> dict[str, Any]:
    return event_row(task_id, now, "transition", 0, "created", to_status=TaskStatus.PENDING, published=False)


#: Statuses by id: `TaskStatus(id)` goes through the enum's metaclass, 1 µs a call.
_STATUS = {int(status): status for status in TaskStatus}


def transition_of(
    event: Mapping[Any, Any], sensor_serial: int, task_type: str, rollout_id: int | None = None
) -> Transition:
    """A stored transition event as the outbox publishes it."""
    source = event["from_status"]
    return Transition(
        event["task_id"],
        sensor_serial,
        task_type,
        None if source is None else _STATUS[source],
        _STATUS[event["to_status"]],
        event["attempt"],
        event["reason"],
        event["at"],
        rollout_id,
    )


@dataclass
class Work:
    """A task row being changed inside one transaction (its loaded values are the guard)."""

    row: dict[str, Any]
    guard_status: int
    guard_attempt: int
    #: The columns set in this transaction: the guarded UPDATE writes only these (SQLite
    #: rewrites every index of a column in the SET list, changed or not).
    dirty: set[str] = field(default_factory=set)

    @classmethod
    def of(cls, values: dict[str, Any]) -> Work:
        return cls(values, values["status_id"], values["attempt_count"])

    @property
    def id(self) -> int:
        return int(self.row["id"])

    @property
    def state(self) -> TaskState:
        status = TaskStatus(self.row["status_id"])
        in_flight = status is TaskStatus.ONGOING or (status is TaskStatus.PENDING and self.row["sent_at"] is not None)
        return TaskState(status, self.row["attempt_count"], self.row["max_attempts"], in_flight)

    @property
    def changed(self) -> bool:
        return bool(self.dirty)

    def set(self, now: datetime, **values: Any) -> None:  # noqa: ANN401
        self.row.update(values, updated_at=now)
        self.dirty.update(values, ("updated_at",))

    def dispatch(self) -> Dispatch:
        r = self.row
        return Dispatch(
            r["id"], r["sensor_serial"], r["type"], r["file_id"], r["attempt_count"], r["timeout_s"], r["created_at"]
        )


@dataclass
class Changes:
    """What one transaction writes: changed rows, events, and what to tell the caller."""

    now: datetime
    works: dict[int, Work] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    transitions: list[Transition] = field(default_factory=list)
    dispatches: list[Dispatch] = field(default_factory=list)
    wake: set[int] = field(default_factory=set)
    retries: list[tuple[int, float]] = field(default_factory=list)
    ignored: int = 0

    def load(self, values: dict[str, Any]) -> Work:
        """The work for a loaded row; a row loaded twice in one transaction is one work."""
        return self.works.setdefault(values["id"], Work.of(values))

    def event(self, work: Work, kind: str, attempt: int, reason: str | None, **extra: Any) -> None:  # noqa: ANN401
        self.events.append(event_row(work.id, self.now, kind, attempt, reason, **extra))

    def claim(self, work: Work) -> None:
        """Send the next attempt of a due head task."""
        attempt = work.row["attempt_count"] + 1
        work.set(self.now, attempt_count=attempt, sent_at=self.now, not_before=None)
        self.event(work, "sent", attempt, "first attempt" if attempt == 1 else "retry")
        self.dispatches.append(work.dispatch())

    def redeliver(self, work: Work, reason: str) -> None:
        """Send the current attempt again; a Pending one gets a fresh acknowledgement clock."""
        if work.row["status_id"] == TaskStatus.PENDING:
            work.set(self.now, sent_at=self.now)
        self.event(work, "redelivered", work.row["attempt_count"], reason)
        self.dispatches.append(work.dispatch())

    def report(self, report: IncomingReport, policy: RetryPolicy) -> Refusal | None:
        """Apply a sensor's report to its loaded task, or say why it is refused outright."""
        work = self.works.get(report.task_id)
        if work is None:
            return Refusal(report, f"unknown task {report.task_id}", "unknown_task")
        if work.row["sensor_serial"] != report.serial:
            return Refusal(report, f"task {report.task_id} belongs to another sensor", "wrong_sensor")
        outcome = lc.apply_report(
            work.state,
            attempt=report.attempt,
            status=report.status,  # type: ignore[arg-type]
            error=report.error,
            retryable=report.retryable,
            policy=policy,
        )
        self.ignored += outcome.ignored is not None
        self.apply(work, outcome, report=report)
        return None

    def expire(self, work: Work, policy: RetryPolicy) -> None:
        """Apply the timeout due on `work`: acknowledgement when Pending, run when Ongoing."""
        state = work.state
        self.apply(work, lc.ack_timeout(state) if state.status is TaskStatus.PENDING else lc.run_timeout(state, policy))

    def cancel(self, work: Work) -> None:
        """Cancel on a customer's request; cancelling a finished task is a `Conflict`."""
        outcome = lc.cancel(work.state)
        if outcome.ignored:
            status = work.state.status
            raise Conflict(
                f"task {work.id} is {status.label} and can no longer be cancelled",
                details={"status_id": status.value, "status_name": status.label},
            )
        self.apply(work, outcome)

    def report_result(self, refused: list[Refusal], claimed: list[Dispatch]) -> ReportBatchResult:
        return ReportBatchResult(self.transitions, refused, self.ignored, self.wake, self.retries, claimed)

    def expiry(self) -> Expiry:
        return Expiry(self.dispatches, self.transitions, self.wake, self.retries)

    def apply(self, work: Work, outcome: lc.Outcome, *, report: IncomingReport | None = None) -> None:
        """Write a domain outcome into the row, the event list and the transitions."""
        now = self.now
        if outcome.ignored is not None:
            what = f"{report.status} report" if report else "request"
            attempt = report.attempt if report else work.row["attempt_count"]
            self.event(work, "ignored", attempt, f"{what} ignored: {outcome.ignored}")
            return
        if outcome.resend:
            work.set(now, attempt_count=outcome.state.attempt_count, sent_at=now, not_before=None)
            self.event(work, "sent", outcome.state.attempt_count, "acknowledgement timeout: new attempt")
            self.dispatches.append(work.dispatch())
        for step in outcome.steps:
            self._step(work, step, outcome, report)
        progress = None if report is None else report.progress
        if progress is not None and work.row["status_id"] == TaskStatus.ONGOING and work.row["progress"] != progress:
            work.set(now, progress=progress)

    def _step(self, work: Work, step: lc.Step, outcome: lc.Outcome, report: IncomingReport | None) -> None:
        now, row = self.now, work.row
        target = step.target
        if target is TaskStatus.ONGOING:
            deadline = now + timedelta(seconds=row["timeout_s"])
            work.set(now, status_id=target, started_at=now, deadline_at=deadline, progress=0)
        elif target is TaskStatus.COMPLETED:
            result = report.result if report else None
            work.set(now, status_id=target, completed_at=now, progress=100, result=result, error=None, deadline_at=None)
        elif target is TaskStatus.PENDING:
            delay_s = outcome.retry_delay_s or 0.0
            not_before = now + timedelta(seconds=delay_s)
            work.set(now, status_id=target, sent_at=None, not_before=not_before, deadline_at=None, error=step.reason)
            self.retries.append((row["sensor_serial"], delay_s))
        else:  # ERROR or CANCELLED
            error = step.reason if target is TaskStatus.ERROR else row["error"]
            work.set(now, status_id=target, completed_at=now, deadline_at=None, error=error)
        if target.terminal or target is TaskStatus.PENDING:
            self.wake.add(row["sensor_serial"])
        attempt = row["attempt_count"]
        self.event(work, "transition", attempt, step.reason, from_status=step.source, to_status=target, published=False)
        self.transitions.append(
            Transition(
                work.id,
                row["sensor_serial"],
                row["type"],
                step.source,
                target,
                attempt,
                step.reason,
                now,
                row.get("rollout_id"),
            )
        )
