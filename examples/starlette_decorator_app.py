"""A Starlette app protected route by route with ``@require_key`` (no middleware).

    KEYSTILE_STORE=sqlite:///keys.db uvicorn keystile_examples.starlette_decorator_app:app

Each decorated endpoint verifies the key itself: ``/docs`` asks for ``docs.read``,
``/render`` for ``docs.read AND docs.render`` and 10 credits, ``/status`` is public.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.endpoints import HTTPEndpoint
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from keystile import Keystile, Verifier, VerifyResult, require_key


def build_app(store: str | Keystile | None = None) -> Starlette:
    verifier = store.verifier if isinstance(store, Keystile) else Verifier(store)

    @require_key(permissions="docs.read", verifier=verifier)
    async def docs(request: Request) -> JSONResponse:
        result: VerifyResult = request.scope["keystile"]
        return JSONResponse({"keyId": result.key_id, "creditsLeft": result.credits})

    class Render(HTTPEndpoint):
        @require_key(permissions="docs.read AND docs.render", cost=10, verifier=verifier)
        def post(self, request: Request) -> JSONResponse:  # sync: runs in a worker thread
            return JSONResponse({"rendered": True, "creditsLeft": request.user.result.credits})

    async def status(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    return Starlette(routes=[Route("/docs", docs), Route("/render", Render),
                             Route("/status", status)])


def __getattr__(name: str) -> Starlette:
    if name == "app":
        return build_app()
    raise AttributeError(name)
