"""docs/asyncapi.yaml matches the pydantic models and the topics the code builds."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from sensortasks.api.commands import CommandCreate, CommandTarget
from sensortasks.protocol import (
    CancelMessage,
    CommandReply,
    DispatcherPresence,
    OpsEvent,
    OpsStats,
    Presence,
    Rejection,
    StatusReport,
    TaskMessage,
    Topics,
)

DOC: dict[str, Any] = yaml.safe_load((Path(__file__).parents[2] / "docs" / "asyncapi.yaml").read_text())
MODELS: dict[str, type[BaseModel]] = {
    "TaskMessage": TaskMessage, "CancelMessage": CancelMessage, "StatusReport": StatusReport, "Presence": Presence,
    "DispatcherPresence": DispatcherPresence, "OpsEvent": OpsEvent, "OpsStats": OpsStats, "Rejection": Rejection,
    "CommandReply": CommandReply, "CreateCommand": CommandCreate, "TaskIdCommand": CommandTarget,
}  # fmt: skip
SERIALIZED = {"OpsEvent", "DispatcherPresence"}  # published by us: documented as serialised


def test_it_is_asyncapi_3() -> None:
    assert DOC["asyncapi"] == "3.0.0"
    for operation in DOC["operations"].values():
        assert operation["action"] in ("send", "receive")


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_payload_schema_matches_its_model(name: str) -> None:
    mode = "serialization" if name in SERIALIZED else "validation"
    expected = MODELS[name].model_json_schema(by_alias=True, mode=mode)
    documented = DOC["components"]["schemas"][name]
    assert set(documented["properties"]) == set(expected["properties"])
    assert sorted(documented.get("required", [])) == sorted(expected.get("required", []))
    message = DOC["components"]["messages"][name]
    assert message["payload"] == {"$ref": f"#/components/schemas/{name}"}


def test_every_channel_is_a_topic_the_code_builds() -> None:
    topics = Topics()
    built = {
        topics.tasks(5), topics.status(5), topics.presence(5), topics.command("create"), topics.command("cancel"),
        topics.command("get"), topics.ops_event(5, 9), topics.ops_stats, topics.ops_dispatcher("d1"), topics.ops_rejected,
    }  # fmt: skip
    samples = {"serial": "5", "task_id": "9", "instance": "d1"}
    documented = {
        re.sub(r"\{(\w+)\}", lambda m: samples[m.group(1)], channel["address"])
        for channel in DOC["channels"].values()
        if channel["address"] is not None
    }
    assert documented == built
