"""PUBACKs and QoS 1 PUBLISHes decoded by `BufferedClient` with shared reason codes and
properties: the same outcome as paho's own decoding, for the packets a real Mosquitto sends,
without paho's per-packet objects; anything else is left to paho."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Callable, Iterator

import pytest
from paho.mqtt import _packet
from paho.mqtt import client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.matcher import MQTTMatcher
from paho.mqtt.reasoncodes import ReasonCode

from sensortasks.mqtt import MqttTarget
from sensortasks.mqtt.loop import Connection, new_paho_client
from sensortasks.mqtt.packets import BufferedClient
from sensortasks.testing import MosquittoBroker
from sensortasks.testing.proxy import TcpProxy

PUBACK = 0x40
PUBLISH = 0x30


def _counted(monkeypatch: pytest.MonkeyPatch, decoder: str) -> list[int]:
    """How often paho's own `decoder` (of `paho.mqtt._packet`) runs from here on."""
    calls = [0]
    original = getattr(_packet, decoder)

    def counted(*args: object) -> object:
        calls[0] += 1
        return original(*args)

    monkeypatch.setattr(_packet, decoder, counted)
    return calls


def client() -> BufferedClient:
    return BufferedClient(CallbackAPIVersion.VERSION2, client_id="puback-test", protocol=paho.MQTTv5)


async def test_the_pubacks_mosquitto_sends_are_decoded_without_paho(
    broker: MosquittoBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoded = _counted(monkeypatch, "decode_puback")
    mqtt = client()
    acked: dict[int, ReasonCode] = {}
    done = threading.Event()

    def on_publish(_c: object, _u: object, mid: int, reason: ReasonCode, _p: object) -> None:
        acked[mid] = reason
        if len(acked) == 4:
            done.set()

    mqtt.on_publish = on_publish
    mqtt.connect(broker.host, broker.port)
    mqtt.loop_start()
    try:
        subscribed = mqtt.subscribe("watched/#", qos=1)
        assert subscribed[0] == paho.MQTT_ERR_SUCCESS
        mids = {
            topic: mqtt.publish(topic, b"x", qos=1).mid for topic in ("watched/a", "nobody/a", "watched/b", "nobody/b")
        }
        assert await asyncio.to_thread(done.wait, 10), acked
    finally:
        mqtt.loop_stop()
        mqtt.disconnect()
    assert decoded == [0]
    assert [acked[mids[t]].value for t in ("watched/a", "watched/b")] == [0, 0]
    assert [acked[mids[t]].value for t in ("nobody/a", "nobody/b")] == [16, 16]
    assert acked[mids["nobody/a"]] is acked[mids["nobody/b"]]  # one object per reason code
    assert not mqtt._out_messages  # every publish was settled


@pytest.mark.parametrize(
    ("packet", "outcome"),
    [
        (b"\x00\x07\x18", "MalformedPacket"),  # 0x18 is no PUBACK reason code
        (b"\x00\x07\x10\x00", "sent"),  # a properties length: paho's to decode
    ],
)
def test_other_pubacks_are_paho_s(packet: bytes, outcome: str, monkeypatch: pytest.MonkeyPatch) -> None:
    mqtt = client()
    mqtt._in_packet = {"command": PUBACK, "packet": packet}  # type: ignore[typeddict-item]
    seen: list[int] = []
    monkeypatch.setattr(paho.Client, "_do_on_publish", lambda _self, mid, *_: seen.append(mid) or 0)
    mqtt._out_messages[7] = paho.MQTTMessage(mid=7)
    if outcome == "MalformedPacket":
        with pytest.raises(_packet.MalformedPacket):
            mqtt._handle_pubackcomp("PUBACK")
        assert seen == []
    else:
        mqtt._handle_pubackcomp("PUBACK")
        assert seen == [7]


def _publish(topic: bytes, payload: bytes, mid: int, properties: bytes = b"\x00") -> bytes:
    return len(topic).to_bytes(2, "big") + topic + mid.to_bytes(2, "big") + properties + payload


def _received(mqtt: BufferedClient, handle: Callable[[BufferedClient], object]) -> tuple[object, ...]:
    """What `handle` made of the packet in `mqtt._in_packet`: the message and the PUBACK sent."""
    got: list[paho.MQTTMessage] = []
    acked: list[int] = []
    mqtt._handle_on_message = got.append  # type: ignore[method-assign]
    mqtt._send_puback = lambda mid: acked.append(mid) or paho.MQTT_ERR_SUCCESS  # type: ignore[method-assign]
    handle(mqtt)
    [message] = got
    props = message.properties
    return (message.topic, message.payload, message.qos, message.retain, message.dup, message.mid,
            None if props is None else props.json(), acked)  # fmt: skip


@pytest.mark.parametrize(
    ("flags", "packet"),
    [
        (0x02, _publish(b"sensors/1/status", b'{"v":1}', 1)),
        (0x02 | 0x01, _publish(b"sensors/2/presence", b"", 65535)),  # retained, empty
        (0x02 | 0x08, _publish("sensors/é/x".encode(), b"\x00\xff", 300)),  # a duplicate
        (0x02, _publish(b"t", b"p", 7, properties=b"\x05\x03\x00\x02ab")),  # a content type: paho's
        (0x00, b"\x00\x01t\x00payload"),  # QoS 0: paho's
    ],
)
def test_a_publish_is_received_as_paho_receives_it(flags: int, packet: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    ours, theirs = client(), client()
    for mqtt in (ours, theirs):
        mqtt._in_packet = {"command": PUBLISH | flags, "packet": packet}  # type: ignore[typeddict-item]
    assert _received(ours, BufferedClient._handle_publish) == _received(theirs, paho.Client._handle_publish)


async def test_publishes_from_mosquitto_are_decoded_without_paho(
    broker: MosquittoBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoded = _counted(monkeypatch, "decode_publish")
    mqtt = client()
    got: list[tuple[str, bytes]] = []
    done = threading.Event()

    def on_message(_c: object, _u: object, message: paho.MQTTMessage) -> None:
        got.append((message.topic, message.payload))
        if len(got) == 3:
            done.set()

    mqtt.on_message = on_message
    mqtt.connect(broker.host, broker.port)
    mqtt.loop_start()
    try:
        mqtt.subscribe("in/#", qos=1)
        for i in range(3):
            mqtt.publish(f"in/{i}", f"m{i}".encode(), qos=1)
        assert await asyncio.to_thread(done.wait, 10), got
    finally:
        mqtt.loop_stop()
        mqtt.disconnect()
    assert sorted(got) == [(f"in/{i}", f"m{i}".encode()) for i in range(3)]
    assert decoded == [0]


def test_messages_go_to_on_message_without_the_filter_walk_until_a_filter_is_added(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    mqtt = client()
    plain: list[str] = []
    mqtt.on_message = lambda _c, _u, m: plain.append(m.topic)
    walk = MQTTMatcher.iter_match
    walks = [0]

    def counted(self: MQTTMatcher, topic: str) -> object:
        walks[0] += 1
        return walk(self, topic)

    monkeypatch.setattr(MQTTMatcher, "iter_match", counted)
    message = paho.MQTTMessage(mid=1, topic=b"sensors/1/tasks")
    mqtt._handle_on_message(message)
    assert (plain, walks) == (["sensors/1/tasks"], [0])
    filtered: list[str] = []
    mqtt.message_callback_add("sensors/+/tasks", lambda _c, _u, m: filtered.append(m.topic))
    mqtt._handle_on_message(message)
    mqtt._handle_on_message(paho.MQTTMessage(mid=2, topic=b"other"))
    assert (plain, filtered, walks) == (["sensors/1/tasks", "other"], ["sensors/1/tasks"], [2])  # paho's rules


def test_an_exception_in_on_message_is_raised_as_paho_raises_it() -> None:
    mqtt = client()

    def broken(*_: object) -> None:
        raise RuntimeError("the handler broke")

    mqtt.on_message = broken
    with pytest.raises(RuntimeError, match="the handler broke"):
        mqtt._handle_on_message(paho.MQTTMessage(mid=1, topic=b"t"))
    mqtt.suppress_exceptions = True
    mqtt._handle_on_message(paho.MQTTMessage(mid=1, topic=b"t"))  # logged, not raised


async def test_a_publish_nobody_acknowledges_returns_what_was_acknowledged_in_time(broker: MosquittoBroker) -> None:
    """The wait for PUBACKs is bounded: behind a partition the publish returns 0 after its timeout."""
    with TcpProxy(broker.host, broker.port) as proxy:
        target = MqttTarget(broker.host, proxy.port, None, None, tls=False)
        mqtt = new_paho_client(target, identifier="unacknowledged", timeout_s=5)
        connection = Connection(mqtt, lambda *_: None, timeout_s=5)
        await connection.open(target, keepalive_s=60, session_expiry_s=0)
        try:
            assert await connection.publish([("t/ok", b"1", 1, False, None)], 1, 5) == 1
            proxy.cut("blackhole")
            started = asyncio.get_running_loop().time()
            assert await connection.publish([("t/lost", b"2", 1, False, None)], 1, 0.3) == 0
            assert 0.3 <= asyncio.get_running_loop().time() - started < 3
            assert connection.problem() == "no acknowledgement in 5 s"
        finally:
            connection.close()


def _queued(mqtt: BufferedClient) -> list[bytes]:
    return [bytes(p["packet"]) for p in mqtt._out_packet]


@contextlib.contextmanager
def _connected(*clients: BufferedClient) -> Iterator[None]:
    """The clients "connected" to a socket pair that nothing reads: packets stay queued, as for
    a client an outside loop writes for."""
    pairs = [socket.socketpair() for _ in clients]
    for mqtt, (sock, _) in zip(clients, pairs, strict=True):
        mqtt._sock = sock
        mqtt.on_socket_register_write = lambda *_: None
    try:
        yield
    finally:
        for mqtt, pair in zip(clients, pairs, strict=True):
            mqtt._sock = None
            for sock in pair:
                sock.close()


@pytest.mark.parametrize(
    ("topic", "payload"),
    [("sensors/1/tasks", b'{"task_id": 1}'), ("é/x", b""), ("t", b"\x00" * 200)],  # 200: two length bytes
)
def test_a_qos1_publish_is_the_packet_paho_sends_without_its_message_objects(topic: str, payload: bytes) -> None:
    """`publish_qos1` queues the bytes paho's ``publish`` queues for the same message id, keeps
    no `MQTTMessage` for it, and its PUBACK reaches ``on_publish`` once, as paho's does."""
    ours, theirs = client(), client()
    with _connected(ours, theirs):
        mid = ours.publish_qos1(topic, payload)
        assert theirs.publish(topic, payload, qos=1).mid == mid
        assert _queued(ours) == _queued(theirs)
    assert not ours._out_messages
    acked: list[tuple[int, int]] = []
    ours.on_publish = lambda _c, _u, m, reason, _p: acked.append((m, reason.value))
    ours._in_packet = {"command": PUBACK, "packet": mid.to_bytes(2, "big") + b"\x10"}  # type: ignore[typeddict-item]
    ours._handle_pubackcomp("PUBACK")
    ours._handle_pubackcomp("PUBACK")  # a duplicate PUBACK: nothing waits for it any more
    assert acked == [(mid, 16)]


@pytest.mark.parametrize("topic", ["sensors/+/tasks", "sensors/#", ""])
def test_a_qos1_publish_refuses_what_paho_refuses(topic: str) -> None:
    """Wildcards, as paho; and an empty topic, which paho lets through for a topic alias that a
    publish without properties cannot carry (the broker would close the connection)."""
    ours, theirs = client(), client()
    with _connected(ours, theirs):
        if topic:
            with pytest.raises(ValueError):
                theirs.publish(topic, b"x", qos=1)
        with pytest.raises(ValueError):
            ours.publish_qos1(topic, b"x")
    assert not ours._unacked
