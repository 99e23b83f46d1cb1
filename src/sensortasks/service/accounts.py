"""Broker accounts and the database records that say who holds them, kept in agreement.

The database decides and the broker enforces. Every step below can fail; the order is chosen
so that the state left behind is one from which retrying the same request converges, and so
that a removed sensor or client never keeps a usable account:

- **Who may** is checked in the database before the broker is touched (404 for another
  customer's, 409 for a sensor registered to someone else): a refused request changes nothing.
- **Creating** (a new sensor, a new MQTT client): the record first, then the broker account.
  If the broker fails, the record this request made is taken out again and the answer is 503:
  nothing changed, except perhaps a broker account that a timed out attempt created and whose
  password nobody was given (removed as well when the broker answers; else the next
  registration overwrites it).
- **Rotating** (registering again): the record stays, the account gets a new password and keeps
  its client id binding. A 503 may leave the old or the new password; the retry issues one that works.
- **Removing**: the broker account first (it is disconnected at once), then the record. A
  broker failure is a 503 with nothing changed (the account still works, the record is still
  there, so the retry can find it); a failure after that leaves a record without an account,
  and the retry finishes the removal.

In one process, the requests for one account run one at a time, except that registrations
that overlap share one broker request and one password (single flight). Across processes,
a registration re-reads the record after issuing the account and a removal deletes the
account again after the record, so a removal racing a registration still leaves no account.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, cast

from sensortasks.broker.accounts import (
    AccountSpec,
    MqttCredentials,
    account_of,
    backend_account,
    dispatcher_account,
    ops_account,
    sensor_account,
)
from sensortasks.errors import InvalidInput, NotConfigured, NotFound, SensortasksError
from sensortasks.labels import check_labels
from sensortasks.protocol.topics import Topics
from sensortasks.store import TaskStore, utcnow
from sensortasks.store.accounts import ClientAccount, ClientKind, MqttClientStore

log = logging.getLogger(__name__)
T = TypeVar("T")

NO_ADMIN = (
    "no broker admin is configured (SENSORTASKS_BROKER_ADMIN_URL): "
    "MQTT client accounts can be neither issued nor removed"
)


class BrokerAccounts(Protocol):
    """What the broker side offers (`DynsecAdmin`); see sensortasks.broker.dynsec."""

    async def issue(self, spec: AccountSpec) -> MqttCredentials: ...
    async def remove(self, spec: AccountSpec) -> None: ...


@dataclass(frozen=True, slots=True)
class IssuedClient:
    """A new (or re-keyed) MQTT client account: its record and its credentials, shown once."""

    account: ClientAccount
    credentials: MqttCredentials


class _Serial:
    """Per key, one operation at a time; `flight` coalesces concurrent identical ones."""

    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}
        self._users: dict[str, int] = {}
        self._flights: dict[tuple[str, object], asyncio.Future[Any]] = {}

    @asynccontextmanager
    async def one(self, key: str) -> AsyncIterator[None]:
        lock = self._locks.setdefault(key, asyncio.Lock())
        self._users[key] = self._users.get(key, 0) + 1
        try:
            async with lock:
                yield
        finally:
            self._users[key] -= 1
            if not self._users[key]:
                del self._users[key], self._locks[key]

    async def flight(self, key: str, same: object, run: Callable[[], Awaitable[T]]) -> T:
        """Run `run` under the key's lock, or join the run in progress for the same (key, `same`)."""
        flight = self._flights.get((key, same))
        if flight is None or flight.done():

            async def locked() -> T:
                async with self.one(key):
                    return await run()

            flight = asyncio.ensure_future(locked())
            self._flights[key, same] = flight
            flight.add_done_callback(lambda done: self._landed((key, same), done))
        return cast(T, await asyncio.shield(flight))

    def _landed(self, key: tuple[str, object], flight: asyncio.Future[Any]) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]
        if not flight.cancelled():
            flight.exception()  # retrieved even if every caller has gone


class AccountService:
    """Sensors' credentials and MQTT client accounts (see the module docstring for the rules)."""

    def __init__(self, store: TaskStore, topics: Topics, broker: BrokerAccounts | None) -> None:
        self.store = store
        self.clients = MqttClientStore(store.db)
        self.topics = topics
        #: None when no broker admin is configured: sensors are registered without credentials.
        self.broker = broker
        self._serial = _Serial()

    # -- sensors -------------------------------------------------------------------
    async def register_sensor(
        self, serial: int, customer_id: int | None, labels: Mapping[str, str] | None = None
    ) -> tuple[bool, MqttCredentials | None]:
        """Register (True if new) and issue or rotate the credentials of ``sensor-<serial>``;
        `labels` replace the sensor's (None keeps them). Only overlapping requests with the same
        labels share one flight."""
        spec = sensor_account(self.topics, serial)
        checked = None if labels is None else check_labels(labels)
        same = (customer_id, None if checked is None else tuple(sorted(checked.items())))
        return await self._serial.flight(
            spec.username, same, lambda: self._register(spec, serial, customer_id, checked)
        )

    async def _register(
        self, spec: AccountSpec, serial: int, customer_id: int | None, labels: Mapping[str, str] | None
    ) -> tuple[bool, MqttCredentials | None]:
        created = await self.store.register_sensor(serial, customer_id=customer_id, now=utcnow(), labels=labels)
        if self.broker is None:
            return created, None
        try:
            credentials = await self.broker.issue(spec)
        except SensortasksError:
            if created:
                await self._undo_sensor(spec, serial, customer_id)
            raise
        if not await self.clients.sensor_registered(serial, customer_id):
            await self.broker.remove(spec)  # removed meanwhile by another process
            raise NotFound(f"sensor {serial} was removed while it was being registered")
        log.info("sensor %s: credentials %s (%s)", serial, "issued" if created else "rotated", spec.username)
        return created, credentials

    async def _undo_sensor(self, spec: AccountSpec, serial: int, customer_id: int | None) -> None:
        log.warning("sensor %s: broker account not issued, registration undone", serial)
        await self.store.unregister_sensor(serial, customer_id=customer_id, now=utcnow())
        await self._forget(spec)

    async def _forget(self, spec: AccountSpec) -> None:
        """Best effort: an account a timed out attempt may have made (nobody knows its password)."""
        if self.broker is not None:
            try:
                await self.broker.remove(spec)
            except SensortasksError as exc:
                log.warning("broker account %s left for the next registration: %s", spec.username, exc.message)

    async def remove_sensor(self, serial: int, customer_id: int | None) -> int:
        """Delete the broker account, then release the sensor (its active tasks are cancelled)."""
        spec = sensor_account(self.topics, serial)
        async with self._serial.one(spec.username):
            if not await self.clients.sensor_registered(serial, customer_id):
                raise NotFound(f"sensor {serial} not found")
            if self.broker is not None:
                await self.broker.remove(spec)
            cancelled = await self.store.unregister_sensor(serial, customer_id=customer_id, now=utcnow())
            if self.broker is not None:
                await self._forget(spec)  # an account issued by another process meanwhile
        log.info("sensor %s: removed, %d task(s) cancelled, broker account deleted", serial, cancelled)
        return cancelled

    # -- MQTT clients --------------------------------------------------------------
    def _admin(self) -> BrokerAccounts:
        if self.broker is None:
            raise NotConfigured(NO_ADMIN)
        return self.broker

    async def add_client(
        self, kind: ClientKind, *, customer_id: int | None = None, name: str | None = None
    ) -> IssuedClient:
        """A new backend account (the customer's), or an operator's or dispatcher instance's;
        adding an operator or dispatcher account again (same name) rotates its password."""
        broker = self._admin()
        try:
            if kind == "backend":
                spec = backend_account(self.topics)
            elif kind == "ops":
                spec = ops_account(self.topics, name)
            else:
                spec = dispatcher_account(self.topics, name or "")
        except ValueError as exc:
            raise InvalidInput(str(exc), details={"field": "name"}) from None
        return await self._serial.flight(spec.username, customer_id, lambda: self._add(broker, spec, customer_id))

    async def _add(self, broker: BrokerAccounts, spec: AccountSpec, customer_id: int | None) -> IssuedClient:
        try:
            account = await self.clients.get(spec.username)
            created = False
        except NotFound:
            account = ClientAccount(
                username=spec.username,
                client_id=spec.client_id,
                kind=spec.kind,  # type: ignore[arg-type]
                customer_id=customer_id if spec.kind == "backend" else None,
                reply_topic_prefix=self.topics.reply_prefix(spec.client_id) if spec.kind == "backend" else None,
                created_at=utcnow(),
            )
            await self.clients.add(account)
            created = True
        try:
            credentials = await broker.issue(spec)
        except SensortasksError:
            if created:
                log.warning("mqtt client %s: broker account not issued, record undone", spec.username)
                await self.clients.remove(spec.username)
                await self._forget(spec)
            raise
        log.info("mqtt client %s (%s): credentials %s", spec.username, spec.kind, "issued" if created else "rotated")
        return IssuedClient(account, credentials)

    async def clients_of(self, customer_id: int | None) -> list[ClientAccount]:
        """The customer's backend accounts (all of them when authentication is off)."""
        return await self.clients.accounts(customer_id=customer_id, kind="backend")

    async def client(
        self, username: str, customer_id: int | None, *, kind: ClientKind | None = "backend"
    ) -> ClientAccount:
        account = await self.clients.get(username, customer_id=customer_id)
        if kind is not None and account.kind != kind:
            raise NotFound(f"MQTT client {username!r} not found")
        return account

    async def remove_client(
        self, username: str, customer_id: int | None, *, kind: ClientKind | None = "backend"
    ) -> None:
        """Delete the broker account, then the record; another customer's is a 404."""
        async with self._serial.one(username):
            account = await self.client(username, customer_id, kind=kind)
            spec = account_of(self.topics, account.kind, username)
            await self._admin().remove(spec)
            await self.clients.remove(username)
        log.info("mqtt client %s (%s): removed", username, account.kind)
