"""The pacing of one rollout over a large fleet, on a simulated clock: is the cap held, is the
rate held, and what does a pacing round cost the dispatcher?

``python -m sensortasks.tools.rolloutbench [SENSORS]`` (default 100,000) on a temporary
SQLite file. The sensors are rows in the database (the pacing never touches the broker); each
simulated sensor completes its task `TASK_S` simulated seconds after it is claimed, through
`TaskStore.claim_next` and `TaskStore.apply_reports` as the dispatcher's. Rounds run every
`ROUND_S` simulated seconds, as the dispatcher's pacer does, and each one's wall time is a
sample. Two simulated minutes: one limited by its rate, one by its cap. The round's cost is
also measured on a rollout of 1,000 sensors in the same run, so that the figure for a large
fleet is a ratio, not only an absolute time.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import insert

from sensortasks.dispatcher.rollouts import ROUND_S
from sensortasks.store import IncomingReport, NewRollout, TaskStore, open_database, upgrade
from sensortasks.store.base import S
from sensortasks.tools.stats import percentile

#: How long a simulated sensor takes from claim to Completed.
TASK_S = 5.0
FILE_ID = "a3e4aed2-b091-41a6-8265-2185040e2c32"


@dataclass(frozen=True, slots=True)
class Minute:
    """What one simulated stretch of a rollout showed."""

    started: int
    #: The most tasks of the rollout Pending or Ongoing at once, counted after every round.
    peak_in_flight: int
    #: Tasks started per simulated minute, from the first start to the end of the stretch.
    rate_per_minute: float
    #: Wall time of every pacing round, in seconds.
    rounds: list[float]


async def add_sensors(store: TaskStore, count: int, *, first: int = 1, labels: dict[str, str]) -> None:
    """`count` registered sensors from serial `first`, written directly (no customers)."""
    now = datetime.now(UTC)
    rows = [{"serial": first + i, "registered_at": now, "labels": labels} for i in range(count)]
    async with store._write() as conn:
        for at in range(0, len(rows), 10_000):
            await conn.execute(insert(S), rows[at : at + 10_000])


async def run_rollout(
    store: TaskStore,
    start: datetime,
    seconds: float,
    *,
    labels: dict[str, str],
    max_in_flight: int,
    rate: dict[str, Any] | None = None,
) -> Minute:
    """Create a rollout over the sensors carrying `labels` and run it for `seconds` of simulated time."""
    new = NewRollout("bench", "update_firmware", FILE_ID, 1, 3600, None, labels, False, max_in_flight, rate, None, None)
    rollout = await store.create_rollout(new, customer_id=None, now=start)
    due: dict[int, list[IncomingReport]] = {}  # round number -> the reports due then
    rounds: list[float] = []
    started, peak, first, n = 0, 0, None, 0
    for n in range(int(seconds / ROUND_S)):
        now = start + timedelta(seconds=n * ROUND_S)
        if reports := due.pop(n, None):
            await store.apply_reports(reports, now=now)
        began = time.perf_counter()
        done = await store.advance_rollouts(now=now)
        rounds.append(time.perf_counter() - began)
        if done.started:
            first = n if first is None else first
            started += len(done.started)
            claimed = await store.claim_next([t.sensor_serial for t in done.started], now=now)
            later = due.setdefault(n + int(TASK_S / ROUND_S), [])
            later += [IncomingReport(d.sensor_serial, d.task_id, d.attempt, "completed") for d in claimed]
        info = next((r for r in done.rollouts if r.id == rollout.id), None)
        if info is None:  # completed: no longer live
            break
        peak = max(peak, info.totals.in_flight)
    else:
        await store.rollout_action(rollout.id, "cancel", customer_id=None, in_flight="cancel", now=now)
    minutes = (n - (first or 0)) * ROUND_S / 60
    return Minute(started, peak, started / minutes if minutes else 0.0, rounds)


def _cost(rounds: list[float]) -> str:
    p50, p99 = percentile(rounds, 50) * 1000, percentile(rounds, 99) * 1000
    return f"round p50 {p50:.2f} ms, p99 {p99:.2f} ms"


async def run(sensors: int = 100_000, *, say: Callable[[str], None] = print) -> list[str]:
    """Both minutes over `sensors` and the small rollout, as the report's lines."""
    start = datetime(2026, 1, 5, 12, tzinfo=UTC)
    with tempfile.TemporaryDirectory(prefix="sensortasks-rolloutbench-") as tmp:
        url = f"sqlite+aiosqlite:///{Path(tmp) / 'rollouts.db'}"
        await upgrade(url)
        store = TaskStore(open_database(url))
        try:
            await add_sensors(store, sensors, labels={"fleet": "big"})
            await add_sensors(store, 1_000, first=sensors + 1, labels={"fleet": "small"})
            big = {"fleet": "big"}
            rate = await run_rollout(store, start, 60, labels=big, max_in_flight=1_000, rate={"per_minute": 6_000})
            lines = [
                f"{sensors:,} sensors, {os.cpu_count()} cores; a round every {ROUND_S} s, tasks take {TASK_S} s",
                f"rate 6,000/min, cap 1,000: {rate.rate_per_minute:,.0f}/min "
                f"({rate.rate_per_minute / 6_000 - 1:+.1%}), peak in flight {rate.peak_in_flight:,}",
            ]
            say(lines[-1])
            capped = await run_rollout(store, start + timedelta(minutes=2), 60, labels=big, max_in_flight=500)
            lines.append(
                f"cap 500, no rate: peak in flight {capped.peak_in_flight:,}, {capped.rate_per_minute:,.0f}/min "
                f"(the cap allows {500 * 60 / TASK_S:,.0f}/min)"
            )
            say(lines[-1])
            small = await run_rollout(
                store, start + timedelta(minutes=4), 60, labels={"fleet": "small"}, max_in_flight=500
            )
            rounds = rate.rounds + capped.rounds
            share = percentile(rounds, 50) / ROUND_S
            lines += [
                f"{sensors:,} targets: {_cost(rounds)}, {share:.1%} of one core at {1 / ROUND_S:.0f} rounds/s",
                f"1,000 targets: {_cost(small.rounds)}",
                f"ratio: {percentile(rounds, 50) / percentile(small.rounds, 50):.2f} "
                f"(round p50, {sensors:,} against 1,000 targets)",
            ]
            return lines
        finally:
            await store.db.dispose()


def main() -> None:
    sensors = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    for line in asyncio.run(run(sensors, say=lambda _: None)):
        print(line)  # noqa: T201


if __name__ == "__main__":
    main()
