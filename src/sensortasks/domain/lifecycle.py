"""What a sensor report, a timeout or a cancel does to a task: pure decisions.

The store loads a `TaskState`, asks one of these functions for an `Outcome` and writes
it with a conditional UPDATE guarded on the state it loaded, so a race or a replay
becomes a no-op instead of a corruption. Every `Step` is a legal edge of
`TRANSITIONS`; a report that would need an illegal one is ignored with a reason.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from sensortasks.domain.retry import RetryPolicy
from sensortasks.domain.status import TaskStatus, can_transition

ReportStatus = Literal["ongoing", "completed", "error"]


@dataclass(frozen=True, slots=True)
class TaskState:
    status: TaskStatus
    attempt_count: int
    max_attempts: int
    #: The current attempt has been sent to the sensor and has not finished.
    in_flight: bool


@dataclass(frozen=True, slots=True)
class Step:
    """One applied transition."""

    source: TaskStatus
    target: TaskStatus
    reason: str


@dataclass(frozen=True, slots=True)
class Outcome:
    state: TaskState
    steps: tuple[Step, ...] = ()
    #: Why the input was not applied (recorded in the task's events); None if applied.
    ignored: str | None = None
    #: Set when a retry was scheduled: wait this long before the next attempt.
    retry_delay_s: float | None = None
    #: Set when a new attempt must be sent right away (acknowledgement timeout).
    resend: bool = False

    @property
    def changed(self) -> bool:
        return bool(self.steps) or self.resend


def _step(state: TaskState, target: TaskStatus, reason: str) -> tuple[TaskState, Step]:
    assert can_transition(state.status, target), (state.status, target)  # noqa: S101
    in_flight = target in (TaskStatus.PENDING, TaskStatus.ONGOING) and state.in_flight
    if target is TaskStatus.PENDING:
        in_flight = False
    return replace(state, status=target, in_flight=in_flight), Step(state.status, target, reason)


def _fail(state: TaskState, policy: RetryPolicy, reason: str, *, retryable: bool) -> Outcome:
    """Attempt `state.attempt_count` failed while Ongoing: retry later, or Error for good."""
    decision = policy.decide(state.attempt_count, state.max_attempts, retryable=retryable)
    if decision.retry:
        new, step = _step(state, TaskStatus.PENDING, f"retry: {reason}")
        return Outcome(new, (step,), retry_delay_s=decision.delay_s)
    if not retryable:
        reason = f"{reason} (not retryable)"
    elif state.attempt_count >= state.max_attempts:
        reason = f"{reason} (attempts used up: {state.attempt_count}/{state.max_attempts})"
    new, step = _step(state, TaskStatus.ERROR, reason)
    return Outcome(new, (step,))


def apply_report(
    state: TaskState,
    *,
    attempt: int,
    status: ReportStatus,
    error: str | None = None,
    retryable: bool = True,
    policy: RetryPolicy,
) -> Outcome:
    """Apply a sensor's status report for attempt `attempt`.

    A terminal report for an attempt that is in flight but not yet Ongoing (the
    sensor finished before its "ongoing" arrived) passes through Ongoing first, as
    two recorded legal steps.
    """
    if state.status.terminal:
        return Outcome(state, ignored=f"task is already {state.status.label}")
    if attempt < state.attempt_count:
        return Outcome(state, ignored=f"stale attempt {attempt} (current {state.attempt_count})")
    if attempt > state.attempt_count:
        return Outcome(state, ignored=f"unknown attempt {attempt} (current {state.attempt_count})")
    if not state.in_flight:
        return Outcome(state, ignored=f"attempt {attempt} is not in flight")

    steps: tuple[Step, ...] = ()
    if state.status is TaskStatus.PENDING:
        state, first = _step(state, TaskStatus.ONGOING, "picked up by the sensor")
        steps = (first,)
        if status == "ongoing":
            return Outcome(state, steps)
    elif status == "ongoing":
        return Outcome(state)  # progress or heartbeat: no transition

    if status == "completed":
        state, last = _step(state, TaskStatus.COMPLETED, "completed by the sensor")
        return Outcome(state, (*steps, last))
    failed = _fail(state, policy, f"sensor error: {error or 'unspecified'}", retryable=retryable)
    return replace(failed, steps=(*steps, *failed.steps))


def ack_timeout(state: TaskState) -> Outcome:
    """The current attempt was sent but not acknowledged in time."""
    if state.status is not TaskStatus.PENDING or not state.in_flight:
        return Outcome(state, ignored="not awaiting an acknowledgement")
    if state.attempt_count < state.max_attempts:
        return Outcome(replace(state, attempt_count=state.attempt_count + 1), resend=True)
    new, step = _step(
        state,
        TaskStatus.ERROR,
        f"not acknowledged after {state.attempt_count} attempt(s)",
    )
    return Outcome(new, (step,))


def run_timeout(state: TaskState, policy: RetryPolicy) -> Outcome:
    """An Ongoing attempt ran past the task's `timeout_s` without a terminal report."""
    if state.status is not TaskStatus.ONGOING:
        return Outcome(state, ignored="not ongoing")
    return _fail(state, policy, "timed out", retryable=True)


def cancel(state: TaskState) -> Outcome:
    if state.status is TaskStatus.CANCELLED:
        return Outcome(state)
    if state.status.terminal:
        return Outcome(state, ignored=f"task is already {state.status.label}")
    new, step = _step(state, TaskStatus.CANCELLED, "cancelled by the customer")
    return Outcome(new, (step,))
