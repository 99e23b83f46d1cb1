"""Real processes: a dispatcher killed with SIGKILL and restarted, graceful shutdown."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import aiomqtt
import httpx

from sensortasks.sensor import Job, SensorClient, SensorOptions
from sensortasks.testing import MosquittoBroker

from .conftest import ServeProcess

FILE_ID = "a3e4aed2-b091-41a6-8265-2185040e2c32"
ROOT = Path(__file__).resolve().parents[2]


async def test_kill_9_and_restart_loses_nothing(serve: ServeProcess, broker: MosquittoBroker) -> None:
    serve.start()
    serials = [700000000000000 + i for i in range(5)]

    async def work(job: Job) -> dict[str, int]:
        await job.progress(50)
        await asyncio.sleep(0.15)
        return {"task": job.task_id}

    sensors = [SensorClient(s, work, SensorOptions(host=broker.host, port=broker.port)) for s in serials]
    await asyncio.gather(*(s.start() for s in sensors))
    try:
        async with httpx.AsyncClient(base_url=serve.url, timeout=10) as api:
            body = {
                "tasks": [
                    {"sensor_serial": serials[i % 5], "file_id": FILE_ID, "type": "update_firmware"} for i in range(40)
                ]
            }
            ids = (await api.post("/v1/tasks/bulk", json=body)).json()["ids"]
            for _ in range(2):  # two crashes, each with tasks Pending and Ongoing
                await asyncio.sleep(0.6)
                statuses = {
                    t["status_name"] for t in (await api.get("/v1/tasks", params={"limit": 100})).json()["data"]
                }
                assert {"Pending", "Ongoing"} <= statuses or "Completed" in statuses
                serve.signal(signal.SIGKILL)
                await asyncio.sleep(0.5)  # sensors keep reporting into the dispatcher's session
                serve.start()

            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                page = (await api.get("/v1/tasks", params={"limit": 100})).json()["data"]
                if all(t["status_name"] == "Completed" for t in page):
                    break
                await asyncio.sleep(0.2)
            tasks = {t["id"]: t for t in (await api.get("/v1/tasks", params={"limit": 100})).json()["data"]}
            assert sorted(tasks) == sorted(ids)
            assert {t["status_name"] for t in tasks.values()} == {"Completed"}, serve.log()
            for task_id, task in tasks.items():
                events = (await api.get(f"/v1/tasks/{task_id}/events")).json()["data"]
                completed = [e for e in events if e["to_status_name"] == "Completed"]
                sent = [e for e in events if e["kind"] == "sent"]
                assert len(completed) == 1
                assert task["attempt_count"] == len(sent) == max(e["attempt"] for e in events)
    finally:
        for sensor in sensors:
            await sensor.stop()


async def test_sigterm_and_sigint_shut_down_cleanly(serve: ServeProcess, broker: MosquittoBroker) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        serve.start()
        assert "AUTHENTICATION IS DISABLED" in serve.log()  # said loudly at every start
        seen: list[bytes] = []
        async with aiomqtt.Client(broker.host, broker.port, protocol=aiomqtt.ProtocolVersion.V5) as watcher:
            await watcher.subscribe("ops/dispatchers/e2e", qos=1)
            started = time.monotonic()
            code = await asyncio.to_thread(serve.signal, sig)
            elapsed = time.monotonic() - started
            async with asyncio.timeout(5):
                async for message in watcher.messages:
                    seen.append(message.payload if isinstance(message.payload, bytes) else b"")
                    if b'"offline"' in seen[-1]:
                        break
        assert code == 0
        assert elapsed < 10
        assert b'"status":"offline"' in seen[-1]
