"""`sensortasks bench` runs both sides and ends with the ratio line, with one serve process
or several on a scratch PostgreSQL database."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys

import pytest

from tests.e2e.test_soak import databases


@pytest.mark.slow
def test_bench_prints_rates_and_the_ratio_last() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sensortasks", "bench", "--tasks", "200", "--sensors", "10"],
        capture_output=True,
        text=True,
        timeout=180,
        check=True,
    )
    lines = result.stdout.strip().splitlines()
    assert re.fullmatch(r"ratio: \d+\.\d\d", lines[-1]), result.stdout
    assert any(line.startswith("raw MQTT baseline") for line in lines)
    assert any(line.startswith("sensortasks") for line in lines)
    assert float(lines[-1].split()[1]) > 0


@pytest.mark.slow
@pytest.mark.postgres
async def test_bench_with_two_instances_on_postgres_sums_their_cpu(postgres_url: str) -> None:
    args = ["bench", "--tasks", "200", "--sensors", "10", "--instances", "2", "--database", postgres_url]
    result = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "sensortasks", *args], capture_output=True, text=True, timeout=180
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    assert re.fullmatch(r"ratio: \d+\.\d\d", lines[-1]), result.stdout
    assert float(lines[-1].split()[1]) > 0
    assert any(line.startswith("sensortasks x2 ") for line in lines)
    created = {line.split()[0]: line.split()[1:] for line in lines if line.startswith("bench-")}
    assert [name[-2:] for name in created] == ["-1", "-2"], result.stdout
    assert sum(int(created_cpu[0]) for created_cpu in created.values()) == 200
    total = next(line for line in lines if line.startswith("all serve processes"))
    assert float(total.split()[4]) == pytest.approx(sum(float(c[1]) for c in created.values()), abs=0.02)
    scratch = re.search(r"scratch database (\S+) created", result.stderr)
    assert scratch, result.stderr
    assert f"scratch database {scratch.group(1)} dropped" in result.stderr
    assert scratch.group(1) not in await databases()
