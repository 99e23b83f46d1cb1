"""The pure task lifecycle: the transition table holds under any sequence of inputs."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sensortasks.domain import TERMINAL, TRANSITIONS, RetryPolicy, TaskState, TaskStatus, can_transition
from sensortasks.domain import lifecycle as lc

POLICY = RetryPolicy(backoff_s=1, backoff_max_s=8)


def sent(attempt: int = 1, max_attempts: int = 3, status: TaskStatus = TaskStatus.PENDING) -> TaskState:
    return TaskState(status, attempt, max_attempts, in_flight=True)


def test_seed_ids_and_names() -> None:
    assert {s.value: s.label for s in TaskStatus} == {
        1: "Pending",
        2: "Completed",
        3: "Error",
        4: "Ongoing",
        5: "Cancelled",
    }
    assert {TaskStatus.COMPLETED, TaskStatus.ERROR, TaskStatus.CANCELLED} == TERMINAL


@pytest.mark.parametrize(("text", "status"), [("2", TaskStatus.COMPLETED), ("completed", TaskStatus.COMPLETED),
                                              (" Ongoing ", TaskStatus.ONGOING), ("CANCELLED", TaskStatus.CANCELLED)])  # fmt: skip
def test_status_parse(text: str, status: TaskStatus) -> None:
    assert TaskStatus.parse(text) is status


@pytest.mark.parametrize("text", ["6", "0", "done", "", "-1", "١", "３"])
def test_status_parse_refuses_unknown(text: str) -> None:
    with pytest.raises(ValueError):
        TaskStatus.parse(text)


def test_transition_table_is_the_spec() -> None:
    edges = {(a.label, b.label) for a, targets in TRANSITIONS.items() for b in targets}
    assert edges == {
        ("Pending", "Ongoing"), ("Pending", "Cancelled"), ("Pending", "Error"),
        ("Ongoing", "Completed"), ("Ongoing", "Error"), ("Ongoing", "Pending"), ("Ongoing", "Cancelled"),
    }  # fmt: skip


def test_completed_report_on_a_sent_task_passes_through_ongoing() -> None:
    outcome = lc.apply_report(sent(), attempt=1, status="completed", policy=POLICY)
    assert [(s.source, s.target) for s in outcome.steps] == [
        (TaskStatus.PENDING, TaskStatus.ONGOING),
        (TaskStatus.ONGOING, TaskStatus.COMPLETED),
    ]


def test_retryable_error_schedules_a_retry_with_backoff() -> None:
    outcome = lc.apply_report(sent(2, status=TaskStatus.ONGOING), attempt=2, status="error", policy=POLICY)
    assert outcome.state.status is TaskStatus.PENDING
    assert not outcome.state.in_flight
    assert outcome.retry_delay_s == 2.0


def test_non_retryable_and_last_attempt_errors_are_final() -> None:
    fatal = lc.apply_report(sent(status=TaskStatus.ONGOING), attempt=1, status="error", retryable=False, policy=POLICY)
    last = lc.apply_report(sent(3, status=TaskStatus.ONGOING), attempt=3, status="error", policy=POLICY)
    assert fatal.state.status is TaskStatus.ERROR
    assert last.state.status is TaskStatus.ERROR
    assert "not retryable" in fatal.steps[-1].reason
    assert "attempts used up" in last.steps[-1].reason


@pytest.mark.parametrize(("attempt", "reason"), [(1, "stale attempt 1"), (3, "unknown attempt 3")])
def test_reports_for_other_attempts_are_ignored(attempt: int, reason: str) -> None:
    outcome = lc.apply_report(sent(2), attempt=attempt, status="completed", policy=POLICY)
    assert outcome.ignored is not None
    assert outcome.ignored.startswith(reason)
    assert outcome.state == sent(2)


def test_ack_timeout_resends_then_errors() -> None:
    first = lc.ack_timeout(sent(1, 2))
    assert first.resend
    assert first.state.attempt_count == 2
    final = lc.ack_timeout(first.state)
    assert final.state.status is TaskStatus.ERROR
    assert final.steps[-1].reason == "not acknowledged after 2 attempt(s)"


def test_cancel_rules() -> None:
    assert lc.cancel(sent()).state.status is TaskStatus.CANCELLED
    assert lc.cancel(replace(sent(), status=TaskStatus.CANCELLED)).steps == ()
    assert lc.cancel(replace(sent(), status=TaskStatus.COMPLETED)).ignored == "task is already Completed"


# -- properties ------------------------------------------------------------------------
reports = st.tuples(
    st.just("report"),
    st.integers(min_value=1, max_value=5),
    st.sampled_from(["ongoing", "completed", "error"]),
    st.booleans(),
)
events = st.one_of(reports, st.just(("ack",)), st.just(("run",)), st.just(("cancel",)), st.just(("send",)))


def _apply(state: TaskState, event: tuple[object, ...]) -> lc.Outcome:
    match event:
        case ("report", int(attempt), str(status), bool(retryable)):
            return lc.apply_report(state, attempt=attempt, status=status, retryable=retryable, policy=POLICY)  # type: ignore[arg-type]
        case ("ack",):
            return lc.ack_timeout(state)
        case ("run",):
            return lc.run_timeout(state, POLICY)
        case ("cancel",):
            return lc.cancel(state)
        case _:  # the dispatcher starts the next attempt of a Pending task not in flight
            if state.status is TaskStatus.PENDING and not state.in_flight and state.attempt_count < state.max_attempts:
                return lc.Outcome(replace(state, attempt_count=state.attempt_count + 1, in_flight=True), resend=True)
            return lc.Outcome(state)


@settings(max_examples=400, deadline=None)
@given(max_attempts=st.integers(min_value=1, max_value=4), sequence=st.lists(events, max_size=40))
def test_no_sequence_leaves_the_table_or_a_terminal_state(
    max_attempts: int, sequence: list[tuple[object, ...]]
) -> None:
    state = TaskState(TaskStatus.PENDING, 0, max_attempts, in_flight=False)
    for event in sequence:
        outcome = _apply(state, event)
        current = state.status
        for step in outcome.steps:
            assert step.source is current
            assert can_transition(step.source, step.target)
            current = step.target
        assert outcome.state.status is current
        if state.status.terminal:
            assert outcome.state == state
        if outcome.ignored is not None:
            assert outcome.state == state
            assert outcome.steps == ()
        assert state.attempt_count <= outcome.state.attempt_count <= max_attempts
        state = outcome.state


@settings(max_examples=300, deadline=None)
@given(
    attempt=st.integers(min_value=1, max_value=3),
    status=st.sampled_from([TaskStatus.PENDING, TaskStatus.ONGOING]),
    report=st.sampled_from(["ongoing", "completed", "error"]),
    retryable=st.booleans(),
)
def test_the_same_report_twice_is_a_no_op(attempt: int, status: TaskStatus, report: str, retryable: bool) -> None:
    state = sent(attempt, 3, status)
    first = lc.apply_report(state, attempt=attempt, status=report, retryable=retryable, policy=POLICY)  # type: ignore[arg-type]
    second = lc.apply_report(first.state, attempt=attempt, status=report, retryable=retryable, policy=POLICY)  # type: ignore[arg-type]
    assert second.steps == ()
    assert second.state == first.state


@given(attempts=st.lists(st.integers(min_value=1, max_value=64), min_size=2))
def test_backoff_is_monotone_and_capped(attempts: list[int]) -> None:
    delays = [POLICY.delay(a) for a in sorted(attempts)]
    assert delays == sorted(delays)
    assert all(0 < d <= POLICY.backoff_max_s for d in delays)


@settings(max_examples=300, deadline=None)
@given(
    max_attempts=st.integers(min_value=1, max_value=4),
    history=st.lists(events, max_size=30),
    report=reports,
)
def test_a_duplicate_report_is_a_no_op_from_any_reachable_state(
    max_attempts: int, history: list[tuple[object, ...]], report: tuple[object, ...]
) -> None:
    state = TaskState(TaskStatus.PENDING, 0, max_attempts, in_flight=False)
    for event in history:
        state = _apply(state, event).state
    first = _apply(state, report)
    second = _apply(first.state, report)
    assert second.steps == ()
    assert not second.changed
    assert second.state == first.state
    assert second.retry_delay_s is None
