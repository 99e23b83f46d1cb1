"""Hostile input against a real `sensortasks serve`: it keeps running, refuses and counts, changes nothing.

One server for the module; hypothesis generates the attacks (payloads and MQTT 5 properties,
the security review's cases first); the audit test checks the result, and the last one
restarts the server on the same broker session and database and shows that nothing
poisonous was left in it.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import BaseModel, ValidationError

from sensortasks.protocol import MAX_PAYLOAD_BYTES, Presence, Topics
from sensortasks.protocol.commands import CommandCreate, CommandTarget
from sensortasks.protocol.properties import is_under, properties_problem
from sensortasks.testing import MosquittoBroker
from tests.e2e.conftest import ServeProcess

TOPICS = Topics()
FILE_ID = "a3e4aed2-b091-41a6-8265-2185040e2c32"
#: The one legitimate task; no generated serial can reach it (they stay below 10**6).
VICTIM_SERIAL = 987654321012345
SETTINGS = settings(
    max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


class Envelope(BaseModel):
    """The MQTT 5 properties of one hostile message."""

    response_topic: str | None = None
    correlation_data: bytes | None = None
    user_properties: list[tuple[str, str]] = []
    content_type: str | None = None

    def properties(self) -> Properties | None:
        if self == Envelope():
            return None
        properties = Properties(PacketTypes.PUBLISH)
        if self.response_topic is not None:
            properties.ResponseTopic = self.response_topic
        if self.correlation_data is not None:
            properties.CorrelationData = self.correlation_data
        if self.user_properties:
            properties.UserProperty = self.user_properties
        if self.content_type is not None:
            properties.ContentType = self.content_type
        return properties


class Target:
    def __init__(self, serve: ServeProcess, broker: MosquittoBroker) -> None:
        self.serve = serve
        self.api = httpx.Client(base_url=serve.url, timeout=10)
        self.mqtt = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.mqtt.connect(broker.host, broker.port)
        self.mqtt.loop_start()
        self.published = 0
        self.expected_rejections = 0
        self.victim: dict[str, Any] = {}

    def create_victim(self) -> None:
        """The one legitimate task, once it was sent to its sensor: its state must not move from there."""
        sent = threading.Event()
        self.mqtt.message_callback_add(TOPICS.tasks(VICTIM_SERIAL), lambda *_: sent.set())
        self.mqtt.subscribe(TOPICS.tasks(VICTIM_SERIAL), qos=1)
        created = self.api.post(
            "/v1/tasks", json={"sensor_serial": VICTIM_SERIAL, "file_id": FILE_ID, "type": "update_firmware"}
        )
        assert sent.wait(10), "the victim task was never sent"
        self.victim = self.api.get(f"/v1/tasks/{created.json()['id']}").json()
        assert self.victim["attempt_count"] == 1

    def publish(self, topic: str, payload: bytes, envelope: Envelope | None = None) -> None:
        envelope = envelope or Envelope()
        self.mqtt.publish(topic, payload, qos=1, properties=envelope.properties()).wait_for_publish(5)
        self.published += 1
        self.expected_rejections += must_refuse(topic, payload, envelope)

    def rejected(self) -> float:
        """sensortasks_rejected_total, summed over its reason codes."""
        lines = self.api.get("/metrics").text.splitlines()
        return sum(float(x.split()[-1]) for x in lines if x.startswith("sensortasks_rejected_total"))


def must_refuse(topic: str, payload: bytes, envelope: Envelope) -> bool:
    """What the dispatcher must refuse (and count), predicted from the protocol models.

    It only sees what it subscribes to: ``sensors/+/status``, ``sensors/+/presence`` and
    ``tasks/commands/+``; anything else never reaches it. Out-of-bounds MQTT 5 properties
    are refused on every topic; a command is refused unless it has a response topic outside
    the protocol's own namespaces, a known verb and a valid payload (authentication is off).
    """
    levels = topic.split("/")
    subscribed = (len(levels) == 3 and levels[0] == "sensors" and levels[2] in ("status", "presence")) or (
        len(levels) == 3 and levels[:2] == ["tasks", "commands"]
    )
    if not subscribed:
        return False
    if properties_problem(**envelope.model_dump()) is not None:
        return True
    model: type[BaseModel]
    if levels[:2] == ["tasks", "commands"]:
        reply_to = envelope.response_topic
        if reply_to is None or any(is_under(reply_to, ours) for ours in ("sensors", "ops", "tasks/commands")):
            return True
        command = TOPICS.parse_command(topic)
        if command is None:
            return True  # unknown verb (answered, and counted)
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
        Presence.from_wire(payload) if model is Presence else model.model_validate_json(payload)
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
        target.create_victim()
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
    optional={"v": st.one_of(st.just(1), json_values), "sensor_serial": json_values, "file_id": json_values,
              "type": json_values, "task_id": json_values, "max_attempts": json_values, "timeout_s": json_values},
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


PRINTABLE = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
response_topics = st.one_of(
    st.none(),
    st.sampled_from(["x/#", "+/y", "a/+/b", "", "r" * 60_000, "$SYS/broker/x", "sensors/1/tasks", "ops/stats",
                     "tasks/commands/get"]),
    st.text(alphabet="abc/é", min_size=1, max_size=20).map(lambda t: f"replies/h/{t}"),
)  # fmt: skip
envelopes = st.builds(
    Envelope,
    response_topic=response_topics,
    correlation_data=st.one_of(st.none(), st.binary(max_size=300), st.just(b"c" * 65_535)),
    user_properties=st.lists(
        # Printable: Mosquitto disconnects a client that sends malformed UTF-8 (NUL, controls).
        st.tuples(st.sampled_from(["authorization", "idempotency-key", "x"]), st.text(PRINTABLE, max_size=8)),
        max_size=3,
    )
    | st.integers(min_value=17, max_value=100).map(lambda n: [(f"k{i}", "v") for i in range(n)])
    | st.just([("k", "v" * 2_000)]),
    content_type=st.sampled_from([None, "application/json", "application/json; charset=utf-8", "text/plain"]),
)
GET = b'{"v": 1, "task_id": 1}'
#: The cases of the security review, always tried first.
REVIEWED = [
    Envelope(response_topic="x/#"), Envelope(response_topic="+/y"), Envelope(response_topic=""),
    Envelope(response_topic="r" * 60_000), Envelope(response_topic="$SYS/broker/x"),
    Envelope(response_topic="replies/h/1", correlation_data=b"c" * 65_535),
    Envelope(response_topic="replies/h/1", user_properties=[(f"k{i}", "v") for i in range(100)]),
]  # fmt: skip


def reviewed(test: Any) -> Any:
    for envelope in REVIEWED:
        test = example(topic="tasks/commands/get", payload=GET, envelope=envelope)(test)
    return example(topic="tasks/commands/foo", payload=GET, envelope=Envelope(response_topic="replies/h/1"))(test)


@SETTINGS
@reviewed
@given(topic=topics, payload=payloads, envelope=st.one_of(st.just(Envelope()), envelopes))
def test_hostile_mqtt_messages(target: Target, topic: str, payload: bytes, envelope: Envelope) -> None:
    target.publish(topic, payload, envelope)
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


def wait_rejected(target: Target, expected: float) -> float:
    deadline = time.monotonic() + 20
    rejected = target.rejected()
    while rejected < expected and time.monotonic() < deadline:
        time.sleep(0.2)
        rejected = target.rejected()
    return rejected


def test_the_server_survived_counted_and_changed_nothing(target: Target) -> None:
    rejected = wait_rejected(target, target.expected_rejections)
    assert target.expected_rejections > 0
    assert rejected == target.expected_rejections
    assert target.api.get("/healthz").status_code == 200
    victim = target.api.get(f"/v1/tasks/{target.victim['id']}").json()
    assert victim == target.victim


def test_nothing_poisonous_is_left_for_a_restart(target: Target) -> None:
    assert wait_rejected(target, target.expected_rejections) == target.expected_rejections
    assert target.serve.signal(signal.SIGTERM) == 0
    target.serve.start()  # the same broker session (instance) and database
    # The sentinel comes after anything the broker still held for the dispatcher: once it is
    # counted, whatever came back would have been counted too.
    target.publish(TOPICS.status(1), b"sentinel")
    assert wait_rejected(target, 1) == 1
    assert target.serve.process is not None
    assert target.serve.process.poll() is None, target.serve.log()
    assert target.api.get("/healthz").status_code == 200
    victim = target.api.get(f"/v1/tasks/{target.victim['id']}").json()
    # The restart re-sends the task in flight with the same attempt (SPEC 2.3): only that.
    assert victim | {"updated_at": None} == target.victim | {"updated_at": None}
