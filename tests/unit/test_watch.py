"""The watch view's state and rendering, fed with the dispatcher's real payload shapes."""

from __future__ import annotations

import io

from rich.console import Console

from sensortasks.domain import TaskStatus
from sensortasks.ops.watch import STATUSES, Link, WatchState, render
from sensortasks.protocol import DispatcherPresence, OpsEvent, OpsStats, Rejection, RolloutProgress, Topics


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


def _text(state: WatchState, now: float | None = None) -> str:
    out = io.StringIO()
    Console(file=out, width=160).print(render(state, now=now))
    return out.getvalue()


def test_the_header_says_whether_and_why_the_watch_is_not_connected() -> None:
    state = WatchState(link=Link(host="broker.example", port=1884))
    assert "connecting to broker.example:1884" in _text(state)
    state.link.phase, state.link.reason, state.link.retry_at = "disconnected", "[Errno 111] Connection refused", 104.0
    assert "disconnected from broker.example:1884: [Errno 111] Connection refused; retrying in 4 s" in _text(state, 100)
    state.link.phase, state.link.reason = "refused", "Not authorized"
    assert "login refused by broker.example:1884: Not authorized" in _text(state)
    state.link.phase = "connected"
    assert "connected to broker.example:1884" in _text(state)


def test_stats_of_a_stopped_dispatcher_are_shown_as_such() -> None:
    state = WatchState()
    live = OpsStats(instance="d1", at="2026-11-22 10:00:00", tasks={"Pending": 2}, dispatch_rate=1.0,
                    complete_rate=1.0, sensors_online=1, rejected=0)  # fmt: skip
    state.apply("ops/stats", live.to_json())
    assert state.stats_online is True
    assert "stopped" not in _text(state)
    state.apply("ops/stats", live.model_copy(update={"online": False}).to_json())
    assert "stats from d1 at 2026-11-22 10:00:00: that dispatcher has stopped" in _text(state)
    state.apply("ops/stats", b'{"v":1,"tasks":{"Pending":1}}')  # an older dispatcher: no instance, no online
    assert state.stats_online is None
    assert "stopped" not in _text(state)


def test_a_custom_ops_prefix_is_followed_and_the_default_one_ignored() -> None:
    topics = Topics(ops="fleet-a/ops")
    state = WatchState(topics=topics)
    state.apply(topics.ops_dispatcher("a"), DispatcherPresence(instance="a", online=True).to_json())
    state.apply(topics.ops_stats, b'{"v":1,"tasks":{"Completed":7}}')
    state.apply("ops/dispatchers/b", DispatcherPresence(instance="b", online=True).to_json())
    assert state.dispatchers == {"a": True}
    assert state.tasks == {"Completed": 7}


def test_the_status_columns_are_every_status_in_lifecycle_order() -> None:
    assert sorted(STATUSES) == sorted(s.label for s in TaskStatus)
    assert STATUSES[:2] == (TaskStatus.PENDING.label, TaskStatus.ONGOING.label)


def test_rollouts_show_their_last_copy_and_only_once_there_is_one() -> None:
    state = WatchState()
    assert "Rollouts" not in _text(state)
    totals = {"targets": 10, "not_started": 4, "pending": 1, "ongoing": 2, "completed": 2, "error": 1, "cancelled": 0}
    for state_name, done in (("running", 1), ("aborted", 2)):
        copy = RolloutProgress(
            rollout_id=7, name="fw 2.5", state=state_name, totals=totals | {"completed": done},
            rate_per_minute=30.0, reason=None, at="2026-12-02 10:00:00",
        )  # fmt: skip
        state.apply("ops/rollouts/7", copy.to_json())
    state.apply("ops/rollouts/8", b'{"rollout_id": "x"}')  # not ours: ignored
    assert list(state.rollouts) == [7]
    text = _text(state)
    for expected in ("Rollouts", "fw 2.5", "aborted", "2 / 10", "30.0"):
        assert expected in text
    assert "running" not in text
