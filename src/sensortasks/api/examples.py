"""Example payloads for the OpenAPI document, each one a real answer of the API (the tests
check them against the models and against live responses)."""

from __future__ import annotations

from typing import Any

from sensortasks.protocol.commands import FILE_ID_EXAMPLE, SERIAL_EXAMPLE, TASK_CREATE_EXAMPLE

FILE_ID = FILE_ID_EXAMPLE
SERIAL = SERIAL_EXAMPLE
TASK_CREATE = TASK_CREATE_EXAMPLE

#: Seed 000's task, field for field, with the extensions.
TASK_COMPLETED: dict[str, Any] = {
    "id": 16624171,
    "sensor_serial": SERIAL,
    "type": "update_configuration",
    "status_id": 2,
    "status_name": "Completed",
    "attempt_count": 3,
    "created_at": "2022-10-17 16:00:07",
    "updated_at": "2022-10-17 16:49:39",
    "file_id": FILE_ID,
    "max_attempts": 3,
    "timeout_s": 3600,
    "progress": 100,
    "started_at": "2022-10-17 16:40:01",
    "completed_at": "2022-10-17 16:49:39",
    "error": None,
    "rollout_id": None,
}
#: What ``POST /v1/tasks`` answers: a new task, not yet sent.
TASK_PENDING: dict[str, Any] = TASK_COMPLETED | {
    "id": 16624172,
    "status_id": 1,
    "status_name": "Pending",
    "attempt_count": 0,
    "updated_at": "2022-10-17 16:00:07",
    "progress": None,
    "started_at": None,
    "completed_at": None,
}
TASK_ONGOING: dict[str, Any] = TASK_COMPLETED | {
    "id": 16624170,
    "type": "update_firmware",
    "status_id": 4,
    "status_name": "Ongoing",
    "attempt_count": 1,
    "updated_at": "2022-10-17 16:05:12",
    "progress": 40,
    "started_at": "2022-10-17 16:01:02",
    "completed_at": None,
}
TASK_CANCELLED: dict[str, Any] = TASK_PENDING | {
    "status_id": 5,
    "status_name": "Cancelled",
    "updated_at": "2022-10-17 16:02:30",
    "completed_at": "2022-10-17 16:02:30",
}
TASK_LIST: dict[str, Any] = {
    "data": [TASK_PENDING, TASK_COMPLETED],
    "has_more": True,
    "next_cursor": "djE6MTY2MjQxNzE",
}
BULK_CREATE: dict[str, Any] = {"tasks": [TASK_CREATE, {**TASK_CREATE, "type": "update_firmware", "max_attempts": 5}]}
BULK_CREATED: dict[str, Any] = {"ids": [16624172, 16624173]}


def _event(at: str, kind: str, attempt: int, reason: str, transition: tuple[int, int] | None = None) -> dict[str, Any]:
    names = {1: "Pending", 2: "Completed", 3: "Error", 4: "Ongoing", 5: "Cancelled"}
    source, target = transition or (None, None)
    return {
        "at": at,
        "kind": kind,
        "from_status": source,
        "from_status_name": names.get(source or 0),
        "to_status": target,
        "to_status_name": names.get(target or 0),
        "attempt": attempt,
        "reason": reason,
    }


EVENTS: dict[str, Any] = {
    "task_id": 16624171,
    "data": [
        {**_event("2022-10-17 16:00:07", "transition", 0, "created"), "to_status": 1, "to_status_name": "Pending"},
        _event("2022-10-17 16:00:07", "sent", 1, "first attempt"),
        _event("2022-10-17 16:00:08", "transition", 1, "picked up by the sensor", (1, 4)),
        _event("2022-10-17 16:12:40", "transition", 1, "retry: sensor error: flash write failed", (4, 1)),
        _event("2022-10-17 16:12:45", "sent", 2, "retry"),
        _event("2022-10-17 16:13:15", "sent", 3, "acknowledgement timeout: new attempt"),
        _event("2022-10-17 16:40:01", "transition", 3, "picked up by the sensor", (1, 4)),
        _event("2022-10-17 16:49:39", "transition", 3, "completed by the sensor", (4, 2)),
    ],
}
RESULT: dict[str, Any] = {
    "task_id": 16624171,
    "status_id": 2,
    "status_name": "Completed",
    "completed_at": "2022-10-17 16:49:39",
    "result": {"version": "2.4.1"},
    "error": None,
}
LABELS: dict[str, str] = {"region": "eu-west", "hw/rev": "b2"}
SENSOR_CREATE: dict[str, Any] = {"serial": SERIAL, "labels": LABELS}
LABELS_PATCH: dict[str, Any] = {"labels": {"ring": "canary", "hw/rev": None}}
SENSOR_REGISTERED: dict[str, Any] = {
    "serial": SERIAL,
    "mqtt": {
        "username": f"sensor-{SERIAL}",
        "password": "qGdxhMQIEnxVOF42dcbsGzR_KoW-sQRY",
        "client_id": f"sensor-{SERIAL}",
    },
}
SENSOR: dict[str, Any] = {
    "serial": SERIAL,
    "online": True,
    "last_seen": "2022-10-17 16:49:39",
    "task_in_flight": 16624170,
    "queued": 2,
    "labels": LABELS,
}
#: `SENSOR` after `LABELS_PATCH`.
SENSOR_RELABELLED: dict[str, Any] = SENSOR | {"labels": {"region": "eu-west", "ring": "canary"}}
SENSOR_LISTED: dict[str, Any] = {
    "serial": SERIAL,
    "labels": LABELS,
    "online": True,
    "last_seen": "2022-10-17 16:49:39",
    "registered_at": "2022-10-17 15:58:02",
}
SENSOR_LIST: dict[str, Any] = {
    "data": [SENSOR_LISTED, SENSOR_LISTED | {"serial": SERIAL + 1, "online": None, "last_seen": None}],
    "has_more": True,
    "next_cursor": "djE6MTIzNDU2Nzg5MDk3OTA",
}
MQTT_CLIENT: dict[str, Any] = {
    "username": "backend-3f9a1c07e2",
    "client_id": "backend-3f9a1c07e2",
    "reply_topic_prefix": "replies/backend-3f9a1c07e2",
    "created_at": "2022-10-17 16:00:07",
}
MQTT_CLIENT_CREATED: dict[str, Any] = MQTT_CLIENT | {"password": "Vb2Qn6y0W7kJxR3uLm9TzP4sHc8dFa1e"}
MQTT_CLIENTS: dict[str, Any] = {"data": [MQTT_CLIENT]}
HEALTH_OK: dict[str, Any] = {"status": "ok", "database": "up", "broker": "up"}
HEALTH_DOWN: dict[str, Any] = {"status": "unavailable", "database": "up", "broker": "down"}
METRICS = """# HELP sensortasks_tasks Tasks by status
# TYPE sensortasks_tasks gauge
sensortasks_tasks{status="Pending"} 12.0
sensortasks_tasks{status="Completed"} 4021.0
# HELP sensortasks_rollouts Rollouts by state
# TYPE sensortasks_rollouts gauge
sensortasks_rollouts{state="running"} 2.0
sensortasks_rollouts{state="completed"} 9.0
# HELP sensortasks_mqtt_connected 1 while the dispatcher is connected to the broker
# TYPE sensortasks_mqtt_connected gauge
sensortasks_mqtt_connected 1.0
# HELP sensortasks_leader 1 while this instance leads (publishes the outbox and ops/stats)
# TYPE sensortasks_leader gauge
sensortasks_leader 1.0
# HELP sensortasks_instances Dispatcher instances alive at this one's last heartbeat
# TYPE sensortasks_instances gauge
sensortasks_instances 2.0
"""
CSV = f"""id,sensor_serial,type,status_id,status_name,attempt_count,created_at,updated_at,file_id,max_attempts,\
timeout_s,progress,started_at,completed_at,error
16624171,{SERIAL},update_configuration,2,Completed,3,2022-10-17 16:00:07,2022-10-17 16:49:39,{FILE_ID},3,\
3600,100,2022-10-17 16:40:01,2022-10-17 16:49:39,
"""


def error(code: str, message: str, details: Any = None) -> dict[str, Any]:  # noqa: ANN401
    return {"error": {"code": code, "message": message, "details": details}}


#: What a label that breaks the rules answers (`sensortasks.labels`).
LABEL_INVALID = error(
    "invalid_input",
    "labels.Region!: 'Region!' is not a label key: a label key is 1-63 letters, digits and . _ / -, "
    "beginning and ending with a letter or digit",
    {"field": "labels.Region!", "rule": "label_key"},
)
SELECTOR_INVALID = error(
    "invalid_input", "label: 'region' is not a label: write it key:value", {"field": "label", "rule": "label_format"}
)

#: A real answer for each error status, by status.
ERRORS: dict[int, dict[str, Any]] = {
    400: error("bad_request", "There was an error parsing the body"),
    401: error("unauthorized", "missing API key: send 'Authorization: Bearer <key>'"),
    404: error("not_found", "task 16624171 not found"),
    409: error(
        "conflict",
        "task 16624171 is Completed and can no longer be cancelled",
        {"status_id": 2, "status_name": "Completed"},
    ),
    413: error("payload_too_large", "request body larger than 4194304 bytes"),
    422: error(
        "invalid_input",
        "sensor_serial: Input should be greater than 0",
        [{"field": "sensor_serial", "rule": "greater_than", "message": "Input should be greater than 0"}],
    ),
    429: error(
        "too_many_requests",
        "too many failed authentications from 192.0.2.7; retry in 42 s",
        {"retry_after_s": 42},
    ),
    500: error("internal_error", "internal error (this is a bug; it has been logged)"),
    503: error("unavailable", "database unavailable; retry the request"),
}
