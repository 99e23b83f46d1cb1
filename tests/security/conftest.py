"""Mosquitto running the shipped `mosquitto/mosquitto.conf` (ports and paths substituted), and
sensortasks on it."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiomqtt
import httpx
import pytest
from fastapi import FastAPI

from sensortasks.api import create_app
from sensortasks.broker.accounts import SUBSCRIBE, AccountSpec
from sensortasks.broker.dynsec import DynsecAdmin
from sensortasks.config import Settings
from sensortasks.dispatcher import Dispatcher
from sensortasks.dispatcher.link import dispatcher_link
from sensortasks.runtime import build_accounts, build_service, build_store
from sensortasks.store import TaskStore, upgrade
from sensortasks.store.keys import KeyStore
from sensortasks.testing import MosquittoBroker, free_port

ROOT = Path(__file__).resolve().parents[2]
ADMIN = ("admin", "admin-secret")
#: The dispatcher instance of these tests: its account is ``sensortasks-<instance>``, bound to that client id.
INSTANCE = "secure-test"
DISPATCHER = (f"sensortasks-{INSTANCE}", "dispatcher-secret")


class SecureBroker(MosquittoBroker):
    """The shipped secure configuration, on free ports, with a fresh dynamic-security file."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir=workdir)
        self.tls_port = free_port()
        self.certs = workdir / "certs"
        self._admin: DynsecAdmin | None = None

    def _config(self) -> Path:
        render = [str(ROOT / "scripts" / "broker-conf"), str(self.workdir), str(self.certs)]
        ports = [str(self.port), self.host, str(self.tls_port), self.host]
        text = subprocess.run([*render, *ports], check=True, capture_output=True, text=True).stdout
        text += f"log_dest file {self.log_path}\n"
        dynsec = self.workdir / "dynamic-security.json"
        if not dynsec.exists():
            subprocess.run(["mosquitto_ctrl", "dynsec", "init", str(dynsec), *ADMIN], check=True, capture_output=True)
            subprocess.run([str(ROOT / "scripts" / "dev-certs"), str(self.certs)], check=True, capture_output=True)
        path = self.workdir / "mosquitto.conf"
        path.write_text(text)
        return path

    def client_tls(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.certs / "ca.crt"))

    @property
    def admin_url(self) -> str:
        return f"mqtt://{ADMIN[0]}:{ADMIN[1]}@{self.host}:{self.port}"

    def admin(self) -> DynsecAdmin:
        """The test's admin connection (one per broker, closed by the fixture)."""
        if self._admin is None:
            self._admin = DynsecAdmin(self.host, self.port, *ADMIN, timeout_s=2.0)
        return self._admin

    async def reader_for(self, *topics: str) -> aiomqtt.Client:
        """A client of a throwaway account that may only subscribe to `topics`: a test's eyes (the
        dispatcher's own account is bound to the running dispatcher's client id)."""
        username = f"reader-{uuid.uuid4().hex[:8]}"
        spec = AccountSpec("ops", username, username, tuple((SUBSCRIBE, topic) for topic in topics))
        login = await self.admin().issue(spec)
        return aiomqtt.Client(
            self.host, self.port, username=login.username, password=login.password, identifier=login.client_id,
            protocol=aiomqtt.ProtocolVersion.V5, timeout=5,
        )  # fmt: skip

    async def aclose(self) -> None:
        if self._admin is not None:
            await self._admin.close()
        self.close()


@pytest.fixture
async def secure_broker(tmp_path: Path) -> AsyncIterator[SecureBroker]:
    """The shipped configuration with the dispatcher account of instance `INSTANCE`."""
    broker = SecureBroker(tmp_path / "secure-broker")
    broker.start()
    await broker.admin().add_dispatcher(INSTANCE, DISPATCHER[1])
    yield broker
    await broker.aclose()


@dataclass
class SecureService:
    """sensortasks on the secure broker: the app (ASGI), its broker admin, API keys per customer,
    and the dispatcher (`INSTANCE`, its own bound account) when asked for."""

    broker: SecureBroker
    settings: Settings
    store: TaskStore
    app: FastAPI
    accounts: DynsecAdmin
    dispatcher: Dispatcher | None
    keys: dict[str, str] = field(default_factory=dict)
    _clients: list[httpx.AsyncClient] = field(default_factory=list)

    async def api(self, customer: str = "acme") -> httpx.AsyncClient:
        """A REST client authenticated as `customer` (created with a key on first use)."""
        if customer not in self.keys:
            self.keys[customer] = await KeyStore(self.store.db).create_key(customer)
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app),
            base_url="http://sensortasks.test",
            headers={"Authorization": f"Bearer {self.keys[customer]}"},
            timeout=60,
        )
        self._clients.append(client)
        return client


ServiceFactory = Callable[..., Awaitable[SecureService]]


def service_settings(broker: SecureBroker, workdir: Path) -> Settings:
    return Settings(
        mqtt_url=f"mqtt://{DISPATCHER[0]}:{DISPATCHER[1]}@{broker.host}:{broker.port}",
        broker_admin_url=broker.admin_url,
        database_url=f"sqlite+aiosqlite:///{workdir}/secure.db",
        instance=INSTANCE,
        ack_timeout_s=5.0,
        stats_interval_s=0.5,
    )


@pytest.fixture
async def secure_service(secure_broker: SecureBroker, tmp_path: Path) -> AsyncIterator[ServiceFactory]:
    """Start sensortasks on the secure broker (`dispatcher=False`: the API alone)."""
    started: list[tuple[SecureService, asyncio.Task[None] | None]] = []

    async def make(*, dispatcher: bool = True) -> SecureService:
        settings = service_settings(secure_broker, tmp_path)
        await upgrade(settings.database_url)
        store = build_store(settings)
        accounts = build_accounts(settings)
        assert accounts is not None
        service = Dispatcher(settings, store, dispatcher_link(settings)) if dispatcher else None
        app = create_app(build_service(settings, store, service, accounts))
        runner = asyncio.create_task(service.run()) if service else None
        running = SecureService(secure_broker, settings, store, app, accounts, service)
        started.append((running, runner))
        if service is not None:
            async with asyncio.timeout(10):
                await service.link.connected.wait()
        return running

    yield make
    for running, runner in started:
        if running.dispatcher is not None and runner is not None:
            running.dispatcher.stop()
            async with asyncio.timeout(15):
                await runner
        for client in running._clients:
            await client.aclose()
        await running.accounts.close()
        await running.store.db.dispose()
