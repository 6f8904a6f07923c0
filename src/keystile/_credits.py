"""Credits with lazy refill: pure functions of (credit state, now).

The state of a key's credits is a small dict kept in the store, never in the cache::

    {"remaining": int | None, "refill": {"interval", "amount", "refillDay"} | None,
     "refilledAt": unix_ms}

A refill *sets* ``remaining`` to ``amount`` once a refill moment (00:00 UTC daily,
or 00:00 UTC on ``refillDay`` monthly, the month's last day when it is shorter) has
passed since ``refilledAt``. It is applied when the key is next verified or read, so
no scheduler is needed.
"""

from __future__ import annotations

import calendar
import datetime as dt
from typing import Any

__all__ = [
    "CreditState",
    "apply_refill",
    "last_refill_moment",
    "new_credit_state",
    "next_refill_moment",
]

CreditState = dict[str, Any]
_DAY_MS = 86_400_000


def new_credit_state(
    remaining: int | None, refill: dict[str, Any] | None, now: int
) -> CreditState:
    return {"remaining": remaining, "refill": refill, "refilledAt": now}


def last_refill_moment(refill: dict[str, Any], now: int) -> int:
    """The latest refill moment at or before ``now`` (Unix ms)."""
    if refill["interval"] == "daily":
        return now - now % _DAY_MS
    day = refill.get("refillDay") or 1
    today = dt.datetime.fromtimestamp(now / 1000, tz=dt.UTC)
    year, month = today.year, today.month
    moment = _monthly_moment(year, month, day)
    if moment > now:
        year, month = (year - 1, 12) if month == 1 else (year, month - 1)
        moment = _monthly_moment(year, month, day)
    return moment


def _monthly_moment(year: int, month: int, day: int) -> int:
    last_day = calendar.monthrange(year, month)[1]
    moment = dt.datetime(year, month, min(day, last_day), tzinfo=dt.UTC)
    return int(moment.timestamp()) * 1000


def apply_refill(state: CreditState, now: int) -> CreditState:
    """``state`` with any refill due at ``now`` applied (the same object if none is due)."""
    refill = state.get("refill")
    if not refill or state.get("remaining") is None:
        return state
    moment = last_refill_moment(refill, now)
    if state.get("refilledAt", 0) >= moment:
        return state
    return {**state, "remaining": int(refill["amount"]), "refilledAt": now}


def next_refill_moment(refill: dict[str, Any], now: int) -> int:
    """The first refill moment after ``now`` (Unix ms)."""
    if refill["interval"] == "daily":
        return now - now % _DAY_MS + _DAY_MS
    today = dt.datetime.fromtimestamp(now / 1000, tz=dt.UTC)
    year, month = today.year, today.month
    for _ in range(2):
        moment = _monthly_moment(year, month, refill.get("refillDay") or 1)
        if moment > now:
            return moment
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return moment
