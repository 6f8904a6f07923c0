"""Several real processes spending from one key on one SQLite file: never over-admitted."""

from __future__ import annotations

from collections import Counter
from multiprocessing.synchronize import Barrier
from typing import Any

import pytest

from keystile import Code, Credits, Keystile, RatelimitConfig
from tests import procs

pytestmark = pytest.mark.multiprocess

PROCESSES = 4
T = 1_773_576_030_000  # a fixed moment, mid-window for a 60 s limit


def verify_many(url: str, key: str, attempts: int, now: int, barrier: Barrier, results: Any) -> None:
    """In a child: open the store, wait for the others, verify ``attempts`` times."""
    try:
        with Keystile(url, now=lambda: now) as ks:
            ks.verify("warm")  # open the connection and load the keyspace map first
            barrier.wait(timeout=30)
            results.put([ks.verify(key).code.value for _ in range(attempts)])
    except BaseException as exc:  # report, so the parent fails with the reason
        results.put(repr(exc))
        raise


def run_children(url: str, key: str, attempts: int) -> Counter[str]:
    return procs.run_children(verify_many, (url, key, attempts, T), PROCESSES)


def test_if_4_processes_spend_one_key_of_100_credits_then_exactly_100_are_valid(sqlite_url: str) -> None:
    with Keystile(sqlite_url, now=lambda: T) as ks:
        api = ks.create_api("payments", prefix="sk_live")
        created = ks.create_key(api.id, credits=100)

    counts = run_children(sqlite_url, created.key, attempts=40)

    assert counts == {Code.VALID.value: 100, Code.USAGE_EXCEEDED.value: 60}
    with Keystile(sqlite_url, now=lambda: T) as ks:
        assert ks.get_key(created.key_id).credits == Credits(0)


def test_if_4_processes_share_a_limit_of_20_per_minute_then_exactly_20_are_admitted(
    sqlite_url: str,
) -> None:
    with Keystile(sqlite_url, now=lambda: T) as ks:
        api = ks.create_api("payments", prefix="sk_live")
        created = ks.create_key(
            api.id, ratelimits=[RatelimitConfig("requests", 20, 60_000, auto_apply=True)])

    counts = run_children(sqlite_url, created.key, attempts=10)

    assert counts == {Code.VALID.value: 20, Code.RATE_LIMITED.value: 20}
    with Keystile(sqlite_url, now=lambda: T) as ks:
        assert ks.verify(created.key).code is Code.RATE_LIMITED
