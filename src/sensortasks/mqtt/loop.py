"""paho driven on the asyncio loop: one MQTT 5 connection whose socket, callbacks and
acknowledgements all live on the loop, without aiomqtt's per-message asyncio objects. The
dispatcher's link and the sensor SDK both connect through it; a fleet of N sensors in one
process then has its N sockets on the loop's one selector.

- paho's documented external event loop: the socket is watched with ``add_reader``
  (``loop_read``), ``loop_misc`` once a second checks the keepalive. Chosen over
  paho's own thread (``loop_start``): every callback then runs on the loop, so a PUBACK or a
  received message touches the owner's state directly, with no lock, no thread hop and no GIL
  hand-over between two busy threads. Only the blocking TCP/TLS connect runs in a thread,
  before the socket is watched.
- Writes: the packets paho queues in one loop iteration leave in one ``loop_write`` at the end
  of it (``call_soon``), straight to the socket; a writer is added to the selector only while
  the socket is full. Adding and removing a writer for every burst cost two ``epoll_ctl``
  calls and their selector bookkeeping per burst.
- `Connection.publish` hands its messages to paho in order and waits once for all their PUBACKs
  (one future per call, not per message).
- In-flight QoS 1 publishes are bounded by `WINDOW`, counted here, and paho's own bound is off:
  with ``max_inflight_messages`` set, paho rescans its whole in-flight list on every PUBACK
  (``_update_inflight``), O(window) per message.
- Publishes still waiting when the connection drops fail at once (the next connection is a new
  paho client, which would never acknowledge them); `Connection.problem` says why.
- Failures are aiomqtt's exception types (`MqttError`; `MqttConnectError` for a refused
  CONNECT), so `refusal` and `reason` read them whichever client failed.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import aiomqtt
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt import client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from sensortasks.errors import InvalidInput
from sensortasks.mqtt import MqttTarget, reason, session_properties, tls_context
from sensortasks.mqtt.packets import BufferedClient

log = logging.getLogger(__name__)

#: QoS 1 publishes handed to paho and not yet acknowledged, at most. Measured on loopback
#: (20,000 messages in batches of 500, nodelay broker): 100, 300 and 1,000 all gave 28,000 to
#: 32,000 messages/s at 31 to 36 µs of CPU each, so the bound is about memory, not speed.
WINDOW = 1000
#: How often paho's keepalive is checked (as aiomqtt did: the dispatcher's keepalive counts on it).
MISC_INTERVAL_S = 1.0

#: One publish: topic, payload, QoS, retain, MQTT 5 properties (or None).
Outgoing = tuple[str, bytes, int, bool, Properties | None]
#: paho's message callback (VERSION2): client, userdata, message; called on the loop.
OnMessage = Callable[[paho.Client, Any, paho.MQTTMessage], None]


def new_paho_client(
    target: MqttTarget,
    *,
    identifier: str,
    timeout_s: float,
    ssl_context: ssl.SSLContext | None = None,
    will: aiomqtt.Will | None = None,
    manual_ack: bool = False,
) -> BufferedClient:
    """An MQTT 5 paho client for `target`, not connected; TLS when the target is ``mqtts://``
    (`ssl_context`, else the system's trust store). `manual_ack`: received QoS 1 messages are
    acknowledged only by ``client.ack`` (else paho acks each after its callback returned)."""
    client = BufferedClient(
        CallbackAPIVersion.VERSION2,
        client_id=identifier,
        protocol=paho.MQTTv5,
        reconnect_on_failure=False,
        manual_ack=manual_ack,
    )
    client.max_inflight_messages_set(0)  # bounded here (`WINDOW`): paho's bound rescans per PUBACK
    client.connect_timeout = timeout_s
    if target.username is not None:
        client.username_pw_set(target.username, target.password)
    if target.tls:
        client.tls_set_context(ssl_context or tls_context(None))
    if will is not None:
        client.will_set(will.topic, will.payload, will.qos, will.retain, will.properties)
    return client


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


class Connection:
    """One paho client and its connection: the socket watched on the loop, the publishes in flight.

    `lost` resolves (with the reason) when the connection ends, however it ends; `heard_at` is
    when the latest burst was read off the socket (one stamp per read, for `on_message`)."""

    def __init__(self, client: BufferedClient, on_message: OnMessage, *, timeout_s: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.client = client
        self.timeout_s = timeout_s
        self.connack: asyncio.Future[None] = self.loop.create_future()
        self.lost: asyncio.Future[str] = self.loop.create_future()
        self.subacks: dict[int, asyncio.Future[None]] = {}
        self.pending: dict[int, _Batch] = {}
        self.room = asyncio.Event()
        self.fd = -1
        self._flush_due = False
        self._writer = False
        self.heard_at = datetime.now(UTC)
        self._misc: asyncio.TimerHandle | None = None
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = on_message
        client.on_publish = self._on_publish

    async def open(self, target: MqttTarget, *, keepalive_s: int, session_expiry_s: int) -> None:
        """Connect with a persistent session (clean start off, `session_expiry_s`) and wait for
        the CONNACK; `MqttConnectError` when the broker refuses, `MqttError` for anything else
        (the connection is then closed)."""
        properties = session_properties(session_expiry_s)
        try:
            await asyncio.to_thread(
                self.client.connect, target.host, target.port, keepalive_s, clean_start=False, properties=properties
            )
        except (OSError, ValueError) as exc:
            raise aiomqtt.MqttError(str(exc)) from None
        self.watch()
        try:
            async with asyncio.timeout(self.timeout_s):
                await self.connack
        except TimeoutError:
            self.close()
            raise aiomqtt.MqttError("no CONNACK from the broker") from None
        except BaseException:
            self.close()
            raise

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
        if self.client.want_write():  # the CONNECT, queued before the callbacks were set
            self._register_write()
        self._misc = self.loop.call_later(MISC_INTERVAL_S, self._tick)

    def _register_write(self, *_: object) -> None:
        """paho queued a packet with nothing queued before it: write at the end of this iteration."""
        if not self._flush_due:
            self._flush_due = True
            self.loop.call_soon(self._flush)

    def _unregister_write(self, *_: object) -> None:
        """paho has nothing left to write."""
        if self._writer:
            self._writer = False
            self.loop.remove_writer(self.fd)

    def _flush(self) -> None:
        self._flush_due = False
        if self.fd < 0:
            return
        self._write()
        if self.fd >= 0 and not self._writer and self.client.want_write():  # the socket is full
            self._writer = True
            self.loop.add_writer(self.fd, self._write)

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

    def _tick(self) -> None:
        if self.client.loop_misc() == paho.MQTT_ERR_SUCCESS:
            self._misc = self.loop.call_later(MISC_INTERVAL_S, self._tick)

    def _on_socket_close(self, *_: object) -> None:
        if self.fd >= 0:
            self.loop.remove_reader(self.fd)
            self.loop.remove_writer(self.fd)
            self.fd = -1
            self._writer = False
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

    async def disconnect(self) -> None:
        """Send DISCONNECT (normal: the session stays for its expiry, the will does not fire)
        and wait, bounded, for it to leave."""
        self.client.disconnect()
        try:
            async with asyncio.timeout(self.timeout_s):
                await self.lost
        except TimeoutError:
            log.debug("the DISCONNECT did not leave in %.0f s; closing", self.timeout_s)

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

    def _on_publish(self, _c: object, _u: object, mid: int, _code: object, _p: object = None) -> None:
        batch = self.pending.pop(mid, None)
        if batch is None:
            return
        batch.unacked -= 1
        batch.acked += 1
        batch.settle()
        self.room.set()

    # -- publishing and subscribing --------------------------------------------------
    async def publish(self, messages: Sequence[Outgoing], limit: int, timeout_s: float | None = None) -> int:
        """Hand `messages` to paho in order, within `WINDOW` and `limit`; how many the broker
        acknowledged within `timeout_s` (the connection's by default). `InvalidInput` for a topic
        or payload paho refuses; the first shortfall's cause is `problem()`."""
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        batch = _Batch(max(1, limit))
        for topic, payload, qos, retain, properties in messages:
            while not self.lost.done() and (len(self.pending) >= WINDOW or batch.unacked >= batch.limit):
                self.room.clear()
                if not await _within(self.room.wait(), timeout_s):
                    break
            if self.lost.done() or len(self.pending) >= WINDOW or batch.unacked >= batch.limit:
                break
            try:
                if qos == 1 and not retain and properties is None:
                    mid = self.client.publish_qos1(topic, payload)
                else:
                    mid = self.client.publish(topic, payload, qos=qos, retain=retain, properties=properties).mid
            except ValueError as exc:  # paho's checks of the topic and payload
                raise InvalidInput(f"cannot publish to {topic[:100]!r}: {exc}") from exc
            batch.unacked += 1
            self.pending[mid] = batch
        done = batch.done = self.loop.create_future()
        batch.settle()
        if not done.done():
            # One timer, not `asyncio.timeout`'s context and task bookkeeping: a sensor's every
            # report waits here.
            timer = self.loop.call_later(timeout_s, _settle, done)
            try:
                await done
            finally:
                timer.cancel()
        return batch.acked

    def problem(self) -> str:
        """Why a publish fell short: the connection's end, else the missing acknowledgement."""
        return self.lost.result() if self.lost.done() else f"no acknowledgement in {self.timeout_s:.0f} s"

    async def subscribe(self, subscriptions: list[tuple[str, SubscribeOptions]]) -> None:
        """Subscribe and wait for the SUBACK; `MqttError` if it does not come."""
        rc, mid = self.client.subscribe(subscriptions)
        if rc != paho.MQTT_ERR_SUCCESS:
            raise aiomqtt.MqttError(f"subscribe failed: {paho.error_string(rc)}")
        assert mid is not None  # noqa: S101  (paho gives one whenever rc is success)
        waiter = self.subacks[mid] = self.loop.create_future()
        if not await _within(waiter, self.timeout_s):
            raise aiomqtt.MqttError("no SUBACK from the broker")


def _settle(done: asyncio.Future[None]) -> None:
    """The wait for acknowledgements ran out: the publish returns what was acknowledged."""
    if not done.done():
        done.set_result(None)


async def _within(waiter: Any, timeout_s: float) -> bool:  # noqa: ANN401
    """Wait for `waiter` up to `timeout_s`; False when it timed out."""
    try:
        async with asyncio.timeout(timeout_s):
            await waiter
    except TimeoutError:
        return False
    return True
