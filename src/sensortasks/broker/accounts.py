"""What each kind of broker account is: its username, the client id it is bound to, its role and ACLs.

Every account is bound to one MQTT client identifier equal to its username, so the broker
refuses it under any other identifier: nobody can take over another client's session or
kick it off. Mosquitto 2.0's dynamic security has no ``%u``/``%c`` ACL patterns, so a
sensor or backend gets a role of its own naming its own topics; dispatchers and operators
share one role per kind. Every topic comes from `Topics`, so custom prefixes keep working.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import Literal

from sensortasks.protocol.topics import Topics

AccountKind = Literal["sensor", "dispatcher", "backend", "ops"]
#: Roles shared by every account of their kind (they name no per-account topic).
DISPATCHER_ROLE = "sensortasks-dispatcher"
OPS_ROLE = "sensortasks-ops"
#: Operator names and dispatcher instances become client ids: keep them topic- and log-safe.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,48}$")
BACKEND_ID_BYTES = 5  # 10 hex digits

SUBSCRIBE = "subscribePattern"
PUBLISH = "publishClientSend"


@dataclass(frozen=True, slots=True)
class AccountSpec:
    """One broker account as dynamic security should hold it (the password aside)."""

    kind: AccountKind
    username: str
    rolename: str
    acls: tuple[tuple[str, str], ...]

    @property
    def client_id(self) -> str:
        return self.username

    @property
    def own_role(self) -> bool:
        """Whether the role is this account's alone (and is deleted with it)."""
        return self.rolename == self.username


@dataclass(frozen=True, slots=True)
class MqttCredentials:
    """What a client needs to connect: shown once, the broker keeps only a hash."""

    username: str
    password: str
    client_id: str


def new_password() -> str:
    return secrets.token_urlsafe(24)


def checked_name(name: str, what: str) -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise ValueError(f"{what} must be 1 to 48 of A-Z a-z 0-9 _ . -, got {name!r}")
    return name


def sensor_username(serial: int) -> str:
    return f"sensor-{serial}"


def dispatcher_username(instance: str) -> str:
    """The client id the dispatcher instance connects with (`Dispatcher` uses the same)."""
    return f"sensortasks-{instance}"


def sensor_account(topics: Topics, serial: int) -> AccountSpec:
    """Read its own task topic; write its own status and presence."""
    acls = ((SUBSCRIBE, topics.tasks(serial)), (PUBLISH, topics.status(serial)), (PUBLISH, topics.presence(serial)))
    username = sensor_username(serial)
    return AccountSpec("sensor", username, username, acls)


def dispatcher_account(topics: Topics, instance: str) -> AccountSpec:
    """Read statuses, presence and commands (directly or through a shared subscription);
    write task messages, ``ops/...`` and command replies (under the replies prefix), and
    statuses: only to clear a retained status a sensor left (an empty retained message)."""
    inputs = (topics.all_status, topics.all_presence, topics.all_commands)
    acls = (
        *((SUBSCRIBE, topic) for topic in inputs),
        *((SUBSCRIBE, f"$share/+/{topic}") for topic in inputs),
        (PUBLISH, topics.all_tasks),
        (PUBLISH, topics.all_status),
        (PUBLISH, topics.ops_all),
        (PUBLISH, topics.all_replies),
    )
    return AccountSpec("dispatcher", dispatcher_username(checked_name(instance, "instance")), DISPATCHER_ROLE, acls)


def backend_account(topics: Topics, username: str | None = None) -> AccountSpec:
    """Publish commands; read only replies under its own prefix (`reply_topic_prefix`)."""
    username = username or f"backend-{secrets.token_hex(BACKEND_ID_BYTES)}"
    acls = ((PUBLISH, topics.all_commands), (SUBSCRIBE, f"{topics.reply_prefix(username)}/#"))
    return AccountSpec("backend", username, username, acls)


def ops_account(topics: Topics, name: str | None = None) -> AccountSpec:
    """Read ``ops/#``, nothing else: what `sensortasks watch` needs."""
    username = f"ops-{checked_name(name, 'name') if name else secrets.token_hex(BACKEND_ID_BYTES)}"
    return AccountSpec("ops", username, OPS_ROLE, ((SUBSCRIBE, topics.ops_all),))


def account_of(topics: Topics, kind: AccountKind, username: str) -> AccountSpec:
    """The spec of an existing account, from its kind and username (for removal)."""
    if kind == "sensor":
        return sensor_account(topics, int(username.removeprefix("sensor-")))
    if kind == "dispatcher":
        return dispatcher_account(topics, username.removeprefix("sensortasks-"))
    if kind == "backend":
        return backend_account(topics, username)
    return AccountSpec("ops", username, OPS_ROLE, ((SUBSCRIBE, topics.ops_all),))
