"""API keys over real HTTP: brute force is answered 429, revoked keys stop at once, logs hold no key,
and `keys list` / `keys revoke` as an operator runs them."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import event, update
from typer.testing import CliRunner

from sensortasks.cli import app as cli_app
from sensortasks.service.ratelimit import MAX_FAILURES, WINDOW_S
from sensortasks.store import utcnow
from sensortasks.store.keys import K, KeyStore
from tests.security.live_api import LiveApi, RawHttp, live_api

ATTEMPTS = 3000


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def key_checks(api: LiveApi) -> list[str]:
    """Spy on the key store: every key it is asked to check."""
    keys = api.state.service.keys
    checked: list[str] = []
    original = keys.check

    async def check(key: str) -> Any:
        checked.append(key)
        return await original(key)

    keys.check = check  # type: ignore[method-assign]
    return checked


async def test_3000_bad_keys_from_one_address_get_429_and_the_log_holds_no_key(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    async with live_api(tmp_path) as api:
        good = await KeyStore(api.store.db).create_key("acme")
        checked = key_checks(api)
        bad_keys = ["stk_" + secrets.token_urlsafe(32) for _ in range(ATTEMPTS)]
        statuses: Counter[int] = Counter()
        async with RawHttp.connect(api.url) as attacker:
            started = time.perf_counter()
            for key in bad_keys:
                statuses[(await attacker.get("/v1/tasks", headers=bearer(key))).status] += 1
            elapsed = time.perf_counter() - started
        async with httpx.AsyncClient(base_url=api.url) as attacker:
            refused = await attacker.get("/v1/tasks", headers=bearer(good))
            # a forged X-Forwarded-For buys no fresh budget: uvicorn trusts it only from 127.0.0.1
            spoofed_from = httpx.AsyncHTTPTransport(local_address="127.0.0.3")
            async with httpx.AsyncClient(base_url=api.url, transport=spoofed_from) as spoofer:
                for i in range(MAX_FAILURES):
                    headers = bearer(bad_keys[i]) | {"X-Forwarded-For": f"10.0.0.{i}"}
                    assert (await spoofer.get("/v1/tasks", headers=headers)).status_code == 401
                assert (await spoofer.get("/v1/tasks", headers={"X-Forwarded-For": "10.9.9.9"})).status_code == 429
        other = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
        async with httpx.AsyncClient(base_url=api.url, transport=other) as customer:
            served = await customer.get("/v1/tasks", headers=bearer(good))
    print(f"\n{ATTEMPTS} bad keys over HTTP in {elapsed:.2f} s ({ATTEMPTS / elapsed:.0f} requests/s)")  # noqa: T201

    assert statuses == {401: MAX_FAILURES, 429: ATTEMPTS - MAX_FAILURES}
    assert refused.status_code == 429  # even a good key: a refused address is not checked at all
    # the attacker's first 20, the spoofer's 20, the customer's: none of the refused requests' keys
    assert checked == [*bad_keys[:MAX_FAILURES], *bad_keys[:MAX_FAILURES], good]
    assert 0 < int(refused.headers["Retry-After"]) <= WINDOW_S
    body = refused.json()
    assert body["error"]["code"] == "too_many_requests"
    assert body["error"]["details"] == {"retry_after_s": int(refused.headers["Retry-After"])}
    assert served.status_code == 200, served.text

    failures = [r for r in caplog.records if "authentication failed" in r.getMessage()]
    assert len(failures) == 2 * MAX_FAILURES  # one line per failure; the 429s are not checked, not logged
    assert all(r.levelno == logging.WARNING for r in failures)
    first = failures[0].getMessage()
    assert first == f"authentication failed from 127.0.0.1 on GET /v1/tasks: unknown API key (key {bad_keys[0][:8]}...)"
    lockouts = [r.getMessage() for r in caplog.records if "refused for" in r.getMessage()]
    assert [m.split(" refused")[0] for m in lockouts] == ["client 127.0.0.1", "client 127.0.0.3"]
    for key in [good, *bad_keys]:
        assert key[8:16] not in caplog.text


async def test_every_kind_of_failure_is_logged_with_its_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    async with live_api(tmp_path) as api:
        keys = KeyStore(api.store.db)
        revoked = await keys.create_key("acme")
        await keys.revoke(revoked[:12])
        async with httpx.AsyncClient(base_url=api.url) as client:
            for headers in [
                {},
                {"Authorization": "Basic dXNlcjpwYXNz"},
                bearer("hunter2-my-password"),
                bearer(revoked),
            ]:
                response = await client.get("/v1/tasks/7", headers=headers)
                assert response.status_code == 401
                assert response.headers["WWW-Authenticate"] == "Bearer"
    messages = [r.getMessage() for r in caplog.records if "authentication failed" in r.getMessage()]
    prefix = "authentication failed from 127.0.0.1 on GET /v1/tasks/{task_id}: "
    reasons = [
        "missing API key",
        "not a Bearer credential",
        "malformed API key",  # not one of ours: nothing of it is shown
        f"revoked API key (key {revoked[:8]}...)",
    ]
    assert messages == [prefix + reason for reason in reasons]
    assert "hunter" not in caplog.text
    assert "dXNlcjpwYXNz" not in caplog.text


async def test_a_revoked_key_authenticates_nobody_from_the_next_request(tmp_path: Path) -> None:
    async with live_api(tmp_path) as api:
        keys = KeyStore(api.store.db)
        key, other = await keys.create_key("acme"), await keys.create_key("acme")
        async with httpx.AsyncClient(base_url=api.url) as client:
            assert (await client.get("/v1/tasks", headers=bearer(key))).status_code == 200
            revoked, already = await keys.revoke(key[:12])
            assert (revoked.prefix, revoked.customer, already) == (key[:12], "acme", False)
            response = await client.get("/v1/tasks", headers=bearer(key))
            assert response.status_code == 401
            assert response.json()["error"] == {
                "code": "unauthorized",
                "message": "invalid or revoked API key",
                "details": None,
            }
            assert (await client.get("/v1/tasks", headers=bearer(other))).status_code == 200
        assert await keys.authenticate(key) is None  # the MQTT command topics ask the same store


async def test_last_used_is_written_at_most_once_a_minute_per_key(tmp_path: Path) -> None:
    async with live_api(tmp_path) as api:
        keys = KeyStore(api.store.db)
        key = await keys.create_key("acme")
        assert (await keys.list_keys())[0].last_used_at is None
        writes: list[str] = []

        @event.listens_for(api.store.db.writer.sync_engine, "before_cursor_execute")
        def _count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
            if statement.startswith("UPDATE api_keys SET last_used_at") and "IS NULL" in statement:
                writes.append(statement)

        async with httpx.AsyncClient(base_url=api.url, limits=httpx.Limits(max_connections=50)) as client:
            before = utcnow()
            responses = await asyncio.gather(*(client.get("/v1/tasks", headers=bearer(key)) for _ in range(50)))
            assert {r.status_code for r in responses} == {200}
            for _ in range(20):
                assert (await client.get("/v1/tasks", headers=bearer(key))).status_code == 200
            assert len(writes) == 1
            (used,) = await keys.list_keys()
            assert used.last_used_at is not None
            assert before - timedelta(seconds=1) <= used.last_used_at <= utcnow()

            # a minute later (on this instance's clock and in the database) it is written again
            async with api.store.db.writer.begin() as conn:
                await conn.execute(update(K).values(last_used_at=utcnow() - timedelta(minutes=2)))
            api.state.service.keys._touched.clear()
            assert (await client.get("/v1/tasks", headers=bearer(key))).status_code == 200
            assert len(writes) == 2
            (used_again,) = await keys.list_keys()
            assert used_again.last_used_at is not None
            assert used_again.last_used_at > used.last_used_at


def run_cli(*args: str) -> Any:
    return CliRunner().invoke(cli_app, list(args), catch_exceptions=False)


def test_keys_list_and_revoke_from_the_command_line(tmp_path: Path) -> None:
    url = ["--database-url", f"sqlite+aiosqlite:///{tmp_path}/keys.db"]
    first = run_cli("keys", "create", "acme", *url).stdout.strip().splitlines()[-1]
    second = run_cli("keys", "create", "globex", *url).stdout.strip().splitlines()[-1]

    listed = json.loads(run_cli("keys", "list", "--json", *url).stdout)
    assert [(k["prefix"], k["customer"], k["last_used_at"], k["revoked_at"]) for k in listed] == [
        (first[:12], "acme", None, None),
        (second[:12], "globex", None, None),
    ]
    assert all(len(k["created_at"]) == len("2022-10-17 16:00:07") for k in listed)
    assert first not in json.dumps(listed)
    table = run_cli("keys", "list", *url)
    assert table.exit_code == 0
    for text in ["prefix", "customer", "created", "last used", "revoked", first[:12], "globex"]:
        assert text in table.stdout
    assert json.loads(run_cli("keys", "list", "--customer", "globex", "--json", *url).stdout)[0]["customer"] == "globex"

    revoked = run_cli("keys", "revoke", first[:12], *url)
    assert revoked.exit_code == 0, revoked.output
    assert revoked.stdout.startswith(f"API key {first[:12]} of customer 'acme' revoked at ")
    again = run_cli("keys", "revoke", first, *url)  # the whole key works too
    assert again.exit_code == 0
    assert f"API key {first[:12]} of customer 'acme' was already revoked at " in again.stdout
    after = {k["prefix"]: k["revoked_at"] for k in json.loads(run_cli("keys", "list", "--json", *url).stdout)}
    assert after[first[:12]] is not None
    assert after[second[:12]] is None

    unknown = run_cli("keys", "revoke", "stk_nosuchkey", *url)
    assert unknown.exit_code == 1
    assert "not_found: no API key matches 'stk_nosuchke'" in unknown.stderr
    too_short = run_cli("keys", "revoke", "stk_", *url)  # would match every key
    assert too_short.exit_code == 1
    assert "PREFIX must be a key's start" in too_short.stderr


async def test_an_ambiguous_prefix_revokes_nothing(tmp_path: Path) -> None:
    async with live_api(tmp_path) as api:
        keys = KeyStore(api.store.db)
        for _ in range(2):
            await keys.create_key("acme")
        async with api.store.db.writer.begin() as conn:  # two keys that share their first characters
            await conn.execute(update(K).where(K.c.id == 1).values(prefix="stk_AbCd1111"))
            await conn.execute(update(K).where(K.c.id == 2).values(prefix="stk_AbCd2222"))
        result = await run_in_thread(["keys", "revoke", "stk_AbCd", "--database-url", api.store.db.url])
        assert result.exit_code == 1
        assert "conflict: 'stk_AbCd' matches several keys (stk_AbCd1111, stk_AbCd2222)" in result.stderr
        assert [k.revoked_at for k in await keys.list_keys()] == [None, None]
        assert (await keys.revoke("stk_AbCd2"))[0].prefix == "stk_AbCd2222"


async def run_in_thread(args: list[str]) -> Any:
    """The CLI runs its own event loop: from an async test, in a thread."""
    return await asyncio.to_thread(run_cli, *args)
