"""Pieces of the CLI that need no server: row counting, columns, one-line errors, help, logs."""

from __future__ import annotations

import io
import json
import logging

import httpx
import pytest
from aiomqtt.exceptions import MqttCodeError, MqttConnectError, MqttError
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode
from typer.testing import CliRunner

from sensortasks.cli.app import app
from sensortasks.cli.common import explain
from sensortasks.cli.fleet import fleet_summary
from sensortasks.cli.tasks import CsvRows, columns
from sensortasks.errors import Unavailable
from sensortasks.mqtt import refusal
from sensortasks.ops import logs
from sensortasks.sensor.simulator import FleetStats


def test_csv_rows_are_records_not_newlines() -> None:
    body = b'id,error\n1,\n2,"line one\nline two"\n3,"a ""quoted"" word"\n4,x\n'
    for size in (1, 3, 7, len(body)):
        rows = CsvRows()
        for start in range(0, len(body), size):
            rows.feed(body[start : start + size])
        assert rows.records == 4, size


def test_error_and_rollout_columns_appear_only_where_they_apply() -> None:
    plain = {"id": 1, "status_name": "Pending", "error": None}
    failed = {"id": 2, "status_name": "Error", "error": "not acknowledged after 3 attempt(s)"}
    in_rollout = {"id": 3, "status_name": "Pending", "rollout_id": 7}
    assert "error" not in columns([plain])
    assert "rollout_id" not in columns([plain, failed])
    assert columns([plain, failed])[-1] == "error"
    both = columns([failed, in_rollout])
    assert both.index("rollout_id") < both.index("created_at") < both.index("error")


def test_expected_failures_have_one_line_and_bugs_have_none() -> None:
    request = httpx.Request("GET", "http://127.0.0.1:9/v1/tasks")
    assert explain(httpx.ConnectError("[Errno 111] Connection refused", request=request)) == (
        "cannot reach the server at http://127.0.0.1:9: [Errno 111] Connection refused"
    )
    nested = ExceptionGroup("serve", [ExceptionGroup("dispatcher", [Unavailable("broker down")])])
    assert explain(nested) == "broker down"
    assert explain(ExceptionGroup("mixed", [Unavailable("x"), KeyError("bug")])) is None
    assert explain(KeyError("bug")) is None
    assert explain(ValueError("bug")) is None


def test_refused_logins_are_told_apart_from_a_dead_broker() -> None:
    not_authorized = MqttConnectError(ReasonCode(PacketTypes.CONNACK, identifier=135))
    bad_password = MqttConnectError(ReasonCode(PacketTypes.CONNACK, identifier=134))
    assert refusal(not_authorized) == "Not authorized"
    assert refusal(bad_password) == "Bad user name or password"
    assert refusal(MqttConnectError(5)) == "Not authorised"  # MQTT 3.1.1 return code
    assert refusal(MqttConnectError(ReasonCode(PacketTypes.CONNACK, identifier=136))) is None  # server unavailable
    assert refusal(MqttError("[Errno 111] Connection refused")) is None
    assert refusal(MqttCodeError(7, "Unexpected disconnection")) is None


def test_flags_render_as_flags_in_help() -> None:
    result = CliRunner().invoke(app, ["tasks", "get", "--help"], env={"COLUMNS": "100"})
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if "--json" in line)
    assert "<bool>" not in line
    serve = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "100"}).output
    assert not [line for line in serve.splitlines() if "-only" in line and "<bool>" in line]


def test_simulate_prints_a_summary_not_a_repr() -> None:
    stats = FleetStats(sensors=3, silent=1, connected=3, received=9, started=8, completed=6, errors=1, fatal_errors=1)
    text = fleet_summary(stats)
    assert "FleetStats" not in text
    assert text.startswith("3 of 3 sensor(s) connected (1 silent); 9 task message(s) received, 8 run(s) started")
    assert "6 completed, 1 failed and retryable, 1 failed for good, 0 interrupted" in text


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_log_records_carry_task_sensor_and_action(fmt: logs.LogFormat) -> None:
    record = logging.LogRecord("sensortasks.x", logging.INFO, __file__, 1, "task %d sent", (5,), None)
    record.task_id, record.sensor, record.action = 5, 12345678909789, "send"
    formatter = logs.JsonFormatter() if fmt == "json" else logs.TextFormatter()
    text = formatter.format(record)
    if fmt == "json":
        entry = json.loads(text)
        assert {k: entry[k] for k in ("level", "logger", "message", "task_id", "sensor", "action")} == {
            "level": "INFO", "logger": "sensortasks.x", "message": "task 5 sent",
            "task_id": 5, "sensor": 12345678909789, "action": "send",
        }  # fmt: skip
        assert entry["time"].endswith("+00:00")
    else:
        assert text.endswith("task 5 sent [task_id=5 sensor=12345678909789 action=send]")


def test_configure_quiets_alembic_and_replaces_handlers() -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level, logging.getLogger("alembic").level
    try:
        logs.configure("info", "json")
        logs.configure("info", "json")
        assert len(root.handlers) == 1
        assert isinstance(root.handlers[0].formatter, logs.JsonFormatter)
        stream = io.StringIO()
        root.handlers[0].setStream(stream)  # type: ignore[attr-defined]
        logging.getLogger("alembic.runtime.plugins").info("setup plugin alembic.autogenerate.schemas")
        logging.getLogger("sensortasks.x").info("kept")
        assert [json.loads(line)["message"] for line in stream.getvalue().splitlines()] == ["kept"]
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        logging.getLogger("alembic").setLevel(saved[2])
