"""The leader ends the PostgreSQL sessions of an instance it finds silent, so that row locks a
partition left behind do not block the other instances (`store.members`)."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

from sensortasks.store import NewTask, TaskStore, open_database, upgrade, utcnow
from sensortasks.store.base import T
from sensortasks.store.membership import Member
from tests.conftest import only_on

FILE_ID = "a3e4aed2-b091-41a6-8265-2185040e2c32"
TIMEOUT_S = 2.0
EXPIRY_S = 4

#: SQLite has one process and no sessions to end.
pytestmark = only_on("postgresql")


def member(instance: str, at: object) -> Member:
    return Member(instance, at, at, EXPIRY_S)  # type: ignore[arg-type]


async def test_a_silent_instances_sessions_end_and_the_rows_they_locked_are_free(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    await upgrade(database_url)
    alpha, beta = (TaskStore(open_database(database_url, instance=name)) for name in ("alpha", "beta"))
    now = utcnow()
    try:
        (task,) = await alpha.create([NewTask(1, "update_firmware", FILE_ID, 3, 600)], customer_id=None, now=now)
        assert (await alpha.beat(member("alpha", now), now=now, timeout_s=TIMEOUT_S)).leader
        assert not (await beta.beat(member("beta", now), now=now, timeout_s=TIMEOUT_S)).leader
        # beta's session, cut off where no server timeout reaches it: its transaction holds the row.
        cut = await beta.db.writer.connect()
        await cut.begin()
        await cut.execute(text("SET LOCAL idle_in_transaction_session_timeout = 0"))
        await cut.execute(select(T.c.id).where(T.c.id == task.id).with_for_update())
        nowait = select(T.c.id).where(T.c.id == task.id).with_for_update(nowait=True)
        async with alpha.db.writer.connect() as conn:
            with pytest.raises(DBAPIError, match="could not obtain lock"):
                await conn.execute(nowait)

        later = now + timedelta(seconds=TIMEOUT_S + 0.5)
        with caplog.at_level(logging.WARNING, logger="sensortasks.store.members"):
            beat = await alpha.beat(member("alpha", later), now=later, timeout_s=TIMEOUT_S)
        assert beat.resent == ("beta",)
        assert "ended 1 database session(s) of silent instance(s) beta" in caplog.text

        async with alpha.db.writer.connect() as conn:
            assert (await conn.execute(nowait)).scalar_one() == task.id  # the lock went with the session
        with pytest.raises(DBAPIError):
            await cut.execute(select(1))
        await cut.invalidate()
    finally:
        await alpha.db.dispose()
        await beta.db.dispose()
