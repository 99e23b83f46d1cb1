"""Sensor SDK and fleet simulator (protocol v1, device side).

Imports nothing from sensortasks but the protocol, so a device-side install stays small.
"""

from sensortasks.sensor.client import Handler, Job, SensorClient, TaskFailed
from sensortasks.sensor.simulator import FleetStats, SimulationConfig, run_fleet

__all__ = [
    "FleetStats",
    "Handler",
    "Job",
    "SensorClient",
    "SimulationConfig",
    "TaskFailed",
    "run_fleet",
]
