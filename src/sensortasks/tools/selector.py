"""Many paho clients driven by one thread (`SelectorLoop`), and what the bench does with such
clients between runs (`end_sessions`, `clear_retained`): the raw flows' fleet, the bench's
clean-up and the tests' large fleets all use it."""

from __future__ import annotations

import selectors
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from sensortasks.mqtt.packets import BufferedClient

START_TIMEOUT_S = 60.0
#: Clients connecting at once (the broker's listen backlog is finite).
CONNECT_BATCH = 50
#: How often each client of a `SelectorLoop` gets its keep-alive turn.
MISC_INTERVAL_S = 1.0


def paho_client(identifier: str, userdata: Any = None) -> BufferedClient:  # noqa: ANN401
    """An MQTT 5 paho client reading as the product's does (`BufferedClient`); connected with
    ``clean_start=True`` and no session expiry, its session ends with its connection."""
    return BufferedClient(CallbackAPIVersion.VERSION2, client_id=identifier, userdata=userdata, protocol=paho.MQTTv5)


def no_delay(_client: paho.Client, _userdata: Any, sock: Any) -> None:  # noqa: ANN401
    """Send each packet at once (TCP_NODELAY), as the broker does with ``set_tcp_nodelay``:
    paho leaves Nagle's algorithm on, which holds a client's second status until the first is
    acknowledged by TCP."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class SelectorLoop:
    """Many paho clients driven by the calling thread: one selector over all their sockets.

    paho tells us when a client has something to send (its socket "register write" callback);
    those clients write once the selector round is handled, in one pass, and only a client
    whose socket is full waits for the selector to say it is writable again.
    """

    def __init__(self) -> None:
        self.clients: list[paho.Client] = []
        self._selector = selectors.DefaultSelector()
        self._pending: set[paho.Client] = set()
        self._blocked: set[paho.Client] = set()
        self._next_misc = time.monotonic() + MISC_INTERVAL_S

    def add(self, client: paho.Client, host: str, port: int) -> None:
        """Connect `client` (the TCP connection now, the MQTT handshake in `run_until`)."""
        client.on_socket_open = self._opened
        client.on_socket_close = self._closed
        client.on_socket_register_write = lambda c, _u, _sock: self._pending.add(c)
        client.on_socket_unregister_write = self._written
        client.connect(host, port, clean_start=True)
        self.clients.append(client)

    def connect(self, clients: Sequence[paho.Client], host: str, port: int, settled: Callable[[], int]) -> None:
        """Connect `clients` `CONNECT_BATCH` at a time, the next batch once `settled()` counts
        every client so far."""
        for first in range(0, len(clients), CONNECT_BATCH):
            batch = clients[first : first + CONNECT_BATCH]
            for client in batch:
                self.add(client, host, port)
            wanted = first + len(batch)
            self.run_until(lambda wanted=wanted: settled() >= wanted, START_TIMEOUT_S)  # type: ignore[misc]

    def run_until(self, done: Callable[[], bool], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not done():
            now = time.monotonic()
            if now > deadline:
                raise TimeoutError(f"MQTT clients did not settle within {timeout_s:.0f} s")
            self.run_once(min(deadline - now, MISC_INTERVAL_S))

    def run_once(self, wait_s: float) -> None:
        """One round: wait up to `wait_s` for the sockets (not at all while a client has
        something to write), handle them, write, and give every client its keep-alive turn
        when that is due."""
        for key, events in self._selector.select(0 if self._pending else max(0.0, wait_s)):
            client: paho.Client = key.data
            if events & selectors.EVENT_READ:
                client.loop_read()
            if events & selectors.EVENT_WRITE:
                client.loop_write()
        self._write_pending()
        now = time.monotonic()
        if now >= self._next_misc:
            for client in self.clients:
                client.loop_misc()
            self._next_misc = now + MISC_INTERVAL_S

    def close(self) -> None:
        """Release the selector (its clients' sockets are theirs to close)."""
        self._selector.close()

    def _write_pending(self) -> None:
        pending, self._pending = self._pending, set()
        for client in pending:
            client.loop_write()
            sock = client.socket()
            if client.want_write() and sock is not None and client not in self._blocked:
                self._blocked.add(client)
                self._selector.modify(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, client)

    def _opened(self, client: paho.Client, _userdata: Any, sock: Any) -> None:  # noqa: ANN401
        no_delay(client, _userdata, sock)
        self._selector.register(sock, selectors.EVENT_READ, client)

    def _written(self, client: paho.Client, _userdata: Any, sock: Any) -> None:  # noqa: ANN401
        self._pending.discard(client)
        if client in self._blocked:
            self._blocked.discard(client)
            self._selector.modify(sock, selectors.EVENT_READ, client)

    def _closed(self, client: paho.Client, _userdata: Any, sock: Any) -> None:  # noqa: ANN401
        self._pending.discard(client)
        self._blocked.discard(client)
        self._selector.unregister(sock)


def end_sessions(host: str, port: int, identifiers: Sequence[str]) -> None:
    """Remove whatever session the broker keeps for `identifiers` (their subscriptions and
    queued messages): connect as each with a clean start and no session expiry, and leave."""
    loop, ended = SelectorLoop(), [0]

    def on_disconnect(*_: Any) -> None:  # noqa: ANN401
        ended[0] += 1

    clients = [paho_client(identifier) for identifier in identifiers]
    for client in clients:
        client.on_connect = lambda c, *_: c.disconnect()
        client.on_disconnect = on_disconnect
    loop.connect(clients, host, port, lambda: ended[0])
    loop.close()


def clear_retained(host: str, port: int, topics: Sequence[str]) -> None:
    """Delete the retained messages of `topics` (an empty retained message each, acknowledged)."""
    loop, acked = SelectorLoop(), [0]
    client = paho_client(f"bench-clear-{uuid.uuid4().hex[:8]}")

    def on_connect(*_: Any) -> None:  # noqa: ANN401
        for topic in topics:
            client.publish(topic, b"", qos=1, retain=True)

    client.on_connect = on_connect
    client.on_publish = lambda *_: acked.__setitem__(0, acked[0] + 1)
    loop.add(client, host, port)
    loop.run_until(lambda: acked[0] == len(topics), START_TIMEOUT_S)
    client.disconnect()
    loop.run_until(lambda: client.socket() is None, START_TIMEOUT_S)
    loop.close()
