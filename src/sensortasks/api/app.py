"""The FastAPI application factory."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI

from sensortasks.api import errors
from sensortasks.api.deps import AppState
from sensortasks.api.limits import BodyLimit
from sensortasks.api.openapi import METADATA, DocumentedAPI, install_docs
from sensortasks.api.routes import glance, health, mqtt_clients, rollouts, sensors, tasks
from sensortasks.api.routes.console import install_console
from sensortasks.dispatcher import Dispatcher
from sensortasks.ops.metrics import HttpMetrics, Metrics
from sensortasks.service.glance import GlanceService
from sensortasks.service.rollouts import RolloutService
from sensortasks.service.tasks import TaskService

DESCRIPTION = """Create, follow and cancel firmware and configuration tasks for sensors.

Authenticate with `Authorization: Bearer <key>` (`sensortasks keys create CUSTOMER`).
Timestamps are UTC in the seed's format `YYYY-MM-DD HH:MM:SS`.
Every error is `{"error": {"code", "message", "details"}}`, `code` one of `ErrorCode`.
Task statuses: 1 Pending, 2 Completed, 3 Error, 4 Ongoing, 5 Cancelled."""


def rollout_wake(dispatcher: Dispatcher | None) -> Callable[[], None] | None:
    """What a rollout's change wakes in the in-process dispatcher: its pacing and its outbox."""
    return None if dispatcher is None else dispatcher.notify_rollouts


def create_app(service: TaskService) -> FastAPI:
    """HTTP over the application layer (`sensortasks.runtime.build_service` builds it, wired
    to the process's dispatcher, if any); whoever built it owns and closes what it holds."""
    app = DocumentedAPI(title="sensortasks", version="1", description=DESCRIPTION, **METADATA)
    dispatcher = service.dispatcher
    metrics = dispatcher.metrics if dispatcher else Metrics()
    app.state.sensortasks = AppState(service.settings, service, metrics)
    app.state.rollouts = RolloutService(service.settings, service.store, rollout_wake(dispatcher))
    app.state.glance = GlanceService(service.store)
    errors.install(app)
    app.add_middleware(BodyLimit)
    app.add_middleware(HttpMetrics, metrics=metrics)  # outermost: it sees 413s and 500s too
    for router in (tasks.router, rollouts.router, sensors.router, glance.router, mqtt_clients.router, health.router):
        app.include_router(router)
    install_docs(app)
    install_console(app)
    return app


def close_streams(app: FastAPI) -> None:
    """End the app's open event streams (at shutdown: the HTTP server waits for every response)."""
    glance_service: GlanceService = app.state.glance
    glance_service.close()
