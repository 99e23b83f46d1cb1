"""Broker accounts through Mosquitto's dynamic-security plugin, safe under concurrency and outages.

Requests go to ``$CONTROL/dynamic-security/v1`` as ``{"commands": [...]}``; the plugin answers
every request with one ``{"responses": [...]}`` on the shared topic
``$CONTROL/dynamic-security/v1/response``, which every admin connection of every process
receives. So each command carries its own ``correlationData`` (``<request id>/<index>``; the
2.0 plugin echoes it per command, plugins/dynamic-security/plugin.c) and an answer goes only
to the request that it names; the others are ignored.

One long-lived admin connection per `DynsecAdmin` (per process): opened on first use,
re-opened after a loss, with up to `MAX_IN_FLIGHT` requests in flight on it. The plugin runs
all the commands of one request back to back, so a request is atomic with respect to the
others. Requests are published at QoS 0: the answer is the acknowledgement, and a QoS 1
PUBACK followed by the answer met Nagle's algorithm in the broker (45 ms per request
instead of 0.4 ms, measured here); a request lost with its connection is retried.

- `ensure`: create the role and the client if missing, else set the role's ACLs and the
  client's password, client id binding and role (``modifyRole`` and ``modifyClient`` replace
  them whole). Idempotent, so a timed out attempt is sent again with the same password:
  whether or not the first one landed, the password returned is the one the broker holds.
- `issue`: `ensure` with a new password; concurrent calls for one account coalesce (single
  flight), so they all get the same password, the one that works.
- `remove`: delete the client (the broker disconnects it at once) and its own role;
  removing what is gone is not an error.

Every failure is a `BrokerAdminError`, an `Unavailable` (503 in the REST API): the broker
unreachable or silent (`BrokerUnreachable`, after retries), or a command refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import sys
import uuid
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Self

import aiomqtt

from sensortasks.broker.accounts import (
    AccountSpec,
    MqttCredentials,
    dispatcher_account,
    new_password,
    sensor_account,
)
from sensortasks.errors import Unavailable
from sensortasks.mqtt import Backoff, MqttTarget, new_client, parse_mqtt_url, refusal, tls_context, unique_identifier
from sensortasks.protocol.topics import Topics

log = logging.getLogger(__name__)

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = CONTROL_TOPIC + "/response"
#: How long one attempt waits for the plugin's answer; attempts are retried (idempotent ones).
#: The plugin rewrites its whole file on every change (O(accounts): ~35 ms at 2,000 accounts
#: here), and serves requests one by one, so a request may wait for the ones ahead of it.
TIMEOUT_S = 10.0
ATTEMPTS = 3
#: Requests awaiting their answer at once (the plugin serves them one by one anyway, so more
#: would only lengthen the wait of each; below aiomqtt's "pending publish calls" warning).
MAX_IN_FLIGHT = 4
#: ``(first, max)`` seconds between attempts (`Backoff`: doubling, jittered).
RETRY_PAUSE_S = (0.3, 1.0)
#: Error strings of the 2.0 plugin that mean "already as wanted" in `ensure` and `remove`.
ALREADY_EXISTS = ("Role already exists", "Client already exists")
ALREADY_GONE = ("Client not found", "Role not found")
#: ... and what `modifyRole` / `modifyClient` answer when the account was removed meanwhile.
GONE = ("Role does not exist", "Client not found", "Role not found")


class BrokerAdminError(Unavailable):
    """The broker's dynamic security refused a command, or could not be asked."""


class BrokerUnreachable(BrokerAdminError):
    """No connection to the broker, or no answer in time: the command may or may not have run."""


class _Session:
    """One admin connection: its client and the requests waiting for an answer on it."""

    def __init__(self) -> None:
        self.client: aiomqtt.Client | None = None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.pending: dict[str, asyncio.Future[list[dict[str, Any]]]] = {}
        self.task: asyncio.Task[None] | None = None

    @property
    def alive(self) -> bool:
        return self.task is not None and not self.task.done()

    def fail_all(self, error: BrokerAdminError) -> None:
        for future in self.pending.values():
            if not future.done():
                future.set_exception(error)


def _answer_id(payload: bytes) -> tuple[str, list[dict[str, Any]]] | None:
    """The request id an answer names (from its first response's correlation data), and the responses."""
    try:
        responses: list[dict[str, Any]] = json.loads(payload).get("responses")
        correlation = responses[0].get("correlationData")
    except (ValueError, AttributeError, IndexError, TypeError):
        return None
    if not isinstance(correlation, str) or "/" not in correlation:
        return None
    return correlation.partition("/")[0], responses


def _acls_of(get_role: dict[str, Any]) -> set[tuple[str, str, bool]] | None:
    """A role's ACLs as ``getRole`` answers them (None if it is gone), to compare with ours."""
    role = (get_role.get("data") or {}).get("role")
    if not isinstance(role, dict):
        return None
    return {(str(a.get("acltype")).lower(), str(a.get("topic")), a.get("allow") is True) for a in role.get("acls", [])}


class DynsecAdmin:
    """Provisions broker accounts (see the module docstring). Build and use it in one event loop;
    `close()` (or ``async with``) ends its connection."""

    def __init__(
        self,
        host: str,
        port: int,
        username: str,
        password: str,
        *,
        tls_context: ssl.SSLContext | None = None,
        topics: Topics | None = None,
        timeout_s: float = TIMEOUT_S,
        attempts: int = ATTEMPTS,
    ) -> None:
        self.host = host
        self.port = port
        self.username = username
        self.password = password
        self.tls_context = tls_context
        self.topics = topics or Topics()
        self.timeout_s = timeout_s
        self.attempts = attempts
        self._session: _Session | None = None
        self._connecting = asyncio.Lock()
        self._flights: dict[str, asyncio.Future[MqttCredentials]] = {}
        self._in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)

    # -- the connection ----------------------------------------------------------
    async def _connected(self) -> _Session:
        async with self._connecting:
            session = self._session
            if session is None or not session.alive:
                session = self._session = _Session()
                session.task = asyncio.create_task(self._run(session), name="dynsec-admin")
            await asyncio.shield(session.ready)
            return session

    async def _run(self, session: _Session) -> None:
        """Hold the connection and route every answer to its request, until it is lost or closed."""
        client = new_client(
            MqttTarget(self.host, self.port, self.username, self.password, tls=self.tls_context is not None),
            identifier=unique_identifier("sensortasks-admin", 12),
            ssl_context=self.tls_context,
            timeout=self.timeout_s,
            max_inflight=100,
        )
        error: BrokerAdminError = BrokerUnreachable("the broker admin connection was closed")
        closed = False
        try:
            async with client:
                granted = await client.subscribe(RESPONSE_TOPIC, qos=0)
                if any(getattr(code, "value", code) >= 0x80 for code in granted):  # noqa: PLR2004
                    raise BrokerAdminError(f"the broker refused {self.username!r} the dynamic-security answers")
                session.client = client
                session.ready.set_result(None)
                log.info("broker admin connected to %s:%s as %s", self.host, self.port, self.username)
                async for message in client.messages:
                    answer = _answer_id(message.payload if isinstance(message.payload, bytes) else b"")
                    future = session.pending.get(answer[0]) if answer else None
                    if answer and future is not None and not future.done():
                        future.set_result(answer[1])
        except aiomqtt.MqttError as exc:
            why = refusal(exc)
            if not session.ready.done() and why is not None:  # retrying cannot help
                error = BrokerAdminError(f"the broker refused the admin login at {self.host}:{self.port}: {why}")
            else:
                error = BrokerUnreachable(f"broker admin connection to {self.host}:{self.port} failed: {exc}")
        except BrokerAdminError as exc:
            error = exc
        except asyncio.CancelledError:
            closed = True
            raise
        finally:
            session.client = None
            if not session.ready.done():
                session.ready.set_exception(error)
                session.ready.exception()  # retrieved: whoever waits gets it, nobody need
            elif not closed:
                log.warning("broker admin connection lost: %s", error.message)
            session.fail_all(error)

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None and session.task is not None:
            session.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await session.task

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- requests ----------------------------------------------------------------
    async def _request(self, commands: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Send one request and wait for its own answer (one response per command, in order)."""
        async with self._in_flight:
            return await self._send(commands)

    async def _send(self, commands: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        session = await self._connected()
        request_id = uuid.uuid4().hex
        tagged = [{**command, "correlationData": f"{request_id}/{i}"} for i, command in enumerate(commands)]
        future = session.pending[request_id] = asyncio.get_running_loop().create_future()
        client = session.client
        try:
            if client is None:
                raise BrokerUnreachable("broker admin connection lost")
            async with asyncio.timeout(self.timeout_s):
                await client.publish(CONTROL_TOPIC, json.dumps({"commands": tagged}), qos=0)
                responses: list[dict[str, Any]] = await future
        except TimeoutError:
            raise BrokerUnreachable(f"no answer from the broker's dynamic security in {self.timeout_s} s") from None
        except aiomqtt.MqttError as exc:
            raise BrokerUnreachable(f"broker admin request failed: {exc}") from exc
        finally:
            session.pending.pop(request_id, None)
        if [r.get("correlationData") for r in responses] != [c["correlationData"] for c in tagged]:
            raise BrokerAdminError(f"the broker answered {len(responses)} of {len(tagged)} commands: {responses}")
        return responses

    async def execute(
        self, commands: Sequence[dict[str, Any]], *, tolerate: Sequence[str] = (), retry: bool = False
    ) -> list[dict[str, Any]]:
        """Run `commands` as one request; raise on any error not in `tolerate` (exact strings).
        With `retry` (idempotent commands only), a timed out or lost request is sent again."""
        pause = Backoff(*RETRY_PAUSE_S)
        for attempt in range(self.attempts if retry else 1):
            if attempt:
                await asyncio.sleep(pause.next())
            try:
                responses = await self._request(commands)
                break
            except BrokerUnreachable as exc:
                log.warning("broker admin attempt %d of %d failed: %s", attempt + 1, self.attempts, exc.message)
                if attempt + 1 >= (self.attempts if retry else 1):
                    raise
        for response in responses:
            error = response.get("error")
            if error and error not in tolerate:
                raise BrokerAdminError(f"{response.get('command')}: {error}")
        return responses

    # -- accounts ----------------------------------------------------------------
    async def ensure(self, spec: AccountSpec, password: str) -> MqttCredentials:
        """Create or update the account to exactly `spec` with `password` (idempotent, retried).
        A client connected with the account is disconnected, so it must log in again.

        First ``createRole`` + ``createClient`` (+ ``getRole``, which writes nothing); then, for
        what already existed, ``modifyClient`` (password, client id, role) and ``modifyRole``
        if its ACLs differ. Each change rewrites the whole dynamic-security file, so a new
        account costs two writes and a rotation one. If the account is removed between the
        two requests, they are tried again."""
        acls = [{"acltype": kind, "topic": topic, "allow": True} for kind, topic in spec.acls]
        role = {"rolename": spec.rolename, "acls": acls}
        client: dict[str, Any] = {
            "username": spec.username,
            "password": password,
            "clientid": spec.client_id,
            "roles": [{"rolename": spec.rolename}],
        }
        for _ in range(ATTEMPTS):
            made_role, made_client, found = await self.execute(
                [
                    {"command": "createRole", **role},
                    {"command": "createClient", **client},
                    {"command": "getRole", "rolename": spec.rolename},
                ],
                tolerate=(*ALREADY_EXISTS, *GONE),
                retry=True,
            )
            updates = []
            if made_role.get("error") and _acls_of(found) != _acls_of({"data": {"role": role}}):
                updates.append({"command": "modifyRole", **role})
            if made_client.get("error"):
                updates.append({"command": "modifyClient", **client})
            if not updates or not any(r.get("error") for r in await self.execute(updates, tolerate=GONE, retry=True)):
                log.info("broker account %s ensured (%s, client id %s)", spec.username, spec.kind, spec.client_id)
                return MqttCredentials(spec.username, password, spec.client_id)
        raise BrokerAdminError(f"broker account {spec.username} was removed {ATTEMPTS} times while being updated")

    async def issue(self, spec: AccountSpec) -> MqttCredentials:
        """`ensure` with a new password. Concurrent calls for one account share one request
        and one password; a call made after that request finished rotates the password again."""
        flight = self._flights.get(spec.username)
        if flight is None:
            flight = asyncio.ensure_future(self.ensure(spec, new_password()))
            self._flights[spec.username] = flight
            flight.add_done_callback(lambda done: self._landed(spec.username, done))
        return await asyncio.shield(flight)

    def _landed(self, username: str, flight: asyncio.Future[MqttCredentials]) -> None:
        if self._flights.get(username) is flight:
            del self._flights[username]
        if not flight.cancelled():
            flight.exception()  # retrieved, even if every caller has gone

    async def remove(self, spec: AccountSpec) -> None:
        """Delete the account (its connection is closed at once) and its own role; idempotent."""
        commands = [{"command": "deleteClient", "username": spec.username}]
        if spec.own_role:
            commands.append({"command": "deleteRole", "rolename": spec.rolename})
        await self.execute(commands, tolerate=ALREADY_GONE, retry=True)
        log.info("broker account %s removed", spec.username)

    async def add_sensor(self, serial: int) -> MqttCredentials:
        """Issue (or rotate) the credentials of `sensor-<serial>`, bound to that client id."""
        return await self.issue(sensor_account(self.topics, serial))

    async def remove_sensor(self, serial: int) -> None:
        await self.remove(sensor_account(self.topics, serial))

    async def add_dispatcher(self, instance: str, password: str) -> MqttCredentials:
        """The account of dispatcher `instance`: ``sensortasks-<instance>``, with `password`."""
        return await self.ensure(dispatcher_account(self.topics, instance), password)


USAGE = "usage: python -m sensortasks.broker.dynsec ADMIN_URL INSTANCE PASSWORD"


def main(argv: Sequence[str] | None = None) -> int:
    """Create or update the account of dispatcher INSTANCE (``sensortasks-INSTANCE``, bound to that
    client id) with PASSWORD, as the admin of ADMIN_URL; used by ./scripts/run. Idempotent."""
    from pydantic import ValidationError  # noqa: PLC0415

    from sensortasks.config import Settings  # noqa: PLC0415

    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 3:  # noqa: PLR2004
        print(USAGE, file=sys.stderr)  # noqa: T201
        return 2
    url, instance, password = args
    logging.basicConfig(level=logging.ERROR)  # the outcome is the one line below, not the retries
    try:
        admin_url = parse_mqtt_url(url)
        settings = Settings()
        tls = tls_context(settings.mqtt_ca_file) if admin_url.tls else None
        spec = dispatcher_account(settings.topics, instance)
    except (ValueError, ValidationError) as exc:
        print(f"broker_admin: {exc}", file=sys.stderr)  # noqa: T201
        return 2

    async def run() -> None:
        async with DynsecAdmin(
            admin_url.host,
            admin_url.port,
            admin_url.username or "",
            admin_url.password or "",
            tls_context=tls,
            topics=settings.topics,
        ) as admin:
            await admin.ensure(spec, password)

    try:
        asyncio.run(run())
    except BrokerAdminError as exc:
        print(f"broker_admin: cannot create the account {spec.username}: {exc.message}", file=sys.stderr)  # noqa: T201
        return 1
    return 0
