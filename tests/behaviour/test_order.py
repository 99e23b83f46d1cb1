"""Per-sensor order, completion, progress, and what counts as an attempt."""

from __future__ import annotations

from datetime import timedelta

from sensortasks.protocol import TaskMessage

from .harness import DEFAULTS, EVERYWHERE, FILE_ID, RUN_TIMEOUT_S, Harness

S = 12345678909789


@EVERYWHERE
async def test_a_sensor_gets_one_task_at_a_time_oldest_first(harness: Harness) -> None:
    h = harness
    first, second, third = [await h.create(S) for _ in range(3)]
    other = await h.create(S + 1)
    assert h.attempts(S) == [(first, 1)]
    assert h.attempts(S + 1) == [(other, 1)]  # sensors do not wait for each other

    await h.report(S, first, 1, "ongoing")
    assert h.attempts(S) == [(first, 1)]
    await h.report(S, first, 1, "completed")
    assert h.attempts(S) == [(first, 1), (second, 1)]
    await h.report(S, second, 1, "completed")  # done before its "ongoing" arrived
    assert h.attempts(S) == [(first, 1), (second, 1), (third, 1)]
    assert [await h.status(t) for t in (first, second, third)] == [("Completed", 1), ("Completed", 1), ("Pending", 1)]


@EVERYWHERE
async def test_a_completed_task_has_its_history_and_ops_events(harness: Harness) -> None:
    h = harness
    task_id = await h.create(S)
    (message,) = h.sent(S)
    assert message == TaskMessage(
        task_id=task_id, type="update_firmware", file_id=FILE_ID, attempt=1, timeout_s=RUN_TIMEOUT_S
    )

    await h.report(S, task_id, 1, "ongoing", progress=40)
    started = h.clock.now()
    task = await h.task(task_id)
    assert (task.status_id, task.progress, task.started_at) == (4, 40, started)
    assert task.deadline_at == started + timedelta(seconds=RUN_TIMEOUT_S)

    await h.advance(RUN_TIMEOUT_S / 2)
    await h.report(S, task_id, 1, "completed", result={"version": "2.4.1"})
    task = await h.task(task_id)
    assert (task.status_id, task.attempt_count, task.progress, task.error) == (2, 1, 100, None)
    assert task.result == {"version": "2.4.1"}
    assert task.completed_at == h.clock.now()
    assert [(e.kind, e.to_status) for e in await h.events(task_id)] == [
        ("transition", 1),
        ("sent", None),
        ("transition", 4),
        ("transition", 2),
    ]
    await h.advance(1)  # the outbox publishes transitions within a second
    assert [(e.from_, e.to, e.attempt) for e in h.ops_events(S, task_id)] == [
        (None, "Pending", 0),
        ("Pending", "Ongoing", 1),
        ("Ongoing", "Completed", 1),
    ]


async def test_a_terminal_report_before_ongoing_passes_through_ongoing(harness: Harness) -> None:
    h = harness
    task_id = await h.create(S)
    await h.report(S, task_id, 1, "completed")
    assert await h.steps(task_id) == [(None, "Pending"), ("Pending", "Ongoing"), ("Ongoing", "Completed")]


async def test_progress_updates_the_task_without_a_transition(harness: Harness) -> None:
    h = harness
    task_id = await h.create(S)
    for progress in (0, 10, 60):
        await h.report(S, task_id, 1, "ongoing", progress=progress)
    assert (await h.task(task_id)).progress == 60
    assert await h.steps(task_id) == [(None, "Pending"), ("Pending", "Ongoing")]
    assert h.attempts(S) == [(task_id, 1)]


async def test_a_redelivery_keeps_the_attempt_and_a_retry_is_a_new_one(harness: Harness) -> None:
    h = harness
    task_id = await h.create(S)
    await h.presence(S, online=True)  # the sensor rebooted: same attempt again
    assert h.attempts(S) == [(task_id, 1), (task_id, 1)]
    assert await h.status(task_id) == ("Pending", 1)

    await h.report(S, task_id, 1, "error", error="flash write failed")
    await h.advance(DEFAULTS["retry_backoff_s"])
    assert h.attempts(S) == [(task_id, 1), (task_id, 1), (task_id, 2)]
    assert await h.status(task_id) == ("Pending", 2)
    sends = [(e.kind, e.attempt, e.reason) for e in await h.events(task_id) if e.kind in ("sent", "redelivered")]
    assert sends == [
        ("sent", 1, "first attempt"),
        ("redelivered", 1, "sensor came online"),
        ("sent", 2, "retry"),
    ]
