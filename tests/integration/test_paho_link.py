"""The paho link's own behaviour: a batch goes out in order within its window, is acknowledged once."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from sensortasks.dispatcher.paho_link import PahoLink
from sensortasks.mqtt import loop, parse_mqtt_url
from sensortasks.testing import MosquittoBroker

from .conftest import eventually, listening


async def test_publish_many_keeps_order_within_the_window(
    broker: MosquittoBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loop, "WINDOW", 7)
    link = PahoLink(parse_mqtt_url(broker.url), identifier="window-test", subscriptions=["nothing/here"])
    runner = asyncio.create_task(link.run())
    seen: list[bytes] = []
    try:
        await asyncio.wait_for(link.connected.wait(), 10)
        assert link._connection is not None
        pending = link._connection.pending
        widest = 0

        def note() -> None:
            nonlocal widest
            widest = max(widest, len(pending))

        async with listening(broker, "window/+", lambda m: seen.append(bytes(m.payload))):  # type: ignore[arg-type]
            batch = [(f"window/{i % 3}", str(i).encode()) for i in range(100)]
            counting = asyncio.create_task(_sample(note))
            assert await link.publish_many(batch, limit=500) == 100
            counting.cancel()
            await eventually(lambda: _true(len(seen) == 100), what="100 messages")
        assert seen == [p for _, p in batch]
        assert widest <= 7
        assert pending == {}
    finally:
        runner.cancel()


async def _sample(note: Callable[[], None]) -> None:
    """Call `note` at every turn of the loop (PUBACKs are handled between turns)."""
    while True:
        note()
        await asyncio.sleep(0)


async def _true(value: bool) -> bool:
    return value


async def test_a_batch_larger_than_the_socket_buffer_leaves_whole_and_in_order(broker: MosquittoBroker) -> None:
    """Writes go straight to the socket; only a full one puts a writer on the selector."""
    link = PahoLink(parse_mqtt_url(broker.url), identifier="full-socket-test", subscriptions=["nothing/here"])
    runner = asyncio.create_task(link.run())
    seen: list[bytes] = []
    batch = [("full/socket", i.to_bytes(4, "big") * 25_000) for i in range(200)]  # 20 MB
    try:
        await asyncio.wait_for(link.connected.wait(), 10)
        async with listening(broker, "full/socket", lambda m: seen.append(bytes(m.payload))):  # type: ignore[arg-type]
            assert await link.publish_many(batch, limit=500) == 200
            await eventually(lambda: _true(len(seen) == 200), what="200 messages")
        assert seen == [p for _, p in batch]
    finally:
        runner.cancel()
