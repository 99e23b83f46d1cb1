"""The bench scenarios' pure parts: the pacing schedule, the fleet's round-robin, event
lateness against the stored ``at``, and the lines a run without scenarios adds (none)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from sensortasks.tools.baseline import FIRST_SERIAL
from sensortasks.tools.paced import PacedResult, due_by, fleet_serial, lateness, wire_at
from sensortasks.tools.scenarios import Findings, Scenarios


def test_a_paced_run_has_created_rate_times_elapsed_tasks_whole() -> None:
    assert due_by(0.0, 450) == 0
    assert due_by(0.02, 450) == 9
    assert due_by(0.02, 40) == 0
    assert due_by(0.05, 40) == 2
    assert due_by(10.0, 450) == 4500


def test_tasks_are_dealt_round_robin_over_the_fleet() -> None:
    assert [fleet_serial(n, 3) - FIRST_SERIAL for n in range(7)] == [0, 1, 2, 0, 1, 2, 0]


def event(task_id: int, to: str) -> bytes:
    return json.dumps({"task_id": task_id, "to": to, "at": "2024-01-02 03:04:05"}).encode()


def test_lateness_is_against_the_stored_at_of_transitions_applied_in_the_window() -> None:
    received = [
        (10.0, "ops/events/1/7", event(7, "Pending")),
        (10.5, "ops/events/1/7", event(7, "Ongoing")),
        (11.0, "ops/events/1/8", event(8, "Pending")),  # not in `stored`: another run's task
        (40.0, "ops/events/1/7", event(7, "Completed")),  # applied in the window, received long after
    ]
    stored = {(7, "Pending"): 9.9, (7, "Ongoing"): 10.0, (7, "Completed"): 12.0}
    assert lateness(received, stored, 10.0, 15.0) == pytest.approx([0.5, 28.0])
    assert lateness(received, stored, 0.0, 10.0) == pytest.approx([0.1, 0.5])


def test_the_messages_at_field_reads_as_utc() -> None:
    assert wire_at("2024-01-02 03:04:05") == datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp()


def test_the_paced_table_lists_the_raw_flow_first() -> None:
    findings = Findings(
        paced=[PacedResult("sensortasks", 10, 5.0, [0.01] * 10), PacedResult("raw paho", 10, 5.0, [0.001] * 10)]
    )
    lines = findings.report(Scenarios(paced=True), 10, 10.0, 2**20)
    assert lines[0].startswith("paced: 10 tasks at 5.0/s")
    assert [line.split()[0] for line in lines[-2:]] == ["raw", "sensortasks"]
    assert lines[-1].split()[-3:] == ["10.0", "10.0", "10.0"]


def test_a_paced_rate_given_replaces_half_the_saturated_one() -> None:
    findings = Findings(paced=[PacedResult("sensortasks", 10, 800.0, [0.01] * 10)])
    assert Scenarios(paced=True).pace(3000.0) == 1500.0
    assert Scenarios(paced=True, paced_rate=800.0).pace(3000.0) == 800.0
    line = findings.report(Scenarios(paced=True, paced_rate=800.0), 10, 3000.0, 2**20)[0]
    assert line.startswith("paced: 10 tasks at 800.0/s (as given)")


def test_a_bench_without_scenarios_adds_no_line() -> None:
    assert Findings().report(Scenarios(), 10, 10.0, 2**20) == []
