"""``sensortasks rollouts ...`` as users run it, against a live `sensortasks serve`; the rollout's
task is started by the store's pacing round and completed through the store, as a sensor would."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

from sensortasks.domain import RetryPolicy
from sensortasks.store import IncomingReport, TaskFilter, TaskStore, open_database, utcnow

from .conftest import ServeProcess
from .test_cli import FILE_ID, SERIAL, cli

EVERY_DAY = "mon,tue,wed,thu,fri,sat,sun"


async def _run_rollout_task(database_url: str, rollout_id: int) -> None:
    """Start the rollout's task, have its sensor complete it, and let the pacing see that."""
    store = TaskStore(open_database(database_url), RetryPolicy(0, 0))
    try:
        await store.advance_rollouts(now=utcnow())
        (task,), _ = await store.list_tasks(TaskFilter(rollout_id=rollout_id), before_id=None, limit=10)
        await store.claim_next([task.sensor_serial], now=utcnow())  # or the server's dispatcher did
        assert task.id is not None
        await store.apply_reports([IncomingReport(task.sensor_serial, task.id, 1, "completed")], now=utcnow())
        await store.advance_rollouts(now=utcnow())
    finally:
        await store.db.dispose()


def test_rollouts_create_list_get_cancel_and_watch(serve: ServeProcess) -> None:
    serve.start()
    url = ["--url", serve.url]
    cli(serve, "sensors", "add", SERIAL, "--customer", "acme")  # auth is off: any registered sensor is a target
    base = ["rollouts", "create", "--name", "fw", "--type", "update_firmware", "--file-id", FILE_ID, "--sensor", SERIAL]
    created = json.loads(
        cli(serve, *base, "--rate", "5", "--window", f"{EVERY_DAY} 00:00-24:00", "--json", *url).stdout
    )
    assert (created["state"], created["sensors"], created["rate"]["per_minute"]) == ("running", [int(SERIAL)], 5.0)
    assert created["schedule"]["windows"] == [{"days": EVERY_DAY.split(","), "start": "00:00", "end": "24:00"}]
    refused = cli(serve, *base, "--window", "mon,tue 05:00-01:00", *url, check=False)
    assert (refused.returncode, "schedule.windows.0.end" in refused.stderr) == (1, True), refused.stderr
    assert cli(serve, *base, "--window", "whenever", *url, check=False).returncode == 2

    got = json.loads(cli(serve, "rollouts", "get", str(created["id"]), "--json", *url).stdout)
    assert got["id"] == created["id"]
    assert "fw" in cli(serve, "rollouts", "list", *url).stdout
    listed = json.loads(cli(serve, "rollouts", "list", "--state", "running", "--json", *url).stdout)
    assert [r["id"] for r in listed["data"]] == [created["id"]]

    watch = subprocess.Popen(
        [sys.executable, "-m", "sensortasks", "rollouts", "watch", str(created["id"]), "--interval", "0.1", "--json",
         *url],
        env=serve.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert watch.stdout is not None
        first = json.loads(watch.stdout.readline())  # watching before the task starts
        assert (first["state"], first["totals"]["completed"]) == ("running", 0)
        asyncio.run(_run_rollout_task(serve.env["SENSORTASKS_DATABASE_URL"], created["id"]))
        out, errors = watch.communicate(timeout=60)
    finally:
        watch.kill()
        watch.communicate()
    assert watch.returncode == 0, errors
    last = json.loads(out.strip().splitlines()[-1])
    assert (last["state"], last["totals"]["completed"], last["totals"]["targets"]) == ("completed", 1, 1)

    other = json.loads(cli(serve, *base, "--json", *url).stdout)
    cancelled = json.loads(
        cli(serve, "rollouts", "cancel", str(other["id"]), "--in-flight", "cancel", "--json", *url).stdout
    )
    assert cancelled["state"] == "cancelled"
    ended = cli(serve, "rollouts", "watch", str(other["id"]), *url, check=False)
    assert ended.returncode == 1
    assert "cancelled by the customer" in ended.stderr
    again = cli(serve, "rollouts", "pause", str(other["id"]), *url, check=False)
    assert (again.returncode, "409 conflict" in again.stderr) == (1, True), again.stderr
