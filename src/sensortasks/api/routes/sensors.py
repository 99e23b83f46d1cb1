"""``/v1/sensors``: register, label, list and remove sensors; what the dispatcher knows of one."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response

from sensortasks.api import examples
from sensortasks.api.deps import CustomerId, Glance, State
from sensortasks.api.glance_models import SENSOR_COUNT, SensorCount
from sensortasks.api.models import (
    MqttAccount,
    SensorCreate,
    SensorLabelsPatch,
    SensorListed,
    SensorPublic,
    SensorRegistered,
    SensorsPublic,
)
from sensortasks.api.params import decode_cursor, encode_cursor
from sensortasks.api.responses import V1, error, errors, ok
from sensortasks.labels import MAX_LABELS, selector

router = APIRouter(prefix="/v1/sensors", tags=["sensors"])

#: Not a bound: a serial no sensor has (however large) is a 404, not a 422.
SerialPath = Annotated[int, Path(description="The sensor's serial number.", examples=[examples.SERIAL])]
_NOT_FOUND = error(
    404,
    "No such sensor, or it belongs to another customer.",
    examples.error("not_found", f"sensor {examples.SERIAL} not found"),
)
LabelQuery = Annotated[
    list[str],
    Query(
        max_length=MAX_LABELS,
        description="Only sensors carrying this label, as `key:value` (the first `:` splits; "
        "`region:` for an empty value). Repeat it: every label given must match.",
        examples=[["region:eu-west", "ring:canary"]],
    ),
]
_BAD_SELECTOR = error(422, "A parameter fails validation; a bad `label` names `label`.", examples.SELECTOR_INVALID)
_BAD_LABEL = error(422, "The request fails validation; a label that breaks the rules names `labels.<key>`.",
                   examples.LABEL_INVALID)  # fmt: skip


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
        **errors(*V1, 400),
        422: _BAD_LABEL,
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
    answer. `labels`, if given, replace the sensor's. A sensor registered to another customer
    is a 409. 503 when the broker cannot be reached: a new registration is not kept, so retry."""
    created, credentials = await state.service.register_sensor(body.serial, customer_id, body.labels)
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
    "/count",
    summary="Count your sensors, optionally by label",
    responses={200: ok("How many match.", SENSOR_COUNT), **errors(*V1), 422: _BAD_SELECTOR},
)
async def count_sensors(
    glance: Glance,
    customer_id: CustomerId,
    label: LabelQuery = [],  # noqa: B006 (FastAPI copies a list default per request)
) -> SensorCount:
    """The sensors `GET /v1/sensors` with the same `label`s lists, counted: what a rollout's
    `selector` of these labels would target if it started now."""
    return SensorCount(count=await glance.count_sensors(customer_id, selector(label)))


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


@router.patch(
    "/{serial}",
    summary="Set or remove some of a sensor's labels",
    responses={
        200: ok("The sensor with its new labels, as `GET` shows it.", examples.SENSOR_RELABELLED),
        **errors(*V1, 400),
        422: _BAD_LABEL,
        404: _NOT_FOUND,
    },
)
async def relabel_sensor(
    serial: SerialPath, body: SensorLabelsPatch, state: State, customer_id: CustomerId
) -> SensorPublic:
    """A JSON Merge Patch of `labels`: `{"labels": {"ring": "canary", "hw/rev": null}}` sets `ring`,
    removes `hw/rev` and keeps the others. A label that breaks the rules, or more than 32 after
    the patch, is a 422 that changes nothing."""
    return SensorPublic.of(await state.service.relabel(serial, customer_id, body.labels))


@router.get(
    "",
    summary="List your sensors, by serial, optionally by label",
    responses={
        200: ok("A page of sensors.", examples.SENSOR_LIST),
        **errors(*V1),
        422: _BAD_SELECTOR,
    },
)
async def list_sensors(
    state: State,
    customer_id: CustomerId,
    label: LabelQuery = [],  # noqa: B006 (FastAPI copies a list default per request)
    limit: Annotated[int, Query(ge=1, le=1000, description="Sensors per page, 1-1000.")] = 100,
    cursor: Annotated[str | None, Query(max_length=200, description="`next_cursor` of the previous page")] = None,
) -> SensorsPublic:
    after = decode_cursor(cursor) if cursor else None
    rows, has_more = await state.service.sensors(customer_id, selector(label), after_serial=after, limit=limit)
    next_cursor = encode_cursor(rows[-1].serial) if has_more and rows else None
    return SensorsPublic(data=[SensorListed.of(s) for s in rows], has_more=has_more, next_cursor=next_cursor)
