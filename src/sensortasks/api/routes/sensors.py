"""``/v1/sensors``: what the dispatcher knows of a sensor."""

from __future__ import annotations

from fastapi import APIRouter

from sensortasks.api.deps import CustomerId, State
from sensortasks.api.models import ErrorResponse, SensorPublic
from sensortasks.api.service import checked_id

router = APIRouter(prefix="/v1/sensors", tags=["sensors"])


@router.get(
    "/{serial}",
    summary="Presence, the task in flight and the queue of a sensor",
    responses={code: {"model": ErrorResponse} for code in (401, 404, 422)},
)
async def get_sensor(serial: int, state: State, customer_id: CustomerId) -> SensorPublic:
    return SensorPublic.of(await state.store.sensor(checked_id(serial, "sensor"), customer_id=customer_id))
