"""`outbox_order`, the rule both stores follow (the SQL one in `store.outbox`)."""

from __future__ import annotations

from datetime import UTC, datetime

from sensortasks.domain import TaskStatus
from sensortasks.store import Transition
from sensortasks.store.records import outbox_order

AT = datetime(2026, 12, 2, tzinfo=UTC)
P, ON, C = TaskStatus.PENDING, TaskStatus.ONGOING, TaskStatus.COMPLETED


def _t(task_id: int, source: TaskStatus | None, target: TaskStatus) -> Transition:
    return Transition(task_id, 1, "update_firmware", source, target, 1, None, AT)


def test_changes_oldest_first_then_creations_newest_first() -> None:
    pending = [(5, _t(10, None, P)), (3, _t(1, P, ON)), (6, _t(11, None, P)), (7, _t(1, ON, C))]
    assert [i for i, _ in outbox_order(pending, 10)] == [3, 7, 6, 5]
    assert [i for i, _ in outbox_order(pending, 3)] == [3, 7, 6]


def test_a_change_goes_right_after_its_task_s_creation() -> None:
    pending = [(1, _t(10, None, P)), (2, _t(11, None, P)), (3, _t(10, P, TaskStatus.CANCELLED)), (4, _t(4, P, ON))]
    assert [i for i, _ in outbox_order(pending, 10)] == [4, 2, 1, 3]
    assert [i for i, _ in outbox_order(pending, 3)] == [4, 2, 1, 3]  # the creation's change comes with it
    assert [i for i, _ in outbox_order(pending, 2)] == [4, 2]
