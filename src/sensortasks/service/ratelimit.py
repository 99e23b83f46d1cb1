"""Slowing down repeated failed authentication, per client (an address, or a reply prefix over MQTT).

A pure, in-process sliding window: after `max_failures` failures within `window_s` seconds, a
client is refused (429 over HTTP, ``too_many_requests`` over MQTT) until its oldest failure in
the window has aged out. A success does not reset the count: a stolen key must not give an
attacker a fresh budget of guesses. Several API instances each keep their own window, so the
budget is per instance (docs/security.md).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable

#: Failed authentications allowed per client within the window.
MAX_FAILURES = 20
WINDOW_S = 60.0
#: Clients tracked at once; the least recently failing are forgotten first (bounded memory).
MAX_CLIENTS = 10_000


class FailureLimiter:
    def __init__(
        self,
        *,
        max_failures: int = MAX_FAILURES,
        window_s: float = WINDOW_S,
        max_clients: int = MAX_CLIENTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self.max_clients = max_clients
        self.clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, client: str, now: float) -> deque[float] | None:
        failures = self._failures.get(client)
        if failures is None:
            return None
        while failures and failures[0] <= now - self.window_s:
            failures.popleft()
        if not failures:
            del self._failures[client]
            return None
        return failures

    def retry_after(self, client: str) -> int | None:
        """Whole seconds until `client` may try again, or None if it may try now."""
        now = self.clock()
        failures = self._recent(client, now)
        if failures is None or len(failures) < self.max_failures:
            return None
        return max(1, math.ceil(failures[0] + self.window_s - now))

    def failed(self, client: str) -> None:
        now = self.clock()
        failures = self._recent(client, now)
        if failures is None:
            failures = self._failures[client] = deque()
        failures.append(now)
        self._failures.move_to_end(client)
        while len(self._failures) > self.max_clients:
            self._failures.popitem(last=False)
