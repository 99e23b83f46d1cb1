"""`sensortasks bench` runs both sides and ends with the ratio line."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest


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
