"""Operations: ``/healthz`` and ``/metrics``."""

from __future__ import annotations

import asyncio
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
#: How long ``/healthz`` waits for the database's answer: under a probe's own timeout (1 s by
#: default in Kubernetes), so that a database behind a partition, which never answers, is
#: reported down rather than making the probe time out.
PING_TIMEOUT_S = 0.5


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
    database = "up" if await _database_answers(state) else "down"
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
        rollouts={str(state): n for state, n in (await state.store.rollout_states()).items()},
        counters=dispatcher.counters if dispatcher else None,
        connected=dispatcher.connected if dispatcher else None,
        sensors_online=online,
        leader=dispatcher.members.leader if dispatcher else None,
        instances=len(dispatcher.members.live) if dispatcher else None,
    )
    return Response(body, media_type=CONTENT_TYPE_LATEST)


async def _database_answers(state: State) -> bool:
    """Whether the database answers within `PING_TIMEOUT_S`. A ping given up on is cancelled,
    not awaited: closing its connection may take SQLAlchemy seconds more (a graceful close
    first), which the probe need not wait for."""
    ping = asyncio.ensure_future(state.service.ping())
    done, _ = await asyncio.wait({ping}, timeout=PING_TIMEOUT_S)
    if not done:
        ping.cancel()
        return False
    exc = ping.exception()
    if exc is not None and unavailable(exc) is None:
        raise exc
    return exc is None
