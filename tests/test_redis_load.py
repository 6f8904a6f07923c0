"""4 processes x 2 threads on one real Redis: credits and limits exact, never over.

Every child verifies at the same fixed moment, so the expected counts are exact.
"""

from __future__ import annotations

import threading
from collections import Counter
from multiprocessing.synchronize import Barrier
from typing import Any

import pytest

from keystile import Code, Credits, Identity, Keystile, RatelimitConfig
from tests import procs

pytestmark = pytest.mark.multiprocess

PROCESSES, THREADS = 4, 2
T = 1_773_576_003_000  # a fixed moment, early in a 10 s window


def verify_many(url: str, keys: list[str], attempts: int, barrier: Barrier, results: Any) -> None:
    """In a child: two threads verify ``attempts`` times each, cycling through ``keys``."""
    try:
        with Keystile(url, now=lambda: T) as ks:
            for key in keys:
                ks.verify(key)  # warm: the keyspace map and the records, not counted
            codes: list[str] = []
            lock = threading.Lock()

            def spend(offset: int) -> None:
                mine = [ks.verify(keys[(offset + i) % len(keys)]).code.value for i in range(attempts)]
                with lock:
                    codes.extend(mine)

            barrier.wait(timeout=30)
            threads = [threading.Thread(target=spend, args=(n,)) for n in range(THREADS)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            results.put(codes)
    except BaseException as exc:  # report, so the parent fails with the reason
        results.put(repr(exc))
        raise


def run_children(url: str, keys: list[str], attempts: int) -> Counter[str]:
    return procs.run_children(verify_many, (url, keys, attempts), PROCESSES)


def test_if_8_spenders_share_a_key_of_1000_credits_then_exactly_1000_are_valid(redis_store_url: str) -> None:
    with Keystile(redis_store_url, now=lambda: T) as ks:
        api = ks.create_api("payments", prefix="sk_live")
        created = ks.create_key(api.id, credits=1000 + PROCESSES)  # the warm-up spends one each

    counts = run_children(redis_store_url, [created.key], attempts=150)

    assert counts == {Code.VALID.value: 1000, Code.USAGE_EXCEEDED.value: 200}
    with Keystile(redis_store_url, now=lambda: T) as ks:
        assert ks.get_key(created.key_id).credits == Credits(0)


def test_if_8_spenders_share_a_limit_of_100_per_10s_then_exactly_100_are_admitted(
    redis_store_url: str,
) -> None:
    with Keystile(redis_store_url, now=lambda: T) as ks:
        api = ks.create_api("payments", prefix="sk_live")
        created = ks.create_key(api.id, ratelimits=[
            RatelimitConfig("requests", 100 + PROCESSES, 10_000, auto_apply=True)])

    counts = run_children(redis_store_url, [created.key], attempts=20)

    assert counts == {Code.VALID.value: 100, Code.RATE_LIMITED.value: 60}


def test_if_3_keys_of_one_identity_share_its_limit_then_exactly_the_limit_is_admitted(
    redis_store_url: str,
) -> None:
    with Keystile(redis_store_url, now=lambda: T) as ks:
        api = ks.create_api("payments", prefix="sk_live")
        identity: Identity = ks.create_identity("acme", ratelimits=[
            RatelimitConfig("org", 100 + 3 * PROCESSES, 10_000, auto_apply=True)])
        keys = [ks.create_key(api.id, external_id=identity.external_id).key for _ in range(3)]

    counts = run_children(redis_store_url, keys, attempts=21)

    assert counts == {Code.VALID.value: 100, Code.RATE_LIMITED.value: 68}
