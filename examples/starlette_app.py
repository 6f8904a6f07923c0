"""A Starlette app protected by keystile: the app ``keystile demo`` runs.

Every route but ``/health`` needs a key (the middleware spends one credit per
request from keys that have credits, and applies their auto-applied rate limits).
``/admin`` is a sub-application with its own middleware that also asks for the
``admin`` permission.

Run it yourself::

    KEYSTILE_STORE=sqlite:///keys.db uvicorn keystile_examples.starlette_app:app
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from keystile import KeyAuthMiddleware, Keystile, Verifier, VerifyResult


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


async def hello(request: Request) -> JSONResponse:
    result: VerifyResult = request.scope["keystile"]
    return JSONResponse({
        "hello": request.user.display_name,
        "keyId": result.key_id,
        "externalId": result.identity.external_id if result.identity else None,
        "permissions": request.auth.scopes,
        "creditsLeft": result.credits,
    })


async def admin(request: Request) -> JSONResponse:
    return JSONResponse({"admin": True, "keyId": request.scope["keystile"].key_id})


def build_app(store: str | Keystile | None = None) -> Starlette:
    """The example app on ``store`` (a URL, a Keystile, or ``KEYSTILE_STORE``)."""
    verifier = store.verifier if isinstance(store, Keystile) else Verifier(store)
    admin_app = Starlette(routes=[Route("/", admin)])
    admin_app.add_middleware(KeyAuthMiddleware, verifier=verifier, permissions="admin")
    app = Starlette(routes=[
        Route("/health", health),
        Route("/hello", hello),
        Mount("/admin", app=admin_app),
    ])
    app.add_middleware(KeyAuthMiddleware, verifier=verifier, exclude_paths=["/health", "/admin"])
    return app


def __getattr__(name: str) -> Starlette:
    # `uvicorn keystile_examples.starlette_app:app` builds the app on first access,
    # so importing this module opens no store.
    if name == "app":
        return build_app()
    raise AttributeError(name)
