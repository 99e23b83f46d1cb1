"""`sensortasks soak`: several instances on a scratch PostgreSQL database, which is dropped
afterwards (Ctrl-C included); bad combinations refused before anything starts."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import postgres_admin

SOAK = [sys.executable, "-m", "sensortasks", "soak", "--sensors", "10", "--instances", "2"]


async def databases() -> set[str]:
    admin = await postgres_admin()
    try:
        return {row["datname"] for row in await admin.fetch("SELECT datname FROM pg_database")}
    finally:
        await admin.close()


def scratch_of(stderr: str) -> str:
    found = re.search(r"scratch database (\S+) created", stderr)
    assert found, stderr
    return found.group(1)


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.faults
@pytest.mark.timeout(480)
async def test_two_instances_keep_every_promise_and_the_scratch_database_is_dropped(postgres_url: str) -> None:
    args = [*SOAK, "--minutes", "0.3", "--freeze-minutes", "0.1", "--seed", "2", "--database", postgres_url]
    result = await asyncio.to_thread(subprocess.run, args, capture_output=True, text=True, timeout=450)
    table = dict(re.findall(r"^(.+?)  +(\S.*)$", result.stdout, re.MULTILINE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert int(table["accepted"]) > 0
    for promise in ("lost", "completed twice", "sent twice in one attempt", "sent out of per-sensor order"):
        assert table[f"{promise} (must be 0)"] == "0", result.stdout
    assert table["dispatcher frozen (SIGSTOP)"] == "1"
    instances = re.findall(r"^(soak-\d) +(\d+) +(\d+) +(\d+) ", result.stdout, re.MULTILINE)
    assert [name for name, *_ in instances] == ["soak-1", "soak-2"], result.stdout
    assert sum(int(accepted) for _, accepted, _, _ in instances) == int(table["accepted"])
    assert all(kills == restarts for _, _, kills, restarts in instances)
    scratch = scratch_of(result.stderr)
    assert scratch.startswith(postgres_url.rsplit("/", 1)[1] + "_soak_")
    assert f"scratch database {scratch} dropped" in result.stderr
    assert scratch not in await databases()


@pytest.mark.slow
@pytest.mark.postgres
async def test_ctrl_c_stops_everything_and_drops_the_scratch_database(postgres_url: str) -> None:
    args = [*SOAK, "--minutes", "5", "--database", postgres_url]
    soak = await asyncio.create_subprocess_exec(*args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen: list[str] = []
    deadline = time.monotonic() + 90
    while not (seen and seen[-1].startswith("soak: ")):  # the fleet is up, faults are coming
        assert soak.stderr is not None
        line = await asyncio.wait_for(soak.stderr.readline(), max(0.1, deadline - time.monotonic()))
        assert line, "".join(seen)
        seen.append(line.decode())
    stderr = "".join(seen)
    scratch = scratch_of(stderr)
    pids = [int(pid) for pid in re.findall(r"pid (\d+)", stderr)]
    assert len(pids) == 2
    assert scratch in await databases()
    soak.send_signal(signal.SIGINT)
    _, rest = await asyncio.wait_for(soak.communicate(), 90)
    assert soak.returncode != 0
    assert f"scratch database {scratch} dropped" in rest.decode()
    assert scratch not in await databases()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["soak", "--instances", "2"], "--instances above 1 needs --database postgresql+asyncpg://"),
        (["bench", "--instances", "2"], "--instances above 1 needs --database postgresql+asyncpg://"),
        (["soak", "--database", "sqlite:///x.db"], "--database: 'sqlite:///x.db' is not a PostgreSQL URL"),
        (["bench", "--database", "nonsense"], "--database: 'nonsense' is not a PostgreSQL URL"),
        (["bench", "--paced-rate", "500"], "--paced-rate sets the rate of --paced or --bulk-during"),
    ],
)
def test_instances_need_postgres_and_nothing_starts_otherwise(args: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sensortasks", *args], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 2
    assert message in " ".join(result.stderr.split()), result.stderr
    assert "baseline" not in result.stderr
