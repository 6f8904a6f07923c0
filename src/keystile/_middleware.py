"""``KeyAuthMiddleware``: pure ASGI, two lines to add.

>>> from starlette.applications import Starlette
>>> app = Starlette()
>>> app.add_middleware(KeyAuthMiddleware, store="memory://")

Each HTTP request's key is verified; the :class:`VerifyResult` lands in
``scope["keystile"]`` and Starlette's ``scope["auth"]`` / ``scope["user"]``, so
``request.auth.scopes`` are the key's permissions. Rejections answer with
``application/problem+json``. WebSocket connections are verified at the handshake
and refused with close code 1008 (policy violation); other scopes (``lifespan``)
pass untouched.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.authentication import AuthCredentials, BaseUser, UnauthenticatedUser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ._errors import KeystileError
from ._extract import bearer_token, plain_key
from ._gate import VERIFIER_SCOPE_KEY, Gate
from ._models import VerifyResult
from ._problem import Problem, close_reason

if TYPE_CHECKING:
    from ._verify import Step

__all__ = ["KeyAuthMiddleware", "KeyUser"]

ErrorHandler = Callable[[Scope, Receive, Send, Problem], Awaitable[None]]


class KeyUser(BaseUser):
    """``request.user`` for a verified key."""

    def __init__(self, result: VerifyResult) -> None:
        self.result = result

    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def display_name(self) -> str:
        return self.result.name or self.result.key_id or ""

    @property
    def identity(self) -> str:
        return self.result.key_id or ""

    @property
    def key_id(self) -> str:
        return self.result.key_id or ""

    @property
    def external_id(self) -> str | None:
        return self.result.identity.external_id if self.result.identity else None

    def __repr__(self) -> str:
        return f"KeyUser(key_id={self.key_id!r})"


class Principals:
    """``request.auth`` and ``request.user`` of results, built once for results that recur.

    A cache hit returns the same result object again and again, so its principal is
    built once; hot paths look ``memo`` up by the result's id first.
    """

    def __init__(self) -> None:
        self.memo: dict[int, tuple[VerifyResult, tuple[AuthCredentials, KeyUser]]] = {}

    def of(self, result: VerifyResult) -> tuple[AuthCredentials, KeyUser]:
        known = self.memo.get(id(result))
        if known is not None:
            return known[1]
        principal = AuthCredentials(result.permissions), KeyUser(result)
        if result.ratelimits or result.credits is not None:
            return principal  # a fresh result per request: nothing to reuse
        if len(self.memo) >= 10_000:
            self.memo.clear()
        # The entry holds the result, so its id cannot be reused while it is here.
        self.memo[id(result)] = (result, principal)
        return principal


async def send_problem(scope: Scope, receive: Receive, send: Send, problem: Problem) -> None:
    """The default ``on_error``: send the problem as the whole response."""
    await send({"type": "http.response.start", "status": problem.status,
                "headers": problem.raw_headers()})
    await send({"type": "http.response.body", "body": problem.body()})


async def close_websocket(receive: Receive, send: Send, problem: Problem) -> None:
    """Refuse a WebSocket handshake: close code 1008 with a short reason (never the key)."""
    message = await receive()
    if message["type"] == "websocket.connect":
        await send({"type": "websocket.close", "code": 1008, "reason": close_reason(problem)})


class KeyAuthMiddleware:
    """Verify the API key of every HTTP request and WebSocket handshake before the app
    sees it.

    Options (keyword-only):

    - ``store``: a store URL or :class:`Store` (default ``KEYSTILE_STORE`` or
      ``sqlite:///./keystile.db``); or ``verifier``: a :class:`Verifier` or
      :class:`Keystile` to share with the rest of the app.
    - ``header``: where the key is (``"authorization"`` with the Bearer scheme by
      default; any other header name holds the bare key, e.g. ``"x-api-key"``).
    - ``exclude_paths``: paths that need no key, with everything below them
      (``"/health"`` covers ``/health`` and ``/health/…``, not ``/healthz``); their
      requests pass as anonymous (``scope["keystile"]`` is ``None``).
    - ``allow_anonymous``: let requests *without* a key through (``scope["keystile"]``
      is ``None``); a key that is present must still be valid.
    - ``permissions``, ``cost``, ``ratelimits``, ``api_id``: what every request asks
      of its key (a permission query, credits to spend, named limits, the API).
    - ``extractor``: a callable ``(headers) -> str | None`` that finds the key itself
      (``headers``: lower-case names to values; raise ``ValueError`` to reject).
    - ``query_param``: also accept the key in this query parameter (e.g.
      ``"api_key"``; off by default). The parameter is removed from the query string
      the app and the server's access log see; a key in both the header and the
      query is rejected as ambiguous.
    - ``trusted_proxies``: CIDRs of the proxies in front of the app; only when the
      peer is one of them is the client address for the keyspace IP whitelist taken
      from ``forwarded_header`` (``"x-forwarded-for"``, the default, or RFC 7239
      ``"forwarded"``): the right-most address that is not a trusted proxy.
    - ``ratelimit_headers``: send ``RateLimit``/``RateLimit-Policy`` (default on).
    - ``credits_header``: send the key's remaining credits in this response header
      (e.g. ``"X-Credits-Remaining"``; off by default; not sent for unlimited keys).
    - ``on_error``: an ASGI coroutine ``(scope, receive, send, problem)`` to answer
      rejected HTTP requests differently (WebSockets are closed with code 1008).
    - ``fail_policy``: what a key gets when the store cannot answer: ``"closed"`` (the
      default: 503 problem+json with ``Retry-After``) or ``"open_cached"`` (a key
      whose record is in the local cache, even expired up to ``stale_max_age``
      seconds, default 300, is decided on it and admitted without spending credits
      or rate-limit tokens; unknown keys still get 503).
    - cache options (``cache_ttl``, ``negative_ttl``, ``cache_size``) pass to the verifier.
    """

    def __init__(self, app: ASGIApp, *, on_error: ErrorHandler | None = None, **options: Any) -> None:
        self.app = app
        self.gate = Gate(**options)
        self.verifier = self.gate.verifier
        self._answers = self.verifier.cache.answers
        self._events = self.verifier.events
        self.on_error = on_error or send_problem
        self._principals = Principals()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await self._guarded(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        gate = self.gate
        if gate.exclude_paths and gate.excluded(scope["path"]):
            await self._anonymous(scope, receive, send)
            return
        token = bearer_token(scope["headers"]) if gate.fast else None
        if token is None:  # not the one plain "Bearer <key>", or more options: the thorough path
            await self._guarded(scope, receive, send)
            return
        # The hot paths, inlined on purpose (every call here costs): _guarded does the same.
        verifier = self.verifier
        answer = self._answers.get(token)
        step: Step | None = None
        if answer is not None and answer[1] is gate.request and (now := verifier.now()) < answer[0]:
            found = answer[2]
            if type(found) is VerifyResult:
                # This very key got this answer for this middleware's request, and it
                # holds: a static valid result, so no headers to add.
                if self._events is not None:
                    self._events.record(now, answer)  # type: ignore[arg-type]  # a result: checked above
                scope["keystile"] = found
                scope[VERIFIER_SCOPE_KEY] = verifier
                memo = self._principals.memo.get(id(found))
                scope["auth"], scope["user"] = memo[1] if memo else self._principals.of(found)
                await self.app(scope, receive, send)
                return
            step = found.step(verifier, gate.request, now)  # type: ignore[union-attr, arg-type]  # remembered
        key = None
        if step is None:
            key = plain_key(token)
            if key is None:
                await self._guarded(scope, receive, send)
                return
        try:
            if key is not None:
                client = scope.get("client")
                step = verifier.start(key, gate.request, client[0] if client else None)
            result = step if type(step) is VerifyResult else await verifier.finish_async(step, gate.stale_ms)  # type: ignore[arg-type]
        except KeystileError as exc:
            await self.on_error(scope, receive, send, gate.failure(exc))
            return
        if not result.valid:
            await self.on_error(scope, receive, send, gate.rejection(result))
            return
        scope["keystile"] = result
        scope[VERIFIER_SCOPE_KEY] = verifier
        memo = self._principals.memo.get(id(result))
        scope["auth"], scope["user"] = memo[1] if memo else self._principals.of(result)
        if result.ratelimits:
            send = _adding_headers(send, gate.success_headers(result))
        await self.app(scope, receive, send)

    async def _guarded(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Every request the hot path does not serve, with every option, and WebSockets."""
        gate = self.gate
        if gate.excluded(scope["path"]):
            await self._anonymous(scope, receive, send)
            return
        headers, query = scope["headers"], scope.get("query_string", b"")
        if gate.query_param:  # keep the key out of the app's and the access log's sight
            scope["query_string"] = gate.strip_query(query)
        key = gate.read_request(headers, query)
        if key is None:
            await self._anonymous(scope, receive, send)
            return
        if isinstance(key, Problem):
            await self._refuse(scope, receive, send, key)
            return
        client = scope.get("client")
        try:
            result = await self.verifier.verify_request_async(
                key, gate.request, gate.client_ip(client[0] if client else None, headers),
                stale_ms=gate.stale_ms)
        except KeystileError as exc:
            await self._refuse(scope, receive, send, gate.failure(exc))
            return
        if not result.valid:
            await self._refuse(scope, receive, send, gate.rejection(result))
            return
        scope["keystile"] = result
        scope[VERIFIER_SCOPE_KEY] = self.verifier
        scope["auth"], scope["user"] = self._principals.of(result)
        start = "websocket.accept" if scope["type"] == "websocket" else "http.response.start"
        await self.app(scope, receive, _adding_headers(send, gate.response_headers(result), start))

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, problem: Problem) -> None:
        if scope["type"] == "websocket":
            await close_websocket(receive, send, problem)
        else:
            await self.on_error(scope, receive, send, problem)

    async def _anonymous(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope.update(keystile=None, auth=AuthCredentials(), user=UnauthenticatedUser())
        scope[VERIFIER_SCOPE_KEY] = self.verifier
        await self.app(scope, receive, send)


def _adding_headers(
    send: Send, raw: list[tuple[bytes, bytes]], start: str = "http.response.start"
) -> Send:
    if not raw:
        return send

    async def send_with_headers(message: Message) -> None:
        if message["type"] == start:
            message = {**message, "headers": [*message.get("headers", ()), *raw]}
        await send(message)

    return send_with_headers
