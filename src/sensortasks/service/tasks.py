"""Customer operations, shared by the REST routes and the MQTT command topics,
so validation and rules exist once."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from datetime import timedelta
from typing import Any

from sensortasks.broker.accounts import MqttCredentials
from sensortasks.config import Settings
from sensortasks.dispatcher import Dispatcher
from sensortasks.domain import TaskStatus
from sensortasks.errors import Conflict, InvalidInput, NotFound
from sensortasks.labels import check_patch
from sensortasks.protocol.commands import TaskCreate
from sensortasks.protocol.topics import MAX_ID
from sensortasks.service.accounts import AccountService, BrokerAccounts
from sensortasks.store import Created, NewTask, Remembered, SensorInfo, Task, TaskEvent, TaskFilter, TaskStore, utcnow
from sensortasks.store.idempotency import IN_PROGRESS, Answer, Claim
from sensortasks.store.keys import KeyStore
from sensortasks.store.sensors import ListedSensor

log = logging.getLogger(__name__)

#: How long an Idempotency-Key is remembered (at least the 24 hours promised).
IDEMPOTENCY_KEEP = timedelta(hours=48)
#: How long a request waits for the answer of the same request running elsewhere.
IDEMPOTENCY_WAIT_S = 10.0
#: The waiter's polls: the first pause, doubled up to the last.
IDEMPOTENCY_FIRST_POLL_S = 0.01
IDEMPOTENCY_LAST_POLL_S = 0.25
#: A claimed key without an answer this old belongs to a request that died before its tasks'
#: transaction (which stores the answer) committed, its process killed or its database gone; the
#: next request takes it over. One that only looked dead creates nothing (`create_answering`).
IDEMPOTENCY_STALE = timedelta(seconds=60)


def checked_id(task_id: int, what: str = "task") -> int:
    """Ids outside the column's range cannot exist: a 404, not a database error."""
    if not 0 < task_id <= MAX_ID:
        raise NotFound(f"{what} {task_id} not found")
    return task_id


@contextlib.contextmanager
def unregistered_named(serials: Sequence[int], field: str) -> Iterator[None]:
    """The store's unregistered sensors (`InvalidInput`) reworded for the request: the fields
    holding them named (`field` formatted with the index into `serials`: ``tasks.{}.sensor_serial``,
    ``sensors.{}``), and how to fix it."""
    try:
        yield
    except InvalidInput as exc:
        missing: list[int] = (exc.details or {}).get("unregistered_serials", [])
        if not missing:
            raise
        unregistered = set(missing)
        at = [i for i, serial in enumerate(serials) if serial in unregistered]
        fields = [field.format(i) for i in at]
        details: dict[str, Any] = {"unregistered_serials": missing[:100]}
        if len(serials) > 1:
            details = {"fields": fields[:100]} | details
        raise InvalidInput(
            f"{fields[0]}: sensor {serials[at[0]]} is not registered to you; register it with POST /v1/sensors",
            details=details,
        ) from exc


def _fields_named(bodies: Sequence[TaskCreate]) -> contextlib.AbstractContextManager[None]:
    """`unregistered_named` for task bodies: ``sensor_serial`` for one, ``tasks.<index>.sensor_serial`` in bulk."""
    field = "sensor_serial" if len(bodies) == 1 else "tasks.{}.sensor_serial"
    return unregistered_named([b.sensor_serial for b in bodies], field)


class TaskService:
    def __init__(
        self,
        settings: Settings,
        store: TaskStore,
        dispatcher: Dispatcher | None,
        broker: BrokerAccounts | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        #: Sensors' credentials and MQTT client accounts, with the broker (None: not configured).
        self.accounts = AccountService(store, settings.topics, broker)
        self.keys = KeyStore(store.db)
        #: The in-process dispatcher, if this process runs one (to wake it up at once).
        self.dispatcher = dispatcher

    def _new(self, bodies: Sequence[TaskCreate]) -> list[NewTask]:
        return [
            NewTask(
                sensor_serial=b.sensor_serial,
                type=b.type.value,
                file_id=str(b.file_id),
                max_attempts=b.max_attempts or self.settings.max_attempts,
                timeout_s=b.timeout_s or self.settings.default_timeout_s,
            )
            for b in bodies
        ]

    async def create(self, bodies: Sequence[TaskCreate], customer_id: int | None) -> Created:
        """Create tasks in one transaction, all or nothing. With customers, only for their own sensors."""
        with _fields_named(bodies):
            tasks = await self.store.create(self._new(bodies), customer_id=customer_id, now=utcnow())
        self._wake(bodies)
        return tasks

    def _wake(self, bodies: Sequence[TaskCreate]) -> None:
        """Tell the in-process dispatcher about new tasks at once (others hear the store's notify)."""
        if self.dispatcher is not None:
            self.dispatcher.kick({b.sensor_serial for b in bodies})
            self.dispatcher.notify_outbox()

    async def get(self, task_id: int, customer_id: int | None) -> Task:
        return await self.store.get(checked_id(task_id), customer_id=customer_id)

    async def cancel(self, task_id: int, customer_id: int | None) -> Task:
        task = await self.store.cancel(checked_id(task_id), customer_id=customer_id, now=utcnow())
        if self.dispatcher is not None:
            self.dispatcher.notify_outbox()
        return task

    # -- reads: what REST, the commands and the CLI show ---------------------------
    async def page(self, where: TaskFilter, *, before_id: int | None, limit: int) -> tuple[list[Task], bool]:
        """A page of the matching tasks, newest first (`before_id`: the keyset cursor), and whether more follow."""
        return await self.store.list_tasks(where, before_id=before_id, limit=limit)

    def pages(self, where: TaskFilter) -> AsyncIterator[list[Task]]:
        """Every matching task, newest first, a page at a time (constant memory for exports)."""
        return self.store.iter_tasks(where)

    async def count(self, where: TaskFilter) -> int:
        return await self.store.count_tasks(where)

    async def events(self, task_id: int, customer_id: int | None) -> list[TaskEvent]:
        return await self.store.events(checked_id(task_id), customer_id=customer_id)

    async def sensor(self, serial: int, customer_id: int | None) -> SensorInfo:
        return await self.store.sensor(checked_id(serial, "sensor"), customer_id=customer_id)

    async def counts(self) -> tuple[dict[TaskStatus, int], int]:
        """Tasks per status and sensors online, for ``/metrics``."""
        return await self.store.counts(), await self.store.sensors_online()

    async def ping(self) -> None:
        """Raises (a database failure, see `store.engine.unavailable`) unless the database answers."""
        await self.store.ping()

    async def register_sensor(
        self, serial: int, customer_id: int | None, labels: Mapping[str, str] | None = None
    ) -> tuple[bool, MqttCredentials | None]:
        """Register a sensor (with `labels`, replacing its own) and issue (or rotate) its broker credentials."""
        return await self.accounts.register_sensor(checked_id(serial, "sensor"), customer_id, labels)

    async def relabel(self, serial: int, customer_id: int | None, patch: Mapping[str, str | None]) -> SensorInfo:
        """Merge `patch` into the sensor's labels (a null removes a key); the sensor as GET shows it."""
        await self.store.set_labels(
            checked_id(serial, "sensor"), customer_id=customer_id, labels_patch=check_patch(patch), now=utcnow()
        )
        return await self.sensor(serial, customer_id)

    async def sensors(
        self, customer_id: int | None, labels: Mapping[str, str], *, after_serial: int | None, limit: int
    ) -> tuple[list[ListedSensor], bool]:
        """A page of the customer's sensors carrying every label of `labels` (`labels.selector`), by serial."""
        return await self.store.list_sensors(
            customer_id=customer_id, labels=labels, after_serial=after_serial, limit=limit
        )

    async def remove_sensor(self, serial: int, customer_id: int | None) -> None:
        """Release a sensor: its broker account deleted, its Pending and Ongoing tasks cancelled."""
        await self.accounts.remove_sensor(checked_id(serial, "sensor"), customer_id)
        if self.dispatcher is not None:
            self.dispatcher.notify_outbox()

    async def create_once(
        self,
        key: str | None,
        customer_id: int | None,
        request: Callable[[], dict[str, Any]],
        bodies: Sequence[TaskCreate],
        answer: Answer,
    ) -> tuple[int, str]:
        """Create `bodies`' tasks and return `answer(tasks)`, (status, JSON), at most once per
        Idempotency-Key. `request()` is what the key is checked against, asked for only when
        there is a key (a bulk's 10,000 bodies dumped for nothing cost 6 % of its request).

        The same key with the same request returns the first answer again; with a different
        request it is a Conflict. Keys are per customer and remembered for 48 hours. The same
        request arriving twice at once (at two instances, say) runs once: the one that claims
        the key runs, the other waits for its answer. The answer is stored in the tasks' own
        transaction (`TaskStore.create_answering` calls `answer`), so a process killed or a
        connection lost right after the commit leaves the key answered, not claimed: a retry
        gets the first answer instead of creating the tasks again. A request that fails
        releases the key, so that a retry runs again.
        """
        if key is None:
            return answer(await self.create(bodies, customer_id))
        tenant = customer_id or 0
        digest = hashlib.sha256(json.dumps(request(), sort_keys=True, default=str).encode()).hexdigest()
        known = await self.store.remembered(tenant, key)  # a replay is answered by a read
        if known is None or known.status_code == IN_PROGRESS:

            async def create(claim: Claim) -> Remembered | None:
                with _fields_named(bodies):
                    answered = await self.store.create_answering(
                        claim, self._new(bodies), answer, customer_id=customer_id, now=utcnow()
                    )
                if answered is not None:
                    self._wake(bodies)
                return answered

            known = await self._claim_or_wait(tenant, key, digest, create)
        if known.request_hash != digest:
            raise Conflict(
                "Idempotency-Key was already used with a different request",
                details={"header": "Idempotency-Key"},
            )
        return known.status_code, known.response

    async def _claim_or_wait(
        self, tenant: int, key: str, digest: str, create: Callable[[Claim], Awaitable[Remembered | None]]
    ) -> Remembered:
        """Claim the key and run `create(claim)`, or wait while another request holds it: the
        answer either way (or the other request's claim, if it is for a different request). A
        Conflict when the other takes longer than `IDEMPOTENCY_WAIT_S`."""
        deadline = time.monotonic() + IDEMPOTENCY_WAIT_S
        pause = IDEMPOTENCY_FIRST_POLL_S
        while True:
            claim = Claim(tenant, key, digest, utcnow())
            known = await self.store.claim(
                tenant, key, digest, now=claim.claimed_at, keep=IDEMPOTENCY_KEEP, stale=IDEMPOTENCY_STALE
            )
            if known is None:
                known = await self._run_claimed(claim, create)
                if known is None:
                    continue  # taken over as stale while we ran, nothing created: the new holder answers
                return known
            if known.status_code != IN_PROGRESS or known.request_hash != digest:
                return known
            if time.monotonic() >= deadline:
                raise Conflict(
                    "a request with this Idempotency-Key is still being processed; retry it later",
                    details={"header": "Idempotency-Key"},
                )
            await asyncio.sleep(pause)
            pause = min(pause * 2, IDEMPOTENCY_LAST_POLL_S)

    async def _run_claimed(
        self, claim: Claim, create: Callable[[Claim], Awaitable[Remembered | None]]
    ) -> Remembered | None:
        """Run `create(claim)` for the key this request claimed; release the key if it fails."""
        try:
            return await create(claim)
        except BaseException:
            try:
                await self.store.release(claim)
            except Exception:
                log.exception(
                    "idempotency key %r of customer %s stays claimed for %s (cannot release it)",
                    claim.key,
                    claim.customer_id,
                    IDEMPOTENCY_STALE,
                )
            raise
