"""The sensor SDK against a raw "dispatcher" client, and the simulated fleet."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiomqtt
import pytest

from sensortasks.protocol import CancelMessage, TaskMessage
from sensortasks.sensor import FleetStats, Job, SensorClient, SensorOptions, SimulationConfig, run_fleet
from sensortasks.testing import MosquittoBroker

SERIAL = 12345678909789


class RawDispatcher:
    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.statuses: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def send(self, message: TaskMessage | CancelMessage) -> None:
        await self.client.publish(f"sensors/{SERIAL}/tasks", message.to_json(), qos=1)

    async def next(self, timeout: float = 5.0) -> dict[str, Any]:
        return await asyncio.wait_for(self.statuses.get(), timeout)


@pytest.fixture
async def raw(broker: MosquittoBroker) -> AsyncIterator[RawDispatcher]:
    async with aiomqtt.Client(broker.host, broker.port, protocol=aiomqtt.ProtocolVersion.V5) as client:
        dispatcher = RawDispatcher(client)
        await client.subscribe(f"sensors/{SERIAL}/status", qos=1)

        async def pump() -> None:
            async for message in client.messages:
                await dispatcher.statuses.put(json.loads(message.payload))  # type: ignore[arg-type]

        task = asyncio.create_task(pump())
        yield dispatcher
        task.cancel()


def task_message(attempt: int = 1) -> TaskMessage:
    return TaskMessage(
        task_id=7, type="update_firmware", file_id="a3e4aed2-b091-41a6-8265-2185040e2c32", attempt=attempt, timeout_s=60
    )


async def test_a_resent_finished_task_gets_its_final_status_again(broker: MosquittoBroker, raw: RawDispatcher) -> None:
    runs: list[int] = []

    async def work(job: Job) -> dict[str, str]:
        runs.append(job.attempt)
        return {"version": "2.4.1"}

    async with SensorClient(SERIAL, work, SensorOptions(host=broker.host, port=broker.port)):
        await raw.send(task_message())
        assert [(await raw.next())["status"] for _ in range(2)] == ["ongoing", "completed"]
        await raw.send(task_message())  # re-delivery of the same attempt
        again = await raw.next()
        assert (again["status"], again["attempt"], again["result"]) == ("completed", 1, {"version": "2.4.1"})
        await raw.send(task_message(2))  # a new attempt runs again
        assert [(await raw.next())["status"] for _ in range(2)] == ["ongoing", "completed"]
    assert runs == [1, 2]


async def test_cancel_stops_the_work_and_silences_the_task(broker: MosquittoBroker, raw: RawDispatcher) -> None:
    stopped = asyncio.Event()

    async def work(job: Job) -> None:
        try:
            await asyncio.sleep(60)
        finally:
            stopped.set()

    async with SensorClient(SERIAL, work, SensorOptions(host=broker.host, port=broker.port)):
        await raw.send(task_message())
        assert (await raw.next())["status"] == "ongoing"
        await raw.send(CancelMessage(task_id=7))
        await asyncio.wait_for(stopped.wait(), 5)
        await raw.send(task_message())  # a late re-send of the cancelled attempt does not run it
        with pytest.raises(TimeoutError):
            await raw.next(timeout=0.5)


async def test_malformed_task_messages_do_not_stop_the_sensor(broker: MosquittoBroker, raw: RawDispatcher) -> None:
    async def work(job: Job) -> None:
        return None

    async with SensorClient(SERIAL, work, SensorOptions(host=broker.host, port=broker.port)):
        await raw.client.publish(f"sensors/{SERIAL}/tasks", b"\xff{not json", qos=1)
        await raw.send(task_message())
        assert [(await raw.next())["status"] for _ in range(2)] == ["ongoing", "completed"]


async def test_presence_is_retained_with_a_last_will(broker: MosquittoBroker) -> None:
    async def work(job: Job) -> None:
        return None

    async def presence() -> dict[str, Any]:
        async with aiomqtt.Client(broker.host, broker.port, protocol=aiomqtt.ProtocolVersion.V5) as client:
            await client.subscribe(f"sensors/{SERIAL}/presence", qos=1)
            async with asyncio.timeout(5):
                async for message in client.messages:
                    return dict(json.loads(message.payload))  # type: ignore[arg-type]
        raise AssertionError("no presence")

    async with SensorClient(SERIAL, work, SensorOptions(host=broker.host, port=broker.port)):
        assert await presence() == {"v": 1, "online": True}
    assert await presence() == {"v": 1, "online": False}


async def test_a_fleet_connects_and_stops(broker: MosquittoBroker) -> None:
    stop, started = asyncio.Event(), asyncio.Event()
    connected_at_start: list[int] = []

    def on_started(stats: FleetStats) -> None:
        connected_at_start.append(stats.connected)
        started.set()

    config = SimulationConfig(sensors=30, work_s=0, host=broker.host, port=broker.port, seed=1)
    fleet = asyncio.create_task(run_fleet(config, stop=stop, on_started=on_started))
    await asyncio.wait_for(started.wait(), 20)
    assert connected_at_start == [30]
    assert not fleet.done()  # it runs until told to stop
    stop.set()
    stats = await asyncio.wait_for(fleet, 20)
    assert stats.connected == 30
