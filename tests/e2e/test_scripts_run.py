"""`./scripts/run` as a newcomer runs it: its own broker, started and stopped with it, never another's."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from sensortasks.testing import MosquittoBroker, free_port
from tests.e2e.conftest import wait_healthy

pytestmark = pytest.mark.slow
REPO_ROOT = Path(__file__).resolve().parents[2]


class RunScript:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.run_dir = workdir / "run"
        self.mqtt_port, self.tls_port, self.http_port = free_port(), free_port(), free_port()
        self.process: subprocess.Popen[str] | None = None

    def env(self) -> dict[str, str]:
        keep = {k: v for k, v in os.environ.items() if not k.startswith("SENSORTASKS_")}
        return keep | {
            "SENSORTASKS_RUN_DIR": str(self.run_dir),
            "SENSORTASKS_MQTT_PORT": str(self.mqtt_port),
            "SENSORTASKS_MQTT_TLS_PORT": str(self.tls_port),
            "SENSORTASKS_HTTP_PORT": str(self.http_port),
            "SENSORTASKS_DATABASE_URL": f"sqlite+aiosqlite:///{self.workdir}/sensortasks.db",
        }

    def start(self) -> None:
        with (self.workdir / "run.log").open("a") as log:
            self.process = subprocess.Popen(
                [str(REPO_ROOT / "scripts" / "run")],
                cwd=REPO_ROOT,
                env=self.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,  # its own process group, as in a terminal
            )

    def log(self) -> str:
        return (self.workdir / "run.log").read_text(errors="replace")

    def wait_healthy(self) -> None:
        assert self.process is not None
        wait_healthy(f"http://127.0.0.1:{self.http_port}", self.process, self.log)

    def broker_pid(self) -> int:
        return int((self.run_dir / "mosquitto.pid").read_text())

    def interrupt(self) -> int:
        """Ctrl-C in a terminal: SIGINT to the whole foreground process group."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGINT)
        return self.process.wait(30)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()


def wait_gone(pid: int, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture
def script(tmp_path: Path) -> Iterator[RunScript]:
    run = RunScript(tmp_path)
    yield run
    run.kill()
    pid_file = run.run_dir / "mosquitto.pid"
    if pid_file.exists():
        pid = int(pid_file.read_text() or 0)
        if pid and alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_a_foreign_broker_on_its_port_is_refused_with_one_line(script: RunScript, tmp_path: Path) -> None:
    with MosquittoBroker(port=script.mqtt_port, workdir=tmp_path / "foreign"):
        script.start()
        assert script.process is not None
        assert script.process.wait(60) == 1
    errors = [line for line in script.log().splitlines() if line.startswith("error:")]
    assert len(errors) == 1, script.log()
    assert f"127.0.0.1:{script.mqtt_port}" in errors[0]
    assert "SENSORTASKS_MQTT_PORT" in errors[0]
    assert "Traceback" not in script.log()
    assert not (script.run_dir / "mosquitto.pid").exists()


def test_ctrl_c_stops_serve_and_the_broker_it_started_and_secrets_are_private(script: RunScript) -> None:
    script.start()
    script.wait_healthy()
    broker = script.broker_pid()
    assert alive(broker)
    for secret in (
        script.run_dir / "broker.env",
        script.run_dir / "mosquitto" / "dynamic-security.json",
        script.run_dir / "certs" / "ca.key",
        script.run_dir / "certs" / "server.key",
        script.workdir / "sensortasks.db",
    ):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600, secret
    assert script.interrupt() == 0, script.log()
    assert wait_gone(broker), "the broker outlived scripts/run"
    assert "Traceback" not in script.log()


def test_its_own_broker_left_behind_by_a_crash_is_reused_then_stopped(script: RunScript) -> None:
    script.start()
    script.wait_healthy()
    broker = script.broker_pid()
    assert script.process is not None
    os.killpg(script.process.pid, signal.SIGKILL)  # the script and serve die; the daemonised broker stays
    script.process.wait()
    assert alive(broker)
    script.start()
    script.wait_healthy()
    assert script.broker_pid() == broker
    assert "reusing this checkout's Mosquitto" in script.log()
    assert script.interrupt() == 0, script.log()
    assert wait_gone(broker)


def test_the_quick_start_works_on_the_secure_broker(script: RunScript) -> None:
    """What the README's quick start does: a key, a sensor registered with its bound broker
    account; authentication on; anonymous MQTT refused."""
    script.start()
    script.wait_healthy()
    base = f"http://127.0.0.1:{script.http_port}"
    assert httpx.get(f"{base}/healthz", timeout=5).json() == {"status": "ok", "database": "up", "broker": "up"}
    assert httpx.get(f"{base}/v1/tasks", timeout=5).status_code == 401
    key = subprocess.run(
        [str(REPO_ROOT / ".venv" / "bin" / "sensortasks"), "keys", "create", "demo"],
        env=script.env(), cwd=REPO_ROOT, capture_output=True, text=True, check=True, timeout=60,
    ).stdout.strip().splitlines()[-1]  # fmt: skip
    registered = httpx.post(
        f"{base}/v1/sensors", json={"serial": 5}, headers={"Authorization": f"Bearer {key}"}, timeout=30
    )
    assert registered.status_code == 201, registered.text
    assert registered.json()["mqtt"]["username"] == "sensor-5"
    assert registered.json()["mqtt"]["client_id"] == "sensor-5"
    assert connack(script.mqtt_port, username=None, password=None) == NOT_AUTHORIZED
    mqtt_account = registered.json()["mqtt"]
    assert connack(script.mqtt_port, username="sensor-5", password=mqtt_account["password"], client_id="sensor-5") == 0
    assert script.interrupt() == 0, script.log()


NOT_AUTHORIZED = 135


def connack(port: int, *, username: str | None, password: str | None, client_id: str = "") -> int:
    """The CONNACK reason code the broker answers (paho, synchronously: no sleeping on a guess)."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    if username is not None:
        client.username_pw_set(username, password)
    codes: list[int] = []
    client.on_connect = lambda _c, _u, _f, reason, _p: codes.append(reason.value)
    client.connect("127.0.0.1", port)
    deadline = time.monotonic() + 10
    while not codes and time.monotonic() < deadline:
        client.loop(timeout=0.1)
    client.disconnect()
    assert codes, "no CONNACK"
    return codes[0]
