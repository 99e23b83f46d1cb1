"""SDK sensors for tests: ones that keep every command they received, silent or not."""

from __future__ import annotations

from sensortasks.protocol import CancelMessage, TaskMessage
from sensortasks.sensor import Handler, SensorClient, SensorOptions
from sensortasks.sensor.simulator import SilentSensor


class RecordingSensor(SensorClient):
    """A `SensorClient` that keeps every valid command it received, in order, in `received`."""

    def __init__(self, serial: int, handler: Handler, options: SensorOptions | None = None) -> None:
        super().__init__(serial, handler, options)
        self.received: list[TaskMessage | CancelMessage] = []

    def _on_command(self, command: TaskMessage | CancelMessage) -> None:
        self.received.append(command)
        super()._on_command(command)


class SilentRecordingSensor(RecordingSensor, SilentSensor):
    """Records what it receives but never runs or reports a task (an unresponsive device)."""
