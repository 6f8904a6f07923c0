"""What only the Redis store does: round trips, invalidation across processes, faults.

The contract suite (every test taking ``store_url``) already runs on Redis; these
tests use a private ``redis-server`` where they count, kill, pause or restart it.
"""

from __future__ import annotations

import multiprocessing
import time
from typing import Any

import httpx
import pytest
import redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from keystile import (
    Code,
    ConfigurationError,
    Credits,
    KeyAuthMiddleware,
    Keystile,
    RatelimitConfig,
    StoreUnavailableError,
)
from keystile.stores.redis import RedisStore
from tests.conftest import Clock, RedisServer


class CountingConnection(redis.Connection):
    """Counts what is sent: one ``send_packed_command`` is one round trip (a pipeline
    or a script included)."""

    sent = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.sent += 1
        super().send_packed_command(command, check_health)


def counted(ks: Keystile) -> None:
    store = ks.store
    assert isinstance(store, RedisStore)
    pool = store.client.connection_pool
    pool.connection_class = CountingConnection
    # New connections count. Only the idle ones are closed and forgotten: closing the
    # invalidation listener's too made it reconnect, and drop the cache, at any moment.
    pool.disconnect(inuse_connections=False)
    pool.reset()


def round_trips(fn: Any) -> int:
    before = CountingConnection.sent
    fn()
    return CountingConnection.sent - before


def test_if_a_cached_key_has_no_credits_or_limits_then_verify_makes_no_round_trip(
    private_redis: RedisServer, clock: Clock
) -> None:
    ks = Keystile(private_redis.url, now=clock)
    counted(ks)
    api = ks.create_api("shop", prefix="sk_shop")
    key = ks.create_key(api.id, permissions=["read"]).key
    assert ks.verify(key, permissions="read").valid
    assert round_trips(lambda: [ks.verify(key, permissions="read") for _ in range(50)]) == 0
    ks.close()


def test_if_a_key_is_not_cached_then_one_round_trip_reads_it_with_identity_and_roles(
    private_redis: RedisServer, clock: Clock
) -> None:
    ks = Keystile(private_redis.url, now=clock, cache_ttl=0)
    counted(ks)
    api = ks.create_api("shop", prefix="sk_shop")
    ks.create_role("reader", permissions=["docs.read"])
    ks.create_identity("acme")
    key = ks.create_key(api.id, external_id="acme", roles=["reader"]).key
    ks.verify(key)  # loads the keyspace map (one more trip, every 30 s)
    assert round_trips(lambda: ks.verify(key, permissions="docs.read")) == 1
    result = ks.verify(key, permissions="docs.read")
    assert result.valid and result.identity is not None and result.identity.external_id == "acme"
    ks.close()


def test_if_a_cached_key_has_credits_and_a_limit_then_verify_makes_one_round_trip(
    private_redis: RedisServer, clock: Clock
) -> None:
    ks = Keystile(private_redis.url, now=clock)
    counted(ks)
    api = ks.create_api("shop", prefix="sk_shop")
    key = ks.create_key(api.id, credits=100, ratelimits=[
        RatelimitConfig("requests", limit=50, duration=60_000, auto_apply=True)]).key
    assert ks.verify(key).valid
    assert round_trips(lambda: ks.verify(key)) == 1
    result = ks.verify(key)
    assert result.credits == 97 and result.ratelimits[0].remaining == 47
    ks.close()


def _verify_until_rejected(url: str, key: str, ready: Any, done: Any) -> None:
    ks = Keystile(url)
    assert ks.verify(key).valid
    ready.set()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if ks.verify(key).code is Code.DISABLED:
            done.put(time.time())
            return
        time.sleep(0.001)
    done.put(None)


def test_if_a_key_is_disabled_in_one_process_then_another_rejects_it_within_a_second(
    private_redis: RedisServer,
) -> None:
    store_url = private_redis.url
    ks = Keystile(store_url)
    api = ks.create_api("shop", prefix="sk_shop")
    created = ks.create_key(api.id)
    context = multiprocessing.get_context("spawn")
    ready, done = context.Event(), context.Queue()
    child = context.Process(target=_verify_until_rejected, args=(store_url, created.key, ready, done))
    child.start()
    try:
        assert ready.wait(30), "the other process did not start"
        time.sleep(0.2)  # it now answers from its cache, which lives 10 s
        disabled_at = time.time()
        ks.update_key(created.key_id, enabled=False)
        rejected_at = done.get(timeout=15)
        assert rejected_at is not None, "the other process still accepted the key after 10 s"
        assert rejected_at - disabled_at < 1.0
    finally:
        child.join(10)
        ks.close()


def test_if_the_invalidation_connection_drops_then_the_cache_is_emptied_on_reconnect(
    private_redis: RedisServer, clock: Clock
) -> None:
    ks = Keystile(private_redis.url, now=clock)
    api = ks.create_api("shop", prefix="sk_shop")
    key = ks.create_key(api.id).key
    assert ks.verify(key).valid
    assert len(ks.verifier.cache) == 1
    admin = redis.Redis.from_url(private_redis.url)
    deadline = time.monotonic() + 5
    while not admin.client_kill_filter(_type="pubsub"):
        assert time.monotonic() < deadline, "the listener never subscribed"
        time.sleep(0.02)
    deadline = time.monotonic() + 5
    while len(ks.verifier.cache):
        assert time.monotonic() < deadline, "the cache was not dropped after the reconnect"
        time.sleep(0.02)
    assert ks.verify(key).valid
    admin.close()
    ks.close()


def test_if_redis_is_unreachable_then_verify_raises_store_unavailable_not_hangs() -> None:
    from tests.conftest import free_port

    ks = Keystile(f"redis://127.0.0.1:{free_port()}/0?timeout=0.2")
    with pytest.raises(StoreUnavailableError, match="Redis"):
        ks.verify("sk_shop_3xituoZLNs2TE2YiXHbRvA")
    ks.close()


async def test_if_verified_under_asyncio_then_redis_is_awaited_natively_not_in_a_thread(
    private_redis: RedisServer, clock: Clock
) -> None:
    ks = Keystile(private_redis.url, now=clock, cache_ttl=0)
    api = ks.create_api("shop", prefix="sk_shop")
    key = ks.create_key(api.id, credits=10, ratelimits=[
        RatelimitConfig("requests", limit=50, duration=60_000, auto_apply=True)]).key
    assert (await ks.verifier.verify_async(key)).credits == 9  # also loads the keyspace map
    counted(ks)  # from here, count what the blocking client sends
    before = CountingConnection.sent
    results = [await ks.verifier.verify_async(key) for _ in range(5)]
    assert [r.credits for r in results] == [8, 7, 6, 5, 4]
    assert [r.ratelimits[0].remaining for r in results] == [48, 47, 46, 45, 44]
    assert CountingConnection.sent == before  # every read and settle went through redis.asyncio
    ks.close()


async def test_if_redis_is_paused_then_the_middleware_answers_503_and_recovers_after(
    private_redis: RedisServer,
) -> None:
    url = private_redis.url + "?timeout=0.2"
    ks = Keystile(url)
    api = ks.create_api("shop", prefix="sk_shop")
    cached, uncached = ks.create_key(api.id).key, ks.create_key(api.id, credits=5).key

    async def ok(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/", ok)])
    app.add_middleware(KeyAuthMiddleware, verifier=ks)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        assert (await c.get("/", headers={"authorization": f"Bearer {cached}"})).status_code == 200
        assert (await c.get("/", headers={"authorization": f"Bearer {uncached}"})).status_code == 200
        private_redis.pause()
        try:
            started = time.monotonic()
            response = await c.get("/", headers={"authorization": f"Bearer {uncached}"})
            assert time.monotonic() - started < 5, "a paused Redis must cost a timeout, not a hang"
            assert response.status_code == 503
            assert response.headers["content-type"] == "application/problem+json"
            assert "retry-after" in response.headers
            assert uncached not in response.text
        finally:
            private_redis.resume()
        deadline = time.monotonic() + 5
        while True:
            response = await c.get("/", headers={"authorization": f"Bearer {uncached}"})
            if response.status_code == 200:
                break
            assert time.monotonic() < deadline, "verification did not recover after Redis came back"
            time.sleep(0.05)
    assert ks.verify(uncached).credits == 2  # 5, one each for the two 200s, and this one
    ks.close()


def test_if_redis_is_killed_and_restarted_then_spent_credits_stay_spent(
    private_redis: RedisServer, clock: Clock
) -> None:
    ks = Keystile(private_redis.url + "?timeout=0.2", now=clock)
    api = ks.create_api("shop", prefix="sk_shop")
    key = ks.create_key(api.id, credits=10).key
    assert [ks.verify(key).credits for _ in range(3)] == [9, 8, 7]
    private_redis.kill()
    with pytest.raises(StoreUnavailableError):
        ks.verify(key)
    private_redis.start()  # same port, same append-only file
    deadline = time.monotonic() + 5
    while True:
        try:
            result = ks.verify(key)
            break
        except StoreUnavailableError:
            assert time.monotonic() < deadline, "verification did not recover after the restart"
            time.sleep(0.05)
    assert result.credits == 6
    ks.close()


def test_if_keys_vanish_from_redis_then_verify_answers_not_found(
    private_redis: RedisServer, clock: Clock
) -> None:
    ks = Keystile(private_redis.url, now=clock, cache_ttl=0, keyspace_refresh=1)
    api = ks.create_api("shop", prefix="sk_shop")
    key = ks.create_key(api.id).key
    assert ks.verify(key).valid
    redis.Redis.from_url(private_redis.url).flushall()  # a restart without persistence
    assert ks.verify(key).code is Code.NOT_FOUND
    clock.advance(1_000)
    assert ks.verify(key).code is Code.NOT_FOUND
    ks.close()


@pytest.mark.parametrize("url", [
    "redis://127.0.0.1:6379/0?timeout=0", "redis://127.0.0.1:6379/0?timeout=soon",
])
def test_if_the_redis_url_options_are_bad_then_configuration_error(url: str) -> None:
    with pytest.raises(ConfigurationError, match="timeout"):
        Keystile(url)


def test_if_the_url_has_a_password_then_the_store_repr_does_not_show_it() -> None:
    store = RedisStore("redis://user:s3cret@127.0.0.1:6379/2?prefix=app:")
    assert "s3cret" not in repr(store)
    assert repr(store) == "RedisStore('redis://127.0.0.1:6379/2', prefix='app:')"


@pytest.mark.parametrize("lease, most", [(0, 100), (50, 6)])
def test_if_a_busy_key_is_leased_then_it_costs_a_few_round_trips_per_batch(
    private_redis: RedisServer, clock: Clock, lease: int, most: int,
) -> None:
    ks = Keystile(private_redis.url, now=clock)
    counted(ks)
    api = ks.create_api("shop", prefix="sk_shop", lease=lease)
    created = ks.create_key(api.id, credits=1000, ratelimits=[
        RatelimitConfig("requests", limit=500, duration=60_000, auto_apply=True)])
    key = created.key
    ks.verify("sk_shop_3xituoZLNs2TE2YiXHbRvA")  # the keyspace map and the clock offset
    assert ks.verify(key).valid  # the record, and the first lease
    trips = round_trips(lambda: [ks.verify(key) for _ in range(100)])
    # Exact: one EVALSHA each. Leased: a transaction (WATCH+MGET, then MULTI..EXEC) per batch.
    assert trips == most if lease == 0 else trips <= most
    ks.verifier.release_leases()  # what was leased and not used goes back
    assert ks.get_key(created.key_id).credits == Credits(1000 - 101)
    ks.close()


def _child_verifies_until_rejected(ks: Keystile, key: str, ready: Any, done: Any) -> None:
    assert ks.verify(key).valid  # from the cache the parent filled before the fork
    ready.set()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if ks.verify(key).code is Code.DISABLED:
            done.put(time.time())
            return
        time.sleep(0.001)
    done.put(None)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # 3.12+: fork with threads running
def test_if_the_process_forks_then_the_child_listens_for_invalidations_of_its_own(
    private_redis: RedisServer,
) -> None:
    ks = Keystile(private_redis.url)
    api = ks.create_api("shop", prefix="sk_shop")
    created = ks.create_key(api.id)
    assert ks.verify(created.key).valid  # cached, and the parent's listener runs
    context = multiprocessing.get_context("fork")
    ready, done = context.Event(), context.Queue()
    child = context.Process(target=_child_verifies_until_rejected, args=(ks, created.key, ready, done))
    child.start()
    try:
        assert ready.wait(10), "the child did not start"
        time.sleep(0.2)  # the child's listener subscribes
        disabled_at = time.time()
        other = Keystile(private_redis.url)  # another instance makes the change
        other.update_key(created.key_id, enabled=False)
        other.close()
        rejected_at = done.get(timeout=15)
        assert rejected_at is not None, "the forked child never heard of the change"
        assert rejected_at - disabled_at < 1.0
    finally:
        child.join(10)
        ks.close()
