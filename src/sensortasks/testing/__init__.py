"""Helpers for tests (and benchmarks): a throwaway Mosquitto broker, and fakes of the
dispatcher's three seams (store, link, clock) for tests that run in milliseconds.

Nothing in the service imports this package.
"""

from sensortasks.testing.broker import MosquittoBroker, free_port, mosquitto_binary
from sensortasks.testing.clock import FakeClock
from sensortasks.testing.link import FakeLink, Published
from sensortasks.testing.store import InMemoryStore

__all__ = ["FakeClock", "FakeLink", "InMemoryStore", "MosquittoBroker", "Published", "free_port", "mosquitto_binary"]
