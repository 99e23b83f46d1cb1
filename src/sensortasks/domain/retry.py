"""When to try a task again, and after how long."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RetryDecision:
    retry: bool
    delay_s: float = 0.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff between attempts.

    The wait before attempt ``n + 1`` (after attempt ``n`` failed) is
    ``min(backoff_max_s, backoff_s * 2 ** (n - 1))``: 5 s, 10 s, 20 s, ... with the defaults.
    """

    backoff_s: float = 5.0
    backoff_max_s: float = 300.0

    def delay(self, attempt: int) -> float:
        exponent = min(max(attempt - 1, 0), 32)
        return float(min(self.backoff_max_s, self.backoff_s * 2**exponent))

    def decide(self, attempt: int, max_attempts: int, *, retryable: bool = True) -> RetryDecision:
        """Decide after attempt `attempt` (1-based) of at most `max_attempts` failed."""
        if retryable and attempt < max_attempts:
            return RetryDecision(retry=True, delay_s=self.delay(attempt))
        return RetryDecision(retry=False)
