"""Raw MQTT 5 clients (paho) that report what the broker answered: CONNACK, SUBACK and PUBACK
reason codes (aiomqtt 2.x hides PUBACK codes), disconnections and messages received."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from .conftest import SecureBroker

TIMEOUT_S = 5.0
#: CONNACK reason codes of a refused login (Mosquitto 2.0 answers 135, "not authorized").
REFUSED = (134, 135)
NOT_AUTHORIZED = 135


@dataclass
class Probe:
    """One paho connection; everything the broker says to it is recorded."""

    broker: SecureBroker
    username: str | None
    password: str | None
    client_id: str
    clean_start: bool = True
    connack: int | None = None
    disconnects: list[int] = field(default_factory=list)
    messages: list[tuple[str, bytes]] = field(default_factory=list)
    _acks: dict[int, list[int]] = field(default_factory=dict)
    _connected: threading.Event = field(default_factory=threading.Event)
    _acked: threading.Condition = field(default_factory=threading.Condition)

    def __post_init__(self) -> None:
        self.paho = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv5)
        if self.username is not None:
            self.paho.username_pw_set(self.username, self.password)
        self.paho.on_connect = self._on_connect
        self.paho.on_disconnect = lambda _c, _u, _f, reason, _p: self.disconnects.append(reason.value)
        self.paho.on_message = lambda _c, _u, m: self.messages.append((m.topic, m.payload))
        self.paho.on_subscribe = lambda _c, _u, mid, codes, _p: self._ack(mid, [c.value for c in codes])
        self.paho.on_publish = lambda _c, _u, mid, reason, _p: self._ack(mid, [reason.value])

    def _on_connect(self, _c: object, _u: object, _f: object, reason: object, _p: object) -> None:
        self.connack = getattr(reason, "value", 0)
        self._connected.set()

    def _ack(self, mid: int, codes: list[int]) -> None:
        with self._acked:
            self._acks[mid] = codes
            self._acked.notify_all()

    def _wait_ack(self, mid: int) -> list[int]:
        with self._acked:
            if not self._acked.wait_for(lambda: mid in self._acks, TIMEOUT_S):
                raise AssertionError(f"no acknowledgement for message {mid} in {TIMEOUT_S} s")
            return self._acks[mid]

    def connect(self) -> int:
        """Connect (a persistent session unless `clean_start`); returns the CONNACK reason code."""
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = 0 if self.clean_start else 3600
        self.paho.connect(self.broker.host, self.broker.port, clean_start=self.clean_start, properties=properties)
        self.paho.loop_start()
        if not self._connected.wait(TIMEOUT_S):
            raise AssertionError(f"no CONNACK for {self.client_id} in {TIMEOUT_S} s")
        assert self.connack is not None
        return self.connack

    @property
    def connected(self) -> bool:
        return self.connack == 0 and self.paho.is_connected()

    def subscribe(self, topic: str) -> int:
        _, mid = self.paho.subscribe(topic, qos=1)
        return self._wait_ack(mid)[0]

    def publish(self, topic: str, payload: bytes = b"{}") -> int:
        info = self.paho.publish(topic, payload, qos=1)
        return self._wait_ack(info.mid)[0]

    def wait_message(self, timeout: float = TIMEOUT_S) -> tuple[str, bytes]:
        deadline = time.monotonic() + timeout
        while not self.messages:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.client_id} received nothing in {timeout} s")
            time.sleep(0.02)
        return self.messages[0]

    def close(self) -> None:
        if self.paho.is_connected():
            self.paho.disconnect()
        self.paho.loop_stop()
        # Break the probe <-> paho cycle: freed by reference counting, paho closes its socket
        # pair itself (collected in a cycle, the sockets may be finalised first, unclosed).
        self.paho.on_connect = self.paho.on_disconnect = self.paho.on_message = None
        self.paho.on_subscribe = self.paho.on_publish = None


def connack(broker: SecureBroker, username: str | None, password: str | None, client_id: str, **kw: bool) -> int:
    """The CONNACK reason code for one login attempt (the connection is closed again)."""
    probe = Probe(broker, username, password, client_id, **kw)
    try:
        return probe.connect()
    finally:
        probe.close()


def acl_codes(
    broker: SecureBroker, username: str, password: str, *, subscribe: list[str], publish: list[str]
) -> tuple[list[int], list[int]]:
    """SUBACK and PUBACK reason codes for each topic, connected as the account (its own client id)."""
    probe = Probe(broker, username, password, username)
    try:
        assert probe.connect() == 0
        return [probe.subscribe(t) for t in subscribe], [probe.publish(t) for t in publish]
    finally:
        probe.close()
