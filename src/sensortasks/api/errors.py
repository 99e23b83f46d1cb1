"""Every failure as ``{"error": {"code", "message", "details"}}``, mapped in one place.

A dependency that is down is a 503 ``unavailable`` with ``Retry-After``, never a 500: an
`Unavailable` (the broker, its admin), or a database error translated into one at the store's
boundary (`sensortasks.store.engine.unavailable`, as the MQTT commands and ``/healthz`` do).
Only what is left is a bug.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException

from sensortasks.api.models import ErrorResponse
from sensortasks.errors import Conflict, InvalidInput, NotFound, SensortasksError, Unavailable
from sensortasks.store.engine import DATABASE_DOWN, unavailable

log = logging.getLogger(__name__)
#: Seconds a client is asked to wait before retrying after a 503: outages this answers
#: (a database restart, a lock held past the busy timeout, a broker reconnect) last seconds.
RETRY_UNAVAILABLE_S = 5
_UNPRINTABLE = re.compile(r"[^A-Za-z0-9_./{}-]")

STATUS_OF: dict[type[SensortasksError], int] = {
    NotFound: 404,
    Conflict: 409,
    InvalidInput: 422,
    Unavailable: 503,
}
HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    422: "invalid_input",
    429: "too_many_requests",
}


class ApiError(SensortasksError):
    """An error raised by the HTTP layer itself (authentication, request size)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        details: Any = None,  # noqa: ANN401
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message, details=details)
        self.status = status
        self.code = HTTP_CODES.get(status, "error")
        self.headers = headers or {}


def status_of(exc: SensortasksError) -> int:
    """The HTTP status of a package error; subclasses (a broker admin failure is an `Unavailable`) included."""
    if isinstance(exc, ApiError):
        return exc.status
    return next((STATUS_OF[cls] for cls in type(exc).__mro__ if cls in STATUS_OF), 500)


def error_response(status: int, code: str, message: str, details: Any = None, **headers: str) -> JSONResponse:  # noqa: ANN401
    body = ErrorResponse.model_validate({"error": {"code": code, "message": message, "details": details}})
    return JSONResponse(body.model_dump(), status_code=status, headers=headers or None)


def _validation_detail(err: dict[str, Any]) -> dict[str, Any]:
    if err["type"] == "json_invalid":  # its loc is ("body", <character position>), not a field
        position = err["loc"][-1]
        reason = err.get("ctx", {}).get("error", "not JSON")
        return {"field": "body", "rule": "json_invalid", "message": f"invalid JSON: {reason} at character {position}"}
    return {
        "field": ".".join(str(p) for p in err["loc"][1:]) or str(err["loc"][0]),
        "rule": err["type"],
        "message": err["msg"],
    }


def _validation_details(exc: RequestValidationError) -> list[dict[str, Any]]:
    return [_validation_detail(err) for err in exc.errors()]


def route_of(request: Request) -> str:
    """Method and route template (``GET /v1/tasks/{task_id}``) for logs: the raw path is the client's text."""
    path = getattr(request.scope.get("route"), "path", None) or _UNPRINTABLE.sub("?", request.url.path[:100])
    return f"{request.method} {path}"


def _answer(exc: SensortasksError) -> JSONResponse:
    status = status_of(exc)
    headers = dict(exc.headers) if isinstance(exc, ApiError) else {}
    if status == 401:  # noqa: PLR2004
        headers["WWW-Authenticate"] = "Bearer"
    elif status == 503:  # noqa: PLR2004
        headers.setdefault("Retry-After", str(RETRY_UNAVAILABLE_S))
    return error_response(status, exc.code, exc.message, exc.details, **headers)


def install(app: FastAPI) -> None:
    @app.exception_handler(SensortasksError)
    async def _domain(request: Request, exc: SensortasksError) -> JSONResponse:
        if isinstance(exc, Unavailable):
            log.warning("%s: unavailable: %s", route_of(request), exc.message)
        return _answer(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = _validation_details(exc)
        first = details[0] if details else {"field": "request", "message": "invalid"}
        message = f"{first['field']}: {first['message']}" + (f" (+{len(details) - 1} more)" if len(details) > 1 else "")
        return error_response(422, "invalid_input", message, details)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = HTTP_CODES.get(exc.status_code, "error")
        return error_response(exc.status_code, code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(500, "internal_error", "internal error (this is a bug; it has been logged)")

    async def _database(request: Request, exc: Exception) -> JSONResponse:
        translated = unavailable(exc)
        if translated is None:
            return await _bug(request, exc)
        log.warning("%s: database unavailable: %s", route_of(request), exc)
        return _answer(translated)

    for kind in (*DATABASE_DOWN, DBAPIError):  # DBAPIError: a connection lost mid-request
        app.add_exception_handler(kind, _database)
