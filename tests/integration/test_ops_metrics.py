"""``/metrics`` (labels, bounded HTTP routes, process metrics, promtool) and ``ops/stats``
(online flag, expiry of a crashed instance's copy, a final offline copy on a clean stop)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import subprocess
from typing import Any

import aiomqtt
import pytest

from sensortasks.dispatcher import Dispatcher, dispatcher_link
from sensortasks.ops.metrics import UNMATCHED
from sensortasks.testing import MosquittoBroker
from tests.conftest import only_on

from .conftest import Service, ServiceFactory, eventually

# The exposition format and ops/stats come from the process, not from SQL: the dispatch flows
# and the store queries behind them are proven on both databases in test_dispatch and test_store.
pytestmark = only_on("sqlite")


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample of the exposition `text`, or None."""
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{{wanted}}} " if labels else f"{name} "):
            return float(line.rsplit(" ", 1)[1])
    return None


async def test_metrics_have_labels_routes_and_process_figures(make_service: ServiceFactory) -> None:
    service = await make_service()
    await service.sensor(5)
    task = await service.create(5)
    await service.wait_status(task["id"], "Completed")
    assert (await service.api.get("/v1/tasks/999999")).status_code == 404
    assert (await service.api.get("/no/such/path/123")).status_code == 404

    async def counted() -> bool:
        text = (await service.api.get("/metrics")).text
        return sample(text, "sensortasks_transitions_total", **{"from": "Ongoing", "to": "Completed"}) == 1.0

    await eventually(counted, what="the completion to be counted")
    text = (await service.api.get("/metrics")).text
    assert sample(text, "sensortasks_transitions_total", **{"from": "Pending", "to": "Ongoing"}) == 1.0
    assert sample(text, "sensortasks_transitions_total", **{"from": "Ongoing", "to": "Cancelled"}) == 0.0
    assert sample(text, "sensortasks_sensors_online") == 1.0
    assert sample(text, "sensortasks_rollouts", state="running") == 0.0  # every state, from 0
    assert (sample(text, "sensortasks_leader"), sample(text, "sensortasks_instances")) == (1.0, 1.0)
    route = {"method": "GET", "route": "/v1/tasks/{task_id}"}
    assert (sample(text, "sensortasks_http_requests_total", **route, status="200") or 0) >= 1
    assert sample(text, "sensortasks_http_requests_total", **route, status="404") == 1.0
    assert sample(text, "sensortasks_http_requests_total", method="GET", route="unmatched", status="404") == 1.0
    assert sample(text, "sensortasks_http_request_duration_seconds_count", **route, status="404") == 1.0
    routes = set(re.findall(r'route="([^"]*)"', text))
    assert "/v1/tasks/{task_id}" in routes
    assert not [r for r in routes if r != UNMATCHED and re.search(r"/\d", r)]  # never a raw path
    assert "/no/such/path/123" not in routes
    assert sample(text, "process_resident_memory_bytes")
    assert "python_info{" in text


async def test_metrics_pass_promtool(make_service: ServiceFactory) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian: apt-get install prometheus)")
    service = await make_service()
    await service.api.get("/v1/tasks")
    text = (await service.api.get("/metrics")).text
    checked = await asyncio.to_thread(
        subprocess.run, [promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


async def retained_stats(broker: MosquittoBroker, *, wait: float = 0.3) -> tuple[dict[str, Any], int | None] | None:
    """The retained ``ops/stats`` a new subscriber gets (payload, expiry interval), or None."""
    async with aiomqtt.Client(broker.host, broker.port, protocol=aiomqtt.ProtocolVersion.V5) as client:
        await client.subscribe("ops/stats", qos=1)
        try:
            async with asyncio.timeout(wait):
                async for message in client.messages:
                    payload = message.payload if isinstance(message.payload, bytes) else b"{}"
                    expiry = getattr(message.properties, "MessageExpiryInterval", None)
                    return json.loads(payload), expiry
        except TimeoutError:
            return None
    return None


async def test_stats_say_online_and_a_clean_stop_leaves_an_offline_copy(make_service: ServiceFactory) -> None:
    service = await make_service(stats_interval_s=0.2)

    async def live() -> bool:
        got = await retained_stats(service.broker)
        return got is not None and got[0]["online"] is True

    await eventually(live, what="a live ops/stats")
    payload, expiry = await retained_stats(service.broker) or ({}, None)
    assert payload["instance"] == service.settings.instance
    assert payload["interval_s"] == 0.2
    assert expiry is not None
    assert 0 < expiry <= 1  # 3 intervals, rounded up to whole seconds

    await _stop(service)
    payload, expiry = await retained_stats(service.broker) or ({}, None)
    assert payload["online"] is False
    assert (payload["dispatch_rate"], payload["complete_rate"]) == (0.0, 0.0)
    assert expiry is None  # the last word of a clean stop stays


async def test_a_vanished_instance_stats_expire(make_service: ServiceFactory) -> None:
    """No final copy (as after kill -9): the retained live copy disappears on its own."""
    service = await make_service(stats_interval_s=3600)
    await _stop(service)  # gives up the lead: the next instance publishes
    settings = service.settings.model_copy(update={"instance": "vanishing", "stats_interval_s": 0.2})
    runner = asyncio.create_task(Dispatcher(settings, service.store, dispatcher_link(settings)).run())

    async def live() -> bool:
        got = await retained_stats(service.broker)
        return got is not None and got[0]["instance"] == "vanishing"

    try:
        await eventually(live, what="a live ops/stats")
    finally:
        runner.cancel()  # cancelled, not stopped: nothing more is published
        with contextlib.suppress(asyncio.CancelledError):
            await runner

    async def gone() -> bool:
        return await retained_stats(service.broker) is None

    await eventually(gone, timeout=5, what="the retained ops/stats to expire")


async def _stop(service: Service) -> None:
    service.dispatcher.stop()
    runner = next(t for t in asyncio.all_tasks() if t.get_name() == "dispatcher")
    await asyncio.wait_for(asyncio.shield(runner), 15)
