"""``sensortasks serve``: the REST API and the dispatcher in one process (or either alone).

Signals are ours, not uvicorn's: SIGTERM/SIGINT stop the HTTP server and the dispatcher
together, the dispatcher finishes its current batch and publishes its offline presence,
and the process exits 0. If the dispatcher crashes, the API stops with it, loudly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Iterator

import uvicorn

from sensortasks.api import create_app
from sensortasks.api.commands import install_commands
from sensortasks.api.service import SensorAccounts, TaskService
from sensortasks.config import Settings, parse_mqtt_url
from sensortasks.dispatcher import Dispatcher, dispatcher_link
from sensortasks.domain import RetryPolicy
from sensortasks.store import TaskStore, open_database, upgrade

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # signals are handled by `serve`
        yield


def build_accounts(settings: Settings) -> SensorAccounts | None:
    """Per-sensor broker accounts through Mosquitto's dynamic security, when an admin is configured."""
    if settings.broker_admin_url is None:
        return None
    from sensortasks.broker_admin import DynsecAdmin  # noqa: PLC0415
    from sensortasks.dispatcher.link import tls_context  # noqa: PLC0415

    admin = parse_mqtt_url(settings.broker_admin_url)
    return DynsecAdmin(
        admin.host,
        admin.port,
        admin.username or "",
        admin.password or "",
        tls_context=tls_context(settings.mqtt_ca_file) if admin.tls else None,
        sensors_prefix=settings.topic_sensors,
    )


def build_store(settings: Settings) -> TaskStore:
    policy = RetryPolicy(settings.retry_backoff_s, settings.retry_backoff_max_s)
    return TaskStore(open_database(settings.database_url), policy)


async def serve(settings: Settings, *, api: bool = True, dispatcher: bool = True) -> None:
    if settings.auth == "disabled" and api:
        log.warning(
            "!!! AUTHENTICATION IS DISABLED (SENSORTASKS_AUTH=disabled): anyone who can reach "
            "%s:%s can create and cancel tasks. Use this for local development only. !!!",
            settings.http_host,
            settings.http_port,
        )
    await upgrade(settings.database_url)
    store = build_store(settings)
    service = Dispatcher(settings, store, dispatcher_link(settings)) if dispatcher else None
    server = None
    accounts = build_accounts(settings)
    if service is not None and not api:
        install_commands(service, TaskService(settings, store, service, accounts))
    if api:
        app = create_app(settings, store, dispatcher=service, accounts=accounts)
        config = uvicorn.Config(
            app, host=settings.http_host, port=settings.http_port, log_config=None, access_log=False
        )
        server = _Server(config)

    def shutdown() -> None:
        log.info("shutting down")
        if server is not None:
            server.should_exit = True
        if service is not None:
            service.stop()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, shutdown)
    try:
        async with asyncio.TaskGroup() as group:
            if service is not None:
                task = group.create_task(service.run(), name="dispatcher")
                task.add_done_callback(lambda _: shutdown())
            if server is not None:
                group.create_task(server.serve(), name="http").add_done_callback(lambda _: shutdown())
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await store.db.dispose()
