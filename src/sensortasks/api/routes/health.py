"""``/healthz``: 200 when the database and the broker connection are up."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError

from sensortasks.api.deps import State

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="Liveness of the database and the broker connection")
async def healthz(state: State) -> JSONResponse:
    try:
        await state.store.ping()
        database = "up"
    except (SQLAlchemyError, OSError):
        database = "down"
    dispatcher = state.dispatcher
    broker = "n/a" if dispatcher is None else ("up" if dispatcher.connected else "down")
    healthy = database == "up" and broker != "down"
    body = {"status": "ok" if healthy else "unavailable", "database": database, "broker": broker}
    return JSONResponse(body, status_code=200 if healthy else 503)
