"""Operations: ``/healthz`` and ``/metrics``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from sensortasks.api import examples
from sensortasks.api.deps import State
from sensortasks.api.models import HealthPublic
from sensortasks.api.responses import OPS, errors, ok
from sensortasks.store.engine import unavailable

router = APIRouter(tags=["operations"])
#: For probes and scrapers: no API key.
OPEN: dict[str, Any] = {"security": []}


@router.get(
    "/healthz",
    summary="200 when the database and the broker connection are up, else 503",
    response_model=HealthPublic,
    responses={
        200: ok("Healthy.", examples.HEALTH_OK),
        503: {"model": HealthPublic, **ok("The database or the broker connection is down.", examples.HEALTH_DOWN)},
        **errors(*OPS),
    },
    openapi_extra=OPEN,
)
async def healthz(state: State) -> JSONResponse:
    try:
        await state.service.ping()
        database = "up"
    except Exception as exc:
        if unavailable(exc) is None:
            raise
        database = "down"
    dispatcher = state.dispatcher
    broker = "n/a" if dispatcher is None else ("up" if dispatcher.connected else "down")
    healthy = database == "up" and broker != "down"
    body = {"status": "ok" if healthy else "unavailable", "database": database, "broker": broker}
    return JSONResponse(body, status_code=200 if healthy else 503)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={
        200: {
            "description": "The Prometheus text exposition format.",
            "content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}, "example": examples.METRICS}},
        },
        **errors(*OPS, 503),
    },
    openapi_extra=OPEN,
)
async def metrics(state: State) -> Response:
    counts, online = await state.service.counts()
    dispatcher = state.dispatcher
    body = state.metrics.render(
        tasks={status.label: n for status, n in counts.items()},
        counters=dispatcher.counters if dispatcher else None,
        connected=dispatcher.connected if dispatcher else None,
        sensors_online=online,
        leader=dispatcher.members.leader if dispatcher else None,
        instances=len(dispatcher.members.live) if dispatcher else None,
    )
    return Response(body, media_type=CONTENT_TYPE_LATEST)
