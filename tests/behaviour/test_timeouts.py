"""Acknowledgement and run timeouts, retries with exponential back off, attempts used up.

Time is the fake clock's: `advance` fires the dispatcher's timers at their exact
instants, so delays are asserted to the microsecond from the events' timestamps.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sensortasks.dispatcher.service import TIMER_TICK_S
from sensortasks.domain import RetryPolicy

from .conftest import Start
from .harness import DEFAULTS, EVERYWHERE, RUN_TIMEOUT_S, Harness

S = 12345678909789
ACK = DEFAULTS["ack_timeout_s"]
BACKOFF = DEFAULTS["retry_backoff_s"]
TICK = TIMER_TICK_S


async def _sent_at(h: Harness, task_id: int) -> list[tuple[int, datetime]]:
    return [(e.attempt, e.at) for e in await h.events(task_id) if e.kind == "sent"]


@EVERYWHERE
async def test_a_retryable_error_is_retried_after_the_back_off(harness: Harness) -> None:
    h = harness
    task_id = await h.create(S)
    await h.report(S, task_id, 1, "ongoing")
    await h.report(S, task_id, 1, "error", error="flash write failed")
    failed_at = h.clock.now()
    task = await h.task(task_id)
    assert (task.status_id, task.attempt_count, task.error) == (1, 1, "retry: sensor error: flash write failed")
    assert task.not_before == failed_at + timedelta(seconds=BACKOFF)

    await h.advance(BACKOFF - 0.001)
    assert h.attempts(S) == [(task_id, 1)]
    await h.advance(0.001)
    assert h.attempts(S) == [(task_id, 1), (task_id, 2)]
    assert (await _sent_at(h, task_id))[-1] == (2, failed_at + timedelta(seconds=BACKOFF))

    await h.report(S, task_id, 2, "ongoing")
    await h.report(S, task_id, 2, "completed")
    task = await h.task(task_id)
    assert (task.status_id, task.attempt_count, task.error) == (2, 2, None)
    assert await h.steps(task_id) == [
        (None, "Pending"),
        ("Pending", "Ongoing"),
        ("Ongoing", "Pending"),
        ("Pending", "Ongoing"),
        ("Ongoing", "Completed"),
    ]


async def test_back_offs_double_up_to_the_maximum(start: Start) -> None:
    policy = RetryPolicy(backoff_s=0.5, backoff_max_s=1.5)
    h = await start(retry_backoff_s=policy.backoff_s, retry_backoff_max_s=policy.backoff_max_s)
    task_id = await h.create(S, max_attempts=5)
    waited = []
    for attempt in range(1, 5):
        await h.report(S, task_id, attempt, "error", error="disk full")
        failed_at = h.clock.now()
        await h.advance(policy.backoff_max_s)
        assert h.attempts(S)[-1] == (task_id, attempt + 1)
        waited.append(((await _sent_at(h, task_id))[-1][1] - failed_at).total_seconds())
    assert waited == [0.5, 1.0, 1.5, 1.5]
    assert waited == [policy.delay(n) for n in range(1, 5)]

    await h.report(S, task_id, 5, "error", error="disk full")
    task = await h.task(task_id)
    assert (task.status_id, task.attempt_count) == (3, 5)
    assert task.error == "sensor error: disk full (attempts used up: 5/5)"


async def test_attempts_used_up_end_in_error_and_the_next_task_goes(harness: Harness) -> None:
    h = harness
    task_id = await h.create(S, max_attempts=3)
    queued = await h.create(S)
    for attempt in (1, 2):
        await h.report(S, task_id, attempt, "error", error="disk full")
        await h.advance(BACKOFF * attempt)
    await h.report(S, task_id, 3, "error", error="disk full")
    assert await h.status(task_id) == ("Error", 3)
    assert "attempts used up: 3/3" in ((await h.task(task_id)).error or "")
    assert h.attempts(S) == [(task_id, 1), (task_id, 2), (task_id, 3), (queued, 1)]


async def test_a_non_retryable_error_ends_in_error_at_once(harness: Harness) -> None:
    h = harness
    task_id = await h.create(S)
    await h.report(S, task_id, 1, "ongoing")
    await h.report(S, task_id, 1, "error", error="checksum mismatch", retryable=False)
    task = await h.task(task_id)
    assert (task.status_id, task.attempt_count) == (3, 1)
    assert task.error == "sensor error: checksum mismatch (not retryable)"
    await h.advance(BACKOFF * 10)
    assert h.attempts(S) == [(task_id, 1)]


@EVERYWHERE
async def test_an_unacknowledged_attempt_is_sent_again_as_the_next_then_errors(harness: Harness) -> None:
    h = harness
    task_id = await h.create(S, max_attempts=2)
    await h.advance(ACK - TICK)
    assert h.attempts(S) == [(task_id, 1)]
    await h.advance(2 * TICK)  # the timers look every TICK
    assert h.attempts(S) == [(task_id, 1), (task_id, 2)]
    assert await h.status(task_id) == ("Pending", 2)
    (_, first), (_, second) = await _sent_at(h, task_id)
    assert timedelta(seconds=ACK) <= second - first <= timedelta(seconds=ACK + TICK)
    reasons = [e.reason for e in await h.events(task_id) if e.kind == "sent"]
    assert reasons == ["first attempt", "acknowledgement timeout: new attempt"]

    await h.advance(ACK + TICK)
    task = await h.task(task_id)
    assert (task.status_id, task.attempt_count, task.error) == (3, 2, "not acknowledged after 2 attempt(s)")
    assert h.attempts(S) == [(task_id, 1), (task_id, 2)]


async def test_a_late_acknowledgement_of_the_previous_attempt_is_stale(harness: Harness) -> None:
    h = harness
    task_id = await h.create(S)
    await h.advance(ACK + TICK)
    assert h.attempts(S) == [(task_id, 1), (task_id, 2)]
    await h.report(S, task_id, 1, "ongoing")
    assert await h.status(task_id) == ("Pending", 2)
    assert await h.ignored(task_id) == ["ongoing report ignored: stale attempt 1 (current 2)"]
    await h.report(S, task_id, 2, "ongoing")
    assert await h.status(task_id) == ("Ongoing", 2)


@EVERYWHERE
async def test_a_run_timeout_retries_then_errors_and_progress_does_not_extend_it(harness: Harness) -> None:
    h = harness
    run_s = RUN_TIMEOUT_S
    task_id = await h.create(S, max_attempts=2)
    await h.report(S, task_id, 1, "ongoing")
    await h.advance(run_s - TICK)
    assert await h.status(task_id) == ("Ongoing", 1)
    await h.advance(2 * TICK)
    task = await h.task(task_id)
    assert (task.status_id, task.attempt_count, task.error) == (1, 1, "retry: timed out")

    await h.advance(BACKOFF)
    assert h.attempts(S) == [(task_id, 1), (task_id, 2)]
    await h.report(S, task_id, 2, "ongoing")
    await h.advance(run_s / 2)
    await h.report(S, task_id, 2, "ongoing", progress=50)
    await h.advance(run_s / 2 - TICK)
    assert await h.status(task_id) == ("Ongoing", 2)
    await h.advance(2 * TICK)
    task = await h.task(task_id)
    assert (task.status_id, task.attempt_count) == (3, 2)
    assert task.error == "timed out (attempts used up: 2/2)"
    assert h.attempts(S) == [(task_id, 1), (task_id, 2)]
