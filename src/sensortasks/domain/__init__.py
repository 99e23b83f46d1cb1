"""Pure task logic: statuses, transitions, retries. No I/O, no asyncio, no SQL."""

from sensortasks.domain.lifecycle import Outcome, TaskState, apply_report
from sensortasks.domain.retry import RetryDecision, RetryPolicy
from sensortasks.domain.status import TERMINAL, TRANSITIONS, TaskStatus, TaskType, can_transition

__all__ = [
    "TERMINAL",
    "TRANSITIONS",
    "Outcome",
    "RetryDecision",
    "RetryPolicy",
    "TaskState",
    "TaskStatus",
    "TaskType",
    "apply_report",
    "can_transition",
]
