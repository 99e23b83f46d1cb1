"""``/v1/mqtt-clients``: a customer's broker accounts for the MQTT command topics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from sensortasks.api.deps import CustomerId, State
from sensortasks.api.models import (
    ErrorResponse,
    MqttClientCreate,
    MqttClientCreated,
    MqttClientPublic,
    MqttClientsPublic,
)

router = APIRouter(prefix="/v1/mqtt-clients", tags=["mqtt-clients"])


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorResponse} for code in (401, 422, *codes)}


@router.post(
    "", status_code=201, summary="Issue a backend account for the command topics", responses=_errors(400, 409, 503)
)
async def create_mqtt_client(
    state: State,
    customer_id: CustomerId,
    body: MqttClientCreate | None = None,  # noqa: ARG001  (validated: {} or nothing)
) -> MqttClientCreated:
    """A new broker account of the caller's, ``backend-<10 hex>``, bound to that client id: it may
    publish ``tasks/commands/+`` (the commands act for the caller) and read only
    ``reply_topic_prefix/#``; send commands with a response topic under that prefix. The
    password is shown only here. 409 (``not_configured``) when no broker admin is configured;
    503 when the broker cannot be reached (nothing is kept: retry)."""
    issued = await state.service.accounts.add_client("backend", customer_id=customer_id)
    public = MqttClientPublic.of(issued.account)
    return MqttClientCreated(**public.model_dump(), password=issued.credentials.password)


@router.get("", summary="The caller's backend accounts (no passwords)")
async def list_mqtt_clients(state: State, customer_id: CustomerId) -> MqttClientsPublic:
    accounts = await state.service.accounts.clients_of(customer_id)
    return MqttClientsPublic(data=[MqttClientPublic.of(a) for a in accounts])


@router.get("/{username}", summary="One of the caller's backend accounts", responses=_errors(404))
async def get_mqtt_client(username: str, state: State, customer_id: CustomerId) -> MqttClientPublic:
    return MqttClientPublic.of(await state.service.accounts.client(username, customer_id))


@router.delete("/{username}", status_code=204, summary="Delete a backend account", responses=_errors(404, 409, 503))
async def delete_mqtt_client(username: str, state: State, customer_id: CustomerId) -> Response:
    """The broker account is deleted and disconnected at once. Another customer's is a 404.
    503 when the broker cannot be reached: nothing changed, retry."""
    await state.service.accounts.remove_client(username, customer_id)
    return Response(status_code=204)
