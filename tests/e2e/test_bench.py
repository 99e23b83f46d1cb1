"""`sensortasks bench` runs the raw flows and the product on one broker, prints its tables and
the ratio line last, nothing on stderr, and leaves no session or retained message of its
clients on the broker; with several serve processes on a scratch PostgreSQL database too; and
its opt-in scenarios (backlog, paced, bulk-during, resume) print their figures before the ratio."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import threading
import uuid

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from sensortasks.testing import MosquittoBroker
from tests.conftest import POSTGRES_URL, postgres_admin
from tests.e2e.test_soak import databases

RUNS = ("raw paho", "raw aiomqtt")
RUN_ROW = re.compile(r"(.+?) +(\d+) +([\d.]+) +([\d.]+) +(\d+) +(\d+) +(\d+)")
CPU_ROW = re.compile(r"(.+?) +(\d+|-) +(\d+|-) +(\d+|-) +(\d+|-) +(\d+)")
FIRST_SERIAL = 500_000_000_000_000
PACED_ROW = re.compile(r"(raw paho|sensortasks) +(\d+) +([\d.]+) +([\d.]+) +([\d.]+) +([\d.]+)")
SCENARIO_LINES = ("backlog:", "paced", "bulk-during:", "resume:")


def run_bench(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "sensortasks", "bench", "--tasks", "200", "--sensors", "10", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=270, check=False)


def section(lines: list[str], header: str, row: re.Pattern[str]) -> dict[str, tuple[str, ...]]:
    """The rows of the table under the line starting with `header`, by their first column."""
    start = next(n for n, line in enumerate(lines) if line.startswith(header)) + 1
    found = {}
    for line in lines[start:]:
        matched = row.fullmatch(line)
        if matched is None:
            break
        found[matched.group(1)] = matched.groups()[1:]
    return found


def check_report(result: subprocess.CompletedProcess[str], product: str) -> list[str]:
    """The structure every report has; returns its lines."""
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""
    lines = result.stdout.strip().splitlines()
    assert re.fullmatch(r"ratio: \d+\.\d\d", lines[-1]), result.stdout
    runs = section(lines, "run ", RUN_ROW)
    assert list(runs) == [*RUNS, product], result.stdout
    rates = {name: float(row[2]) for name, row in runs.items()}
    for row in runs.values():
        assert row[0] == "200"
        assert float(row[2]) > 0
        assert int(row[3]) <= int(row[4]) <= int(row[5])
    assert list(section(lines, "CPU µs per lifecycle", CPU_ROW)) == [*RUNS, product], result.stdout
    best = max(RUNS, key=rates.__getitem__)
    assert lines[-2].endswith(f"the best raw flow of this run, {best}")
    assert float(lines[-1].split()[1]) == pytest.approx(rates[product] / rates[best], abs=0.011)
    return lines


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_bench_on_its_own_broker_reports_every_process_and_the_ratio_last() -> None:
    lines = check_report(run_bench(), "sensortasks")
    assert any(re.fullmatch(r"broker: mosquitto \d+\.\d+\.\d+, set_tcp_nodelay true .*", line) for line in lines)
    cpu = section(lines, "CPU µs per lifecycle", CPU_ROW)
    for name, cells in cpu.items():
        # /proc counts CPU in clock ticks (10 ms): a short run's broker may show 0.
        assert "-" not in cells, name
        assert int(cells[0]) > 0, name
        total = cells[4]
        assert int(total) == pytest.approx(sum(int(c) for c in cells[:4]), abs=4)
    serve = section(lines, "serve instance", re.compile(r"(bench-\w+) +(\d+) +([\d.]+) +(\d+) +([\d.]+)"))
    ((created, cpu_s, per_lifecycle, rss_mib),) = serve.values()
    assert created == "200"
    assert float(per_lifecycle) == pytest.approx(float(cpu_s) * 1e6 / 200, rel=0.01)
    assert int(per_lifecycle) == pytest.approx(int(cpu["sensortasks"][0]), abs=1)
    assert 20 < float(rss_mib) < 1000
    assert not [line for line in lines if line.startswith(SCENARIO_LINES)]


def found(lines: list[str], prefix: str, pattern: str) -> tuple[str, ...]:
    """The groups of `pattern` in the one line starting with `prefix`."""
    (line,) = [line for line in lines if line.startswith(prefix)]
    matched = re.search(pattern, line)
    assert matched, line
    return matched.groups()


def check_lateness(lines: list[str], prefix: str) -> None:
    events, applied, p50, p99, top = found(
        lines, prefix, r": (\d+) of (\d+) events received, late p50 (\d+) ms, p99 (\d+) ms, max (\d+) ms$"
    )
    assert 0 < int(events) <= int(applied)
    assert 0 < int(p50) <= int(p99) <= int(top) < 60_000


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_bench_scenarios_print_their_figures_before_the_ratio() -> None:
    lines = check_report(
        run_bench("--backlog", "2000", "--paced", "--bulk-during", "2000", "--resume", "500"), "sensortasks"
    )
    saturated = float(section(lines, "run ", RUN_ROW)["sensortasks"][2])
    rss, rate = found(
        lines, "backlog: serve", r"RSS ([\d.]+) MiB with 2200 tasks in the database; sensortasks ([\d.]+) lifecycles/s"
    )
    assert 20 < float(rss) < 1000
    assert float(rate) == saturated

    (target,) = found(lines, "paced: 200 tasks", r"at ([\d.]+)/s \(half of the saturated")
    assert float(target) == pytest.approx(saturated / 2, abs=0.06)
    paced = section(lines, "paced run", PACED_ROW)
    assert list(paced) == ["raw paho", "sensortasks"]
    for tasks, achieved, p50, p95, p99 in paced.values():
        assert tasks == "200"
        assert float(achieved) == pytest.approx(float(target), rel=0.25)
        assert 0 < float(p50) <= float(p95) <= float(p99)
    to_sent, to_sent_99, to_started, to_started_99 = found(
        lines,
        "paced: sensortasks stages",
        r"created -> sent_at ([\d.]+) / ([\d.]+); sent_at -> started_at ([\d.]+) / ([\d.]+)$",
    )
    assert 0 <= float(to_sent) <= float(to_sent_99)
    assert 0 < float(to_started) <= float(to_started_99)

    assert found(lines, "bulk-during: posted", r"its (\d+) of (\d+) 'created' events received [\d.]+ s after") == (
        "2000",
        "2000",
    )
    check_lateness(lines, "bulk-during: paced tasks' events before")
    check_lateness(lines, "bulk-during: paced tasks' events applied while")

    first, healthy = found(
        lines, "resume: from", r"first dispatch \(earliest started_at\) ([\d.]+) s; /healthz 200 ([\d.]+) s"
    )
    assert 0 < float(first) < 60
    assert 0 < float(healthy) < 60


def session_present(broker: MosquittoBroker, identifier: str) -> bool:
    """Whether the broker holds a session for `identifier` (CONNACK's flag on a clean_start=False
    connect; with no session expiry, ours ends when we leave)."""
    connected, present = threading.Event(), []
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=identifier, protocol=paho.MQTTv5)
    client.on_connect = lambda _c, _u, flags, *_: (present.append(flags.session_present), connected.set())
    client.connect(broker.host, broker.port, clean_start=False)
    client.loop_start()
    try:
        assert connected.wait(10)
    finally:
        client.disconnect()
        client.loop_stop()
    return present[0]


def retained(broker: MosquittoBroker, filters: list[str]) -> list[str]:
    """Topics under `filters` with a retained message: the broker sends those on SUBSCRIBE,
    before a marker we publish once subscribed comes back to us."""
    marker = f"bench-test/{uuid.uuid4().hex}"
    found: list[str] = []
    back = threading.Event()
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)

    def on_message(_c: paho.Client, _u: object, message: paho.MQTTMessage) -> None:
        if message.topic == marker:
            back.set()
        elif message.retain:
            found.append(message.topic)

    client.on_message = on_message
    client.on_connect = lambda c, *_: c.subscribe([(f, 1) for f in [*filters, marker]])
    client.on_subscribe = lambda c, *_: c.publish(marker, b"x", qos=1)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        assert back.wait(10)
    finally:
        client.disconnect()
        client.loop_stop()
    return found


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_bench_leaves_no_session_nor_retained_message_on_a_given_broker(broker: MosquittoBroker) -> None:
    lines = check_report(run_bench("--mqtt-url", broker.url), "sensortasks")
    assert any(line.startswith(f"broker: {broker.host}:{broker.port} (--mqtt-url") for line in lines)
    assert all(cells[3] == "-" for cells in section(lines, "CPU µs per lifecycle", CPU_ROW).values())
    (instance,) = section(lines, "serve instance", re.compile(r"(bench-\w+) .*"))
    for identifier in (f"sensortasks-{instance}", f"sensor-{FIRST_SERIAL}", f"sensor-{FIRST_SERIAL + 9}"):
        assert not session_present(broker, identifier), identifier
    assert retained(broker, ["sensors/#", "ops/dispatchers/#"]) == []


@pytest.fixture
async def postgres_server() -> str:
    """The local PostgreSQL server (skips when unreachable); the bench makes its own database there."""
    await (await postgres_admin()).close()
    return POSTGRES_URL


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.timeout(300)
async def test_bench_with_two_instances_on_postgres_sums_their_cpu(postgres_server: str) -> None:
    result = await asyncio.to_thread(run_bench, "--instances", "2", "--database", postgres_server)
    lines = check_report(result, "sensortasks x2")
    created = section(lines, "serve instance", re.compile(r"(bench-\w+-\d) +(\d+) +([\d.]+) +(\d+) +([\d.]+)"))
    assert [name[-2:] for name in created] == ["-1", "-2"], result.stdout
    assert sum(int(row[0]) for row in created.values()) == 200
    total = next(line for line in lines if line.startswith("all serve processes"))
    assert float(total.split()[4]) == pytest.approx(sum(float(row[1]) for row in created.values()), abs=0.02)
    scratch = re.search(r"scratch database (\S+) created", result.stdout)
    assert scratch, result.stdout
    assert f"scratch database {scratch.group(1)} dropped" in result.stdout
    assert scratch.group(1) not in await databases()
