"""paho reading its socket a chunk at a time and decoding the common packets without its
per-packet objects: `BufferedClient`, the client of the dispatcher's link, the SDK and the raw
paho baseline alike (so a benchmark's ratio is not flattered by it)."""

from __future__ import annotations

from typing import Any, Literal, cast

from paho.mqtt import client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

#: Bytes asked of the socket at once (paho itself asks for each packet's few bytes in turn).
READ_CHUNK = 65536

#: PUBACK reason codes by value, each built once (paho builds a `ReasonCode` and a `Properties`
#: for every PUBACK); shared by every callback, not to be mutated.
_PUBACK_REASONS: dict[int, ReasonCode] = {}
NO_PROPERTIES = Properties(PacketTypes.PUBACK)  # type: ignore[no-untyped-call]
NO_PUBLISH_PROPERTIES = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
#: Flags of a PUBLISH's first byte.
_DUP, _QOS, _RETAIN = 0x08, 0x06, 0x01
_QOS1 = 0x02
#: The largest payload a PUBLISH can carry (paho's bound).
MAX_PAYLOAD = 268_435_455


def puback_reason(value: int) -> ReasonCode:
    """The shared reason code of a PUBACK (`KeyError` or `ValueError`, as paho's, for a value that
    a PUBACK cannot carry)."""
    reason = _PUBACK_REASONS.get(value)
    if reason is None:
        reason = ReasonCode(PacketTypes.PUBACK)
        reason.unpack(bytes((value,)))  # raises for a value that is not a PUBACK's
        _PUBACK_REASONS[value] = reason
    return reason


class BufferedClient(paho.Client):
    """paho reading the socket a chunk at a time. paho asks for each packet piece by piece (its
    type byte, each byte of its length, then the rest): three or more ``recv`` calls a packet,
    8 % of the dispatcher's CPU. Here one ``recv`` of up to `READ_CHUNK` serves them, and
    ``loop_read`` goes on while bytes read ahead are left (the socket will not signal them
    again), so any event loop can drive it, paho's own thread included.

    A PUBACK without properties (the message id, and a reason code unless it is a success; MQTT
    5 §3.4.2) is decoded here with shared reason codes, not paho's new `ReasonCode`,
    `Properties` and packet tuple for each: the dispatcher gets four PUBACKs per task (the
    task and three ops events; Mosquitto answers "no matching subscribers" for an event nobody
    watches), and their decoding was 5 % of its CPU. So is a QoS 1 PUBLISH without properties
    (every status, every task): one shared empty `Properties`, no struct formats built per
    packet. Any other packet is paho's."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # noqa: ANN401
        super().__init__(*args, **kwargs)
        self._chunk = b""
        self._taken = 0
        self._filtered = False
        #: Message ids of `publish_qos1` publishes awaiting their PUBACK.
        self._unacked: set[int] = set()

    def publish_qos1(self, topic: str, payload: bytes) -> int:
        """A QoS 1 PUBLISH without retain or properties, queued as paho's ``publish`` queues it
        but without its `MQTTMessage` and `MQTTMessageInfo` (a `Condition` each): with the
        `MQTTMessage` of each received message, a fifth of the dispatcher's main thread. Its
        PUBACK calls ``on_publish`` as paho's would (with `NO_PROPERTIES`). Nothing is kept to
        send again after a reconnect: the clients of `sensortasks.mqtt.loop` and the benchmark
        never reconnect (a new connection is a new client). The message id; ``ValueError`` for
        what paho refuses (a wildcard, a size out of bounds) and for an empty topic (paho sends
        one, for a topic alias, which a publish without properties cannot carry)."""
        if (
            self._sock is None
            or self._protocol != paho.MQTTv5
            or self._callback_api_version != CallbackAPIVersion.VERSION2
        ):
            return self.publish(topic, payload, qos=1).mid  # paho keeps it for the connection
        name = topic.encode()
        if not name:
            raise ValueError("Invalid topic.")
        self._raise_for_invalid_topic(name)
        if len(payload) > MAX_PAYLOAD:
            raise ValueError("Payload too large.")
        mid = self._mid_generate()
        while mid in self._unacked or mid in self._out_messages:  # wrapped round
            mid = self._mid_generate()
        self._unacked.add(mid)
        packet = bytearray((paho.PUBLISH | _QOS1,))
        self._pack_remaining_length(packet, 2 + len(name) + 3 + len(payload))
        packet += len(name).to_bytes(2, "big") + name + mid.to_bytes(2, "big") + b"\x00" + payload
        self._packet_queue(paho.PUBLISH, packet, mid, 1)
        return mid

    def message_callback_add(self, sub: str, callback: Any) -> None:  # noqa: ANN401
        self._filtered = True
        super().message_callback_add(sub, callback)

    def _handle_on_message(self, message: paho.MQTTMessage) -> None:
        """Straight to ``on_message`` when no callback has a topic filter: paho walks its filters'
        tree for every message anyway (6 % of a fleet's CPU)."""
        if self._filtered or self.on_message is None:
            super()._handle_on_message(message)
            return
        with self._in_callback_mutex:
            try:
                self.on_message(self, self._userdata, message)
            except Exception as err:
                self._easy_log(paho.MQTT_LOG_ERR, "Caught exception in on_message: %s", err)
                if not self.suppress_exceptions:
                    raise

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        result = super().loop_read(max_packets)
        while result == paho.MQTT_ERR_SUCCESS and self._taken < len(self._chunk):
            result = super().loop_read(max_packets)
        return result

    def _handle_pubackcomp(self, cmd: Literal["PUBACK", "PUBCOMP"]) -> MQTTErrorCode:
        packet = self._in_packet["packet"]
        if cmd != "PUBACK" or len(packet) < 2 or self._protocol != paho.MQTTv5:  # noqa: PLR2004
            return super()._handle_pubackcomp(cmd)
        mid = packet[0] << 8 | packet[1]
        if mid in self._unacked:
            return self._acked(mid, packet[2] if len(packet) > 2 else 0)  # noqa: PLR2004
        if len(packet) > 3:  # noqa: PLR2004  (properties: paho's to decode)
            return super()._handle_pubackcomp(cmd)
        try:
            reason = puback_reason(packet[2] if len(packet) == 3 else 0)  # noqa: PLR2004
        except (KeyError, ValueError):
            return super()._handle_pubackcomp(cmd)  # paho's word on a malformed packet
        with self._out_message_mutex:
            if mid in self._out_messages:
                return self._do_on_publish(mid, reason, NO_PROPERTIES)
        return paho.MQTT_ERR_SUCCESS

    def _acked(self, mid: int, code: int) -> MQTTErrorCode:
        """The PUBACK of a `publish_qos1` publish (its properties, if any, unread)."""
        self._unacked.discard(mid)
        on_publish = cast("paho.CallbackOnPublish_v2 | None", self.on_publish)  # VERSION2 (`publish_qos1`)
        if on_publish is not None:
            with self._in_callback_mutex:
                on_publish(self, self._userdata, mid, puback_reason(code), NO_PROPERTIES)
        return paho.MQTT_ERR_SUCCESS

    def _handle_publish(self) -> MQTTErrorCode:
        header, packet = self._in_packet["command"], self._in_packet["packet"]
        if (header & _QOS) >> 1 != 1 or self._protocol != paho.MQTTv5 or len(packet) < 2:  # noqa: PLR2004
            return super()._handle_publish()
        mid_at = 2 + (packet[0] << 8 | packet[1])
        if len(packet) < mid_at + 3 or packet[mid_at + 2] != 0:  # cut short, or properties
            return super()._handle_publish()
        message = paho.MQTTMessage(mid=packet[mid_at] << 8 | packet[mid_at + 1], topic=bytes(packet[2:mid_at]))
        message.dup = bool(header & _DUP)
        message.qos = 1
        message.retain = bool(header & _RETAIN)
        message.properties = NO_PUBLISH_PROPERTIES
        message.payload = bytes(packet[mid_at + 3 :])
        message.timestamp = paho.time_func()
        self._handle_on_message(message)
        return paho.MQTT_ERR_SUCCESS if self._manual_ack else self._send_puback(message.mid)

    def _sock_recv(self, bufsize: int) -> bytes:
        if self._taken >= len(self._chunk):
            data = super()._sock_recv(READ_CHUNK)  # BlockingIOError when empty, b"" at the end
            if len(data) <= bufsize:
                return data
            self._chunk, self._taken = data, 0
        start = self._taken
        self._taken = min(start + bufsize, len(self._chunk))
        return self._chunk[start : self._taken]
