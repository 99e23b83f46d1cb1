"""``/v1/sensors``: register and remove sensors; what the dispatcher knows of one."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from sensortasks.api.deps import CustomerId, State
from sensortasks.api.models import ErrorResponse, MqttAccount, SensorCreate, SensorPublic, SensorRegistered
from sensortasks.api.service import checked_id

router = APIRouter(prefix="/v1/sensors", tags=["sensors"])


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorResponse} for code in (401, 422, *codes)}


@router.post(
    "",
    status_code=201,
    summary="Register a sensor and issue its broker credentials",
    responses={
        **_errors(400, 409, 503),
        200: {"model": SensorRegistered, "description": "Already registered to you: the password is rotated"},
    },
)
async def register_sensor(
    body: SensorCreate, state: State, customer_id: CustomerId, response: Response
) -> SensorRegistered:
    """201 for a new registration, 200 when the sensor was already yours: its password is rotated
    (the old one stops working, a connected sensor is disconnected) and it keeps its client id,
    ``sensor-<serial>``. The password is shown only here. Requests that overlap get the same
    answer. A sensor registered to another customer is a 409. 503 when the broker cannot be
    reached: a new registration is not kept, so retry."""
    created, credentials = await state.service.register_sensor(body.serial, customer_id)
    response.status_code = 201 if created else 200
    account = (
        MqttAccount(username=credentials.username, password=credentials.password, client_id=credentials.client_id)
        if credentials
        else None
    )
    return SensorRegistered(serial=body.serial, mqtt=account)


@router.delete("/{serial}", status_code=204, summary="Remove a sensor", responses=_errors(404, 503))
async def remove_sensor(serial: int, state: State, customer_id: CustomerId) -> Response:
    """Its broker account is deleted (and disconnected) at once, then its Pending and Ongoing
    tasks are cancelled. 503 when the broker cannot be reached: nothing changed, retry."""
    await state.service.remove_sensor(serial, customer_id)
    return Response(status_code=204)


@router.get("/{serial}", summary="Presence, the task in flight and the queue of a sensor", responses=_errors(404))
async def get_sensor(serial: int, state: State, customer_id: CustomerId) -> SensorPublic:
    return SensorPublic.of(await state.store.sensor(checked_id(serial, "sensor"), customer_id=customer_id))
