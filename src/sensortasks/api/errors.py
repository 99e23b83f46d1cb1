"""Every failure as ``{"error": {"code", "message", "details"}}``, mapped in one place."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from sensortasks.api.models import ErrorResponse
from sensortasks.errors import Conflict, InvalidInput, NotFound, SensortasksError, Unavailable

log = logging.getLogger(__name__)

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

    def __init__(self, status: int, message: str, *, details: Any = None) -> None:  # noqa: ANN401
        super().__init__(message, details=details)
        self.status = status
        self.code = HTTP_CODES.get(status, "error")


def _status_of(exc: SensortasksError) -> int:
    """By the nearest mapped class, so subclasses (e.g. `BrokerAdminError`, an Unavailable) map too."""
    return next((STATUS_OF[cls] for cls in type(exc).__mro__ if cls in STATUS_OF), 500)


def error_response(status: int, code: str, message: str, details: Any = None, **headers: str) -> JSONResponse:  # noqa: ANN401
    body = ErrorResponse.model_validate({"error": {"code": code, "message": message, "details": details}})
    return JSONResponse(body.model_dump(), status_code=status, headers=headers or None)


def _validation_details(exc: RequestValidationError) -> list[dict[str, Any]]:
    return [
        {
            "field": ".".join(str(p) for p in err["loc"][1:]) or str(err["loc"][0]),
            "rule": err["type"],
            "message": err["msg"],
        }
        for err in exc.errors()
    ]


def install(app: FastAPI) -> None:
    @app.exception_handler(SensortasksError)
    async def _domain(_: Request, exc: SensortasksError) -> JSONResponse:
        status = exc.status if isinstance(exc, ApiError) else _status_of(exc)
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else {}  # noqa: PLR2004
        return error_response(status, exc.code, exc.message, exc.details, **headers)

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
