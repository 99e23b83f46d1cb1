"""Logs under a short real load: `serve` and `simulate` as processes, 500 tasks, JSON logs."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from sensortasks.testing import MosquittoBroker

from .conftest import ServeProcess
from .test_cli import FILE_ID

SENSORS = 50
TASKS = 500
FIRST_SERIAL = 7_000_000


def records(path: Path) -> list[dict[str, Any]]:
    """Every line of a log, each parsed as one JSON object (fails on any other line)."""
    parsed = []
    for line in path.read_text().splitlines():
        if line.strip():
            entry = json.loads(line)
            assert {"time", "level", "logger", "message"} <= entry.keys(), line
            parsed.append(entry)
    return parsed


def wait_for(check: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_json_logs_and_no_pending_publish_warnings_under_load(
    serve: ServeProcess, broker: MosquittoBroker, tmp_path: Path
) -> None:
    serve.env |= {"SENSORTASKS_LOG_FORMAT": "json"}  # the environment variable, for serve
    serve.start()
    fleet_log = tmp_path / "simulate.log"
    with fleet_log.open("wb") as log:
        fleet = subprocess.Popen(
            [sys.executable, "-m", "sensortasks", "simulate", "--sensors", str(SENSORS), "--first-serial",
             str(FIRST_SERIAL), "--work-s", "0", "--log-format", "json", "--log-level", "info"],
            env=serve.env | {"SENSORTASKS_LOG_FORMAT": "text"},  # the flag wins
            stdout=subprocess.PIPE, stderr=log,
        )  # fmt: skip
    try:
        metrics = f"{serve.url}/metrics"
        wait_for(lambda: f"sensortasks_sensors_online {SENSORS:.1f}" in httpx.get(metrics).text, "the fleet")
        tasks = [
            {"sensor_serial": FIRST_SERIAL + i % SENSORS, "file_id": FILE_ID, "type": "update_firmware"}
            for i in range(TASKS)
        ]
        assert httpx.post(f"{serve.url}/v1/tasks/bulk", json={"tasks": tasks}, timeout=30).status_code == 201
        done = f'sensortasks_tasks{{status="Completed"}} {TASKS:.1f}'
        wait_for(lambda: done in httpx.get(metrics).text, f"{TASKS} tasks to complete")
    finally:
        fleet.send_signal(signal.SIGINT)
        summary, _ = fleet.communicate(timeout=30)
    assert serve.signal(signal.SIGTERM) == 0

    served = records(serve.workdir / f"serve-{serve.starts}.log")
    simulated = records(fleet_log)
    everything = served + simulated
    assert not [r for r in everything if "pending publish" in r["message"]]
    assert not [r for r in everything if r["logger"] == "mqtt"]
    assert not [r for r in served if r["logger"].startswith("alembic")]
    assert [r["message"] for r in served].count("shutting down") == 1
    actions = {(r["logger"], r.get("action")) for r in served}
    assert {("sensortasks.dispatcher.service", "started"), ("sensortasks.dispatcher.service", "stopped")} <= actions
    assert ("sensortasks.dispatcher.link", "connected") in actions
    assert not [r for r in served if r["level"] == "INFO" and r.get("task_id")]  # per-task lines are DEBUG
    assert b"FleetStats(" not in summary
    assert f"{SENSORS} of {SENSORS} sensor(s) connected".encode() in summary
