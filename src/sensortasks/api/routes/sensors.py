"""``/v1/sensors``: register and remove sensors; what the dispatcher knows of one."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response

from sensortasks.api import examples
from sensortasks.api.deps import CustomerId, State
from sensortasks.api.models import MqttAccount, SensorCreate, SensorPublic, SensorRegistered
from sensortasks.api.responses import V1, error, errors, ok

router = APIRouter(prefix="/v1/sensors", tags=["sensors"])

#: Not a bound: a serial no sensor has (however large) is a 404, not a 422.
SerialPath = Annotated[int, Path(description="The sensor's serial number.", examples=[examples.SERIAL])]
_NOT_FOUND = error(
    404,
    "No such sensor, or it belongs to another customer.",
    examples.error("not_found", f"sensor {examples.SERIAL} not found"),
)


@router.post(
    "",
    status_code=201,
    summary="Register a sensor and issue its broker credentials",
    responses={
        201: ok("Registered to you; its broker credentials, shown only here.", examples.SENSOR_REGISTERED),
        200: {
            "model": SensorRegistered,
            **ok("Already registered to you: its password is rotated.", examples.SENSOR_REGISTERED),
        },
        **errors(*V1, 400, 422),
        409: error(
            409,
            "The sensor is registered to another customer.",
            examples.error("conflict", f"sensor {examples.SERIAL} is registered to another customer"),
        ),
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


@router.delete(
    "/{serial}",
    status_code=204,
    summary="Remove a sensor",
    responses={204: {"description": "Removed."}, **errors(*V1, 422), 404: _NOT_FOUND},
)
async def remove_sensor(serial: SerialPath, state: State, customer_id: CustomerId) -> Response:
    """Its broker account is deleted (and disconnected) at once, then its Pending and Ongoing
    tasks are cancelled. 503 when the broker cannot be reached: nothing changed, retry."""
    await state.service.remove_sensor(serial, customer_id)
    return Response(status_code=204)


@router.get(
    "/{serial}",
    summary="Presence, the task in flight and the queue of a sensor",
    responses={
        200: ok("What the dispatcher knows of the sensor.", examples.SENSOR),
        **errors(*V1, 422),
        404: _NOT_FOUND,
    },
)
async def get_sensor(serial: SerialPath, state: State, customer_id: CustomerId) -> SensorPublic:
    return SensorPublic.of(await state.service.sensor(serial, customer_id))
