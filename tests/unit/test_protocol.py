"""Topics and messages of protocol v1."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from sensortasks.protocol import Presence, StatusReport, Topics, parse_sensor_command
from sensortasks.protocol.messages import CancelMessage, TaskMessage
from sensortasks.protocol.topics import OpsTopic

TOPICS = Topics()
FILE_ID = "a3e4aed2-b091-41a6-8265-2185040e2c32"


@given(serial=st.integers(min_value=1, max_value=10**18 - 1), channel=st.sampled_from(["tasks", "status", "presence"]))
def test_sensor_topics_round_trip(serial: int, channel: str) -> None:
    topic = getattr(TOPICS, channel)(serial)
    parsed = TOPICS.parse_sensor(topic)
    assert parsed is not None
    assert (parsed.serial, parsed.channel) == (serial, channel)


@pytest.mark.parametrize(
    "topic",
    ["sensors/0/status", "sensors/012/status", "sensors/abc/status", "sensors/1/status/x", "sensors/1/other",
     "sensors//status", "other/1/status", "sensors/-1/status", "sensors/１/status"],
)  # fmt: skip
def test_bad_sensor_topics_are_refused(topic: str) -> None:
    assert TOPICS.parse_sensor(topic) is None


def test_every_serial_the_api_accepts_is_addressable() -> None:
    largest = 2**63 - 1  # the API's bound
    parsed = TOPICS.parse_sensor(TOPICS.status(largest))
    assert parsed is not None
    assert parsed.serial == largest
    assert TOPICS.parse_sensor(TOPICS.status(10**18)) is not None
    assert TOPICS.parse_sensor(f"sensors/{largest + 1}/status") is None


def test_prefixes_are_configurable() -> None:
    topics = Topics(sensors="fleet/a", ops="mon")
    assert topics.status(5) == "fleet/a/5/status"
    assert topics.parse_sensor("fleet/a/5/status") is not None
    assert topics.ops_event(5, 9) == "mon/events/5/9"
    assert topics.all_ops_events == "mon/events/+/+"


def test_ops_topics_parse_under_any_prefix() -> None:
    topics = Topics(ops="mon/x")
    assert topics.parse_ops(topics.ops_stats) == OpsTopic("stats")
    assert topics.parse_ops(topics.ops_rejected) == OpsTopic("rejected")
    assert topics.parse_ops(topics.ops_event(5, 9)) == OpsTopic("event")
    assert topics.parse_ops(topics.ops_dispatcher("d1")) == OpsTopic("dispatcher", "d1")
    for other in ("ops/stats", "mon/x/events/5", "mon/x/dispatchers/a/b", "mon/x/stats/more", "mon/xstats"):
        assert topics.parse_ops(other) is None


def test_status_report_accepts_the_spec_examples_and_ignores_extra_fields() -> None:
    report = StatusReport.model_validate_json(
        '{"v": 1, "task_id": 16624171, "attempt": 1, "status": "error", "error": "checksum mismatch",'
        ' "retryable": false, "firmware": "x"}'
    )
    assert (report.status, report.retryable, report.error) == ("error", False, "checksum mismatch")


@pytest.mark.parametrize(
    "payload",
    [
        '{"v": 2, "task_id": 1, "attempt": 1, "status": "ongoing"}',
        '{"task_id": 1, "attempt": 1, "status": "ongoing", "v": "1"}',
        '{"v": 1, "task_id": 1, "attempt": 0, "status": "ongoing"}',
        '{"v": 1, "task_id": true, "attempt": 1, "status": "ongoing"}',
        '{"v": 1, "task_id": 1, "attempt": 1, "status": "done"}',
        '{"v": 1, "task_id": 1, "attempt": 1, "status": "ongoing", "progress": 101}',
        '{"v": 1, "task_id": 1, "attempt": 1.5, "status": "ongoing"}',
        '{"v": true, "task_id": 1, "attempt": 1, "status": "ongoing"}',
        '{"v": 1.0, "task_id": 1, "attempt": 1, "status": "ongoing"}',
        "[]",
    ],
)
def test_invalid_status_reports_are_refused(payload: str) -> None:
    with pytest.raises(ValidationError):
        StatusReport.model_validate_json(payload)


def test_sensor_commands_parse_by_kind() -> None:
    task = TaskMessage(task_id=1, type="update_firmware", file_id=FILE_ID, attempt=2, timeout_s=60)
    assert parse_sensor_command(task.to_json()) == task
    assert parse_sensor_command(CancelMessage(task_id=1).to_json()) == CancelMessage(task_id=1)
    with pytest.raises(ValidationError):
        parse_sensor_command(b'{"v": 1, "kind": "reboot", "task_id": 1}')


@pytest.mark.parametrize(
    ("parse", "payload"),
    [
        (StatusReport.from_wire, '{"task_id": 1, "attempt": 1, "status": "ongoing"}'),
        (Presence.from_wire, '{"online": true}'),
        (parse_sensor_command, '{"kind": "cancel", "task_id": 1}'),
    ],
)
def test_v_is_required_on_the_wire_but_not_to_build_a_message(parse: Any, payload: str) -> None:
    with pytest.raises(ValidationError) as raised:
        parse(payload)
    assert raised.value.errors()[0]["loc"] == ("v",)
    assert parse(payload.replace("{", '{"v": 1, ', 1)).v == 1
    assert Presence(online=True).to_json() == b'{"v":1,"online":true}'


@pytest.mark.parametrize("online", ['"yes"', '"true"', "1", "0", "null", '"false"'])
def test_presence_online_is_strictly_boolean(online: str) -> None:
    with pytest.raises(ValidationError):
        Presence.from_wire(f'{{"v": 1, "online": {online}}}')


@pytest.mark.parametrize("retryable", ['"no"', "0", '"false"', "null"])
def test_retryable_is_strictly_boolean(retryable: str) -> None:
    payload = f'{{"v": 1, "task_id": 1, "attempt": 1, "status": "error", "retryable": {retryable}}}'
    with pytest.raises(ValidationError):
        StatusReport.from_wire(payload)


def test_a_status_error_with_nul_is_refused() -> None:
    # PostgreSQL text cannot store NUL: such a report could never be applied.
    with pytest.raises(ValidationError):
        StatusReport.from_wire('{"v": 1, "task_id": 1, "attempt": 1, "status": "error", "error": "a\\u0000b"}')


def task_json(**fields: Any) -> str:
    message = {"v": 1, "kind": "task", "task_id": 1, "type": "update_firmware", "file_id": FILE_ID, "attempt": 1}
    return json.dumps(message | {"timeout_s": 60} | fields)


@pytest.mark.parametrize(
    "fields",
    [
        {"file_id": "f"},
        {"file_id": ""},
        {"file_id": 5},
        {"timeout_s": 0},
        {"timeout_s": -5},
        {"timeout_s": 86401},
        {"timeout_s": 60.0},
    ],
)
def test_the_sdk_refuses_nonsense_task_messages(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        parse_sensor_command(task_json(**fields))


def test_file_ids_are_kept_canonical() -> None:
    parsed = parse_sensor_command(task_json(file_id=FILE_ID.upper()))
    assert isinstance(parsed, TaskMessage)
    assert parsed.file_id == FILE_ID
    assert parse_sensor_command(task_json(timeout_s=86400)).timeout_s == 86400  # type: ignore[union-attr]
