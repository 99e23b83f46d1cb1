"""A broker connection in memory, for the dispatcher's fast tests.

`FakeLink` implements the dispatcher's `Link`: it records every publish, lets a test
deliver messages as if another client had published them, and connect or drop the
connection. Given a `FakeClock`, its inbox and its connection are parking points, so
`FakeClock.settle` knows when the consumer has handled everything delivered.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Literal

from sensortasks.dispatcher.link import Incoming, Link, OnConnect
from sensortasks.errors import Unavailable
from sensortasks.testing.clock import FakeClock


@dataclass(frozen=True, slots=True)
class Published:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False
    correlation_data: bytes | None = None
    expiry_s: int | None = None


class _Inbox(asyncio.Queue[Incoming]):
    def __init__(self, clock: FakeClock | None) -> None:
        super().__init__()
        self._clock = clock

    async def get(self) -> Incoming:
        if self._clock is None:
            return await super().get()
        self._clock.track()
        with self._clock.parked(lambda: not self.empty()):
            return await super().get()


class _Connection(asyncio.Event):
    def __init__(self, clock: FakeClock | None) -> None:
        super().__init__()
        self._clock = clock

    async def wait(self) -> Literal[True]:
        if self._clock is None:
            return await super().wait()
        self._clock.track()
        if self.is_set():
            return True
        with self._clock.parked(self.is_set):
            return await super().wait()


class FakeLink:
    """An in-memory `Link` (see the module docstring)."""

    def __init__(self, clock: FakeClock | None = None, *, connect: bool = True) -> None:
        """With `connect`, `run` connects at once (else the test calls `connect`)."""
        self._clock = clock
        self.messages: asyncio.Queue[Incoming] = _Inbox(clock)
        self.connected: asyncio.Event = _Connection(clock)
        self.connects = 0
        self.published: list[Published] = []
        self.acked: list[Incoming] = []
        self._auto_connect = connect
        self._on_connect: OnConnect | None = None
        self._generation = 0
        self._mids = itertools.count(1)
        #: Why the dispatcher left the broker (`pause`), until it `resume`s.
        self.paused: str | None = None
        self._reconnect: asyncio.Future[None] | None = None

    # -- the Link protocol --------------------------------------------------
    async def run(self, on_connect: OnConnect | None = None) -> None:
        self._on_connect = on_connect
        if self._auto_connect:
            await self.connect()
        await asyncio.Future()  # until cancelled

    def pause(self, reason: str) -> None:
        self.paused = reason
        self.disconnect()

    def resume(self) -> None:
        if self.paused is not None:
            self.paused = None
            self._reconnect = asyncio.ensure_future(self.connect())

    def ack(self, messages: Sequence[Incoming]) -> None:
        self.acked += [m for m in messages if m.generation == self._generation]

    async def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        correlation_data: bytes | None = None,
        expiry_s: int | None = None,
    ) -> None:
        if not self.connected.is_set():
            raise Unavailable("MQTT broker not connected")
        self.published.append(Published(topic, payload, qos, retain, correlation_data, expiry_s))

    async def publish_many(self, messages: Sequence[tuple[str, bytes]], *, limit: int = 500) -> int:  # noqa: ARG002
        """In order, one at a time (the real link's concurrency `limit` changes nothing here)."""
        for sent, (topic, payload) in enumerate(messages):
            try:
                await self.publish(topic, payload)
            except Unavailable:
                return sent
        return len(messages)

    # -- for tests --------------------------------------------------------------
    async def connect(self) -> None:
        """A (re)connect: from here on the dispatcher's `on_connect` has run."""
        self._generation += 1
        self.connects += 1
        self.connected.set()
        if self._on_connect is not None:
            await self._on_connect()

    def disconnect(self) -> None:
        """The connection drops: publishes fail, messages of this connection are never acknowledged."""
        self.connected.clear()

    def deliver(
        self, topic: str, payload: bytes, *, retain: bool = False, qos: int = 1, heard_at: datetime | None = None
    ) -> Incoming:
        """A message from the broker, as if a sensor (or a backend) had published it; heard now,
        or at `heard_at` (a copy that waited, as in an instance that lagged)."""
        if heard_at is None and self._clock is not None:
            heard_at = self._clock.now()
        message = Incoming(topic, payload, retain, next(self._mids), qos, self._generation, heard_at=heard_at)
        self.messages.put_nowait(message)
        return message

    def on(self, topic: str) -> list[bytes]:
        """Payloads published on `topic`, in order."""
        return [p.payload for p in self.published if p.topic == topic]


if TYPE_CHECKING:  # mypy keeps the fake in step with the protocol
    _: Link = FakeLink()
