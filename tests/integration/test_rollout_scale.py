"""A rollout over 100,000 sensors on a simulated clock (`tools.rolloutbench`): the cap and the
rate hold over a minute at that size. The sensors are rows in the database: pacing never
touches the broker, and the live tests show the same rules at real sensors."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from sensortasks.store import TaskStore, open_database, upgrade
from sensortasks.tools.rolloutbench import add_sensors, run_rollout
from tests.conftest import only_on

SENSORS = 100_000
START = datetime(2026, 1, 5, 12, tzinfo=UTC)
pytestmark = only_on("sqlite")  # the pacing's SQL is shared; PostgreSQL's rounds are in test_rollout_store


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[TaskStore]:
    await upgrade(database_url)
    db = open_database(database_url)
    store = TaskStore(db)
    await add_sensors(store, SENSORS, labels={"fleet": "all"})
    yield store
    await db.dispose()


async def test_a_100k_rollout_holds_its_rate_and_its_cap_over_a_minute(store: TaskStore) -> None:
    paced = await run_rollout(
        store, START, 60, labels={"fleet": "all"}, max_in_flight=1_000, rate={"per_minute": 6_000}
    )
    assert abs(paced.rate_per_minute / 6_000 - 1) <= 0.05, paced.rate_per_minute
    assert paced.peak_in_flight <= 1_000
    # Unpaced, for 20 s (the cap fills in the first round and then follows the completions).
    capped = await run_rollout(store, START + timedelta(minutes=2), 20, labels={"fleet": "all"}, max_in_flight=500)
    assert capped.peak_in_flight == 500  # filled, never passed, among 100,000 waiting targets
    assert capped.started > 1_500  # the cap, not the pacing, set the pace: about 100 a second
