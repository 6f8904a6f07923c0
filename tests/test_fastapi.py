"""keystile.fastapi: the KeyAuth dependency and its OpenAPI document, on real SQLite."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI, Security

from keystile import KeyAuthMiddleware, Keystile, PermissionQueryError, VerifyResult
from keystile.fastapi import KeyAuth, install
from tests.conftest import Clock


@pytest.fixture
def ks(sqlite_url: str, clock: Clock) -> Keystile:
    return Keystile(sqlite_url, now=clock)


@pytest.fixture
def api_id(ks: Keystile) -> str:
    return ks.create_api("items", prefix="sk_item").id


def build(ks: Keystile, *, problems: bool = True, middleware: bool = False) -> FastAPI:
    app = FastAPI()
    if problems:
        install(app)
    if middleware:
        app.add_middleware(KeyAuthMiddleware, verifier=ks, exclude_paths=["/docs", "/openapi.json"])
    reader = KeyAuth(permissions="items.read", verifier=ks)

    @app.get("/items")
    async def items(key: VerifyResult = Depends(reader)) -> dict[str, Any]:
        return {"keyId": key.key_id, "credits": key.credits}

    @app.post("/items")
    def create(key: VerifyResult = Security(KeyAuth(permissions="items.write", cost=10,
                                                    verifier=ks))) -> dict[str, Any]:
        return {"credits": key.credits}

    @app.get("/public")
    async def public() -> dict[str, bool]:
        return {"ok": True}

    return app


async def call(app: FastAPI, method: str, path: str, key: str | None = None) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        return await c.request(method, path, headers=headers)


async def test_if_the_key_has_the_permission_then_the_route_gets_the_typed_result(
    ks: Keystile, api_id: str
) -> None:
    created = ks.create_key(api_id, permissions=["items.read"], credits=3)
    response = await call(build(ks), "GET", "/items", created.key)
    assert response.json() == {"keyId": created.key_id, "credits": 2}


@pytest.mark.parametrize("middleware", [False, True])
async def test_if_the_key_lacks_the_permission_then_403_problem(
    ks: Keystile, api_id: str, middleware: bool
) -> None:
    key = ks.create_key(api_id, permissions=["items.read"]).key
    response = await call(build(ks, middleware=middleware), "POST", "/items", key)
    assert response.status_code == 403
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "INSUFFICIENT_PERMISSIONS"


async def test_if_no_key_then_401_problem_with_the_bearer_challenge(ks: Keystile, api_id: str) -> None:
    response = await call(build(ks), "GET", "/items")
    assert response.status_code == 401
    assert response.json()["code"] == "MISSING_KEY"
    assert response.headers["www-authenticate"] == 'Bearer realm="api"'


async def test_if_not_installed_then_fastapi_answers_detail_with_the_same_status_and_headers(
    ks: Keystile, api_id: str
) -> None:
    response = await call(build(ks, problems=False), "GET", "/items")
    assert response.status_code == 401
    assert response.json() == {"detail": "This route needs an API key: send "
                                         "'Authorization: Bearer <key>'."}
    assert response.headers["www-authenticate"] == 'Bearer realm="api"'


async def test_if_the_middleware_verified_then_the_dependency_spends_only_the_routes_cost(
    ks: Keystile, api_id: str
) -> None:
    created = ks.create_key(api_id, permissions=["items.read", "items.write"], credits=100)
    app = build(ks, middleware=True)
    assert (await call(app, "GET", "/items", created.key)).json()["credits"] == 99
    assert (await call(app, "POST", "/items", created.key)).json() == {"credits": 88}


async def test_if_credits_run_out_then_429_problem(ks: Keystile, api_id: str) -> None:
    key = ks.create_key(api_id, permissions=["items.write"], credits=15).key
    app = build(ks)
    assert (await call(app, "POST", "/items", key)).status_code == 200
    response = await call(app, "POST", "/items", key)
    assert response.status_code == 429
    assert response.json()["code"] == "USAGE_EXCEEDED"


def test_if_the_openapi_document_is_generated_then_it_shows_the_lock_and_the_problems(
    ks: Keystile,
) -> None:
    schema = build(ks).openapi()
    assert schema["components"]["securitySchemes"]["HTTPBearer"] == {
        "type": "http", "scheme": "bearer",
        "description": "An API key: `Authorization: Bearer <key>`"}
    operation = schema["paths"]["/items"]["get"]
    assert operation["security"] == [{"HTTPBearer": []}]
    for status in ("401", "403", "429", "503"):
        content = operation["responses"][status]["content"]
        assert set(content) == {"application/problem+json"}
        assert content["application/problem+json"]["schema"]["required"] == [
            "type", "title", "status", "detail", "code"]
    public = schema["paths"]["/public"]["get"]
    assert "security" not in public
    assert "401" not in public["responses"]


def test_if_the_dependency_has_a_bad_query_then_it_fails_when_the_app_is_defined() -> None:
    with pytest.raises(PermissionQueryError):
        KeyAuth(permissions="items.read OR")


async def test_if_the_key_is_in_a_header_of_its_own_then_openapi_says_so_and_it_is_read(
    ks: Keystile, api_id: str
) -> None:
    app = FastAPI()
    install(app)

    @app.get("/x")
    async def x(key: VerifyResult = Depends(KeyAuth(header="X-API-Key", verifier=ks))) -> str:
        return key.key_id or ""

    created = ks.create_key(api_id)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        assert (await c.get("/x", headers={"x-api-key": created.key})).json() == created.key_id
        assert (await c.get("/x", headers={"authorization": f"Bearer {created.key}"})).status_code == 401
    scheme = app.openapi()["components"]["securitySchemes"]["APIKeyHeader"]
    assert scheme == {"type": "apiKey", "in": "header", "name": "X-API-Key",
                      "description": "An API key in `X-API-Key`"}
    assert "401" in app.openapi()["paths"]["/x"]["get"]["responses"]


async def test_if_the_fastapi_example_runs_on_sqlite_then_routes_check_and_charge(
    ks: Keystile, api_id: str
) -> None:
    from keystile_examples.fastapi_app import build_app

    app = build_app(ks)
    reader = ks.create_key(api_id, permissions=["docs.read"], credits=20).key
    renderer = ks.create_key(api_id, permissions=["docs.read", "docs.render"], credits=20).key
    assert (await call(app, "GET", "/health")).json() == {"ok": True}
    assert (await call(app, "GET", "/docs-api/a", reader)).json()["creditsLeft"] == 19
    refused = await call(app, "POST", "/docs-api/a/render", reader)
    assert refused.status_code == 403
    assert refused.json()["code"] == "INSUFFICIENT_PERMISSIONS"
    rendered = await call(app, "POST", "/docs-api/a/render", renderer)
    assert rendered.json() == {"rendered": "a", "creditsLeft": 9}  # 1 + 10
    assert "401" in app.openapi()["paths"]["/docs-api/{name}"]["get"]["responses"]
