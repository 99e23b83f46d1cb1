"""A rollout's rules, pure: what state it is in and how many of its tasks may start now.

The store counts the totals and keeps ``next_start_at``; `step` decides, given the clock, so
that a fake clock drives maintenance windows and rates in tests, and every dispatcher instance
decides the same from the same rows. Decisions, written down in docs/rollouts.md:

- **In flight** is a rollout task that is Pending or Ongoing. A task created but queued behind
  its sensor's other tasks holds a slot too, so the cap holds at the sensors however the queues
  move; it is never more than `max_in_flight`.
- **Pacing**: starts are evenly spaced at the current rate, ``60 / per_minute`` seconds apart,
  the first one at once. Slots missed while the cap, the window or a pause held the rollout
  back are not saved up, and a dispatcher that was down for a while catches up at most
  `CATCH_UP_S`: no burst after a stop.
- **Increase**: the rate is multiplied by ``factor`` after every ``every_completed``
  completions, up to ``max_per_minute`` (AWS IoT Jobs' exponential rollout, counted on success).
- **Abort**: once ``min_finished`` rollout tasks are terminal, an Error share of the terminal
  ones above ``failure_percent`` aborts: nothing more starts.
- **Schedule**: nothing starts before ``start_at`` (state ``scheduled``) or after ``end_at``;
  with ``windows``, starts happen only inside one (UTC, ``end`` after ``start``, ``24:00`` for
  midnight). A rollout is ``completed`` when every target's task is terminal (a continuous one
  only when its schedule ends, since sensors may still join it).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

#: At most this much of a rate's slots is made up after the pacing was not run (a stopped
#: dispatcher, a stalled loop): a restart does not start a burst of tasks.
CATCH_UP_S = 1.0
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
DAY_SECONDS = 24 * 3600
#: The longest pause between two starts: a rate below one a year (the API takes any positive
#: rate, 1e-300 included) paces as one a year instead of overflowing the clock.
MAX_INTERVAL = timedelta(days=365)
#: Beyond this many steps a rate's increase has long reached any maximum.
MAX_INCREASE_STEPS = 200
_HH_MM = re.compile(r"(?P<h>[01][0-9]|2[0-4]):(?P<m>[0-5][0-9])")


class RolloutState(StrEnum):
    SCHEDULED = "scheduled"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    ABORTED = "aborted"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (RolloutState.COMPLETED, RolloutState.ABORTED, RolloutState.CANCELLED)


@dataclass(frozen=True, slots=True)
class Totals:
    """A rollout's targets and its tasks by status (``not_started``: targets with no task yet)."""

    targets: int = 0
    not_started: int = 0
    pending: int = 0
    ongoing: int = 0
    completed: int = 0
    error: int = 0
    cancelled: int = 0

    @property
    def in_flight(self) -> int:
        return self.pending + self.ongoing

    @property
    def finished(self) -> int:
        return self.completed + self.error + self.cancelled


@dataclass(frozen=True, slots=True)
class Increase:
    factor: float
    every_completed: int
    max_per_minute: float


@dataclass(frozen=True, slots=True)
class Rate:
    per_minute: float
    increase: Increase | None = None

    @classmethod
    def of(cls, raw: dict[str, Any] | None) -> Rate | None:
        if raw is None:
            return None
        inc = raw.get("increase")
        increase = (
            Increase(float(inc["factor"]), int(inc["every_completed"]), float(inc["max_per_minute"])) if inc else None
        )
        return cls(float(raw["per_minute"]), increase)

    def at(self, completed: int) -> float:
        """Starts per minute once `completed` rollout tasks have completed."""
        if self.increase is None:
            return self.per_minute
        steps = min(completed // self.increase.every_completed, MAX_INCREASE_STEPS)
        grown = self.per_minute * self.increase.factor**steps
        return min(max(self.increase.max_per_minute, self.per_minute), grown)


@dataclass(frozen=True, slots=True)
class Abort:
    failure_percent: float
    min_finished: int

    @classmethod
    def of(cls, raw: dict[str, Any] | None) -> Abort | None:
        return None if raw is None else cls(float(raw["failure_percent"]), int(raw["min_finished"]))

    def reason(self, totals: Totals) -> str | None:
        """Why the rollout must abort, or None while it may go on."""
        finished = totals.finished
        if finished == 0 or finished < self.min_finished or totals.error * 100 <= self.failure_percent * finished:
            return None
        share = totals.error * 100 / finished
        return (
            f"{totals.error} of {finished} finished tasks failed ({share:.1f} %),"
            f" above the abort threshold of {self.failure_percent:g} %"
        )


def clock_seconds(hh_mm: str) -> int:
    """Seconds after midnight of ``HH:MM`` (``24:00`` is the end of the day); ValueError otherwise."""
    match = _HH_MM.fullmatch(hh_mm)
    seconds = int(match["h"]) * 3600 + int(match["m"]) * 60 if match else DAY_SECONDS + 1
    if seconds > DAY_SECONDS:
        raise ValueError(f"{hh_mm!r} is not a time of day, HH:MM from 00:00 to 24:00")
    return seconds


@dataclass(frozen=True, slots=True)
class Window:
    """Weekdays (0 = Monday) and a span of the day in seconds, UTC: ``start <= t < end``."""

    days: frozenset[int]
    start: int
    end: int

    @classmethod
    def of(cls, raw: dict[str, Any]) -> Window:
        days = frozenset(DAYS.index(day) for day in raw["days"])
        return cls(days, clock_seconds(raw["start"]), clock_seconds(raw["end"]))

    def contains(self, now: datetime) -> bool:
        second = now.hour * 3600 + now.minute * 60 + now.second
        return now.weekday() in self.days and self.start <= second < self.end


@dataclass(frozen=True, slots=True)
class Schedule:
    start_at: datetime | None = None
    end_at: datetime | None = None
    windows: tuple[Window, ...] = ()

    @classmethod
    def of(cls, raw: dict[str, Any] | None) -> Schedule | None:
        if raw is None:
            return None
        windows = tuple(Window.of(w) for w in raw.get("windows") or ())
        return cls(_moment(raw.get("start_at")), _moment(raw.get("end_at")), windows)

    def started(self, now: datetime) -> bool:
        return self.start_at is None or now >= self.start_at

    def ended(self, now: datetime) -> bool:
        return self.end_at is not None and now >= self.end_at

    def open(self, now: datetime) -> bool:
        """Whether tasks may start at `now` (inside the dates and, with windows, inside one)."""
        inside = not self.windows or any(w.contains(now) for w in self.windows)
        return self.started(now) and not self.ended(now) and inside


def _moment(raw: str | datetime | None) -> datetime | None:
    if raw is None or isinstance(raw, datetime):
        return raw
    return datetime.fromisoformat(raw)


@dataclass(frozen=True, slots=True)
class Rules:
    """What the customer asked for, as the pacing reads it."""

    max_in_flight: int
    continuous: bool = False
    rate: Rate | None = None
    abort: Abort | None = None
    schedule: Schedule | None = None


@dataclass(frozen=True, slots=True)
class Step:
    """What the pacing decided: the rollout's state (and why, when it ended early), how many
    tasks to start now, the next start's earliest moment, and the current rate (None: unpaced)."""

    state: RolloutState
    starts: int = 0
    next_start_at: datetime | None = None
    rate_per_minute: float | None = None
    reason: str | None = None


def step(state: RolloutState, rules: Rules, totals: Totals, next_start_at: datetime | None, now: datetime) -> Step:
    """The rollout's next step at `now`, given its totals (paused and finished ones stay)."""
    rate = rules.rate.at(totals.completed) if rules.rate else None
    if state.finished or state is RolloutState.PAUSED:
        return Step(state, next_start_at=next_start_at, rate_per_minute=rate)
    schedule = rules.schedule or Schedule()
    if not schedule.started(now):
        return Step(RolloutState.SCHEDULED, rate_per_minute=rate)
    if rules.abort and (why := rules.abort.reason(totals)):
        return Step(RolloutState.ABORTED, rate_per_minute=rate, reason=why)
    if totals.in_flight == 0 and (schedule.ended(now) or (not rules.continuous and totals.not_started == 0)):
        why = f"the schedule ended with {totals.not_started} targets not started" if totals.not_started else None
        return Step(RolloutState.COMPLETED, rate_per_minute=rate, reason=why)
    wanted = min(max(0, rules.max_in_flight - totals.in_flight), totals.not_started)
    if not schedule.open(now):
        return Step(RolloutState.RUNNING, rate_per_minute=rate)  # no slots are saved up meanwhile
    if rate is None:
        return Step(RolloutState.RUNNING, starts=wanted)
    return _paced(wanted, rate, next_start_at, now)


def _paced(wanted: int, rate: float, next_start_at: datetime | None, now: datetime) -> Step:
    interval = timedelta(seconds=min(60.0 / rate, MAX_INTERVAL.total_seconds()))
    first = now if next_start_at is None else max(next_start_at, now - timedelta(seconds=CATCH_UP_S))
    due = 0 if first > now else math.floor((now - first) / interval) + 1
    starts = min(wanted, due)
    following = first + starts * interval
    if starts < due:  # held back by the cap or out of targets: the missed slots are gone
        following = max(following, now)
    return Step(RolloutState.RUNNING, starts=starts, next_start_at=following, rate_per_minute=rate)
