"""``@require_key``: what one route asks of a key, for Starlette endpoints.

>>> @require_key(permissions="docs.write", cost=5)          # doctest: +SKIP
... async def publish(request): ...

With :class:`KeyAuthMiddleware` installed the key was verified once already: the
route checks its permission query against that result without a store read, and
only a ``cost`` or ``ratelimits`` of its own costs one more store transaction (which
does not apply the key's auto-applied limits a second time). Without the middleware
the route verifies the key by itself. Either way a rejection answers with the
same problem+json, and the endpoint sees the result in ``request.scope["keystile"]``
(and ``request.auth`` / ``request.user``).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from typing import Any, TypeVar

from starlette.authentication import AuthCredentials
from starlette.requests import HTTPConnection
from starlette.responses import Response

from . import _problem
from ._errors import ConfigurationError, KeystileError
from ._gate import VERIFIER_SCOPE_KEY, Gate
from ._manage import Keystile
from ._middleware import KeyUser
from ._models import Code, VerifyRequest, VerifyResult
from ._permissions import parse_query
from ._problem import Problem
from ._verify import Step, Verifier
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
    guard = _Guard(permissions=permissions, cost=cost, ratelimits=ratelimits, api_id=api_id,
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
                    return _response(outcome)
                return await endpoint(*args, **kwargs)

            return async_endpoint  # type: ignore[return-value]

        @functools.wraps(endpoint)
        def sync_endpoint(*args: Any, **kwargs: Any) -> Any:
            # Starlette runs sync endpoints in a worker thread: the blocking store path fits.
            connection = _connection(args, kwargs)
            outcome = guard.check(connection.scope)
            if isinstance(outcome, Problem):
                return _response(outcome)
            return endpoint(*args, **kwargs)

        return sync_endpoint  # type: ignore[return-value]

    return decorate


class _Guard:
    """One route's requirements, and the decision for one request."""

    def __init__(self, *, permissions: str | None, cost: int | None,
                 ratelimits: Sequence[str | Mapping[str, Any]], api_id: str | None,
                 store: Store | str | None, verifier: Verifier | Keystile | None,
                 header: str) -> None:
        self.request = VerifyRequest(permissions=permissions, cost=cost,
                                     ratelimits=tuple(ratelimits), api_id=api_id)
        # After the middleware: only what the route adds, without auto-applied limits.
        self.extra = None if cost is None and not ratelimits else VerifyRequest(
            cost=cost or 0, ratelimits=tuple(ratelimits), auto_apply=False)
        self.query = parse_query(permissions) if permissions else None
        self._gate_options: dict[str, Any] = {"store": store, "verifier": verifier, "header": header}
        self._gate: Gate | None = None

    def gate(self, scope: Mapping[str, Any]) -> Gate:
        """Built on first use, so that importing a decorated module opens no store."""
        if self._gate is None:
            options = dict(self._gate_options)
            if options["store"] is None and options["verifier"] is None:
                options["verifier"] = scope.get(VERIFIER_SCOPE_KEY)
            self._gate = Gate(**{k: v for k, v in options.items() if v is not None})
        return self._gate

    def begin(self, scope: MutableMapping[str, Any]) -> Step | Problem:
        """The result, a problem, or the verification step still to run."""
        prior = scope.get("keystile")
        gate = self.gate(scope)
        if isinstance(prior, VerifyResult):
            problem = self._beyond(prior, gate)
            if problem is not None or self.extra is None:
                return problem or prior
        key = gate.read(scope.get("headers", ()))
        if not isinstance(key, str):
            return key or _problem.missing_key()
        client = scope.get("client")
        request = self.extra if isinstance(prior, VerifyResult) else self.request
        try:
            return gate.verifier.start(key, request, client[0] if client else None)  # type: ignore[arg-type]
        except KeystileError as exc:
            return gate.failure(exc)

    def _beyond(self, prior: VerifyResult, gate: Gate) -> Problem | None:
        """What this route asks beyond what the middleware checked, decided locally."""
        now = gate.verifier.now()
        if self.request.api_id is not None and prior.api_id != self.request.api_id:
            return _problem.problem_for_result(VerifyResult(valid=False, code=Code.NOT_FOUND), now)
        if self.query is not None and not self.query.allows(frozenset(prior.permissions)):
            denied = VerifyResult(valid=False, code=Code.INSUFFICIENT_PERMISSIONS)
            return _problem.problem_for_result(denied, now)
        return None

    def finish(self, scope: MutableMapping[str, Any], result: VerifyResult) -> VerifyResult | Problem:
        if not result.valid:
            return self.gate(scope).rejection(result)
        scope.update(keystile=result, auth=AuthCredentials(list(result.permissions)),
                     user=KeyUser(result))
        return result

    def check(self, scope: MutableMapping[str, Any]) -> VerifyResult | Problem:
        step = self.begin(scope)
        try:
            while not isinstance(step, (VerifyResult, Problem)):
                step = step.resume(step.run_sync())
        except KeystileError as exc:
            return self.gate(scope).failure(exc)
        return step if isinstance(step, Problem) else self.finish(scope, step)

    async def check_async(self, scope: MutableMapping[str, Any]) -> VerifyResult | Problem:
        step = self.begin(scope)
        try:
            while not isinstance(step, (VerifyResult, Problem)):
                step = step.resume(await step.run_async())
        except KeystileError as exc:
            return self.gate(scope).failure(exc)
        return step if isinstance(step, Problem) else self.finish(scope, step)


def _connection(args: tuple[Any, ...], kwargs: dict[str, Any]) -> HTTPConnection:
    for value in (*args, *kwargs.values()):
        if isinstance(value, HTTPConnection):
            return value
    raise ConfigurationError("@require_key needs an endpoint that receives the Request")


def _response(problem: Problem) -> Response:
    headers = {name.decode("latin-1"): value.decode("latin-1")
               for name, value in problem.raw_headers() if name != b"content-length"}
    return Response(problem.body(), status_code=problem.status, headers=headers,
                    media_type="application/problem+json")
