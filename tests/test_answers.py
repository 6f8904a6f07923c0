"""Remembered answers: the hot path that hashes the raw header and skips all parsing.

A digest gets an answer only after its key passed every check; every change that
could alter the answer (an update, a revocation, the key's expiry, the keyspace map)
must end it at once. These tests drive real apps on real stores.
"""

from __future__ import annotations

import hashlib
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from keystile import (
    KeyAuthMiddleware,
    Keystile,
    RatelimitConfig,
    Verifier,
    VerifyRequest,
    VerifyResult,
    _verify,
    require_key,
)
from keystile._cache import RecordCache
from keystile._models import lasting
from tests.conftest import Clock


async def whoami(request: Request) -> JSONResponse:
    return JSONResponse({"keyId": request.scope["keystile"].key_id, "scopes": request.auth.scopes})


def app_with(ks: Keystile, **options: Any) -> Starlette:
    app = Starlette(routes=[Route("/", whoami)])
    app.add_middleware(KeyAuthMiddleware, verifier=ks, **options)
    return app


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def raw(key: str) -> bytes:
    return key.encode()


async def get(c: httpx.AsyncClient, key: str) -> httpx.Response:
    return await c.get("/", headers={"authorization": f"Bearer {key}"})


async def test_if_a_key_verified_once_then_repeats_are_answered_without_the_store(
    counting_store: Any, clock: Clock
) -> None:
    ks = Keystile(counting_store, now=clock)
    api = ks.create_api("shop", prefix="sk_shop")
    created = ks.create_key(api.id, permissions=["read"])
    async with client(app_with(ks, permissions="read")) as c:
        assert (await get(c, created.key)).status_code == 200
        assert raw(created.key) in ks.verifier.cache.answers
        counting_store.calls.clear()
        for _ in range(20):
            response = await get(c, created.key)
            assert response.status_code == 200
            assert response.json() == {"keyId": created.key_id, "scopes": ["read"]}
        assert counting_store.calls == {}


async def test_if_a_remembered_key_is_disabled_then_the_next_request_is_rejected(ks: Keystile) -> None:
    api = ks.create_api("shop", prefix="sk_shop")
    created = ks.create_key(api.id)
    async with client(app_with(ks)) as c:
        for _ in range(3):
            assert (await get(c, created.key)).status_code == 200
        ks.update_key(created.key_id, enabled=False)
        assert raw(created.key) not in ks.verifier.cache.answers
        response = await get(c, created.key)
        assert response.status_code == 403
        assert response.json()["code"] == "DISABLED"


async def test_if_a_remembered_key_is_deleted_then_the_next_request_is_401(ks: Keystile) -> None:
    api = ks.create_api("shop", prefix="sk_shop")
    created = ks.create_key(api.id)
    async with client(app_with(ks)) as c:
        assert (await get(c, created.key)).status_code == 200
        ks.delete_key(created.key_id)
        assert (await get(c, created.key)).status_code == 401


async def test_if_the_api_is_deleted_then_every_remembered_answer_goes(ks: Keystile) -> None:
    api = ks.create_api("shop", prefix="sk_shop")
    other = ks.create_api("other", prefix="sk_other")
    key, kept = ks.create_key(api.id).key, ks.create_key(other.id).key
    async with client(app_with(ks)) as c:
        assert (await get(c, key)).status_code == 200
        assert (await get(c, kept)).status_code == 200
        ks.delete_api(api.id)
        assert ks.verifier.cache.answers == {}
        assert (await get(c, key)).status_code == 401
        assert (await get(c, kept)).status_code == 200


async def test_if_the_key_expires_then_its_remembered_answer_ends_with_it(
    ks: Keystile, clock: Clock
) -> None:
    api = ks.create_api("shop", prefix="sk_shop")
    key = ks.create_key(api.id, expires=clock() + 5_000).key
    async with client(app_with(ks)) as c:
        assert (await get(c, key)).status_code == 200
        assert ks.verifier.cache.answers[raw(key)][0] <= clock() + 5_001
        clock.advance(4_000)
        assert (await get(c, key)).status_code == 200
        clock.advance(1_001)
        response = await get(c, key)
        assert response.status_code == 401
        assert response.json()["code"] == "EXPIRED"


async def test_if_another_process_deletes_the_keyspace_then_the_map_reload_ends_the_answers(
    ks: Keystile, same_store: Any, clock: Clock, store_url: str
) -> None:
    api = ks.create_api("shop", prefix="sk_shop")
    key = ks.create_key(api.id).key
    verifier = Verifier(ks.store if store_url.startswith("memory:") else store_url, now=clock,
                        keyspace_refresh=5, cache_ttl=60)
    async with client(app_with(verifier)) as c:
        assert (await get(c, key)).status_code == 200
        # Written straight to the store, as another process would: no in-process message.
        keyspace = ks.store.get("keyspace", api.keyspace_id)
        assert keyspace is not None
        ks.store.replace("keyspace", {**keyspace, "deleted_at": clock()})
        assert (await get(c, key)).status_code == 200  # not yet reloaded: the documented delay
        clock.advance(5_000)
        assert (await get(c, key)).status_code == 401


async def test_if_the_token_differs_by_a_byte_then_the_remembered_answer_does_not_apply(
    ks: Keystile,
) -> None:
    api = ks.create_api("shop", prefix="sk_shop")
    key = ks.create_key(api.id).key
    async with client(app_with(ks)) as c:
        assert (await get(c, key)).status_code == 200
        for near in (key[:-1], key + "x", key.upper(), key + "_"):
            assert (await get(c, near)).status_code == 401, near


async def test_if_a_route_asks_more_than_the_remembered_request_then_it_is_decided_afresh(
    ks: Keystile,
) -> None:
    api = ks.create_api("shop", prefix="sk_shop")
    key = ks.create_key(api.id, permissions=["read"]).key

    @require_key(verifier=ks, permissions="write")
    async def write(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    @require_key(verifier=ks, permissions="read")
    async def read(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    app = Starlette(routes=[Route("/read", read), Route("/write", write)])
    async with client(app) as c:
        for _ in range(3):
            headers = {"authorization": f"Bearer {key}"}
            assert (await c.get("/read", headers=headers)).status_code == 200
            response = await c.get("/write", headers=headers)
            assert response.status_code == 403
            assert response.json()["code"] == "INSUFFICIENT_PERMISSIONS"


def test_if_the_entry_was_evicted_before_the_answer_is_remembered_then_none_is_kept(
    ks: Keystile, clock: Clock
) -> None:
    api = ks.create_api("shop", prefix="sk_shop")
    created = ks.create_key(api.id)
    cache = RecordCache(clock=clock)
    record = ks.store.load_record(ks.store.get("key", created.key_id)["hash"])  # type: ignore[index]
    entry = cache.put(digest(created.key), record, clock())
    valid = ks.verify(created.key)
    request = VerifyRequest()
    cache.evict(ks.store.get("key", created.key_id)["hash"])  # type: ignore[index]
    cache.remember(raw(created.key), digest(created.key), entry, request, valid, lambda: clock() + 60_000)
    assert cache.answers == {}
    entry = cache.put(digest(created.key), record, clock())
    cache.remember(raw(created.key), digest(created.key), entry, request, valid, lambda: 0)  # the map changed
    assert cache.answers == {}
    cache.remember(raw(created.key), digest(created.key), entry, request, valid, lambda: clock() + 60_000)
    assert cache.answers[raw(created.key)] == (entry.deadline, request, valid)


def test_if_answers_fill_the_cache_size_then_they_start_over_bounded(clock: Clock) -> None:
    ks = Keystile("memory://", now=clock, cache_size=4)
    api = ks.create_api("shop", prefix="sk_shop")
    keys = [ks.create_key(api.id).key for _ in range(10)]
    for key in keys:
        assert ks.verify(key).valid
        assert len(ks.verifier.cache.answers) <= 4


@pytest.mark.parametrize("networks", [["10.0.0.0/8"]])
async def test_if_the_keyspace_has_an_ip_whitelist_then_no_answer_is_remembered(
    ks: Keystile, networks: list[str]
) -> None:
    api = ks.create_api("shop", prefix="sk_shop", ip_whitelist=networks)
    key = ks.create_key(api.id).key
    async with client(app_with(ks)) as c:
        assert (await get(c, key)).status_code == 403
    assert ks.verify(key, ip="10.1.2.3").valid
    assert ks.verifier.cache.answers == {}


def test_if_the_keyspace_map_reloads_then_no_key_stays_remembered_from_before(clock: Clock) -> None:
    ks = Keystile("memory://", now=clock, keyspace_refresh=30, cache_ttl=60)
    api = ks.create_api("shop", prefix="sk_shop")
    first, second = ks.create_key(api.id).key, ks.create_key(api.id).key
    assert ks.verify(first).valid
    assert set(ks.verifier.cache.answers) == {raw(first)}
    clock.advance(30_000)
    assert ks.verify(second).valid  # reloads the map first
    assert set(ks.verifier.cache.answers) == {raw(second)}


def test_if_a_key_is_evicted_then_its_answer_goes_with_it_and_others_stay(ks: Keystile) -> None:
    api = ks.create_api("shop", prefix="sk_shop")
    gone, kept = ks.create_key(api.id), ks.create_key(api.id)
    assert ks.verify(gone.key).valid and ks.verify(kept.key).valid
    ks.update_key(gone.key_id, name="renamed")
    assert set(ks.verifier.cache.answers) == {raw(kept.key)}
    assert ks.verify(gone.key).name == "renamed"


async def test_if_a_root_key_of_keystile_serve_is_sent_to_an_app_then_it_is_401(ks: Keystile) -> None:
    from keystile.server.rootkeys import RootKeys

    api = ks.create_api("shop", prefix="sk_shop")
    user_key = ks.create_key(api.id).key
    root = RootKeys(ks).create(["api.*.verify_key"]).key
    async with client(app_with(ks)) as c:
        assert (await get(c, user_key)).status_code == 200
        assert (await get(c, root)).status_code == 401
    assert ks.verify(root).code.value == "NOT_FOUND"
    assert ks.verify(root, api_id=RootKeys(ks).api_id()).valid  # asked for by its API: the server's way


# -- routes that spend: the checks are remembered, the spending is settled every time --


def spending_key(ks: Keystile, **options: Any) -> tuple[str, str]:
    api = ks.create_api("shop", prefix="sk_shop", **options)
    created = ks.create_key(api.id, permissions=["read"], credits=5,
                            ratelimits=[RatelimitConfig("requests", 100, 60_000, True)])
    return created.key, created.key_id


async def test_if_a_route_spends_then_its_repeats_skip_the_checks_and_only_settle(
    counting_store: Any, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    ks = Keystile(counting_store, now=clock)
    key, key_id = spending_key(ks)
    async with client(app_with(ks, permissions="read")) as c:
        first = await get(c, key)
        assert first.status_code == 200 and first.headers["ratelimit"] == '"requests";r=99;t=60'
        remembered = ks.verifier.cache.answers[raw(key)][2]
        assert not isinstance(remembered, VerifyResult)  # the entry and plan, not a result to repeat
        checks: list[str] = []
        monkeypatch.setattr(_verify, "decide_static", lambda *a: checks.append("static"))
        monkeypatch.setattr(_verify, "make_plan", lambda *a: checks.append("plan"))
        counting_store.calls.clear()
        for remaining in (3, 2, 1, 0):
            response = await get(c, key)
            assert response.status_code == 200
            assert response.headers["ratelimit"] == f'"requests";r={95 + remaining};t=60'
            assert ks.verifier.cache.answers[raw(key)][2] is remembered
        assert checks == []
        assert counting_store.calls["settle"] == 4  # (memory and SQLite settle in transact)
        assert set(counting_store.calls) <= {"settle", "transact"}
        response = await get(c, key)
        assert response.status_code == 429 and response.json()["code"] == "USAGE_EXCEEDED"
        ks.update_credits(key_id, "set", 1)
        assert (await get(c, key)).status_code == 200


async def test_if_a_spending_key_is_disabled_then_its_next_request_is_rejected_and_spends_nothing(
    ks: Keystile,
) -> None:
    key, key_id = spending_key(ks)
    async with client(app_with(ks, permissions="read")) as c:
        for _ in range(2):
            assert (await get(c, key)).status_code == 200
        assert not isinstance(ks.verifier.cache.answers[raw(key)][2], VerifyResult)
        ks.update_key(key_id, enabled=False)
        assert raw(key) not in ks.verifier.cache.answers
        response = await get(c, key)
        assert response.status_code == 403 and response.json()["code"] == "DISABLED"
    assert ks.get_key(key_id).credits.remaining == 3  # type: ignore[union-attr]


async def test_if_a_spending_key_loses_the_permission_then_its_next_request_is_403(ks: Keystile) -> None:
    key, key_id = spending_key(ks)
    async with client(app_with(ks, permissions="read")) as c:
        assert (await get(c, key)).status_code == 200
        ks.remove_permissions(key_id, ["read"])
        response = await get(c, key)
        assert response.status_code == 403 and response.json()["code"] == "INSUFFICIENT_PERMISSIONS"
    assert ks.get_key(key_id).credits.remaining == 4  # type: ignore[union-attr]


async def test_if_a_spending_key_expires_then_its_remembered_checks_end_with_it(
    ks: Keystile, clock: Clock
) -> None:
    api = ks.create_api("shop", prefix="sk_shop")
    created = ks.create_key(api.id, credits=5, expires=clock() + 5_000)
    async with client(app_with(ks)) as c:
        assert (await get(c, created.key)).status_code == 200
        clock.advance(4_000)
        assert (await get(c, created.key)).status_code == 200
        assert not isinstance(ks.verifier.cache.answers[raw(created.key)][2], VerifyResult)
        clock.advance(1_001)
        response = await get(c, created.key)
        assert response.status_code == 401 and response.json()["code"] == "EXPIRED"
    assert ks.get_key(created.key_id).credits.remaining == 3  # type: ignore[union-attr]


async def test_if_a_spending_key_is_verified_once_off_or_ip_bound_then_nothing_is_remembered(
    ks: Keystile,
) -> None:
    key, _ = spending_key(ks)
    assert ks.verify(key, permissions="read").valid  # a verify() call's request is its own
    assert ks.verifier.cache.answers == {}
    bound = ks.create_api("bound", prefix="sk_bound", ip_whitelist=["127.0.0.0/8"])
    other = ks.create_key(bound.id, credits=5).key
    async with client(app_with(ks)) as c:
        for _ in range(2):
            assert (await get(c, other)).status_code == 200
    assert ks.verifier.cache.answers == {}


async def test_if_a_leased_key_is_remembered_then_it_spends_from_its_lease_and_every_verify_is_counted(
    ks: Keystile,
) -> None:
    leased = ks.create_api("leased", prefix="sk_lease", lease=10)
    created = ks.create_key(leased.id, credits=25)
    async with client(app_with(ks)) as c:
        statuses = [(await get(c, created.key)).status_code for _ in range(30)]
        assert not isinstance(ks.verifier.cache.answers[raw(created.key)][2], VerifyResult)
    assert statuses == [200] * 25 + [429] * 5
    ks.verifier.release_leases()
    assert ks.get_key(created.key_id).credits.remaining == 0  # type: ignore[union-attr]
    ks.verifier.events.flush()  # type: ignore[union-attr]
    counted = ks.verifier.metrics.snapshot().verifications
    assert {code: n for code, n in counted.items() if n} == {"VALID": 25, "USAGE_EXCEEDED": 5}


def test_if_a_verifier_that_remembers_spending_answers_is_dropped_then_it_is_freed_at_once() -> None:
    import gc
    import weakref

    ks = Keystile("memory://")
    created = ks.create_key(ks.create_api("shop", prefix="sk_shop").id, credits=5)
    route = lasting(VerifyRequest())
    for _ in range(2):
        assert ks.verifier.verify_request(created.key, route).valid
    assert not isinstance(ks.verifier.cache.answers[raw(created.key)][2], VerifyResult)
    ref = weakref.ref(ks.verifier)
    ks.close()
    gc.disable()  # freed by reference counting: no cycle through the remembered answer
    try:
        del ks
        assert ref() is None
    finally:
        gc.enable()
