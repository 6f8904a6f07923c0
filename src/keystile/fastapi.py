"""The FastAPI way in: a dependency that returns the typed result, with OpenAPI.

>>> from fastapi import Depends, FastAPI                          # doctest: +SKIP
>>> from keystile.fastapi import KeyAuth, install               # doctest: +SKIP
>>> app = FastAPI()                                              # doctest: +SKIP
>>> install(app)     # problem+json answers, and 401/403/429 in the OpenAPI document  # doctest: +SKIP
>>> @app.get("/docs/{id}")                                       # doctest: +SKIP
... async def read(id: str, key: VerifyResult = Depends(KeyAuth(permissions="docs.read"))): ...

``KeyAuth`` declares an HTTP Bearer security scheme, so ``/docs`` shows the lock. It
works alone or behind :class:`KeyAuthMiddleware` (then it reuses the middleware's
result and verifies no second time). Needs ``pip install fastapi``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

try:
    from fastapi import FastAPI, Request
    from fastapi.openapi.models import APIKey as APIKeyModel
    from fastapi.openapi.models import HTTPBearer as HTTPBearerModel
    from fastapi.security.base import SecurityBase
except ImportError as exc:  # pragma: no cover - depends on what is installed
    raise ImportError("keystile.fastapi needs FastAPI: pip install fastapi") from exc
from starlette.exceptions import HTTPException
from starlette.responses import Response

from ._guard import RouteGuard, problem_response
from ._manage import Keystile
from ._models import VerifyResult
from ._problem import Problem
from ._verify import Verifier
from .stores import Store

__all__ = [
    "HEADER_SCHEME_NAME",
    "PROBLEM_RESPONSES",
    "SCHEME_NAME",
    "KeyAuth",
    "KeyAuthError",
    "install",
]

#: The names of the security schemes in the OpenAPI document (Bearer, or a header).
SCHEME_NAME = "HTTPBearer"
HEADER_SCHEME_NAME = "APIKeyHeader"

_PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "Problem",
    "description": "RFC 9457 problem details",
    "required": ["type", "title", "status", "detail", "code"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "code": {"type": "string", "examples": ["NOT_FOUND", "RATE_LIMITED"]},
    },
}


def _problem_doc(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/problem+json": {"schema": _PROBLEM_SCHEMA}}}


#: The answers a key check can give, for ``responses=`` of a route or a router.
PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: _problem_doc("No key, or a key that is unknown, malformed or expired"),
    403: _problem_doc("A key that is disabled, used from an address it may not, or "
                      "lacks the permissions"),
    429: _problem_doc("Rate limited or out of credits (see Retry-After)"),
    503: _problem_doc("Keys cannot be verified right now"),
}


class KeyAuthError(HTTPException):
    """Raised by :class:`KeyAuth` for a rejected key; :func:`install` answers it as
    problem+json (without it, FastAPI answers ``{"detail": ...}`` with the same
    status and headers)."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.status, problem.detail, dict(problem.headers))
        self.problem = problem


class KeyAuth(SecurityBase):
    """``Depends(KeyAuth(...))`` or ``Security(KeyAuth(...))``: the verified key.

    The arguments are those of :func:`require_key`; a malformed permission query
    fails when the app is defined. Being a FastAPI security scheme itself (HTTP
    Bearer), it shows the lock in ``/docs`` without a second dependency to resolve.
    """

    def __init__(
        self,
        *,
        permissions: str | None = None,
        cost: int | None = None,
        ratelimits: Sequence[str | Mapping[str, Any]] = (),
        api_id: str | None = None,
        store: Store | str | None = None,
        verifier: Verifier | Keystile | None = None,
        header: str = "authorization",
        fail_policy: str = "closed",
        stale_max_age: float = 300.0,
    ) -> None:
        self.guard = RouteGuard(permissions=permissions, cost=cost, ratelimits=ratelimits,
                                api_id=api_id, store=store, verifier=verifier, header=header,
                       fail_policy=fail_policy, stale_max_age=stale_max_age)
        if header.lower() == "authorization":
            self.model = HTTPBearerModel(description="An API key: `Authorization: Bearer <key>`")
            self.scheme_name = SCHEME_NAME
        else:  # the bare key in a header of its own
            self.model = APIKeyModel.model_validate(
                {"in": "header", "name": header, "description": f"An API key in `{header}`"})
            self.scheme_name = HEADER_SCHEME_NAME

    async def __call__(self, request: Request) -> VerifyResult:
        outcome = await self.guard.check_async(request.scope)
        if isinstance(outcome, Problem):
            raise KeyAuthError(outcome)
        return outcome


async def _answer(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, KeyAuthError)  # registered for KeyAuthError only
    return problem_response(exc.problem)


def install(app: FastAPI) -> None:
    """Answer rejected keys with problem+json, and document those answers.

    Every operation that uses :class:`KeyAuth` gets the 401/403/429/503 problem
    responses in the OpenAPI document.
    """
    app.add_exception_handler(KeyAuthError, _answer)
    generate: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            for operation in _operations(schema):
                if any(SCHEME_NAME in requirement or HEADER_SCHEME_NAME in requirement
                       for requirement in operation.get("security", ())):
                    for status, doc in PROBLEM_RESPONSES.items():
                        operation.setdefault("responses", {}).setdefault(str(status), doc)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _operations(schema: dict[str, Any]) -> list[dict[str, Any]]:
    return [operation for item in schema.get("paths", {}).values()
            for operation in item.values() if isinstance(operation, dict)]
