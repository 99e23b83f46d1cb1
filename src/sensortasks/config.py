"""Settings from the environment (prefix ``SENSORTASKS_``) and an optional ``.env`` file."""

from __future__ import annotations

import socket
from functools import lru_cache
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from sensortasks.mqtt import MqttTarget, parse_mqtt_url
from sensortasks.protocol.topics import Topics

#: Default session expiry of a dispatcher alone: statuses wait a week for it to come back.
ALONE_SESSION_EXPIRY_S = 7 * 24 * 3600
#: Default session expiry in a share group: what a dead member's session can hold is re-sent
#: by the others once it has expired, so this is a bound on stranding, not on durability.
SHARED_SESSION_EXPIRY_S = 30


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SENSORTASKS_", env_file=".env", extra="ignore", frozen=True)

    mqtt_url: str = "mqtt://127.0.0.1:1883"
    #: Mosquitto dynamic-security admin account (``mqtt://admin:pass@host:port``): when set,
    #: registering a sensor issues its broker credentials. Unset: sensors get none.
    broker_admin_url: str | None = None
    #: CA bundle for ``mqtts://`` (default: the system's trust store).
    mqtt_ca_file: str | None = None
    database_url: str = "sqlite+aiosqlite:///./sensortasks.db"
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8080, ge=1, le=65535)
    ack_timeout_s: float = Field(default=30.0, gt=0)
    max_attempts: int = Field(default=3, ge=1, le=10)
    default_timeout_s: int = Field(default=3600, ge=10, le=86400)
    retry_backoff_s: float = Field(default=5.0, ge=0)
    retry_backoff_max_s: float = Field(default=300.0, ge=0)
    auth: Literal["required", "disabled"] = "required"
    #: Name of this dispatcher instance (client id suffix and ``ops/dispatchers/{instance}``).
    instance: str = Field(default_factory=socket.gethostname, min_length=1, max_length=64)
    #: MQTT 5 session expiry: how long the broker keeps our subscriptions and queued
    #: statuses while the dispatcher is down. Unset: a week alone, `SHARED_SESSION_EXPIRY_S`
    #: in a share group, where it bounds how long a dead member can hold its share
    #: (docs/scaling.md).
    session_expiry_s: int | None = Field(default=None, ge=1, le=7 * 24 * 3600)
    #: Set when several dispatcher instances share the work: statuses and commands are
    #: then read through the MQTT 5 shared subscription ``$share/<group>/...``.
    mqtt_share_group: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]{1,64}$")
    #: An instance not heard from (through the database) for this long is gone: the leader
    #: takes over its duties and re-sends the in-flight work whose statuses it may hold.
    instance_timeout_s: float = Field(default=10.0, ge=0.5, le=3600)
    stats_interval_s: float = Field(default=5.0, gt=0)
    topic_sensors: str = "sensors"
    topic_ops: str = "ops"
    topic_commands: str = "tasks/commands"
    topic_replies: str = "replies"

    @field_validator("mqtt_url", "broker_admin_url")
    @classmethod
    def _check_mqtt_url(cls, value: str | None) -> str | None:
        if value is not None:
            parse_mqtt_url(value)
        return value

    @field_validator("database_url")
    @classmethod
    def _normalise_database_url(cls, value: str) -> str:
        """Accept the driverless spellings users paste and pick the async driver."""
        for plain, driver in (
            ("sqlite://", "sqlite+aiosqlite://"),
            ("postgresql://", "postgresql+asyncpg://"),
            ("postgres://", "postgresql+asyncpg://"),
        ):
            if value.startswith(plain):
                return driver + value[len(plain) :]
        return value

    @field_validator("instance")
    @classmethod
    def _check_instance(cls, value: str) -> str:
        if any(c in value for c in "/+#") or not value.isprintable():
            raise ValueError("instance must not contain '/', '+', '#' or control characters")
        return value

    @property
    def session_expiry(self) -> int:
        """The session expiry the dispatcher connects with (see `session_expiry_s`)."""
        if self.session_expiry_s is not None:
            return self.session_expiry_s
        return SHARED_SESSION_EXPIRY_S if self.mqtt_share_group else ALONE_SESSION_EXPIRY_S

    @property
    def mqtt(self) -> MqttTarget:
        return parse_mqtt_url(self.mqtt_url)

    @property
    def topics(self) -> Topics:
        return Topics(
            sensors=self.topic_sensors, ops=self.topic_ops, commands=self.topic_commands, replies=self.topic_replies
        )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
