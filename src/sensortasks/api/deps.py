"""Request dependencies as ``Annotated`` aliases; shared objects live on ``app.state``.

Authentication failures are budgeted per client address (`sensortasks.service.ratelimit`): past the
budget a client gets 429 with ``Retry-After`` and its key is not even looked at. The address is
the TCP peer as uvicorn reports it. Behind a reverse proxy that is the proxy's address, so all
clients would share one budget (and one attacker could lock everyone out): let uvicorn take the
client from ``X-Forwarded-For`` by listing the proxy in ``FORWARDED_ALLOW_IPS`` (uvicorn trusts
127.0.0.1 and ::1 by default), and have the proxy overwrite, not append to, that header.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from sensortasks.api.errors import ApiError, route_of
from sensortasks.config import Settings
from sensortasks.dispatcher import Dispatcher
from sensortasks.ops.metrics import Metrics
from sensortasks.service.glance import GlanceService
from sensortasks.service.ratelimit import FailureLimiter
from sensortasks.service.tasks import TaskService
from sensortasks.store import TaskStore
from sensortasks.store.keys import KEY_PREFIX, Principal

log = logging.getLogger(__name__)
#: What the log may show of a presented key: its first 8 characters (``stk_`` and 4 random
#: ones, 24 bits), enough to tell which of a customer's keys a client uses, never to use it.
LOGGED_KEY_CHARS = 8
_NOT_KEY_CHARS = re.compile(r"[^A-Za-z0-9_-]")
_bearer = HTTPBearer(auto_error=False, description="An API key from `sensortasks keys create CUSTOMER`.")


@dataclass
class AppState:
    settings: Settings
    service: TaskService
    metrics: Metrics
    #: Failed authentications per client address, in this process only (each instance has its own).
    auth_failures: FailureLimiter = field(default_factory=FailureLimiter)

    @property
    def store(self) -> TaskStore:
        return self.service.store

    @property
    def dispatcher(self) -> Dispatcher | None:
        return self.service.dispatcher


def _state(request: Request) -> AppState:
    state: AppState = request.app.state.sensortasks
    return state


State = Annotated[AppState, Depends(_state)]


def _glance(request: Request) -> GlanceService:
    glance: GlanceService = request.app.state.glance
    return glance


Glance = Annotated[GlanceService, Depends(_glance)]


def _shown(key: str) -> str:
    """What the log shows of a failed key: the first characters of one of ours, nothing of anything
    else (the first characters of a short secret pasted by mistake could be most of it)."""
    if not key.startswith(KEY_PREFIX):
        return ""
    return f" (key {_NOT_KEY_CHARS.sub('?', key[:LOGGED_KEY_CHARS])}...)"


def client_address(request: Request) -> str:
    """The client's address (the proxy's behind a reverse proxy, unless uvicorn is told to trust it)."""
    return request.client.host if request.client else "unknown"


def budget_of(address: str) -> str:
    """Whose failure budget `address` spends: its own, or for IPv6 its /64 (one host usually holds
    a whole /64, and would otherwise get a fresh budget from each of its addresses)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return address


async def _principal(
    request: Request,
    state: State,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal | None:
    """The calling customer; None when authentication is disabled (single tenant)."""
    if state.settings.auth == "disabled":
        return None
    address = client_address(request)
    budget = budget_of(address)
    limiter = state.auth_failures
    wait = limiter.retry_after(budget)
    if wait is not None:
        raise ApiError(
            429,
            f"too many failed authentications from {address}; retry in {wait} s",
            details={"retry_after_s": wait},
            headers={"Retry-After": str(wait)},
        )
    if credentials is None:
        reason = "not a Bearer credential" if "authorization" in request.headers else "missing API key"
        shown = ""
    else:
        check = await state.service.keys.check(credentials.credentials)
        if check.principal is not None:
            return check.principal
        reason = check.reason
        shown = _shown(credentials.credentials)
    limiter.failed(budget)
    log.warning("authentication failed from %s on %s: %s%s", address, route_of(request), reason, shown)
    if (wait := limiter.retry_after(budget)) is not None:
        log.warning(
            "client %s refused for %d s: %d failed authentications within %.0f s",
            budget, wait, limiter.max_failures, limiter.window_s,
        )  # fmt: skip
    if credentials is None:
        raise ApiError(401, "missing API key: send 'Authorization: Bearer <key>'")
    raise ApiError(401, "invalid or revoked API key")


def _customer_id(principal: Annotated[Principal | None, Depends(_principal)]) -> int | None:
    return None if principal is None else principal.customer_id


CustomerId = Annotated[int | None, Depends(_customer_id)]
