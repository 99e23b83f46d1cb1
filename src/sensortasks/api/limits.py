"""Request bodies are bounded: larger ones get a 413 before they are read into memory.

A streamed (chunked) body is counted as it arrives and cut off at the limit. FastAPI turns any
error raised while it reads a body into its own 400 ("error parsing the body"), and so does
`api.body.json_body`, so the app's answer to a body cut short is dropped here and replaced
with the 413.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sensortasks.api.errors import error_response
from sensortasks.errors import SensortasksError

#: Room for a bulk request of 10,000 tasks (about 1.3 MB) with generous formatting.
MAX_BODY_BYTES = 4 * 1024 * 1024


class _TooLarge(SensortasksError):
    """Raised into the app's body reading when a streamed body passes the limit."""


class BodyLimit:
    """Checks ``Content-Length`` and counts streamed (chunked) bodies as they arrive."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await self._refuse(scope, receive, send)
            return
        seen = 0
        exceeded = started = False

        async def counting_receive() -> Message:
            nonlocal seen, exceeded
            if exceeded:
                raise _TooLarge("request body too large")
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    exceeded = True
                    raise _TooLarge("request body too large")
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if exceeded and not started:
                return  # the app's answer to a body it could not finish reading: ours replaces it
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not exceeded or started:
                raise
        if exceeded and not started:
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(413, "payload_too_large", f"request body larger than {self.limit} bytes")
        await response(scope, receive, send)
