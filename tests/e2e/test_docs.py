"""The API's documents through tools others wrote: Redocly's linter on /openapi.json, and Swagger UI
and ReDoc rendered by headless Chromium from a real `sensortasks serve`, with nothing fetched from
anywhere but 127.0.0.1."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from sensortasks.api import create_app
from sensortasks.config import Settings
from sensortasks.runtime import build_service, build_store
from tests.e2e.conftest import ServeProcess
from tests.npm_tools import npm_tool

ROOT = Path(__file__).resolve().parents[2]
REDOCLY = ("@redocly/cli", "2.77.0")
CHROMIUM = Path("/usr/bin/chromium")
PATHS = ("/v1/tasks", "/v1/tasks/bulk", "/v1/tasks/export.csv", "/v1/tasks/{task_id}", "/v1/tasks/{task_id}/events",
         "/v1/tasks/{task_id}/result", "/v1/sensors", "/v1/sensors/{serial}", "/healthz", "/metrics")  # fmt: skip


@pytest.mark.slow
def test_redocly_recommended_rules_pass(tmp_path: Path) -> None:
    """Redocly's `recommended` ruleset (redocly.yaml turns nothing off): 0 errors, 0 warnings."""
    redocly = npm_tool(*REDOCLY, "redocly")
    settings = Settings(database_url=f"sqlite+aiosqlite:///{tmp_path}/lint.db")
    document = tmp_path / "openapi.json"
    document.write_text(json.dumps(create_app(build_service(settings, build_store(settings))).openapi()))
    linted = subprocess.run(
        [str(redocly), "lint", "--config", str(ROOT / "redocly.yaml"), "--format=json", str(document)],
        check=False, capture_output=True, text=True, timeout=300, cwd=tmp_path,
        env=os.environ | {"REDOCLY_TELEMETRY": "off", "REDOCLY_SUPPRESS_UPDATE_NOTICE": "true"},
    )  # fmt: skip
    report = json.loads(linted.stdout)
    problems = [f"{p['severity']} {p['ruleId']}: {p['message']} at {p['location']}" for p in report["problems"]]
    assert report["totals"] == {"errors": 0, "warnings": 0, "ignored": 0}, problems
    assert linted.returncode == 0, linted.stderr


def chromium() -> Path:
    if not CHROMIUM.exists():
        reason = f"Debian's chromium is not installed ({CHROMIUM}; apt-get install chromium)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}, and CI=true")
        pytest.skip(reason)
    return CHROMIUM


def net_log(path: Path) -> tuple[list[str], list[str], int]:
    """From Chromium's net log: the URLs the page asked for, every TCP connection attempted, and
    the QUIC sessions' events. (Chromium also connects a UDP socket to 2001:4860:4860::8888 to learn
    whether IPv6 is routable; that sends nothing, so UDP connects are not counted.)"""
    log: dict[str, Any] = json.loads(path.read_text())
    names = {number: name for name, number in log["constants"]["logEventTypes"].items()}
    sources = {number: name for name, number in log["constants"]["logSourceType"].items()}
    requested, connected, quic = [], [], 0
    for event in log["events"]:
        name, params = names[event["type"]], event.get("params", {})
        page_asked = params.get("request_type") == "main frame" or params.get("initiator", "").startswith("http")
        if name == "URL_REQUEST_START_JOB" and page_asked:
            requested.append(params["url"])
        elif name == "TCP_CONNECT_ATTEMPT" and "address" in params:  # its end event has none
            connected.append(params["address"])
        quic += sources[event["source"]["type"]] == "QUIC_SESSION"
    return requested, connected, quic


@pytest.mark.slow
@pytest.mark.parametrize(("page", "marker"), [("/docs", 'data-path="{}"'), ("/redoc", "{}")])
def test_docs_render_in_chromium_from_this_server_alone(
    serve: ServeProcess, tmp_path: Path, page: str, marker: str
) -> None:
    browser = chromium()
    serve.start()
    log = tmp_path / "net-log.json"
    rendered = subprocess.run(
        [str(browser), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         # Nothing can leave even if something tried: no proxy, no name resolves but 127.0.0.1.
         "--no-proxy-server", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
         f"--user-data-dir={tmp_path / 'profile'}", f"--log-net-log={log}",
         "--virtual-time-budget=20000", "--dump-dom", f"{serve.url}{page}"],
        check=False, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    dom = rendered.stdout
    missing = [path for path in PATHS if marker.format(path) not in dom]
    assert missing == [], f"{page} did not render these operations; stderr:\n{rendered.stderr[-2000:]}"
    requested, connected, quic = net_log(log)
    assert f"{serve.url}/openapi.json" in requested
    assert [url for url in requested if urlsplit(url).hostname != "127.0.0.1"] == []
    assert connected
    assert [address for address in connected if not address.startswith("127.0.0.1:")] == []
    assert quic == 0
