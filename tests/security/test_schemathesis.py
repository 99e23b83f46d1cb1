"""Schemathesis against `/openapi.json` of a real `sensortasks serve`, with a valid API key: no 5xx."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from sensortasks.testing import MosquittoBroker
from tests.e2e.conftest import ServeProcess


class Live:
    def __init__(self, serve: ServeProcess, key: str) -> None:
        self.serve = serve
        self.headers = {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    workdir: Path = tmp_path_factory.mktemp("schemathesis")
    with MosquittoBroker(workdir=workdir / "broker") as broker:
        serve = ServeProcess(broker, workdir, SENSORTASKS_AUTH="required")
        serve.start()
        created = subprocess.run(
            [sys.executable, "-m", "sensortasks", "keys", "create", "fuzzer"],
            env=serve.env, capture_output=True, text=True, check=True, timeout=60,
        )  # fmt: skip
        live = Live(serve, created.stdout.strip().splitlines()[-1])
        # Something to find: a registered sensor with a task, so ids and serials hit real rows too.
        with httpx.Client(base_url=serve.url, headers=live.headers) as api:
            api.post("/v1/sensors", json={"serial": 1}).raise_for_status()
            body = {"sensor_serial": 1, "file_id": "a3e4aed2-b091-41a6-8265-2185040e2c32", "type": "update_firmware"}
            api.post("/v1/tasks", json=body).raise_for_status()
        yield live
        serve.stop()


def opened(case: schemathesis.Case, live: Live) -> int:
    """The status of a generated request to a stream (below 500), after reading its first bytes."""
    request = case.as_transport_kwargs(base_url=live.serve.url, headers=live.headers)
    with httpx.stream(
        request["method"], request["url"], params=request.get("params"), headers=request.get("headers"), timeout=10
    ) as response:
        assert response.status_code < 500, response.read()
        if response.status_code == 200:
            assert next(response.iter_text()).startswith(": start")
        return response.status_code


def fuzz(operation: Any, live: Live, statuses: Counter[int]) -> None:
    """30 generated requests to `operation`, counted by status in `statuses`."""
    responses = operation.definition.raw["responses"].values()
    streams = any("text/event-stream" in response.get("content", {}) for response in responses)

    @given(case=operation.as_strategy())
    @settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    def check(case: schemathesis.Case) -> None:
        if streams:  # it never ends on its own: its status and first bytes, then hang up
            statuses[opened(case, live)] += 1
            return
        response = case.call(base_url=live.serve.url, headers=live.headers, timeout=30)
        statuses[response.status_code] += 1
        case.validate_response(response, checks=[not_a_server_error])

    check()


def test_no_server_errors(live: Live) -> None:
    """Every operation, 30 generated requests each (seeded). Driven from hypothesis directly:
    schemathesis 4.32's pytest plugin does not load under pytest 9."""
    schema = schemathesis.openapi.from_url(f"{live.serve.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 11
    statuses: Counter[int] = Counter()
    for operation in operations:
        fuzz(operation, live, statuses)
    assert live.serve.process is not None
    assert live.serve.process.poll() is None
    assert sum(statuses.values()) >= 10 * len(operations), statuses
    assert {200, 201, 404, 422} <= set(statuses), statuses  # valid and invalid requests both generated
