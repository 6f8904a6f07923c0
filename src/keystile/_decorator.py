"""``@require_key``: what one route asks of a key, for Starlette, FastAPI and Flask.

>>> @require_key(permissions="docs.write", cost=5)          # doctest: +SKIP
... async def publish(request): ...

With or without :class:`KeyAuthMiddleware` in front (see :mod:`keystile._guard` for
how the two share the work), a rejection answers with the same problem+json, and
the endpoint sees the result in ``request.scope["keystile"]`` (and ``request.auth``
/ ``request.user``).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar, cast

from starlette.requests import HTTPConnection, Request

from ._errors import ConfigurationError
from ._gate import VERIFIER_SCOPE_KEY
from ._guard import RouteGuard, problem_response
from ._manage import Keystile
from ._problem import Problem
from ._verify import Verifier
from .stores import Store

__all__ = ["require_key"]

F = TypeVar("F", bound=Callable[..., Any])


def require_key(
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
) -> Callable[[F], F]:
    """Protect one endpoint: a Starlette endpoint (sync or async function, or an
    ``HTTPEndpoint`` method), a FastAPI path operation, or a Flask view.

    The arguments are checked here, when the module is imported: a malformed
    permission query fails at startup, not on the first request. ``store`` or
    ``verifier`` say where keys are when no middleware verified them (default: the
    middleware's verifier, else ``KEYSTILE_STORE``).
    """
    guard = RouteGuard(permissions=permissions, cost=cost, ratelimits=ratelimits, api_id=api_id,
                       store=store, verifier=verifier, header=header,
                       fail_policy=fail_policy, stale_max_age=stale_max_age)

    def decorate(endpoint: F) -> F:
        if inspect.isclass(endpoint):
            raise ConfigurationError("decorate the methods of an HTTPEndpoint, not the class")
        if inspect.iscoroutinefunction(endpoint):
            @functools.wraps(endpoint)
            async def async_endpoint(*args: Any, **kwargs: Any) -> Any:
                connection = _connection(args, kwargs)
                if connection is None:
                    raise ConfigurationError(_NO_REQUEST)
                outcome = await guard.check_async(connection.scope)
                if isinstance(outcome, Problem):
                    return problem_response(outcome)
                return await endpoint(*args, **kwargs)

            return _asking_for_request(async_endpoint, endpoint)

        @functools.wraps(endpoint)
        def sync_endpoint(*args: Any, **kwargs: Any) -> Any:
            # Starlette and FastAPI run sync endpoints in a worker thread, and Flask
            # views are sync: the blocking store path fits all three.
            connection = _connection(args, kwargs)
            if connection is None:
                return _flask_view(guard, endpoint, args, kwargs)
            outcome = guard.check(connection.scope)
            if isinstance(outcome, Problem):
                return problem_response(outcome)
            return endpoint(*args, **kwargs)

        return _asking_for_request(sync_endpoint, endpoint)

    return decorate


# FastAPI calls path operations with their declared parameters only: the wrapper
# declares one more, a Request under this name, and takes it out before the call.
_REQUEST_PARAM = "keystile_request"
_NO_REQUEST = "@require_key needs an endpoint that receives the Request"


def _asking_for_request(wrapper: Callable[..., Any], endpoint: F) -> F:
    signature = inspect.signature(endpoint)
    params = list(signature.parameters.values())
    if _REQUEST_PARAM not in signature.parameters:
        extra = inspect.Parameter(_REQUEST_PARAM, inspect.Parameter.KEYWORD_ONLY,
                                  annotation=Request)
        at = next((i for i, p in enumerate(params) if p.kind is p.VAR_KEYWORD), len(params))
        params.insert(at, extra)
    wrapper.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    return cast(F, wrapper)


def _connection(args: tuple[Any, ...], kwargs: dict[str, Any]) -> HTTPConnection | None:
    injected = kwargs.pop(_REQUEST_PARAM, None)
    if injected is not None:
        return injected  # type: ignore[no-any-return]
    if args and isinstance(args[-1], HTTPConnection):  # f(request) and method(self, request)
        return args[-1]
    for value in (*args, *kwargs.values()):
        if isinstance(value, HTTPConnection):
            return value
    return None


def _flask_view(guard: RouteGuard, view: Callable[..., Any], args: tuple[Any, ...],
                kwargs: dict[str, Any]) -> Any:
    """A view without a Request argument: Flask's, whose request is a context global."""
    try:
        from flask import Response as FlaskResponse
        from flask import has_request_context
        from flask import request as flask_request
    except ImportError:
        raise ConfigurationError(_NO_REQUEST) from None
    if not has_request_context():
        raise ConfigurationError(_NO_REQUEST)
    environ = flask_request.environ
    scope = _scope_of(environ)
    outcome = guard.check(scope)
    if isinstance(outcome, Problem):
        return FlaskResponse(outcome.body(), outcome.status, list(outcome.headers),
                             content_type="application/problem+json")
    environ["keystile"] = scope["keystile"]
    return view(*args, **kwargs)


def _scope_of(environ: dict[str, Any]) -> dict[str, Any]:
    """The parts of an ASGI scope a route guard reads, from a WSGI environ."""
    headers = [(name[5:].lower().replace("_", "-").encode("latin-1"), value.encode("latin-1"))
               for name, value in environ.items() if name.startswith("HTTP_")]
    return {"headers": headers, "client": (environ.get("REMOTE_ADDR"), 0),
            "keystile": environ.get("keystile"),
            VERIFIER_SCOPE_KEY: environ.get(VERIFIER_SCOPE_KEY)}
