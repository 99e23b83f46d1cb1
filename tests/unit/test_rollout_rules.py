"""The pure pacing rules of a rollout (`domain.rollout.step`), driven by a clock of datetimes."""

from __future__ import annotations

import itertools
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from sensortasks.domain.rollout import (
    CATCH_UP_S,
    Abort,
    Increase,
    Rate,
    RolloutState,
    Rules,
    Schedule,
    Totals,
    Window,
    clock_seconds,
    step,
)

MONDAY = datetime(2025, 6, 2, tzinfo=UTC)  # a Monday, midnight UTC
RUNNING = RolloutState.RUNNING


def rounds(rules: Rules, totals: Totals, *, seconds: float, every: float = 0.25) -> list[float]:
    """Run the pacing every `every` seconds for `seconds`, each start taking a target and a
    slot (tasks never finish); the moments (seconds from MONDAY) of every start."""
    starts: list[float] = []
    next_start_at = None
    for i in range(int(seconds / every)):
        now = MONDAY + timedelta(seconds=i * every)
        decided = step(RUNNING, rules, totals, next_start_at, now)
        starts += [i * every] * decided.starts
        totals = replace(
            totals, not_started=totals.not_started - decided.starts, pending=totals.pending + decided.starts
        )
        next_start_at = decided.next_start_at
    return starts


def test_starts_are_evenly_spaced_at_the_rate_from_the_first_round() -> None:
    rules = Rules(max_in_flight=1000, rate=Rate(60))
    assert rounds(rules, Totals(targets=100, not_started=100), seconds=10) == [float(s) for s in range(10)]


def test_a_rate_between_rounds_keeps_its_average() -> None:
    starts = rounds(Rules(max_in_flight=1000, rate=Rate(40)), Totals(not_started=100), seconds=30, every=1.0)
    assert len(starts) == 20  # one every 1.5 s
    assert {b - a for a, b in itertools.pairwise(starts)} == {1.0, 2.0}


@pytest.mark.parametrize("per_minute", [5e-324, 1e-300, 1e-9])
def test_a_vanishing_rate_paces_one_start_a_year_instead_of_overflowing(per_minute: float) -> None:
    decided = step(RUNNING, Rules(max_in_flight=10, rate=Rate(per_minute)), Totals(not_started=5), None, MONDAY)
    assert decided.starts == 1
    assert decided.next_start_at == MONDAY + timedelta(days=365)


def test_a_long_gap_is_not_made_up_in_a_burst() -> None:
    totals = Totals(not_started=1000)
    now = MONDAY + timedelta(hours=1)
    for per_minute in (6.0, 60.0, 600.0):
        decided = step(RUNNING, Rules(1000, rate=Rate(per_minute)), totals, MONDAY, now)
        assert 1 <= decided.starts <= 1 + CATCH_UP_S * per_minute / 60, per_minute
        assert decided.next_start_at is not None
        assert decided.next_start_at > now


def test_slots_held_back_by_the_cap_are_not_saved_up() -> None:
    rules = Rules(max_in_flight=2, rate=Rate(60))
    held = Totals(not_started=50, pending=2)
    next_start_at = None
    for i in range(40):  # ten seconds at the cap
        decided = step(RUNNING, rules, held, next_start_at, MONDAY + timedelta(seconds=i * 0.25))
        assert decided.starts == 0
        next_start_at = decided.next_start_at
    freed = step(RUNNING, rules, Totals(not_started=50), next_start_at, MONDAY + timedelta(seconds=10))
    assert freed.starts == 1


def test_unpaced_starts_fill_the_cap_and_no_more() -> None:
    rules = Rules(max_in_flight=5)
    assert step(RUNNING, rules, Totals(not_started=100, pending=2, ongoing=1), None, MONDAY).starts == 2
    assert step(RUNNING, rules, Totals(not_started=1), None, MONDAY).starts == 1
    assert step(RUNNING, rules, Totals(not_started=100, ongoing=7), None, MONDAY).starts == 0


def test_the_rate_grows_by_its_factor_up_to_its_maximum() -> None:
    rate = Rate(10, Increase(factor=2, every_completed=5, max_per_minute=35))
    assert [rate.at(n) for n in (0, 4, 5, 9, 10, 15, 10**9)] == [10, 10, 20, 20, 35, 35, 35]
    assert Rate.of({"per_minute": 10, "increase": {"factor": 2, "every_completed": 5, "max_per_minute": 35}}) == rate
    decided = step(RUNNING, Rules(100, rate=rate), Totals(not_started=10, completed=5), None, MONDAY)
    assert decided.rate_per_minute == 20
    faster = rounds(Rules(1000, rate=Rate(60, Increase(2, 1, 120))), Totals(not_started=50, completed=1), seconds=5)
    assert len(faster) == 10  # 120 a minute: one every half second


def test_abort_once_enough_tasks_finished_and_too_many_failed() -> None:
    abort = Abort.of({"failure_percent": 20, "min_finished": 10})
    assert abort is not None
    rules = Rules(100, abort=abort)
    few = step(RUNNING, rules, Totals(not_started=5, completed=6, error=3), None, MONDAY)
    assert few.state is RUNNING  # 9 finished: below min_finished
    at_threshold = step(RUNNING, rules, Totals(not_started=5, completed=8, error=2), None, MONDAY)
    assert at_threshold.state is RUNNING  # 20 % is not above 20 %
    aborted = step(RUNNING, rules, Totals(not_started=5, completed=6, error=3, cancelled=1), None, MONDAY)
    assert (aborted.state, aborted.starts) == (RolloutState.ABORTED, 0)
    assert aborted.reason == "3 of 10 finished tasks failed (30.0 %), above the abort threshold of 20 %"


def test_nothing_starts_before_start_at_and_the_rollout_ends_at_end_at() -> None:
    schedule = Schedule.of({"start_at": "2025-06-02T08:00:00+00:00", "end_at": "2025-06-02T09:00:00Z"})
    rules = Rules(10, schedule=schedule)
    waiting = Totals(not_started=5)
    early = step(RolloutState.SCHEDULED, rules, waiting, None, MONDAY + timedelta(hours=7, minutes=59))
    assert (early.state, early.starts) == (RolloutState.SCHEDULED, 0)
    begun = step(RolloutState.SCHEDULED, rules, waiting, None, MONDAY + timedelta(hours=8))
    assert (begun.state, begun.starts) == (RUNNING, 5)
    late = MONDAY + timedelta(hours=9)
    in_flight = step(RUNNING, rules, Totals(not_started=3, ongoing=2), None, late)
    assert (in_flight.state, in_flight.starts) == (RUNNING, 0)  # ended: nothing new, the running ones finish
    ended = step(RUNNING, rules, Totals(not_started=3, completed=2), None, late)
    assert ended.state is RolloutState.COMPLETED
    assert ended.reason == "the schedule ended with 3 targets not started"


@pytest.mark.parametrize(
    ("moment", "open_"),
    [
        (timedelta(hours=21, minutes=59, seconds=59), False),
        (timedelta(hours=22), True),
        (timedelta(hours=23, minutes=59, seconds=59), True),  # 24:00 is the end of the day
        (timedelta(days=1), False),  # Tuesday midnight
        (timedelta(days=2, hours=23), True),  # Wednesday
        (timedelta(days=1, hours=23), False),  # Tuesday is not a day of the window
    ],
)
def test_windows_by_weekday_and_time_of_day(moment: timedelta, open_: bool) -> None:
    schedule = Schedule.of({"windows": [{"days": ["mon", "wed"], "start": "22:00", "end": "24:00"}]})
    assert schedule is not None
    assert schedule.open(MONDAY + moment) is open_
    decided = step(RUNNING, Rules(10, schedule=schedule), Totals(not_started=5), None, MONDAY + moment)
    assert (decided.state, decided.starts) == (RUNNING, 5 if open_ else 0)


def test_times_of_day_run_from_00_00_to_24_00() -> None:
    assert (clock_seconds("00:00"), clock_seconds("24:00")) == (0, 24 * 3600)
    assert Window.of({"days": ["sun"], "start": "09:30", "end": "17:00"}) == Window(frozenset({6}), 34200, 61200)
    for bad in ("24:01", "9:00", "12:60", "noon"):
        with pytest.raises(ValueError, match="not a time of day"):
            clock_seconds(bad)


def test_a_window_that_opens_starts_at_the_rate_not_with_the_slots_it_was_closed() -> None:
    schedule = Schedule.of({"windows": [{"days": ["mon"], "start": "01:00", "end": "02:00"}]})
    rules = Rules(100, rate=Rate(60), schedule=schedule)
    closed = step(RUNNING, rules, Totals(not_started=50), None, MONDAY + timedelta(minutes=30))
    assert closed.starts == 0
    opened = step(RUNNING, rules, Totals(not_started=50), closed.next_start_at, MONDAY + timedelta(hours=1))
    assert opened.starts == 1


def test_a_continuous_rollout_completes_only_when_its_schedule_ends() -> None:
    done = Totals(targets=3, completed=3)
    assert step(RUNNING, Rules(10), done, None, MONDAY).state is RolloutState.COMPLETED
    assert step(RUNNING, Rules(10, continuous=True), done, None, MONDAY).state is RUNNING
    ending = Rules(10, continuous=True, schedule=Schedule(end_at=MONDAY + timedelta(hours=1)))
    assert step(RUNNING, ending, done, None, MONDAY).state is RUNNING
    ended = step(RUNNING, ending, done, None, MONDAY + timedelta(hours=1))
    assert (ended.state, ended.reason) == (RolloutState.COMPLETED, None)


@pytest.mark.parametrize(
    "state", [RolloutState.PAUSED, RolloutState.COMPLETED, RolloutState.ABORTED, RolloutState.CANCELLED]
)
def test_paused_and_finished_rollouts_stay_as_they_are(state: RolloutState) -> None:
    rules = Rules(10, rate=Rate(60), abort=Abort(0, 0))
    kept = MONDAY - timedelta(minutes=5)
    decided = step(state, rules, Totals(not_started=5, error=5), kept, MONDAY)
    assert (decided.state, decided.starts, decided.next_start_at, decided.reason) == (state, 0, kept, None)
