"""The one place that knows how we talk to a broker: where it is (`MqttTarget`, parsed from
``mqtt://`` and ``mqtts://`` URLs), the client we connect with (`new_client`: MQTT 5, TLS, the
CONNECT properties of a persistent session, will, timeouts), the back-off between reconnects
(`Backoff`, with jitter), and what a failure means: a broker that is down, or one that refuses us.

A broker that is down or restarting is worth waiting for (reconnect with back off). A broker
that answers CONNECT with "bad user name or password" or "not authorized" will say the same
on every retry: that is a configuration error, reported once and clearly.
"""

from __future__ import annotations

import asyncio
import random
import ssl
import uuid
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import aiomqtt
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt import client as paho_client
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from sensortasks.errors import ConfigError, Unavailable


@dataclass(frozen=True, slots=True)
class MqttTarget:
    """A parsed ``mqtt://`` or ``mqtts://`` URL."""

    host: str
    port: int
    username: str | None
    password: str | None
    tls: bool


def parse_mqtt_url(url: str) -> MqttTarget:
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts"):
        raise ValueError(f"MQTT URL must start with mqtt:// or mqtts://, got {url!r}")
    if not parts.hostname:
        raise ValueError(f"MQTT URL has no host: {url!r}")
    tls = parts.scheme == "mqtts"
    return MqttTarget(
        host=parts.hostname,
        port=parts.port or (8883 if tls else 1883),
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        tls=tls,
    )


def tls_context(ca_file: str | None) -> ssl.SSLContext:
    """A client TLS context: the system's trust store, or the CA bundle `ca_file`."""
    return ssl.create_default_context(cafile=ca_file)


def session_properties(session_expiry_s: int) -> Properties:
    """CONNECT properties of a persistent MQTT 5 session: with ``clean_start=False`` the broker
    keeps subscriptions and queued QoS 1 messages for `session_expiry_s` after a disconnect
    (NOTES.md: without the property the session ends at every disconnect)."""
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.SessionExpiryInterval = session_expiry_s
    return properties


def unique_identifier(prefix: str, digits: int = 8) -> str:
    """A client id of our own for a connection no account is bound to (``prefix-1a2b3c4d``)."""
    return f"{prefix}-{uuid.uuid4().hex[:digits]}"


def new_client(
    target: MqttTarget,
    *,
    identifier: str | None,
    ssl_context: ssl.SSLContext | None = None,
    session_expiry_s: int | None = None,
    will: aiomqtt.Will | None = None,
    timeout: float | None = None,
    max_inflight: int | None = None,
    max_outgoing_calls: int | None = None,
) -> aiomqtt.Client:
    """An MQTT 5 client for `target`, not yet connected (enter it with ``async with``; a client
    can be entered again after a loss, but a fresh one per attempt is simpler).

    - TLS when the target is ``mqtts://``: `ssl_context`, else the system's trust store.
    - `session_expiry_s`: a persistent session (``clean_start=False`` and `session_properties`);
      without it, a session that ends with the connection.
    - `timeout`: how long connect, subscribe and publish wait for the broker.
    - `max_inflight`: QoS 1 messages paho keeps in flight (its default is 20).
    - `max_outgoing_calls`: the bound on concurrent publish/subscribe calls; aiomqtt's "There are
      N pending publish calls." warning is set to the same bound (it fires above 10 otherwise).
    """
    persistent = session_expiry_s is not None
    client = aiomqtt.Client(
        target.host,
        target.port,
        username=target.username,
        password=target.password,
        identifier=identifier,
        protocol=aiomqtt.ProtocolVersion.V5,
        clean_start=False if persistent else paho_client.MQTT_CLEAN_START_FIRST_ONLY,
        properties=session_properties(session_expiry_s) if session_expiry_s is not None else None,
        will=will,
        timeout=timeout,
        max_inflight_messages=max_inflight,
        max_concurrent_outgoing_calls=max_outgoing_calls,
        tls_context=(ssl_context or tls_context(None)) if target.tls else None,
    )
    if max_outgoing_calls is not None:
        client.pending_calls_threshold = max_outgoing_calls
    return client


class Backoff:
    """Waits between reconnects: doubling from `first_s` up to `max_s`, each drawn uniformly
    from its upper half (jitter), so that a fleet that lost its broker does not come back in one
    wave. `reset()` after a successful connect."""

    def __init__(self, first_s: float = 0.2, max_s: float = 10.0) -> None:
        self.first_s = first_s
        self.max_s = max_s
        self._next_s = first_s

    def next(self) -> float:
        delay = self._next_s * random.uniform(0.5, 1.0)
        self._next_s = min(self._next_s * 2, self.max_s)
        return delay

    def reset(self) -> None:
        self._next_s = self.first_s


#: CONNACK reason codes that no retry can fix. MQTT 5: 133 client identifier not valid,
#: 134 bad user name or password, 135 not authorized, 138 banned, 140 bad authentication
#: method. MQTT 3.1.1 return codes: 2 identifier rejected, 4 bad credentials, 5 not authorised.
REFUSED_V5 = frozenset({133, 134, 135, 138, 140})
REFUSED_V311 = frozenset({2, 4, 5})
PROBE_TIMEOUT_S = 5.0


class BrokerRefused(ConfigError):
    """The broker refused our login (credentials or client identifier): retrying cannot help."""


def refusal(exc: BaseException) -> str | None:
    """The broker's reason if `exc` is a refused login, else None."""
    if not isinstance(exc, MqttConnectError):
        return None
    rc = exc.rc
    if isinstance(rc, ReasonCode):
        return str(rc) if rc.value in REFUSED_V5 else None
    if isinstance(rc, int) and rc in REFUSED_V311:
        text = str(exc.args[0]) if exc.args else f"return code {rc}"  # "Connection refused: Not authorised"
        return text.split(": ", 1)[-1]
    return None


def reason(exc: BaseException) -> str:
    """A short human reason for an MQTT failure ("Not authorized", "[Errno 111] Connection refused")."""
    if isinstance(exc, aiomqtt.MqttCodeError) and isinstance(exc.rc, ReasonCode):
        return str(exc.rc)
    return str(exc) or type(exc).__name__


def refused(host: str, port: int, username: str | None, why: str) -> BrokerRefused:
    who = f"as {username!r}" if username else "without credentials"
    return BrokerRefused(f"the MQTT broker {host}:{port} refused the login {who}: {why}")


async def probe(
    host: str,
    port: int,
    *,
    username: str | None = None,
    password: str | None = None,
    tls_context: ssl.SSLContext | None = None,
    timeout: float = PROBE_TIMEOUT_S,
) -> None:
    """Connect once and disconnect: `BrokerRefused` if the login is refused, `Unavailable` if
    the broker cannot be reached in `timeout` seconds."""
    target = MqttTarget(host, port, username, password, tls=tls_context is not None)
    client = new_client(
        target, identifier=unique_identifier("sensortasks-probe"), ssl_context=tls_context, timeout=timeout
    )
    try:
        async with asyncio.timeout(timeout), client:
            pass
    except (aiomqtt.MqttError, TimeoutError) as exc:
        why = refusal(exc)
        if why is not None:
            raise refused(host, port, username, why) from None
        text = "no answer" if isinstance(exc, TimeoutError) else reason(exc)
        raise Unavailable(f"cannot reach the MQTT broker {host}:{port}: {text}") from None
