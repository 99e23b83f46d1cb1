"""Real processes: a dispatcher killed with SIGKILL and restarted, graceful shutdown, ./scripts/run."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiomqtt
import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from sensortasks.sensor import Job, SensorClient
from sensortasks.testing import MosquittoBroker, free_port

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

    sensors = [SensorClient(s, work, host=broker.host, port=broker.port) for s in serials]
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


@pytest.mark.slow
def test_scripts_run_starts_a_working_service_on_the_secure_broker(tmp_path: Path) -> None:
    port, mqtt_port, tls_port = free_port(), free_port(), free_port()
    run_dir = tmp_path / "run"
    env = os.environ | {
        "SENSORTASKS_MQTT_PORT": str(mqtt_port),
        "SENSORTASKS_MQTT_TLS_PORT": str(tls_port),
        "SENSORTASKS_RUN_DIR": str(run_dir),
        "SENSORTASKS_HTTP_PORT": str(port),
        "SENSORTASKS_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/run.db",
        "SENSORTASKS_INSTANCE": "scripts-run",
    }
    env.pop("SENSORTASKS_MQTT_URL", None)
    with (tmp_path / "run.log").open("wb") as log:
        process = subprocess.Popen([str(ROOT / "scripts" / "run")], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        health = _wait_healthy(port, process, tmp_path / "run.log")
        assert health.json() == {"status": "ok", "database": "up", "broker": "up"}
        # Authentication is on by default: no key, no tasks.
        assert httpx.get(f"http://127.0.0.1:{port}/v1/tasks", timeout=5).status_code == 401
        key = subprocess.run(
            [sys.executable, "-m", "sensortasks", "keys", "create", "demo"], env=env, capture_output=True, text=True,
            check=True, timeout=60,
        ).stdout.strip().splitlines()[-1]  # fmt: skip
        registered = httpx.post(
            f"http://127.0.0.1:{port}/v1/sensors", json={"serial": 5}, headers={"Authorization": f"Bearer {key}"}
        )
        assert registered.status_code == 201
        assert registered.json()["mqtt"]["username"] == "sensor-5"  # the secure broker issued credentials
        anonymous = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        assert anonymous.connect("127.0.0.1", mqtt_port) == 0
        anonymous.loop_start()
        time.sleep(0.5)
        assert not anonymous.is_connected()  # refused: anonymous access is off
        anonymous.loop_stop()
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(30)
        pid_file = run_dir / "mosquitto.pid"
        if pid_file.exists():
            os.kill(int(pid_file.read_text()), signal.SIGTERM)
    assert code == 0


def _wait_healthy(port: int, process: subprocess.Popen[bytes], log: Path) -> httpx.Response:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
        except httpx.HTTPError:
            time.sleep(0.2)
    raise AssertionError(log.read_text())
