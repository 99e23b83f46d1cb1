"""What a sensor remembers of its tasks, and what it does with each command it receives (SPEC 4).

Pure: no asyncio, no MQTT. The dispatcher re-sends a task until it has a final status, a newer
attempt replaces an older one, and a cancel is final (SPEC 2.2); every device must answer those
the same way, so the rules live here and `SensorClient` only applies the decisions.

Rules for a task message (task id, attempt), first match wins:

1. the task was cancelled                          -> CANCELLED (ignore it)
2. the same attempt finished                       -> FINAL_AGAIN (its final report, once more)
3. a newer attempt finished                        -> STALE (ignore it)
4. the same attempt is running                     -> ONGOING_AGAIN (its progress, once more)
5. a newer attempt is running                      -> STALE (ignore it)
6. an older attempt is running                     -> REPLACE (abort that run, start this one)
7. otherwise (unknown, or only older ones finished) -> START

A cancel aborts the run in progress (if any) and is remembered like a final outcome. The last
`remember` outcomes are kept, oldest forgotten first.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from enum import StrEnum
from typing import Generic, TypeVar

from sensortasks.protocol import StatusReport

#: What the caller keeps for a run in progress (the client: its job and asyncio task).
R = TypeVar("R")


class Verdict(StrEnum):
    """What to do with a received task message."""

    #: Run it: nothing is known of this task, or only older attempts that finished.
    START = "start"
    #: A newer attempt of a running task: abort the old run (`Decision.run`), start this one.
    REPLACE = "replace"
    #: A re-send of a finished attempt: the dispatcher missed our final status (`Decision.report`).
    FINAL_AGAIN = "final_again"
    #: A re-send of the attempt in progress: report its progress again (`Decision.run`).
    ONGOING_AGAIN = "ongoing_again"
    #: An older attempt than one already run or running: the dispatcher has moved on.
    STALE = "stale"
    #: The task was cancelled: no later message may start any attempt of it.
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class Decision(Generic[R]):
    verdict: Verdict
    #: REPLACE: the run to abort; ONGOING_AGAIN: the run whose progress to report.
    run: R | None = None
    #: FINAL_AGAIN: the final report to publish again.
    report: StatusReport | None = None


@dataclass(frozen=True, slots=True)
class _Outcome:
    """How a task ended: the final report of its last attempt, or None once cancelled."""

    attempt: int
    report: StatusReport | None


_CANCELLED = _Outcome(attempt=0, report=None)


class Ledger(Generic[R]):
    """Runs in progress (task id -> attempt and the caller's handle) and finished outcomes."""

    def __init__(self, remember: int = 1000) -> None:
        if remember < 0:
            msg = f"remember must be >= 0, got {remember}"
            raise ValueError(msg)
        self.remember = remember
        self._runs: dict[int, tuple[int, R]] = {}
        self._outcomes: OrderedDict[int, _Outcome] = OrderedDict()

    def on_task(self, task_id: int, attempt: int) -> Decision[R]:
        """Decide what a task message means; changes nothing (call `start` after START/REPLACE)."""
        outcome = self._outcomes.get(task_id)
        if outcome is not None:
            if outcome.report is None:
                return Decision(Verdict.CANCELLED)
            if attempt == outcome.attempt:
                return Decision(Verdict.FINAL_AGAIN, report=outcome.report)
            if attempt < outcome.attempt:
                return Decision(Verdict.STALE)
        running = self._runs.get(task_id)
        if running is None:
            return Decision(Verdict.START)
        running_attempt, run = running
        if attempt == running_attempt:
            return Decision(Verdict.ONGOING_AGAIN, run=run)
        if attempt < running_attempt:
            return Decision(Verdict.STALE)
        return Decision(Verdict.REPLACE, run=run)

    def start(self, task_id: int, attempt: int, run: R) -> None:
        """Record `run` as the attempt in progress (it replaces any older run of the task)."""
        self._runs[task_id] = (attempt, run)

    def on_cancel(self, task_id: int) -> R | None:
        """Remember the task as cancelled; the run to abort, if one was in progress."""
        running = self._runs.pop(task_id, None)
        self._remember(task_id, _CANCELLED)
        return None if running is None else running[1]

    def finish(self, task_id: int, run: R, report: StatusReport | None) -> bool:
        """`run` ended with `report` (None: without one). True if it was still the task's
        current run, and so may report; False if it was replaced, cancelled or dropped."""
        running = self._runs.get(task_id)
        if running is None or running[1] is not run:
            return False
        del self._runs[task_id]
        if report is not None:
            self._remember(task_id, _Outcome(running[0], report))
        return True

    def drop_runs(self) -> list[R]:
        """Forget every run in progress (the sensor stops); their handles, to abort them."""
        runs = [run for _, run in self._runs.values()]
        self._runs.clear()
        return runs

    @property
    def running(self) -> dict[int, int]:
        """Task id -> the attempt in progress."""
        return {task_id: attempt for task_id, (attempt, _) in self._runs.items()}

    def _remember(self, task_id: int, outcome: _Outcome) -> None:
        self._outcomes[task_id] = outcome
        self._outcomes.move_to_end(task_id)
        while len(self._outcomes) > self.remember:
            self._outcomes.popitem(last=False)
