"""``/v1/mqtt-clients``: a customer's broker accounts for the MQTT command topics."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response

from sensortasks.api import examples
from sensortasks.api.deps import CustomerId, State
from sensortasks.api.models import MqttClientCreate, MqttClientCreated, MqttClientPublic, MqttClientsPublic
from sensortasks.api.responses import V1, error, errors, ok

router = APIRouter(prefix="/v1/mqtt-clients", tags=["mqtt-clients"])
Username = Annotated[str, Path(description="The account's username (`backend-<10 hex>`).", max_length=64)]
_NOT_FOUND = error(
    404,
    "No such account, or another customer's.",
    examples.error("not_found", "MQTT client 'backend-3f9a1c07e2' not found"),
)
_NOT_CONFIGURED = error(
    409,
    "No broker admin is configured (`SENSORTASKS_BROKER_ADMIN_URL`): no broker account can be issued.",
    examples.error("not_configured", "no broker admin is configured (SENSORTASKS_BROKER_ADMIN_URL)"),
)


@router.post(
    "",
    status_code=201,
    summary="Issue a backend account for the command topics",
    responses={
        201: ok("The new account; its password is shown only here.", examples.MQTT_CLIENT_CREATED),
        **errors(*V1, 400, 422),
        409: _NOT_CONFIGURED,
    },
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


@router.get(
    "",
    summary="The caller's backend accounts (no passwords)",
    responses={200: ok("The accounts, oldest first.", examples.MQTT_CLIENTS), **errors(*V1, 422)},
)
async def list_mqtt_clients(state: State, customer_id: CustomerId) -> MqttClientsPublic:
    accounts = await state.service.accounts.clients_of(customer_id)
    return MqttClientsPublic(data=[MqttClientPublic.of(a) for a in accounts])


@router.get(
    "/{username}",
    summary="One of the caller's backend accounts",
    responses={200: ok("The account.", examples.MQTT_CLIENT), **errors(*V1, 422), 404: _NOT_FOUND},
)
async def get_mqtt_client(username: Username, state: State, customer_id: CustomerId) -> MqttClientPublic:
    return MqttClientPublic.of(await state.service.accounts.client(username, customer_id))


@router.delete(
    "/{username}",
    status_code=204,
    summary="Delete a backend account",
    responses={204: {"description": "Deleted."}, **errors(*V1, 422), 404: _NOT_FOUND, 409: _NOT_CONFIGURED},
)
async def delete_mqtt_client(username: Username, state: State, customer_id: CustomerId) -> Response:
    """The broker account is deleted and disconnected at once. Another customer's is a 404.
    503 when the broker cannot be reached: nothing changed, retry."""
    await state.service.accounts.remove_client(username, customer_id)
    return Response(status_code=204)
