"""The REST API (no dispatcher) served by a real uvicorn on a free port, in the test's event loop,
so that requests cross a real TCP connection and the app's logs reach caplog."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h11
import uvicorn
from fastapi import FastAPI

from sensortasks.api import create_app
from sensortasks.api.deps import AppState
from sensortasks.config import Settings
from sensortasks.runtime import build_service, build_store
from sensortasks.store import TaskStore, upgrade
from sensortasks.testing import free_port


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # leave pytest's signal handlers alone
        yield


@dataclass
class LiveApi:
    app: FastAPI
    store: TaskStore
    url: str

    @property
    def state(self) -> AppState:
        state: AppState = self.app.state.sensortasks
        return state


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


class RawHttp:
    """A lean HTTP/1.1 client on one keep-alive connection (h11): thousands of requests a second,
    where httpx in the same event loop as the server manages a few hundred; and chunked bodies."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.conn = h11.Connection(h11.CLIENT)

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(cls, url: str, *, local_address: str | None = None) -> AsyncIterator[RawHttp]:
        host, port = url.removeprefix("http://").split(":")
        local = (local_address, 0) if local_address else None
        reader, writer = await asyncio.open_connection(host, int(port), local_addr=local)
        try:
            yield cls(reader, writer)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def request(
        self, method: str, path: str, headers: dict[str, str] | None = None, chunks: Iterable[bytes] = ()
    ) -> Answer:
        """Send a request (its body streamed chunked when `chunks` are given) and read the answer.
        Sending stops as soon as the server answers or closes the connection."""
        given = {"Host": "sensortasks.test"} | (headers or {})
        self.writer.write(self.conn.send(h11.Request(method=method, target=path, headers=list(given.items()))))
        sender = asyncio.create_task(self._send(chunks))
        try:
            return await self._answer()
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await sender

    async def get(self, path: str, headers: dict[str, str] | None = None) -> Answer:
        return await self.request("GET", path, headers)

    async def _send(self, chunks: Iterable[bytes]) -> None:
        for chunk in chunks:
            self.writer.write(self.conn.send(h11.Data(data=chunk)))
            await self.writer.drain()
        self.writer.write(self.conn.send(h11.EndOfMessage()))
        await self.writer.drain()

    async def _answer(self) -> Answer:
        status, headers, body = 0, {}, b""
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(await self.reader.read(65536))
            elif isinstance(event, h11.Response):
                status, headers = event.status_code, {k.decode(): v.decode() for k, v in event.headers}
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
                    self.conn.start_next_cycle()
                return Answer(status, headers, body)
            elif isinstance(event, h11.ConnectionClosed):
                raise AssertionError("the server closed the connection without an answer")


@contextlib.asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[str]:
    """Serve `app` on 127.0.0.1 and a free port; yields its base URL."""
    port = free_port()
    server = _Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="off"))
    task = asyncio.create_task(server.serve())
    deadline = time.monotonic() + 10
    while not server.started:
        assert not task.done(), "uvicorn stopped while starting"
        assert time.monotonic() < deadline, "uvicorn did not start in 10 s"
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@contextlib.asynccontextmanager
async def live_api(tmp_path: Path, **overrides: Any) -> AsyncIterator[LiveApi]:
    """A fresh SQLite database and the API on it (authentication required unless overridden)."""
    options: dict[str, Any] = {"database_url": f"sqlite+aiosqlite:///{tmp_path}/sensortasks.db", "auth": "required"}
    settings = Settings(**(options | overrides))
    await upgrade(settings.database_url)
    store = build_store(settings)
    app = create_app(build_service(settings, store))
    try:
        async with serving(app) as url:
            yield LiveApi(app, store, url)
    finally:
        await store.db.dispose()
