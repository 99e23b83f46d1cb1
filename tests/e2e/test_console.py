"""The console in a real browser: Debian's Chromium driven by Playwright, against a real `serve`
(API key required) on Mosquitto with the shipped secure configuration (every sensor its own
account, issued at registration) and a simulated fleet (`sensortasks simulate` on those accounts).

One serve for the module. Every request the page makes is recorded: all go to 127.0.0.1, none
carries the key in its URL, and serve's log never shows it. A screenshot of each page is kept in
``test-artifacts/console/``. Without Chromium or Playwright the tests skip and say why (they
fail instead when CI=true)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from sensortasks.broker.dynsec import DynsecAdmin
from tests.e2e.conftest import ServeProcess
from tests.e2e.test_docs import chromium
from tests.security.conftest import ADMIN, DISPATCHER, INSTANCE, SecureBroker

pytestmark = pytest.mark.slow
try:
    from playwright.sync_api import Browser, Page, Playwright, expect, sync_playwright
except ImportError:  # pragma: no cover - depends on the environment
    sync_playwright = None

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "console"
FILE_ID = "a3e4aed2-b091-41a6-8265-2185040e2c32"
#: The simulated fleet (running from the start), a sensor that comes online only when the test
#: says, and one that never does.
FLEET, FLEET_SIZE = 810_000_000_000_001, 3
LATE = 810_000_000_000_100
OFFLINE = 810_000_000_000_200
TIMEOUT_MS = 15_000
WRONG_KEY = "stk_this-is-not-a-key-0123456789abcdef"
if sync_playwright is not None:
    expect.set_options(timeout=TIMEOUT_MS)


@dataclass
class Console:
    serve: ServeProcess
    broker: SecureBroker
    key: str
    browser: Browser
    #: The credentials of the sensor that comes online when the test says.
    late: dict[str, Any] = field(default_factory=dict)
    requested: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def register(self, serial: int, **labels: str) -> dict[str, Any]:
        """Register a sensor through the API: its credentials, as `sensors add` prints them."""
        with self.api() as api:
            registered: dict[str, Any] = api.post("/v1/sensors", json={"serial": serial, "labels": labels}).json()
        assert registered["mqtt"]["username"] == f"sensor-{serial}", registered
        return registered

    def simulate(self, *registrations: dict[str, Any]) -> None:
        """These sensors, each on its own broker account, as a process for the rest of the module."""
        serials = "-".join(str(r["serial"]) for r in registrations)
        credentials = self.serve.workdir / f"credentials-{serials}.jsonl"
        credentials.write_text("".join(json.dumps(r) + "\n" for r in registrations))
        command = [
            sys.executable,
            "-m",
            "sensortasks",
            "simulate",
            "--credentials",
            str(credentials),
            "--work-s",
            "0.3",
        ]
        env = self.serve.env | {"SENSORTASKS_MQTT_URL": f"mqtt://{self.broker.host}:{self.broker.port}"}
        with (self.serve.workdir / f"simulate-{serials}.log").open("wb") as log:
            self.processes.append(subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT))

    def page(self) -> Page:
        """A fresh tab, logged in with the key, every request and console problem recorded."""
        page = self.browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.on("request", lambda request: self.requested.append(request.url))
        page.on("pageerror", lambda error: self.problems.append(f"page error: {error}"))
        page.on("console", lambda m: self.problems.append(m.text) if m.type in ("error", "warning") else None)
        page.goto(f"{self.serve.url}/console")
        page.fill("#key", self.key)
        page.click("#login button[type=submit]")
        expect(page.locator("#live-state")).to_have_text("live")
        return page

    def api(self) -> httpx.Client:
        return httpx.Client(base_url=self.serve.url, headers={"Authorization": f"Bearer {self.key}"})


def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")  # noqa: T201 (where the artifact is)


def _playwright() -> Any:
    if sync_playwright is None:
        reason = "the playwright package is not installed (pip install -e '.[dev]')"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}, and CI=true")
        pytest.skip(reason)
    return sync_playwright


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    browser_path = chromium()
    start_playwright = _playwright()
    workdir: Path = tmp_path_factory.mktemp("console")
    with SecureBroker(workdir / "broker") as broker:
        asyncio.run(dispatcher_account(broker))  # before Playwright's own event loop runs
        with start_playwright() as playwright:
            serve = ServeProcess(
                broker, workdir, SENSORTASKS_AUTH="required", SENSORTASKS_INSTANCE=INSTANCE,
                SENSORTASKS_MQTT_URL=f"mqtt://{DISPATCHER[0]}:{DISPATCHER[1]}@{broker.host}:{broker.port}",
                SENSORTASKS_BROKER_ADMIN_URL=broker.admin_url,
            )  # fmt: skip
            serve.start()
            created = subprocess.run(
                [sys.executable, "-m", "sensortasks", "keys", "create", "console-customer"],
                env=serve.env, capture_output=True, text=True, check=True, timeout=60,
            )  # fmt: skip
            key = created.stdout.strip().splitlines()[-1]
            running = Console(serve, broker, key, launch(playwright, browser_path))
            fleet = [running.register(serial, ring="canary") for serial in range(FLEET, FLEET + FLEET_SIZE)]
            running.late = running.register(LATE)
            running.register(OFFLINE)
            running.simulate(*fleet)
            wait_online(running, range(FLEET, FLEET + FLEET_SIZE))
            try:
                yield running
            finally:
                for process in running.processes:
                    process.terminate()
                    process.wait(10)
                running.browser.close()
                serve.stop()
            log = (workdir / "serve-1.log").read_text()
            assert key not in log
            assert key[:12] not in log


async def dispatcher_account(broker: SecureBroker) -> None:
    """The dispatcher's own account (`INSTANCE`), as a deployment creates it before `serve`."""
    admin = DynsecAdmin(broker.host, broker.port, *ADMIN, timeout_s=5.0)
    try:
        await admin.add_dispatcher(INSTANCE, DISPATCHER[1])
    finally:
        await admin.close()


def wait_online(console: Console, serials: range) -> None:
    deadline = time.monotonic() + 30
    with console.api() as api:
        while not all(api.get(f"/v1/sensors/{serial}").json()["online"] for serial in serials):
            assert time.monotonic() < deadline, "the simulated fleet did not come online"
            time.sleep(0.1)


def launch(playwright: Playwright, path: Path) -> Browser:
    # Nothing can leave even if something tried: no proxy, no name resolves but 127.0.0.1.
    args = ["--no-sandbox", "--disable-gpu", "--no-proxy-server",
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"]  # fmt: skip
    return playwright.chromium.launch(executable_path=str(path), args=args)


def test_a_wrong_key_is_refused_and_never_logged(console: Console) -> None:
    page = console.browser.new_page()
    page.on("request", lambda request: console.requested.append(request.url))
    page.goto(f"{console.serve.url}/console")
    page.fill("#key", WRONG_KEY)
    page.click("#login button[type=submit]")
    expect(page.locator("#login-notice")).to_have_text("That key is not valid.")
    assert page.evaluate("sessionStorage.length") == 0
    expect(page.locator("#nav")).to_be_hidden()
    assert WRONG_KEY not in console.serve.log()
    page.close()


def test_log_in_and_see_the_overview(console: Console) -> None:
    page = console.page()
    expect(page.locator("#nav")).to_be_visible()
    expect(page.locator("[data-count=sensors] strong")).to_have_text(f"{FLEET_SIZE} / {FLEET_SIZE + 2}")
    expect(page.locator("svg.chart")).to_be_visible()
    assert page.evaluate("Object.keys(sessionStorage)") == ["sensortasks.key"]
    page.click("#logout")
    expect(page.locator("#login")).to_be_visible()
    assert page.evaluate("sessionStorage.length") == 0


def test_a_task_goes_from_pending_to_completed_live(console: Console) -> None:
    page = console.page()
    page.click("nav a[data-page=tasks]")
    page.evaluate("window.notReloaded = true")
    form = page.locator("#task-create")
    form.locator("[name=sensor_serial]").fill(str(LATE))
    form.locator("[name=file_id]").fill(FILE_ID)
    form.locator("button[type=submit]").click()
    row = page.locator(f"#tasks tr[data-task]:has(td:nth-child(2):text-is('{LATE}'))").first
    expect(row).to_have_attribute("data-status", "Pending")
    console.simulate(console.late)  # the sensor comes online: its task runs
    expect(row).to_have_attribute("data-status", "Completed", timeout=30_000)
    assert page.evaluate("window.notReloaded") is True
    expect(page.locator("#live-events li").first).to_contain_text("Completed")
    row.click()
    detail = page.locator("#task-detail")
    expect(detail.locator("table.history tbody tr").last).to_contain_text("Completed")  # its whole history
    expect(detail.locator("table.history tbody tr").first).to_contain_text("created")
    expect(detail.locator("pre.result")).to_contain_text("simulated")
    shot(page, "tasks")


def test_the_overview_counts_and_charts_what_ran(console: Console) -> None:
    """Once tasks ran, the cards say what ``GET /v1/overview`` says and the last hour's bars show them."""
    with console.api() as api:
        body = {"sensor_serial": FLEET, "file_id": FILE_ID, "type": "update_firmware"}
        task = api.post("/v1/tasks", json=body).raise_for_status().json()
        deadline = time.monotonic() + 30
        while api.get(f"/v1/tasks/{task['id']}").json()["status_name"] != "Completed":
            assert time.monotonic() < deadline, f"task {task['id']} did not complete"
            time.sleep(0.1)
        overview = api.get("/v1/overview").raise_for_status().json()
    completed = overview["tasks"]["Completed"]
    assert completed >= 1
    page = console.page()
    expect(page.locator("[data-count=Completed] strong")).to_have_text(str(completed))
    expect(page.locator("[data-count=Pending] strong")).to_have_text(str(overview["tasks"]["Pending"]))
    bars = page.locator("svg.chart rect.completed")
    expect(bars).to_have_count(len(overview["minutes"]))
    drawn = sum(float(bars.nth(i).get_attribute("height") or 0) for i in range(bars.count()))
    assert drawn > 0, "no completed bar is drawn"
    shot(page, "overview")


def test_filters_and_cancel(console: Console) -> None:
    with console.api() as api:
        body = {"sensor_serial": OFFLINE, "file_id": FILE_ID, "type": "update_configuration"}
        task = api.post("/v1/tasks", json=body).raise_for_status().json()
    page = console.page()
    page.click("nav a[data-page=tasks]")
    filters = page.locator("#task-filters")
    filters.locator("[name=sensor_serial]").fill(str(OFFLINE))
    filters.locator("[name=status][value=Pending]").check()
    filters.locator("[name=type]").select_option("update_configuration")
    filters.locator("button[type=submit]").click()
    rows = page.locator("#tasks tr[data-task]")
    expect(rows).to_have_count(1)
    row = page.locator(f"#tasks tr[data-task='{task['id']}']")
    row.locator("button.cancel").click()
    expect(row).to_have_attribute("data-status", "Cancelled")
    expect(row.locator("button.cancel")).to_have_count(0)
    # Paging, a task per page, newest first: this one, then the one before it.
    filters.locator("[name=sensor_serial]").fill("")
    filters.locator("[name=status][value=Pending]").uncheck()
    filters.locator("[name=type]").select_option("")
    filters.locator("[name=limit]").fill("1")
    filters.locator("button[type=submit]").click()
    expect(page.locator(f"#tasks tr[data-task='{task['id']}']")).to_be_visible()
    page.click(".pager button.next")
    expect(rows).to_have_count(1)
    expect(page.locator(f"#tasks tr[data-task='{task['id']}']")).to_have_count(0)
    expect(page.locator(".pager")).to_contain_text("page 2")
    page.click(".pager button.previous")
    expect(page.locator(f"#tasks tr[data-task='{task['id']}']")).to_be_visible()


def test_sensors_page_and_registration(console: Console) -> None:
    page = console.page()
    page.click("nav a[data-page=sensors]")
    first = page.locator(f"#sensors tr[data-serial='{FLEET}']")
    expect(first.locator(".presence")).to_have_text("online")
    expect(first).to_contain_text("ring:canary")
    register = page.locator("#sensor-register")
    register.locator("[name=serial]").fill("810000000000300")
    register.locator("[name=labels]").fill("ring:late, site:b")
    register.locator("button[type=submit]").click()
    expect(page.locator("#sensors tr[data-serial='810000000000300']")).to_contain_text("site:b")
    issued = page.locator("#credentials")
    expect(issued).to_contain_text("shown only now")
    expect(issued.locator("dd").first).to_have_text("sensor-810000000000300")
    assert len(issued.locator("dd").nth(1).inner_text()) >= 16  # the password, once
    expect(page.locator("#sensors td:text-is('…')")).to_have_count(0)  # every sensor's queue is in
    expect(first.locator("td").nth(4)).to_have_text("0")
    shot(page, "sensors")
    page.click("nav a[data-page=tasks]")
    page.click("nav a[data-page=sensors]")
    expect(page.locator(f"#sensors tr[data-serial='{FLEET}']")).to_be_visible()
    expect(page.locator("#credentials")).to_have_count(0)  # gone with the page: never shown again


def test_start_and_pause_a_rollout(console: Console) -> None:
    page = console.page()
    page.click("nav a[data-page=rollouts]")
    form = page.locator("#rollout-create")
    form.locator("[name=name]").fill("canary firmware")
    form.locator("[name=file_id]").fill(FILE_ID)
    form.locator("[name=selector]").fill("ring:canary")
    expect(page.locator("#match-count")).to_have_text(str(FLEET_SIZE))
    form.locator("[name=per_minute]").fill("1")
    form.locator("button[type=submit]").click()
    row = page.locator("#rollouts tr[data-rollout]").first
    expect(row).to_contain_text("canary firmware")
    expect(row).to_have_attribute("data-state", "running")
    expect(row).to_contain_text(f"/ {FLEET_SIZE} finished")
    row.locator("button.pause").click()
    expect(row).to_have_attribute("data-state", "paused")
    shot(page, "rollouts")
    row.locator("button.resume").click()
    expect(row).to_have_attribute("data-state", "running")
    row.locator("button.cancel").click()
    expect(row).to_have_attribute("data-state", "cancelled")
    expect(row.locator("button")).to_have_count(0)


def test_nothing_left_127_0_0_1_and_no_key_in_any_url(console: Console) -> None:
    """Runs last: over every request of the tests before it."""
    assert console.requested
    assert [url for url in console.requested if urlsplit(url).hostname != "127.0.0.1"] == []
    assert [url for url in console.requested if console.key in url or "stk_" in url] == []  # nor the wrong one
    assert any(urlsplit(url).path == "/v1/events" for url in console.requested)
    assert console.problems == []


def test_serve_stops_promptly_with_a_console_streaming(console: Console) -> None:
    """Runs last: it stops serve. An open event stream must not hold up its shutdown."""
    page = console.page()
    started = time.monotonic()
    assert console.serve.signal(signal.SIGTERM) == 0
    assert time.monotonic() - started < 10
    expect(page.locator("#live-state")).to_have_text("reconnecting")
