"""Settings from the environment (prefix ``SENSORTASKS_``) and an optional ``.env`` file."""

from __future__ import annotations

import socket
from functools import lru_cache
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from sensortasks.mqtt import MqttTarget, parse_mqtt_url
from sensortasks.protocol.topics import Topics


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
    #: statuses while the dispatcher is down.
    session_expiry_s: int = Field(default=7 * 24 * 3600, ge=60)
    #: Set when several dispatcher instances share the work: statuses and presence are
    #: then read through the MQTT 5 shared subscription ``$share/<group>/...``.
    mqtt_share_group: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]{1,64}$")
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
