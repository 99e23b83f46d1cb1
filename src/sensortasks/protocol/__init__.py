"""The MQTT wire contract (protocol v1), shared by the dispatcher and the sensor SDK.

Nothing here imports the rest of sensortasks, so a device-side install stays small.
"""

from sensortasks.protocol.commands import CommandError, CommandReply
from sensortasks.protocol.messages import (
    MAX_PAYLOAD_BYTES,
    PROTOCOL_VERSION,
    CancelMessage,
    DispatcherPresence,
    OpsEvent,
    OpsStats,
    Presence,
    Rejection,
    RolloutProgress,
    SensorCommand,
    StatusReport,
    TaskMessage,
    parse_sensor_command,
)
from sensortasks.protocol.topics import SensorTopic, Topics

__all__ = [
    "MAX_PAYLOAD_BYTES",
    "PROTOCOL_VERSION",
    "CancelMessage",
    "CommandError",
    "CommandReply",
    "DispatcherPresence",
    "OpsEvent",
    "OpsStats",
    "Presence",
    "Rejection",
    "RolloutProgress",
    "SensorCommand",
    "SensorTopic",
    "StatusReport",
    "TaskMessage",
    "Topics",
    "parse_sensor_command",
]
