"""The Starlette app: Unkey's v2 API (the subset in ``openapi.json``) on a keystile store.

>>> from keystile import Keystile
>>> app = build_app(Keystile("memory://"))
>>> sorted(route.path for route in app.routes)[:2]
['/openapi.json', '/v2/apis.createApi']

Every operation is ``POST /v2/<group>.<operation>`` with a JSON body. In order, a
request gets: 400 without a well-formed ``Authorization: Bearer`` header, 413 for a
body over ``max_body_bytes``, 400 for a body that is not JSON or does not match the
operation's schema (``errors[]`` names each field), 401 for an unknown root key, 403
for one without the permission, then the operation's own answer in the envelope
``{"meta": {"requestId"}, "data"}``.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .._errors import ConfigurationError
from .._ids import new_id
from .._manage import Keystile
from ..stores import Store
from . import _analytics, _apis, _identities, _keys, _ratelimit, _rbac
from ._errors import ApiError, api_error_from, error_response
from ._ops import Call, Operation, Page
from ._schema import validate
from .openapi import openapi_document
from .rootkeys import RootKeys, bearer_token

__all__ = ["OPERATIONS", "build_app"]

logger = logging.getLogger("keystile.server")

OPERATIONS: tuple[Operation, ...] = (
    *_apis.OPERATIONS, *_keys.OPERATIONS, *_rbac.OPERATIONS, *_identities.OPERATIONS,
    *_ratelimit.OPERATIONS, *_analytics.OPERATIONS,
)
MAX_BODY_BYTES = 1 << 20


def build_app(
    ks: Keystile | Store | str | None = None, *, max_body_bytes: int = MAX_BODY_BYTES,
    operations: Iterable[Operation] = OPERATIONS, metrics: bool = False,
) -> Starlette:
    """The server's ASGI app on ``ks`` (a Keystile, a store, or a store URL: then the
    app owns the Keystile it opens and closes it at shutdown).

    ``metrics``: also answer ``GET /metrics`` with the verifier's metrics in
    Prometheus' text format, without a root key (needs the ``prometheus`` extra).
    """
    metrics_endpoint = _prometheus_endpoint() if metrics else None
    owned = not isinstance(ks, Keystile)
    keystile = Keystile(ks) if not isinstance(ks, Keystile) else ks
    roots = RootKeys(keystile)
    roots.api_id()  # the reserved API exists before the first request
    ops = tuple(operations)
    server = _Server(keystile, roots, max_body_bytes)
    document = openapi_document(ops)

    async def openapi(request: Request) -> Response:
        return JSONResponse(document)

    async def liveness(request: Request) -> Response:
        return JSONResponse({"meta": {"requestId": new_id("req")}, "data": {"message": "OK"}})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        if owned:
            keystile.close()

    routes = [Route(op.path, server.endpoint(op), methods=["POST"], name=op.name) for op in ops]
    routes += [Route("/openapi.json", openapi, methods=["GET"]),
               Route("/v2/liveness", liveness, methods=["GET"])]
    if metrics_endpoint is not None:
        routes.append(Route("/metrics", metrics_endpoint(keystile), methods=["GET"]))
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={HTTPException: _http_error})
    app.state.keystile = keystile
    app.state.root_keys = roots
    return app


class _Server:
    def __init__(self, ks: Keystile, roots: RootKeys, max_body_bytes: int) -> None:
        self.ks = ks
        self.roots = roots
        self.max_body_bytes = max_body_bytes

    def endpoint(self, operation: Operation) -> Any:
        is_async = inspect.iscoroutinefunction(operation.handler)

        async def endpoint(request: Request) -> Response:
            request_id = new_id("req")
            try:
                data = await self._answer(operation, is_async, request)
            except Exception as exc:  # every failure becomes an Unkey error answer
                error = api_error_from(exc, kind=operation.kind)
                if error is None:
                    logger.error("keystile serve: %s failed unexpectedly (%s)", operation.name,
                                 request_id, exc_info=exc,
                                 extra={"operation": operation.name, "request_id": request_id,
                                        "error": type(exc).__name__})
                    error = ApiError(500, "unkey/application/unexpected_error",
                                     f"Something unexpected went wrong; quote {request_id}.")
                return error_response(error, request_id, request.headers.get("accept", ""))
            return JSONResponse(_envelope(request_id, data))

        endpoint.__name__ = operation.name.replace(".", "_")
        return endpoint

    async def _answer(self, operation: Operation, is_async: bool, request: Request) -> Any:
        token = bearer_token(request.headers.get("authorization"))  # its 400 comes first
        body, issues = validate(operation.request, await self._body(request), "body")
        if issues:
            raise ApiError(400, "unkey/application/invalid_input",
                           f"The request body is invalid: {_summary(issues)}", errors=issues)
        principal = await self.roots.principal(token)
        client = request.client
        call = Call(self.ks, self.roots, principal, client.host if client else None)
        if is_async:
            return await operation.handler(call, body)
        return await self.ks.verifier.astore.run(operation.handler, call, body)

    async def _body(self, request: Request) -> Any:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise _too_large(self.max_body_bytes)
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body_bytes:
                raise _too_large(self.max_body_bytes)
            chunks.append(chunk)
        try:
            return json.loads(b"".join(chunks), parse_constant=_no_constant)
        except (ValueError, RecursionError):
            raise ApiError(400, "user/bad_request/request_body_unreadable",
                           "The request body is not JSON: send a JSON object.") from None


def _prometheus_endpoint() -> Callable[[Keystile], Any]:
    try:
        from ..prometheus import endpoint
    except ImportError as exc:
        raise ConfigurationError("metrics need the prometheus extra: "
                                 "pip install 'keystile[prometheus]'") from exc
    return endpoint


def _envelope(request_id: str, data: Any) -> dict[str, Any]:
    meta = {"requestId": request_id}
    if isinstance(data, Page):
        pagination: dict[str, Any] = {"hasMore": data.cursor is not None}
        if data.cursor is not None:
            pagination["cursor"] = data.cursor
        return {"meta": meta, "data": data.items, "pagination": pagination}
    return {"meta": meta, "data": data}


def _summary(issues: Sequence[dict[str, str]]) -> str:
    shown = "; ".join(f"{issue['location']} {issue['message']}" for issue in issues[:3])
    return shown + (f" (and {len(issues) - 3} more)" if len(issues) > 3 else "")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _too_large(limit: int) -> ApiError:
    return ApiError(413, "user/bad_request/request_body_too_large",
                    f"The request body is larger than {limit} bytes.")


async def _http_error(request: Request, exc: Exception) -> Response:
    """Unknown paths and wrong methods, in Unkey's error shape too."""
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    headers = dict(exc.headers or {}) if isinstance(exc, HTTPException) else {}
    code = "unkey/application/route_not_found" if status == 404 else "unkey/application/invalid_method"
    detail = ("No such route: the operations are POST /v2/<group>.<operation>, listed in /openapi.json."
              if status == 404 else f"{request.method} is not allowed here; use POST.")
    return error_response(ApiError(status, code, detail, headers=headers), new_id("req"),
                          request.headers.get("accept", ""))
