"""@require_key on Starlette endpoints, with and without the middleware, on real SQLite."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.endpoints import HTTPEndpoint
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from keystile import (
    Code,
    ConfigurationError,
    KeyAuthMiddleware,
    Keystile,
    PermissionQueryError,
    RatelimitConfig,
    require_key,
)
from tests.conftest import Clock


@pytest.fixture
def ks(sqlite_url: str, clock: Clock) -> Keystile:
    return Keystile(sqlite_url, now=clock)


@pytest.fixture
def api_id(ks: Keystile) -> str:
    return ks.create_api("docs", prefix="sk_docs").id


def app_for(ks: Keystile, *, middleware: bool) -> Starlette:
    @require_key(permissions="docs.write", verifier=ks)
    async def write(request: Request) -> JSONResponse:
        return JSONResponse({"keyId": request.scope["keystile"].key_id,
                             "user": request.user.display_name})

    @require_key(cost=5, verifier=ks)
    def expensive(request: Request) -> JSONResponse:  # a sync endpoint, run in a thread
        return JSONResponse({"credits": request.scope["keystile"].credits})

    class Limited(HTTPEndpoint):
        @require_key(ratelimits=["burst"], verifier=ks)
        async def get(self, request: Request) -> JSONResponse:
            return JSONResponse({"ok": True})

    async def open_route(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    app = Starlette(routes=[Route("/write", write), Route("/expensive", expensive),
                            Route("/limited", Limited), Route("/open", open_route)])
    if middleware:
        app.add_middleware(KeyAuthMiddleware, verifier=ks, exclude_paths=["/open"])
    return app


async def call(app: Starlette, path: str, key: str | None) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        return await client.get(path, headers=headers)


def code(response: httpx.Response) -> str:
    assert response.headers["content-type"] == "application/problem+json"
    value: str = response.json()["code"]
    return value


@pytest.mark.parametrize("middleware", [False, True])
async def test_if_the_key_has_the_routes_permission_then_the_route_runs(
    ks: Keystile, api_id: str, middleware: bool
) -> None:
    created = ks.create_key(api_id, name="writer", permissions=["docs.write"])
    response = await call(app_for(ks, middleware=middleware), "/write", created.key)
    assert response.json() == {"keyId": created.key_id, "user": "writer"}


@pytest.mark.parametrize("middleware", [False, True])
async def test_if_the_key_lacks_the_routes_permission_then_403(
    ks: Keystile, api_id: str, middleware: bool
) -> None:
    key = ks.create_key(api_id, permissions=["docs.read"]).key
    response = await call(app_for(ks, middleware=middleware), "/write", key)
    assert response.status_code == 403
    assert code(response) == "INSUFFICIENT_PERMISSIONS"


@pytest.mark.parametrize("middleware", [False, True])
async def test_if_no_key_is_sent_then_401(ks: Keystile, api_id: str, middleware: bool) -> None:
    response = await call(app_for(ks, middleware=middleware), "/write", None)
    assert response.status_code == 401
    assert code(response) == "MISSING_KEY"


async def test_if_the_middleware_verified_then_the_route_costs_only_its_own_credits(
    ks: Keystile, api_id: str
) -> None:
    created = ks.create_key(api_id, credits=100)
    response = await call(app_for(ks, middleware=True), "/expensive", created.key)
    assert response.json() == {"credits": 94}  # 1 by the middleware, 5 by the route
    assert ks.get_key(created.key_id).credits.remaining == 94  # type: ignore[union-attr]


async def test_if_the_route_verifies_alone_then_its_cost_is_spent_once(
    ks: Keystile, api_id: str
) -> None:
    created = ks.create_key(api_id, credits=7)
    app = app_for(ks, middleware=False)
    first = await call(app, "/expensive", created.key)
    second = await call(app, "/expensive", created.key)
    assert first.json() == {"credits": 2}
    assert second.status_code == 429
    assert code(second) == "USAGE_EXCEEDED"


async def test_if_the_middleware_applied_auto_limits_then_the_route_does_not_apply_them_again(
    ks: Keystile, api_id: str
) -> None:
    key = ks.create_key(api_id, credits=100, ratelimits=[
        RatelimitConfig("requests", 2, 60_000, auto_apply=True)]).key
    app = app_for(ks, middleware=True)
    statuses = [(await call(app, "/expensive", key)).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]  # the third is the middleware's: 2 per minute


async def test_if_a_named_limit_is_on_the_route_then_it_is_taken_there(
    ks: Keystile, api_id: str
) -> None:
    key = ks.create_key(api_id, ratelimits=[RatelimitConfig("burst", 1, 60_000)]).key
    app = app_for(ks, middleware=True)
    assert (await call(app, "/limited", key)).status_code == 200
    limited = await call(app, "/limited", key)
    assert limited.status_code == 429
    assert code(limited) == Code.RATE_LIMITED.value
    assert (await call(app, "/write", key)).status_code == 403  # other routes: not limited


def test_if_a_decorator_has_a_bad_permission_query_then_it_fails_at_import() -> None:
    with pytest.raises(PermissionQueryError, match="position"):
        require_key(permissions="docs.read AND (")


def test_if_a_class_is_decorated_then_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="methods"):
        require_key()(HTTPEndpoint)


def test_if_decorated_then_no_store_is_opened_until_a_request(tmp_path: Any, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("KEYSTILE_STORE", raising=False)

    @require_key(permissions="x")
    async def endpoint(request: Request) -> JSONResponse:
        return JSONResponse({})

    assert not (tmp_path / "keystile.db").exists()


async def test_if_the_route_names_no_store_then_it_charges_through_the_middlewares_verifier(
    ks: Keystile, api_id: str, tmp_path: Any, monkeypatch: Any
) -> None:
    monkeypatch.chdir(tmp_path)  # a default store here would be empty: the keys are not in it
    monkeypatch.delenv("KEYSTILE_STORE", raising=False)

    @require_key(cost=3)
    async def charged(request: Request) -> JSONResponse:
        return JSONResponse({"credits": request.scope["keystile"].credits})

    app = Starlette(routes=[Route("/charged", charged)])
    app.add_middleware(KeyAuthMiddleware, verifier=ks)
    created = ks.create_key(api_id, credits=10)
    assert (await call(app, "/charged", created.key)).json() == {"credits": 6}
    assert not (tmp_path / "keystile.db").exists()


async def test_if_a_fastapi_path_operation_is_decorated_then_it_is_guarded(
    ks: Keystile, api_id: str
) -> None:
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/items/{item}")
    @require_key(permissions="items.read", cost=2, verifier=ks)
    async def item(item: str, q: int = 0) -> dict[str, Any]:
        return {"item": item, "q": q}

    @app.get("/sync")
    @require_key(verifier=ks)
    def sync_item() -> dict[str, bool]:
        return {"ok": True}

    reader = ks.create_key(api_id, permissions=["items.read"], credits=3).key
    other = ks.create_key(api_id).key
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        ok = await c.get("/items/a?q=7", headers={"authorization": f"Bearer {reader}"})
        denied = await c.get("/items/a", headers={"authorization": f"Bearer {other}"})
        spent = await c.get("/items/a", headers={"authorization": f"Bearer {reader}"})
        sync_ok = await c.get("/sync", headers={"authorization": f"Bearer {other}"})
        missing = await c.get("/sync")
    assert ok.json() == {"item": "a", "q": 7}
    assert (denied.status_code, code(denied)) == (403, "INSUFFICIENT_PERMISSIONS")
    assert (spent.status_code, code(spent)) == (429, "USAGE_EXCEEDED")
    assert sync_ok.json() == {"ok": True}
    assert missing.status_code == 401
    params = app.openapi()["paths"]["/items/{item}"]["get"]["parameters"]
    assert [p["name"] for p in params] == ["item", "q"]  # the injected Request is not one


def test_if_a_flask_view_is_decorated_then_it_is_guarded_with_or_without_the_middleware(
    ks: Keystile, api_id: str
) -> None:
    from flask import Flask
    from flask import request as flask_request

    from keystile import KeyAuthWSGIMiddleware

    def build(middleware: bool) -> Flask:
        app = Flask("decorated")

        @app.get("/write")
        @require_key(permissions="docs.write", cost=2, verifier=None if middleware else ks)
        def write() -> dict[str, Any]:
            return {"credits": flask_request.environ["keystile"].credits}

        if middleware:
            app.wsgi_app = KeyAuthWSGIMiddleware(app.wsgi_app, verifier=ks)  # type: ignore[method-assign]
        return app

    writer = ks.create_key(api_id, permissions=["docs.write"], credits=10).key
    reader = ks.create_key(api_id, permissions=["docs.read"]).key
    for middleware, left in ((False, 8), (True, 5)):  # behind the middleware: 1 + 2
        client = build(middleware).test_client()
        ok = client.get("/write", headers={"Authorization": f"Bearer {writer}"})
        assert ok.get_json() == {"credits": left}
        denied = client.get("/write", headers={"Authorization": f"Bearer {reader}"})
        assert denied.status_code == 403
        assert denied.headers["Content-Type"] == "application/problem+json"
        assert denied.get_json()["code"] == "INSUFFICIENT_PERMISSIONS"
        assert client.get("/write").status_code == 401


async def test_if_the_decorator_example_runs_on_sqlite_then_each_route_asks_its_own(
    ks: Keystile, api_id: str
) -> None:
    from keystile_examples.starlette_decorator_app import build_app

    app = build_app(ks)
    reader = ks.create_key(api_id, permissions=["docs.read"], credits=30).key
    renderer = ks.create_key(api_id, permissions=["docs.read", "docs.render"], credits=15).key
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        assert (await c.get("/status")).json() == {"ok": True}
        docs = await c.get("/docs", headers={"authorization": f"Bearer {reader}"})
        refused = await c.post("/render", headers={"authorization": f"Bearer {reader}"})
        rendered = await c.post("/render", headers={"authorization": f"Bearer {renderer}"})
        spent = await c.post("/render", headers={"authorization": f"Bearer {renderer}"})
    assert docs.json()["creditsLeft"] == 29
    assert (refused.status_code, code(refused)) == (403, "INSUFFICIENT_PERMISSIONS")
    assert rendered.json() == {"rendered": True, "creditsLeft": 5}
    assert (spent.status_code, code(spent)) == (429, "USAGE_EXCEEDED")


def test_if_a_decorator_names_an_unknown_store_scheme_then_it_fails_at_import() -> None:
    with pytest.raises(ConfigurationError, match="unknown store scheme"):
        require_key(store="postgres://localhost/keys")


async def test_if_the_routes_store_cannot_be_opened_then_503_problem_not_500(
    tmp_path: Any, api_id: str, ks: Keystile
) -> None:
    @require_key(store=f"sqlite:///{tmp_path}/missing-dir/keys.db")
    async def endpoint(request: Request) -> JSONResponse:
        return JSONResponse({})

    response = await call(Starlette(routes=[Route("/", endpoint)]), "/", ks.create_key(api_id).key)
    assert response.status_code == 503
    assert code(response) == "STORE_UNAVAILABLE"
