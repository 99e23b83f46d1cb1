"""Broker accounts through Mosquitto's dynamic-security plugin: one per sensor, one for the dispatcher.

The plugin's protocol (checked on Mosquitto 2.0.11): a request ``{"commands": [...]}`` published
on ``$CONTROL/dynamic-security/v1`` is answered by one ``{"responses": [...]}`` on
``$CONTROL/dynamic-security/v1/response``, one response per command, in order:
``{"command": ..., "error": ..., "data": ..., "correlationData": ...}``. That answer is an
ordinary publish that every admin connection subscribed to the response topic receives, so
concurrent requests would read each other's answers: every command carries a unique
``correlationData``, which the plugin echoes, and answers are matched on it.

Mosquitto 2.0's dynamic security has no ``%u``/``%c`` ACL patterns, so every sensor gets its
own role naming its own topics, and its account is bound to the client id the SDK uses
(``sensor-<serial>``): with a bound account a sensor cannot connect under another sensor's
client id, which would otherwise take that sensor's session over. Changes apply at once, with
no restart: changing a client's password, or deleting the client or its role, disconnects it.

Each call opens its own short MQTT 5 connection as the admin: registration is rare, and a
connection per call needs no reconnect logic and no shared state between concurrent calls.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import socket
import ssl
import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiomqtt

from sensortasks.errors import Unavailable
from sensortasks.protocol.topics import Topics

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = CONTROL_TOPIC + "/response"
#: Bound on a whole call: connect, send, and every answer.
TIMEOUT_S = 10.0
DISPATCHER_USERNAME = "sensortasks-dispatcher"
DISPATCHER_ROLE = "sensortasks-dispatcher"
# The plugin's error texts for "nothing to do": create what exists, delete what does not.
ROLE_EXISTS = {"createRole": "Role already exists"}
CLIENT_EXISTS = {"createClient": "Client already exists"}
ALREADY_GONE = {"deleteClient": "Client not found", "deleteRole": "Role not found"}


class BrokerAdminError(Unavailable):
    """The dynamic-security plugin refused a command, or the broker could not be reached in time."""


@dataclass(frozen=True, slots=True)
class MqttCredentials:
    username: str
    password: str


def sensor_username(serial: int) -> str:
    """The sensor's broker username, role name and client id (the SDK connects as this)."""
    return f"sensor-{serial}"


def _acl(acltype: str, topic: str) -> dict[str, Any]:
    return {"acltype": acltype, "topic": topic, "allow": True}


class DynsecAdmin:
    """Creates, re-keys and deletes broker accounts with the dynamic-security admin account."""

    def __init__(
        self,
        host: str,
        port: int,
        username: str,
        password: str,
        *,
        tls_context: ssl.SSLContext | None = None,
        sensors_prefix: str = "sensors",
        timeout_s: float = TIMEOUT_S,
    ) -> None:
        self.host = host
        self.port = port
        self.username = username
        self.password = password
        self.tls_context = tls_context
        self.topics = Topics(sensors=sensors_prefix)
        self.timeout_s = timeout_s

    async def add_sensor(self, serial: int) -> MqttCredentials:
        """Give the sensor an account with a fresh random password, or re-key the one it has.

        Idempotent and convergent: the role's ACLs and the client's role and client id are set
        to what they should be even if they exist from an earlier registration. Re-keying
        disconnects a sensor connected with the old password.
        """
        if serial <= 0:
            msg = f"serial must be positive, got {serial}"
            raise ValueError(msg)
        name = sensor_username(serial)
        acls = [
            _acl("subscribePattern", self.topics.tasks(serial)),
            _acl("publishClientReceive", self.topics.tasks(serial)),
            _acl("publishClientSend", self.topics.status(serial)),
            _acl("publishClientSend", self.topics.presence(serial)),
        ]
        password = secrets.token_urlsafe(24)
        await self._ensure(name, acls, name, password, clientid=name)
        return MqttCredentials(name, password)

    async def remove_sensor(self, serial: int) -> None:
        """Delete the sensor's account and role; a connected sensor is disconnected at once.

        Removing a sensor that has no account is not an error.
        """
        name = sensor_username(serial)
        await self.execute(
            [{"command": "deleteClient", "username": name}, {"command": "deleteRole", "rolename": name}],
            tolerate=ALREADY_GONE,
        )

    async def add_dispatcher(self, username: str, password: str) -> None:
        """Create or update the dispatcher's account with this password (idempotent).

        It reads statuses, presence and commands (also through ``$share/<group>/...``) and
        ``ops/#`` (so that ``sensortasks watch`` can use it), and publishes on any topic: MQTT 5
        replies go to whatever response topic each requester chose. ``#`` matches no topic
        starting with ``$``, so ``$CONTROL`` (account administration) stays out of reach. The
        account is not bound to a client id: every dispatcher instance has its own.
        """
        reads = [self.topics.all_status, self.topics.all_presence, self.topics.all_commands]
        acls = [
            *(_acl("subscribePattern", topic) for topic in reads),
            *(_acl("subscribePattern", f"$share/+/{topic}") for topic in reads),
            _acl("subscribePattern", f"{self.topics.ops}/#"),
            *(_acl("publishClientReceive", topic) for topic in [*reads, f"{self.topics.ops}/#"]),
            _acl("publishClientSend", "#"),
        ]
        await self._ensure(DISPATCHER_ROLE, acls, username, password, clientid=None)

    async def _ensure(
        self, role: str, acls: list[dict[str, Any]], username: str, password: str, *, clientid: str | None
    ) -> None:
        """Create-or-modify the role and the client in one request (the broker applies it in order)."""
        client: dict[str, Any] = {"username": username, "password": password, "roles": [{"rolename": role}]}
        if clientid is not None:
            client["clientid"] = clientid
        await self.execute(
            [
                {"command": "createRole", "rolename": role, "acls": acls},
                {"command": "modifyRole", "rolename": role, "acls": acls},
                {"command": "createClient", **client},
                {"command": "modifyClient", **client},
            ],
            tolerate=ROLE_EXISTS | CLIENT_EXISTS,
        )

    async def execute(
        self, commands: list[dict[str, Any]], *, tolerate: Mapping[str, str] | None = None
    ) -> list[dict[str, Any]]:
        """Send raw dynamic-security commands in one request and return their responses, in order.

        Raises BrokerAdminError on the first error, unless ``tolerate`` maps that command's name
        to exactly that error text; and if the broker cannot be reached or does not answer every
        command within ``timeout_s``.
        """
        request = uuid.uuid4().hex
        tagged = [{**command, "correlationData": f"{request}:{i}"} for i, command in enumerate(commands)]
        try:
            async with (
                asyncio.timeout(self.timeout_s),
                aiomqtt.Client(
                    self.host,
                    self.port,
                    username=self.username,
                    password=self.password,
                    identifier=f"sensortasks-admin-{request[:12]}",
                    protocol=aiomqtt.ProtocolVersion.V5,
                    tls_context=self.tls_context,
                    timeout=self.timeout_s,
                ) as client,
            ):
                await client.subscribe(RESPONSE_TOPIC, qos=1)
                await client.publish(CONTROL_TOPIC, json.dumps({"commands": tagged}), qos=1)
                responses = await _answers(client, request, len(commands))
        except TimeoutError:
            msg = f"the dynamic-security plugin at {self.host}:{self.port} did not answer in {self.timeout_s} s"
            raise BrokerAdminError(msg) from None
        except aiomqtt.MqttError as exc:
            msg = f"cannot reach the broker at {self.host}:{self.port} as {self.username!r}: {exc}"
            raise BrokerAdminError(msg) from exc
        for command, response in zip(commands, responses, strict=True):
            error = response.get("error")
            if error is not None and (tolerate or {}).get(command["command"]) != error:
                what = " ".join(filter(None, [command["command"], command.get("username") or command.get("rolename")]))
                msg = f"{what}: {error}"
                raise BrokerAdminError(msg)
        return responses


async def _answers(client: aiomqtt.Client, request: str, count: int) -> list[dict[str, Any]]:
    """Collect the responses tagged with this request's correlation data, in command order."""
    found: dict[int, dict[str, Any]] = {}
    prefix = request + ":"
    async for message in client.messages:
        try:
            body = json.loads(message.payload) if isinstance(message.payload, bytes | str) else {}
        except ValueError:
            continue  # not an answer of the plugin's
        for response in body.get("responses", []) if isinstance(body, dict) else []:
            tag = response.get("correlationData") if isinstance(response, dict) else None
            if isinstance(tag, str) and tag.startswith(prefix) and tag[len(prefix) :].isdigit():
                found[int(tag[len(prefix) :])] = response
        if len(found) >= count:
            break
    return [found[i] for i in range(count)]


def main(argv: list[str] | None = None) -> None:
    """Create or update the dispatcher's account (``scripts/broker-init accounts`` runs this).

    The admin and the dispatcher come from the arguments or, without them, from the settings
    (``SENSORTASKS_BROKER_ADMIN_URL`` and ``SENSORTASKS_MQTT_URL``), which keeps passwords off
    the command line.
    """
    from sensortasks.config import Settings, parse_mqtt_url  # noqa: PLC0415

    parser = argparse.ArgumentParser(
        prog="python -m sensortasks.broker_admin",
        description="Create or update the dispatcher's broker account through the dynamic-security admin.",
    )
    parser.add_argument("admin_url", nargs="?", help="mqtt://admin:PASSWORD@HOST:PORT (SENSORTASKS_BROKER_ADMIN_URL)")
    parser.add_argument("username", nargs="?", help="the dispatcher's username (from SENSORTASKS_MQTT_URL)")
    parser.add_argument("password", nargs="?", help="the dispatcher's password (from SENSORTASKS_MQTT_URL)")
    parser.add_argument("--wait", type=float, default=0, metavar="S", help="wait up to S seconds for the broker")
    args = parser.parse_args(argv)
    settings = Settings()
    admin_url = args.admin_url or settings.broker_admin_url
    dispatcher = settings.mqtt
    username, password = args.username or dispatcher.username, args.password or dispatcher.password
    if admin_url is None or not username or not password:
        parser.error("give ADMIN_URL USERNAME PASSWORD, or set SENSORTASKS_BROKER_ADMIN_URL and SENSORTASKS_MQTT_URL")
    admin = parse_mqtt_url(admin_url)
    tls = ssl.create_default_context(cafile=settings.mqtt_ca_file) if admin.tls else None
    dynsec = DynsecAdmin(admin.host, admin.port, admin.username or "", admin.password or "", tls_context=tls)
    try:
        _wait_for(admin.host, admin.port, args.wait)
        asyncio.run(dynsec.add_dispatcher(username, password))
    except (BrokerAdminError, OSError) as exc:
        sys.exit(f"error: {exc}")


def _wait_for(host: str, port: int, timeout_s: float) -> None:
    """Return once the broker accepts TCP connections; raise OSError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection((host, port), timeout=1).close()
        except OSError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.1)
        else:
            return


if __name__ == "__main__":
    main()
