"""The dispatcher's pacing of rollouts (`dispatcher.rollouts.RolloutPacer`) on a real database,
driven by a fake clock: maintenance windows, the spacing of rounds at the rate, and the
rate-limited progress copies on ``ops/rollouts/{id}``."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from sensortasks.dispatcher.members import Membership
from sensortasks.dispatcher.rollouts import PUBLISH_EVERY_S, ROUND_S, RolloutPacer
from sensortasks.ops.metrics import Counters
from sensortasks.protocol import Topics
from sensortasks.store import TaskStore
from sensortasks.testing import FakeClock, FakeLink
from tests.integration.test_rollout_store import ME, register, rollout, store

__all__ = ["store"]  # the fixture, shared with the store's tests

#: A Monday, one minute before its maintenance window opens.
MONDAY_0459 = datetime(2026, 11, 30, 4, 59, tzinfo=UTC)
WINDOW = {"windows": [{"days": ["mon"], "start": "05:00", "end": "06:00"}]}
SERIALS = list(range(5_000_000_000_001, 5_000_000_000_041))


async def pacer_on(store: TaskStore, clock: FakeClock) -> tuple[RolloutPacer, FakeLink, list[int]]:
    link = FakeLink(clock, connect=False)
    await link.connect()
    members = Membership("p", store, link, clock, Counters(), timeout_s=3, session_expiry_s=30,
                         on_resend=lambda _why: None, on_lead=lambda: None)  # fmt: skip
    kicked: list[int] = []
    return RolloutPacer(store, link, members, clock, Topics(), on_started=kicked.extend), link, kicked


async def test_tasks_start_only_inside_the_window(store: TaskStore) -> None:
    clock = FakeClock(MONDAY_0459)
    pacer, _link, kicked = await pacer_on(store, clock)
    await register(store, SERIALS[:5])
    await store.create_rollout(rollout(SERIALS[:5], schedule=WINDOW), customer_id=ME, now=clock.now())

    before = await pacer.round()
    await clock.advance(59.0)  # 04:59:59: still shut
    still = await pacer.round()
    await clock.advance(1.0)  # 05:00:00: open
    opened = await pacer.round()

    assert before is not None
    assert still is not None
    assert opened is not None
    assert before.started == still.started == []
    assert [t.sensor_serial for t in opened.started] == SERIALS[:5]
    assert kicked == SERIALS[:5]  # the dispatcher is told which sensors have work
    assert opened.rollouts[0].state == "running"


async def test_rounds_come_when_the_next_start_is_due(store: TaskStore) -> None:
    clock = FakeClock(MONDAY_0459)
    pacer, _link, _kicked = await pacer_on(store, clock)
    await register(store, SERIALS)
    await store.create_rollout(rollout(SERIALS, rate={"per_minute": 600}), customer_id=ME, now=clock.now())

    first = await pacer.round()
    assert first is not None
    assert len(first.started) == 1  # no burst at the start
    # 10 a second: the next round is due in 0.1 s, not at the next quarter second.
    assert round(pacer._until_next(first.rollouts), 3) == 0.1
    await clock.advance(0.1)
    second = await pacer.round()
    assert second is not None
    assert len(second.started) == 1


async def test_progress_copies_say_each_state_at_once_and_totals_at_most_once_a_second(store: TaskStore) -> None:
    clock = FakeClock(MONDAY_0459)
    pacer, link, _kicked = await pacer_on(store, clock)
    await register(store, SERIALS)
    created = await store.create_rollout(
        rollout(SERIALS, rate={"per_minute": 240}), customer_id=ME, now=clock.now()
    )  # fmt: skip
    topic = Topics().ops_rollout(created.id)
    rounds = 12
    for _ in range(rounds):  # 3 s: a start every quarter second, so the totals change every round
        await pacer.round()
        await clock.advance(ROUND_S)
    copies = [json.loads(p) for p in link.on(topic)]
    assert 2 <= len(copies) <= rounds * ROUND_S / PUBLISH_EVERY_S + 1
    assert [c["totals"]["pending"] for c in copies] == sorted(c["totals"]["pending"] for c in copies)
    assert all(p.retain for p in link.published if p.topic == topic)

    await store.rollout_action(created.id, "pause", customer_id=ME, now=clock.now())
    await pacer.round()  # a state change goes out at once, however recent the last copy
    assert json.loads(link.on(topic)[-1])["state"] == "paused"
