"""The ``responses=`` of the routes, shared: each error status once, with what it means and a
real example, so that every route documents the same errors the same way.

A route lists the statuses it can answer: ``responses={**errors(*V1, 404), 200: ok("The task",
examples.TASK_COMPLETED)}``; `error` overrides the description or the example where a route has
a more precise one.
"""

from __future__ import annotations

from typing import Any

from sensortasks.api import examples
from sensortasks.api.models import ErrorResponse

Responses = dict[int | str, dict[str, Any]]
#: Every example given to `ok` and `error`, as declared: FastAPI's generator drops their nulls,
#: `sensortasks.api.openapi` puts them back.
DECLARED: list[Any] = []

#: What any route under /v1 can answer besides its own errors: a missing or bad key, a body
#: over the limit (checked on every route), too many failed keys from the client, a database down.
V1 = (401, 413, 429, 503)
#: What the unauthenticated operations routes can answer.
OPS = (413,)

_RETRY_AFTER = {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}}
_MEANING: dict[int, tuple[str, dict[str, Any]]] = {
    400: ("The body cannot be read (not UTF-8).", {}),
    401: (
        "No API key, or an invalid or revoked one: send `Authorization: Bearer <key>`.",
        {"WWW-Authenticate": {"description": "`Bearer`.", "schema": {"type": "string"}}},
    ),
    404: ("No such task, or it belongs to another customer.", {}),
    409: ("The request contradicts the current state.", {}),
    413: ("The request body is over 4 MiB (refused before it is read).", {}),
    422: ("The request fails validation; `details` lists each field with its rule.", {}),
    429: (
        "Too many failed authentications from this client: wait `Retry-After` seconds.",
        {"Retry-After": _RETRY_AFTER},
    ),
    503: (
        "The database or the broker is unavailable: retry after `Retry-After` seconds.",
        {"Retry-After": _RETRY_AFTER},
    ),
}


def error(status: int, description: str | None = None, example: dict[str, Any] | None = None) -> dict[str, Any]:
    """One error response: the error envelope, what `status` means here, a real example."""
    meaning, headers = _MEANING[status]
    example = example or examples.ERRORS[status]
    DECLARED.append(example)
    response: dict[str, Any] = {
        "model": ErrorResponse,
        "description": description or meaning,
        "content": {"application/json": {"example": example}},
    }
    if headers:
        response["headers"] = headers
    return response


def errors(*statuses: int) -> Responses:
    return {status: error(status) for status in statuses}


def ok(description: str, example: Any, media_type: str = "application/json") -> dict[str, Any]:  # noqa: ANN401
    """A success response's description and example (its schema comes from the route's model)."""
    DECLARED.append(example)
    return {"description": description, "content": {media_type: {"example": example}}}
