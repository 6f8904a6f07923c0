"""The fail policy: what keys get while the store cannot answer (a real Redis, killed).

``closed`` (the default) answers 503 problem+json with Retry-After; ``open_cached``
decides a key on its cached record, even expired up to ``stale_max_age``, and
admits it without spending. Unknown keys get 503 either way. Nothing raises.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from keystile import (
    ConfigurationError,
    KeyAuthMiddleware,
    KeyAuthWSGIMiddleware,
    Keystile,
    RatelimitConfig,
    StoreUnavailableError,
    VerifyRequest,
    require_key,
)
from tests.conftest import Clock, RedisServer


async def ok(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


def app_with(ks: Keystile, **options: Any) -> Starlette:
    app = Starlette(routes=[Route("/", ok)])
    app.add_middleware(KeyAuthMiddleware, verifier=ks, **options)
    return app


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


async def get(c: httpx.AsyncClient, key: str) -> httpx.Response:
    return await c.get("/", headers={"authorization": f"Bearer {key}"})


@pytest.fixture
def ks(private_redis: RedisServer, clock: Clock) -> Any:
    keystile = Keystile(private_redis.url + "?timeout=1", now=clock)
    yield keystile
    keystile.close()


def restart_and_wait(server: RedisServer, ks: Keystile, key: str) -> None:
    server.start()
    deadline = time.monotonic() + 5
    while True:
        try:
            ks.verifier.store.read_states([key])
            return
        except StoreUnavailableError:
            assert time.monotonic() < deadline, "Redis did not come back"
            time.sleep(0.05)


async def test_if_open_cached_then_a_cached_key_passes_unspent_while_redis_is_down(
    ks: Keystile, private_redis: RedisServer, clock: Clock
) -> None:
    api = ks.create_api("shop", prefix="sk_shop")
    plain = ks.create_key(api.id).key
    paid = ks.create_key(api.id, credits=10, ratelimits=[
        RatelimitConfig("requests", limit=100, duration=60_000, auto_apply=True)]).key
    unknown = ks.create_key(api.id).key  # never verified: not in the cache
    async with client(app_with(ks, fail_policy="open_cached", stale_max_age=60)) as c:
        assert (await get(c, plain)).status_code == 200
        assert (await get(c, paid)).status_code == 200
        private_redis.kill()
        # Its checks are remembered, its settle fails: admitted unspent all the same.
        assert (await get(c, paid)).status_code == 200
        clock.advance(20_000)  # past cache_ttl (10 s): the entries are stale, within 60 s
        for _ in range(3):
            assert (await get(c, plain)).status_code == 200
            assert (await get(c, paid)).status_code == 200
        response = await get(c, unknown)
        assert response.status_code == 503
        assert response.headers["content-type"] == "application/problem+json"
        assert "retry-after" in response.headers
        clock.advance(51_000)  # 71 s: past the entry's 10 s life plus the 60 s allowance
        assert (await get(c, plain)).status_code == 503
    restart_and_wait(private_redis, ks, "x")
    assert ks.verify(paid).credits == 8  # 10, the one spent before the outage, and this one


async def test_if_closed_then_a_key_that_needs_the_store_gets_503(
    ks: Keystile, private_redis: RedisServer, clock: Clock
) -> None:
    api = ks.create_api("shop", prefix="sk_shop")
    plain, paid = ks.create_key(api.id).key, ks.create_key(api.id, credits=10).key
    async with client(app_with(ks)) as c:
        assert (await get(c, plain)).status_code == 200
        assert (await get(c, paid)).status_code == 200
        private_redis.kill()
        # A cached key with nothing to settle needs no store: it still passes.
        assert (await get(c, plain)).status_code == 200
        paid_response = await get(c, paid)  # its credits must be settled in the store
        assert paid_response.status_code == 503
        assert paid_response.json()["code"] == "STORE_UNAVAILABLE"
        clock.advance(20_000)  # past cache_ttl: the plain key must be read again
        assert (await get(c, plain)).status_code == 503
    restart_and_wait(private_redis, ks, "x")
    assert ks.verify(paid).credits == 8


async def test_if_open_cached_and_the_keyspace_map_is_due_then_the_last_map_serves(
    ks: Keystile, private_redis: RedisServer, clock: Clock
) -> None:
    api = ks.create_api("shop", prefix="sk_shop")
    key = ks.create_key(api.id).key
    async with client(app_with(ks, fail_policy="open_cached")) as c:
        assert (await get(c, key)).status_code == 200
        private_redis.kill()
        clock.advance(40_000)  # the map (30 s) and the entry (10 s) are both due
        assert (await get(c, key)).status_code == 200
        assert (await get(c, "sk_other_3xituoZLNs2TE2YiXHbRvA")).status_code == 401


def test_if_open_cached_then_a_stale_revoked_key_is_still_rejected(
    ks: Keystile, private_redis: RedisServer, clock: Clock
) -> None:
    api = ks.create_api("shop", prefix="sk_shop")
    created = ks.create_key(api.id)
    ks.update_key(created.key_id, enabled=False)
    assert ks.verify(created.key).code.value == "DISABLED"
    private_redis.kill()
    clock.advance(20_000)
    result = ks.verifier.verify_request(created.key, VerifyRequest(), stale_ms=60_000)
    assert result.code.value == "DISABLED"


def test_if_the_wsgi_middleware_is_open_cached_then_it_serves_a_stale_key(
    ks: Keystile, private_redis: RedisServer, clock: Clock
) -> None:
    from werkzeug.test import Client
    from werkzeug.wrappers import Response

    api = ks.create_api("shop", prefix="sk_shop")
    key = ks.create_key(api.id).key

    def hello(environ: Any, start_response: Any) -> Any:
        return Response("ok")(environ, start_response)

    for policy, expected in (("open_cached", 200), ("closed", 503)):
        app = KeyAuthWSGIMiddleware(hello, verifier=ks, fail_policy=policy)
        wsgi = Client(app)
        ks.verifier.invalidate(None)
        if private_redis.process is None:
            restart_and_wait(private_redis, ks, "x")
        assert wsgi.get("/", headers={"authorization": f"Bearer {key}"}).status_code == 200
        private_redis.kill()
        clock.advance(20_000)
        assert wsgi.get("/", headers={"authorization": f"Bearer {key}"}).status_code == expected


async def test_if_the_decorator_is_open_cached_then_it_serves_a_stale_key(
    ks: Keystile, private_redis: RedisServer, clock: Clock
) -> None:
    api = ks.create_api("shop", prefix="sk_shop")
    key = ks.create_key(api.id).key

    @require_key(verifier=ks, fail_policy="open_cached")
    async def guarded(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    async with client(Starlette(routes=[Route("/", guarded)])) as c:
        assert (await get(c, key)).status_code == 200
        private_redis.kill()
        clock.advance(20_000)
        assert (await get(c, key)).status_code == 200


@pytest.mark.parametrize("options", [
    {"fail_policy": "open"}, {"fail_policy": "open_cached", "stale_max_age": -1},
    {"stale_max_age": "long"},
])
def test_if_the_fail_policy_is_bad_then_configuration_error_at_construction(
    options: dict[str, Any],
) -> None:
    with pytest.raises(ConfigurationError, match=r"fail_policy|stale_max_age"):
        KeyAuthMiddleware(ok, store="memory://", **options)
    with pytest.raises(ConfigurationError, match=r"fail_policy|stale_max_age"):
        require_key(store="memory://", **options)
