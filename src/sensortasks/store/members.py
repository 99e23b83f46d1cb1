"""The dispatcher instances' heartbeats and the leader lease, in the database every instance
shares: `store.membership` decides, this writes. Each beat is one short transaction that
locks the lease row first, so beats of several instances serialise on it.

On PostgreSQL the leader also ends the database sessions of an instance it finds silent
(`engine.application_name` names them). A partition can leave such a session holding row locks
indefinitely: cut between an extended-protocol ``Execute`` and its ``Sync`` (asyncpg pipelines
an executemany), the server never reports the session idle, so
``idle_in_transaction_session_timeout`` does not end it, and TCP keeps it open for hours. The
tasks it locked would then block every other instance's batches until then.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from datetime import datetime
from typing import Any

from sqlalchemy import delete, insert, select, text, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from sensortasks.store.base import StoreBase
from sensortasks.store.engine import application_name
from sensortasks.store.membership import LEADER, Beat, LeaseState, Member, plan_beat, plan_leave
from sensortasks.store.tables import DispatcherInstance, Lease

log = logging.getLogger(__name__)

M = DispatcherInstance.__table__  # type: ignore[attr-defined]
L = Lease.__table__  # type: ignore[attr-defined]
_END_SESSIONS = text(
    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
    " WHERE datname = current_database() AND pid <> pg_backend_pid() AND application_name = ANY(:names)"
)


class MemberQueries(StoreBase):
    async def beat(self, me: Member, *, now: datetime, timeout_s: float) -> Beat:
        """Record `me` alive, take or renew the lead if free, and (as leader) start recoveries."""
        async with self._write() as conn:
            lease = await self._lease(conn)
            members = {m.instance: m for m in await self._members(conn)}
            beat = plan_beat(members, lease, me, now=now, timeout_s=timeout_s)
            await self._save(conn, beat.me)
            if beat.lease != lease:
                await conn.execute(update(L).where(L.c.name == LEADER).values(asdict(beat.lease)))
            if beat.resent:
                await conn.execute(update(M).where(M.c.instance.in_(beat.resent)).values(recovered=1))
                await self._end_sessions(conn, beat.resent)
            if beat.removed:
                await conn.execute(delete(M).where(M.c.instance.in_(beat.removed)))
        return beat

    async def leave(self, me: Member, *, now: datetime, timeout_s: float) -> None:
        """A clean stop (see `membership.plan_leave`)."""
        async with self._write() as conn:
            lease = await self._lease(conn)
            member, freed = plan_leave(lease, me, now=now, timeout_s=timeout_s)
            await self._save(conn, member)
            if freed != lease:
                await conn.execute(update(L).where(L.c.name == LEADER).values(asdict(freed)))

    async def member(self, instance: str) -> Member | None:
        async with self._read() as conn:
            row = (await conn.execute(select(M).where(M.c.instance == instance))).first()
        return None if row is None else Member(**dict(row._mapping))

    async def _end_sessions(self, conn: AsyncConnection, instances: tuple[str, ...]) -> None:
        """End the silent `instances`' PostgreSQL sessions, releasing any lock they hold; best
        effort (a role that may not signal theirs is logged, and the beat goes on)."""
        if conn.dialect.name != "postgresql":
            return
        names = [application_name(i) for i in instances]
        try:
            async with conn.begin_nested():
                ended = (await conn.execute(_END_SESSIONS, {"names": names})).scalar_one()
        except DBAPIError as exc:
            log.warning("could not end the database sessions of %s: %s", ", ".join(instances), exc)
            return
        if ended:
            log.warning("ended %d database session(s) of silent instance(s) %s", ended, ", ".join(instances))

    async def _lease(self, conn: AsyncConnection) -> LeaseState:
        row = (await conn.execute(self._locked(select(L).where(L.c.name == LEADER)))).one()
        return LeaseState(row.holder, row.expires_at)

    @staticmethod
    async def _members(conn: AsyncConnection) -> list[Member]:
        return [Member(**dict(r._mapping)) for r in await conn.execute(select(M).order_by(M.c.instance))]

    @staticmethod
    async def _save(conn: AsyncConnection, member: Member) -> None:
        """Update the instance's row, or add it (the locked lease row serialises beats)."""
        values: dict[str, Any] = asdict(member)
        updated = await conn.execute(update(M).where(M.c.instance == member.instance).values(values))
        if updated.rowcount == 0:
            await conn.execute(insert(M).values(values))
