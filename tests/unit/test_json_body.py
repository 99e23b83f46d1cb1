"""`api.body.json_body` reads a valid body straight from its bytes and answers anything else
exactly as FastAPI answers for a declared body parameter; the bulk route asks for the API key
before it reads the body."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated

import httpx
import pytest
from fastapi import Depends, FastAPI
from starlette.types import Message

from sensortasks.api import body as body_module
from sensortasks.api import create_app, errors
from sensortasks.api.body import json_body
from sensortasks.api.models import TasksBulkCreate
from sensortasks.config import Settings
from sensortasks.runtime import build_service, build_store

FILE_ID = "a3e4aed2-b091-41a6-8265-2185040e2c32"
TASK = {"sensor_serial": 5, "file_id": FILE_ID, "type": "update_firmware"}
JSON = "application/json"
BODIES = [
    pytest.param(json.dumps({"tasks": [TASK, TASK]}).encode(), JSON, id="valid"),
    pytest.param(b'{"tasks": [', JSON, id="invalid-json"),
    pytest.param(b'{"tasks": [{"sensor_serial": 5, "file_id": "\xff"}]}', JSON, id="not-utf8"),
    pytest.param(b"", JSON, id="empty"),
    pytest.param(b"[1]", JSON, id="array"),
    pytest.param(b"null", JSON, id="null"),
    pytest.param(json.dumps({"tasks": [TASK]}).encode(), "text/plain", id="text-plain"),
    pytest.param(json.dumps({"tasks": [TASK]}).encode(), None, id="no-content-type"),
    pytest.param(json.dumps({"tasks": [TASK]}).encode(), "application/vnd.x+json", id="json-suffix"),
    pytest.param(json.dumps({"tasks": [TASK]}).encode(), "application/json; charset=utf-8", id="charset"),
    pytest.param(json.dumps({"tasks": [TASK, {**TASK, "sensor_serial": -1}]}).encode(), JSON, id="bad-item"),
    pytest.param(json.dumps({"tasks": [{**TASK, "sensor_serial": "7"}]}).encode(), JSON, id="string-serial"),
    pytest.param(json.dumps({"tasks": [{**TASK, "sensor_serial": 7.0}]}).encode(), JSON, id="float-serial"),
    pytest.param(json.dumps({"tasks": [TASK], "extra": 1}).encode(), JSON, id="extra-field"),
    pytest.param(json.dumps({"tasks": []}).encode(), JSON, id="no-tasks"),
    pytest.param(b'{"tasks": [], "tasks": [%s]}' % json.dumps(TASK).encode(), JSON, id="duplicate-key"),
    pytest.param(b'{"tasks": [{"sensor_serial": NaN}]}', JSON, id="nan"),
    pytest.param(b"[" * 3000, JSON, id="nested-too-deep"),
    pytest.param(b'{"tasks": [{"sensor_serial": %s}]}' % (b"9" * 5000), JSON, id="integer-of-5000-digits"),
]


def _echo_app() -> FastAPI:
    """One route with FastAPI's declared body, one with `json_body`, both echoing the body."""
    app = FastAPI()
    errors.install(app)

    @app.post("/declared")
    async def declared(body: TasksBulkCreate) -> TasksBulkCreate:
        return body

    @app.post("/read")
    async def read(body: Annotated[TasksBulkCreate, Depends(json_body(TasksBulkCreate))]) -> TasksBulkCreate:
        return body

    return app


@pytest.fixture
async def echo() -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=_echo_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


@pytest.mark.parametrize(("content", "content_type"), BODIES)
async def test_every_body_gets_the_answer_fastapi_gives(
    echo: httpx.AsyncClient, content: bytes, content_type: str | None
) -> None:
    headers = {"content-type": content_type} if content_type else {}
    declared = await echo.post("/declared", content=content, headers=headers)
    read = await echo.post("/read", content=content, headers=headers)
    assert (read.status_code, read.json()) == (declared.status_code, declared.json())


async def _post_then_hang_up(app: FastAPI, path: str) -> int:
    """POST half a body and disconnect (raw ASGI: httpx cannot); the status answered."""
    received: list[Message] = [{"type": "http.request", "body": b'{"tasks": [', "more_body": True}]
    sent: list[Message] = []

    async def receive() -> Message:
        return received.pop(0) if received else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    headers = [(b"content-type", JSON.encode()), (b"content-length", b"1000")]
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http"}
    scope |= {"path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "", "headers": headers}
    await app(scope | {"client": ("127.0.0.1", 1), "server": ("testserver", 80)}, receive, send)
    return int(sent[0]["status"])


async def test_a_client_gone_mid_upload_gets_fastapis_400() -> None:
    app = _echo_app()
    assert await _post_then_hang_up(app, "/read") == await _post_then_hang_up(app, "/declared") == 400


async def test_a_valid_body_is_read_without_fastapis_steps(
    echo: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*_: object) -> None:
        raise AssertionError("a valid body went through json.loads and validate_python")

    monkeypatch.setattr(body_module, "_as_fastapi_would", refuse)
    read = await echo.post("/read", content=json.dumps({"tasks": [TASK]}).encode(), headers={"content-type": JSON})
    assert read.status_code == 200
    assert read.json()["tasks"][0]["sensor_serial"] == TASK["sensor_serial"]


async def test_the_bulk_route_refuses_a_missing_key_before_it_reads_the_body(tmp_path: Path) -> None:
    settings = Settings(database_url=f"sqlite+aiosqlite:///{tmp_path}/keys.db", auth="required")
    store = build_store(settings)
    transport = httpx.ASGITransport(app=create_app(build_service(settings, store)))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        refused = await client.post("/v1/tasks/bulk", content=b"{not json", headers={"content-type": JSON})
    await store.db.dispose()
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "unauthorized"
