"""Sensors: registration to a customer, their labels, release (which cancels the sensor's active
tasks), presence as the dispatcher hears it, and what ``GET /v1/sensors[/{serial}]`` shows."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Connection, bindparam, func, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from sensortasks import labels as label_rules
from sensortasks.domain import TaskStatus
from sensortasks.domain import lifecycle as lc
from sensortasks.errors import Conflict, NotFound
from sensortasks.store.base import ACTIVE, S, StoreBase, T, labelled, owned, registered_to
from sensortasks.store.changes import Changes
from sensortasks.store.records import SensorInfo
from sensortasks.store.rollouts import join_continuous


@dataclass(frozen=True, slots=True)
class ListedSensor:
    """A registered sensor as ``GET /v1/sensors`` lists it: no per-sensor queue counts (one row each)."""

    serial: int
    online: bool | None
    last_seen: datetime | None
    registered_at: datetime
    labels: dict[str, str] = field(default_factory=dict)


#: A presence heard, unless a later one is stored (`SensorQueries.record_presence`).
_PRESENCE = (
    update(S)
    .where(S.c.serial == bindparam("k"), or_(S.c.presence_at.is_(None), S.c.presence_at <= bindparam("v_at")))
    .values(online=bindparam("v_online"), last_seen=bindparam("v_at"), presence_at=bindparam("v_at"))
)


def _add_missing(conn: Connection, serials: Sequence[int]) -> None:
    """Add the sensors not known yet (``ON CONFLICT DO NOTHING``): several instances may add
    the same sensor at once."""
    if serials:
        dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
        conn.execute(dialect.insert(S).on_conflict_do_nothing(), [{"serial": s} for s in serials])


def _record_presence(conn: Connection, latest: Mapping[int, tuple[bool, datetime]]) -> None:
    _add_missing(conn, sorted(latest))
    conn.execute(_PRESENCE, [{"k": s, "v_online": o, "v_at": at} for s, (o, at) in latest.items()])


class SensorQueries(StoreBase):
    async def register_sensor(
        self, serial: int, *, customer_id: int | None, now: datetime, labels: Mapping[str, str] | None = None
    ) -> bool:
        """Register `serial` (to the customer, when there are customers); True if it is new.
        `labels` replace the sensor's (None: a registered sensor keeps its own, a new one has
        none). A sensor registered to another customer is a Conflict."""
        async with self._write() as conn:
            row = (await conn.execute(self._locked(select(S).where(S.c.serial == serial)))).first()
            if row is not None and row.registered_at is not None and row.customer_id != customer_id:
                raise Conflict(f"sensor {serial} is registered to another customer")
            created = row is None or row.registered_at is None
            stored = dict(labels) if labels is not None else {} if created else row.labels
            if row is None:
                new = {"serial": serial, "customer_id": customer_id, "registered_at": now, "labels": stored}
                await conn.execute(insert(S).values(new))
            elif created or labels is not None:
                registration = {"customer_id": customer_id, "registered_at": now} if created else {}
                await conn.execute(update(S).where(S.c.serial == serial).values(labels=stored, **registration))
            await join_continuous(conn, serial, customer_id=customer_id, labels=stored, now=now)
        return created

    async def set_labels(
        self, serial: int, *, customer_id: int | None, labels_patch: Mapping[str, str | None], now: datetime
    ) -> dict[str, str]:
        """Apply a JSON Merge Patch to the sensor's labels (a null removes a key) and return them.
        Another customer's or an unregistered sensor is a NotFound; too many labels after the
        patch an InvalidInput, with nothing changed."""
        async with self._write() as conn:
            found = select(S.c.labels).where(S.c.serial == serial, registered_to(customer_id))
            row = (await conn.execute(self._locked(found))).first()
            if row is None:
                raise NotFound(f"sensor {serial} not found")
            merged = label_rules.merge(row.labels, labels_patch)
            await conn.execute(update(S).where(S.c.serial == serial).values(labels=merged))
            await join_continuous(conn, serial, customer_id=customer_id, labels=merged, now=now)
        return merged

    async def list_sensors(
        self, *, customer_id: int | None, labels: Mapping[str, str], after_serial: int | None, limit: int
    ) -> tuple[list[ListedSensor], bool]:
        """The customer's registered sensors carrying every pair of `labels`, by serial ascending
        after `after_serial` (the keyset cursor), and whether more follow."""
        query = select(S).where(registered_to(customer_id))
        query = query.where(*labelled(labels))
        if after_serial is not None:
            query = query.where(S.c.serial > after_serial)
        async with self._read() as conn:
            rows = (await conn.execute(query.order_by(S.c.serial).limit(limit + 1))).all()
        listed = [
            ListedSensor(
                serial=r.serial, online=r.online, last_seen=r.last_seen, registered_at=r.registered_at, labels=r.labels
            )
            for r in rows[:limit]
        ]
        return listed, len(rows) > limit

    async def unregister_sensor(self, serial: int, *, customer_id: int | None, now: datetime) -> int:
        """Release a sensor (its labels go: they were its customer's) and cancel its Pending and
        Ongoing tasks; returns how many were cancelled."""
        changes = Changes(now)
        async with self._write() as conn:
            released = await conn.execute(
                update(S)
                .where(S.c.serial == serial, registered_to(customer_id))
                .values(customer_id=None, registered_at=None, labels={})
            )
            if released.rowcount == 0:
                raise NotFound(f"sensor {serial} not found")
            active = self._locked(select(T).where(T.c.sensor_serial == serial, T.c.status_id.in_(ACTIVE)))
            for work in await conn.run_sync(self._load, active, changes):
                changes.apply(work, lc.cancel(work.state))
            await conn.run_sync(self._write_changes, changes)
        return len(changes.transitions)

    async def record_presence(self, updates: Sequence[tuple[int, bool, datetime]]) -> None:
        """Store each sensor's presence as heard at its time, unless a later one is stored: every
        instance hears every presence message, and one that lags (or was frozen) must not put
        an old "offline" over a newer "online" (the sensor would get nothing until it reconnects)."""
        latest: dict[int, tuple[bool, datetime]] = {}
        for serial, online, at in updates:
            if serial not in latest or latest[serial][1] <= at:
                latest[serial] = (online, at)
        # On the hot path with thousands of sensors (each connect and disconnect is one).
        await self._transact(_record_presence, latest)

    async def sensor(self, serial: int, *, customer_id: int | None = None) -> SensorInfo:
        async with self._read() as conn:
            presence = (await conn.execute(select(S).where(S.c.serial == serial))).first()
            active = owned(
                select(T.c.id, T.c.status_id, T.c.sent_at).where(
                    T.c.sensor_serial == serial, T.c.status_id.in_(ACTIVE)
                ),
                customer_id,
            ).order_by(T.c.id)
            rows = (await conn.execute(active)).all()
        foreign = customer_id is not None and (presence is None or presence.customer_id != customer_id)
        if foreign or (presence is None and not rows):
            raise NotFound(f"sensor {serial} not found")
        head = rows[0] if rows else None
        in_flight = head.id if head and (head.status_id == TaskStatus.ONGOING or head.sent_at) else None
        return SensorInfo(
            serial=serial,
            online=presence.online if presence else None,
            last_seen=presence.last_seen if presence else None,
            in_flight=in_flight,
            queued=len(rows) - (1 if in_flight else 0),
            labels=presence.labels if presence else {},
        )

    async def sensors_online(self) -> int:
        async with self._read() as conn:
            return int((await conn.execute(select(func.count()).where(S.c.online.is_(True)))).scalar_one())
