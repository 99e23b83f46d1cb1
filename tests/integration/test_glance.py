"""The endpoints behind the console's glance: the live event stream (`GET /v1/events`, served
over real HTTP by uvicorn, since it never ends on its own), the overview and the sensor count.
Each runs on SQLite and PostgreSQL; customer B never sees customer A's events or counts."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import uvicorn

from sensortasks.api.app import close_streams
from sensortasks.store.keys import KeyStore
from sensortasks.testing import free_port
from tests.conftest import only_on
from tests.integration.conftest import FILE_ID, Service, ServiceFactory, eventually

SERIAL = 880_000_000_000_001
OTHER = 880_000_000_000_002


@contextlib.asynccontextmanager
async def served(service: Service) -> AsyncIterator[str]:
    """The service's app on a real socket; its streams closed at the end as `serve` does."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(service.app, host="127.0.0.1", port=port, log_config=None))
    running = asyncio.create_task(server.serve())
    await eventually(lambda: asyncio.sleep(0, server.started), what="uvicorn to start")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        close_streams(service.app)
        await asyncio.wait_for(running, 10)


class Reader:
    """The events of one open stream, parsed as a browser would (id, event, data; comments skipped)."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.last_id: str | None = None
        self.connected = asyncio.Event()

    async def read(self, client: httpx.AsyncClient, url: str, headers: dict[str, str]) -> None:
        async with client.stream("GET", f"{url}/v1/events", headers=headers, timeout=30) as response:
            assert response.status_code == 200, await response.aread()
            assert response.headers["content-type"].startswith("text/event-stream")
            fields: dict[str, str] = {}
            async for line in response.aiter_lines():
                if line == "":
                    if "id" in fields:
                        self.last_id = fields["id"]
                        self.connected.set()
                    if "data" in fields:
                        self.events.append({"id": int(fields["id"]), **json.loads(fields["data"])})
                    fields = {}
                elif not line.startswith(":"):
                    name, _, value = line.partition(":")
                    fields[name] = value.removeprefix(" ")


@contextlib.asynccontextmanager
async def reading(url: str, headers: dict[str, str]) -> AsyncIterator[Reader]:
    reader = Reader()
    async with httpx.AsyncClient() as client:
        task = asyncio.create_task(reader.read(client, url, headers))
        await asyncio.wait_for(reader.connected.wait(), 10)
        try:
            yield reader
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def customer(service: Service, name: str, serial: int) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {await KeyStore(service.store.db).create_key(name)}"}
    response = await service.api.post("/v1/sensors", json={"serial": serial, "labels": {"site": name}}, headers=headers)
    assert response.status_code == 201, response.text
    return headers


async def create(service: Service, serial: int, headers: dict[str, str]) -> dict[str, Any]:
    body = {"sensor_serial": serial, "file_id": FILE_ID, "type": "update_firmware"}
    response = await service.api.post("/v1/tasks", json=body, headers=headers)
    assert response.status_code == 201, response.text
    task: dict[str, Any] = response.json()
    return task


async def test_stream_is_live_per_customer_and_resumes(make_service: ServiceFactory) -> None:
    service = await make_service(auth="required")
    alice, bob = await customer(service, "alice", SERIAL), await customer(service, "bob", OTHER)
    service.api.headers.update(alice)  # for the helpers that wait on the sensor
    await service.sensor(SERIAL)
    async with served(service) as url, reading(url, alice) as as_alice, reading(url, bob) as as_bob:
        created_at = time.monotonic()
        task = await create(service, SERIAL, alice)
        await eventually(lambda: asyncio.sleep(0, any(e["to"] == "Pending" for e in as_alice.events)),
                         what="the creation on the stream")  # fmt: skip
        latency = time.monotonic() - created_at
        await eventually(lambda: asyncio.sleep(0, any(e["to"] == "Completed" for e in as_alice.events)),
                         what="the completion on the stream")  # fmt: skip
        mine = [(e["from"], e["to"]) for e in as_alice.events if e["task_id"] == task["id"]]
        assert mine == [(None, "Pending"), ("Pending", "Ongoing"), ("Ongoing", "Completed")]
        assert {e["sensor_serial"] for e in as_alice.events} == {SERIAL}
        assert as_alice.events[0]["v"] == 1
        print(f"creation seen on the stream after {latency * 1000:.0f} ms")  # noqa: T201 (the figure in docs/console.md)
        assert latency < 2.0
        # Bob's stream carried nothing of Alice's; his own task shows up on it.
        theirs = await create(service, OTHER, bob)
        await eventually(lambda: asyncio.sleep(0, bool(as_bob.events)), what="bob's event")
        assert {e["task_id"] for e in as_bob.events} == {theirs["id"]}
        first_id = as_alice.events[0]["id"]
        # Resuming after the first event replays exactly the rest, by header and by parameter.
        async with reading(url, alice | {"Last-Event-ID": str(first_id)}) as resumed:
            await eventually(lambda: asyncio.sleep(0, len(resumed.events) >= 2), what="the replay")
            assert [e["id"] for e in resumed.events] == [e["id"] for e in as_alice.events[1:3]]
        async with httpx.AsyncClient() as client:
            streamed = client.stream("GET", f"{url}/v1/events", params={"after": first_id}, headers=alice)
            async with streamed as response:
                body = ""
                async for chunk in response.aiter_text():
                    body += chunk
                    if body.count("event: transition") >= 2:
                        break
        assert f"id: {as_alice.events[1]['id']}\nevent: transition\n" in body


async def test_stream_ends_when_the_server_stops(make_service: ServiceFactory) -> None:
    service = await make_service()
    async with served(service) as url, reading(url, {}) as reader:
        started = time.monotonic()
        close_streams(service.app)
        await eventually(lambda: asyncio.sleep(0, reader.connected.is_set()), what="connected")
    assert time.monotonic() - started < 3


@only_on("sqlite")  # the HTTP side of a stream: the database plays no part
async def test_a_stream_ends_once_its_client_is_gone(make_service: ServiceFactory) -> None:
    service = await make_service()
    glance = service.app.state.glance
    follow, ended = glance.follow, asyncio.Event()

    async def followed(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        try:
            async for batch in follow(*args, **kwargs):
                yield batch
        finally:
            ended.set()

    glance.follow = followed
    async with served(service) as url:
        async with reading(url, {}):
            pass
        hung_up = time.monotonic()
        await asyncio.wait_for(ended.wait(), 5)  # no longer polling for a client that left
        assert time.monotonic() - hung_up < 2


@pytest.mark.parametrize(
    ("params", "headers", "field"),
    [({"after": "-1"}, {}, "after"), ({"after": "x"}, {}, "after"), ({}, {"Last-Event-ID": "abc"}, "Last-Event-ID")],
)
async def test_stream_refuses_bad_cursors(
    make_service: ServiceFactory, params: dict[str, str], headers: dict[str, str], field: str
) -> None:
    service = await make_service()
    response = await service.api.get("/v1/events", params=params, headers=headers)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["details"][0]["field"] == field


async def test_overview_and_count_are_per_customer(make_service: ServiceFactory) -> None:
    service = await make_service(auth="required")
    alice, bob = await customer(service, "alice", SERIAL), await customer(service, "bob", OTHER)
    service.api.headers.update(alice)  # for the helpers that wait on the sensor
    await service.sensor(SERIAL)
    task = await create(service, SERIAL, alice)
    await service.wait_status(task["id"], "Completed")
    await create(service, OTHER, bob)

    mine = (await service.api.get("/v1/overview", headers=alice)).json()
    assert mine["tasks"] == {"Pending": 0, "Completed": 1, "Error": 0, "Ongoing": 0, "Cancelled": 0}
    assert (mine["sensors"], mine["sensors_online"]) == (1, 1)
    assert len(mine["minutes"]) == 60
    assert sum(m["dispatched"] for m in mine["minutes"]) == 1
    assert sum(m["completed"] for m in mine["minutes"]) == 1
    assert mine["minutes"][-1]["completed"] + mine["minutes"][-2]["completed"] == 1  # this minute (or the last)
    theirs = (await service.api.get("/v1/overview", headers=bob)).json()
    assert theirs["tasks"]["Pending"] == 1
    assert theirs["tasks"]["Completed"] == 0
    assert (theirs["sensors"], theirs["sensors_online"]) == (1, 0)
    assert sum(m["completed"] for m in theirs["minutes"]) == 0
    assert sum(m["dispatched"] for m in theirs["minutes"]) <= 1  # sent to his sensor, which never answers

    async def count(headers: dict[str, str], *labels: str) -> int:
        response = await service.api.get("/v1/sensors/count", params=[("label", label) for label in labels],
                                         headers=headers)  # fmt: skip
        assert response.status_code == 200, response.text
        return int(response.json()["count"])

    assert await count(alice) == 1
    assert await count(alice, "site:alice") == 1
    assert await count(alice, "site:bob") == 0  # bob's sensor carries it, but is not alice's
    assert await count(bob, "site:bob") == 1
    bad = await service.api.get("/v1/sensors/count", params={"label": "site"}, headers=alice)
    assert bad.status_code == 422
    assert bad.json()["error"]["details"]["field"] == "label"


@only_on("sqlite")  # static files: the database plays no part
@pytest.mark.parametrize("path", ["/console", "/console/app.js", "/console/api.js", "/console/style.css"])
async def test_the_console_and_its_assets_carry_a_policy_that_allows_this_server_alone(
    make_service: ServiceFactory, path: str
) -> None:
    service = await make_service(auth="required")
    response = await service.api.get(path)  # the page itself needs no key: it asks for one
    assert response.status_code == 200
    policy = dict(part.strip().split(" ", 1) for part in response.headers["content-security-policy"].split(";"))
    assert policy["default-src"] == "'none'"
    assert policy["script-src"] == policy["style-src"] == policy["connect-src"] == "'self'"
    assert (policy["frame-ancestors"], policy["form-action"], policy["base-uri"]) == ("'none'",) * 3
    assert "unsafe-inline" not in response.headers["content-security-policy"]
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["x-frame-options"] == "DENY"
    if path.endswith(".js"):
        assert "javascript" in response.headers["content-type"]
    if path == "/console":
        assert "<script" in response.text
        assert "<script>" not in response.text  # no inline script: every one has a src
        assert "http://" not in response.text
        assert "https://" not in response.text


@only_on("sqlite")  # static files: the database plays no part
async def test_console_assets_outside_the_folder_are_not_served(make_service: ServiceFactory) -> None:
    service = await make_service()
    for path in ("/console/../api/app.py", "/console/%2e%2e/routes/console.py", "/console/nope.js"):
        assert (await service.api.get(path)).status_code == 404, path
    slash = await service.api.get("/console/")
    assert (slash.status_code, slash.headers["location"]) == (308, "../console")
