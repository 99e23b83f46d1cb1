"""The asyncio dispatcher service, its MQTT link and its clock."""

from sensortasks.dispatcher.clock import SYSTEM_CLOCK, Clock, SystemClock
from sensortasks.dispatcher.link import Link, dispatcher_link
from sensortasks.dispatcher.service import Dispatcher

__all__ = ["SYSTEM_CLOCK", "Clock", "Dispatcher", "Link", "SystemClock", "dispatcher_link"]
