"""The CLI as users run it: subprocesses against a live `sensortasks serve`."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

from .conftest import ServeProcess

FILE_ID = "a3e4aed2-b091-41a6-8265-2185040e2c32"
SERIAL = "12345678909789"


def cli(
    serve: ServeProcess, *args: str, key: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    env = serve.env | ({"SENSORTASKS_API_KEY": key} if key else {})
    result = subprocess.run(
        [sys.executable, "-m", "sensortasks", *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


def test_keys_tasks_and_export_against_a_live_server(serve: ServeProcess, tmp_path: Path) -> None:
    serve.env["SENSORTASKS_AUTH"] = "required"
    serve.start()
    url = ["--url", serve.url]
    key = cli(serve, "keys", "create", "acme").stdout.strip().splitlines()[-1]
    assert key.startswith("stk_")

    added = cli(serve, "sensors", "add", SERIAL, "--customer", "acme")
    assert SERIAL in added.stdout
    refused = cli(serve, "tasks", "list", *url, check=False)
    assert refused.returncode == 1
    assert "401 unauthorized" in refused.stderr

    created = json.loads(
        cli(
            serve,
            "tasks",
            "create",
            "--sensor",
            SERIAL,
            "--file-id",
            FILE_ID,
            "--type",
            "update_firmware",
            "--json",
            *url,
            key=key,
        ).stdout
    )
    assert (created["sensor_serial"], created["status_name"]) == (int(SERIAL), "Pending")
    for _ in range(2):
        cli(
            serve,
            "tasks",
            "create",
            "--sensor",
            SERIAL,
            "--file-id",
            FILE_ID,
            "--type",
            "update_configuration",
            *url,
            key=key,
        )

    got = json.loads(cli(serve, "tasks", "get", str(created["id"]), "--json", *url, key=key).stdout)
    assert got["id"] == created["id"]
    table = cli(serve, "tasks", "list", "--type", "update_configuration", "--limit", "1", *url, key=key)
    assert "update_configuration" in table.stdout
    assert "--cursor" in table.stderr
    page = json.loads(cli(serve, "tasks", "list", "--status", "Pending", "--json", *url, key=key).stdout)
    assert len(page["data"]) == 3

    cancelled = json.loads(cli(serve, "tasks", "cancel", str(created["id"]), "--json", *url, key=key).stdout)
    assert cancelled["status_name"] == "Cancelled"
    bad = cli(
        serve,
        "tasks",
        "create",
        "--sensor",
        SERIAL,
        "--file-id",
        "nope",
        "--type",
        "update_firmware",
        *url,
        key=key,
        check=False,
    )
    assert bad.returncode == 1
    assert "file_id" in bad.stderr

    out = tmp_path / "tasks.csv"
    exported = cli(serve, "tasks", "export", "--output", str(out), "--status", "Pending", *url, key=key)
    assert "2 task(s) written" in exported.stderr
    with out.open() as exported_file:
        rows = list(csv.DictReader(exported_file))
    assert [r["status_name"] for r in rows] == ["Pending", "Pending"]


def test_serve_flags_and_errors(serve: ServeProcess) -> None:
    both = cli(serve, "serve", "--api-only", "--dispatcher-only", check=False)
    assert both.returncode == 2
    bad_url = subprocess.run(
        [sys.executable, "-m", "sensortasks", "serve", "--mqtt-url", "http://nope"],
        env=os.environ | {"SENSORTASKS_AUTH": "disabled"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad_url.returncode == 2
    assert "mqtt://" in bad_url.stderr
