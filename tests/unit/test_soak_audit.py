"""The soak's per-sensor order check (tools/audit.py::out_of_order) on hand-made histories."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace

from sensortasks.domain import TaskStatus
from sensortasks.tools.audit import out_of_order

SENSOR = 1


def task(created_s: float, sensor: int = SENSOR) -> SimpleNamespace:
    return SimpleNamespace(sensor_serial=sensor, created_at=datetime.fromtimestamp(created_s, UTC))


def sent(task_id: int) -> SimpleNamespace:
    return SimpleNamespace(task_id=task_id, kind="sent", to_status=None)


def to(task_id: int, status: TaskStatus) -> SimpleNamespace:
    return SimpleNamespace(task_id=task_id, kind="transition", to_status=status)


def test_one_task_after_the_other_is_in_order() -> None:
    tasks = {1: task(10), 2: task(11)}
    events = [sent(1), to(1, TaskStatus.ONGOING), to(1, TaskStatus.COMPLETED), sent(2)]
    assert out_of_order(tasks, events, {1: 10.5, 2: 11.5}) == 0


def test_a_send_while_another_task_of_the_sensor_is_in_flight_is_counted() -> None:
    tasks = {1: task(10), 2: task(11), 3: task(11, sensor=2)}
    events = [sent(1), sent(3), to(1, TaskStatus.ONGOING), sent(2)]
    assert out_of_order(tasks, events, {}) == 1


def test_a_retry_in_back_off_still_holds_the_sensor() -> None:
    tasks = {1: task(10), 2: task(11)}
    events = [sent(1), to(1, TaskStatus.ONGOING), to(1, TaskStatus.PENDING), sent(2)]
    assert out_of_order(tasks, events, {}) == 1


def test_skipping_a_task_accepted_before_this_one_was_created_is_counted() -> None:
    tasks = {1: task(10), 2: task(20)}
    assert out_of_order(tasks, [sent(2)], {1: 10.5, 2: 20.5}) == 1


def test_a_task_accepted_while_this_one_was_being_created_is_not_judged() -> None:
    """Task 1 has the smaller id but may have committed after task 2 was already sent."""
    tasks = {1: task(10), 2: task(11)}
    assert out_of_order(tasks, [sent(2)], {1: 12.0, 2: 11.5}) == 0


def test_a_new_attempt_of_the_current_task_is_in_order() -> None:
    tasks = {1: task(10), 2: task(11)}
    events = [sent(1), to(1, TaskStatus.ONGOING), to(1, TaskStatus.PENDING), sent(1), to(1, TaskStatus.ERROR), sent(2)]
    assert out_of_order(tasks, events, {1: 10.5, 2: 11.5}) == 0
