"""The SDK on paho driven by the asyncio loop (`sensortasks.mqtt.loop`): a burst answered in
order on one connection, and a broker restart survived with the report that waited for it."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import aiomqtt
import pytest
from paho.mqtt import client as paho

from sensortasks.mqtt.packets import BufferedClient
from sensortasks.protocol import StatusReport, TaskMessage
from sensortasks.sensor import Job, SensorClient, SensorOptions
from sensortasks.testing import MosquittoBroker

from .conftest import eventually, listening

SERIAL = 12345678909790
BURST = 200


def task(task_id: int) -> TaskMessage:
    return TaskMessage(
        task_id=task_id, type="update_firmware", file_id="a3e4aed2-b091-41a6-8265-2185040e2c32", attempt=1, timeout_s=60
    )


async def send(broker: MosquittoBroker, *messages: TaskMessage) -> None:
    async with aiomqtt.Client(broker.host, broker.port, protocol=aiomqtt.ProtocolVersion.V5) as client:
        await asyncio.gather(*(client.publish(f"sensors/{SERIAL}/tasks", m.to_json(), qos=1) for m in messages))


class ReportingSensor(SensorClient):
    """Keeps each report it published and whether the broker acknowledged it."""

    def __init__(self, serial: int, handler: Any, options: SensorOptions) -> None:
        super().__init__(serial, handler, options)
        self.reports: list[tuple[int, str, bool]] = []

    async def publish_status(self, report: StatusReport) -> bool:
        accepted = await super().publish_status(report)
        self.reports.append((report.task_id, report.status, accepted))
        return accepted


async def test_a_burst_to_one_sensor_is_answered_in_order_on_one_connection(
    broker: MosquittoBroker, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.INFO, logger="sensortasks.sensor.client")
    statuses: list[dict[str, Any]] = []
    reads = [0]
    socket_recv = paho.Client._sock_recv

    def counted(client: paho.Client, size: int) -> bytes:
        reads[0] += isinstance(client, BufferedClient)
        return socket_recv(client, size)

    monkeypatch.setattr(paho.Client, "_sock_recv", counted)

    async def work(job: Job) -> dict[str, int]:
        return {"n": job.task_id}

    async with (
        SensorClient(SERIAL, work, SensorOptions(host=broker.host, port=broker.port)),
        listening(broker, f"sensors/{SERIAL}/status", lambda m: statuses.append(json.loads(m.payload))),  # type: ignore[arg-type]
    ):
        await send(broker, *(task(i) for i in range(1, BURST + 1)))

        async def all_answered() -> bool:
            return len(statuses) >= 2 * BURST

        await eventually(all_answered, what=f"{2 * BURST} statuses")
    by_task: dict[int, list[str]] = {}
    for status in statuses:
        by_task.setdefault(status["task_id"], []).append(status["status"])
    assert by_task == {i: ["ongoing", "completed"] for i in range(1, BURST + 1)}
    completed = [s["task_id"] for s in statuses if s["status"] == "completed"]
    assert completed == list(range(1, BURST + 1))
    assert [s["result"] for s in statuses if s["status"] == "completed"] == [{"n": i} for i in completed]
    connects = [r for r in caplog.records if "connected to" in r.getMessage()]
    assert len(connects) == 1
    # 400 PUBACKs and 200 tasks in: paho alone asks the socket three times a packet or more.
    assert reads[0] < BURST, reads


async def test_after_a_broker_restart_the_sensor_reconnects_resubscribes_and_reports(broker: MosquittoBroker) -> None:
    started, release = asyncio.Event(), asyncio.Event()

    async def work(job: Job) -> dict[str, str]:
        if job.task_id == 1:
            started.set()
            await release.wait()
        return {"ok": "yes"}

    options = SensorOptions(host=broker.host, port=broker.port, reconnect_backoff_s=0.1, reconnect_backoff_max_s=0.5)
    sensor = ReportingSensor(SERIAL, work, options)
    await sensor.start()
    try:
        await send(broker, task(1))
        await asyncio.wait_for(started.wait(), 10)
        await asyncio.to_thread(broker.stop)  # not persistent: the sensor's session is gone too

        async def disconnected() -> bool:
            return not sensor.connected.is_set()

        await eventually(disconnected, what="the sensor to notice the broker left")
        release.set()  # its "completed" report waits for the broker to return
        await asyncio.to_thread(broker.start)
        await asyncio.wait_for(sensor.connected.wait(), 10)

        async def reported() -> bool:
            return (1, "completed", True) in sensor.reports

        await eventually(reported, what="the waiting report to be acknowledged after the restart")
        statuses: list[dict[str, Any]] = []
        async with listening(broker, f"sensors/{SERIAL}/status", lambda m: statuses.append(json.loads(m.payload))):  # type: ignore[arg-type]
            await send(broker, task(2))  # reaches the sensor only if it subscribed again

            async def answered() -> bool:
                return [s["status"] for s in statuses] == ["ongoing", "completed"]

            await eventually(answered, what="task 2's statuses")
    finally:
        await sensor.stop()
    assert (1, "ongoing", True) in sensor.reports
