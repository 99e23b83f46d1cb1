"""Presence: a sensor known to be offline gets nothing and its acknowledgement clock does
not run; a fresh "online" (a reboot) re-sends its task in flight with the same attempt."""

from __future__ import annotations

import pytest

from sensortasks.dispatcher.service import TIMER_TICK_S
from sensortasks.testing import FakeLink

from .harness import DEFAULTS, EVERYWHERE, Harness

S = 12345678909789
ACK = DEFAULTS["ack_timeout_s"]
TICK = TIMER_TICK_S


async def _kinds(h: Harness, task_id: int) -> list[tuple[str, int, str | None]]:
    return [(e.kind, e.attempt, e.reason) for e in await h.events(task_id) if e.kind in ("sent", "redelivered")]


@EVERYWHERE
async def test_an_offline_sensor_gets_nothing_and_its_clock_stops_until_it_is_back(harness: Harness) -> None:
    h = harness
    await h.presence(S, online=True)
    first = await h.create(S, max_attempts=2)
    assert h.attempts(S) == [(first, 1)]
    await h.presence(S, online=False)
    queued = await h.create(S)

    await h.advance(5 * ACK)  # five acknowledgement timeouts
    assert await h.status(first) == ("Pending", 1)
    assert await h.status(queued) == ("Pending", 0)
    assert h.attempts(S) == [(first, 1)]

    await h.presence(S, online=True)  # back, with no memory: the same attempt again
    assert h.attempts(S) == [(first, 1), (first, 1)]
    assert await _kinds(h, first) == [("sent", 1, "first attempt"), ("redelivered", 1, "sensor came online")]
    await h.advance(ACK - TICK)  # its clock started again when it came back
    assert await h.status(first) == ("Pending", 1)

    await h.report(S, first, 1, "completed")
    assert h.attempts(S) == [(first, 1), (first, 1), (queued, 1)]


async def test_a_task_created_while_its_sensor_is_offline_is_sent_when_it_is_back(harness: Harness) -> None:
    h = harness
    await h.presence(S, online=False)
    task_id = await h.create(S)
    await h.advance(ACK)
    assert h.attempts(S) == []
    await h.presence(S, online=True)
    assert h.attempts(S) == [(task_id, 1)]
    assert await _kinds(h, task_id) == [("sent", 1, "first attempt")]


@EVERYWHERE
async def test_a_fresh_online_resends_the_task_in_flight_with_the_same_attempt(harness: Harness) -> None:
    h = harness
    task_id = await h.create(S)
    await h.report(S, task_id, 1, "ongoing", progress=30)
    await h.presence(S, online=True)
    assert h.attempts(S) == [(task_id, 1), (task_id, 1)]
    task = await h.task(task_id)
    assert (task.status_id, task.attempt_count, task.progress) == (4, 1, 30)
    await h.report(S, task_id, 1, "completed")
    assert await h.status(task_id) == ("Completed", 1)


async def test_a_retained_online_is_history_not_a_reboot(harness: Harness) -> None:
    h = harness
    task_id = await h.create(S)
    await h.presence(S, online=True, replay=True)  # the broker replays it on our subscribe
    assert h.attempts(S) == [(task_id, 1)]
    assert await h.status(task_id) == ("Pending", 1)


async def test_a_dispatcher_reconnect_resends_in_flight_tasks_and_pauses_the_clocks(harness: Harness) -> None:
    h = harness
    link = h.link
    if not isinstance(link, FakeLink):
        pytest.skip("drops the connection through the fake link")
    ongoing = await h.create(S)
    await h.report(S, ongoing, 1, "ongoing")
    unacked = await h.create(S + 1)

    link.disconnect()
    await h.advance(5 * ACK)  # sensors cannot reach us: their clocks do not run
    assert await h.status(unacked) == ("Pending", 1)
    await link.connect()
    await h.settle()
    assert h.attempts(S) == [(ongoing, 1), (ongoing, 1)]
    assert h.attempts(S + 1) == [(unacked, 1), (unacked, 1)]
    assert ("redelivered", 1, "dispatcher reconnected") in await _kinds(h, unacked)
    await h.advance(ACK - TICK)
    assert await h.status(unacked) == ("Pending", 1)
    await h.advance(2 * TICK)
    assert await h.status(unacked) == ("Pending", 2)
