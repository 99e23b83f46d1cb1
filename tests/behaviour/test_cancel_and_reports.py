"""Cancels, and reports that must change nothing: stale, duplicate, from the future,
from another sensor, for an unknown task."""

from __future__ import annotations

import pytest

from sensortasks.errors import Conflict
from sensortasks.protocol import CancelMessage, TaskMessage

from .harness import DEFAULTS, EVERYWHERE, Harness

S = 12345678909789
BACKOFF = DEFAULTS["retry_backoff_s"]


async def test_cancel_before_sending_never_reaches_the_sensor(harness: Harness) -> None:
    h = harness
    first = await h.create(S)
    second = await h.create(S)
    cancelled = await h.cancel(second)
    assert (cancelled.status_id, cancelled.attempt_count) == (5, 0)
    again = await h.cancel(second)  # idempotent
    assert again.status_id == 5
    await h.report(S, first, 1, "completed")
    await h.advance(1)  # the outbox has published everything
    assert [(type(m), m.task_id) for m in h.sent(S)] == [(TaskMessage, first)]
    assert await h.status(second) == ("Cancelled", 0)
    assert await h.steps(second) == [(None, "Pending"), ("Pending", "Cancelled")]


@EVERYWHERE
async def test_cancel_after_sending_tells_the_sensor_before_its_next_task(harness: Harness) -> None:
    h = harness
    first = await h.create(S)
    second = await h.create(S)
    await h.report(S, first, 1, "ongoing")
    assert (await h.cancel(first)).status_id == 5
    await h.advance(1)
    assert [(type(m), m.task_id) for m in h.sent(S)] == [
        (TaskMessage, first),
        (CancelMessage, first),
        (TaskMessage, second),
    ]
    await h.report(S, first, 1, "completed")  # too late
    assert await h.status(first) == ("Cancelled", 1)
    assert await h.ignored(first) == ["completed report ignored: task is already Cancelled"]
    assert h.rejected() == []


async def test_cancelling_a_finished_task_is_a_conflict(harness: Harness) -> None:
    h = harness
    task_id = await h.create(S)
    await h.report(S, task_id, 1, "completed")
    with pytest.raises(Conflict, match="is Completed and can no longer be cancelled"):
        await h.cancel(task_id)
    assert await h.status(task_id) == ("Completed", 1)


async def test_stale_duplicate_and_future_attempt_reports_change_nothing(harness: Harness) -> None:
    h = harness
    task_id = await h.create(S)
    await h.report(S, task_id, 1, "error", error="flash write failed")
    await h.advance(BACKOFF)
    await h.report(S, task_id, 2, "ongoing")
    before = await h.task(task_id)

    await h.report(S, task_id, 1, "completed")  # stale
    await h.report(S, task_id, 3, "completed")  # an attempt never sent
    assert await h.task(task_id) == before
    await h.report(S, task_id, 2, "completed")
    await h.report(S, task_id, 2, "completed")  # QoS 1 duplicate
    await h.report(S, task_id, 2, "error", error="late")  # out of order
    assert await h.status(task_id) == ("Completed", 2)
    assert await h.ignored(task_id) == [
        "completed report ignored: stale attempt 1 (current 2)",
        "completed report ignored: unknown attempt 3 (current 2)",
        "completed report ignored: task is already Completed",
        "error report ignored: task is already Completed",
    ]
    assert [to for _, to in await h.steps(task_id)].count("Completed") == 1
    assert h.rejected() == []  # ignored and recorded, not refused


async def test_a_report_for_an_attempt_not_in_flight_is_ignored(harness: Harness) -> None:
    h = harness
    task_id = await h.create(S)
    await h.report(S, task_id, 1, "error", error="flash write failed")  # now backing off
    await h.report(S, task_id, 1, "ongoing")
    assert await h.status(task_id) == ("Pending", 1)
    assert await h.ignored(task_id) == ["ongoing report ignored: attempt 1 is not in flight"]
    assert h.attempts(S) == [(task_id, 1)]


async def test_reports_from_another_sensor_or_for_an_unknown_task_are_rejected(harness: Harness) -> None:
    h = harness
    task_id = await h.create(S)
    await h.report(S, task_id, 1, "ongoing")
    events = await h.events(task_id)

    await h.report(S + 5, task_id, 1, "completed")
    await h.report(S, 999_999, 1, "completed")
    foreign, unknown = h.rejected()
    assert foreign.topic == h.settings.topics.status(S + 5)
    assert f"task {task_id} belongs to another sensor" in foreign.reason
    assert unknown.topic == h.settings.topics.status(S)
    assert "unknown task 999999" in unknown.reason
    assert (foreign.code, unknown.code) == ("wrong_sensor", "unknown_task")
    assert await h.status(task_id) == ("Ongoing", 1)
    assert await h.events(task_id) == events
    assert h.dispatcher.counters.rejected == {"wrong_sensor": 1, "unknown_task": 1}
