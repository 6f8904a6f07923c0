"""The counters: exact numbers for scripted scenarios, on real stores, and what fails.

Every store (memory, a real SQLite file, a real Redis) runs one scripted mix through
the middleware; a private Redis is killed under a running app; a real ``keystile
serve`` in this process stops answering the remote backend.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from keystile import (
    Credits,
    KeyAuthMiddleware,
    Keystile,
    MetricsSnapshot,
    SQLiteStore,
    StoreUnavailableError,
    Verifier,
    VerifyRequest,
    generate_key,
)
from keystile._metrics import LATENCY_BUCKETS, Metrics
from keystile._remote import RemoteVerifier
from keystile.server import RootKeys
from tests.conftest import Clock, InProcessServe, RedisServer

SECOND = 1_000


async def ok(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


def app_with(verifier: Any, **options: Any) -> Starlette:
    app = Starlette(routes=[Route("/", ok)])
    app.add_middleware(KeyAuthMiddleware, verifier=verifier, **options)
    return app


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


async def send(c: httpx.AsyncClient, key: str, times: int = 1) -> list[int]:
    return [(await c.get("/", headers={"authorization": f"Bearer {key}"})).status_code
            for _ in range(times)]


def counted(verifier: Any) -> MetricsSnapshot:
    """The snapshot once every verification so far is counted (drained now, not by the
    thread); writing the events may fail while the store is down: they are counted first."""
    with contextlib.suppress(StoreUnavailableError):
        verifier.events.flush()
    snapshot: MetricsSnapshot = verifier.metrics.snapshot()
    return snapshot


def trips(snapshot: MetricsSnapshot) -> dict[str, int]:
    return {operation: h.count for operation, h in snapshot.store_latency.items() if h.count}


def nonzero(counts: Any) -> dict[str, int]:
    return {name: n for name, n in counts.items() if n}


async def test_if_a_scripted_mix_passes_the_middleware_then_every_count_is_exact(
    store_url: str, clock: Clock,
) -> None:
    ks = Keystile(store_url, now=clock)
    api = ks.create_api("shop", prefix="sk_shop")
    plain = ks.create_key(api.id).key
    paid = ks.create_key(api.id, credits=Credits(100)).key
    disabled = ks.create_key(api.id, enabled=False).key
    unknown = generate_key("sk_shop", 16)  # the right shape, never issued
    async with client(app_with(ks)) as c:
        assert await send(c, plain, 10) == [200] * 10  # 1 miss, then 9 remembered answers
        assert await send(c, paid, 5) == [200] * 5  # 1 miss, 4 hits; every one settles
        assert await send(c, disabled, 3) == [403] * 3  # 1 miss, 2 hits
        assert await send(c, unknown, 4) == [401] * 4  # 1 miss, 3 hits of the negative entry
        assert await send(c, "sk_else_" + "2" * 22, 3) == [401] * 3  # no such prefix
        assert await send(c, "sk_shop_0OIl", 3) == [401] * 3  # not base58 of 16+ bytes
        await c.get("/")  # no key at all: no verification

    snapshot = counted(ks.verifier)

    assert nonzero(snapshot.verifications) == {"VALID": 15, "DISABLED": 3, "NOT_FOUND": 10}
    assert snapshot.total == 28
    assert (snapshot.cache_misses, snapshot.unrouted, snapshot.cache_hits) == (4, 6, 18)
    assert trips(snapshot) == {"load_keyspaces": 1, "load_record": 4, "settle": 5}
    assert nonzero(snapshot.store_errors) == {} and nonzero(snapshot.fail_policy) == {}
    assert snapshot.cache_entries == 4  # three keys and the unknown one
    assert snapshot.events_dropped == snapshot.events_queued == snapshot.event_write_errors == 0
    assert snapshot.events_written == 28 and snapshot.breaker_opens == 0
    ks.close()


def test_if_the_same_mix_is_verified_without_a_middleware_then_the_counts_are_the_same(
    sqlite_url: str, clock: Clock,
) -> None:
    ks = Keystile(sqlite_url, now=clock, analytics=False)  # a counting-only recorder
    api = ks.create_api("shop", prefix="sk_shop")
    plain = ks.create_key(api.id).key
    for _ in range(3):
        assert ks.verify(plain).valid  # 1 miss, 2 hits
        assert not ks.verify("sk_else_" + "2" * 22).valid  # unrouted

    snapshot = counted(ks.verifier)

    assert (snapshot.total, snapshot.cache_misses, snapshot.unrouted, snapshot.cache_hits) == (6, 1, 3, 2)
    assert snapshot.events_written == 0  # counted, not recorded
    ks.close()


async def test_if_redis_dies_under_open_cached_then_errors_and_fail_policy_answers_are_counted(
    private_redis: RedisServer, clock: Clock,
) -> None:
    ks = Keystile(private_redis.url + "?timeout=0.2", now=clock)
    api = ks.create_api("shop", prefix="sk_shop")
    plain = ks.create_key(api.id).key
    paid = ks.create_key(api.id, credits=Credits(100)).key
    async with client(app_with(ks, fail_policy="open_cached", stale_max_age=60)) as c:
        assert await send(c, plain) + await send(c, paid) == [200, 200]  # both cached now

        private_redis.kill()
        assert await send(c, paid, 2) == [200, 200]  # settle fails: admitted unspent
        clock.advance(11 * SECOND)  # past cache_ttl: records must be read again
        assert await send(c, plain, 3) == [200] * 3  # the read fails: the stale record serves
        assert await send(c, generate_key("sk_shop", 16), 2) == [503, 503]  # nothing to go on
        clock.advance(20 * SECOND)  # the keyspace map is due again, and cannot be read
        assert await send(c, plain) == [200]

    snapshot = counted(ks.verifier)

    assert nonzero(snapshot.store_errors) == {"load_keyspaces": 1, "load_record": 6, "settle": 2}
    assert nonzero(snapshot.fail_policy) == {"load_keyspaces": 1, "load_record": 4, "settle": 2}
    assert trips(snapshot) == {"load_keyspaces": 2, "load_record": 8, "settle": 3}
    # The two 503s raised: they are store errors, not verifications.
    assert nonzero(snapshot.verifications) == {"VALID": 8}
    assert (snapshot.cache_misses, snapshot.cache_hits, snapshot.unrouted) == (6, 2, 0)
    ks.close()


def test_if_another_process_holds_the_sqlite_write_lock_then_failed_settles_are_counted(
    tmp_path: Path, clock: Clock,
) -> None:
    path = tmp_path / "keys.db"
    ks = Keystile(SQLiteStore(f"sqlite:///{path}", timeout=0.05), now=clock)
    created = ks.create_key(ks.create_api("shop", prefix="sk_shop").id, credits=Credits(100))
    assert ks.verify(created.key).valid  # the record is cached; every verify settles
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # as another process would: SQLite's own lock
    try:
        for _ in range(3):
            with pytest.raises(StoreUnavailableError, match="locked"):
                ks.verifier.verify(created.key)  # closed: the error reaches the caller
        admitted = ks.verifier.verify_request(created.key, VerifyRequest(), stale_ms=60_000)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    snapshot = counted(ks.verifier)

    assert admitted.valid and admitted.credits is None  # open_cached: admitted unspent
    assert nonzero(snapshot.store_errors) == {"settle": 4}
    assert nonzero(snapshot.fail_policy) == {"settle": 1}
    assert trips(snapshot) == {"load_keyspaces": 1, "load_record": 1, "settle": 5}
    assert nonzero(snapshot.verifications) == {"VALID": 2}  # the three errors answered nothing
    ks.close()


# -- the remote backend ------------------------------------------------------------------------


@pytest.fixture
def served(sqlite_url: str) -> Iterator[tuple[Keystile, InProcessServe, str]]:
    ks = Keystile(sqlite_url)
    root = RootKeys(ks).create(["api.*.verify_key"]).key
    server = InProcessServe(ks)
    yield ks, server, root
    server.stop()
    ks.close()


async def test_if_the_remote_fails_then_its_errors_fallbacks_and_breaker_openings_are_counted(
    served: tuple[Keystile, InProcessServe, str],
) -> None:
    ks, server, root = served
    api = ks.create_api("app", prefix="sk_app")
    plain = ks.create_key(api.id).key
    remote = RemoteVerifier(f"unkey+http://127.0.0.1:{server.port}?prefixes=sk_app", root_key=root,
                            retries=0, failures=2, cooldown=60, cache_ttl=0)
    async with client(app_with(remote, fail_policy="open_cached")) as c:
        assert await send(c, plain, 2) == [200, 200]  # forwarded twice (no fresh cache)
        assert await send(c, generate_key("sk_app", 16)) == [401]
        assert await send(c, "sk_else_" + "2" * 22) == [401]  # never leaves the process
        server.stop()
        # Two failures open the breaker; the stale VALID answers each time, the unknown
        # key fails; after the opening, requests fail fast without trying.
        assert await send(c, plain, 2) == [200, 200]
        assert await send(c, generate_key("sk_app", 16), 2) == [503, 503]

    snapshot = counted(remote)

    assert snapshot.breaker_opens == 1
    assert snapshot.store_errors == {"verify_remote": 4}
    assert snapshot.fail_policy == {"verify_remote": 2}
    assert trips(snapshot) == {"verify_remote": 7}
    assert nonzero(snapshot.verifications) == {"VALID": 4, "NOT_FOUND": 2}
    assert (snapshot.cache_misses, snapshot.unrouted, snapshot.cache_hits) == (5, 1, 0)
    remote.close()


# -- the registry itself ----------------------------------------------------------------------


def test_if_latencies_are_observed_then_the_buckets_are_cumulative_and_end_with_every_one() -> None:
    metrics = Metrics(store="memory://", operations=("settle",))
    for seconds in (0.00005, 0.0001, 0.003, 0.003, 7.0):
        metrics.observe("settle", seconds, failed=seconds > 1)

    histogram = metrics.snapshot().store_latency["settle"]

    buckets = dict(histogram.buckets)
    assert buckets[0.0001] == 2  # an observation on a bound is within it
    assert buckets[0.0025] == 2 and buckets[0.005] == 4 and buckets[5.0] == 4
    assert histogram.buckets[-1] == (float("inf"), 5) and histogram.count == 5
    assert histogram.sum == pytest.approx(7.00615)
    assert len(histogram.buckets) == len(LATENCY_BUCKETS) + 1
    assert metrics.snapshot().store_errors == {"settle": 1}


def test_if_threads_count_at_once_then_no_update_is_lost() -> None:
    metrics = Metrics(store="memory://", operations=("settle",))

    def observe() -> None:
        for _ in range(5_000):
            metrics.observe("settle", 0.001, failed=True)
            metrics.fell_back("settle")

    threads = [threading.Thread(target=observe) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    snapshot = metrics.snapshot()

    assert snapshot.store_latency["settle"].count == 40_000
    assert snapshot.store_errors == snapshot.fail_policy == {"settle": 40_000}


def test_if_metrics_are_off_and_analytics_too_then_the_verifier_queues_nothing(sqlite_url: str) -> None:
    verifier = Verifier(sqlite_url, analytics=False, metrics=False)
    assert verifier.events is None and verifier.metrics.snapshot().total == 0
    verifier.close()
