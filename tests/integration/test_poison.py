"""Poison messages: each hostile one is answered or refused exactly once, and none comes back
when the dispatcher restarts on the same broker session and database."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from typing import Any

import aiomqtt

from sensortasks.store.repository import TaskStore

from .conftest import (
    OpsWatcher,
    Service,
    ServiceFactory,
    Wiretap,
    add_backend,
    command_properties,
    eventually,
    request,
    send_command,
)

SERIAL = 12345678909789
GET = {"v": 1, "task_id": 1}


async def healthy(service: Service) -> None:
    assert service.runner is not None
    assert not service.runner.done()
    assert (await service.api.get("/healthz")).status_code == 200


def raising_get(store: TaskStore, poison_id: int) -> None:
    """Make `get` raise for one task id: a command payload that makes the handler raise."""
    original = store.get

    async def get(task_id: int, **kwargs: Any) -> Any:
        if task_id == poison_id:
            raise RuntimeError("a bug")
        return await original(task_id, **kwargs)

    store.get = get  # type: ignore[method-assign]


async def test_hostile_commands_then_a_restart(make_service: ServiceFactory, ops: OpsWatcher, wiretap: Wiretap) -> None:
    instance = f"poison-{uuid.uuid4().hex[:6]}"
    service = await make_service(auth="required", instance=instance)
    alice, bob = await add_backend(service, "alice"), await add_backend(service, "bob")
    raising_get(service.store, 666)
    auth = {"authorization": f"Bearer {alice.key}"}
    mine = f"{alice.reply_prefix}/r"
    #: name -> (verb, payload, response topic, correlation data, extra user properties, expected)
    attacks: dict[str, tuple[str, Any, str | None, bytes, list[tuple[str, str]], str]] = {
        "response topic x/#": ("get", GET, "x/#", b"a1", [], "bad_property"),
        "response topic +/y": ("get", GET, "+/y", b"a2", [], "bad_property"),
        "empty response topic": ("get", GET, "", b"a3", [], "bad_property"),
        "60,000-character response topic": ("get", GET, "r" * 60_000, b"a4", [], "bad_property"),
        "$SYS response topic": ("get", GET, "$SYS/broker/x", b"a5", [], "bad_property"),
        "another customer's reply prefix": ("get", GET, f"{bob.reply_prefix}/r", b"a6", [], "response_topic_refused"),
        "64 KiB correlation data": ("get", GET, mine, b"c" * 65_535, [], "bad_property"),
        "100 user properties": ("get", GET, mine, b"a8", [(f"k{i}", "v") for i in range(100)], "bad_property"),
        "two authorization properties": ("get", GET, mine, b"a9", [("authorization", "Bearer x")], "bad_property"),
        "unknown verb": ("foo", GET, mine, b"a10", [], "unknown_command"),
        "empty verb": ("", GET, mine, b"a11", [], "unknown_command"),
        "a payload that makes the handler raise": ("get", {"v": 1, "task_id": 666}, mine, b"a12", [], "internal_error"),
        "20 KB payload": ("get", b"{" + b" " * 20_000 + b"}", mine, b"a13", [], "oversized"),
    }
    answered = {
        b"a10": "unknown_command",
        b"a11": "unknown_command",
        b"a12": "internal_error",
        b"a13": "payload_too_large",
    }
    for verb, payload, topic, correlation, user, _ in attacks.values():
        await send_command(service, verb, payload, command_properties(topic, correlation, user, **auth))
        await healthy(service)
    sentinel = await request(service, "get", GET, reply_prefix=alice.reply_prefix, **auth)
    assert sentinel["error"]["code"] == "not_found"
    expected = Counter(code for *_, code in attacks.values())
    await eventually(lambda: _rejections(ops, expected.total()), what="every refusal")
    assert Counter(r["code"] for r in ops.on("ops/rejected")) == expected
    assert service.dispatcher.counters.rejected == expected

    async def replies_heard() -> bool:
        return all(len(wiretap.carrying(c)) == 1 for c in answered)

    await eventually(replies_heard, what="the error replies")
    for *_, correlation, _, _ in attacks.values():
        heard = wiretap.carrying(correlation)
        if correlation in answered:
            assert [h.topic for h in heard] == [mine]
            assert f'"code":"{answered[correlation]}"' in heard[0].payload.decode()
        else:
            assert heard == []

    # Restart on the same session and database: nothing comes back.
    await service.stop()
    before = (len(ops.on("ops/rejected")), len(wiretap.heard))
    again = await make_service(auth="required", instance=instance)
    await healthy(again)
    sentinel = await request(again, "get", GET, reply_prefix=alice.reply_prefix, **auth)
    assert sentinel["error"]["code"] == "not_found"
    assert again.dispatcher.counters.rejected.total() == 0
    assert len(ops.on("ops/rejected")) == before[0]
    assert not [h for h in wiretap.heard[before[1] :] if h.correlation in {a[3] for a in attacks.values()}]
    await healthy(again)


async def test_a_status_that_makes_its_batch_raise_is_refused_alone_and_not_redelivered(
    make_service: ServiceFactory, ops: OpsWatcher
) -> None:
    instance = f"poison-{uuid.uuid4().hex[:6]}"
    service = await make_service(instance=instance)
    tasks = [await service.create(SERIAL + i) for i in range(4)]
    await eventually(lambda: _all_sent(service, tasks), what="the tasks to be sent")
    gate = asyncio.Event()
    batches: list[list[int]] = []
    original = service.store.apply_reports

    async def apply_reports(reports: Any, **kwargs: Any) -> Any:
        batches.append([r.task_id for r in reports])
        await gate.wait()
        if any(r.task_id == tasks[1]["id"] for r in reports):
            raise ValueError("a bug that only this report triggers")
        return await original(reports, **kwargs)

    service.store.apply_reports = apply_reports  # type: ignore[method-assign]

    def ongoing(i: int) -> dict[str, Any]:
        return {"v": 1, "task_id": tasks[i]["id"], "attempt": 1, "status": "ongoing"}

    await service.publish(f"sensors/{SERIAL}/status", ongoing(0))  # held at the gate
    await eventually(lambda: _true(len(batches) == 1), what="the first report to be held")
    for i in (1, 2, 3):
        await service.publish(f"sensors/{SERIAL + i}/status", ongoing(i))
    await eventually(lambda: _true(service.dispatcher.link.messages.qsize() == 3), what="3 queued reports")
    gate.set()
    for i in (0, 2, 3):
        await service.wait_status(tasks[i]["id"], "Ongoing")
    await eventually(lambda: _rejections(ops, 1), what="the rejection")
    ids = [t["id"] for t in tasks]
    assert batches == [[ids[0]], ids[1:], [ids[1]], [ids[2]], [ids[3]]]  # batched, then one at a time
    assert [(r["code"], r["topic"]) for r in ops.on("ops/rejected")] == [
        ("internal_error", f"sensors/{SERIAL + 1}/status")
    ]
    assert (await service.task(ids[1]))["status_name"] == "Pending"
    assert service.runner is not None
    assert not service.runner.done()

    await service.stop()
    again = await make_service(instance=instance)
    await again.publish(f"sensors/{SERIAL}/status", b"sentinel")
    await eventually(lambda: _rejections(ops, 2), what="the sentinel's rejection")
    assert again.dispatcher.counters.rejected == {"malformed": 1}
    assert (await again.task(ids[1]))["status_name"] == "Pending"  # the poison did not come back


async def test_a_retained_status_is_refused_once_and_cleared(make_service: ServiceFactory, ops: OpsWatcher) -> None:
    instance = f"retained-{uuid.uuid4().hex[:6]}"
    service = await make_service(instance=instance)
    tasks = [await service.create(SERIAL + i) for i in range(3)]
    await eventually(lambda: _all_sent(service, tasks), what="the tasks to be sent")
    topics = [f"sensors/{SERIAL + i}/status" for i in range(3)]

    def report(i: int) -> dict[str, Any]:
        return {"v": 1, "task_id": tasks[i]["id"], "attempt": 1, "status": "ongoing"}

    # 1. Live: the flag survives thanks to Retain As Published.
    await _publish(service, topics[0], report(0), retain=True)
    await eventually(lambda: _rejections(ops, 1), what="the live retained status to be refused")
    # 2. Published while the dispatcher is down: queued in its session, refused once at restart.
    await service.stop()
    await _publish(service, topics[1], report(1), retain=True)
    again = await make_service(instance=instance)
    await eventually(lambda: _rejections(ops, 2), what="the queued retained status to be refused")
    # 3. Stored before a dispatcher (a new session) subscribes: replayed to it, refused.
    await again.stop()
    await _publish(again, topics[2], report(2), retain=True)
    fresh = await make_service(instance=f"{instance}-new")
    await eventually(lambda: _rejections(ops, 3), what="the stored retained status to be refused")

    for topic in topics:  # every one was cleared, and the clears were not refused in turn
        assert await _retained(fresh, topic) is None
    await eventually(lambda: _rejections(ops, 6), what="the markers' rejections")
    codes = [(r["code"], r["topic"]) for r in ops.on("ops/rejected")]
    assert codes == [("retained_status", t) for t in topics] + [("malformed", t) for t in topics]
    assert again.dispatcher.counters.rejected == {"retained_status": 1}
    assert fresh.dispatcher.counters.rejected == {"retained_status": 1, "malformed": 3}
    for task in tasks:
        assert (await fresh.task(task["id"]))["status_name"] == "Pending"


async def _publish(service: Service, topic: str, payload: dict[str, Any] | bytes, *, retain: bool = False) -> None:
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    async with aiomqtt.Client(service.broker.host, service.broker.port, protocol=aiomqtt.ProtocolVersion.V5) as client:
        await client.publish(topic, data, qos=1, retain=retain)


async def _retained(service: Service, topic: str) -> bytes | None:
    """The message retained on `topic`: what a new subscriber gets before a marker published after it."""
    marker = f"marker-{uuid.uuid4().hex}".encode()
    async with aiomqtt.Client(service.broker.host, service.broker.port, protocol=aiomqtt.ProtocolVersion.V5) as client:
        await client.subscribe(topic, qos=1)
        await client.publish(topic, marker, qos=1)
        async with asyncio.timeout(10):
            async for message in client.messages:
                if message.payload == marker:
                    return None
                if message.retain:
                    return message.payload if isinstance(message.payload, bytes) else b""
    raise AssertionError("unreachable")


async def _true(value: bool) -> bool:
    return value


async def _rejections(ops: OpsWatcher, n: int) -> bool:
    return len(ops.on("ops/rejected")) >= n


async def _all_sent(service: Service, tasks: list[dict[str, Any]]) -> bool:
    return all([(await service.task(t["id"]))["attempt_count"] == 1 for t in tasks])


async def test_a_status_postgresql_cannot_store_is_refused_not_retried_forever(
    make_service: ServiceFactory, ops: OpsWatcher
) -> None:
    service = await make_service()
    await service.sensor(SERIAL, _hangs)
    task = await service.create(SERIAL)
    await service.wait_status(task["id"], "Ongoing")
    status = f"sensors/{SERIAL}/status"
    # A NUL in text is an error on every retry on PostgreSQL ("invalid byte sequence"): it would
    # hold the consumer in its database retry loop for good. The refusal is the protocol's, so
    # it is the same on SQLite, which would have stored it.
    poison = {"v": 1, "task_id": task["id"], "attempt": 1, "status": "error", "error": "bad\u0000", "retryable": False}
    await service.publish(status, poison)
    await service.publish(status, {"v": 1, "task_id": task["id"], "attempt": 1, "status": "completed"})
    await service.wait_status(task["id"], "Completed")
    await eventually(lambda: _rejections(ops, 1), what="the rejection")
    assert [r["code"] for r in ops.on("ops/rejected")] == ["malformed"]
    assert service.dispatcher.counters.db_retries == 0


async def _hangs(job: Any) -> None:
    await asyncio.Event().wait()
