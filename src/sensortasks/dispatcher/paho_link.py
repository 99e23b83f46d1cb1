"""The dispatcher's broker connection, driven on paho directly: every behaviour link.py lists
(persistent MQTT 5 session, ack after commit, subscription options, will, TLS,
keepalive, back off for ever, `BrokerRefused`) without aiomqtt's per-message asyncio objects.

- paho runs on the asyncio loop, paho's documented external event loop: the socket is watched
  with ``add_reader``/``add_writer`` (``loop_read``/``loop_write``), ``loop_misc`` once a
  second checks the keepalive. Chosen over paho's own thread (``loop_start``): every callback
  then runs on the loop, so a PUBACK or a received message touches our state directly, with
  no lock, no thread hop and no GIL hand-over between two busy threads; and the packets that
  publishes and acks queue in one loop iteration leave in one write (paho registers the writer
  once). Only the blocking TCP/TLS connect runs in a thread, before the socket is watched.
- `publish_many` hands its messages to paho in order and waits once for all their PUBACKs (one
  future per call, not per message); `publish` is a batch of one.
- In-flight QoS 1 publishes are bounded by `WINDOW`, counted here, and paho's own bound is off:
  with ``max_inflight_messages`` set, paho rescans its whole in-flight list on every PUBACK
  (``_update_inflight``), O(window) per message.
- Publishes still waiting when the connection drops fail at once with `Unavailable` (the next
  connection is a new paho client, which would never acknowledge them).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Collection, Sequence
from datetime import UTC, datetime
from typing import Any

import aiomqtt
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt import client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from sensortasks.dispatcher.linktypes import (
    PUBLISH_TIMEOUT_S,
    RECONNECT_BACKOFF_MAX_S,
    RECONNECT_BACKOFF_S,
    Incoming,
    OnConnect,
    incoming,
)
from sensortasks.errors import InvalidInput, Unavailable
from sensortasks.mqtt import Backoff, MqttTarget, reason, refusal, refused, session_properties, tls_context

#: The link's log, under one name whichever client drives it (operators and tests filter on it).
log = logging.getLogger("sensortasks.dispatcher.link")

#: QoS 1 publishes handed to paho and not yet acknowledged, at most. Measured on loopback
#: (20,000 messages in batches of 500, nodelay broker): 100, 300 and 1,000 all gave 28,000 to
#: 32,000 messages/s at 31 to 36 µs of CPU each, so the bound is about memory, not speed.
WINDOW = 1000
#: How often paho's keepalive is checked (as aiomqtt did: `keepalive_for` counts on it).
MISC_INTERVAL_S = 1.0


class _Batch:
    """Publishes of one call awaiting their PUBACKs: one future for all of them."""

    __slots__ = ("acked", "done", "limit", "unacked")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.unacked = 0
        self.acked = 0
        self.done: asyncio.Future[None] | None = None

    def settle(self) -> None:
        if self.unacked == 0 and self.done is not None and not self.done.done():
            self.done.set_result(None)


class _Connection:
    """One paho client and its connection: the socket watched on the loop, the publishes in flight."""

    def __init__(self, link: PahoLink, client: paho.Client, generation: int) -> None:
        self.loop = asyncio.get_running_loop()
        self.link = link
        self.client = client
        self.generation = generation
        self.connack: asyncio.Future[None] = self.loop.create_future()
        self.lost: asyncio.Future[Any] = self.loop.create_future()
        self.subacks: dict[int, asyncio.Future[None]] = {}
        self.pending: dict[int, _Batch] = {}
        self.room = asyncio.Event()
        self.fd = -1
        self.heard_at = datetime.now(UTC)
        self._misc: asyncio.TimerHandle | None = None
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_publish = self._on_publish

    # -- the socket on the loop ------------------------------------------------------
    def watch(self) -> None:
        """After the (threaded) connect: watch the socket, flush what paho has queued."""
        sock = self.client.socket()
        if sock is None:  # closed already
            self._lose("the connection closed while connecting")
            return
        self.fd = sock.fileno()
        if isinstance(sock, socket.socket):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.client.on_socket_close = self._on_socket_close
        self.client.on_socket_register_write = self._register_write
        self.client.on_socket_unregister_write = self._unregister_write
        self.loop.add_reader(self.fd, self._read)
        if self.client.want_write():
            self.loop.add_writer(self.fd, self._write)
        self._misc = self.loop.call_later(MISC_INTERVAL_S, self._tick)

    def _register_write(self, *_: object) -> None:
        self.loop.add_writer(self.fd, self._write)

    def _unregister_write(self, *_: object) -> None:
        self.loop.remove_writer(self.fd)

    def _read(self) -> None:
        self.heard_at = datetime.now(UTC)  # one stamp per burst read off the socket
        try:
            while self.client.loop_read() == paho.MQTT_ERR_SUCCESS:
                sock: Any = self.client.socket()
                if not (sock is not None and hasattr(sock, "pending") and sock.pending() > 0):
                    break  # TLS may hold decoded bytes the socket no longer signals
        except Exception as exc:
            self._lose(reason(exc))

    def _write(self) -> None:
        try:
            self.client.loop_write()
        except Exception as exc:
            self._lose(reason(exc))
        if self.fd >= 0 and not self.client.want_write():
            self.loop.remove_writer(self.fd)  # also when `watch` added it, which paho does not know

    def _tick(self) -> None:
        if self.client.loop_misc() == paho.MQTT_ERR_SUCCESS:
            self._misc = self.loop.call_later(MISC_INTERVAL_S, self._tick)

    def _on_socket_close(self, *_: object) -> None:
        if self.fd >= 0:
            self.loop.remove_reader(self.fd)
            self.loop.remove_writer(self.fd)
            self.fd = -1
        if self._misc is not None:
            self._misc.cancel()

    def close(self) -> None:
        """Drop the socket (if still open) and fail what waits on this connection."""
        sock = self.client.socket()
        self._on_socket_close()
        if sock is not None:  # abandoned (cancelled, timed out): no DISCONNECT, the will may fire
            self.client.on_disconnect = None
            sock.close()
        self._lose("closed")
        for batch in set(self.pending.values()):
            batch.unacked = 0
            batch.settle()
        self.pending.clear()
        self.room.set()

    def _lose(self, why: str) -> None:
        if not self.lost.done():
            self.lost.set_result(why)
        if not self.connack.done():
            self.connack.set_exception(aiomqtt.MqttError(why))
        for waiter in self.subacks.values():
            if not waiter.done():
                waiter.set_exception(aiomqtt.MqttError(why))

    # -- paho's callbacks (on the loop) ---------------------------------------------
    def _on_connect(self, _c: object, _u: object, _f: object, code: ReasonCode, _p: object = None) -> None:
        if self.connack.done():
            return
        if code.is_failure:
            self.connack.set_exception(MqttConnectError(code))
        else:
            self.connack.set_result(None)

    def _on_disconnect(self, _c: object, _u: object, _f: object, code: ReasonCode, _p: object = None) -> None:
        self._lose("the session ended" if code == 0 else str(code))

    def _on_subscribe(self, _c: object, _u: object, mid: int, _codes: object, _p: object = None) -> None:
        waiter = self.subacks.pop(mid, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _on_message(self, _c: object, _u: object, message: paho.MQTTMessage) -> None:
        self.link.messages.put_nowait(incoming(message, self.generation, self.heard_at))

    def _on_publish(self, _c: object, _u: object, mid: int, _code: object, _p: object = None) -> None:
        batch = self.pending.pop(mid, None)
        if batch is None:
            return
        batch.unacked -= 1
        batch.acked += 1
        batch.settle()
        self.room.set()

    # -- publishing ----------------------------------------------------------------------
    async def publish(self, messages: Sequence[tuple[str, bytes, int, bool, Properties | None]], limit: int) -> int:
        """Hand `messages` to paho in order, within `WINDOW` and `limit`; how many were acknowledged."""
        batch = _Batch(max(1, limit))
        for topic, payload, qos, retain, properties in messages:
            while not self.lost.done() and (len(self.pending) >= WINDOW or batch.unacked >= batch.limit):
                self.room.clear()
                if not await self._within(self.room.wait()):
                    break
            if self.lost.done() or len(self.pending) >= WINDOW or batch.unacked >= batch.limit:
                log.warning("publish to %s failed: %s", topic, self.problem())
                break
            try:
                info = self.client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
            except ValueError as exc:  # paho's checks of the topic and payload
                raise InvalidInput(f"cannot publish to {topic[:100]!r}: {exc}") from exc
            batch.unacked += 1
            self.pending[info.mid] = batch
        batch.done = self.loop.create_future()
        batch.settle()
        if not await self._within(batch.done):
            log.warning("%d publishes not acknowledged: %s", batch.unacked, self.problem())
        return batch.acked

    def problem(self) -> str:
        return self.lost.result() if self.lost.done() else f"no acknowledgement in {PUBLISH_TIMEOUT_S:.0f} s"

    @staticmethod
    async def _within(waiter: Any) -> bool:  # noqa: ANN401
        """Wait for `waiter` up to `PUBLISH_TIMEOUT_S`; False when it timed out."""
        try:
            async with asyncio.timeout(PUBLISH_TIMEOUT_S):
                await waiter
        except TimeoutError:
            return False
        return True

    async def subscribe(self, subscriptions: list[tuple[str, SubscribeOptions]]) -> None:
        rc, mid = self.client.subscribe(subscriptions)
        if rc != paho.MQTT_ERR_SUCCESS:
            raise aiomqtt.MqttError(f"subscribe failed: {paho.error_string(rc)}")
        assert mid is not None  # noqa: S101  (paho gives one whenever rc is success)
        waiter = self.subacks[mid] = self.loop.create_future()
        try:
            async with asyncio.timeout(PUBLISH_TIMEOUT_S):
                await waiter
        except TimeoutError:
            raise aiomqtt.MqttError("no SUBACK from the broker") from None


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
        self._connection: _Connection | None = None
        self._generation = 0
        self._wanted = asyncio.Event()
        self._wanted.set()
        self._leave = asyncio.Event()

    def _build(self) -> paho.Client:
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.identifier,
            protocol=paho.MQTTv5,
            reconnect_on_failure=False,
            manual_ack=True,
        )
        client.max_inflight_messages_set(0)  # bounded here (`WINDOW`): paho's bound rescans per PUBACK
        client.connect_timeout = PUBLISH_TIMEOUT_S
        if self.target.username is not None:
            client.username_pw_set(self.target.username, self.target.password)
        if self.target.tls:
            client.tls_set_context(tls_context(self.ca_file))
        if self.will is not None:
            w = self.will
            client.will_set(w.topic, w.payload, w.qos, w.retain, w.properties)
        return client

    async def _connect(self) -> _Connection:
        self._generation += 1
        connection = _Connection(self, self._build(), self._generation)
        target, client = self.target, connection.client
        properties = session_properties(self.session_expiry_s)
        try:
            await asyncio.to_thread(
                client.connect, target.host, target.port, self.keepalive_s, clean_start=False, properties=properties
            )
        except (OSError, ValueError) as exc:
            raise aiomqtt.MqttError(str(exc)) from None
        connection.watch()
        try:
            async with asyncio.timeout(PUBLISH_TIMEOUT_S):
                await connection.connack
        except TimeoutError:
            connection.close()
            raise aiomqtt.MqttError("no CONNACK from the broker") from None
        except BaseException:
            connection.close()
            raise
        return connection

    async def run(self, on_connect: OnConnect | None = None) -> None:
        """Connect, subscribe and feed `messages` until cancelled, reconnecting with back off.

        Raises `BrokerRefused` when the broker refuses the login."""
        backoff = Backoff(RECONNECT_BACKOFF_S, RECONNECT_BACKOFF_MAX_S)
        where = f"{self.target.host}:{self.target.port}"
        while True:
            await self._wanted.wait()
            connection: _Connection | None = None
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
                    await self._disconnect(connection)
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

    @staticmethod
    async def _disconnect(connection: _Connection) -> None:
        """Send DISCONNECT (normal: the session stays for its expiry) and wait for it to leave."""
        connection.client.disconnect()
        try:
            async with asyncio.timeout(PUBLISH_TIMEOUT_S):
                await connection.lost
        except TimeoutError:
            log.debug("the DISCONNECT did not leave in %.0f s; closing", PUBLISH_TIMEOUT_S)

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
            if message.qos > 0 and message.generation == connection.generation:
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
            raise Unavailable(f"publish to {topic} failed: {connection.problem()}")

    async def publish_many(self, messages: Sequence[tuple[str, bytes]], *, limit: int = 500) -> int:
        """Publish QoS 1 messages in order, at most `limit` of them unacknowledged at once;
        returns how many the broker acknowledged (0 when disconnected)."""
        connection = self._connection
        if connection is None:
            log.warning("MQTT broker not connected: %d messages not published", len(messages))
            return 0
        return await connection.publish([(topic, payload, 1, False, None) for topic, payload in messages], limit)
