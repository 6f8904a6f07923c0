"""Small, dependency-free statistics for the tables: medians, quartiles, percentiles."""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["percentiles", "quartiles"]


def percentiles(values: Sequence[float], qs: Sequence[float]) -> list[float]:
    """The ``qs``-th percentiles (0..100), linear interpolation; NaN for no values."""
    if not values:
        return [math.nan for _ in qs]
    ordered = sorted(values)
    return [_interpolate(ordered, q) for q in qs]


def _interpolate(ordered: Sequence[float], q: float) -> float:
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    """(first quartile, median, third quartile)."""
    q1, q2, q3 = percentiles(values, (25, 50, 75))
    return q1, q2, q3
