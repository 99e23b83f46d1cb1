"""What an MQTT failure means for whoever runs us: a broker that is down, or one that refuses us.

A broker that is down or restarting is worth waiting for (reconnect with back off). A broker
that answers CONNECT with "bad user name or password" or "not authorized" will say the same
on every retry: that is a configuration error, reported once and clearly.
"""

from __future__ import annotations

import asyncio
import ssl
import uuid

import aiomqtt
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.reasoncodes import ReasonCode

from sensortasks.errors import ConfigError, Unavailable

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
    client = aiomqtt.Client(
        host,
        port,
        username=username,
        password=password,
        identifier=f"sensortasks-probe-{uuid.uuid4().hex[:8]}",
        protocol=aiomqtt.ProtocolVersion.V5,
        tls_context=tls_context,
        timeout=timeout,
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
