"""Sensors: registration to a customer, release (which cancels the sensor's active tasks),
presence as the dispatcher hears it, and what ``GET /v1/sensors/{serial}`` shows."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import bindparam, func, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from sensortasks.domain import TaskStatus
from sensortasks.domain import lifecycle as lc
from sensortasks.errors import Conflict, NotFound
from sensortasks.store.base import ACTIVE, S, StoreBase, T, owned
from sensortasks.store.changes import Changes
from sensortasks.store.records import SensorInfo


async def _add_missing(conn: AsyncConnection, serials: Sequence[int]) -> None:
    """Add the sensors not known yet (``ON CONFLICT DO NOTHING``): several instances may add
    the same sensor at once."""
    if serials:
        dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
        await conn.execute(dialect.insert(S).on_conflict_do_nothing(), [{"serial": s} for s in serials])


class SensorQueries(StoreBase):
    async def register_sensor(self, serial: int, *, customer_id: int | None, now: datetime) -> bool:
        """Register `serial` (to the customer, when there are customers); True if it is new.
        A sensor registered to another customer is a Conflict."""
        async with self._write() as conn:
            row = (await conn.execute(select(S).where(S.c.serial == serial))).first()
            if row is None:
                await conn.execute(insert(S).values(serial=serial, customer_id=customer_id, registered_at=now))
                return True
            if row.registered_at is not None and row.customer_id != customer_id:
                raise Conflict(f"sensor {serial} is registered to another customer")
            if row.registered_at is not None:
                return False
            await conn.execute(update(S).where(S.c.serial == serial).values(customer_id=customer_id, registered_at=now))
            return True

    async def unregister_sensor(self, serial: int, *, customer_id: int | None, now: datetime) -> int:
        """Release a sensor and cancel its Pending and Ongoing tasks; returns how many were cancelled."""
        changes = Changes(now)
        async with self._write() as conn:
            owner = S.c.customer_id.is_(None) if customer_id is None else S.c.customer_id == customer_id
            released = await conn.execute(
                update(S)
                .where(S.c.serial == serial, S.c.registered_at.is_not(None), owner)
                .values(customer_id=None, registered_at=None)
            )
            if released.rowcount == 0:
                raise NotFound(f"sensor {serial} not found")
            active = self._locked(select(T).where(T.c.sensor_serial == serial, T.c.status_id.in_(ACTIVE)))
            for work in await self._load(conn, active, changes):
                changes.apply(work, lc.cancel(work.state))
            await self._write_changes(conn, changes)
        return len(changes.transitions)

    async def record_presence(self, updates: Sequence[tuple[int, bool, datetime]]) -> None:
        """Store each sensor's presence as heard at its time, unless a later one is stored: every
        instance hears every presence message, and one that lags (or was frozen) must not put
        an old "offline" over a newer "online" (the sensor would get nothing until it reconnects)."""
        latest: dict[int, tuple[bool, datetime]] = {}
        for serial, online, at in updates:
            if serial not in latest or latest[serial][1] <= at:
                latest[serial] = (online, at)
        async with self._write() as conn:
            await _add_missing(conn, sorted(latest))
            stmt = (
                update(S)
                .where(
                    S.c.serial == bindparam("k"),
                    or_(S.c.presence_at.is_(None), S.c.presence_at <= bindparam("v_at")),
                )
                .values(online=bindparam("v_online"), last_seen=bindparam("v_at"), presence_at=bindparam("v_at"))
            )
            params = [{"k": s, "v_online": o, "v_at": at} for s, (o, at) in latest.items()]
            await conn.execute(stmt, params)

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
        )

    async def sensors_online(self) -> int:
        async with self._read() as conn:
            return int((await conn.execute(select(func.count()).where(S.c.online.is_(True)))).scalar_one())
