"""The failed-authentication window, on a fake clock."""

from __future__ import annotations

from sensortasks.service.ratelimit import FailureLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_client_is_refused_after_the_budget_until_the_oldest_failure_ages_out() -> None:
    clock = Clock()
    limiter = FailureLimiter(max_failures=3, window_s=60, clock=clock)
    for _ in range(3):
        assert limiter.retry_after("10.0.0.1") is None
        limiter.failed("10.0.0.1")
        clock.now += 10
    assert limiter.retry_after("10.0.0.1") == 30  # the first failure (t=1000) ages out at t=1060
    assert limiter.retry_after("10.0.0.2") is None  # others are not affected
    clock.now += 30
    assert limiter.retry_after("10.0.0.1") is None


def test_memory_is_bounded_by_forgetting_the_least_recent_clients() -> None:
    clock = Clock()
    limiter = FailureLimiter(max_failures=1, window_s=60, max_clients=2, clock=clock)
    for client in ("a", "b", "c"):
        limiter.failed(client)
    assert limiter.retry_after("a") is None
    assert limiter.retry_after("b") == 60
    assert limiter.retry_after("c") == 60
