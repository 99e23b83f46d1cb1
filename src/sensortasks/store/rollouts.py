"""Rollouts (SPEC section 10): create one with its targets, read and list them with their
totals, pause, resume and cancel them, and the pacing round that starts their tasks.

The rules are `domain.rollout.step`'s; this module counts what it needs (`totals_of`: the
rollout's ``target_count`` and ``started_count``, kept by every write here that adds, drops or
starts a target, and its tasks not Completed through ``ix_tasks_rollout_status``), writes
what it decided and creates tasks through `insert_tasks`, so that a rollout's tasks queue
behind their sensors' other tasks as any task does. A target keeps the task it got (one per
sensor per rollout: the target's primary key and its ``task_id``, set under the rollout's
lock). Task cancels go through `Changes`, so their events reach the outbox and the sensors.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import and_, bindparam, delete, func, insert, literal, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from sensortasks.domain import TaskStatus
from sensortasks.domain import lifecycle as lc
from sensortasks.domain.rollout import Abort, Rate, RolloutState, Rules, Schedule, Step, Totals, step
from sensortasks.errors import Conflict, InvalidInput, NotFound
from sensortasks.store.base import ACTIVE, RT, R, S, StoreBase, T, labelled, owned, registered_to
from sensortasks.store.changes import Changes, Work
from sensortasks.store.records import NewRollout, NewTask, RolloutAdvance, RolloutInfo
from sensortasks.store.rollout_totals import after_starts, totals_of
from sensortasks.store.tables import (
    LIVE_ROLLOUT_SQL,
    ROLLOUT_TASK_SQL,
    WAITING_TARGET_SQL,
    Task,
)
from sensortasks.store.tasks import _check_owned, insert_tasks

log = logging.getLogger(__name__)

#: Columns a rollout's state change may write.
ROLLOUT_MUTABLE = ("state", "reason", "started_at", "finished_at", "next_start_at", "updated_at")
_ROLLOUT_UPDATE = (
    update(R)
    .where(R.c.id == bindparam("k_id"))
    .values({name: bindparam(f"v_{name}", type_=R.c[name].type) for name in ROLLOUT_MUTABLE})
)
_SET_TASK = (
    update(RT)
    .where(RT.c.rollout_id == bindparam("k_rollout"), RT.c.sensor_serial == bindparam("k_serial"))
    .values(task_id=bindparam("v_task"))
)
UNFINISHED = (RolloutState.SCHEDULED, RolloutState.RUNNING, RolloutState.PAUSED)
CANCELLED_REASON = "cancelled by the customer"
_DONE = {"pause": "paused", "resume": "resumed", "cancel": "cancelled"}


def _insert_ignoring(conn: AsyncConnection) -> postgresql.Insert | sqlite.Insert:
    """An INSERT of targets that skips those already there (``ON CONFLICT DO NOTHING``)."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt: postgresql.Insert | sqlite.Insert = dialect.insert(RT).on_conflict_do_nothing()
    return stmt


async def _add_targets(conn: AsyncConnection, rollout_id: int, serials: Sequence[int], now: datetime) -> None:
    if serials:
        rows = [{"rollout_id": rollout_id, "sensor_serial": s, "added_at": now} for s in serials]
        await conn.execute(_insert_ignoring(conn), rows)


async def _add_selected(
    conn: AsyncConnection, rollout_id: int, labels: Mapping[str, str], customer_id: int | None, now: datetime
) -> None:
    """Every registered sensor of the customer carrying `labels`, with one ``INSERT ... SELECT``."""
    chosen = select(literal(rollout_id, RT.c.rollout_id.type), S.c.serial, literal(now, RT.c.added_at.type)).where(
        registered_to(customer_id), *labelled(labels)
    )
    stmt = _insert_ignoring(conn).from_select(["rollout_id", "sensor_serial", "added_at"], chosen)
    await conn.execute(stmt)


async def _updated_since(conn: AsyncConnection, since: datetime | None, looked: Sequence[int]) -> list[dict[str, Any]]:
    """The rollouts other than `looked` updated at or after `since` (paused or cancelled since
    the last round): a round reports them too. None before the first round."""
    if since is None:
        return []
    query = select(R).where(R.c.updated_at >= since, R.c.id.not_in(looked)).order_by(R.c.id)
    return [dict(r._mapping) for r in await conn.execute(query)]


def _rules(row: Mapping[Any, Any]) -> Rules:
    return Rules(
        row["max_in_flight"],
        row["continuous"],
        Rate.of(row["rate"]),
        Abort.of(row["abort"]),
        Schedule.of(row["schedule"]),
    )


def _info(row: Mapping[Any, Any], totals: Totals) -> RolloutInfo:
    rate = Rate.of(row["rate"])
    fields = {name: row[name] for name in RolloutInfo.__dataclass_fields__ if name in row}
    return RolloutInfo(
        **fields | {"state": RolloutState(row["state"]), "totals": totals},
        rate_per_minute=None if rate is None else rate.at(totals.completed),
    )


async def _infos(conn: AsyncConnection, rows: Sequence[Mapping[Any, Any]]) -> list[RolloutInfo]:
    totals = await totals_of(conn, [r["id"] for r in rows])
    return [_info(r, totals[r["id"]]) for r in rows]


async def join_continuous(
    conn: AsyncConnection, serial: int, labels: Mapping[str, str], *, customer_id: int | None, now: datetime
) -> None:
    """Add a sensor just registered or relabelled to every unfinished continuous rollout of
    its customer whose selector labels it all carries, in the caller's transaction (a
    target it already is stays as it is). A relabelled sensor that no longer matches stays
    a target: what it was sent is not taken back."""
    owner = R.c.customer_id.is_(None) if customer_id is None else R.c.customer_id == customer_id
    query = (
        select(R.c.id, R.c.selector)
        .where(owner, R.c.continuous.is_(True), R.c.state.in_([str(s) for s in UNFINISHED]))
        .order_by(R.c.id)
    )  # rollouts are locked in id order by every write that locks several
    joined = [
        rollout_id
        for rollout_id, selector in await conn.execute(query)
        if selector is not None and all(labels.get(k) == v for k, v in selector["labels"].items())
    ]
    rows = [{"rollout_id": r, "sensor_serial": serial, "added_at": now} for r in joined]
    if rows:
        added = [r for (r,) in await conn.execute(_insert_ignoring(conn).values(rows).returning(RT.c.rollout_id))]
        if added:
            await conn.execute(update(R).where(R.c.id.in_(added)).values(target_count=R.c.target_count + 1))
            log.info("sensor %d joined continuous rollouts %s", serial, added)


async def _save_rollouts(conn: AsyncConnection, rows: Sequence[Mapping[Any, Any]]) -> None:
    params = [{"k_id": r["id"]} | {f"v_{name}": r[name] for name in ROLLOUT_MUTABLE} for r in rows]
    if params:
        await conn.execute(_ROLLOUT_UPDATE, params)


def _cancel(work: Work, reason: str) -> lc.Outcome:
    """The customer's cancel of a rollout task, with a reason that names the rollout."""
    outcome = lc.cancel(work.state)
    return replace(outcome, steps=tuple(replace(s, reason=reason) for s in outcome.steps))


class RolloutQueries(StoreBase):
    async def create_rollout(self, new: NewRollout, *, customer_id: int | None, now: datetime) -> RolloutInfo:
        """Store a rollout and its targets in one transaction, all or nothing.

        The targets are the listed sensors and the customer's registered sensors carrying every
        selector label. A listed sensor not registered to the customer is an `InvalidInput`
        with ``details["unregistered_serials"]``; no target at all is one on ``targets``,
        except for a continuous rollout with a selector, which sensors may join later
        (`join_continuous`). The rollout is ``scheduled`` while its start_at is ahead, else
        ``running`` from now."""
        schedule = Schedule.of(new.schedule)
        started = schedule is None or schedule.started(now)
        row: dict[str, Any] = {
            "customer_id": customer_id,
            "name": new.name,
            "type": new.type,
            "file_id": new.file_id,
            "max_attempts": new.max_attempts,
            "timeout_s": new.timeout_s,
            "sensors": None if new.sensors is None else list(new.sensors),
            "selector": None if new.selector is None else {"labels": dict(new.selector)},
            "continuous": new.continuous,
            "max_in_flight": new.max_in_flight,
            "rate": new.rate,
            "abort": new.abort,
            "schedule": new.schedule,
            "state": RolloutState.RUNNING if started else RolloutState.SCHEDULED,
            "created_at": now,
            "updated_at": now,
            "started_at": now if started else None,
        }
        async with self._write() as conn:
            listed = sorted(set(new.sensors or ()))
            if customer_id is not None and listed:
                await conn.run_sync(_check_owned, set(listed), customer_id)
            rollout_id = (await conn.execute(insert(R).values(row).returning(R.c.id))).scalar_one()
            await _add_targets(conn, rollout_id, listed, now)
            if new.selector is not None:
                await _add_selected(conn, rollout_id, new.selector, customer_id, now)
            counted = select(func.count()).where(RT.c.rollout_id == rollout_id).scalar_subquery()
            await conn.execute(update(R).where(R.c.id == rollout_id).values(target_count=counted))
            totals = (await totals_of(conn, [rollout_id]))[rollout_id]
            if totals.targets == 0 and not (new.continuous and new.selector is not None):
                raise InvalidInput(
                    "targets: no sensor matches the rollout's sensors and selector", details={"field": "targets"}
                )
            stored = (await conn.execute(select(R).where(R.c.id == rollout_id))).one()._mapping
            log.info("rollout %d created for customer %s with %d targets", rollout_id, customer_id, totals.targets)
            return _info(stored, totals)

    async def get_rollout(self, rollout_id: int, *, customer_id: int | None = None) -> RolloutInfo:
        """The rollout with its totals; `NotFound` if there is none, or it is another customer's."""
        async with self._read() as conn:
            row = (await conn.execute(owned(select(R).where(R.c.id == rollout_id), customer_id, R))).first()
            if row is None:
                raise NotFound(f"rollout {rollout_id} not found")
            return (await _infos(conn, [row._mapping]))[0]

    async def list_rollouts(
        self,
        *,
        customer_id: int | None,
        state: RolloutState | None = None,
        before_id: int | None = None,
        limit: int = 100,
    ) -> tuple[list[RolloutInfo], bool]:
        """Newest first; `before_id` is the keyset cursor. Returns the page and whether more follow."""
        query = owned(select(R), customer_id, R)
        if state is not None:
            query = query.where(R.c.state == str(state))
        if before_id is not None:
            query = query.where(R.c.id < before_id)
        async with self._read() as conn:
            rows = [r._mapping for r in await conn.execute(query.order_by(R.c.id.desc()).limit(limit + 1))]
            return await _infos(conn, rows[:limit]), len(rows) > limit

    async def rollout_states(self) -> dict[RolloutState, int]:
        """Rollouts per state, every customer's (the metrics' gauges); every state is there."""
        async with self._read() as conn:
            rows = await conn.execute(select(R.c.state, func.count()).group_by(R.c.state))
            return dict.fromkeys(RolloutState, 0) | {RolloutState(state): n for state, n in rows}

    async def rollout_action(
        self,
        rollout_id: int,
        action: Literal["pause", "resume", "cancel"],
        *,
        customer_id: int | None,
        in_flight: Literal["finish", "cancel"] = "finish",
        now: datetime,
    ) -> RolloutInfo:
        """Pause, resume or cancel a rollout; repeating the last action is a no-op.

        Pause holds a scheduled or running rollout (its tasks under way go on); resume makes it
        running again, or scheduled while its start_at is ahead, paced afresh (no burst for the
        time it was held). Cancel ends it, cancelling its tasks not yet sent and, with
        ``in_flight="cancel"``, also those sent or running (the sensors are told through the
        outbox). A completed or aborted rollout, or pausing or resuming a cancelled one, is a
        `Conflict`; another customer's rollout is `NotFound`."""
        changes = Changes(now)
        async with self._write() as conn:
            query = self._locked(owned(select(R).where(R.c.id == rollout_id), customer_id, R))
            found = (await conn.execute(query)).first()
            if found is None:
                raise NotFound(f"rollout {rollout_id} not found")
            row = dict(found._mapping)
            state = RolloutState(row["state"])
            if state.finished and not (action == "cancel" and state is RolloutState.CANCELLED):
                raise Conflict(
                    f"rollout {rollout_id} is {state} and can no longer be {_DONE[action]}",
                    details={"state": str(state)},
                )
            target = _after(action, state, row, now)
            if target is not state:
                if action == "cancel":
                    row |= {"reason": CANCELLED_REASON, "finished_at": now}
                    every = in_flight == "cancel"
                    await self._cancel_rollout_tasks(
                        conn, changes, rollout_id, f"rollout {rollout_id} {CANCELLED_REASON}", every
                    )
                row |= {"state": str(target), "updated_at": now}
                await _save_rollouts(conn, [row])
                await conn.run_sync(self._write_changes, changes)
                log.info("rollout %d %s (%s -> %s)", rollout_id, _DONE[action], state, target)
            return (await _infos(conn, [row]))[0]

    async def _cancel_rollout_tasks(
        self, conn: AsyncConnection, changes: Changes, rollout_id: int, reason: str, every: bool
    ) -> None:
        """Cancel the rollout's Pending tasks not yet sent (with `every`: all its Pending and Ongoing)."""
        query = select(T).where(T.c.rollout_id == rollout_id, ROLLOUT_TASK_SQL)
        if every:
            query = query.where(T.c.status_id.in_(ACTIVE))
        else:
            query = query.where(T.c.status_id == TaskStatus.PENDING, T.c.sent_at.is_(None))
        for work in await conn.run_sync(self._load, self._locked(query), changes):
            changes.apply(work, _cancel(work, reason))

    async def advance_rollouts(self, *, now: datetime, changed_since: datetime | None = None) -> RolloutAdvance:
        """One pacing round over every scheduled or running rollout, in one transaction.

        Each is locked (``FOR UPDATE`` on PostgreSQL, so rounds of several instances take turns
        and the cap holds for all of them together), counted, and stepped by
        `domain.rollout.step`: its state changes are written (started_at when it starts,
        finished_at and reason when it completes or aborts), its next waiting targets in serial
        order get their tasks (`insert_tasks`), and its ``next_start_at`` is kept for the next
        round. A target whose sensor is no longer registered to the rollout's customer is
        dropped, never waited for. An abort cancels the rollout's tasks not yet sent; those
        under way finish. Returns the tasks created and, with fresh totals, every rollout looked
        at and every other one updated at or after `changed_since` (paused or cancelled
        meanwhile)."""
        async with self._read() as conn:  # with nothing live, a round takes no write lock
            if (await conn.execute(select(R.c.id).where(LIVE_ROLLOUT_SQL).limit(1))).first() is None:
                rows = await _updated_since(conn, changed_since, ())
                return RolloutAdvance([], await _infos(conn, rows))
        changes = Changes(now)
        started: list[Task] = []
        async with self._write() as conn:
            live = self._locked(select(R).where(LIVE_ROLLOUT_SQL).order_by(R.c.id))
            rows = [dict(r._mapping) for r in await conn.execute(live)]
            totals = await totals_of(conn, [r["id"] for r in rows])
            changed, aborted = [], []
            for row in rows:
                decided = step(RolloutState(row["state"]), _rules(row), totals[row["id"]], row["next_start_at"], now)
                if decided.starts:
                    begun, dropped = await self._start_rollout_tasks(conn, row, decided.starts, now)
                    started += begun
                    totals[row["id"]] = after_starts(totals[row["id"]], len(begun), dropped)
                if decided.state is RolloutState.ABORTED:
                    reason = f"rollout {row['id']} aborted: {decided.reason}"
                    await self._cancel_rollout_tasks(conn, changes, row["id"], reason, every=False)
                    aborted.append(row["id"])
                if _apply(row, decided, now):
                    changed.append(row)
            await _save_rollouts(conn, changed)
            await conn.run_sync(self._write_changes, changes)
            others = await _updated_since(conn, changed_since, [r["id"] for r in rows])
            totals |= await totals_of(conn, [*aborted, *(r["id"] for r in others)])
            return RolloutAdvance(started, [_info(r, totals[r["id"]]) for r in [*rows, *others]])

    async def _start_rollout_tasks(
        self, conn: AsyncConnection, row: Mapping[Any, Any], starts: int, now: datetime
    ) -> tuple[Sequence[Task], int]:
        """Create the tasks of the rollout's next `starts` waiting targets, in serial order,
        dropping the targets whose sensor left the rollout's customer on the way: the tasks, and
        how many were dropped. A sensor known to be offline is passed over and keeps waiting: its
        task would hold a slot of the cap until it came back, and enough of them would stall the
        rollout."""
        rollout_id, customer_id = row["id"], row["customer_id"]
        chosen: list[int] = []
        dropped = 0
        after = 0  # serials are positive (`protocol.commands.Serial`)
        while len(chosen) < starts:
            query = (
                select(RT.c.sensor_serial, S.c.customer_id)
                .outerjoin(S, S.c.serial == RT.c.sensor_serial)
                .where(RT.c.rollout_id == rollout_id, WAITING_TARGET_SQL, RT.c.sensor_serial > after)
                .where(S.c.online.is_not(False))  # unknown presence is tried; its ack timeout guards it
                .order_by(RT.c.sensor_serial)
                .limit(starts - len(chosen))
            )
            found = (await conn.execute(query)).all()
            if not found:
                break
            after = found[-1][0]
            chosen += [serial for serial, owner in found if customer_id in (None, owner)]
            if gone := [serial for serial, owner in found if customer_id not in (None, owner)]:
                where = and_(RT.c.rollout_id == rollout_id, RT.c.sensor_serial.in_(gone))
                await conn.execute(delete(RT).where(where))
                dropped += len(gone)
                log.warning(
                    "rollout %d: sensors %s left customer %s, dropped from its targets", rollout_id, gone, customer_id
                )
        if dropped or chosen:
            counts = {"target_count": R.c.target_count - dropped, "started_count": R.c.started_count + len(chosen)}
            await conn.execute(update(R).where(R.c.id == rollout_id).values(counts))
        if not chosen:
            return [], dropped
        new = [
            NewTask(s, row["type"], row["file_id"], row["max_attempts"], row["timeout_s"], rollout_id) for s in chosen
        ]
        created = await conn.run_sync(insert_tasks, new, customer_id=customer_id, now=now, origin=self.origin)
        params = [
            {"k_rollout": rollout_id, "k_serial": serial, "v_task": task_id}
            for serial, task_id in zip(chosen, created.ids, strict=True)
        ]
        await conn.execute(_SET_TASK, params)
        log.info("rollout %d started %d tasks", rollout_id, len(created))
        return created, dropped


def _after(action: str, state: RolloutState, row: dict[str, Any], now: datetime) -> RolloutState:
    """The state `action` leads to from `state` (an unfinished one, or cancelled for a cancel);
    a resume also restarts the pacing in `row` (``next_start_at``: no burst for the pause)."""
    if action == "cancel":
        return RolloutState.CANCELLED
    if action == "pause":
        return RolloutState.PAUSED
    if state is not RolloutState.PAUSED:
        return state
    schedule = Schedule.of(row["schedule"])
    row["next_start_at"] = None
    if schedule is not None and not schedule.started(now):
        return RolloutState.SCHEDULED
    row["started_at"] = row["started_at"] or now
    return RolloutState.RUNNING


def _apply(row: dict[str, Any], decided: Step, now: datetime) -> bool:
    """Write the step into the rollout's row; whether anything changed."""
    before = dict(row)
    state = decided.state
    if state is not RolloutState(row["state"]):
        row |= {"state": str(state), "updated_at": now}
        if state is RolloutState.RUNNING:
            row["started_at"] = row["started_at"] or now
        if state.finished:
            row |= {"finished_at": now, "reason": decided.reason}
    if decided.starts:
        row["updated_at"] = now
    row["next_start_at"] = decided.next_start_at
    return row != before
