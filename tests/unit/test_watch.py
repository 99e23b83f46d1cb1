"""The watch view's state and rendering, fed with the dispatcher's real payload shapes."""

from __future__ import annotations

import io

from rich.console import Console

from sensortasks.protocol import DispatcherPresence, OpsEvent, Rejection
from sensortasks.watch import WatchState, render


def test_state_folds_every_ops_topic_and_ignores_garbage() -> None:
    state = WatchState()
    state.apply("ops/dispatchers/a", DispatcherPresence(instance="a", online=True).to_json())
    state.apply("ops/dispatchers/b", DispatcherPresence(instance="b", online=False).to_json())
    state.apply(
        "ops/stats",
        b'{"v":1,"tasks":{"Pending":3,"Ongoing":1,"Completed":7,"Error":0,"Cancelled":2},'
        b'"dispatch_rate":1.5,"complete_rate":2.0,"sensors_online":4}',
    )
    event = OpsEvent.model_validate(
        {"task_id": 9, "sensor_serial": 5, "type": "update_firmware", "from": "Pending", "to": "Ongoing",
         "attempt": 1, "reason": "picked up", "at": "2026-11-22 10:00:00"}
    )  # fmt: skip
    state.apply("ops/events/5/9", event.to_json())
    state.apply("ops/rejected", Rejection(topic="sensors/5/status", reason="malformed", payload="x", at="t").to_json())
    for garbage in (b"\xff", b"[]", b"null", b'{"tasks": "many"}'):
        state.apply("ops/stats", garbage)
    state.apply("elsewhere/x", b"{}")

    assert state.tasks == {"Pending": 3, "Ongoing": 1, "Completed": 7, "Error": 0, "Cancelled": 2}
    assert state.sensors_online == 4
    assert state.dispatchers == {"a": True, "b": False}
    assert state.transitions[0]["task_id"] == 9
    assert state.rejections[0]["reason"] == "malformed"

    out = io.StringIO()
    Console(file=out, width=160).print(render(state))
    text = out.getvalue()
    for expected in ("Completed", "7", "Pending → Ongoing", "malformed", "online", "offline", "sensors online 4"):
        assert expected in text


def test_markup_in_what_peers_send_is_shown_as_text() -> None:
    state = WatchState()
    state.apply("ops/rejected", Rejection(topic="sensors/[b]5/status", reason="[/x] bad", payload="", at="t").to_json())
    state.apply("ops/dispatchers/[red]", DispatcherPresence(instance="[red]", online=True).to_json())
    out = io.StringIO()
    Console(file=out, width=160).print(render(state))  # rich raised MarkupError here before
    assert "[/x] bad" in out.getvalue()
