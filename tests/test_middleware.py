"""KeyAuthMiddleware through real Starlette and FastAPI apps on a real SQLite store."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi import Request as FastAPIRequest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from keystile import (
    ConfigurationError,
    Credits,
    KeyAuthMiddleware,
    Keystile,
    PermissionQueryError,
    RatelimitConfig,
    Refill,
)
from tests.conftest import Clock


async def whoami(request: Request) -> JSONResponse:
    result = request.scope["keystile"]
    return JSONResponse({
        "keyId": None if result is None else result.key_id,
        "scopes": request.auth.scopes,
        "authenticated": request.user.is_authenticated,
        "user": request.user.display_name,
    })


def starlette_app(**options: Any) -> Starlette:
    app = Starlette(routes=[Route("/", whoami), Route("/health", whoami)])
    app.add_middleware(KeyAuthMiddleware, **options)
    return app


@pytest.fixture
def sqlite_ks(sqlite_url: str, clock: Clock) -> Keystile:
    return Keystile(sqlite_url, now=clock)


@pytest.fixture
def api_id(sqlite_ks: Keystile) -> str:
    return sqlite_ks.create_api("shop", prefix="sk_shop").id


def client(app: Any, ip: str = "127.0.0.1") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(ip, 50000))
    return httpx.AsyncClient(transport=transport, base_url="http://test")


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def problem(response: httpx.Response) -> dict[str, Any]:
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == response.status_code
    assert set(body) >= {"type", "title", "status", "detail", "code"}
    return body


async def test_if_key_valid_then_result_auth_and_user_are_on_the_request(
    sqlite_ks: Keystile, api_id: str
) -> None:
    key = sqlite_ks.create_key(api_id, name="alice", permissions=["orders.read"]).key
    async with client(starlette_app(verifier=sqlite_ks)) as c:
        response = await c.get("/", headers=bearer(key))
    assert response.status_code == 200
    assert response.json()["scopes"] == ["orders.read"]
    assert response.json()["authenticated"] is True
    assert response.json()["user"] == "alice"


async def test_if_added_with_a_store_url_then_keys_of_that_sqlite_file_verify(
    sqlite_url: str,
) -> None:
    with Keystile(sqlite_url) as ks:
        key = ks.create_key(ks.create_api("a", prefix="sk_a").id).key
    async with client(starlette_app(store=sqlite_url)) as c:
        assert (await c.get("/", headers=bearer(key))).status_code == 200
        other = key[:-1] + ("2" if key[-1] != "2" else "3")
        assert (await c.get("/", headers=bearer(other))).status_code == 401


async def test_if_key_missing_then_401_with_bearer_challenge_without_error(
    sqlite_ks: Keystile, api_id: str
) -> None:
    async with client(starlette_app(verifier=sqlite_ks)) as c:
        response = await c.get("/")
    assert response.status_code == 401
    assert problem(response)["code"] == "MISSING_KEY"
    assert response.headers["www-authenticate"] == 'Bearer realm="api"'


@pytest.mark.parametrize(("setup", "status", "code"), [
    ({"expires": 1}, 401, "EXPIRED"),
    ({"enabled": False}, 403, "DISABLED"),
    ({"permissions": ["other"]}, 403, "INSUFFICIENT_PERMISSIONS"),
])
async def test_if_key_rejected_then_status_follows_the_code(
    sqlite_ks: Keystile, api_id: str, setup: dict[str, Any], status: int, code: str
) -> None:
    key = sqlite_ks.create_key(api_id, **setup).key
    app = starlette_app(verifier=sqlite_ks, permissions="orders.read" if "permissions" in setup else None)
    async with client(app) as c:
        response = await c.get("/", headers=bearer(key))
    assert response.status_code == status
    assert problem(response)["code"] == code
    if status == 401:
        assert response.headers["www-authenticate"] == 'Bearer realm="api", error="invalid_token"'
    else:
        assert "www-authenticate" not in response.headers


async def test_if_key_unknown_then_401_invalid_token(sqlite_ks: Keystile, api_id: str) -> None:
    async with client(starlette_app(verifier=sqlite_ks)) as c:
        response = await c.get("/", headers=bearer("sk_shop_" + "2" * 22))
    assert response.status_code == 401
    assert problem(response)["code"] == "NOT_FOUND"
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


async def test_if_client_ip_outside_whitelist_then_403_forbidden(sqlite_ks: Keystile) -> None:
    api = sqlite_ks.create_api("office", prefix="sk_off", ip_whitelist=["10.0.0.0/8"])
    key = sqlite_ks.create_key(api.id).key
    app = starlette_app(verifier=sqlite_ks)
    async with client(app, ip="192.168.1.5") as c:
        outside = await c.get("/", headers=bearer(key))
    async with client(app, ip="10.1.2.3") as c:
        inside = await c.get("/", headers=bearer(key))
    assert outside.status_code == 403
    assert problem(outside)["code"] == "FORBIDDEN"
    assert inside.status_code == 200


async def test_if_rate_limited_then_429_with_retry_after_and_ratelimit_headers(
    sqlite_ks: Keystile, api_id: str, clock: Clock
) -> None:
    key = sqlite_ks.create_key(api_id, ratelimits=[RatelimitConfig("requests", 2, 10_000, True)]).key
    async with client(starlette_app(verifier=sqlite_ks)) as c:
        first = await c.get("/", headers=bearer(key))
        await c.get("/", headers=bearer(key))
        third = await c.get("/", headers=bearer(key))
    assert first.status_code == 200
    assert first.headers["ratelimit-policy"] == '"requests";q=2;w=10'
    assert first.headers["ratelimit"] == '"requests";r=1;t=10'
    assert third.status_code == 429
    assert problem(third)["code"] == "RATE_LIMITED"
    assert third.headers["retry-after"] == "10"  # the clock sits at the start of a window


async def test_if_ratelimit_headers_turned_off_then_none_are_sent(
    sqlite_ks: Keystile, api_id: str
) -> None:
    key = sqlite_ks.create_key(api_id, ratelimits=[RatelimitConfig("requests", 2, 10_000, True)]).key
    async with client(starlette_app(verifier=sqlite_ks, ratelimit_headers=False)) as c:
        response = await c.get("/", headers=bearer(key))
    assert response.status_code == 200
    assert "ratelimit" not in response.headers


async def test_if_credits_used_up_then_429_with_retry_after_until_the_refill(
    sqlite_ks: Keystile, api_id: str, clock: Clock
) -> None:
    key = sqlite_ks.create_key(api_id, credits=Credits(1, Refill("daily", 5))).key
    async with client(starlette_app(verifier=sqlite_ks)) as c:
        assert (await c.get("/", headers=bearer(key))).status_code == 200
        response = await c.get("/", headers=bearer(key))
    assert response.status_code == 429
    assert problem(response)["code"] == "USAGE_EXCEEDED"
    assert response.headers["retry-after"] == str(12 * 3600)  # T0 is 12:00 UTC


async def test_if_credits_used_up_without_refill_then_429_says_they_do_not_refill(
    sqlite_ks: Keystile, api_id: str
) -> None:
    key = sqlite_ks.create_key(api_id, credits=0).key
    async with client(starlette_app(verifier=sqlite_ks)) as c:
        response = await c.get("/", headers=bearer(key))
    assert response.status_code == 429
    assert "do not refill" in problem(response)["detail"]


@pytest.mark.parametrize("headers", [
    [(b"authorization", b"")],
    [(b"authorization", b"Bearer")],
    [(b"authorization", b"Bearer a b")],
    [(b"authorization", b"Basic dXNlcjpwYXNz")],
    [(b"authorization", b"Bearer sk_shop_x, Basic y")],
    [(b"authorization", "Bearer sk_shop_ünïcode".encode())],
    [(b"authorization", b"Bearer " + b"A" * 65536)],
    [(b"authorization", b"Bearer sk_shop_" + b"1" * 22), (b"authorization", b"Bearer x")],
    [(b"authorization", b"Bearer sk_shop_\x00\x01\x02")],
])
async def test_if_authorization_header_is_bad_then_401_problem_never_500(
    sqlite_ks: Keystile, api_id: str, headers: list[tuple[bytes, bytes]]
) -> None:
    messages = await call_asgi(starlette_app(verifier=sqlite_ks), headers)
    start = messages[0]
    assert start["status"] == 401
    assert dict(start["headers"])[b"content-type"] == b"application/problem+json"
    body = json.loads(messages[1]["body"])
    assert body["code"] in ("MALFORMED_KEY", "NOT_FOUND", "MISSING_KEY")
    assert b"A" * 100 not in messages[1]["body"]


async def test_if_bearer_token_is_oversized_then_no_store_read_happens(
    sqlite_ks: Keystile, api_id: str
) -> None:
    async with client(starlette_app(verifier=sqlite_ks)) as c:
        response = await c.get("/", headers=bearer("sk_shop_" + "1" * 3000))
    assert response.status_code == 401
    assert sqlite_ks.verifier.cache.misses == 0


async def call_asgi(app: Any, headers: list[tuple[bytes, bytes]], path: str = "/") -> list[Any]:
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
             "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
             "root_path": "", "headers": headers, "client": ("127.0.0.1", 1234),
             "server": ("test", 80)}
    messages: list[Any] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        messages.append(message)

    await app(scope, receive, send)
    return messages


async def test_if_path_excluded_then_no_key_is_needed(sqlite_ks: Keystile, api_id: str) -> None:
    async with client(starlette_app(verifier=sqlite_ks, exclude_paths=["/health"])) as c:
        assert (await c.get("/health")).status_code == 200
        assert (await c.get("/")).status_code == 401


async def test_if_anonymous_allowed_then_missing_key_passes_but_bad_key_does_not(
    sqlite_ks: Keystile, api_id: str
) -> None:
    async with client(starlette_app(verifier=sqlite_ks, allow_anonymous=True)) as c:
        anonymous = await c.get("/")
        bad = await c.get("/", headers=bearer("sk_shop_" + "3" * 22))
    assert anonymous.status_code == 200
    assert anonymous.json() == {"keyId": None, "scopes": [], "authenticated": False, "user": ""}
    assert bad.status_code == 401


async def test_if_custom_header_configured_then_the_bare_key_is_read_from_it(
    sqlite_ks: Keystile, api_id: str
) -> None:
    key = sqlite_ks.create_key(api_id).key
    async with client(starlette_app(verifier=sqlite_ks, header="X-API-Key")) as c:
        assert (await c.get("/", headers={"x-api-key": key})).status_code == 200
        assert (await c.get("/", headers=bearer(key))).status_code == 401


async def test_if_route_names_a_ratelimit_the_key_lacks_then_403_problem(
    sqlite_ks: Keystile, api_id: str
) -> None:
    key = sqlite_ks.create_key(api_id).key
    async with client(starlette_app(verifier=sqlite_ks, ratelimits=["burst"])) as c:
        response = await c.get("/", headers=bearer(key))
    assert response.status_code == 403
    assert problem(response)["code"] == "RATELIMIT_NOT_CONFIGURED"


async def test_if_api_required_then_a_key_of_another_api_is_401(
    sqlite_ks: Keystile, api_id: str
) -> None:
    other = sqlite_ks.create_api("other", prefix="sk_other")
    key = sqlite_ks.create_key(other.id).key
    async with client(starlette_app(verifier=sqlite_ks, api_id=api_id)) as c:
        response = await c.get("/", headers=bearer(key))
    assert response.status_code == 401
    assert problem(response)["code"] == "NOT_FOUND"


async def test_if_store_cannot_answer_then_503_problem_with_retry_after(
    sqlite_url: str, clock: Clock
) -> None:
    ks = Keystile(sqlite_url, now=clock)
    key = ks.create_key(ks.create_api("a", prefix="sk_a").id, credits=5).key
    app = starlette_app(verifier=ks)
    async with client(app) as c:
        assert (await c.get("/", headers=bearer(key))).status_code == 200
        ks.store.close()
        response = await c.get("/", headers=bearer(key))
    assert response.status_code == 503
    assert problem(response)["code"] == "STORE_UNAVAILABLE"
    assert response.headers["retry-after"] == "1"


def test_if_middleware_permission_query_is_malformed_then_it_fails_at_construction() -> None:
    with pytest.raises(PermissionQueryError, match="position 8"):
        KeyAuthMiddleware(PlainTextResponse("x"), store="memory://", permissions="read AND")


def test_if_both_verifier_and_store_given_then_configuration_error() -> None:
    with pytest.raises(ConfigurationError):
        KeyAuthMiddleware(PlainTextResponse("x"), store="memory://", verifier=Keystile("memory://"))


async def test_if_lifespan_scope_then_it_passes_through_to_the_app(sqlite_ks: Keystile) -> None:
    events: list[str] = []

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        events.append("startup")
        yield
        events.append("shutdown")

    app = Starlette(routes=[Route("/", whoami)], lifespan=lifespan)
    app.add_middleware(KeyAuthMiddleware, verifier=sqlite_ks)
    inbox = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return inbox.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)
    assert events == ["startup", "shutdown"]
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


async def echo(websocket: WebSocket) -> None:
    await websocket.accept()
    result = websocket.scope.get("keystile")
    await websocket.send_text(result.key_id if result else "anonymous")
    await websocket.close()


async def call_websocket(
    app: Any, headers: list[tuple[bytes, bytes]], path: str = "/ws", query: bytes = b""
) -> list[dict[str, Any]]:
    inbox = [{"type": "websocket.connect"}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return inbox.pop(0) if inbox else {"type": "websocket.disconnect", "code": 1000}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "websocket", "asgi": {"version": "3.0"}, "path": path,
             "raw_path": path.encode(), "query_string": query, "headers": headers,
             "root_path": "", "scheme": "ws", "subprotocols": [], "client": ("127.0.0.1", 1),
             "server": ("t", 80)}
    await app(scope, receive, send)
    return sent


def websocket_app(**options: Any) -> Starlette:
    app = Starlette(routes=[WebSocketRoute("/ws", echo), WebSocketRoute("/public/ws", echo)])
    app.add_middleware(KeyAuthMiddleware, **options)
    return app


async def test_if_websocket_handshake_has_no_key_then_it_is_closed_with_1008(
    sqlite_ks: Keystile,
) -> None:
    sent = await call_websocket(websocket_app(verifier=sqlite_ks), [])
    assert sent == [{"type": "websocket.close", "code": 1008, "reason": sent[0]["reason"]}]
    assert sent[0]["reason"].startswith("MISSING_KEY")
    assert len(sent[0]["reason"].encode()) <= 123


@pytest.mark.parametrize("value", [b"Bearer sk_shop_" + b"5" * 22, b"Basic dXNlcjpwYXNz",
                                   b"Bearer sk_shop_" + b"6" * 4000])
async def test_if_websocket_handshake_has_a_bad_key_then_1008_with_a_reason_without_the_key(
    sqlite_ks: Keystile, api_id: str, value: bytes
) -> None:
    sent = await call_websocket(websocket_app(verifier=sqlite_ks), [(b"authorization", value)])
    assert [m["type"] for m in sent] == ["websocket.close"]
    assert sent[0]["code"] == 1008
    assert sent[0]["reason"].split(":")[0] in ("NOT_FOUND", "MALFORMED_KEY")
    assert value.split()[-1].decode() not in sent[0]["reason"]
    assert len(sent[0]["reason"].encode()) <= 123


async def test_if_websocket_key_lacks_a_permission_then_1008_says_so(
    sqlite_ks: Keystile, api_id: str
) -> None:
    key = sqlite_ks.create_key(api_id, permissions=["other"]).key
    app = websocket_app(verifier=sqlite_ks, permissions="chat.join")
    sent = await call_websocket(app, [(b"authorization", f"Bearer {key}".encode())])
    assert sent[0]["code"] == 1008
    assert sent[0]["reason"].startswith("INSUFFICIENT_PERMISSIONS")


async def test_if_websocket_handshake_has_a_valid_key_then_it_is_accepted_with_the_result(
    sqlite_ks: Keystile, api_id: str
) -> None:
    created = sqlite_ks.create_key(
        api_id, ratelimits=[RatelimitConfig("requests", 5, 10_000, True)])
    app = websocket_app(verifier=sqlite_ks)
    sent = await call_websocket(app, [(b"authorization", f"Bearer {created.key}".encode())])
    assert sent[0]["type"] == "websocket.accept"
    assert (b"ratelimit", b'"requests";r=4;t=10') in sent[0]["headers"]
    assert sent[1]["text"] == created.key_id


async def test_if_websocket_path_excluded_then_it_is_accepted_anonymously(
    sqlite_ks: Keystile,
) -> None:
    sent = await call_websocket(websocket_app(verifier=sqlite_ks, exclude_paths=["/public"]), [],
                                path="/public/ws")
    assert sent[0]["type"] == "websocket.accept"
    assert sent[1]["text"] == "anonymous"


async def test_if_fastapi_app_then_the_middleware_works_the_same(
    sqlite_ks: Keystile, api_id: str
) -> None:
    app = FastAPI()
    app.add_middleware(KeyAuthMiddleware, verifier=sqlite_ks)

    @app.get("/items")
    async def items(request: FastAPIRequest) -> dict[str, Any]:
        return {"keyId": request.scope["keystile"].key_id, "scopes": request.auth.scopes}

    created = sqlite_ks.create_key(api_id, permissions=["items.read"])
    async with client(app) as c:
        ok = await c.get("/items", headers=bearer(created.key))
        missing = await c.get("/items")
    assert ok.json() == {"keyId": created.key_id, "scopes": ["items.read"]}
    assert missing.status_code == 401
    assert problem(missing)["code"] == "MISSING_KEY"


async def test_if_requests_are_logged_at_debug_then_no_plaintext_key_appears(
    sqlite_ks: Keystile, api_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    valid = sqlite_ks.create_key(api_id).key
    disabled = sqlite_ks.create_key(api_id, enabled=False).key
    caplog.set_level(logging.DEBUG)
    async with client(starlette_app(verifier=sqlite_ks)) as c:
        for key in (valid, disabled, "sk_shop_" + "4" * 22):
            response = await c.get("/", headers=bearer(key))
            assert key not in response.text
    sqlite_ks.store.close()
    async with client(starlette_app(verifier=sqlite_ks)) as c:
        await c.get("/", headers=bearer(valid))
    assert caplog.records  # something was logged, and none of it has a key
    for key in (valid, disabled):
        assert key not in caplog.text


def test_if_created_key_or_user_is_printed_then_the_plaintext_is_not_shown(
    sqlite_ks: Keystile, api_id: str
) -> None:
    created = sqlite_ks.create_key(api_id)
    assert created.key not in repr(created)
    assert created.key not in repr(sqlite_ks.verify(created.key))


@pytest.mark.parametrize("options", [
    {"cost": -1},
    {"ratelimits": [{"name": "burst", "cost": -2}]},
    {"ratelimits": [{"name": "adhoc", "limit": 5, "duration": 0}]},
    {"ratelimits": [42]},
])
def test_if_middleware_options_are_out_of_range_then_it_fails_at_construction(
    options: dict[str, Any],
) -> None:
    from keystile import ValidationError

    with pytest.raises(ValidationError):
        KeyAuthMiddleware(PlainTextResponse("x"), store="memory://", **options)


# -- the client address behind trusted proxies ---------------------------------------------


@pytest.fixture
def office_key(sqlite_ks: Keystile) -> str:
    api = sqlite_ks.create_api("office", prefix="sk_off", ip_whitelist=["10.0.0.0/8"])
    return sqlite_ks.create_key(api.id).key


async def test_if_an_untrusted_peer_sends_a_whitelisted_x_forwarded_for_then_403(
    sqlite_ks: Keystile, office_key: str
) -> None:
    spoofed = {**bearer(office_key), "x-forwarded-for": "10.1.2.3"}
    for options in ({}, {"trusted_proxies": ["172.16.0.0/12"]}):
        async with client(starlette_app(verifier=sqlite_ks, **options), ip="192.168.1.5") as c:
            response = await c.get("/", headers=spoofed)
        assert response.status_code == 403
        assert problem(response)["code"] == "FORBIDDEN"


async def test_if_a_trusted_proxy_forwards_a_whitelisted_client_then_it_passes(
    sqlite_ks: Keystile, office_key: str
) -> None:
    app = starlette_app(verifier=sqlite_ks, trusted_proxies=["172.16.0.0/12"])
    async with client(app, ip="172.16.0.1") as c:
        inside = await c.get("/", headers={**bearer(office_key), "x-forwarded-for": "10.1.2.3"})
        outside = await c.get("/", headers={**bearer(office_key), "x-forwarded-for": "192.168.1.5"})
    assert inside.status_code == 200
    assert outside.status_code == 403


async def test_if_a_client_prepends_a_whitelisted_address_behind_a_trusted_proxy_then_403(
    sqlite_ks: Keystile, office_key: str
) -> None:
    # The client sent "10.1.2.3"; the proxy appended the address it really came from.
    app = starlette_app(verifier=sqlite_ks, trusted_proxies=["172.16.0.0/12"])
    async with client(app, ip="172.16.0.1") as c:
        response = await c.get("/", headers={**bearer(office_key),
                                             "x-forwarded-for": "10.1.2.3, 192.168.1.5"})
    assert response.status_code == 403


async def test_if_two_trusted_proxies_forward_then_the_rightmost_untrusted_address_is_the_client(
    sqlite_ks: Keystile, office_key: str
) -> None:
    app = starlette_app(verifier=sqlite_ks, trusted_proxies=["172.16.0.0/12", "127.0.0.1"])
    async with client(app, ip="127.0.0.1") as c:
        response = await c.get("/", headers={**bearer(office_key),
                                             "x-forwarded-for": "192.168.1.5, 10.1.2.3, 172.16.0.9"})
    assert response.status_code == 200


async def test_if_the_proxy_uses_rfc_7239_forwarded_then_only_that_header_is_read(
    sqlite_ks: Keystile, office_key: str
) -> None:
    app = starlette_app(verifier=sqlite_ks, trusted_proxies=["172.16.0.0/12"],
                        forwarded_header="forwarded")
    async with client(app, ip="172.16.0.1") as c:
        inside = await c.get("/", headers={**bearer(office_key),
                                           "forwarded": 'for="10.1.2.3:4711";proto=https'})
        ignored = await c.get("/", headers={**bearer(office_key), "x-forwarded-for": "10.1.2.3"})
    assert inside.status_code == 200
    assert ignored.status_code == 403  # the proxy's own address is not whitelisted


@pytest.mark.parametrize("forwarded", ["unknown", "not an address", "_hidden", ",,,", "10.1.2.3:x:y"])
async def test_if_a_trusted_proxy_forwards_garbage_then_the_whitelist_refuses_without_500(
    sqlite_ks: Keystile, office_key: str, api_id: str, forwarded: str
) -> None:
    open_key = sqlite_ks.create_key(api_id).key
    app = starlette_app(verifier=sqlite_ks, trusted_proxies=["172.16.0.0/12"])
    async with client(app, ip="172.16.0.1") as c:
        office = await c.get("/", headers={**bearer(office_key), "x-forwarded-for": forwarded})
        unrestricted = await c.get("/", headers={**bearer(open_key), "x-forwarded-for": forwarded})
    assert office.status_code == 403
    assert unrestricted.status_code == 200


# -- keys in the query string --------------------------------------------------------------


def recording_access_log(app: Any, seen: list[bytes]) -> Any:
    """What a server's access log sees: the scope's query string after the response."""
    async def logged(scope: Any, receive: Any, send: Any) -> None:
        await app(scope, receive, send)
        if scope["type"] == "http":
            seen.append(scope["query_string"])

    return logged


async def query_echo(request: Request) -> JSONResponse:
    return JSONResponse({"query": str(request.url.query), "keyId": request.scope["keystile"].key_id})


async def test_if_query_keys_are_enabled_then_the_key_is_read_and_hidden_from_app_and_logs(
    sqlite_ks: Keystile, api_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    created = sqlite_ks.create_key(api_id)
    caplog.set_level(logging.DEBUG)
    app = Starlette(routes=[Route("/", query_echo)])
    app.add_middleware(KeyAuthMiddleware, verifier=sqlite_ks, query_param="api_key")
    seen: list[bytes] = []
    async with client(recording_access_log(app, seen)) as c:
        response = await c.get(f"/?page=2&api_key={created.key}&sort=name")
        await c.get(f"/?api_key={created.key[:-1]}")  # rejected: must not be logged either
    assert response.status_code == 200
    assert response.json() == {"query": "page=2&sort=name", "keyId": created.key_id}
    assert seen == [b"page=2&sort=name", b""]
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("keystile")]
    assert ours  # the rejection was logged (the test client's own log of its URL is not ours)
    assert not [message for message in ours if created.key[:-1] in message]


async def test_if_query_keys_are_not_enabled_then_a_key_in_the_query_is_ignored(
    sqlite_ks: Keystile, api_id: str
) -> None:
    key = sqlite_ks.create_key(api_id).key
    async with client(starlette_app(verifier=sqlite_ks)) as c:
        response = await c.get(f"/?api_key={key}")
    assert response.status_code == 401
    assert problem(response)["code"] == "MISSING_KEY"


async def test_if_the_key_is_in_both_header_and_query_then_401_ambiguous(
    sqlite_ks: Keystile, api_id: str
) -> None:
    key = sqlite_ks.create_key(api_id).key
    async with client(starlette_app(verifier=sqlite_ks, query_param="api_key")) as c:
        response = await c.get(f"/?api_key={key}", headers=bearer(key))
    assert response.status_code == 401
    body = problem(response)
    assert body["code"] == "MALFORMED_KEY"
    assert "both" in body["detail"]
    assert key not in response.text


@pytest.mark.parametrize("query", ["api_key=a&api_key=b", "api_key=a%20b", "api_key=%C3%A9",
                                   "api_key=" + "A" * 5000, "api_key=a,b"])
async def test_if_the_query_key_is_malformed_then_401_problem_never_500(
    sqlite_ks: Keystile, api_id: str, query: str
) -> None:
    async with client(starlette_app(verifier=sqlite_ks, query_param="api_key")) as c:
        response = await c.get(f"/?{query}")
    assert response.status_code == 401
    assert problem(response)["code"] == "MALFORMED_KEY"
    assert "A" * 100 not in response.text


async def test_if_query_keys_are_enabled_then_a_websocket_may_send_its_key_there(
    sqlite_ks: Keystile, api_id: str
) -> None:
    created = sqlite_ks.create_key(api_id)
    app = websocket_app(verifier=sqlite_ks, query_param="api_key")
    sent = await call_websocket(app, [], query=f"api_key={created.key}".encode())
    assert sent[0]["type"] == "websocket.accept"
    assert sent[1]["text"] == created.key_id


# -- a callable extractor ------------------------------------------------------------------


def token_extractor(headers: Any) -> str | None:
    value: str | None = headers.get("x-token")
    if value is None:
        return None
    scheme, _, key = value.partition(" ")
    if scheme != "Token":
        raise ValueError(f"bad scheme in {value}")  # the message holds the key: never shown
    return key


async def test_if_an_extractor_is_configured_then_it_finds_the_key(
    sqlite_ks: Keystile, api_id: str
) -> None:
    key = sqlite_ks.create_key(api_id).key
    async with client(starlette_app(verifier=sqlite_ks, extractor=token_extractor)) as c:
        found = await c.get("/", headers={"x-token": f"Token {key}"})
        missing = await c.get("/", headers=bearer(key))
        rejected = await c.get("/", headers={"x-token": f"Bearer {key}"})
        two = await c.get("/", headers={"x-token": f"Token {key} {key}"})
    assert found.status_code == 200
    assert problem(missing)["code"] == "MISSING_KEY"
    assert problem(rejected)["code"] == "MALFORMED_KEY"
    assert key not in rejected.text
    assert problem(two)["code"] == "MALFORMED_KEY"


# -- the credits header --------------------------------------------------------------------


async def test_if_a_credits_header_is_configured_then_successes_carry_the_remaining_credits(
    sqlite_ks: Keystile, api_id: str
) -> None:
    metered = sqlite_ks.create_key(api_id, credits=3).key
    unlimited = sqlite_ks.create_key(api_id).key
    app = starlette_app(verifier=sqlite_ks, credits_header="X-Credits-Remaining")
    async with client(app) as c:
        first = await c.get("/", headers=bearer(metered))
        second = await c.get("/", headers=bearer(metered))
        free = await c.get("/", headers=bearer(unlimited))
    assert (first.headers["x-credits-remaining"], second.headers["x-credits-remaining"]) == ("2", "1")
    assert "x-credits-remaining" not in free.headers


async def test_if_no_credits_header_is_configured_then_none_is_sent(
    sqlite_ks: Keystile, api_id: str
) -> None:
    key = sqlite_ks.create_key(api_id, credits=3).key
    async with client(starlette_app(verifier=sqlite_ks)) as c:
        response = await c.get("/", headers=bearer(key))
    assert response.status_code == 200
    assert not [name for name in response.headers if "credit" in name]


async def test_if_ratelimit_headers_are_off_and_credits_on_then_only_credits_are_sent(
    sqlite_ks: Keystile, api_id: str
) -> None:
    key = sqlite_ks.create_key(api_id, credits=3,
                               ratelimits=[RatelimitConfig("requests", 2, 10_000, True)]).key
    app = starlette_app(verifier=sqlite_ks, ratelimit_headers=False, credits_header="x-credits")
    async with client(app) as c:
        response = await c.get("/", headers=bearer(key))
    assert response.headers["x-credits"] == "2"
    assert "ratelimit" not in response.headers


# -- the new options fail at construction --------------------------------------------------


@pytest.mark.parametrize(("options", "message"), [
    ({"trusted_proxies": ["10.0.0.0/33"]}, "not an address or CIDR"),
    ({"trusted_proxies": ["proxy.internal"]}, "not an address or CIDR"),
    ({"trusted_proxies": "10.0.0.0/8"}, "a list of CIDRs"),
    ({"forwarded_header": "x-real-ip", "trusted_proxies": ["10.0.0.0/8"]}, "forwarded_header must"),
    ({"forwarded_header": "forwarded"}, "list them too"),
    ({"query_param": ""}, "query_param must"),
    ({"query_param": "api key"}, "query_param must"),
    ({"extractor": "x-api-key"}, "extractor must be a callable"),
    ({"extractor": token_extractor, "header": "x-api-key"}, "not both"),
    ({"credits_header": "X Credits"}, "credits_header must"),
    ({"credits_header": ""}, "credits_header must"),
])
def test_if_a_new_option_is_bad_then_configuration_error_at_construction(
    options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        KeyAuthMiddleware(PlainTextResponse("x"), store="memory://", **options)


@pytest.mark.parametrize(("path", "excluded"), [
    ("/docs", True), ("/docs/", True), ("/docs/page", True),
    ("/docs-api", False), ("/docsx/page", False), ("/", False),
])
async def test_if_a_path_is_excluded_then_only_it_and_what_is_below_it_need_no_key(
    sqlite_ks: Keystile, path: str, excluded: bool
) -> None:
    app = Starlette(routes=[Route("/{rest:path}", whoami)])
    app.add_middleware(KeyAuthMiddleware, verifier=sqlite_ks, exclude_paths=["/docs"])
    async with client(app) as c:
        status = (await c.get(path)).status_code
    assert status == (200 if excluded else 401)


async def test_if_the_app_raises_a_keystile_error_behind_a_key_of_any_shape_then_it_is_the_apps(
    ks: Keystile,
) -> None:
    from keystile import StoreUnavailableError

    async def boom(request: Request) -> JSONResponse:
        raise StoreUnavailableError("the app's own store call failed")

    for prefix in ("sk_shop", "1shop"):  # a plain key, and one only the thorough path reads
        created = ks.create_key(ks.create_api(prefix, prefix=prefix).id, credits=5)
        app = Starlette(routes=[Route("/", boom)])
        app.add_middleware(KeyAuthMiddleware, verifier=ks)
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=True)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            for _ in range(2):  # the second time from the remembered answer
                with pytest.raises(StoreUnavailableError):  # not the middleware's 503
                    await c.get("/", headers={"authorization": f"Bearer {created.key}"})
