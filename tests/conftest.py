"""Fixtures shared by all tests: a real Mosquitto per test, database URLs."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from sensortasks.testing import MosquittoBroker

POSTGRES_URL = os.environ.get("SENSORTASKS_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    with MosquittoBroker(workdir=tmp_path / "broker") as running:
        yield running


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path}/sensortasks.db"


@pytest.fixture
def postgres_url() -> str:
    """The local PostgreSQL; skips with a reason if unreachable (fails when it is required)."""
    try:
        socket.create_connection(("127.0.0.1", 5432), timeout=1).close()
    except OSError as exc:
        reason = f"PostgreSQL not reachable at 127.0.0.1:5432 ({exc})"
        if os.environ.get("SENSORTASKS_REQUIRE_POSTGRES") == "1":
            pytest.fail(reason + " and SENSORTASKS_REQUIRE_POSTGRES=1")
        pytest.skip(reason)
    return POSTGRES_URL
