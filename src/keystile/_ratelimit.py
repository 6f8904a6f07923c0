"""Unkey's sliding-window rate limit as a pure function of (counter state, now).

Windows are aligned to the epoch: ``seq = now // duration``. The count that
matters is this window's plus the previous window's weighted by how much of it
still overlaps the sliding window, truncated to an integer. A request is denied
when that count plus its cost exceeds the limit; a denied request takes nothing.
The counter state kept in the store is ``{"seq", "cur", "prev"}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["WindowOutcome", "check_window", "window_counts"]


@dataclass(frozen=True, slots=True)
class WindowOutcome:
    allowed: bool
    remaining: int
    reset: int
    new_state: dict[str, Any] | None  # None: nothing to write


def window_counts(state: Mapping[str, Any] | None, seq: int) -> tuple[int, int]:
    """``(current, previous)`` window counts of a counter state at window ``seq``."""
    if state is None:
        return 0, 0
    if state["seq"] == seq:
        return int(state["cur"]), int(state["prev"])
    if state["seq"] == seq - 1:
        return 0, int(state["cur"])
    return 0, 0


def check_window(
    state: dict[str, Any] | None, *, limit: int, duration: int, cost: int, now: int
) -> WindowOutcome:
    """Decide one request of ``cost`` against ``limit`` per ``duration`` ms."""
    seq, elapsed = divmod(now, duration)
    current, previous = window_counts(state, seq)
    used = current + previous * (duration - elapsed) // duration
    reset = (seq + 1) * duration
    if used + cost > limit:
        return WindowOutcome(False, max(0, limit - used), reset, None)
    new_state = {"seq": seq, "cur": current + cost, "prev": previous} if cost else None
    return WindowOutcome(True, limit - used - cost, reset, new_state)
