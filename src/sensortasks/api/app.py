"""The FastAPI application factory."""

from __future__ import annotations

from fastapi import FastAPI

from sensortasks.api import errors
from sensortasks.api.deps import AppState
from sensortasks.api.routes import health, sensors, tasks
from sensortasks.config import Settings
from sensortasks.dispatcher import Dispatcher
from sensortasks.store import TaskStore
from sensortasks.store.keys import KeyStore

DESCRIPTION = """Create, follow and cancel firmware and configuration tasks for sensors.

Authenticate with `Authorization: Bearer <key>`. Timestamps are UTC, `YYYY-MM-DD HH:MM:SS`.
Errors are `{"error": {"code", "message", "details"}}`."""


def create_app(settings: Settings, store: TaskStore, *, dispatcher: Dispatcher | None = None) -> FastAPI:
    app = FastAPI(title="sensortasks", version="1", description=DESCRIPTION)
    app.state.sensortasks = AppState(settings, store, KeyStore(store.db), dispatcher)
    errors.install(app)
    for router in (tasks.router, sensors.router, health.router):
        app.include_router(router)
    return app
