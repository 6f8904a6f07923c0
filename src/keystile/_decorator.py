"""``@require_key``: what one route asks of a key, for Starlette endpoints.

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
from typing import Any, TypeVar

from starlette.requests import HTTPConnection

from ._errors import ConfigurationError
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
) -> Callable[[F], F]:
    """Protect one endpoint (sync or async function, or an ``HTTPEndpoint`` method).

    The arguments are checked here, when the module is imported: a malformed
    permission query fails at startup, not on the first request. ``store`` or
    ``verifier`` say where keys are when no middleware verified them (default: the
    middleware's verifier, else ``KEYSTILE_STORE``).
    """
    guard = RouteGuard(permissions=permissions, cost=cost, ratelimits=ratelimits, api_id=api_id,
                       store=store, verifier=verifier, header=header)

    def decorate(endpoint: F) -> F:
        if inspect.isclass(endpoint):
            raise ConfigurationError("decorate the methods of an HTTPEndpoint, not the class")
        if inspect.iscoroutinefunction(endpoint):
            @functools.wraps(endpoint)
            async def async_endpoint(*args: Any, **kwargs: Any) -> Any:
                connection = _connection(args, kwargs)
                outcome = await guard.check_async(connection.scope)
                if isinstance(outcome, Problem):
                    return problem_response(outcome)
                return await endpoint(*args, **kwargs)

            return async_endpoint  # type: ignore[return-value]

        @functools.wraps(endpoint)
        def sync_endpoint(*args: Any, **kwargs: Any) -> Any:
            # Starlette runs sync endpoints in a worker thread: the blocking store path fits.
            connection = _connection(args, kwargs)
            outcome = guard.check(connection.scope)
            if isinstance(outcome, Problem):
                return problem_response(outcome)
            return endpoint(*args, **kwargs)

        return sync_endpoint  # type: ignore[return-value]

    return decorate


def _connection(args: tuple[Any, ...], kwargs: dict[str, Any]) -> HTTPConnection:
    if args and isinstance(args[-1], HTTPConnection):  # f(request) and method(self, request)
        return args[-1]
    for value in (*args, *kwargs.values()):
        if isinstance(value, HTTPConnection):
            return value
    raise ConfigurationError("@require_key needs an endpoint that receives the Request")
