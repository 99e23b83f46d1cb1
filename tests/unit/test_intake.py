"""The dispatcher's first look at received messages: properties, topics, payloads, isolation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from sensortasks.dispatcher.intake import isolate, sort_batch
from sensortasks.dispatcher.link import Incoming
from sensortasks.protocol import Topics
from sensortasks.protocol.properties import MAX_TOPIC_BYTES, is_under, properties_problem, topic_problem

TOPICS = Topics()
STATUS = b'{"v": 1, "task_id": 1, "attempt": 1, "status": "ongoing"}'


def incoming(topic: str, payload: bytes = STATUS, **fields: Any) -> Incoming:
    return Incoming(topic, payload, fields.pop("retain", False), 1, 1, 1, **fields)


@pytest.mark.parametrize(
    ("topic", "problem"),
    [
        ("x/#", "wildcard"), ("+/y", "wildcard"), ("a/+/b", "wildcard"), ("", "empty"), ("a" * 60_000, "longer"),
        ("é" * (MAX_TOPIC_BYTES // 2 + 1), "longer"), ("$SYS/broker/x", "'$'"), ("a\x00b", "control"),
        ("a\nb", "control"),
    ],
)  # fmt: skip
def test_topics_nobody_may_publish_to(topic: str, problem: str) -> None:
    found = topic_problem(topic)
    assert found is not None
    assert problem in found


@pytest.mark.parametrize("topic", ["replies/backend-1/x", "a", "a/b/c d", "é" * (MAX_TOPIC_BYTES // 2), "/"])
def test_valid_topic_names(topic: str) -> None:
    assert topic_problem(topic) is None


def test_under_a_prefix_means_in_its_subtree() -> None:
    assert is_under("replies/a", "replies/a")
    assert is_under("replies/a/x/y", "replies/a")
    assert not is_under("replies/ab", "replies/a")
    assert not is_under("replies", "replies/a")


def bounds(**given: Any) -> str | None:
    fields: dict[str, Any] = {"response_topic": "r/1", "correlation_data": None, "user_properties": ()}
    return properties_problem(**(fields | {"content_type": None} | given))


def test_property_bounds() -> None:
    assert bounds() is None
    assert bounds(correlation_data=b"c" * 256, user_properties=[("k", "v")] * 16) is None
    assert bounds(content_type="application/json; charset=utf-8") is None
    assert "correlation" in (bounds(correlation_data=b"c" * 65_535) or "")
    assert "more than 16" in (bounds(user_properties=[(f"k{i}", "v") for i in range(100)]) or "")
    assert "longer than 1024" in (bounds(user_properties=[("k", "v" * 1024)]) or "")
    assert "more than once" in (bounds(user_properties=[("authorization", "a"), ("Authorization", "b")]) or "")
    assert "content type" in (bounds(content_type="text/plain") or "")
    assert "content type" in (bounds(content_type="application/json" + " " * 300) or "")
    assert "response topic" in (bounds(response_topic="x/#") or "")


def test_bad_properties_are_refused_on_every_topic_before_anything_else() -> None:
    batch = [
        incoming("sensors/5/status", response_topic="x/#"),
        incoming("tasks/commands/get", b"{}", correlation_data=b"c" * 65_535),
        incoming("sensors/5/presence", b"x" * 100_000, user_properties=(("k", "v"),) * 17),
    ]
    intake = sort_batch(batch, TOPICS, commands=True)
    assert [r.code for r in intake.refused] == ["bad_property"] * 3
    assert not intake.reports
    assert not intake.commands


def test_every_command_verb_goes_to_the_command_handler() -> None:
    batch = [incoming("tasks/commands/get", b"{}"), incoming("tasks/commands/foo", b"{}")]
    assert len(sort_batch(batch, TOPICS, commands=True).commands) == 2
    without_handler = sort_batch(batch, TOPICS, commands=False)
    assert [r.code for r in without_handler.refused] == ["wrong_topic"] * 2


def test_a_retained_status_is_refused_and_cleared_and_a_clear_is_ignored() -> None:
    intake = sort_batch(
        [incoming("sensors/5/status", retain=True), incoming("sensors/6/status", b"", retain=True)],
        TOPICS,
        commands=True,
    )
    assert [(r.topic, r.code) for r in intake.refused] == [("sensors/5/status", "retained_status")]
    assert intake.clear == ["sensors/5/status"]
    assert not intake.reports


def test_codes_for_sensor_messages() -> None:
    batch = [
        incoming("sensors/5/status", b"x" * 20_000),
        incoming("sensors/5/tasks"),
        incoming("sensors/5/status", b'{"task_id": 1, "attempt": 1, "status": "ongoing"}'),
        incoming("sensors/5/presence", b'{"v": 1, "online": "yes"}'),
        incoming("sensors/5/status"),
        incoming("sensors/5/presence", b'{"v": 1, "online": true}'),
        incoming("sensors/6/presence", b'{"v": 1, "online": true}', retain=True),
    ]
    intake = sort_batch(batch, TOPICS, commands=True)
    assert [r.code for r in intake.refused] == ["oversized", "wrong_topic", "malformed", "malformed"]
    assert "v: Field required" in intake.refused[2].reason
    assert [(r.serial, r.task_id) for r in intake.reports] == [(5, 1)]
    assert intake.presence == [(5, True, None), (6, True, None)]
    assert intake.back_online == [5]


async def test_isolate_keeps_the_happy_path_batched_and_refuses_only_the_poison() -> None:
    calls: list[list[str]] = []
    refused: list[str] = []

    async def handle(batch: Sequence[Incoming]) -> None:
        calls.append([m.topic for m in batch])
        if any(m.topic == "poison" for m in batch):
            raise ValueError("boom")

    async def refuse(message: Incoming, exc: Exception) -> None:
        refused.append(f"{message.topic}: {exc}")

    await isolate([incoming("a"), incoming("b")], handle, refuse)
    assert calls == [["a", "b"]]
    calls.clear()
    await isolate([incoming("a"), incoming("poison"), incoming("b")], handle, refuse)
    assert calls == [["a", "poison", "b"], ["a"], ["poison"], ["b"]]
    assert refused == ["poison: boom"]
    calls.clear()
    await isolate([incoming("poison")], handle, refuse)
    assert calls == [["poison"]]  # a batch of one is not tried twice
    assert refused == ["poison: boom"] * 2
