"""What the broker link and its protocol share: timings, the keepalive rule and the shape of a
received message.

Apart from `link.py` so that `paho_link.py` can use it without an import cycle (`link.py`
builds the link `dispatcher_link` returns)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

from paho.mqtt.client import MQTTMessage

RECONNECT_BACKOFF_S = 0.2
RECONNECT_BACKOFF_MAX_S = 10.0
PUBLISH_TIMEOUT_S = 10.0
#: QoS 1 messages paho keeps in flight towards the broker (its default is 20), and the bound
#: on concurrent publish/subscribe calls awaiting their acknowledgement.
MAX_INFLIGHT = 1000


#: The shortest keepalive: Mosquitto counts whole seconds (``now - last_in > keepalive * 3 / 2``
#: in integers), so at 1 s it may drop a client that pings every 1 to 2 s (aiomqtt checks the
#: keepalive once a second), and did here, idle for 17 s.
MIN_KEEPALIVE_S = 2


def keepalive_for(instance_timeout_s: float) -> int:
    """The MQTT keepalive (whole seconds) of a dispatcher whose instance timeout is
    `instance_timeout_s`: half of it, `MIN_KEEPALIVE_S` at least. paho notices a silent broker
    within two keepalives (and a second: aiomqtt checks once a second), about the timeout."""
    return max(MIN_KEEPALIVE_S, int(instance_timeout_s / 2))


@dataclass(frozen=True, slots=True)
class Incoming:
    """A received message and the connection it came on (acks go to that connection only)."""

    topic: str
    payload: bytes
    retain: bool
    mid: int
    qos: int
    generation: int
    #: MQTT 5 request/response: where to reply, and what to echo.
    response_topic: str | None = None
    correlation_data: bytes | None = None
    user_properties: tuple[tuple[str, str], ...] = ()
    content_type: str | None = None
    #: When it arrived (before any queueing): orders presence heard by several instances.
    heard_at: datetime | None = None

    def user_property(self, name: str) -> str | None:
        return next((v for k, v in self.user_properties if k.lower() == name), None)


def incoming(message: MQTTMessage, generation: int, heard_at: datetime) -> Incoming:
    """What the dispatcher sees of a message paho received (MQTT 5 properties copied out)."""
    props = getattr(message, "properties", None)
    payload = bytes(message.payload)
    if props is None:
        return Incoming(message.topic, payload, message.retain, message.mid, message.qos, generation, heard_at=heard_at)
    response_topic = getattr(props, "ResponseTopic", None)
    correlation = getattr(props, "CorrelationData", None)
    user = tuple((str(k), str(v)) for k, v in getattr(props, "UserProperty", ()) or ())
    return Incoming(
        message.topic,
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


OnConnect = Callable[[], Awaitable[None]]
