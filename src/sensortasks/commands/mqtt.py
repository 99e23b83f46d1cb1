"""``tasks/commands/{create|cancel|get}``: the REST operations over MQTT 5 request/response.

The request's payload is the REST body (``create``) or ``{"task_id": N}``, with ``"v": 1``;
the reply goes to the request's Response Topic with its Correlation Data. An
``idempotency-key`` user property makes a create safe to retry (a redelivered request
returns the first reply). The dispatcher has already checked the MQTT 5 properties
(`protocol.properties`); then, in this order:

1. No response topic: refused, unanswered (``response_topic_refused``). Nobody could learn
   the outcome, and a create that its sender never hears of is sent again as a duplicate.
2. A response topic in the protocol's own namespaces (sensors, ops, commands): refused,
   unanswered; a reply there would be read as protocol traffic.
3. With authentication on, the response topic must lie under the ``reply_topic_prefix`` of
   a backend account (the *reply account*: only it can read there). Otherwise: refused,
   unanswered, and the key is not even looked at.
4. Too many failed authentications for that reply account (`FailureLimiter`, keyed by the
   account the response topic names, since MQTT does not tell a subscriber who published):
   ``too_many_requests`` ("retry after N s"), without checking the key. Anyone who may
   publish commands can therefore spend an account's budget; the budget is per process.
5. The ``authorization: Bearer <key>`` user property must hold a valid API key: else
   ``unauthorized``, answered on the reply account's topic (a failure for the limiter).
6. The key's customer must own the reply account (the topic lies under one of its
   backend accounts' prefixes): else refused, unanswered (``response_topic_refused``) and
   a failure for the limiter. Replies never go to another customer's account.
7. An unknown verb is answered ``unknown_command``; then the payload, as over REST.

With ``SENSORTASKS_AUTH=disabled`` steps 3-6 are skipped: any valid response topic is
answered. Every refusal is counted and shown on ``ops/rejected`` with its code; failed
authentications are logged with at most the key's first 8 characters.
"""

from __future__ import annotations

import logging

from pydantic import ValidationError

from sensortasks.api.models import TaskPublic
from sensortasks.dispatcher import Dispatcher
from sensortasks.dispatcher.intake import Refused, summary
from sensortasks.dispatcher.link import Incoming
from sensortasks.errors import InvalidInput, SensortasksError
from sensortasks.protocol import MAX_PAYLOAD_BYTES
from sensortasks.protocol.commands import CommandCreate, CommandError, CommandReply, CommandTarget, Task
from sensortasks.protocol.messages import RejectCode
from sensortasks.protocol.properties import is_under
from sensortasks.protocol.topics import COMMAND_NAMES
from sensortasks.service.ratelimit import FailureLimiter
from sensortasks.service.tasks import TaskService
from sensortasks.store.accounts import ClientAccount, MqttClientStore
from sensortasks.store.engine import unavailable

log = logging.getLogger(__name__)

#: As the REST API's ``Idempotency-Key`` header.
MAX_IDEMPOTENCY_KEY_CHARS = 255
#: Characters of an API key that may appear in logs.
LOGGED_KEY_CHARS = 8


class CommandRefused(SensortasksError):
    """Refused before it ran: answered, and shown on ``ops/rejected`` under `reject`."""

    reject: RejectCode = "invalid_command"


class Unauthorized(CommandRefused):
    code = "unauthorized"
    reject = "unauthorized"


class UnknownCommand(CommandRefused):
    code = "unknown_command"
    reject = "unknown_command"


class TooManyRequests(CommandRefused):
    code = "too_many_requests"
    reject = "rate_limited"


class PayloadTooLarge(CommandRefused):
    code = "payload_too_large"
    reject = "oversized"


class Unanswered(SensortasksError):
    """Refused without a reply: there is nowhere the caller may be answered."""

    def __init__(self, reject: RejectCode, message: str) -> None:
        super().__init__(message)
        self.reject = reject


class CommandHandler:
    def __init__(self, service: TaskService, dispatcher: Dispatcher) -> None:
        self.service = service
        self.dispatcher = dispatcher
        self.clients = MqttClientStore(service.store.db)
        #: Failed authentications per reply account.
        self.limiter = FailureLimiter()

    async def __call__(self, message: Incoming) -> None:
        """Answer (or refuse) one command; never raises, never replies to an unchecked topic."""
        verb = message.topic.removeprefix(self.dispatcher.topics.commands + "/")[:32]
        answer_to: str | None = None
        reject: RejectCode | None = None
        try:
            answer_to, account = await self._reply_to(message)
            customer_id = await self._authenticate(verb, message, account)
            if verb not in COMMAND_NAMES:
                raise UnknownCommand(f"unknown command {verb!r}: use {', '.join(COMMAND_NAMES)}")
            reply = CommandReply(ok=True, task=await self._run(verb, message, customer_id))
        except Exception as exc:  # every failure is a refusal, never the end of the worker
            code, text, reject = self._failure(verb, exc)
            reply = CommandReply(ok=False, error=CommandError(code=code, message=text))
            if isinstance(exc, Unanswered):
                answer_to = None
            if answer_to is None and reject is None:
                reject = "internal_error"
            if reject is not None:
                await self.dispatcher.reject([Refused.of(message, reject, f"refused command {verb!r}: {text}")])
        if answer_to is None:
            return
        try:
            await self.dispatcher.link.publish(answer_to, reply.to_json(), correlation_data=message.correlation_data)
        except SensortasksError as exc:
            log.warning("could not reply to command %s: %s", verb, exc)

    @staticmethod
    def _failure(verb: str, exc: Exception) -> tuple[str, str, RejectCode | None]:
        """(reply code, message, rejection code or None) for what `exc` says of the request."""
        if isinstance(exc, Unanswered):
            return "", exc.message, exc.reject
        if isinstance(exc, ValidationError):
            return InvalidInput.code, summary(exc), "malformed"
        down = unavailable(exc)
        if down is not None:  # answered: the caller may retry
            log.warning("command %s: unavailable: %s", verb, exc)
            return down.code, down.message, None
        if not isinstance(exc, SensortasksError):
            log.error("command %s raised; refusing it", verb, exc_info=exc)
            return "internal_error", "internal error; the operators can see it on ops/rejected", "internal_error"
        log.info("command %s refused: %s", verb, exc.message)
        if isinstance(exc, CommandRefused):
            return exc.code, exc.message, exc.reject
        return exc.code, exc.message, "invalid_command" if isinstance(exc, InvalidInput) else None

    async def _reply_to(self, message: Incoming) -> tuple[str, ClientAccount | None]:
        """Steps 1-3 of the module docstring: where the reply may go, and the reply account."""
        topic = message.response_topic
        if topic is None:
            raise Unanswered("response_topic_refused", "no response topic: nobody could learn the outcome")
        topics = self.dispatcher.topics
        if any(is_under(topic, ours) for ours in (topics.sensors, topics.ops, topics.commands)):
            raise Unanswered("response_topic_refused", "response topic in a protocol namespace")
        if self.service.settings.auth == "disabled":
            return topic, None
        try:
            backends = await self.clients.accounts(kind="backend")
        except Exception as exc:
            if unavailable(exc) is None:
                raise
            raise Unanswered("unavailable", "database unavailable while checking the response topic") from exc
        holding = [a for a in backends if a.reply_topic_prefix and is_under(topic, a.reply_topic_prefix)]
        if not holding:
            raise Unanswered("response_topic_refused", "response topic under no backend account's reply prefix")
        if len({a.customer_id for a in holding}) > 1:
            raise Unanswered("response_topic_refused", "response topic readable by several customers' accounts")
        return topic, max(holding, key=lambda a: len(a.reply_topic_prefix or ""))

    async def _authenticate(self, verb: str, message: Incoming, account: ClientAccount | None) -> int | None:
        """Steps 4-6: the customer to act for (None when authentication is disabled)."""
        if account is None:
            return None
        retry_after = self.limiter.retry_after(account.username)
        if retry_after is not None:
            log.warning("command %s for reply account %s: rate limited", verb, account.username)
            raise TooManyRequests(f"too many failed authentications; retry after {retry_after} s")
        scheme, _, key = (message.user_property("authorization") or "").partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            self._failed(verb, account, "no API key", key)
            raise Unauthorized("missing API key: send the user property 'authorization: Bearer <key>'")
        principal = await self.service.keys.authenticate(key)
        if principal is None:
            self._failed(verb, account, "invalid API key", key)
            raise Unauthorized("invalid API key")
        prefixes = await self.clients.reply_prefixes(principal.customer_id)
        if not any(is_under(message.response_topic or "", prefix) for prefix in prefixes):
            self._failed(verb, account, f"a key of customer {principal.customer_id}, not the account's", key)
            raise Unanswered("response_topic_refused", "response topic of another customer's account")
        return principal.customer_id

    def _failed(self, verb: str, account: ClientAccount, what: str, key: str) -> None:
        self.limiter.failed(account.username)
        log.warning(
            "command %s for reply account %s: authentication failed (%s; key %r...)",
            verb,
            account.username,
            what,
            key[:LOGGED_KEY_CHARS],
        )

    async def _run(self, verb: str, message: Incoming, customer_id: int | None) -> Task:
        if len(message.payload) > MAX_PAYLOAD_BYTES:
            raise PayloadTooLarge(f"payload too large ({len(message.payload)} > {MAX_PAYLOAD_BYTES} bytes)")
        if verb == "create":
            body = CommandCreate.model_validate_json(message.payload)
            key = message.user_property("idempotency-key")
            if key is not None and not 0 < len(key) <= MAX_IDEMPOTENCY_KEY_CHARS:
                raise InvalidInput(f"idempotency-key must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} characters")

            _, created = await self.service.create_once(
                key,
                customer_id,
                lambda: {"path": "tasks/commands/create", "body": body.model_dump(mode="json")},
                [body],
                lambda tasks: (201, TaskPublic.of(tasks[0]).model_dump_json()),
            )
            return Task.model_validate_json(created)
        target = CommandTarget.model_validate_json(message.payload)
        if verb == "cancel":
            task = await self.service.cancel(target.task_id, customer_id)
        else:
            task = await self.service.get(target.task_id, customer_id)
        return TaskPublic.of(task)
