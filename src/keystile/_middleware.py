"""``KeyAuthMiddleware``: pure ASGI, two lines to add.

>>> from starlette.applications import Starlette
>>> app = Starlette()
>>> app.add_middleware(KeyAuthMiddleware, store="memory://")

Each HTTP request's key is verified; the :class:`VerifyResult` lands in
``scope["keystile"]`` and Starlette's ``scope["auth"]`` / ``scope["user"]``, so
``request.auth.scopes`` are the key's permissions. Rejections answer with
``application/problem+json``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.authentication import AuthCredentials, BaseUser, UnauthenticatedUser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ._errors import KeystileError
from ._extract import plain_bearer
from ._gate import Gate
from ._models import VerifyResult
from ._problem import Problem

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


async def send_problem(scope: Scope, receive: Receive, send: Send, problem: Problem) -> None:
    """The default ``on_error``: send the problem as the whole response."""
    await send({"type": "http.response.start", "status": problem.status,
                "headers": problem.raw_headers()})
    await send({"type": "http.response.body", "body": problem.body()})


class KeyAuthMiddleware:
    """Verify the API key of every HTTP request before the app sees it.

    Options (keyword-only):

    - ``store``: a store URL or :class:`Store` (default ``KEYSTILE_STORE`` or
      ``sqlite:///./keystile.db``); or ``verifier``: a :class:`Verifier` or
      :class:`Keystile` to share with the rest of the app.
    - ``header``: where the key is (``"authorization"`` with the Bearer scheme by
      default; any other header name holds the bare key, e.g. ``"x-api-key"``).
    - ``exclude_paths``: path prefixes that need no key (e.g. ``["/health"]``); their
      requests pass as anonymous (``scope["keystile"]`` is ``None``).
    - ``allow_anonymous``: let requests *without* a key through (``scope["keystile"]``
      is ``None``); a key that is present must still be valid.
    - ``permissions``, ``cost``, ``ratelimits``, ``api_id``: what every request asks
      of its key (a permission query, credits to spend, named limits, the API).
    - ``ratelimit_headers``: send ``RateLimit``/``RateLimit-Policy`` (default on).
    - ``on_error``: an ASGI coroutine ``(scope, receive, send, problem)`` to answer
      rejections differently.
    - cache options (``cache_ttl``, ``negative_ttl``, ``cache_size``) pass to the verifier.
    """

    def __init__(self, app: ASGIApp, *, on_error: ErrorHandler | None = None, **options: Any) -> None:
        self.app = app
        self.gate = Gate(**options)
        self.verifier = self.gate.verifier
        self.on_error = on_error or send_problem
        self._principals: dict[int, tuple[VerifyResult, tuple[AuthCredentials, KeyUser]]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        gate = self.gate
        if gate.exclude_paths and scope["path"].startswith(gate.exclude_paths):
            await self._anonymous(scope, receive, send)
            return
        key = plain_bearer(scope["headers"]) if gate.scheme else None
        if key is None:  # not the one plain "Bearer <key>": let the thorough reader say why
            read = gate.read(scope["headers"])
            if read is None:
                await self._anonymous(scope, receive, send)
                return
            if isinstance(read, Problem):
                await self.on_error(scope, receive, send, read)
                return
            key = read
        client = scope.get("client")
        verifier = self.verifier
        try:
            step = verifier.start(key, gate.request, client[0] if client else None)
            result = step if type(step) is VerifyResult else await verifier.finish_async(step)
        except KeystileError as exc:
            await self.on_error(scope, receive, send, gate.failure(exc))
            return
        if not result.valid:
            await self.on_error(scope, receive, send, gate.rejection(result))
            return
        scope["keystile"] = result
        principal = self._principals.get(id(result))
        scope["auth"], scope["user"] = principal[1] if principal else self._principal(result)
        if result.ratelimits:
            send = _adding_headers(send, gate.success_headers(result))
        await self.app(scope, receive, send)

    async def _anonymous(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope.update(keystile=None, auth=AuthCredentials(), user=UnauthenticatedUser())
        await self.app(scope, receive, send)

    def _principal(self, result: VerifyResult) -> tuple[AuthCredentials, KeyUser]:
        """``request.auth`` and ``request.user`` of a result, kept for results that recur.

        A cache hit returns the same result object again and again, so its principal
        is built once (``__call__`` looks it up by the result's id first).
        """
        if len(self._principals) >= 10_000:
            self._principals.clear()
        principal = AuthCredentials(list(result.permissions)), KeyUser(result)
        if result.ratelimits or result.credits is not None:
            return principal  # a fresh result per request: nothing to reuse
        # The entry holds the result, so its id cannot be reused while it is here.
        self._principals[id(result)] = (result, principal)
        return principal


def _adding_headers(send: Send, raw: list[tuple[bytes, bytes]]) -> Send:
    if not raw:
        return send

    async def send_with_headers(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), *raw]}
        await send(message)

    return send_with_headers
