"""Node.js for the tests: find node and npm, and install a package-lock.json once.

Tests that need Node.js skip with the reason when node, npm or the npm registry is missing,
unless ``SENSORTASKS_REQUIRE_NODE=1`` (CI), where they fail instead so they cannot skip silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any, NoReturn

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Where installs for the tests' own tools go (gitignored).
CACHE = ROOT / ".cache" / "npm"
NODE_SENSOR = ROOT / "examples" / "node-sensor"
MIN_NODE_MAJOR = 18
INSTALL_TIMEOUT_S = 100
STOP_TIMEOUT_S = 10.0
LOG_TIMEOUT_S = 10.0
_STAMP = ".sensortasks-installed"


def unavailable(reason: str) -> NoReturn:
    if os.environ.get("SENSORTASKS_REQUIRE_NODE") == "1":
        pytest.fail(reason + " and SENSORTASKS_REQUIRE_NODE=1")
    pytest.skip(reason)


def node() -> str:
    """The node executable (version 18 or later), or skip."""
    path = shutil.which("node")
    if path is None:
        unavailable("node is not installed")
    version = subprocess.run([path, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    if int(version.lstrip("v").split(".")[0]) < MIN_NODE_MAJOR:
        unavailable(f"node {version} is older than {MIN_NODE_MAJOR}")
    return path


def npm_ci(project: Path, *, into: Path | None = None) -> Path:
    """Install `project`'s package-lock.json with ``npm ci --ignore-scripts`` into `into`
    (default: the project itself) and return that folder. Nothing is done while the lock is
    unchanged since the last install; skips when npm or the registry is unreachable."""
    node()
    npm = shutil.which("npm")
    if npm is None:
        unavailable("npm is not installed")
    files = [project / "package.json", project / "package-lock.json"]
    digest = hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()
    target = into or project
    stamp = target / "node_modules" / _STAMP
    if stamp.is_file() and stamp.read_text() == digest:
        return target
    target.mkdir(parents=True, exist_ok=True)
    if into is not None:
        for file in files:
            shutil.copyfile(file, target / file.name)
    command = [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--fetch-retries=1", "--fetch-timeout=20000"]
    try:
        done = subprocess.run(
            command, cwd=target, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        unavailable(f"npm ci in {target} took over {INSTALL_TIMEOUT_S} s (is the npm registry reachable?)")
    if done.returncode != 0:
        ping = subprocess.run([npm, "ping"], capture_output=True, text=True, timeout=30, check=False)
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        if ping.returncode != 0:
            unavailable(f"the npm registry is unreachable, npm ci in {target} failed: {tail}")
        pytest.fail(f"npm ci in {target} failed:\n{tail}")
    stamp.write_text(digest)
    return target


class NodeSensor:
    """examples/node-sensor running as a child process; its JSON log lines are collected as they come."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[dict[str, Any]] = []
        self._changed = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, executable: str, serial: int, **environment: str) -> NodeSensor:
        """Start it for `serial` (its environment as keywords; simulated work of 200 ms)."""
        environment = {"PATH": os.environ.get("PATH", ""), "SENSOR_SERIAL": str(serial), "SENSOR_WORK_MS": "200"} | (
            environment
        )
        process = await asyncio.create_subprocess_exec(
            executable, "sensor.js", cwd=NODE_SENSOR, env=environment, stdout=asyncio.subprocess.PIPE
        )
        return cls(process)

    async def _read(self) -> None:
        assert self.process.stdout is not None
        try:
            async for raw in self.process.stdout:
                with contextlib.suppress(ValueError):
                    self.lines.append(json.loads(raw))
                self._changed.set()
        finally:
            self._changed.set()

    def logged(self, event: str, **fields: Any) -> list[dict[str, Any]]:
        return [line for line in self.lines if line["event"] == event and fields.items() <= line.items()]

    async def wait_logged(self, event: str, **fields: Any) -> dict[str, Any]:
        """The first log line of `event` with these fields, waiting for it (bounded)."""
        try:
            async with asyncio.timeout(LOG_TIMEOUT_S):
                while not (found := self.logged(event, **fields)):
                    if self._reader.done():
                        raise AssertionError(f"node sensor exited ({self.process.returncode}) before {event}")
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(
                f"node sensor did not log {event} {fields} in {LOG_TIMEOUT_S} s: {self.lines}"
            ) from None
        return found[0]

    async def terminate(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(STOP_TIMEOUT_S):
            code = await self.process.wait()
        await self._reader
        return code

    async def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
