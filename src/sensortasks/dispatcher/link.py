"""The dispatcher's MQTT connection: what the dispatcher needs of it (`Link`) and the real one,
`paho_link.PahoLink`, built by `dispatcher_link`. What it does:

- MQTT 5 with a persistent session (``clean_start=False`` and a session expiry), so
  statuses published while the dispatcher is down are queued by the broker.
- Manual acknowledgement: incoming QoS 1 messages are acknowledged only after the
  service has committed what they say (`ack`). A crash before that makes the broker
  deliver them again; they are idempotent.
- No state of its own beyond the connection: after every (re)connect the service asks
  the database what to re-send (the `on_connect` given to `run`).
- Topics in ``retain_as_published`` are subscribed with MQTT 5's Retain As Published, so
  that a message a client published *retained* still says so when it reaches us live (by
  default the broker clears the flag on live delivery and sets it only when replaying
  stored retained messages on subscribe), and with Retain Handling 1: stored retained
  messages are replayed only when the subscription is new, not again at every reconnect of
  the persistent session (which has had the live copy queued already).
- A broker that is down is retried with back off (`Backoff`: doubling, jittered) for ever; one that refuses the login
  (bad credentials, not authorized) raises `BrokerRefused`: retrying cannot fix that.
- A broker behind a partition does not close the connection, it falls silent: only the MQTT
  keepalive finds that out (paho gives up one to two keepalives after the last packet in; the
  broker drops the connection 1.5 keepalives after the last packet it got, or later). So a
  dispatcher keeps alive at half its instance timeout (`keepalive_for`): it stops beating, and
  the others recover its share, about the timeout after a partition, not a minute or two later
  as with paho's default keepalive of 60 s. A connect that gets no CONNACK gives up after
  `PUBLISH_TIMEOUT_S`.
- Publishes are handed to paho in batches and their acknowledgements awaited once per batch,
  with the messages in flight bounded (`paho_link.WINDOW`); see paho_link.py.

The dispatcher depends only on the `Link` protocol; `dispatcher_link` builds the real
one, `sensortasks.testing.FakeLink` stands in for it in tests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Protocol

import aiomqtt

from sensortasks.config import Settings
from sensortasks.dispatcher.linktypes import (
    MAX_INFLIGHT,
    PUBLISH_TIMEOUT_S,
    RECONNECT_BACKOFF_MAX_S,
    RECONNECT_BACKOFF_S,
    Incoming,
    OnConnect,
    keepalive_for,
)
from sensortasks.dispatcher.paho_link import PahoLink
from sensortasks.protocol import DispatcherPresence

__all__ = [
    "MAX_INFLIGHT",
    "PUBLISH_TIMEOUT_S",
    "RECONNECT_BACKOFF_MAX_S",
    "RECONNECT_BACKOFF_S",
    "Incoming",
    "Link",
    "OnConnect",
    "PahoLink",
    "dispatcher_link",
    "keepalive_for",
]


class Link(Protocol):
    """What the dispatcher needs of its broker connection."""

    @property
    def messages(self) -> asyncio.Queue[Incoming]:
        """Received messages in arrival order; each is acknowledged with `ack` once handled."""
        ...

    @property
    def connected(self) -> asyncio.Event:
        """Set while connected."""
        ...

    @property
    def connects(self) -> int:
        """Successful connections so far."""
        ...

    async def run(self, on_connect: OnConnect | None = None) -> None:
        """Stay connected until cancelled; await `on_connect` after every (re)connect."""
        ...

    def pause(self, reason: str) -> None:
        """Leave the broker (the session stays, for its expiry) and stay away until `resume`."""
        ...

    def resume(self) -> None: ...

    def ack(self, messages: Sequence[Incoming]) -> None: ...

    async def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        correlation_data: bytes | None = None,
        expiry_s: int | None = None,
    ) -> None:
        """Publish and wait for the broker's acknowledgement; `Unavailable` when disconnected."""
        ...

    async def publish_many(self, messages: Sequence[tuple[str, bytes]], *, limit: int = 500) -> int:
        """Publish in order; returns how many the broker acknowledged."""
        ...


def dispatcher_link(settings: Settings) -> PahoLink:
    """A dispatcher instance's link: its own client id, the subscriptions, an offline will.

    Statuses and commands go through the share group (each to one instance). Presence does
    not: a shared subscription gets no retained messages (MQTT 5, 4.8.2), so an instance would
    never learn of sensors that came online before it subscribed; every instance records it,
    and only the leader re-sends on a reconnect."""
    topics = settings.topics
    share = f"$share/{settings.mqtt_share_group}/" if settings.mqtt_share_group else ""
    offline = DispatcherPresence(instance=settings.instance, online=False).to_json()
    return PahoLink(
        settings.mqtt,
        identifier=f"sensortasks-{settings.instance}",
        subscriptions=[share + topics.all_status, topics.all_presence, share + topics.all_commands],
        will=aiomqtt.Will(topics.ops_dispatcher(settings.instance), offline, qos=1, retain=True),
        session_expiry_s=settings.session_expiry,
        ca_file=settings.mqtt_ca_file,
        retain_as_published=[share + topics.all_status],
        keepalive_s=keepalive_for(settings.instance_timeout_s),
    )
