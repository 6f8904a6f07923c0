"""A FastAPI app: the middleware for every route, and per-route permissions and costs.

    pip install fastapi
    KEYSTILE_STORE=sqlite:///keys.db uvicorn keystile_examples.fastapi_app:app

The middleware verifies each key once (spending 1 credit from keys that have
credits); ``KeyAuth`` on a route checks that route's permission query against that
result without a store read, and spends only the route's own extra cost.
``install(app)`` makes rejections problem+json and documents them in ``/docs``.
"""

from __future__ import annotations

from typing import Any

from fastapi import Depends, FastAPI

from keystile import KeyAuthMiddleware, Keystile, VerifyResult
from keystile.fastapi import KeyAuth, install


def build_app(store: str | Keystile | None = None) -> FastAPI:
    app = FastAPI(title="keystile example")
    install(app)
    source: dict[str, Any] = {"verifier": store} if isinstance(store, Keystile) else {"store": store}
    app.add_middleware(KeyAuthMiddleware, exclude_paths=["/health", "/docs", "/openapi.json"],
                       **source)

    @app.get("/health")
    async def health() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/docs-api/{name}")
    async def read(name: str, key: VerifyResult = Depends(KeyAuth(permissions="docs.read"))
                   ) -> dict[str, Any]:
        return {"name": name, "keyId": key.key_id, "creditsLeft": key.credits}

    @app.post("/docs-api/{name}/render")
    async def render(name: str, key: VerifyResult = Depends(
            KeyAuth(permissions="docs.read AND docs.render", cost=10))) -> dict[str, Any]:
        return {"rendered": name, "creditsLeft": key.credits}

    return app


def __getattr__(name: str) -> FastAPI:
    if name == "app":
        return build_app()
    raise AttributeError(name)
