"""Per-sensor broker accounts through Mosquitto's dynamic-security plugin.

Commands go to ``$CONTROL/dynamic-security/v1`` as ``{"commands": [...]}`` and the plugin
answers on ``$CONTROL/dynamic-security/v1/response`` with one ``{"responses": [...]}`` per
request, in order. Mosquitto 2.0's dynamic security has no ``%u``/``%c`` ACL patterns, so
every sensor gets its own role naming its own topics. Changes apply at once: no restart,
and a deleted client is disconnected by the broker.

Each call opens its own short MQTT 5 connection as the admin: registration is rare, and
a per-call connection needs no reconnect logic.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import ssl
import uuid
from dataclasses import dataclass
from typing import Any

import aiomqtt

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = CONTROL_TOPIC + "/response"
TIMEOUT_S = 10.0
DISPATCHER_ROLE = "sensortasks-dispatcher"
#: Not an error when (re-)creating what already exists.
ALREADY_EXISTS = ("already exists",)


class BrokerAdminError(Exception):
    """The broker refused a dynamic-security command (or did not answer in time)."""


@dataclass(frozen=True, slots=True)
class MqttCredentials:
    username: str
    password: str


def sensor_username(serial: int) -> str:
    return f"sensor-{serial}"


class DynsecAdmin:
    def __init__(
        self,
        host: str,
        port: int,
        username: str,
        password: str,
        *,
        tls_context: ssl.SSLContext | None = None,
        sensors_prefix: str = "sensors",
    ) -> None:
        self.host = host
        self.port = port
        self.username = username
        self.password = password
        self.tls_context = tls_context
        self.sensors_prefix = sensors_prefix

    async def execute(self, commands: list[dict[str, Any]], *, tolerate: tuple[str, ...] = ()) -> list[dict[str, Any]]:
        """Send commands in one request; raise on any error whose text is not in `tolerate`."""
        async with aiomqtt.Client(
            self.host,
            self.port,
            username=self.username,
            password=self.password,
            identifier=f"sensortasks-admin-{uuid.uuid4().hex[:8]}",
            protocol=aiomqtt.ProtocolVersion.V5,
            tls_context=self.tls_context,
        ) as client:
            await client.subscribe(RESPONSE_TOPIC, qos=1)
            await client.publish(CONTROL_TOPIC, json.dumps({"commands": commands}), qos=1)
            try:
                async with asyncio.timeout(TIMEOUT_S):
                    async for message in client.messages:
                        payload = message.payload if isinstance(message.payload, bytes) else b"{}"
                        responses: list[dict[str, Any]] = json.loads(payload).get("responses", [])
                        break
            except TimeoutError:
                raise BrokerAdminError(f"no answer from the dynamic-security plugin in {TIMEOUT_S} s") from None
        for response in responses:
            error = response.get("error")
            if error and not any(t in error.lower() for t in tolerate):
                raise BrokerAdminError(f"{response.get('command')}: {error}")
        return responses

    async def _ensure_account(self, username: str, password: str, rolename: str, acls: list[tuple[str, str]]) -> None:
        """Create the role (with its ACLs) and the client if missing, then set the password:
        idempotent, and re-running it rotates the password."""
        await self.execute(
            [
                {"command": "createRole", "rolename": rolename},
                *(
                    {"command": "addRoleACL", "rolename": rolename, "acltype": kind, "topic": topic, "allow": True}
                    for kind, topic in acls
                ),
                {
                    "command": "createClient",
                    "username": username,
                    "password": password,
                    "roles": [{"rolename": rolename}],
                },
            ],
            tolerate=ALREADY_EXISTS,
        )
        await self.execute([{"command": "setClientPassword", "username": username, "password": password}])

    async def add_sensor(self, serial: int) -> MqttCredentials:
        """Create (or re-key) the sensor's account and role; returns the new password."""
        username = sensor_username(serial)
        base = f"{self.sensors_prefix}/{serial}"
        acls = [
            ("subscribePattern", f"{base}/tasks"),
            ("publishClientSend", f"{base}/status"),
            ("publishClientSend", f"{base}/presence"),
        ]
        password = secrets.token_urlsafe(24)
        await self._ensure_account(username, password, username, acls)
        return MqttCredentials(username, password)

    async def add_dispatcher(self, username: str, password: str) -> None:
        """Create the dispatcher's account (idempotent): it reads statuses, presence, commands and
        ``ops/#``, and publishes anywhere, since MQTT 5 replies go to each requester's response topic."""
        acls = [
            ("subscribePattern", f"{self.sensors_prefix}/+/status"),
            ("subscribePattern", f"{self.sensors_prefix}/+/presence"),
            ("subscribePattern", "tasks/commands/+"),
            ("subscribePattern", "$share/+/#"),
            ("subscribePattern", "ops/#"),  # so operators can `sensortasks watch` with it
            ("publishClientSend", "#"),
        ]
        await self._ensure_account(username, password, DISPATCHER_ROLE, acls)

    async def remove_sensor(self, serial: int) -> None:
        """Delete the account (the broker disconnects it at once) and its role."""
        username = sensor_username(serial)
        await self.execute(
            [{"command": "deleteClient", "username": username}, {"command": "deleteRole", "rolename": username}],
            tolerate=("not found",),
        )


def main() -> None:
    """``python -m sensortasks.broker_admin URL USERNAME PASSWORD``: create the dispatcher's
    account with the admin at URL (used by ./scripts/run)."""
    import sys  # noqa: PLC0415

    from sensortasks.config import parse_mqtt_url  # noqa: PLC0415

    url, username, password = sys.argv[1:4]
    admin = parse_mqtt_url(url)
    asyncio.run(
        DynsecAdmin(admin.host, admin.port, admin.username or "", admin.password or "").add_dispatcher(
            username, password
        )
    )


if __name__ == "__main__":
    main()
