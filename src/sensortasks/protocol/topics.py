"""Every MQTT topic of protocol v1: builders, parsers and wildcards.

The prefixes are configurable so that several deployments can share one broker;
the defaults are the ones in SPEC section 4.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

SensorChannel = Literal["tasks", "status", "presence"]
_CHANNELS: frozenset[str] = frozenset(("tasks", "status", "presence"))
COMMAND_NAMES: tuple[str, ...] = ("create", "cancel", "get")
#: Serials fit a signed 64-bit column, like the API's (the seeds use 14-15 digits).
#: The largest task id and sensor serial (a signed 64-bit column): the one definition.
MAX_ID = 2**63 - 1
MAX_SERIAL_DIGITS = len(str(MAX_ID))


@dataclass(frozen=True, slots=True)
class SensorTopic:
    """A parsed `sensors/{serial}/{channel}` topic."""

    serial: int
    channel: SensorChannel


@dataclass(frozen=True, slots=True)
class OpsTopic:
    """A parsed ``ops/...`` topic: what it carries, and the dispatcher instance it names."""

    kind: Literal["stats", "event", "rejected", "dispatcher", "rollout"]
    instance: str | None = None


@dataclass(frozen=True, slots=True)
class Topics:
    """Topic names under configurable prefixes."""

    sensors: str = "sensors"
    ops: str = "ops"
    commands: str = "tasks/commands"
    #: Where command replies may go: each backend account reads only ``{replies}/{client_id}/#``.
    replies: str = "replies"

    # -- sensor channels -------------------------------------------------
    def tasks(self, serial: int) -> str:
        return f"{self.sensors}/{serial}/tasks"

    def status(self, serial: int) -> str:
        return f"{self.sensors}/{serial}/status"

    def presence(self, serial: int) -> str:
        return f"{self.sensors}/{serial}/presence"

    @property
    def all_tasks(self) -> str:
        return f"{self.sensors}/+/tasks"

    @property
    def all_status(self) -> str:
        return f"{self.sensors}/+/status"

    @property
    def all_presence(self) -> str:
        return f"{self.sensors}/+/presence"

    def parse_sensor(self, topic: str) -> SensorTopic | None:
        """Return the serial and channel of a sensor topic, or None if it is not one."""
        prefix = self.sensors + "/"
        if not topic.startswith(prefix):
            return None
        parts = topic[len(prefix) :].split("/")
        if len(parts) != 2 or parts[1] not in _CHANNELS:  # noqa: PLR2004
            return None
        serial_text, channel = parts
        if not serial_text.isascii() or not serial_text.isdigit() or len(serial_text) > MAX_SERIAL_DIGITS:
            return None
        serial = int(serial_text)
        if not 0 < serial <= MAX_ID or str(serial) != serial_text:
            return None
        return SensorTopic(serial, channel)  # type: ignore[arg-type]

    # -- backend commands ------------------------------------------------
    def command(self, name: str) -> str:
        return f"{self.commands}/{name}"

    @property
    def all_commands(self) -> str:
        return f"{self.commands}/+"

    def parse_command(self, topic: str) -> str | None:
        prefix = self.commands + "/"
        name = topic[len(prefix) :] if topic.startswith(prefix) else None
        return name if name in COMMAND_NAMES else None

    # -- command replies -------------------------------------------------
    def reply_prefix(self, client_id: str) -> str:
        """A backend account's ``reply_topic_prefix``: its replies go under it, and only it reads them."""
        return f"{self.replies}/{client_id}"

    @property
    def all_replies(self) -> str:
        return f"{self.replies}/#"

    # -- operations ------------------------------------------------------
    def ops_event(self, serial: int, task_id: int) -> str:
        return f"{self.ops}/events/{serial}/{task_id}"

    @property
    def all_ops_events(self) -> str:
        return f"{self.ops}/events/+/+"

    @property
    def ops_stats(self) -> str:
        return f"{self.ops}/stats"

    def ops_dispatcher(self, instance: str) -> str:
        return f"{self.ops}/dispatchers/{instance}"

    @property
    def ops_rejected(self) -> str:
        return f"{self.ops}/rejected"

    def ops_rollout(self, rollout_id: int) -> str:
        return f"{self.ops}/rollouts/{rollout_id}"

    @property
    def ops_all(self) -> str:
        return f"{self.ops}/#"

    def parse_ops(self, topic: str) -> OpsTopic | None:
        """Which ``ops/...`` topic `topic` is, or None if it is none of ours."""
        prefix = self.ops + "/"
        if not topic.startswith(prefix):
            return None
        match topic[len(prefix) :].split("/"):
            case ["stats"]:
                return OpsTopic("stats")
            case ["rejected"]:
                return OpsTopic("rejected")
            case ["events", _, _]:
                return OpsTopic("event")
            case ["dispatchers", instance]:
                return OpsTopic("dispatcher", instance)
            case ["rollouts", _]:
                return OpsTopic("rollout")
        return None
