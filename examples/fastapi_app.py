"""A FastAPI app protected by keystile's middleware.

    pip install fastapi
    KEYSTILE_STORE=sqlite:///keys.db uvicorn keystile_examples.fastapi_app:app
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request

from keystile import KeyAuthMiddleware, Keystile, VerifyResult


def build_app(store: str | Keystile | None = None) -> FastAPI:
    app = FastAPI(title="keystile example")
    if isinstance(store, Keystile):
        app.add_middleware(KeyAuthMiddleware, verifier=store, exclude_paths=["/health"])
    else:
        app.add_middleware(KeyAuthMiddleware, store=store, exclude_paths=["/health"])

    @app.get("/health")
    async def health() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/hello")
    async def hello(request: Request) -> dict[str, Any]:
        result: VerifyResult = request.scope["keystile"]
        return {"keyId": result.key_id, "permissions": list(result.permissions),
                "creditsLeft": result.credits}

    return app


def __getattr__(name: str) -> FastAPI:
    if name == "app":
        return build_app()
    raise AttributeError(name)
