"""Every command, run as users run it, against a dead server, a dead or refusing broker and an
unreachable database: one clear line on stderr, exit status 1, never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sensortasks.testing import MosquittoBroker, free_port

from .conftest import ServeProcess
from .test_cli import FILE_ID, cli

PASSWORD = ("alice", "secret")


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    base = os.environ | {"SENSORTASKS_AUTH": "required", "SENSORTASKS_INSTANCE": "failures"}
    return subprocess.run(
        [sys.executable, "-m", "sensortasks", *args],
        env=base | (env or {}),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def one_line(result: subprocess.CompletedProcess[str], *, logs_allowed: bool = False) -> str:
    """The single error line (other stderr lines are allowed only as log records of `serve`)."""
    assert result.returncode == 1, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    assert "╭" not in result.stderr, result.stderr  # rich's traceback box
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(("error:", "unavailable:"))]  # sensors add: its code
    assert len(errors) == 1, result.stderr
    assert lines[-1] == errors[0], result.stderr
    if not logs_allowed:
        assert lines == errors, result.stderr
    return errors[0]


@pytest.fixture
def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


@pytest.mark.parametrize(
    "args",
    [
        ("tasks", "export", "--output", "{tmp}/out.csv"),
        ("tasks", "list"),
        ("tasks", "get", "1"),
        ("tasks", "cancel", "1"),
        ("tasks", "create", "--sensor", "5", "--file-id", FILE_ID, "--type", "update_firmware"),
    ],
    ids=lambda args: " ".join(args[:2]),
)
def test_tasks_commands_against_a_dead_server(args: tuple[str, ...], dead_url: str, tmp_path: Path) -> None:
    result = run(*(a.format(tmp=tmp_path) for a in args), "--url", dead_url, "--api-key", "stk_x")
    assert f"cannot reach the server at {dead_url}" in one_line(result)


@pytest.mark.parametrize("command", [("db", "upgrade"), ("keys", "create", "acme"), ("sensors", "add", "5", "--customer", "acme"), ("serve",)])  # fmt: skip
def test_commands_against_an_unreachable_database(command: tuple[str, ...]) -> None:
    url = f"postgresql://sensortasks:hunter2@127.0.0.1:{free_port()}/sensortasks"
    result = run(*command, env={"SENSORTASKS_DATABASE_URL": url, "SENSORTASKS_HTTP_PORT": str(free_port())})
    line = one_line(result)
    assert "cannot use the database postgresql+asyncpg://sensortasks:***@127.0.0.1:" in line
    assert "Connect call failed" in line
    assert "hunter2" not in result.stderr


def test_a_database_file_that_cannot_be_created(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = run("db", "upgrade", "--database-url", f"sqlite:///{blocker}/sub/x.db")
    assert f"cannot use the database sqlite+aiosqlite:///{blocker}/sub/x.db" in one_line(result)


def test_watch_simulate_and_bench_against_a_dead_broker() -> None:
    dead = f"mqtt://127.0.0.1:{free_port()}"
    watched = run("watch", "--seconds", "1", "--mqtt-url", dead)
    assert "not connected: disconnected from 127.0.0.1:" in one_line(watched)
    assert "Connection refused" in one_line(watched)
    assert "disconnected from 127.0.0.1:" in watched.stdout  # the dashboard said so while it ran
    for args in (("simulate", "--seconds", "1"), ("bench", "--tasks", "1")):
        assert "cannot reach the MQTT broker 127.0.0.1:" in one_line(run(*args, "--mqtt-url", dead))


class PasswordBroker(MosquittoBroker):
    """Mosquitto with a password file: one account, anonymous access off."""

    def _config(self) -> Path:
        passwords = self.workdir / "passwords"
        passwords.write_text("")
        subprocess.run(["mosquitto_passwd", "-b", str(passwords), *PASSWORD], check=True, capture_output=True)
        config = self.workdir / "mosquitto.conf"
        config.write_text(
            f"listener {self.port} {self.host}\nallow_anonymous false\npassword_file {passwords}\n"
            + ("user root\n" if os.geteuid() == 0 else "")
        )
        return config


@pytest.fixture
def password_broker(tmp_path: Path) -> Iterator[PasswordBroker]:
    with PasswordBroker(workdir=tmp_path / "broker") as running:
        yield running


def test_a_refused_login_ends_at_once_with_one_line(password_broker: PasswordBroker, tmp_path: Path) -> None:
    """A dispatcher, a watch and a fleet all stop at once: no retry can fix a refused login."""
    url = f"mqtt://{PASSWORD[0]}:wrong@{password_broker.host}:{password_broker.port}"
    env = {"SENSORTASKS_MQTT_URL": url, "SENSORTASKS_DATABASE_URL": f"sqlite:///{tmp_path}/st.db"}
    expected = f"the MQTT broker 127.0.0.1:{password_broker.port} refused the login as 'alice': Not authorized"
    for args, logs in (
        (("serve", "--dispatcher-only"), True),
        (("serve", "--port", str(free_port())), True),
        (("watch", "--seconds", "60"), False),
        (("simulate", "--seconds", "60"), False),
    ):
        started = time.monotonic()
        result = run(*args, env=env, timeout=30)
        assert one_line(result, logs_allowed=logs) == f"error: {expected}", args
        assert time.monotonic() - started < 20, args  # not after --seconds


def test_a_wrong_key_and_what_tables_show(serve: ServeProcess, tmp_path: Path) -> None:
    serve.env |= {"SENSORTASKS_AUTH": "required", "SENSORTASKS_ACK_TIMEOUT_S": "0.2"}
    serve.start()
    url = ["--url", serve.url]
    for args in (("tasks", "list"), ("tasks", "export", "-o", str(tmp_path / "x.csv"))):
        line = one_line(cli(serve, *args, *url, key="stk_wrong", check=False))
        assert (
            line
            == "error: 401 unauthorized: invalid or revoked API key (give a key with --api-key or SENSORTASKS_API_KEY)"
        )

    key = cli(serve, "keys", "create", "acme").stdout.strip().splitlines()[-1]
    cli(serve, "sensors", "add", "42", "--customer", "acme")
    create = ("tasks", "create", "--sensor", "42", "--file-id", FILE_ID, "--type", "update_firmware", "--json")
    failing = json.loads(cli(serve, *create, "--max-attempts", "1", *url, key=key).stdout)
    headers = {"Authorization": f"Bearer {key}"}
    deadline = time.monotonic() + 20
    while httpx.get(f"{serve.url}/v1/tasks/{failing['id']}", headers=headers).json()["status_name"] != "Error":
        assert time.monotonic() < deadline, "the unacknowledged task did not end in Error"
        time.sleep(0.05)

    shown = cli(serve, "tasks", "get", str(failing["id"]), *url, key=key).stdout
    assert "not acknowledged after 1 attempt(s)" in shown
    listed = cli(serve, "tasks", "list", *url, key=key).stdout
    assert "error" in listed.splitlines()[1]
    assert "not acknowledged" in listed
    assert "rollout_id" not in listed

    export = httpx.get(f"{serve.url}/v1/tasks/export.csv", headers=headers, params={"status": "Error"})
    assert export.headers["X-Total-Count"] == "1"
    exported = cli(serve, "tasks", "export", "-o", str(tmp_path / "e.csv"), "--status", "Error", *url, key=key)
    assert "1 task(s) written" in exported.stderr
