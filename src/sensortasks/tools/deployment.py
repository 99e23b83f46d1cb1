"""What ``bench`` and ``soak`` share to run the product as it is deployed: N ``sensortasks
serve`` processes over one database, each with its own HTTP port and instance name, in one
MQTT share group when there are several, and the CPU each used.

A PostgreSQL URL given to a tool names a *server*, never data to use: `scratch_database`
creates a database of its own there and drops it afterwards, however the run ends.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Self

import httpx
from sqlalchemy import NullPool, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine

from sensortasks.errors import Unavailable
from sensortasks.store import upgrade
from sensortasks.store.engine import safe_url
from sensortasks.testing import free_port

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0
#: PostgreSQL truncates identifiers to 63 bytes.
MAX_DATABASE_NAME = 63


def spawn_cli(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """``python -m sensortasks ARGS`` with its output in `log`."""
    with log.open("wb") as out:
        return subprocess.Popen(  # noqa: S603
            [sys.executable, "-m", "sensortasks", *args], env=env, stdout=out, stderr=subprocess.STDOUT
        )


async def wait_healthy(url: str, process: subprocess.Popen[bytes] | None = None, *, poll_s: float = 0.1) -> None:
    """Poll `url`/healthz every `poll_s` until it answers 200; give up when `process` exits or at the deadline."""
    deadline = time.monotonic() + START_TIMEOUT_S
    async with httpx.AsyncClient() as http:
        while time.monotonic() < deadline and (process is None or process.poll() is None):
            try:
                if (await http.get(f"{url}/healthz", timeout=2)).status_code == 200:  # noqa: PLR2004
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(poll_s)
    raise RuntimeError(f"sensortasks serve at {url} did not become healthy")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a running (or stopped) process, from ``/proc`` (Linux); 0 when gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_bytes(pid: int) -> int:
    """``VmHWM`` of a live process (Linux): the most resident memory it has had."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def as_utc(moment: datetime) -> datetime:
    """SQLite hands UTC timestamps back without their zone."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# -- the scratch database -------------------------------------------------------------
def is_postgres(url: str) -> bool:
    try:
        return make_url(url).get_backend_name() == "postgresql"
    except ArgumentError:
        return False


def scratch_name(url: str, label: str) -> str:
    """``<db>_<label>_<hex>``: named after the database of `url`, so its owner recognises it."""
    base = re.sub(r"[^a-z0-9_]", "_", (make_url(url).database or "postgres").lower())
    suffix = f"_{label}_{uuid.uuid4().hex[:8]}"
    return base[: MAX_DATABASE_NAME - len(suffix)] + suffix


async def _admin(url: str, statement: str) -> None:
    engine = create_async_engine(url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            await conn.execute(text(statement))
    except (DBAPIError, OSError) as exc:
        reason = exc.orig if isinstance(exc, DBAPIError) else exc
        raise Unavailable(f"cannot use the database server {safe_url(url)}: {reason}") from exc
    finally:
        await engine.dispose()


@contextmanager
def scratch_database(url: str, label: str, say: Callable[[str], None]) -> Iterator[str]:
    """A new, empty database on the server of `url` (its own database is only connected to,
    to create and drop ours); yields its URL, and drops it on the way out, Ctrl-C included.

    Sync on purpose: it wraps the tool's ``asyncio.run``, so it still runs after the event
    loop was interrupted.
    """
    name = scratch_name(url, label)
    asyncio.run(_admin(url, f'CREATE DATABASE "{name}"'))
    say(f"scratch database {name} created on {safe_url(url)}")
    try:
        yield make_url(url).set(database=name).render_as_string(hide_password=False)
    finally:
        asyncio.run(_admin(url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        say(f"scratch database {name} dropped")


@contextmanager
def tool_database(server: str | None, workdir: Path, label: str, say: Callable[[str], None]) -> Iterator[str]:
    """The database a tool runs on: a scratch database on the PostgreSQL `server`, or by
    default a new SQLite file in `workdir`."""
    if server is None:
        yield f"sqlite+aiosqlite:///{workdir}/{label}.db"
        return
    with scratch_database(server, label, say) as url:
        yield url


# -- the serve processes -------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class InstanceFigures:
    """What one instance went through, for the tools' final tables."""

    name: str
    starts: int
    kills: int
    frozen_s: float
    accepted: int
    cpu_s: float


class Instance:
    """One ``sensortasks serve`` process (and its successors after a kill) under one name."""

    def __init__(self, name: str, env: dict[str, str], workdir: Path) -> None:
        self.name = name
        self.port = free_port()
        self.env = env | {"SENSORTASKS_INSTANCE": name, "SENSORTASKS_HTTP_PORT": str(self.port)}
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None
        #: False while killed or starting, and while frozen: a load balancer sends it nothing.
        self.serving = False
        self.frozen_since: float | None = None
        self.starts = self.kills = self.accepted = 0
        self.frozen_s = self._ended_cpu_s = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def log(self) -> Path:
        return self.workdir / f"{self.name}.{self.starts}.log"

    async def start(self, *, poll_s: float = 0.1) -> None:
        """Spawn serve and wait until its /healthz answers 200 (asked every `poll_s`)."""
        self.starts += 1
        self.process = spawn_cli(["serve", "--log-level", "warning"], self.env, self.log)
        try:
            await wait_healthy(self.url, self.process, poll_s=poll_s)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}:\n{self.log.read_text(errors='replace')[-3000:]}") from None
        self.serving = True

    def cpu_s(self) -> float:
        """CPU of every process this instance has run, the current one included."""
        return self._ended_cpu_s + (cpu_seconds(self.process.pid) if self.process else 0.0)

    def _end(self, sig: signal.Signals) -> None:
        process, self.process = self.process, None
        self.serving = False
        if process is None:
            return
        self._ended_cpu_s += cpu_seconds(process.pid)
        self._resume(process)
        process.send_signal(sig)
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def kill(self) -> None:
        """SIGKILL: no graceful anything."""
        self.kills += 1
        self._end(signal.SIGKILL)

    def stop(self) -> None:
        self._end(signal.SIGTERM)

    def freeze(self) -> None:
        """SIGSTOP: the process keeps its sockets, its database connections (and whatever
        transaction they hold) and its memory, answers nothing, and resumes, unaware, at `thaw`."""
        self._running().send_signal(signal.SIGSTOP)
        self.serving = False
        self.frozen_since = time.monotonic()

    def thaw(self) -> None:
        self._resume(self._running())
        self.serving = True

    def _running(self) -> subprocess.Popen[bytes]:
        if self.process is None:
            raise RuntimeError(f"instance {self.name} is not running")
        return self.process

    def _resume(self, process: subprocess.Popen[bytes]) -> None:
        if self.frozen_since is not None:
            process.send_signal(signal.SIGCONT)
            self.frozen_s += time.monotonic() - self.frozen_since
            self.frozen_since = None

    def figures(self) -> InstanceFigures:
        return InstanceFigures(self.name, self.starts, self.kills, self.frozen_s, self.accepted, self.cpu_s())


class Deployment:
    """N instances of ``serve`` over `database_url`: one share group, distinct names and ports.

    `env` is the environment every instance shares (``os.environ`` included, so settings
    the user exported, such as ``SENSORTASKS_INSTANCE_TIMEOUT_S``, reach them). One instance
    runs exactly as a single ``serve`` does, with no share group. Stops them all on exit.
    """

    def __init__(self, instances: int, env: dict[str, str], database_url: str, workdir: Path, name: str) -> None:
        self.database_url = database_url
        shared = env | {"SENSORTASKS_DATABASE_URL": database_url}
        if instances > 1:
            shared["SENSORTASKS_MQTT_SHARE_GROUP"] = name
        names = [name] if instances == 1 else [f"{name}-{i}" for i in range(1, instances + 1)]
        self.instances = [Instance(n, shared, workdir) for n in names]

    async def start(self) -> None:
        """Migrate once (N processes migrating one new database at once would race), then
        start every instance and wait until all are healthy."""
        await upgrade(self.database_url)
        await asyncio.gather(*(instance.start() for instance in self.instances))

    def serving(self) -> list[Instance]:
        return [i for i in self.instances if i.serving]

    def figures(self) -> list[InstanceFigures]:
        return [i.figures() for i in self.instances]

    def stop(self) -> None:
        for instance in self.instances:
            instance.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
