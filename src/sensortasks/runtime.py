"""``sensortasks serve``: the REST API and the dispatcher in one process (or either alone).

Signals are ours, not uvicorn's: SIGTERM/SIGINT stop the HTTP server and the dispatcher
together, the dispatcher finishes its current batch and publishes its offline presence,
and the process exits 0. If the dispatcher crashes, the API stops with it, loudly.

Start-up failures that configuration must fix are raised as `SensortasksError`s for the
CLI to print as one line: a database that cannot be used (`Unavailable`), a broker that
refuses the dispatcher's login (`BrokerRefused`). A broker that is down is not one of them:
the dispatcher waits for it (and ``/healthz`` says 503 meanwhile).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import socket
from collections.abc import Coroutine, Iterator
from typing import Any

import uvicorn
from fastapi import FastAPI

from sensortasks.api import create_app
from sensortasks.api.app import close_streams
from sensortasks.broker.dynsec import DynsecAdmin
from sensortasks.commands.mqtt import CommandHandler
from sensortasks.config import Settings
from sensortasks.dispatcher import Dispatcher, dispatcher_link
from sensortasks.domain import RetryPolicy
from sensortasks.errors import ConfigError
from sensortasks.mqtt import parse_mqtt_url
from sensortasks.service.accounts import BrokerAccounts
from sensortasks.service.tasks import TaskService
from sensortasks.store import TaskStore, open_database, upgrade

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self.app = app

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # signals are handled by `serve`
        yield

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """End the open event streams first: uvicorn waits for every response to finish."""
        close_streams(self.app)
        await super().shutdown(sockets)


def build_accounts(settings: Settings) -> DynsecAdmin | None:
    """Broker accounts through Mosquitto's dynamic security, when an admin is configured.
    Build it inside the running event loop, and close it."""
    if settings.broker_admin_url is None:
        return None
    from sensortasks.mqtt import tls_context  # noqa: PLC0415

    admin = parse_mqtt_url(settings.broker_admin_url)
    return DynsecAdmin(
        admin.host,
        admin.port,
        admin.username or "",
        admin.password or "",
        tls_context=tls_context(settings.mqtt_ca_file) if admin.tls else None,
        topics=settings.topics,
    )


def _listen(host: str, port: int) -> socket.socket:
    """Bind the API's socket ourselves: a port in use is one clear error, not uvicorn's exit.

    The protocol must say TCP: asyncio sets TCP_NODELAY only on sockets whose ``proto`` is
    ``IPPROTO_TCP`` (`socket.create_server` leaves it 0), and without it every keep-alive
    request waits ~40 ms for a delayed ACK."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot listen on {host}:{port} for the REST API: {exc.strerror or exc}; "
            "choose another address with --host/--port or SENSORTASKS_HTTP_HOST/SENSORTASKS_HTTP_PORT"
        ) from None
    return sock


def build_store(settings: Settings) -> TaskStore:
    policy = RetryPolicy(settings.retry_backoff_s, settings.retry_backoff_max_s)
    return TaskStore(open_database(settings.database_url, instance=settings.instance), policy, origin=settings.instance)


def build_service(
    settings: Settings,
    store: TaskStore,
    dispatcher: Dispatcher | None = None,
    accounts: BrokerAccounts | None = None,
) -> TaskService:
    """The process's one application layer, used by REST and the MQTT commands alike. With a
    dispatcher it wakes it up on changes, and answers its command topics: the one place that
    registers the handler. `accounts` issues broker credentials; the caller closes it."""
    service = TaskService(settings, store, dispatcher, accounts)
    if dispatcher is not None:
        dispatcher.serve_commands(CommandHandler(service, dispatcher))
    return service


def _freeze_the_heap() -> None:
    """What is alive once the server is built (modules, the app, its models and routes: about
    150,000 objects) lives as long as the process: out of every collection from here on. Each
    full collection scanned it all again, 55-125 ms with the loop stopped, every second or two
    under load (12-48 ms frozen; docs/performance.md)."""
    gc.collect()  # the start-up's garbage is not frozen with it
    gc.freeze()


async def serve(settings: Settings, *, api: bool = True, dispatcher: bool = True) -> None:
    if settings.auth == "disabled" and api:
        log.warning(
            "!!! AUTHENTICATION IS DISABLED (SENSORTASKS_AUTH=disabled): anyone who can reach "
            "%s:%s can create and cancel tasks. Use this for local development only. !!!",
            settings.http_host,
            settings.http_port,
        )
    await upgrade(settings.database_url)
    listening = _listen(settings.http_host, settings.http_port) if api else None
    store = build_store(settings)
    service = Dispatcher(settings, store, dispatcher_link(settings), rollouts=store) if dispatcher else None
    server = None
    accounts = build_accounts(settings)
    application = build_service(settings, store, service, accounts)
    if api:
        app = create_app(application)
        config = uvicorn.Config(
            app, host=settings.http_host, port=settings.http_port, log_config=None, access_log=False
        )
        server = _Server(config, app)

    _freeze_the_heap()
    stopping = False

    def shutdown() -> None:
        nonlocal stopping
        if stopping:  # the signal, then each side task ending, all ask for it
            return
        stopping = True
        log.info("shutting down")
        if server is not None:
            server.should_exit = True
        if service is not None:
            service.stop()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, shutdown)
    failures: list[Exception] = []

    async def side(work: Coroutine[Any, Any, object]) -> None:
        """Either side ending stops the other one cleanly (not by cancelling it, which would
        leave uvicorn's lifespan logging a traceback); a failure is raised once both are done."""
        try:
            await work
        except Exception as exc:
            failures.append(exc)
        finally:
            shutdown()

    try:
        async with asyncio.TaskGroup() as group:
            if service is not None:
                group.create_task(side(service.run()), name="dispatcher")
            if server is not None:
                group.create_task(side(server.serve(sockets=[listening] if listening else None)), name="http")
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        if accounts is not None:
            await accounts.close()
        await store.db.dispose()
    if failures:
        raise failures[0] if len(failures) == 1 else ExceptionGroup("serve failed", failures)
