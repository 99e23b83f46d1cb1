"""docs/asyncapi.yaml matches the pydantic models, the topics and the MQTT sessions the code uses,
and the AsyncAPI parser finds no error in it.

The payload schemas are generated from the models. After a model changes, regenerate them
(descriptions written in the document are kept) and review the diff:

    .venv/bin/python -m tests.unit.test_asyncapi
"""

from __future__ import annotations

import copy
import inspect
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import yaml
from pydantic import BaseModel

from sensortasks.config import ALONE_SESSION_EXPIRY_S, SHARED_SESSION_EXPIRY_S, Settings
from sensortasks.dispatcher.link import keepalive_for
from sensortasks.protocol import (
    MAX_PAYLOAD_BYTES,
    CancelMessage,
    CommandReply,
    DispatcherPresence,
    OpsEvent,
    OpsStats,
    Presence,
    Rejection,
    RolloutProgress,
    StatusReport,
    TaskMessage,
    Topics,
)
from sensortasks.protocol.commands import CommandCreate, CommandTarget, Task
from sensortasks.sensor import SensorOptions
from tests.node import CACHE, node, npm_ci

PATH = Path(__file__).parents[2] / "docs" / "asyncapi.yaml"
HEADER = (
    "# AsyncAPI 3 description of sensortasks' MQTT protocol v1 (the rules are in protocol.md).\n"
    "# components/schemas is generated from the pydantic models: .venv/bin/python -m tests.unit.test_asyncapi\n"
    "# regenerates it, keeping the descriptions written here; tests/unit/test_asyncapi.py checks it all.\n"
)
PARSER = Path(__file__).parent / "asyncapi"
#: Parser diagnostics accepted, by code, with the reason. Anything else fails the test.
ACCEPTED = {
    "asyncapi-latest-version": "3.0.0 is kept for the widest tool support; 3.1 adds nothing this document uses",
}

#: Document name -> model. What the dispatcher reads is documented as validated; what it
#: publishes as serialised (OpsEvent's `from` alias, DispatcherPresence's computed `status`).
READ: dict[str, type[BaseModel]] = {
    "StatusReport": StatusReport, "Presence": Presence, "CreateCommand": CommandCreate, "TaskIdCommand": CommandTarget,
}  # fmt: skip
PUBLISHED: dict[str, type[BaseModel]] = {
    "TaskMessage": TaskMessage, "CancelMessage": CancelMessage, "CommandReply": CommandReply, "OpsEvent": OpsEvent,
    "OpsStats": OpsStats, "DispatcherPresence": DispatcherPresence, "Rejection": Rejection, "Task": Task,
    "RolloutProgress": RolloutProgress,
}  # fmt: skip
MODELS = READ | PUBLISHED
#: Schemas that no model describes (MQTT 5 user properties), kept as written.
HAND_WRITTEN = ("CommandUserProperties",)
#: Descriptions for fields the models are about to gain (used once the field exists).
DESCRIBED_AHEAD = {
    ("Rejection", "properties", "code"): "Why, for a program (optional; absent from older dispatchers): oversized, "
    "malformed, wrong_topic, unknown_task, wrong_sensor, retained_status, unauthorized, rate_limited, bad_property, "
    "response_topic_refused or internal_error.",
}
SAMPLES = {"serial": "12345678909789", "task_id": "16624171", "instance": "dispatcher-1", "rollout_id": "7"}
IGNORED_KEYS = ("description", "title", "examples")


def load() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(PATH.read_text())
    return document


DOC = load()
SCHEMAS: dict[str, Any] = DOC["components"]["schemas"]
MESSAGES: dict[str, Any] = DOC["components"]["messages"]


def _drop(node: Any, keys: tuple[str, ...]) -> Any:
    if isinstance(node, dict):
        return {k: _drop(v, keys) for k, v in node.items() if k not in keys}
    if isinstance(node, list):
        return [_drop(v, keys) for v in node]
    return node


def generated() -> dict[str, Any]:
    """components/schemas as the models say (no titles, examples or descriptions)."""
    schemas: dict[str, Any] = {}
    for name, model in MODELS.items():
        mode = "validation" if name in READ else "serialization"
        schema = model.model_json_schema(by_alias=True, mode=mode, ref_template="#/components/schemas/{model}")
        # A model's own entry (the reply's `Task`) keeps its place, where MODELS lists it.
        schemas.update({k: v for k, v in schema.pop("$defs", {}).items() if k not in MODELS})
        schemas[name] = schema
    return {name: _drop(schema, ("title", "examples")) for name, schema in schemas.items()}


def _descriptions(node: Any, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], str]:
    found: dict[tuple[str, ...], str] = {}
    if isinstance(node, dict):
        if isinstance(node.get("description"), str):
            found[path] = node["description"]
        for key, value in node.items():
            found |= _descriptions(value, (*path, key))
    return found


def _describe(node: Any, descriptions: dict[tuple[str, ...], str], path: tuple[str, ...] = ()) -> Any:
    if not isinstance(node, dict):
        return node
    described = {k: _describe(v, descriptions, (*path, k)) for k, v in node.items() if k != "description"}
    text = descriptions.get(path, node.get("description"))
    return {"description": text, **described} if text else described


class _Dumper(yaml.SafeDumper):
    """Multi-line strings as literal blocks (``|``), as written by hand."""


_Dumper.add_representer(
    str,
    lambda dumper, text: dumper.represent_scalar("tag:yaml.org,2002:str", text, style="|" if "\n" in text else None),
)


def regenerate() -> None:
    """Rewrite components/schemas from the models, keeping the document's descriptions."""
    document = load()
    old = document["components"]["schemas"]
    schemas = _describe(generated(), DESCRIBED_AHEAD | _descriptions(old))
    document["components"]["schemas"] = {name: old[name] for name in HAND_WRITTEN} | schemas
    text = yaml.dump(document, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=110)
    PATH.write_text(HEADER + text)


def resolve(ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = DOC
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [node["$ref"]] if "$ref" in node else [r for v in node.values() for r in refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in refs(v)]
    return []


def test_it_is_asyncapi_3_from_the_dispatchers_point_of_view() -> None:
    assert DOC["asyncapi"].startswith("3.")
    assert str(MAX_PAYLOAD_BYTES) in DOC["info"]["description"]
    for operation in DOC["operations"].values():
        assert operation["action"] in ("send", "receive")
        assert operation["bindings"]["mqtt"]["qos"] == 1


def test_every_reference_resolves() -> None:
    for ref in refs(DOC):
        resolve(ref)


def test_the_payload_schemas_are_the_models() -> None:
    expected = generated()
    documented = _drop({k: v for k, v in SCHEMAS.items() if k not in HAND_WRITTEN}, IGNORED_KEYS)
    assert sorted(documented) == sorted(expected), "run: .venv/bin/python -m tests.unit.test_asyncapi"
    for name, schema in expected.items():
        assert documented[name] == _drop(schema, IGNORED_KEYS), (
            f"components/schemas/{name} differs from its model: run .venv/bin/python -m tests.unit.test_asyncapi"
        )


def test_every_documented_field_is_described() -> None:
    for name, schema in SCHEMAS.items():
        if "properties" not in schema:
            continue
        missing = [field for field, spec in schema["properties"].items() if "description" not in spec]
        assert not missing, f"components/schemas/{name}: describe {missing}"


@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_every_message_example_is_valid(name: str) -> None:
    message = MESSAGES[name]
    assert message["payload"] == {"$ref": f"#/components/schemas/{name}"}
    assert message["examples"]
    for example in message["examples"]:
        parsed = MODELS[name].model_validate(example["payload"])
        if isinstance(parsed, CommandReply) and parsed.task is not None:  # typed: validated as a Task
            assert parsed.task.model_dump(mode="json") == example["payload"]["task"]
        if "headers" in message:
            properties = SCHEMAS["CommandUserProperties"]["properties"]
            assert set(example["headers"]) <= set(properties)
            assert re.fullmatch(properties["authorization"]["pattern"], example["headers"]["authorization"])


def test_every_channel_is_a_topic_the_code_builds() -> None:
    topics = Topics()
    serial, task_id, instance = int(SAMPLES["serial"]), int(SAMPLES["task_id"]), SAMPLES["instance"]
    built = {
        topics.tasks(serial), topics.status(serial), topics.presence(serial), topics.command("create"),
        topics.command("cancel"), topics.command("get"), topics.ops_event(serial, task_id), topics.ops_stats,
        topics.ops_dispatcher(instance), topics.ops_rejected, topics.ops_rollout(int(SAMPLES["rollout_id"])),
    }  # fmt: skip
    documented = set()
    for channel in DOC["channels"].values():
        address = channel["address"]
        if address is None:  # the command reply: the request's Response Topic
            continue
        assert set(re.findall(r"\{(\w+)\}", address)) == set(channel.get("parameters", {})), address
        documented.add(re.sub(r"\{(\w+)\}", lambda m: SAMPLES[m.group(1)], address))
    assert documented == built
    for topic in documented:
        if topic.startswith(topics.sensors + "/"):
            parsed = topics.parse_sensor(topic)
            assert parsed is not None
            assert parsed.serial == serial
        if topic.startswith(topics.commands + "/"):
            assert topics.parse_command(topic) is not None


def test_every_message_travels_on_a_channel() -> None:
    used = {ref for channel in DOC["channels"].values() for ref in refs(channel["messages"])}
    assert used == {f"#/components/messages/{name}" for name in MESSAGES}


def test_only_presence_stats_dispatchers_and_rollouts_are_retained() -> None:
    retained = {
        DOC["channels"][op["channel"]["$ref"].rsplit("/", 1)[1]]["address"]
        for op in DOC["operations"].values()
        if op["bindings"]["mqtt"]["retain"]
    }
    assert retained == {
        "sensors/{serial}/presence",
        "ops/stats",
        "ops/dispatchers/{instance}",
        "ops/rollouts/{rollout_id}",
    }


def _default(function: Any, name: str) -> Any:
    return inspect.signature(function).parameters[name].default


def test_the_sessions_are_those_of_the_sdk_and_the_dispatcher() -> None:
    """Server bindings: a sensor's session (the SDK's values); x-dispatcher: the dispatcher's."""
    topics = Topics()
    keepalive = _default(aiomqtt.Client, "keepalive")  # the SDK does not change it
    will = json.loads(Presence(v=1, online=False).to_json())
    for name, server in DOC["servers"].items():
        assert server["protocolVersion"] == "5", name
        assert server["security"] == [{"$ref": "#/components/securitySchemes/userPassword"}], name
        sensor = server["bindings"]["mqtt"]
        assert sensor["clientId"] == "sensor-{serial}"
        assert sensor["cleanSession"] is False
        assert sensor["sessionExpiryInterval"] == SensorOptions().session_expiry_s
        assert sensor["keepAlive"] == keepalive
        assert sensor["lastWill"]["topic"] == topics.presence(0).replace("/0/", "/{serial}/")
        assert (json.loads(sensor["lastWill"]["message"]), sensor["lastWill"]["qos"]) == (will, 1)
        assert sensor["lastWill"]["retain"] is True
        dispatcher = sensor["x-dispatcher"]
        assert dispatcher["clientId"] == "sensortasks-{instance}"
        assert dispatcher["cleanSession"] is False
        assert dispatcher["sessionExpiryInterval"] == Settings().session_expiry == ALONE_SESSION_EXPIRY_S
        shared = Settings(mqtt_share_group="g").session_expiry
        assert dispatcher["x-sessionExpiryIntervalInShareGroup"] == shared == SHARED_SESSION_EXPIRY_S
        assert dispatcher["keepAlive"] == keepalive_for(Settings().instance_timeout_s)
        assert dispatcher["lastWill"]["topic"] == topics.ops_dispatcher("{instance}")
        offline = json.loads(DispatcherPresence(v=1, instance="{instance}", online=False).to_json())
        assert json.loads(dispatcher["lastWill"]["message"]) == offline
        assert (dispatcher["lastWill"]["qos"], dispatcher["lastWill"]["retain"]) == (1, True)
    assert {s["protocol"] for s in DOC["servers"].values()} == {"mqtt", "secure-mqtt"}
    assert DOC["components"]["securitySchemes"]["userPassword"]["type"] == "userPassword"


def test_the_wills_are_on_the_presence_operations() -> None:
    operations = DOC["operations"]
    sensor = operations["receivePresence"]["bindings"]["mqtt"]["x-lastWill"]
    assert json.loads(sensor["message"]) == json.loads(Presence(v=1, online=False).to_json())
    dispatcher = operations["sendDispatcherPresence"]["bindings"]["mqtt"]["x-lastWill"]
    offline = json.loads(DispatcherPresence(v=1, instance="{instance}", online=False).to_json())
    assert json.loads(dispatcher["message"]) == offline


def test_command_replies_carry_the_correlation_data_to_the_response_topic() -> None:
    correlation = {"$ref": "#/components/correlationIds/commandCorrelation"}
    for name in ("CreateCommand", "TaskIdCommand", "CommandReply"):
        assert MESSAGES[name]["correlationId"] == correlation, name
        assert "correlationData" in MESSAGES[name]["bindings"]["mqtt"], name
    for name in ("CreateCommand", "TaskIdCommand"):
        assert MESSAGES[name]["headers"] == {"$ref": "#/components/schemas/CommandUserProperties"}, name
    assert "authorization" in SCHEMAS["CommandUserProperties"]["properties"]
    for verb in ("Create", "Cancel", "Get"):
        reply = DOC["operations"][f"receive{verb}"]["reply"]
        assert reply["address"] == {"$ref": "#/components/replyAddresses/responseTopic"}
        assert reply["channel"] == {"$ref": "#/channels/commandReply"}


@pytest.fixture(scope="module")
def parsed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """The official parser (npm @asyncapi/parser, pinned in tests/unit/asyncapi) on the document
    and on a copy broken on purpose (a QoS of 7), in one node process."""
    broken = copy.deepcopy(DOC)
    broken["operations"]["sendTask"]["bindings"]["mqtt"]["qos"] = 7
    broken_path = tmp_path_factory.mktemp("asyncapi") / "broken.yaml"
    broken_path.write_text(yaml.safe_dump(broken))
    installed = npm_ci(PARSER, into=CACHE / "asyncapi-parser")
    done = subprocess.run(
        [node(), str(PARSER / "parse.cjs"), str(installed), str(PATH), str(broken_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    results: dict[str, dict[str, Any]] = json.loads(done.stdout)
    return {"document": results[str(PATH)], "broken": results[str(broken_path)]}


def test_the_asyncapi_parser_finds_no_error(parsed: dict[str, dict[str, Any]]) -> None:
    """No error, no warning: nothing but the diagnostics accepted (with a reason) above."""
    result = parsed["document"]
    assert result["parsed"], result
    unexpected = [d for d in result["diagnostics"] if d["code"] not in ACCEPTED]
    assert not unexpected, json.dumps(unexpected, indent=1)


def test_the_parser_check_catches_a_broken_document(parsed: dict[str, dict[str, Any]]) -> None:
    errors = [d for d in parsed["broken"]["diagnostics"] if d["severity"] == "error"]
    assert any(d["path"] == "operations/sendTask/bindings/mqtt/qos" for d in errors), errors


if __name__ == "__main__":
    regenerate()
    sys.stdout.write(f"regenerated components/schemas in {PATH}\n")
