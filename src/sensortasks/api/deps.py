"""Request dependencies as ``Annotated`` aliases; shared objects live on ``app.state``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from sensortasks.api.errors import ApiError
from sensortasks.api.service import TaskService
from sensortasks.config import Settings
from sensortasks.dispatcher import Dispatcher
from sensortasks.metrics import Metrics
from sensortasks.store import TaskStore
from sensortasks.store.keys import Principal

_bearer = HTTPBearer(auto_error=False, description="An API key from `sensortasks keys create CUSTOMER`.")


@dataclass
class AppState:
    settings: Settings
    service: TaskService
    metrics: Metrics

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


async def _principal(
    state: State,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal | None:
    """The calling customer; None when authentication is disabled (single tenant)."""
    if state.settings.auth == "disabled":
        return None
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise ApiError(401, "missing API key: send 'Authorization: Bearer <key>'")
    principal = await state.service.keys.authenticate(credentials.credentials)
    if principal is None:
        raise ApiError(401, "invalid API key")
    return principal


def _customer_id(principal: Annotated[Principal | None, Depends(_principal)]) -> int | None:
    return None if principal is None else principal.customer_id


CustomerId = Annotated[int | None, Depends(_customer_id)]
