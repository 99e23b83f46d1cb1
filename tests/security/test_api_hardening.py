"""The REST API's edges on real sockets: streamed bodies past the limit, dependencies that are down,
and the database files' modes."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from sensortasks.api import create_app
from sensortasks.api.errors import RETRY_UNAVAILABLE_S
from sensortasks.api.limits import MAX_BODY_BYTES
from sensortasks.broker.accounts import AccountSpec
from sensortasks.config import Settings
from sensortasks.errors import Unavailable
from sensortasks.runtime import build_service, build_store
from sensortasks.service.ratelimit import MAX_FAILURES
from sensortasks.store import open_database, upgrade
from sensortasks.store.keys import KeyStore
from sensortasks.testing import free_port
from tests.security.live_api import Answer, RawHttp, live_api, serving

FILE_ID = "a3e4aed2-b091-41a6-8265-2185040e2c32"
TASK = {"sensor_serial": 12345678909789, "file_id": FILE_ID, "type": "update_firmware"}


def chunks(total: int, size: int = 64 * 1024) -> Iterator[bytes]:
    """A JSON body (a bulk create padded with spaces) of `total` bytes in chunks of `size`."""
    head, tail = b'{"tasks": [' + json.dumps(TASK).encode(), b"]}"
    padding = total - len(head) - len(tail)
    yield head
    for _ in range(padding // size):
        yield b" " * size
    yield b" " * (padding % size) + tail


def assert_error(answer: Answer | httpx.Response, status: int, code: str) -> dict[str, object]:
    status_code = answer.status if isinstance(answer, Answer) else answer.status_code
    body = json.loads(answer.body if isinstance(answer, Answer) else answer.content)
    assert (status_code, body["error"]["code"]) == (status, code), body
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}
    error: dict[str, object] = body["error"]
    return error


async def test_a_chunked_body_over_the_limit_gets_413_and_one_under_it_is_read(tmp_path: Path) -> None:
    async with live_api(tmp_path, auth="disabled") as api:
        chunked = {"Content-Type": "application/json", "Transfer-Encoding": "chunked"}
        async with RawHttp.connect(api.url) as client:
            huge = await client.request("POST", "/v1/tasks/bulk", chunked, chunks(MAX_BODY_BYTES + 1024 * 1024))
        error = assert_error(huge, 413, "payload_too_large")
        assert error["message"] == f"request body larger than {MAX_BODY_BYTES} bytes"
        async with RawHttp.connect(api.url) as client:
            near = await client.request("POST", "/v1/tasks/bulk", chunked, chunks(MAX_BODY_BYTES - 1024))
            assert near.status == 201, near.body
            assert len(json.loads(near.body)["ids"]) == 1
        async with httpx.AsyncClient(base_url=api.url) as client:
            listed = (await client.get("/v1/tasks")).json()["data"]
        assert len(listed) == 1  # the refused body created nothing


@pytest.fixture
def closed_port_url() -> str:
    """PostgreSQL on a port where nothing listens: every connection attempt is refused."""
    return f"postgresql+asyncpg://sensortasks:secret@127.0.0.1:{free_port()}/sensortasks"


@pytest.mark.parametrize("auth", ["disabled", "required"])
async def test_an_unreachable_database_is_503_unavailable_not_a_bug(
    closed_port_url: str, auth: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    settings = Settings(database_url=closed_port_url, auth=auth)
    store = build_store(settings)
    try:
        async with (
            serving(create_app(build_service(settings, store))) as url,
            httpx.AsyncClient(base_url=url) as client,
        ):
            headers = {"Authorization": "Bearer stk_" + "x" * 43}
            answers = [await client.get("/v1/tasks", headers=headers) for _ in range(MAX_FAILURES + 5)]
            answers.append(await client.post("/v1/tasks", json=TASK, headers=headers))
            answers.append(await client.get("/v1/tasks/1/events", headers=headers))
            health = await client.get("/healthz")
    finally:
        await store.db.dispose()
    for answer in answers:  # a database that is down is no failed authentication either: never a 429
        error = assert_error(answer, 503, "unavailable")
        assert error["message"] == "database unavailable; retry the request"
        assert answer.headers["Retry-After"] == str(RETRY_UNAVAILABLE_S)
    assert health.status_code == 503
    assert "unhandled error" not in caplog.text
    assert "GET /v1/tasks: database unavailable: [Errno 111]" in caplog.text
    assert "secret" not in caplog.text


async def test_a_sqlite_database_locked_past_the_busy_timeout_is_503(tmp_path: Path) -> None:
    async with live_api(tmp_path, auth="disabled") as api:
        path = tmp_path / "sensortasks.db"
        hold = "import sqlite3, sys; c = sqlite3.connect(sys.argv[1], isolation_level=None); "
        hold += "c.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); sys.stdin.read()"
        holder = await asyncio.create_subprocess_exec(
            sys.executable, "-c", hold, str(path), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
        )
        assert holder.stdout is not None
        assert holder.stdin is not None
        try:
            assert await holder.stdout.readline() == b"locked\n"
            async with httpx.AsyncClient(base_url=api.url, timeout=30) as client:
                locked = await client.post("/v1/tasks", json=TASK)
                holder.stdin.close()
                assert await holder.wait() == 0
                after = await client.post("/v1/tasks", json=TASK)
        finally:
            if holder.returncode is None:
                holder.kill()
                await holder.wait()
    error = assert_error(locked, 503, "unavailable")
    assert error["message"] == "database unavailable; retry the request"
    assert locked.headers["Retry-After"] == str(RETRY_UNAVAILABLE_S)
    assert after.status_code == 201, after.text


class BrokerAdminDown(Unavailable):
    """What broker administration raises when the broker is unreachable (it derives from Unavailable)."""


class DownAccounts:
    """Broker accounts (`sensortasks.service.accounts.BrokerAccounts`) whose broker is unreachable."""

    async def issue(self, spec: AccountSpec) -> object:
        raise BrokerAdminDown(f"broker admin unreachable while adding {spec.username}")

    async def remove(self, spec: AccountSpec) -> None:
        raise BrokerAdminDown(f"broker admin unreachable while removing {spec.username}")


async def test_any_unavailable_dependency_is_503_in_the_error_format(tmp_path: Path) -> None:
    settings = Settings(database_url=f"sqlite+aiosqlite:///{tmp_path}/sensortasks.db", auth="required")
    await upgrade(settings.database_url)
    store = build_store(settings)
    key = await KeyStore(store.db).create_key("acme")
    try:
        app = create_app(build_service(settings, store, accounts=DownAccounts()))  # type: ignore[arg-type]
        async with serving(app) as url, httpx.AsyncClient(base_url=url) as client:
            added = await client.post("/v1/sensors", json={"serial": 42}, headers={"Authorization": f"Bearer {key}"})
    finally:
        await store.db.dispose()
    error = assert_error(added, 503, "unavailable")
    assert error["message"] == "broker admin unreachable while adding sensor-42"
    assert added.headers["Retry-After"] == str(RETRY_UNAVAILABLE_S)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def modes(directory: Path) -> dict[str, int]:
    return {path.name: mode(path) for path in directory.iterdir()}


@pytest.fixture
def umask_022() -> Iterator[None]:
    previous = os.umask(0o022)
    yield
    os.umask(previous)


@pytest.mark.usefixtures("umask_022")
async def test_the_database_and_its_wal_and_shm_are_owner_only_under_umask_022(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "data" / "sensortasks.db"
    url = f"sqlite+aiosqlite:///{path}"
    await upgrade(url)  # creates the file
    db = open_database(url)
    try:
        await KeyStore(db).create_key("acme")
        async with db.reader.connect() as reader:  # an open reader keeps -wal and -shm in place
            await reader.execute(text("SELECT count(*) FROM api_keys"))
            files = modes(path.parent)
    finally:
        await db.dispose()
    assert files == {"sensortasks.db": 0o600, "sensortasks.db-wal": 0o600, "sensortasks.db-shm": 0o600}
    assert "was mode" not in caplog.text  # created so, by the migration already, not tightened afterwards


@pytest.mark.usefixtures("umask_022")
async def test_an_existing_world_readable_database_is_made_owner_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "sensortasks.db"
    older = sqlite3.connect(path)  # as an older version left it: 0644, with a -wal
    older.execute("PRAGMA journal_mode=WAL")
    older.execute("CREATE TABLE t (x)")
    older.commit()
    assert {mode(path), mode(path.with_name("sensortasks.db-wal"))} == {0o644}
    try:
        db = open_database(f"sqlite+aiosqlite:///{path}")
        await db.dispose()
        assert modes(tmp_path) == {
            "sensortasks.db": 0o600,
            "sensortasks.db-wal": 0o600,
            "sensortasks.db-shm": 0o600,
        }
    finally:
        older.close()
    assert f"database file {path} was mode 644, now 600 (owner only)" in caplog.text
