"""The sensor's decision rules (sensor/ledger.py), one test per rule, no broker and no event loop."""

from __future__ import annotations

import pytest

from sensortasks.protocol import StatusReport
from sensortasks.sensor import Decision, Ledger, Verdict

TASK = 7


class Run:
    """A stand-in for the client's run handle (compared by identity)."""

    def __init__(self, attempt: int) -> None:
        self.attempt = attempt


def completed(attempt: int, task_id: int = TASK) -> StatusReport:
    return StatusReport(task_id=task_id, attempt=attempt, status="completed", result={"attempt": attempt})


def started(ledger: Ledger[Run], attempt: int, task_id: int = TASK) -> Run:
    run = Run(attempt)
    ledger.start(task_id, attempt, run)
    return run


def finished(ledger: Ledger[Run], attempt: int, task_id: int = TASK) -> StatusReport:
    report = completed(attempt, task_id)
    assert ledger.finish(task_id, started(ledger, attempt, task_id), report)
    return report


def test_an_unknown_task_starts() -> None:
    assert Ledger[Run]().on_task(TASK, 1) == Decision(Verdict.START)


def test_deciding_changes_nothing() -> None:
    ledger = Ledger[Run]()
    ledger.on_task(TASK, 1)
    assert ledger.running == {}
    assert ledger.on_task(TASK, 1).verdict is Verdict.START


def test_a_resent_running_attempt_gets_its_ongoing_report_again() -> None:
    ledger = Ledger[Run]()
    run = started(ledger, 2)
    assert ledger.on_task(TASK, 2) == Decision(Verdict.ONGOING_AGAIN, run=run)


def test_a_newer_attempt_replaces_the_running_one() -> None:
    ledger = Ledger[Run]()
    old = started(ledger, 1)
    assert ledger.on_task(TASK, 2) == Decision(Verdict.REPLACE, run=old)
    new = started(ledger, 2)
    assert ledger.running == {TASK: 2}
    assert not ledger.finish(TASK, old, completed(1))  # the replaced run may not report
    assert ledger.running == {TASK: 2}
    assert ledger.finish(TASK, new, completed(2))


def test_an_older_attempt_than_the_running_one_is_stale() -> None:
    ledger = Ledger[Run]()
    started(ledger, 3)
    assert ledger.on_task(TASK, 2) == Decision(Verdict.STALE)


def test_a_resent_finished_attempt_gets_its_final_report_again() -> None:
    ledger = Ledger[Run]()
    report = finished(ledger, 1)
    assert ledger.running == {}
    assert ledger.on_task(TASK, 1) == Decision(Verdict.FINAL_AGAIN, report=report)


def test_an_older_attempt_than_the_finished_one_is_stale() -> None:
    ledger = Ledger[Run]()
    finished(ledger, 2)
    assert ledger.on_task(TASK, 1) == Decision(Verdict.STALE)


def test_a_newer_attempt_after_a_finished_one_starts() -> None:
    ledger = Ledger[Run]()
    finished(ledger, 1)
    assert ledger.on_task(TASK, 2) == Decision(Verdict.START)


def test_the_finished_outcome_is_consulted_before_the_run_in_progress() -> None:
    """Attempt 1 finished, attempt 2 runs: a re-send of 1 gets 1's final status, of 2 its progress."""
    ledger = Ledger[Run]()
    first = finished(ledger, 1)
    second = started(ledger, 2)
    assert ledger.on_task(TASK, 1) == Decision(Verdict.FINAL_AGAIN, report=first)
    assert ledger.on_task(TASK, 2) == Decision(Verdict.ONGOING_AGAIN, run=second)
    assert ledger.finish(TASK, second, completed(2))
    assert ledger.on_task(TASK, 1) == Decision(Verdict.STALE)


def test_a_cancel_aborts_the_running_attempt_and_silences_it() -> None:
    ledger = Ledger[Run]()
    run = started(ledger, 1)
    assert ledger.on_cancel(TASK) is run
    assert ledger.running == {}
    assert not ledger.finish(TASK, run, completed(1))  # a handler that swallowed the cancel
    assert ledger.on_task(TASK, 1) == Decision(Verdict.CANCELLED)


@pytest.mark.parametrize("attempt", [1, 2, 99])
def test_a_cancelled_task_never_starts_again(attempt: int) -> None:
    ledger = Ledger[Run]()
    assert ledger.on_cancel(TASK) is None  # cancelled before it ever arrived
    assert ledger.on_task(TASK, attempt) == Decision(Verdict.CANCELLED)


def test_a_cancel_after_the_final_status_wins() -> None:
    ledger = Ledger[Run]()
    finished(ledger, 1)
    assert ledger.on_cancel(TASK) is None
    assert ledger.on_task(TASK, 1) == Decision(Verdict.CANCELLED)


def test_a_run_that_ends_without_a_report_is_forgotten() -> None:
    ledger = Ledger[Run]()
    run = started(ledger, 1)
    assert ledger.finish(TASK, run, None)
    assert ledger.running == {}
    assert ledger.on_task(TASK, 1) == Decision(Verdict.START)


def test_dropping_the_runs_returns_them_and_silences_them() -> None:
    ledger = Ledger[Run]()
    runs = [started(ledger, 1, task_id) for task_id in (1, 2, 3)]
    assert ledger.drop_runs() == runs
    assert ledger.running == {}
    assert not any(
        ledger.finish(task_id, run, completed(1, task_id)) for task_id, run in zip((1, 2, 3), runs, strict=True)
    )
    assert ledger.on_task(1, 1).verdict is Verdict.START  # a re-send after a reconnect runs again


def test_only_the_last_outcomes_are_remembered() -> None:
    ledger = Ledger[Run](remember=2)
    for task_id in (1, 2, 3):
        finished(ledger, 1, task_id)
    assert ledger.on_task(1, 1).verdict is Verdict.START  # forgotten: runs again
    assert ledger.on_task(2, 1).verdict is Verdict.FINAL_AGAIN
    assert ledger.on_task(3, 1).verdict is Verdict.FINAL_AGAIN


def test_a_renewed_outcome_is_forgotten_last() -> None:
    ledger = Ledger[Run](remember=2)
    finished(ledger, 1, 1)
    finished(ledger, 1, 2)
    finished(ledger, 2, 1)  # task 1 again, newer attempt: now the most recent
    finished(ledger, 1, 3)
    assert ledger.on_task(2, 1).verdict is Verdict.START
    assert ledger.on_task(1, 2).verdict is Verdict.FINAL_AGAIN


def test_remember_zero_keeps_nothing_and_a_negative_one_is_refused() -> None:
    ledger = Ledger[Run](remember=0)
    finished(ledger, 1)
    assert ledger.on_task(TASK, 1).verdict is Verdict.START
    with pytest.raises(ValueError, match="remember"):
        Ledger[Run](remember=-1)


def test_tasks_are_independent() -> None:
    ledger = Ledger[Run]()
    started(ledger, 3, task_id=1)
    ledger.on_cancel(2)
    assert ledger.on_task(3, 1).verdict is Verdict.START
    assert ledger.on_task(1, 3).verdict is Verdict.ONGOING_AGAIN
    assert ledger.on_task(2, 3).verdict is Verdict.CANCELLED
