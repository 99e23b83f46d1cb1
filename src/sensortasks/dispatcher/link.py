"""The dispatcher's MQTT connection: a reconnect loop around an aiomqtt client.

- MQTT 5 with a persistent session (``clean_start=False`` and a session expiry), so
  statuses published while the dispatcher is down are queued by the broker.
- Manual acknowledgement: incoming QoS 1 messages are acknowledged only after the
  service has committed what they say (`ack`). A crash before that makes the broker
  deliver them again; they are idempotent.
- No state of its own beyond the connection: after every (re)connect the service asks
  the database what to re-send (the `on_connect` given to `run`).
- Topics in ``retain_as_published`` are subscribed with MQTT 5's Retain As Published, so
  that a message a client published *retained* still says so when it reaches us live (by
  default the broker clears the flag on live delivery and sets it only when replaying
  stored retained messages on subscribe), and with Retain Handling 1: stored retained
  messages are replayed only when the subscription is new, not again at every reconnect of
  the persistent session (which has had the live copy queued already).
- A broker that is down is retried with back off (`Backoff`: doubling, jittered) for ever; one that refuses the login
  (bad credentials, not authorized) raises `BrokerRefused`: retrying cannot fix that.
- A broker behind a partition does not close the connection, it falls silent: only the MQTT
  keepalive finds that out (paho gives up one to two keepalives after the last packet in; the
  broker drops the connection 1.5 keepalives after the last packet it got, or later). So a
  dispatcher keeps alive at half its instance timeout (`keepalive_for`): it stops beating, and
  the others recover its share, about the timeout after a partition, not a minute or two later
  as with paho's default keepalive of 60 s. A connect that gets no CONNACK gives up after
  `PUBLISH_TIMEOUT_S`.
- Concurrent publishes are bounded (`MAX_INFLIGHT`, through aiomqtt's
  ``max_concurrent_outgoing_calls``), and aiomqtt's "There are N pending publish calls."
  warning is set to that same bound: it fires above 10 by default, i.e. on every batch
  we publish on purpose (37,000 lines per 10,000 tasks measured under load).

The dispatcher depends only on the `Link` protocol; `dispatcher_link` builds the real
one, `sensortasks.testing.FakeLink` stands in for it in tests.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Sequence
from datetime import UTC, datetime
from typing import Protocol

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from sensortasks.config import Settings
from sensortasks.dispatcher.linktypes import (
    MAX_INFLIGHT,
    PUBLISH_TIMEOUT_S,
    RECONNECT_BACKOFF_MAX_S,
    RECONNECT_BACKOFF_S,
    Incoming,
    OnConnect,
    keepalive_for,
)
from sensortasks.dispatcher.paho_link import PahoLink
from sensortasks.errors import InvalidInput, Unavailable
from sensortasks.mqtt import Backoff, MqttTarget, new_client, reason, refusal, refused, tls_context
from sensortasks.protocol import DispatcherPresence

__all__ = [
    "MAX_INFLIGHT",
    "PUBLISH_TIMEOUT_S",
    "RECONNECT_BACKOFF_MAX_S",
    "RECONNECT_BACKOFF_S",
    "Incoming",
    "Link",
    "MqttLink",
    "OnConnect",
    "PahoLink",
    "dispatcher_link",
    "keepalive_for",
]

log = logging.getLogger(__name__)


def _incoming(message: aiomqtt.Message, generation: int) -> Incoming:
    payload = message.payload if isinstance(message.payload, bytes) else b""
    props = message.properties
    heard_at = datetime.now(UTC)
    if props is None:
        return Incoming(
            str(message.topic), payload, message.retain, message.mid, message.qos, generation, heard_at=heard_at
        )
    response_topic = getattr(props, "ResponseTopic", None)
    correlation = getattr(props, "CorrelationData", None)
    user = tuple((str(k), str(v)) for k, v in getattr(props, "UserProperty", ()) or ())
    return Incoming(
        str(message.topic),
        payload,
        message.retain,
        message.mid,
        message.qos,
        generation,
        None if response_topic is None else str(response_topic),
        None if correlation is None else bytes(correlation),
        user,
        getattr(props, "ContentType", None),
        heard_at,
    )


class Link(Protocol):
    """What the dispatcher needs of its broker connection."""

    @property
    def messages(self) -> asyncio.Queue[Incoming]:
        """Received messages in arrival order; each is acknowledged with `ack` once handled."""
        ...

    @property
    def connected(self) -> asyncio.Event:
        """Set while connected."""
        ...

    @property
    def connects(self) -> int:
        """Successful connections so far."""
        ...

    async def run(self, on_connect: OnConnect | None = None) -> None:
        """Stay connected until cancelled; await `on_connect` after every (re)connect."""
        ...

    def pause(self, reason: str) -> None:
        """Leave the broker (the session stays, for its expiry) and stay away until `resume`."""
        ...

    def resume(self) -> None: ...

    def ack(self, messages: Sequence[Incoming]) -> None: ...

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
        """Publish and wait for the broker's acknowledgement; `Unavailable` when disconnected."""
        ...

    async def publish_many(self, messages: Sequence[tuple[str, bytes]], *, limit: int = 500) -> int:
        """Publish in order; returns how many the broker acknowledged."""
        ...


def dispatcher_link(settings: Settings) -> PahoLink:
    """A dispatcher instance's link: its own client id, the subscriptions, an offline will.

    Statuses and commands go through the share group (each to one instance). Presence does
    not: a shared subscription gets no retained messages (MQTT 5, 4.8.2), so an instance would
    never learn of sensors that came online before it subscribed; every instance records it,
    and only the leader re-sends on a reconnect."""
    topics = settings.topics
    share = f"$share/{settings.mqtt_share_group}/" if settings.mqtt_share_group else ""
    offline = DispatcherPresence(instance=settings.instance, online=False).to_json()
    return PahoLink(
        settings.mqtt,
        identifier=f"sensortasks-{settings.instance}",
        subscriptions=[share + topics.all_status, topics.all_presence, share + topics.all_commands],
        will=aiomqtt.Will(topics.ops_dispatcher(settings.instance), offline, qos=1, retain=True),
        session_expiry_s=settings.session_expiry,
        ca_file=settings.mqtt_ca_file,
        retain_as_published=[share + topics.all_status],
        keepalive_s=keepalive_for(settings.instance_timeout_s),
    )


class MqttLink:
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
        self._client: aiomqtt.Client | None = None
        self._generation = 0
        self._wanted = asyncio.Event()
        self._wanted.set()
        self._leave = asyncio.Event()

    def _build(self) -> aiomqtt.Client:
        client = new_client(
            self.target,
            identifier=self.identifier,
            ssl_context=tls_context(self.ca_file) if self.target.tls else None,
            session_expiry_s=self.session_expiry_s,
            will=self.will,
            timeout=PUBLISH_TIMEOUT_S,
            max_inflight=MAX_INFLIGHT,
            max_outgoing_calls=MAX_INFLIGHT,
        )
        client._client.manual_ack_set(True)
        client._keepalive = self.keepalive_s  # aiomqtt 2.x passes it to paho's connect(); new_client does not take it
        return client

    async def run(self, on_connect: OnConnect | None = None) -> None:
        """Connect, subscribe and feed `messages` until cancelled, reconnecting with back off.

        Raises `BrokerRefused` when the broker refuses the login."""
        backoff = Backoff(RECONNECT_BACKOFF_S, RECONNECT_BACKOFF_MAX_S)
        where = f"{self.target.host}:{self.target.port}"
        while True:
            await self._wanted.wait()
            client = self._build()
            try:
                async with client:
                    self._generation += 1
                    generation = self._generation
                    self._client = client
                    await client.subscribe(
                        [(topic, self._options(topic in self.retain_as_published)) for topic in self.subscriptions]
                    )
                    self.connects += 1
                    self.connected.set()
                    log.info("mqtt connected to %s as %s", where, self.identifier, extra={"action": "connected"})
                    backoff.reset()
                    if on_connect is not None:
                        await on_connect()
                    if await self._feed(client, generation):
                        continue  # paused: disconnected cleanly, the session kept
            except aiomqtt.MqttError as exc:
                why = refusal(exc)
                if why is not None:
                    raise refused(self.target.host, self.target.port, self.target.username, why) from None
                what = "lost the connection to" if self._client is client else "cannot connect to"
                problem = f"{what} {where} ({reason(exc)})"
            else:
                problem = f"lost the connection to {where} (the session ended)"
            finally:
                self.connected.clear()
                self._client = None
            delay = backoff.next()
            log.warning("mqtt %s; retrying in %.1f s", problem, delay, extra={"action": "disconnected"})
            await asyncio.sleep(delay)

    async def _feed(self, client: aiomqtt.Client, generation: int) -> bool:
        """Queue received messages until the session ends (False) or `pause` is called (True)."""

        async def feed() -> None:
            async for message in client.messages:
                await self.messages.put(_incoming(message, generation))

        pump = asyncio.ensure_future(feed())
        leave = asyncio.ensure_future(self._leave.wait())
        try:
            await asyncio.wait({pump, leave}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in (pump, leave):
                waiter.cancel()
        if pump.done() and not pump.cancelled():
            pump.result()  # the session ended, or the connection failed: raised here
            return False
        return True

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
        client = self._client
        if client is None:
            return
        for message in messages:
            if message.qos > 0 and message.generation == self._generation:
                client._client.ack(message.mid, message.qos)

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
        client = self._client
        if client is None:
            raise Unavailable("MQTT broker not connected")
        properties = None
        if correlation_data is not None or expiry_s is not None:
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            if correlation_data is not None:
                properties.CorrelationData = correlation_data
            if expiry_s is not None:
                properties.MessageExpiryInterval = expiry_s
        try:
            await client.publish(
                topic, payload, qos=qos, retain=retain, properties=properties, timeout=PUBLISH_TIMEOUT_S
            )
        except aiomqtt.MqttError as exc:
            raise Unavailable(f"publish to {topic} failed: {exc}") from exc
        except ValueError as exc:  # paho's checks of the topic and payload
            raise InvalidInput(f"cannot publish to {topic[:100]!r}: {exc}") from exc

    async def publish_many(self, messages: Sequence[tuple[str, bytes]], *, limit: int = 500) -> int:
        """Publish QoS 1 messages concurrently (bounded), in order; returns how many were acknowledged.

        Order is kept because each publish hands its packet to paho synchronously, in
        the order the coroutines start.
        """
        gate = asyncio.Semaphore(limit)

        async def one(topic: str, payload: bytes) -> bool:
            async with gate:
                try:
                    await self.publish(topic, payload)
                except Unavailable as exc:
                    log.warning("%s", exc)
                    return False
                return True

        results = await asyncio.gather(*(one(t, p) for t, p in messages))
        return sum(results)
