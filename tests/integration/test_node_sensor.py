"""The Node.js example sensor (examples/node-sensor, MQTT.js) against a real sensortasks and broker.

It was written from docs/protocol.md alone, so these tests check the document as much as the
example: a second implementation, in another language and MQTT library, must interoperate.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import subprocess
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import aiomqtt
import pytest
from sqlalchemy import insert, text

from sensortasks.protocol import TaskMessage, Topics
from sensortasks.store import utcnow
from sensortasks.store.tables import Task as TaskRow
from sensortasks.testing import MosquittoBroker
from tests.integration.conftest import FILE_ID, Service, ServiceFactory, eventually
from tests.node import NODE_SENSOR, NodeSensor, node, npm_ci

#: 2^53 + 1: JavaScript's JSON.parse reads it as 2^53. Used as the serial and as the task id.
BIG = 2**53 + 1
GOOD_FILE = "0b7c5a1e-7d7e-4d4e-9f1a-0c8d7b6a5f40"
BAD_FILE = "1c8d6b2f-8e8f-4e5f-8a2b-1d9e8c7b6a51"
SLOW_FILE = "2d9e7c3a-9f9a-4f6a-9b3c-2e0f9d8c7b62"


@pytest.fixture
async def start_node(broker: MosquittoBroker) -> AsyncIterator[Callable[..., Any]]:
    """Start the example sensor for `serial` on the plain broker (extra environment as keywords)."""
    executable = node()
    npm_ci(NODE_SENSOR)
    started: list[NodeSensor] = []

    async def start(serial: int, **extra: str) -> NodeSensor:
        sensor = await NodeSensor.start(executable, serial, SENSOR_MQTT_URL=broker.url, **extra)
        started.append(sensor)
        await sensor.wait_logged("online")
        return sensor

    yield start
    for sensor in started:
        await sensor.kill()


async def seen_online(service: Service, serial: int, *, online: bool = True) -> None:
    async def check() -> bool:
        response = await service.api.get(f"/v1/sensors/{serial}")
        return bool(response.status_code == 200 and response.json()["online"] is online)

    await eventually(check, what=f"sensor {serial} to be seen online={online}")


async def reserve_task_ids_below(service: Service, first_id: int) -> None:
    """Make the next task id `first_id`: SQLite gives max(id) + 1, PostgreSQL's sequence is moved
    there. The filler is a Cancelled task of another sensor, whose id is the rounded one a
    double-based parser would produce."""
    now = utcnow()
    row = {
        "id": first_id - 1, "sensor_serial": 1, "type": "update_firmware", "status_id": 5, "attempt_count": 0,
        "max_attempts": 1, "timeout_s": 60, "file_id": FILE_ID, "created_at": now, "updated_at": now,
    }  # fmt: skip
    async with service.store.db.writer.begin() as conn:  # type: ignore[attr-defined]
        await conn.execute(insert(TaskRow.__table__), row)  # type: ignore[attr-defined]
        if conn.dialect.name == "postgresql":
            await conn.execute(
                text("SELECT setval(pg_get_serial_sequence('tasks', 'id'), :last)"), {"last": first_id - 1}
            )


@contextlib.asynccontextmanager
async def watch(broker: MosquittoBroker, topic: str) -> AsyncIterator[asyncio.Queue[tuple[bytes, bool]]]:
    """(payload, retained) of every message on `topic`, retained ones included."""
    queue: asyncio.Queue[tuple[bytes, bool]] = asyncio.Queue()
    async with aiomqtt.Client(broker.host, broker.port, protocol=aiomqtt.ProtocolVersion.V5) as client:
        await client.subscribe(topic, qos=1)

        async def pump() -> None:
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                await queue.put((message.payload, message.retain))

        task = asyncio.create_task(pump())
        try:
            yield queue
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def test_the_node_sensor_completes_a_task_repeats_its_final_status_and_goes_offline_cleanly(
    make_service: ServiceFactory, start_node: Callable[..., Any], broker: MosquittoBroker
) -> None:
    service = await make_service()
    topics = Topics()
    await reserve_task_ids_below(service, BIG)
    sensor: NodeSensor = await start_node(BIG)
    await seen_online(service, BIG)

    created = await service.create(BIG)
    assert created["id"] == BIG
    done = await service.wait_status(BIG, "Completed")
    assert done["attempt_count"] == 1
    result = (await service.api.get(f"/v1/tasks/{BIG}/result")).json()
    assert result["result"] == {"applied": "update_firmware", "file_id": FILE_ID}, result
    assert sensor.logged("task", task_id=str(BIG), action="start")

    # A re-sent finished attempt is answered with its final status, without running it again.
    async with watch(broker, topics.status(BIG)) as statuses:
        again = TaskMessage(v=1, task_id=BIG, type="update_firmware", file_id=FILE_ID, attempt=1, timeout_s=3600)
        await service.publish(topics.tasks(BIG), again.model_dump_json())
        payload, retained = await asyncio.wait_for(statuses.get(), 10)
    report = json.loads(payload)
    assert (report["task_id"], report["attempt"], report["status"], retained) == (BIG, 1, "completed", False)
    assert report["result"] == result["result"]
    assert sensor.logged("task", task_id=str(BIG), action="repeat-final")
    assert len(sensor.logged("finished")) == 1

    assert await sensor.terminate() == 0
    assert [line["event"] for line in sensor.lines][-3:] == ["offline", "disconnected", "stopped"]
    async with watch(broker, topics.presence(BIG)) as presence:
        payload, retained = await asyncio.wait_for(presence.get(), 10)
    assert (json.loads(payload), retained) == ({"v": 1, "online": False}, True)
    await seen_online(service, BIG, online=False)


class FileServer:
    """The customer's file service: GET /files/{id} with a Repr-Digest (RFC 9530)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.requests: list[str] = []
        files = {GOOD_FILE: b"firmware 2.4.1", BAD_FILE: b"firmware 2.4.1, corrupted", SLOW_FILE: b"slow"}
        digest = {k: hashlib.sha256(b"firmware 2.4.1" if k == BAD_FILE else v).digest() for k, v in files.items()}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                file_id = self.path.removeprefix("/files/")
                server.requests.append(file_id)
                if file_id == SLOW_FILE:
                    server.release.wait(30)  # a download still running when the task is cancelled
                body = files[file_id]
                self.send_response(200)
                self.send_header("Repr-Digest", f"sha-256=:{base64.b64encode(digest[file_id]).decode()}:")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                with contextlib.suppress(OSError):
                    self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @contextlib.contextmanager
    def running(self) -> Iterator[FileServer]:
        self.thread.start()
        try:
            yield self
        finally:
            self.release.set()
            self.httpd.shutdown()
            self.httpd.server_close()


async def test_the_node_sensor_verifies_files_and_handles_a_cancel(
    make_service: ServiceFactory, start_node: Callable[..., Any]
) -> None:
    service = await make_service()
    serial = 12345678909789
    with FileServer().running() as files:
        sensor: NodeSensor = await start_node(serial, SENSOR_FILE_SERVER_URL=files.url)
        await seen_online(service, serial)

        good = await service.create(serial, file_id=GOOD_FILE)
        done = await service.wait_status(good["id"], "Completed")
        expected = base64.b64encode(hashlib.sha256(b"firmware 2.4.1").digest()).decode()
        result = (await service.api.get(f"/v1/tasks/{good['id']}/result")).json()["result"]
        assert (done["attempt_count"], result["sha256"], result["bytes"]) == (1, expected, 14)

        # A file that does not match its checksum is an error that no retry can fix.
        bad = await service.create(serial, file_id=BAD_FILE, max_attempts=3)
        failed = await service.wait_status(bad["id"], "Error")
        assert failed["attempt_count"] == 1
        assert "checksum mismatch" in failed["error"]

        # Cancelled while downloading: the sensor stops and says nothing more for that task.
        slow = await service.create(serial, file_id=SLOW_FILE)
        await service.wait_status(slow["id"], "Ongoing")
        await eventually(lambda: _requested(files, SLOW_FILE), what="the slow download to start")
        assert (await service.api.delete(f"/v1/tasks/{slow['id']}")).status_code == 200
        await sensor.wait_logged("cancelled", task_id=str(slow["id"]), was_running=True)
        files.release.set()
        after = await service.create(serial, file_id=GOOD_FILE)
        await service.wait_status(after["id"], "Completed")
        events = await service.events(slow["id"])
        assert not [e for e in events if e["kind"] == "ignored"], events
        assert (await service.task(slow["id"]))["status_name"] == "Cancelled"
        assert not sensor.logged("finished", task_id=str(slow["id"]))


async def _requested(files: FileServer, file_id: str) -> bool:
    return file_id in files.requests


def test_the_node_sensor_unit_tests_pass() -> None:
    """examples/node-sensor's own tests (node --test): the protocol rules without a broker."""
    done = subprocess.run([node(), "--test"], cwd=NODE_SENSOR, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "# fail 0" in done.stdout
