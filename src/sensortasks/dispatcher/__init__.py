"""The asyncio dispatcher service and its MQTT link."""

from sensortasks.dispatcher.link import MqttLink
from sensortasks.dispatcher.service import Counters, Dispatcher

__all__ = ["Counters", "Dispatcher", "MqttLink"]
