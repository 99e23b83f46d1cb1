"""The FastAPI application factory."""

from __future__ import annotations

from fastapi import FastAPI

from sensortasks.api import errors
from sensortasks.api.deps import AppState
from sensortasks.api.limits import BodyLimit
from sensortasks.api.openapi import METADATA, DocumentedAPI, install_docs
from sensortasks.api.routes import health, mqtt_clients, sensors, tasks
from sensortasks.commands.mqtt import install_commands
from sensortasks.config import Settings
from sensortasks.dispatcher import Dispatcher
from sensortasks.ops.metrics import HttpMetrics, Metrics
from sensortasks.service.accounts import BrokerAccounts
from sensortasks.service.tasks import TaskService
from sensortasks.store import TaskStore

DESCRIPTION = """Create, follow and cancel firmware and configuration tasks for sensors.

Authenticate with `Authorization: Bearer <key>` (`sensortasks keys create CUSTOMER`).
Timestamps are UTC in the seed's format `YYYY-MM-DD HH:MM:SS`.
Every error is `{"error": {"code", "message", "details"}}`, `code` one of `ErrorCode`.
Task statuses: 1 Pending, 2 Completed, 3 Error, 4 Ongoing, 5 Cancelled."""


def create_app(
    settings: Settings,
    store: TaskStore,
    *,
    dispatcher: Dispatcher | None = None,
    accounts: BrokerAccounts | None = None,
) -> FastAPI:
    """`accounts` issues broker credentials (a `DynsecAdmin`); the caller owns and closes it."""
    app = DocumentedAPI(title="sensortasks", version="1", description=DESCRIPTION, **METADATA)
    metrics = dispatcher.metrics if dispatcher else Metrics()
    service = TaskService(settings, store, dispatcher, accounts)
    app.state.sensortasks = AppState(settings, service, metrics)
    if dispatcher is not None:
        install_commands(dispatcher, service)
    errors.install(app)
    app.add_middleware(BodyLimit)
    app.add_middleware(HttpMetrics, metrics=metrics)  # outermost: it sees 413s and 500s too
    for router in (tasks.router, sensors.router, mqtt_clients.router, health.router):
        app.include_router(router)
    install_docs(app)
    return app
