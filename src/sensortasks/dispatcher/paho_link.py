"""The dispatcher's broker connection: every behaviour link.py lists (persistent MQTT 5
session, ack after commit, subscription options, will, TLS, keepalive, back off for ever,
`BrokerRefused`) on paho driven on the asyncio loop (`sensortasks.mqtt.loop`, shared with the
sensor SDK), without aiomqtt's per-message asyncio objects.

- Received messages go to `messages` as `Incoming`, stamped with their connection's generation:
  `ack` acknowledges (manual ack, after commit) only those of the current connection.
- `publish_many` hands its messages to the connection in order and waits once for all their
  PUBACKs (one future per call, not per message); `publish` is a batch of one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Sequence
from typing import Any

import aiomqtt
from paho.mqtt import client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from sensortasks.dispatcher.linktypes import (
    PUBLISH_TIMEOUT_S,
    RECONNECT_BACKOFF_MAX_S,
    RECONNECT_BACKOFF_S,
    Incoming,
    OnConnect,
    incoming,
)
from sensortasks.errors import Unavailable
from sensortasks.mqtt import Backoff, MqttTarget, reason, refusal, refused, tls_context
from sensortasks.mqtt.loop import Connection, new_paho_client

#: The link's log, under one name whichever client drives it (operators and tests filter on it).
log = logging.getLogger("sensortasks.dispatcher.link")


class PahoLink:
    """The `Link` of a dispatcher instance, on a paho client of its own (see the module docstring)."""

    def __init__(
        self,
        target: MqttTarget,
        *,
        identifier: str,
        subscriptions: Sequence[str],
        will: aiomqtt.Will | None = None,
        session_expiry_s: int = 7 * 24 * 3600,
        ca_file: str | None = None,
        retain_as_published: Collection[str] = (),
        keepalive_s: int = 60,
    ) -> None:
        self.target = target
        self.identifier = identifier
        self.subscriptions = list(subscriptions)
        self.retain_as_published = frozenset(retain_as_published)
        self.will = will
        self.session_expiry_s = session_expiry_s
        self.ca_file = ca_file
        self.keepalive_s = keepalive_s
        self.messages: asyncio.Queue[Incoming] = asyncio.Queue()
        self.connected = asyncio.Event()
        self.connects = 0
        self._connection: Connection | None = None
        self._generation = 0
        self._wanted = asyncio.Event()
        self._wanted.set()
        self._leave = asyncio.Event()

    async def _connect(self) -> Connection:
        self._generation += 1
        generation = self._generation
        client = new_paho_client(
            self.target,
            identifier=self.identifier,
            timeout_s=PUBLISH_TIMEOUT_S,
            ssl_context=tls_context(self.ca_file) if self.target.tls else None,
            will=self.will,
            manual_ack=True,
        )

        def received(_c: object, _u: object, message: paho.MQTTMessage) -> None:
            self.messages.put_nowait(incoming(message, generation, connection.heard_at))

        connection = Connection(client, received, timeout_s=PUBLISH_TIMEOUT_S)
        await connection.open(self.target, keepalive_s=self.keepalive_s, session_expiry_s=self.session_expiry_s)
        return connection

    async def run(self, on_connect: OnConnect | None = None) -> None:
        """Connect, subscribe and feed `messages` until cancelled, reconnecting with back off.

        Raises `BrokerRefused` when the broker refuses the login."""
        backoff = Backoff(RECONNECT_BACKOFF_S, RECONNECT_BACKOFF_MAX_S)
        where = f"{self.target.host}:{self.target.port}"
        while True:
            await self._wanted.wait()
            connection: Connection | None = None
            try:
                connection = await self._connect()
                self._connection = connection
                await connection.subscribe(
                    [(topic, self._options(topic in self.retain_as_published)) for topic in self.subscriptions]
                )
                self.connects += 1
                self.connected.set()
                log.info("mqtt connected to %s as %s", where, self.identifier, extra={"action": "connected"})
                backoff.reset()
                if on_connect is not None:
                    await on_connect()
                leave: asyncio.Future[Any] = asyncio.ensure_future(self._leave.wait())
                try:
                    await asyncio.wait({connection.lost, leave}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    leave.cancel()
                if not connection.lost.done():
                    await connection.disconnect()
                    continue  # paused: disconnected cleanly, the session kept
                problem = f"lost the connection to {where} ({connection.lost.result()})"
            except aiomqtt.MqttError as exc:
                why = refusal(exc)
                if why is not None:
                    raise refused(self.target.host, self.target.port, self.target.username, why) from None
                what = "lost the connection to" if self._connection is not None else "cannot connect to"
                problem = f"{what} {where} ({reason(exc)})"
            finally:
                self.connected.clear()
                self._connection = None
                if connection is not None:
                    connection.close()
            delay = backoff.next()
            log.warning("mqtt %s; retrying in %.1f s", problem, delay, extra={"action": "disconnected"})
            await asyncio.sleep(delay)

    def pause(self, reason: str) -> None:
        if self._wanted.is_set():
            log.warning("leaving the broker: %s", reason, extra={"action": "paused"})
        self._wanted.clear()
        self._leave.set()

    def resume(self) -> None:
        if not self._wanted.is_set():
            log.info("rejoining the broker", extra={"action": "resumed"})
        self._leave.clear()
        self._wanted.set()

    @staticmethod
    def _options(flag_retained: bool) -> SubscribeOptions:
        if not flag_retained:
            return SubscribeOptions(qos=1)
        return SubscribeOptions(qos=1, retainAsPublished=True, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB)

    def ack(self, messages: Sequence[Incoming]) -> None:
        """Acknowledge committed messages; those of an older connection are left to redelivery."""
        connection = self._connection
        if connection is None:
            return
        for message in messages:
            if message.qos > 0 and message.generation == self._generation:
                connection.client.ack(message.mid, message.qos)

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
        """Publish and wait for the broker's acknowledgement; `Unavailable` when disconnected,
        `InvalidInput` for a topic or payload paho refuses (a wildcard, an empty topic).

        `expiry_s` is the MQTT 5 Message Expiry Interval: the broker drops the message (a
        retained copy included) once it is that old."""
        connection = self._connection
        if connection is None:
            raise Unavailable("MQTT broker not connected")
        properties = None
        if correlation_data is not None or expiry_s is not None:
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            if correlation_data is not None:
                properties.CorrelationData = correlation_data
            if expiry_s is not None:
                properties.MessageExpiryInterval = expiry_s
        if await connection.publish([(topic, payload, qos, retain, properties)], 1) != 1:
            log.warning("publish to %s failed: %s", topic, connection.problem())
            raise Unavailable(f"publish to {topic} failed: {connection.problem()}")

    async def publish_many(self, messages: Sequence[tuple[str, bytes]], *, limit: int = 500) -> int:
        """Publish QoS 1 messages in order, at most `limit` of them unacknowledged at once;
        returns how many the broker acknowledged (0 when disconnected)."""
        connection = self._connection
        if connection is None:
            log.warning("MQTT broker not connected: %d messages not published", len(messages))
            return 0
        acked = await connection.publish([(topic, payload, 1, False, None) for topic, payload in messages], limit)
        if acked < len(messages):
            log.warning(
                "%d of %d publishes not acknowledged: %s", len(messages) - acked, len(messages), connection.problem()
            )
        return acked
