"""`sensortasks serve` as a real process, for crash and shutdown tests."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from sensortasks.testing import MosquittoBroker, free_port

START_TIMEOUT_S = 60.0
#: Task histories fetched at once (`histories`).
EVENT_FETCHES = 8


def wait_healthy(url: str, process: subprocess.Popen[Any], log: Callable[[], str]) -> None:
    """Poll `url`/healthz until it answers 200; fail with the log if `process` exits first."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        assert process.poll() is None, log()
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} did not become healthy:\n" + log())


class ServeProcess:
    def __init__(self, broker: MosquittoBroker, workdir: Path, **env: str) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.env = (
            os.environ
            | {
                "SENSORTASKS_MQTT_URL": broker.url,
                "SENSORTASKS_DATABASE_URL": f"sqlite+aiosqlite:///{workdir}/sensortasks.db",
                "SENSORTASKS_AUTH": "disabled",
                "SENSORTASKS_HTTP_PORT": str(self.port),
                "SENSORTASKS_INSTANCE": "e2e",
                "SENSORTASKS_RETRY_BACKOFF_S": "0.1",
                "SENSORTASKS_RETRY_BACKOFF_MAX_S": "0.5",
            }
            | env
        )
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.starts += 1
        with (self.workdir / f"serve-{self.starts}.log").open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "sensortasks", "serve"], env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        wait_healthy(self.url, self.process, self.log)

    def log(self) -> str:
        return (self.workdir / f"serve-{self.starts}.log").read_text(errors="replace")[-5000:]

    def signal(self, sig: signal.Signals) -> int:
        assert self.process is not None
        self.process.send_signal(sig)
        code = self.process.wait(30)
        self.process = None
        return code

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


async def all_tasks(api: httpx.AsyncClient, **filters: Any) -> dict[int, dict[str, Any]]:
    """Every task the API lists (with `filters` as query parameters: ``rollout_id=3``), by id (all pages)."""
    tasks: dict[int, dict[str, Any]] = {}
    params: dict[str, Any] = {"limit": 1000, **filters}
    while True:
        page = (await api.get("/v1/tasks", params=params)).json()
        tasks |= {t["id"]: t for t in page["data"]}
        if not page["has_more"]:
            return tasks
        params["cursor"] = page["next_cursor"]


async def histories(apis: Sequence[httpx.AsyncClient], ids: Sequence[int]) -> dict[int, list[dict[str, Any]]]:
    """Every task's history (``GET /v1/tasks/{id}/events``), `EVENT_FETCHES` at a time, through
    `apis` in turn."""
    gate = asyncio.Semaphore(EVENT_FETCHES)

    async def one(n: int, task_id: int) -> list[dict[str, Any]]:
        async with gate:
            response = await apis[n % len(apis)].get(f"/v1/tasks/{task_id}/events")
        assert response.status_code == 200, response.text
        data: list[dict[str, Any]] = response.json()["data"]
        return data

    found = await asyncio.gather(*(one(n, task_id) for n, task_id in enumerate(ids)))
    return dict(zip(ids, found, strict=True))


@pytest.fixture
def serve(broker: MosquittoBroker, tmp_path: Path) -> Iterator[ServeProcess]:
    process = ServeProcess(broker, tmp_path)
    yield process
    process.stop()
