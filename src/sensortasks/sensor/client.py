"""The sensor side of protocol v1: one MQTT 5 connection that receives tasks and reports status.

Device code supplies an async handler; the SDK owns the protocol rules (SPEC 4) so that every
device answers re-sends, cancels and reconnects the same way.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Coroutine
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

import aiomqtt
from paho.mqtt import client as paho
from paho.mqtt.subscribeoptions import SubscribeOptions
from pydantic import ValidationError

from sensortasks.mqtt import Backoff, MqttTarget, refusal
from sensortasks.mqtt.loop import Connection, new_paho_client
from sensortasks.protocol import (
    MAX_PAYLOAD_BYTES,
    CancelMessage,
    Presence,
    StatusReport,
    TaskMessage,
    Topics,
    parse_sensor_command,
)
from sensortasks.protocol.messages import MAX_ERROR_CHARS
from sensortasks.sensor.job import Handler, Job, TaskFailed
from sensortasks.sensor.ledger import Decision, Ledger, Verdict

logger = logging.getLogger(__name__)

_PRESENCE_TIMEOUT_S = 5.0
_PUBLISH_RETRY_PAUSE_S = 0.2
#: How long connect and subscribe wait for the broker, and a publish for its PUBACK (a publish
#: caught by a disconnection fails at once; a silent broker keeps it this long, so keep it short).
_PUBLISH_ATTEMPT_TIMEOUT_S = 10.0
#: The MQTT keepalive (aiomqtt's default, which the AsyncAPI document gives for the sensors).
_KEEPALIVE_S = 60


@dataclass(frozen=True, slots=True)
class SensorOptions:
    """Where the broker is and how patient the sensor is; the defaults suit a local Mosquitto.

    `client_id` is the MQTT client identifier; the default, ``sensor-<serial>``, is the one
    registration binds the sensor's broker account to (the broker refuses any other).
    `publish_wait_s` bounds how long a report waits for a reconnection before it is dropped
    (the dispatcher's re-send recovers it). `remember` is how many finished tasks keep their
    final status for re-sends.
    """

    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = None
    client_id: str | None = None
    tls_context: ssl.SSLContext | None = None
    topics: Topics = field(default_factory=Topics)
    reconnect_backoff_s: float = 0.5
    reconnect_backoff_max_s: float = 10.0
    session_expiry_s: int = 3600
    publish_wait_s: float = 60.0
    remember: int = 1000


@dataclass(slots=True)
class _Run:
    """A run in progress, as the ledger keeps it: the job and the asyncio task running it."""

    job: Job
    task: asyncio.Task[None] | None = None


class SensorClient:
    """A sensor's MQTT session: receives its tasks, runs `handler` for each, reports status.

    Status reports are idempotent (task id + attempt), so the SDK re-publishes rather than
    risk losing one: reports wait for a reconnection, and a re-sent task gets its last
    known status again.
    """

    def __init__(self, serial: int, handler: Handler, options: SensorOptions | None = None) -> None:
        """Configure the sensor; nothing connects until `run()` or `start()`."""
        if serial <= 0:
            msg = f"serial must be positive, got {serial}"
            raise ValueError(msg)
        self.serial = serial
        self.options = options = options or SensorOptions()
        self.client_id = options.client_id or f"sensor-{serial}"
        self._handler = handler
        self._topics = options.topics
        self._target = MqttTarget(
            options.host, options.port, options.username, options.password, tls=options.tls_context is not None
        )
        self._backoff = Backoff(options.reconnect_backoff_s, options.reconnect_backoff_max_s)

        #: Set while subscribed and announced online; cleared on any disconnection.
        self.connected = asyncio.Event()
        #: Valid commands received on the task topic (tasks, re-sends and cancels).
        self.received_count = 0

        self._connection: Connection | None = None
        self._ledger: Ledger[_Run] = Ledger(options.remember)
        self._replies: set[asyncio.Task[Any]] = set()
        self._stop_requested = asyncio.Event()
        self._active = False
        self._connected_once = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._run_task: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------
    async def run(self) -> None:
        """Stay connected until `stop()`: reconnect with exponential backoff on any MQTT error."""
        if self._active:
            msg = f"sensor {self.serial} is already running"
            raise RuntimeError(msg)
        self._active = True
        self._idle.clear()
        self._stop_requested.clear()
        self._backoff.reset()
        try:
            while not self._stop_requested.is_set():
                try:
                    await self._session()
                except aiomqtt.MqttError as exc:
                    if self._stop_requested.is_set():
                        break
                    if not self._connected_once and refusal(exc) is not None:
                        raise  # wrong credentials or client id: no retry fixes that (start() says so)
                    delay = self._backoff.next()
                    logger.warning(
                        "sensor %s: connection lost (%s), reconnecting in %.1f s",
                        self.serial,
                        exc,
                        delay,
                    )
                    await self._sleep_unless_stopped(delay)
        finally:
            await self._cancel_all()
            self._active = False
            self._idle.set()

    async def stop(self) -> None:
        """Announce offline, disconnect cleanly and wait until `run()` has returned."""
        self._stop_requested.set()
        task = self._run_task
        if task is not None and not task.done() and not self._active:
            task.cancel()  # created by start() but never ran: it would ignore the stop flag
        if task is not None:
            self._run_task = None
            try:
                await task
            except asyncio.CancelledError:
                if not task.cancelled():
                    raise
        await self._idle.wait()

    async def start(self, timeout: float | None = 30.0) -> None:
        """Run in a background task and wait until connected.

        Raises TimeoutError (after stopping) if the broker cannot be reached in `timeout` s.
        """
        if self._run_task is None or self._run_task.done():
            self._run_task = asyncio.create_task(self.run(), name=f"sensor-{self.serial}")
        running = self._run_task
        connected = asyncio.create_task(self.connected.wait())
        try:
            await asyncio.wait({connected, running}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            connected.cancel()
        if self.connected.is_set():
            return
        await self.stop()  # re-raises whatever ended run() early
        msg = f"sensor {self.serial} could not connect to {self.options.host}:{self.options.port} in {timeout} s"
        raise TimeoutError(msg)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- publishing --------------------------------------------------------
    async def publish_status(self, report: StatusReport) -> bool:
        """Publish a status report at QoS 1, waiting (bounded) for a connection.

        Returns False if it was not confirmed within `publish_wait_s`.
        """
        return await self._publish(self._topics.status(self.serial), report.to_json())

    async def _publish(self, topic: str, payload: bytes) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.publish_wait_s
        while (remaining := deadline - loop.time()) > 0:
            connection = self._connection
            if connection is None or not self.connected.is_set():
                try:
                    async with asyncio.timeout(remaining):
                        await self.connected.wait()
                except TimeoutError:
                    break
                continue
            message = (topic, payload, 1, False, None)
            if await connection.publish([message], 1, min(remaining, _PUBLISH_ATTEMPT_TIMEOUT_S)):
                return True
            # No PUBACK in time means "maybe delivered"; a broken connection is noticed by
            # run(). Either way re-publishing is safe because reports are idempotent.
            logger.debug("sensor %s: publish to %s failed (%s), retrying", self.serial, topic, connection.problem())
            await asyncio.sleep(_PUBLISH_RETRY_PAUSE_S)
        logger.warning(
            "sensor %s: gave up publishing to %s after %.0f s",
            self.serial,
            topic,
            self.options.publish_wait_s,
        )
        return False

    # -- connection --------------------------------------------------------
    def _make_connection(self) -> Connection:
        options = self.options
        will = aiomqtt.Will(
            topic=self._topics.presence(self.serial), payload=Presence(online=False).to_json(), qos=1, retain=True
        )
        client = new_paho_client(
            self._target,
            identifier=self.client_id,
            timeout_s=_PUBLISH_ATTEMPT_TIMEOUT_S,
            ssl_context=options.tls_context,
            will=will,
        )
        return Connection(client, self._on_message, timeout_s=_PUBLISH_ATTEMPT_TIMEOUT_S)

    async def _session(self) -> None:
        """One connection: subscribe, announce online, serve until stopped or disconnected.

        Commands arrive in paho's callback (`_on_message`), on the loop, from the CONNACK
        on; what they publish waits for `connected`."""
        options = self.options
        connection = self._make_connection()
        presence = self._topics.presence(self.serial)
        stopper: asyncio.Future[Any] | None = None
        try:
            await connection.open(self._target, keepalive_s=_KEEPALIVE_S, session_expiry_s=options.session_expiry_s)
            self._connection = connection
            await connection.subscribe([(self._topics.tasks(self.serial), SubscribeOptions(qos=1))])
            if not await connection.publish([(presence, Presence(online=True).to_json(), 1, True, None)], 1):
                raise aiomqtt.MqttError(f"presence not acknowledged: {connection.problem()}")
            self._backoff.reset()
            self.connected.set()
            self._connected_once = True
            logger.info("sensor %s: connected to %s:%s", self.serial, options.host, options.port)
            stopper = asyncio.ensure_future(self._stop_requested.wait())
            await asyncio.wait({connection.lost, stopper}, return_when=asyncio.FIRST_COMPLETED)
            self.connected.clear()  # running jobs hold their reports until run() cancels them
            if connection.lost.done():
                raise aiomqtt.MqttError(connection.lost.result())
            await self._say_offline(connection, presence)
            await connection.disconnect()
        except asyncio.CancelledError:
            self.connected.clear()
            if self._connection is not None:
                await self._say_offline(connection, presence)
            raise
        finally:
            if stopper is not None:
                stopper.cancel()
            self.connected.clear()
            self._connection = None
            connection.close()

    async def _say_offline(self, connection: Connection, presence: str) -> None:
        """Best effort: a clean disconnect does not fire the will, so say it ourselves."""
        offline = Presence(online=False).to_json()
        if not await connection.publish([(presence, offline, 1, True, None)], 1, _PRESENCE_TIMEOUT_S):
            logger.warning("sensor %s: could not publish offline presence (%s)", self.serial, connection.problem())

    async def _sleep_unless_stopped(self, delay: float) -> None:
        try:
            async with asyncio.timeout(delay):
                await self._stop_requested.wait()
        except TimeoutError:
            pass

    # -- commands ----------------------------------------------------------
    def _on_message(self, _client: paho.Client, _userdata: object, message: paho.MQTTMessage) -> None:
        """Apply one command (paho's callback, on the loop): synchronous, so no other message
        interleaves with it, and acknowledged (PUBACK) once it returns."""
        payload = bytes(message.payload)  # bytes already, so no copy (typed bytes | bytearray)
        if len(payload) > MAX_PAYLOAD_BYTES:
            logger.warning("sensor %s: dropped an oversized payload on %s", self.serial, message.topic)
            return
        try:
            command = parse_sensor_command(payload)
        except ValidationError as exc:
            logger.warning(
                "sensor %s: dropped an invalid command on %s: %s",
                self.serial,
                message.topic,
                exc.errors(include_url=False, include_input=False),
            )
            return
        self.received_count += 1
        self._on_command(command)

    def _on_command(self, command: TaskMessage | CancelMessage) -> None:
        """Apply one valid command (a hook: the simulator's silent sensors and the tests' recording
        ones override it)."""
        if isinstance(command, CancelMessage):
            self._on_cancel(command)
        else:
            self._on_task(command)

    def _on_task(self, message: TaskMessage) -> None:
        task_id, attempt = message.task_id, message.attempt
        decision = self._ledger.on_task(task_id, attempt)
        match decision:
            case Decision(verdict=Verdict.CANCELLED):
                logger.info("sensor %s: task %s was cancelled, ignoring it", self.serial, task_id)
                return
            case Decision(verdict=Verdict.STALE):
                logger.info("sensor %s: stale attempt %s of task %s ignored", self.serial, attempt, task_id)
                return
            case Decision(verdict=Verdict.FINAL_AGAIN, report=StatusReport() as report):
                self._reply(report)  # a re-send: the dispatcher missed our final status
                return
            case Decision(verdict=Verdict.ONGOING_AGAIN, run=_Run() as running):
                self._reply(running.job.ongoing_report())
                return
            case Decision(verdict=Verdict.REPLACE, run=_Run() as old):
                logger.info(
                    "sensor %s: attempt %s of task %s replaces attempt %s",
                    self.serial,
                    attempt,
                    task_id,
                    old.job.attempt,
                )
                self._abort(old)
        run = _Run(Job(message, self.publish_status))
        run.task = asyncio.create_task(self._execute(run), name=f"sensor-{self.serial}-task-{task_id}")
        self._ledger.start(task_id, attempt, run)

    def _on_cancel(self, message: CancelMessage) -> None:
        run = self._ledger.on_cancel(message.task_id)
        if run is not None:
            self._abort(run)
            logger.info("sensor %s: task %s cancelled while running", self.serial, message.task_id)

    @staticmethod
    def _abort(run: _Run) -> asyncio.Task[None] | None:
        run.job.cancelled.set()
        if run.task is not None:
            run.task.cancel()
        return run.task

    def _reply(self, report: StatusReport) -> None:
        self._spawn(self.publish_status(report))

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(coro)
        self._replies.add(task)
        task.add_done_callback(self._replies.discard)

    async def _execute(self, run: _Run) -> None:
        """Acknowledge, run the handler, then report its outcome (nothing if cancelled)."""
        job = run.job
        report: StatusReport | None = None
        try:
            await self.publish_status(job.ongoing_report())
            try:
                result = await self._handler(job)
                report = StatusReport(task_id=job.task_id, attempt=job.attempt, status="completed", result=result)
                report.to_json()  # a result that cannot be sent is the handler's error
            except TaskFailed as exc:
                report = self._error_report(job, exc.message, retryable=exc.retryable)
            except Exception as exc:
                logger.exception("sensor %s: handler failed on task %s", self.serial, job.task_id)
                report = self._error_report(job, str(exc) or type(exc).__name__, retryable=True)
        finally:
            current = self._ledger.finish(job.task_id, run, report)
        if not current or report is None:
            return  # replaced or cancelled (the handler swallowed it): the dispatcher has moved on
        await self.publish_status(report)

    @staticmethod
    def _error_report(job: Job, error: str, *, retryable: bool) -> StatusReport:
        return StatusReport(
            task_id=job.task_id,
            attempt=job.attempt,
            status="error",
            error=error[:MAX_ERROR_CHARS],
            retryable=retryable,
        )

    async def _cancel_all(self) -> None:
        """Stop device work and pending replies; the dispatcher re-sends when we return."""
        tasks: list[asyncio.Task[Any]] = [*self._replies]
        for run in self._ledger.drop_runs():
            if (task := self._abort(run)) is not None:
                tasks.append(task)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
