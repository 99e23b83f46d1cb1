"""Sensor SDK and fleet simulator (protocol v1, device side).

Imports nothing from sensortasks but the protocol and the shared MQTT helper (sensortasks.mqtt),
so a device-side install stays small.
"""

from sensortasks.sensor.client import SensorClient, SensorOptions
from sensortasks.sensor.job import Handler, Job, TaskFailed
from sensortasks.sensor.ledger import Decision, Ledger, Verdict
from sensortasks.sensor.simulator import FleetStats, SilentSensor, SimulationConfig, run_fleet

__all__ = [
    "Decision",
    "FleetStats",
    "Handler",
    "Job",
    "Ledger",
    "SensorClient",
    "SensorOptions",
    "SilentSensor",
    "SimulationConfig",
    "TaskFailed",
    "Verdict",
    "run_fleet",
]
