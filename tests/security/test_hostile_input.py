"""Hostile input against a real `sensortasks serve`: it keeps running, refuses and counts, changes nothing.

One server for the module; hypothesis generates the attacks; the last test audits the result.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import BaseModel, ValidationError

from sensortasks.api.commands import CommandCreate, CommandTarget
from sensortasks.protocol import MAX_PAYLOAD_BYTES, Presence, Topics
from sensortasks.testing import MosquittoBroker
from tests.e2e.conftest import ServeProcess

TOPICS = Topics()
FILE_ID = "a3e4aed2-b091-41a6-8265-2185040e2c32"
#: The one legitimate task; no generated serial can reach it (they stay below 10**6).
VICTIM_SERIAL = 987654321012345
SETTINGS = settings(
    max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


class Target:
    def __init__(self, serve: ServeProcess, broker: MosquittoBroker) -> None:
        self.serve = serve
        self.api = httpx.Client(base_url=serve.url, timeout=10)
        self.mqtt = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.mqtt.connect(broker.host, broker.port)
        self.mqtt.loop_start()
        self.published = 0
        self.expected_rejections = 0
        created = self.api.post(
            "/v1/tasks", json={"sensor_serial": VICTIM_SERIAL, "file_id": FILE_ID, "type": "update_firmware"}
        )
        self.victim: dict[str, Any] = created.json()

    def publish(self, topic: str, payload: bytes) -> None:
        self.mqtt.publish(topic, payload, qos=1).wait_for_publish(5)
        self.published += 1
        self.expected_rejections += must_refuse(topic, payload)


def must_refuse(topic: str, payload: bytes) -> bool:
    """What the dispatcher must refuse (and count), predicted from the protocol models.

    It only sees what it subscribes to: ``sensors/+/status``, ``sensors/+/presence`` and
    ``tasks/commands/+``; anything else never reaches it.
    """
    levels = topic.split("/")
    subscribed = (len(levels) == 3 and levels[0] == "sensors" and levels[2] in ("status", "presence")) or (
        len(levels) == 3 and levels[:2] == ["tasks", "commands"]
    )
    if not subscribed:
        return False
    command = TOPICS.parse_command(topic)
    model: type[BaseModel]
    if command is not None:
        model = CommandCreate if command == "create" else CommandTarget
    else:
        parsed = TOPICS.parse_sensor(topic)
        if parsed is None:
            return True
        if parsed.channel == "status":
            return True  # malformed, or for a task that is not this sensor's
        model = Presence
    if len(payload) > MAX_PAYLOAD_BYTES:
        return True
    try:
        model.model_validate_json(payload)
    except ValidationError:
        return True
    return False


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    workdir: Path = tmp_path_factory.mktemp("hostile")
    with MosquittoBroker(workdir=workdir / "broker") as broker:
        serve = ServeProcess(broker, workdir, SENSORTASKS_ACK_TIMEOUT_S="600")
        serve.start()
        target = Target(serve, broker)
        time.sleep(1)  # let the victim task be sent: its state must not move from here
        target.victim = target.api.get(f"/v1/tasks/{target.victim['id']}").json()
        yield target
        target.mqtt.loop_stop()
        target.mqtt.disconnect()
        target.api.close()
        serve.stop()


json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70), st.floats(allow_nan=False),
    st.text(max_size=30),
)  # fmt: skip
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
status_like = st.fixed_dictionaries(
    {"v": json_values, "task_id": json_values, "attempt": json_values, "status": json_values},
    optional={"progress": json_values, "result": json_values, "error": json_values, "retryable": json_values},
)
command_like = st.fixed_dictionaries(
    {},
    optional={"sensor_serial": json_values, "file_id": json_values, "type": json_values, "task_id": json_values,
              "max_attempts": json_values, "timeout_s": json_values},
)  # fmt: skip
nested = st.integers(min_value=50, max_value=20_000).map(lambda n: ("[" * n + "]" * n).encode())
huge = st.integers(min_value=16_385, max_value=400_000).map(lambda n: b'{"v": 1, "x": "' + b"a" * n + b'"}')
payloads = st.one_of(
    st.binary(max_size=512), nested, huge,
    status_like.map(lambda d: json.dumps(d).encode()),
    command_like.map(lambda d: json.dumps(d).encode()),
)  # fmt: skip
serials = st.one_of(
    st.integers(min_value=1, max_value=10**6).map(str), st.sampled_from(["0", "007", "abc", "-1", "1.5", ""])
)
topics = st.one_of(
    st.builds(lambda s, c: f"sensors/{s}/{c}", serials, st.sampled_from(["status", "presence", "tasks", "other"])),
    st.sampled_from(["tasks/commands/create", "tasks/commands/cancel", "tasks/commands/get", "tasks/commands/nope"]),
)


@SETTINGS
@given(topic=topics, payload=payloads)
def test_hostile_mqtt_messages(target: Target, topic: str, payload: bytes) -> None:
    target.publish(topic, payload)
    assert target.serve.process is not None
    assert target.serve.process.poll() is None, target.serve.log()


routes = st.sampled_from([
    ("POST", "/v1/tasks"), ("POST", "/v1/tasks/bulk"), ("POST", "/v1/sensors"), ("GET", "/v1/tasks"),
    ("GET", "/v1/tasks/export.csv"), ("GET", "/v1/tasks/{id}"), ("DELETE", "/v1/tasks/{id}"),
    ("GET", "/v1/tasks/{id}/events"), ("GET", "/v1/tasks/{id}/result"), ("GET", "/v1/sensors/{id}"),
    ("DELETE", "/v1/sensors/{id}"),
])  # fmt: skip
ids = st.one_of(st.integers(min_value=-(2**70), max_value=2**70).map(str), st.text(alphabet="abc%20.-_~", max_size=12))
query = st.dictionaries(
    st.sampled_from(["status", "limit", "cursor", "sensor_serial", "type", "created_since", "updated_until"]),
    st.one_of(st.text(max_size=40), st.integers(min_value=-(2**70), max_value=2**70).map(str)),
    max_size=4,
)
bodies = st.one_of(
    st.binary(max_size=256), nested, json_values.map(lambda v: json.dumps(v).encode()),
    command_like.map(lambda d: json.dumps(d).encode()),
    st.lists(command_like, max_size=5).map(lambda ts: json.dumps({"tasks": ts}).encode()),
)  # fmt: skip


@SETTINGS
@given(route=routes, ident=ids, params=query, body=bodies)
def test_hostile_http_requests(
    target: Target, route: tuple[str, str], ident: str, params: dict[str, str], body: bytes
) -> None:
    method, path = route
    path = path.replace("{id}", ident or "0")
    content = body if method == "POST" else None
    response = target.api.request(
        method, path, params=params, content=content, headers={"content-type": "application/json"}
    )
    assert response.status_code < 500, (method, path, params, body[:200], response.text)
    if response.status_code >= 400:
        error = response.json()["error"]
        assert set(error) == {"code", "message", "details"}
        assert error["message"]


def test_the_server_survived_counted_and_changed_nothing(target: Target) -> None:
    deadline = time.monotonic() + 20
    rejected = 0.0
    while time.monotonic() < deadline:
        metrics = target.api.get("/metrics").text
        line = next(x for x in metrics.splitlines() if x.startswith("sensortasks_rejected_total"))
        rejected = float(line.split()[1])
        if rejected >= target.expected_rejections:
            break
        time.sleep(0.2)
    assert target.expected_rejections > 0
    assert rejected == target.expected_rejections
    assert target.api.get("/healthz").status_code == 200
    victim = target.api.get(f"/v1/tasks/{target.victim['id']}").json()
    assert victim == target.victim
