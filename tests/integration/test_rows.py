"""`store.rows.insert_rows` stores what SQLAlchemy's own insert stores, converting each distinct
value once (a bulk's rows share their timestamps)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import insert
from sqlmodel.sql.sqltypes import UTCDateTime

from sensortasks.store import open_database, upgrade, utcnow
from sensortasks.store.base import E, T
from sensortasks.store.rows import insert_rows


def _tasks(first_id: int, count: int, now: datetime) -> list[dict[str, Any]]:
    return [
        {
            "id": first_id + i,
            "customer_id": None if i % 2 else 7,
            "sensor_serial": 1000 + i,
            "type": "update_firmware",
            "file_id": "f",
            "max_attempts": 3,
            "timeout_s": 60,
            "status_id": 1,
            "attempt_count": 0,
            "result": {"version": "2.1", "n": i} if i % 3 == 0 else None,
            "created_at": now,
            "updated_at": now + timedelta(microseconds=i % 2),
            "deadline_at": None,
        }
        for i in range(count)
    ]


async def test_the_rows_stored_are_sqlalchemy_s(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    await upgrade(sqlite_url)
    db = open_database(sqlite_url)
    converted = [0]
    convert = UTCDateTime.process_bind_param

    def counted(self: UTCDateTime, value: Any, dialect: Any) -> Any:
        converted[0] += 1
        return convert(self, value, dialect)

    monkeypatch.setattr(UTCDateTime, "process_bind_param", counted)
    try:
        async with db.writer.begin() as conn:
            now = utcnow()
            ours, theirs = _tasks(1, 300, now), _tasks(1001, 300, now)
            await conn.run_sync(insert_rows, T, ours)
            assert converted == [4]  # created_at once, updated_at's two values, deadline_at's None
            await conn.execute(insert(T), theirs)
            events = [{"task_id": 1, "at": now, "kind": "sent", "attempt": 1, "reason": None, "published": b}
                      for b in (True, False)]  # fmt: skip
            await conn.run_sync(insert_rows, E, events)
            stored = [tuple(r) for r in await conn.exec_driver_sql("SELECT * FROM tasks ORDER BY id")]
            stored_events = [tuple(r)[2:] for r in await conn.exec_driver_sql("SELECT * FROM task_events")]
            theirs_at = (await conn.exec_driver_sql("SELECT created_at FROM tasks WHERE id = 1001")).scalar_one()
    finally:
        await db.dispose()
    assert len(stored) == 600
    for a, b in zip(stored[:300], stored[300:], strict=True):
        assert a[1:] == b[1:], (a, b)  # all but the id
    assert stored_events == [(theirs_at, "sent", None, None, 1, None, 1), (theirs_at, "sent", None, None, 1, None, 0)]
