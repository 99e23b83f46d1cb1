"""``tasks/commands/{create|cancel|get}``: the REST operations over MQTT 5 request/response.

The request's payload is the REST body (``create``) or ``{"task_id": N}``; the reply goes to
the request's Response Topic with its Correlation Data. Authentication: an ``authorization``
user property (``Bearer <key>``), as over HTTP. An ``idempotency-key`` user property makes a
create safe to retry (a redelivered request returns the first reply).
"""

from __future__ import annotations

import json
import logging
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy.exc import SQLAlchemyError

from sensortasks.api.models import TaskCreate, TaskPublic
from sensortasks.api.service import MAX_ID, TaskService
from sensortasks.dispatcher import Dispatcher
from sensortasks.dispatcher.link import Incoming
from sensortasks.errors import InvalidInput, SensortasksError, Unavailable
from sensortasks.protocol import MAX_PAYLOAD_BYTES, CommandReply
from sensortasks.protocol.messages import CommandError

log = logging.getLogger(__name__)


class CommandCreate(TaskCreate):
    """The REST create body; ``"v": 1`` may be given, as on every protocol message."""

    model_config = ConfigDict(extra="forbid")

    v: Annotated[int, Field(ge=1, le=1, strict=True)] = 1


class CommandTarget(BaseModel):
    model_config = ConfigDict(extra="forbid")

    v: Annotated[int, Field(ge=1, le=1, strict=True)] = 1
    task_id: Annotated[int, Field(gt=0, le=MAX_ID, strict=True)]


class Unauthorized(SensortasksError):
    code = "unauthorized"


class CommandHandler:
    def __init__(self, service: TaskService, dispatcher: Dispatcher) -> None:
        self.service = service
        self.dispatcher = dispatcher

    async def __call__(self, message: Incoming) -> None:
        name = self.dispatcher.topics.parse_command(message.topic)
        try:
            reply = CommandReply(ok=True, task=await self._run(name or "", message))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "payload"
            reply = self._refuse(message, InvalidInput(f"{where}: {first['msg']}"))
            await self.dispatcher.reject(
                [(message.topic, message.payload, f"invalid command: {where}: {first['msg']}")]
            )
        except (InvalidInput, Unauthorized) as exc:
            reply = self._refuse(message, exc)
            await self.dispatcher.reject([(message.topic, message.payload, f"refused command: {exc.message}")])
        except SensortasksError as exc:
            reply = self._refuse(message, exc)
        except SQLAlchemyError as exc:  # never let a database failure stop the dispatcher
            log.warning("command on %s failed: %s", message.topic, exc)
            reply = self._refuse(message, Unavailable("database unavailable; retry the request"))
        if message.response_topic:
            try:
                await self.dispatcher.link.publish(
                    message.response_topic, reply.to_json(), correlation_data=message.correlation_data
                )
            except Unavailable:
                log.warning("could not reply to %s on %s", message.topic, message.response_topic)

    @staticmethod
    def _refuse(message: Incoming, exc: SensortasksError) -> CommandReply:
        log.info("command on %s refused: %s", message.topic, exc.message)
        return CommandReply(ok=False, error=CommandError(code=exc.code, message=exc.message))

    async def _customer(self, message: Incoming) -> int | None:
        if self.service.settings.auth == "disabled":
            return None
        header = message.user_property("authorization") or ""
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key:
            raise Unauthorized("missing API key: send the user property 'authorization: Bearer <key>'")
        principal = await self.service.keys.authenticate(key.strip())
        if principal is None:
            raise Unauthorized("invalid API key")
        return principal.customer_id

    async def _run(self, name: str, message: Incoming) -> dict[str, Any]:
        if len(message.payload) > MAX_PAYLOAD_BYTES:
            raise InvalidInput(f"payload too large ({len(message.payload)} > {MAX_PAYLOAD_BYTES} bytes)")
        customer_id = await self._customer(message)
        if name == "create":
            body = CommandCreate.model_validate_json(message.payload)

            async def create() -> tuple[int, str]:
                (task,) = await self.service.create([body], customer_id)
                return 201, TaskPublic.of(task).model_dump_json()

            request = {"path": "tasks/commands/create", "body": body.model_dump(mode="json")}
            key = message.user_property("idempotency-key")
            _, created = await self.service.create_once(key, customer_id, request, create)
            return dict(json.loads(created))
        target = CommandTarget.model_validate_json(message.payload)
        if name == "cancel":
            task = await self.service.cancel(target.task_id, customer_id)
        else:
            task = await self.service.get(target.task_id, customer_id)
        return TaskPublic.of(task).model_dump(mode="json")


def install_commands(dispatcher: Dispatcher, service: TaskService) -> None:
    dispatcher.on_command = CommandHandler(service, dispatcher)
