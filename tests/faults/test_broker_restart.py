"""The broker killed with SIGKILL mid-flow and restarted, on SQLite and PostgreSQL: nothing accepted is lost."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sensortasks.sensor import Job, SensorClient, SensorOptions
from sensortasks.testing import MosquittoBroker
from tests.e2e.conftest import ServeProcess

FILE_ID = "a3e4aed2-b091-41a6-8265-2185040e2c32"
pytestmark = pytest.mark.faults


@pytest.fixture
def persistent_broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    with MosquittoBroker(persistence=True, workdir=tmp_path / "broker") as broker:
        yield broker


async def wait_all_terminal(api: httpx.AsyncClient, ids: list[int], timeout: float) -> dict[int, dict[str, object]]:
    deadline = time.monotonic() + timeout
    tasks: dict[int, dict[str, object]] = {}
    while time.monotonic() < deadline:
        tasks = {t["id"]: t for t in (await api.get("/v1/tasks", params={"limit": 1000})).json()["data"]}
        if all(tasks[i]["status_name"] in ("Completed", "Error", "Cancelled") for i in ids):
            break
        await asyncio.sleep(0.25)
    return tasks


async def check_history(api: httpx.AsyncClient, tasks: dict[int, dict[str, object]]) -> None:
    for task_id, task in tasks.items():
        events = (await api.get(f"/v1/tasks/{task_id}/events")).json()["data"]
        assert [e["to_status_name"] for e in events].count("Completed") <= 1, events
        sent = [e for e in events if e["kind"] == "sent"]
        assert task["attempt_count"] == len(sent), events


async def test_broker_sigkill_and_restart(
    persistent_broker: MosquittoBroker, tmp_path: Path, database_url: str
) -> None:
    serve = ServeProcess(
        persistent_broker, tmp_path, SENSORTASKS_ACK_TIMEOUT_S="5", SENSORTASKS_DATABASE_URL=database_url
    )
    serve.start()
    serials = [800000000000000 + i for i in range(10)]

    async def work(job: Job) -> dict[str, int]:
        await asyncio.sleep(0.1)
        return {"task": job.task_id}

    options = SensorOptions(host=persistent_broker.host, port=persistent_broker.port, reconnect_backoff_max_s=1.0)
    sensors = [SensorClient(s, work, options) for s in serials]
    await asyncio.gather(*(s.start() for s in sensors))
    try:
        async with httpx.AsyncClient(base_url=serve.url, timeout=10) as api:
            body = {
                "tasks": [
                    {"sensor_serial": serials[i % 10], "file_id": FILE_ID, "type": "update_firmware"}
                    for i in range(100)
                ]
            }
            ids = (await api.post("/v1/tasks/bulk", json=body)).json()["ids"]
            for _ in range(2):
                await asyncio.sleep(0.7)
                persistent_broker.kill()
                await asyncio.sleep(1.0)
                assert (await api.get("/healthz")).status_code == 503  # the broker is down and it says so
                persistent_broker.start()

            tasks = await wait_all_terminal(api, ids, timeout=90)
            statuses = [tasks[i]["status_name"] for i in ids]
            assert statuses.count("Completed") == 100, (statuses, serve.log())
            await check_history(api, tasks)
            assert (await api.get("/healthz")).status_code == 200
    finally:
        for sensor in sensors:
            await sensor.stop()
        serve.stop()
