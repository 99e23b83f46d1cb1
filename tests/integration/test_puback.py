"""PUBACKs decoded by `BufferedClient` with shared reason codes: the same outcome as paho's own
decoding, for the PUBACKs a real Mosquitto sends (a bare success, "no matching subscribers"),
without paho's per-packet objects; anything else is left to paho."""

from __future__ import annotations

import asyncio
import threading

import pytest
from paho.mqtt import _packet
from paho.mqtt import client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from sensortasks.mqtt.loop import BufferedClient
from sensortasks.testing import MosquittoBroker

PUBACK = 0x40


def client() -> BufferedClient:
    return BufferedClient(CallbackAPIVersion.VERSION2, client_id="puback-test", protocol=paho.MQTTv5)


async def test_the_pubacks_mosquitto_sends_are_decoded_without_paho(
    broker: MosquittoBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoded = [0]
    paho_decode = _packet.decode_puback

    def counted(*args: object) -> object:
        decoded[0] += 1
        return paho_decode(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(_packet, "decode_puback", counted)
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
