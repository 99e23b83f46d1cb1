"""Wake-ups between instances on PostgreSQL (LISTEN/NOTIFY): a task created or cancelled through
an API-only instance reaches its sensor at once through a dispatcher of another process, not
at that dispatcher's next sweep or outbox poll (made an hour long here, so only a wake-up can
explain a prompt delivery)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator

import aiomqtt
import httpx
import pytest

from sensortasks.api import create_app
from sensortasks.config import Settings
from sensortasks.dispatcher import Dispatcher, dispatcher_link, outbox, service
from sensortasks.runtime import build_service, build_store
from sensortasks.store import upgrade
from sensortasks.testing import MosquittoBroker
from tests.conftest import only_on

from .conftest import FILE_ID, listening

pytestmark = [only_on("postgresql"), pytest.mark.postgres]
SERIAL = 4242
PROMPT_S = 1.5


@contextlib.asynccontextmanager
async def api_only_client(database_url: str, broker: MosquittoBroker) -> AsyncIterator[httpx.AsyncClient]:
    """Instance "a": the REST API alone. Instance "b": a dispatcher alone, in "another process"."""
    common = {"mqtt_url": broker.url, "database_url": database_url, "auth": "disabled", "mqtt_share_group": "g"}
    await upgrade(database_url)
    store_a = build_store(Settings(instance="a", **common))
    settings_b = Settings(instance="b", **common)
    store_b = build_store(settings_b)
    dispatcher = Dispatcher(settings_b, store_b, dispatcher_link(settings_b))
    runner = asyncio.create_task(dispatcher.run())
    await asyncio.wait_for(dispatcher.link.connected.wait(), 10)
    app = create_app(build_service(Settings(instance="a", **common), store_a))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://a.test") as client:
        yield client
    dispatcher.stop()
    await asyncio.wait_for(runner, 15)
    for store in (store_a, store_b):
        await store.db.dispose()


async def test_a_task_made_through_another_instance_is_sent_and_cancelled_at_once(
    monkeypatch: pytest.MonkeyPatch, broker: MosquittoBroker, database_url: str
) -> None:
    monkeypatch.setattr(service, "SWEEP_INTERVAL_S", 3600.0)
    monkeypatch.setattr(outbox, "OUTBOX_POLL_S", 3600.0)
    received: asyncio.Queue[tuple[float, dict[str, object]]] = asyncio.Queue()

    def on(message: aiomqtt.Message) -> None:
        received.put_nowait((time.monotonic(), json.loads(message.payload)))  # type: ignore[arg-type]

    async with listening(broker, f"sensors/{SERIAL}/tasks", on), api_only_client(database_url, broker) as api:
        created_at = time.monotonic()
        response = await api.post(
            "/v1/tasks", json={"sensor_serial": SERIAL, "file_id": FILE_ID, "type": "update_firmware"}
        )
        assert response.status_code == 201, response.text
        task_id = response.json()["id"]
        at, task = await asyncio.wait_for(received.get(), 10)
        assert (task["kind"], task["task_id"]) == ("task", task_id)
        assert at - created_at < PROMPT_S

        cancelled_at = time.monotonic()
        assert (await api.delete(f"/v1/tasks/{task_id}")).status_code == 200
        at, cancel = await asyncio.wait_for(received.get(), 10)
        assert (cancel["kind"], cancel["task_id"]) == ("cancel", task_id)
        assert at - cancelled_at < PROMPT_S
