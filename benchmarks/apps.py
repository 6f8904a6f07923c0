"""The trivial apps every case wraps, and the "ideal" middleware (the floor for any auth).

Every ASGI case serves the same route: ``GET /`` answering ``{"ok": true}`` as JSON,
written the idiomatic way of its framework (a ``JSONResponse`` in Starlette, a
returned dict in FastAPI).
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["IdealAuth", "fastapi_app", "ideal_dependency", "ok", "starlette_app"]


async def ok(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


def starlette_app(middleware: Sequence[Middleware] = (), endpoint: Any = ok) -> Starlette:
    """The Starlette baseline app, optionally behind ``middleware``."""
    return Starlette(routes=[Route("/", endpoint)], middleware=list(middleware))


def fastapi_app(dependencies: Sequence[Any] = (), middleware: Sequence[Middleware] = ()) -> Any:
    """The FastAPI baseline app (the same route), optionally with global dependencies."""
    from fastapi import FastAPI

    app = FastAPI(dependencies=list(dependencies), middleware=list(middleware),
                  openapi_url=None, docs_url=None, redoc_url=None)

    @app.get("/")
    async def root() -> dict[str, bool]:
        return {"ok": True}

    return app


_UNAUTHORIZED_START = {
    "type": "http.response.start", "status": 401,
    "headers": [(b"content-type", b"text/plain"), (b"content-length", b"12"),
                (b"www-authenticate", b"Bearer")],
}
_UNAUTHORIZED_BODY = {"type": "http.response.body", "body": b"unauthorized"}


class IdealAuth:
    """Pure ASGI: the ``authorization`` header must equal one constant, nothing else.

    No parsing, no hashing, no store: the least any auth middleware can do, so its
    cost is the floor the others are measured against.
    """

    def __init__(self, app: ASGIApp, *, expected: str) -> None:
        self.app = app
        self.expected = expected.encode("latin-1")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"authorization":
                if hmac.compare_digest(value, self.expected):
                    await self.app(scope, receive, send)
                    return
                break
        await send(_UNAUTHORIZED_START)
        await send(_UNAUTHORIZED_BODY)


def ideal_dependency(expected: str) -> Any:
    """The FastAPI dependency counterpart of :class:`IdealAuth`: the least a dependency
    can do (compare the header with a constant), so that FastAPI's own cost of
    resolving a dependency is visible apart from the auth it runs."""
    from fastapi import HTTPException

    token = expected.encode("latin-1")

    async def check(request: Request) -> None:
        for name, value in request.scope["headers"]:
            if name == b"authorization" and hmac.compare_digest(value, token):
                return
        raise HTTPException(401, "unauthorized", headers={"WWW-Authenticate": "Bearer"})

    return check
