"""One route's requirements of a key, decided once per request: shared by
``@require_key`` and the FastAPI dependency.

Behind :class:`KeyAuthMiddleware` the key was verified once already: the route
checks its permission query against that result without a store read, and only a
``cost`` or ``ratelimits`` of its own costs one more store transaction, which does
not apply the key's auto-applied limits a second time. Without the middleware the
route verifies the key by itself.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, MutableMapping, Sequence
from typing import Any

from starlette.responses import Response

from . import _problem
from ._errors import KeystileError
from ._extract import bearer_token, plain_key
from ._gate import VERIFIER_SCOPE_KEY, Gate, check_fail_policy
from ._manage import Keystile
from ._middleware import Principals
from ._models import Code, VerifyRequest, VerifyResult, lasting
from ._permissions import parse_query
from ._problem import Problem
from ._verify import Step, Verifier
from .stores import Store, check_store_url

__all__ = ["RouteGuard", "problem_response"]

logger = logging.getLogger("keystile")


class RouteGuard:
    """One route's requirements, and the decision for one request."""

    def __init__(self, *, permissions: str | None, cost: int | None,
                 ratelimits: Sequence[str | Mapping[str, Any]], api_id: str | None,
                 store: Store | str | None, verifier: Verifier | Keystile | None,
                 header: str, fail_policy: str = "closed", stale_max_age: float = 300.0) -> None:
        self.request = lasting(VerifyRequest(permissions=permissions, cost=cost,
                                             ratelimits=tuple(ratelimits), api_id=api_id))
        # After the middleware: only what the route adds, without auto-applied limits.
        self.extra = None if cost is None and not ratelimits else lasting(VerifyRequest(
            cost=cost or 0, ratelimits=tuple(ratelimits), auto_apply=False))
        self.query = parse_query(permissions) if permissions else None
        if isinstance(store, str):
            check_store_url(store)  # a wrong URL fails at import; the store opens on first use
        check_fail_policy(fail_policy, stale_max_age)  # at import, like the rest
        self._gate_options: dict[str, Any] = {
            "store": store, "verifier": verifier, "header": header, "fail_policy": fail_policy,
            "stale_max_age": stale_max_age}
        self._gate: Gate | None = None
        self.principals = Principals()

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
        try:
            gate = self._gate or self.gate(scope)
        except KeystileError as exc:  # the store named at import cannot be opened now
            logger.warning("keystile: cannot open the route's store, answering 503: %s", exc,
                           extra={"error": type(exc).__name__})
            return _problem.store_unavailable()
        if isinstance(prior, VerifyResult):
            problem = self._beyond(prior, gate)
            if problem is not None or self.extra is None:
                return problem or prior
        headers = scope.get("headers", ())
        request = self.extra if isinstance(prior, VerifyResult) else self.request
        token = bearer_token(headers) if gate.scheme else None
        key = None
        if token is not None:
            known = gate.verifier.recall(token, request)  # type: ignore[arg-type]
            if known is not None:
                return known
            key = plain_key(token)
        if key is None:
            read = gate.read(headers)
            if not isinstance(read, str):
                return read or _problem.missing_key()
            key = read
        client = scope.get("client")
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
        scope["keystile"] = result
        scope["auth"], scope["user"] = self.principals.of(result)
        return result

    def check(self, scope: MutableMapping[str, Any]) -> VerifyResult | Problem:
        step = self.begin(scope)
        if isinstance(step, Problem):
            return step
        gate = self.gate(scope)
        try:
            result = gate.verifier.finish_sync(step, gate.stale_ms)
        except KeystileError as exc:
            return gate.failure(exc)
        return self.finish(scope, result)

    async def check_async(self, scope: MutableMapping[str, Any]) -> VerifyResult | Problem:
        step = self.begin(scope)
        if type(step) is VerifyResult and step.valid:  # the common case: a cache hit
            return self.finish(scope, step)
        if isinstance(step, Problem):
            return step
        gate = self.gate(scope)
        try:
            result = await gate.verifier.finish_async(step, gate.stale_ms)
        except KeystileError as exc:
            return gate.failure(exc)
        return self.finish(scope, result)


def problem_response(problem: Problem) -> Response:
    """A Starlette response carrying ``problem`` as ``application/problem+json``."""
    return Response(problem.body(), status_code=problem.status, headers=dict(problem.headers),
                    media_type="application/problem+json")
