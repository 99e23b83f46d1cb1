"""`free_port` under pytest-xdist: two workers never pick the same port (a CI run lost a test to
"Address already in use" when both picked one before either bound it)."""

from __future__ import annotations

import pytest

from sensortasks.testing import free_port


@pytest.mark.parametrize("index", [0, 1, 2])
def test_each_worker_picks_only_ports_of_its_own(monkeypatch: pytest.MonkeyPatch, index: int) -> None:
    monkeypatch.setenv("PYTEST_XDIST_WORKER", f"gw{index}")
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "3")
    assert {free_port() // 2 % 3 for _ in range(50)} == {index}


def test_outside_xdist_any_free_port_will_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    monkeypatch.delenv("PYTEST_XDIST_WORKER_COUNT", raising=False)
    assert 0 < free_port() < 65536
