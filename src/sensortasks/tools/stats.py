"""The one percentile of the tools' reports (bench, soak, listbench)."""

from __future__ import annotations

from collections.abc import Iterable


def percentile(samples: Iterable[float], p: float) -> float:
    """The `p`-th percentile (0-100) by the nearest-rank-below rule: the sample at index
    ``int(p / 100 * n)`` of the sorted `samples` (the largest for ``p = 100``); NaN for none."""
    ordered = sorted(samples)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]
