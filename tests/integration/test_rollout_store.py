"""Rollouts in the store on SQLite and PostgreSQL: targets, the pacing round, pause, resume,
cancel, continuous joins and tenancy, driven by a clock of datetimes (no sleeps)."""

from __future__ import annotations

import asyncio
import re
import sqlite3
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from alembic import command
from sqlalchemy import func, select, text, update

from sensortasks.domain import RetryPolicy, TaskStatus
from sensortasks.domain.rollout import RolloutState
from sensortasks.errors import Conflict, InvalidInput, NotFound
from sensortasks.store import (
    IncomingReport,
    NewRollout,
    RolloutInfo,
    TaskFilter,
    TaskStore,
    join_continuous,
    open_database,
    upgrade,
    utcnow,
)
from sensortasks.store.base import RT, R, S
from sensortasks.store.migrate import alembic_config
from tests.conftest import only_on
from tests.integration.test_hot_plans import _plans

FILE_ID = "a3e4aed2-b091-41a6-8265-2185040e2c32"
NOW = utcnow()
ME, OTHER = 1, 2


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[TaskStore]:
    await upgrade(database_url)
    db = open_database(database_url)
    yield TaskStore(db, RetryPolicy(0, 0))
    await db.dispose()


async def register(store: TaskStore, serials: Sequence[int], customer_id: int = ME, **labels: str) -> None:
    for serial in serials:
        await store.register_sensor(serial, customer_id=customer_id, now=NOW)
    async with store._write() as conn:
        await conn.execute(update(S).where(S.c.serial.in_(serials)).values(labels=labels))


def rollout(sensors: Sequence[int] | None = None, selector: dict[str, str] | None = None, **extra: Any) -> NewRollout:
    options: dict[str, Any] = {
        "continuous": False,
        "max_in_flight": 100,
        "rate": None,
        "abort": None,
        "schedule": None,
        "max_attempts": 1,
    }
    options |= extra
    given = None if sensors is None else tuple(sensors)
    return NewRollout(
        "fw 2.4.1", "update_firmware", FILE_ID, timeout_s=3600, sensors=given, selector=selector, **options
    )


async def advance(store: TaskStore, seconds: float = 0.0) -> tuple[list[int], RolloutInfo]:
    """One round at NOW + `seconds`: the serials started and the (only) rollout after it."""
    done = await store.advance_rollouts(now=NOW + timedelta(seconds=seconds), changed_since=NOW)
    return [t.sensor_serial for t in done.started], done.rollouts[0]


async def run(store: TaskStore, serials: Sequence[int], status: str = "completed") -> None:
    """The sensors receive their rollout task and report `status` for it."""
    if not serials:
        return
    tasks = [t for s in serials for t in (await store.list_tasks(TaskFilter(sensor_serial=s)))[0]]
    await store.claim_next(list(serials), now=NOW)
    reports = [IncomingReport(t.sensor_serial, t.id or 0, 1, status) for t in tasks]
    await store.apply_reports(reports, now=NOW)


async def table_rows(store: TaskStore, table: Any) -> int:
    async with store._read() as conn:
        return int((await conn.execute(select(func.count()).select_from(table))).scalar_one())


async def assert_counts_kept(store: TaskStore, rollout_id: int) -> None:
    """The rollout's kept counts are what counting its targets finds."""
    async with store._read() as conn:
        kept = (await conn.execute(select(R.c.target_count, R.c.started_count).where(R.c.id == rollout_id))).one()
        of = RT.c.rollout_id == rollout_id
        targets = (await conn.execute(select(func.count()).where(of))).scalar_one()
        started = (await conn.execute(select(func.count()).where(of, RT.c.task_id.is_not(None)))).scalar_one()
    assert tuple(kept) == (targets, started)


async def test_targets_are_the_listed_sensors_and_those_the_selector_matches(store: TaskStore) -> None:
    await register(store, [1, 2, 3], site="a", ring="1")
    await register(store, [4, 5, 6], site="b", ring="1")
    await register(store, [7], OTHER, site="a", ring="1")
    listed = await store.create_rollout(rollout([5, 6, 6]), customer_id=ME, now=NOW)
    assert (listed.totals.targets, listed.sensors, listed.selector) == (2, [5, 6, 6], None)
    selected = await store.create_rollout(rollout(selector={"site": "a"}), customer_id=ME, now=NOW)
    assert (selected.totals.targets, selected.selector) == (3, {"labels": {"site": "a"}})
    both = await store.create_rollout(rollout([4, 1], {"site": "a", "ring": "1"}), customer_id=ME, now=NOW)
    assert both.totals == replace(both.totals, targets=4, not_started=4)
    assert (both.state, both.started_at, both.finished_at) == (RolloutState.RUNNING, NOW, None)
    later = {"start_at": (NOW + timedelta(hours=1)).isoformat(), "end_at": None}
    scheduled = await store.create_rollout(rollout([1], schedule=later), customer_id=ME, now=NOW)
    assert (scheduled.state, scheduled.started_at) == (RolloutState.SCHEDULED, None)


async def test_bad_targets_are_refused_and_nothing_is_written(store: TaskStore) -> None:
    await register(store, [1], site="a")
    await register(store, [7], OTHER, site="a")
    with pytest.raises(InvalidInput) as foreign:
        await store.create_rollout(rollout([99, 1, 7], {"site": "a"}), customer_id=ME, now=NOW)
    assert foreign.value.details == {"unregistered_serials": [7, 99]}
    for empty in (rollout(selector={"site": "b"}), rollout([], continuous=True)):  # a continuous one needs a selector
        with pytest.raises(InvalidInput, match="targets: no sensor matches") as nothing:
            await store.create_rollout(empty, customer_id=ME, now=NOW)
        assert nothing.value.details == {"field": "targets"}
    assert (await table_rows(store, R), await table_rows(store, RT)) == (0, 0)
    waiting = await store.create_rollout(rollout(selector={"site": "b"}, continuous=True), customer_id=ME, now=NOW)
    assert (waiting.state, waiting.totals.targets) == (RolloutState.RUNNING, 0)  # sensors may join it later


async def test_the_round_starts_at_the_rate_within_the_cap(store: TaskStore) -> None:
    await register(store, range(1, 21))
    made = await store.create_rollout(
        rollout(range(20, 0, -1), max_in_flight=3, rate={"per_minute": 60}), customer_id=ME, now=NOW
    )
    starts: list[tuple[float, int]] = []
    for i in range(40):  # ten seconds, a round every quarter of a second
        started, info = await advance(store, i * 0.25)
        starts += [(i * 0.25, s) for s in started]
        assert info.totals.in_flight <= 3
        assert info.rate_per_minute == 60
    assert starts == [(0.0, 1), (1.0, 2), (2.0, 3)]  # one a second, in serial order, then the cap
    await run(store, [1, 2])
    started, info = await advance(store, 10)
    assert (started, info.totals.completed, info.totals.pending) == ([4], 2, 2)  # a slot, not a burst
    assert (await advance(store, 10.5))[0] == []
    assert (await advance(store, 11))[0] == [5]
    tasks, _ = await store.list_tasks(TaskFilter(customer_id=ME, rollout_id=made.id))
    assert sorted(t.sensor_serial for t in tasks) == [1, 2, 3, 4, 5]
    assert {t.rollout_id for t in tasks} == {made.id}


async def test_an_unpaced_rollout_fills_its_cap_and_completes(store: TaskStore) -> None:
    await register(store, range(1, 6))
    await store.create_rollout(rollout(range(1, 6), max_in_flight=3), customer_id=ME, now=NOW)
    assert (await advance(store))[0] == [1, 2, 3]
    await run(store, [1, 2, 3])
    assert (await advance(store, 1))[0] == [4, 5]
    await run(store, [4, 5], "failed")
    started, info = await advance(store, 2)
    assert (started, info.state, info.reason) == ([], RolloutState.COMPLETED, None)
    assert info.totals == replace(info.totals, targets=5, not_started=0, completed=3, error=2)
    assert info.finished_at == NOW + timedelta(seconds=2)
    assert (await store.advance_rollouts(now=NOW + timedelta(seconds=3))).rollouts == []  # no longer live


async def test_an_abort_cancels_the_unsent_tasks_and_starts_no_more(store: TaskStore) -> None:
    await register(store, range(1, 8))
    abort = {"failure_percent": 40, "min_finished": 2}
    made = await store.create_rollout(rollout(range(1, 8), max_in_flight=4, abort=abort), customer_id=ME, now=NOW)
    assert (await advance(store))[0] == [1, 2, 3, 4]
    await run(store, [1, 2], "failed")
    await store.claim_next([3], now=NOW)  # sent, not yet acknowledged: it finishes
    started, info = await advance(store, 1)
    assert (started, info.state) == ([], RolloutState.ABORTED)
    assert info.reason is not None
    assert info.reason.startswith("2 of 2 finished tasks failed")
    assert info.totals == replace(info.totals, not_started=3, pending=1, error=2, cancelled=1)
    tasks = {t.sensor_serial: t for t in (await store.list_tasks(TaskFilter(rollout_id=made.id)))[0]}
    assert (tasks[3].status_id, tasks[4].status_id) == (TaskStatus.PENDING, TaskStatus.CANCELLED)
    outbox = [t for _, t in await store.unpublished(limit=100) if t.target is TaskStatus.CANCELLED]
    assert [(t.task_id, t.reason) for t in outbox] == [(tasks[4].id, f"rollout {made.id} aborted: {info.reason}")]
    assert (await store.advance_rollouts(now=NOW + timedelta(seconds=2))).started == []


async def test_pause_holds_the_rollout_and_resume_paces_it_afresh(store: TaskStore) -> None:
    await register(store, range(1, 11))
    made = await store.create_rollout(rollout(range(1, 11), rate={"per_minute": 60}), customer_id=ME, now=NOW)
    assert (await advance(store))[0] == [1]
    paused = await store.rollout_action(made.id, "pause", customer_id=ME, now=NOW + timedelta(seconds=1))
    assert paused.state is RolloutState.PAUSED
    again = await store.rollout_action(made.id, "pause", customer_id=ME, now=NOW + timedelta(seconds=2))
    assert (again.state, again.updated_at) == (RolloutState.PAUSED, NOW + timedelta(seconds=1))
    held = await store.advance_rollouts(now=NOW + timedelta(minutes=5), changed_since=NOW + timedelta(seconds=1))
    assert held.started == []
    assert [(r.id, r.state) for r in held.rollouts] == [(made.id, RolloutState.PAUSED)]  # the API's change is heard
    resumed = await store.rollout_action(made.id, "resume", customer_id=ME, now=NOW + timedelta(minutes=10))
    assert resumed.state is RolloutState.RUNNING
    assert (await advance(store, 600))[0] == [2]  # five minutes held, one start: no burst
    assert (await advance(store, 600.5))[0] == []
    assert (await store.rollout_action(made.id, "resume", customer_id=ME, now=NOW)).state is RolloutState.RUNNING


async def test_resume_before_start_at_goes_back_to_scheduled(store: TaskStore) -> None:
    await register(store, [1])
    later = {"start_at": (NOW + timedelta(hours=1)).isoformat()}
    made = await store.create_rollout(rollout([1], schedule=later), customer_id=ME, now=NOW)
    await store.rollout_action(made.id, "pause", customer_id=ME, now=NOW)
    resumed = await store.rollout_action(made.id, "resume", customer_id=ME, now=NOW)
    assert (resumed.state, resumed.started_at) == (RolloutState.SCHEDULED, None)
    started, info = await advance(store, 3600)
    assert (started, info.state, info.started_at) == ([1], RolloutState.RUNNING, NOW + timedelta(hours=1))


@pytest.mark.parametrize(("in_flight", "cancelled"), [("finish", [3]), ("cancel", [1, 2, 3])])
async def test_cancel_stops_the_unsent_tasks_and_with_cancel_the_running_ones(
    store: TaskStore, in_flight: Any, cancelled: list[int]
) -> None:
    await register(store, [1, 2, 3, 4])
    made = await store.create_rollout(rollout([1, 2, 3, 4], max_in_flight=3), customer_id=ME, now=NOW)
    await advance(store)
    await run(store, [1], "ongoing")
    await store.claim_next([2], now=NOW)
    done = await store.rollout_action(made.id, "cancel", customer_id=ME, in_flight=in_flight, now=NOW)
    assert (done.state, done.reason, done.finished_at) == (RolloutState.CANCELLED, "cancelled by the customer", NOW)
    tasks = (await store.list_tasks(TaskFilter(rollout_id=made.id)))[0]
    assert sorted(t.sensor_serial for t in tasks if t.status_id == TaskStatus.CANCELLED) == cancelled
    outbox = [t for _, t in await store.unpublished(limit=100) if t.target is TaskStatus.CANCELLED]
    assert sorted(t.sensor_serial for t in outbox) == cancelled  # the sensors are told through the outbox
    assert {t.reason for t in outbox} == {f"rollout {made.id} cancelled by the customer"}
    assert done.totals.not_started == 1
    again = await store.rollout_action(made.id, "cancel", customer_id=ME, now=NOW + timedelta(seconds=1))
    assert again.finished_at == NOW
    for action in ("pause", "resume"):
        with pytest.raises(Conflict, match="is cancelled and can no longer be"):
            await store.rollout_action(made.id, action, customer_id=ME, now=NOW)  # type: ignore[arg-type]
    assert (await store.advance_rollouts(now=NOW + timedelta(seconds=5))).started == []


async def test_a_finished_rollout_is_a_conflict(store: TaskStore) -> None:
    await register(store, [1])
    made = await store.create_rollout(rollout([1]), customer_id=ME, now=NOW)
    await advance(store)
    await run(store, [1])
    assert (await advance(store, 1))[1].state is RolloutState.COMPLETED
    for action in ("pause", "resume", "cancel"):
        with pytest.raises(Conflict) as refused:
            await store.rollout_action(made.id, action, customer_id=ME, now=NOW)  # type: ignore[arg-type]
        assert refused.value.details == {"state": "completed"}


async def test_sensors_join_the_continuous_rollouts_they_match(store: TaskStore) -> None:
    await register(store, [1, 2, 3])
    await register(store, [9], OTHER)
    joining = await store.create_rollout(rollout(selector={"site": "a"}, continuous=True), customer_id=ME, now=NOW)
    fixed = await store.create_rollout(rollout([1], selector={"site": "a"}), customer_id=ME, now=NOW)
    theirs = await store.create_rollout(rollout(selector={"site": "a"}, continuous=True), customer_id=OTHER, now=NOW)
    async with store._write() as conn:
        await join_continuous(conn, 1, {"site": "a", "ring": "2"}, customer_id=ME, now=NOW)
        await join_continuous(conn, 1, {"site": "a"}, customer_id=ME, now=NOW)  # relabelled: still one target
        await join_continuous(conn, 2, {"site": "b"}, customer_id=ME, now=NOW)
    assert (await store.get_rollout(joining.id)).totals.targets == 1
    assert (await store.get_rollout(fixed.id)).totals.targets == 1  # not continuous
    assert (await store.get_rollout(theirs.id)).totals.targets == 0  # another customer's
    started = (await store.advance_rollouts(now=NOW)).started
    assert sorted((t.rollout_id, t.sensor_serial) for t in started) == sorted([(joining.id, 1), (fixed.id, 1)])
    await run(store, [1])
    async with store._write() as conn:
        await join_continuous(conn, 1, {"site": "a"}, customer_id=ME, now=NOW)  # once per rollout
    await store.rollout_action(joining.id, "cancel", customer_id=ME, now=NOW)
    async with store._write() as conn:
        await join_continuous(conn, 3, {"site": "a"}, customer_id=ME, now=NOW)
    assert (await store.get_rollout(joining.id)).totals.targets == 1  # a cancelled rollout takes no one
    assert (await store.advance_rollouts(now=NOW + timedelta(seconds=1))).started == []
    for made in (joining, fixed, theirs):
        await assert_counts_kept(store, made.id)


async def test_a_sensor_that_left_the_customer_is_dropped_not_waited_for(store: TaskStore) -> None:
    await register(store, [1, 2, 3])
    made = await store.create_rollout(rollout([1, 2, 3], max_in_flight=2), customer_id=ME, now=NOW)
    await store.unregister_sensor(1, customer_id=ME, now=NOW)
    await store.unregister_sensor(2, customer_id=ME, now=NOW)
    await register(store, [2], OTHER)
    started, info = await advance(store)
    assert (started, info.totals.targets) == ([3], 1)
    assert (await store.get_rollout(made.id)).totals == info.totals
    await assert_counts_kept(store, made.id)


async def test_a_rollout_is_its_customers_only(store: TaskStore) -> None:
    await register(store, [1])
    await register(store, [2], OTHER)
    mine = await store.create_rollout(rollout([1]), customer_id=ME, now=NOW)
    theirs = await store.create_rollout(rollout([2]), customer_id=OTHER, now=NOW)
    with pytest.raises(NotFound):
        await store.get_rollout(theirs.id, customer_id=ME)
    with pytest.raises(NotFound):
        await store.rollout_action(theirs.id, "cancel", customer_id=ME, now=NOW)
    assert [r.id for r in (await store.list_rollouts(customer_id=ME))[0]] == [mine.id]
    assert (await store.get_rollout(theirs.id)).state is RolloutState.RUNNING  # untouched
    assert [r.id for r in (await store.list_rollouts(customer_id=None))[0]] == [theirs.id, mine.id]


async def test_listing_is_newest_first_by_state_with_a_cursor(store: TaskStore) -> None:
    await register(store, [1])
    made = [await store.create_rollout(rollout([1]), customer_id=ME, now=NOW) for _ in range(5)]
    await store.rollout_action(made[1].id, "pause", customer_id=ME, now=NOW)
    page, more = await store.list_rollouts(customer_id=ME, limit=2)
    assert ([r.id for r in page], more) == ([made[4].id, made[3].id], True)
    page, more = await store.list_rollouts(customer_id=ME, before_id=made[3].id, limit=3)
    assert ([r.id for r in page], more) == ([made[2].id, made[1].id, made[0].id], False)
    paused, _ = await store.list_rollouts(customer_id=ME, state=RolloutState.PAUSED)
    assert [r.id for r in paused] == [made[1].id]


async def test_a_rollout_never_gives_a_sensor_two_tasks(store: TaskStore) -> None:
    await register(store, range(1, 6), site="a")
    made = await store.create_rollout(rollout([1, 1, 2], {"site": "a"}, max_in_flight=2), customer_id=ME, now=NOW)
    for second in range(6):
        started, _ = await advance(store, second)
        await run(store, started)
    tasks = (await store.list_tasks(TaskFilter(rollout_id=made.id)))[0]
    assert sorted(t.sensor_serial for t in tasks) == [1, 2, 3, 4, 5]
    assert (await store.get_rollout(made.id)).state is RolloutState.COMPLETED


@only_on("sqlite")  # the database without statistics, where a plan goes wrong first
async def test_the_totals_and_the_round_read_through_the_indexes(store: TaskStore) -> None:
    await register(store, range(1, 11))
    made = await store.create_rollout(rollout(range(1, 11), max_in_flight=4), customer_id=ME, now=NOW)
    await advance(store)
    await run(store, [1])
    plans = await _plans(store, lambda: store.get_rollout(made.id))
    plans += await _plans(store, lambda: store.advance_rollouts(now=NOW, changed_since=NOW))  # starts one
    lines = [line for plan in plans for line in plan]
    for index in ("ix_rollout_targets_waiting", "ix_tasks_rollout_status"):
        assert any(f"INDEX {index} (rollout_id=?" in line for line in lines), (index, lines)
    # The totals never count the targets, nor the Completed tasks (of a rollout that goes well,
    # almost all of them): a round's cost does not grow with the rollout.
    assert not any("autoindex_rollout_targets" in line for line in lines), lines
    assert any("ix_tasks_rollout_status (rollout_id=? AND status_id=?)" in line for line in lines), lines
    assert "SEARCH rollouts USING INDEX ix_rollouts_live (state=?)" in lines
    # Only the round's "changed since" read goes through every rollout (no index on updated_at;
    # rollouts are few): never every target or every task.
    assert [line for line in lines if re.match(r"SCAN (rollout_targets|tasks)\b", line)] == [], lines
    assert len([line for line in lines if line.startswith("SCAN rollouts")]) == 1, lines


@only_on("postgresql")  # SQLite serialises every writer anyway
async def test_concurrent_rounds_never_exceed_the_cap_together(store: TaskStore, database_url: str) -> None:
    await register(store, range(1, 51))
    made = await store.create_rollout(rollout(range(1, 51), max_in_flight=5), customer_id=ME, now=NOW)
    other = TaskStore(open_database(database_url))
    try:
        for second in range(3):
            at = NOW + timedelta(seconds=second)
            rounds = await asyncio.gather(*(s.advance_rollouts(now=at) for s in (store, other, store, other)))
            assert sum(len(r.started) for r in rounds) == (5 if second == 0 else 0)
    finally:
        await other.db.dispose()
    info = await store.get_rollout(made.id)
    assert (info.totals.pending, info.totals.not_started) == (5, 45)


async def test_the_upgrade_counts_the_targets_of_rollouts_made_before_the_counts(database_url: str) -> None:
    await asyncio.to_thread(command.upgrade, alembic_config(database_url), "0008")
    db = open_database(database_url)
    try:
        async with db.writer.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO rollouts (id, name, type, file_id, max_attempts, timeout_s, continuous,"
                    " max_in_flight, state, created_at, updated_at) VALUES (7, 'fw', 'update_firmware',"
                    " :file, 1, 60, false, 5, 'running', :now, :now)"
                ),
                {"file": FILE_ID, "now": NOW},
            )
            rows = [{"serial": s, "task": s * 10 if s <= 2 else None, "now": NOW} for s in range(1, 6)]
            await conn.execute(text("INSERT INTO rollout_targets VALUES (7, :serial, :task, :now)"), rows)
        await upgrade(database_url)
        async with db.reader.connect() as conn:
            counts = (await conn.execute(select(R.c.target_count, R.c.started_count))).one()
        assert tuple(counts) == (5, 2)
    finally:
        await db.dispose()


async def test_sensors_known_offline_wait_and_get_their_task_once_back(store: TaskStore) -> None:
    await register(store, range(1, 6))
    await store.record_presence([(1, False, NOW), (2, False, NOW), (3, True, NOW)])  # 4, 5: never seen
    made = await store.create_rollout(rollout(range(1, 6), max_in_flight=2), customer_id=ME, now=NOW)
    started, info = await advance(store)
    assert (started, info.totals.not_started) == ([3, 4], 3)  # not stalled behind 1 and 2
    await run(store, [3, 4])
    await store.record_presence([(2, True, NOW + timedelta(seconds=1))])
    started, _ = await advance(store, 1)
    assert started == [2, 5]
    await run(store, [2, 5])
    started, info = await advance(store, 2)
    assert (started, info.state, info.totals.not_started) == ([], RolloutState.RUNNING, 1)  # 1 is still away
    await store.record_presence([(1, True, NOW + timedelta(seconds=3))])
    started, _ = await advance(store, 3)
    await run(store, started)
    assert started == [1]
    assert (await advance(store, 4))[1].state is RolloutState.COMPLETED
    await assert_counts_kept(store, made.id)


@only_on("sqlite")  # PostgreSQL locks rows, not the database: a round's FOR UPDATE of no rows waits for nothing
async def test_a_round_with_no_live_rollout_takes_no_write_lock(store: TaskStore, database_url: str) -> None:
    """The leader's pacer runs a round every quarter second: with no rollout scheduled or running
    it only reads, and does not queue the dispatcher's writes behind one of its own."""
    await register(store, [1])
    made = await store.create_rollout(rollout([1]), customer_id=ME, now=NOW)
    await store.rollout_action(made.id, "pause", customer_id=ME, now=NOW + timedelta(seconds=1))
    holder = sqlite3.connect(database_url.split("///", 1)[1], isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")  # another writer holds the database
        done = await asyncio.wait_for(store.advance_rollouts(now=NOW, changed_since=NOW), timeout=2)
    finally:
        holder.close()
    assert (done.started, [(r.id, r.state) for r in done.rollouts]) == ([], [(made.id, RolloutState.PAUSED)])
