"""Peer libraries, each configured as its own docs say, for one valid key.

Every import happens inside a builder, so a peer that is not installed only skips
its case. Each builder returns a :class:`~benchmarks.cases.Target`.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from starlette.authentication import (
    AuthCredentials,
    AuthenticationBackend,
    AuthenticationError,
    SimpleUser,
    requires,
)
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from .apps import fastapi_app, starlette_app
from .fixture import Fixture

if TYPE_CHECKING:
    from .cases import Target

__all__ = [
    "DRF_MODULES",
    "KEYSHIELD_MODULES",
    "drf",
    "fastapi_key_auth_dependency",
    "fastapi_key_auth_middleware",
    "keyshield_cached",
    "keyshield_uncached_verify_ms",
    "starlette_authentication",
]

DRF_MODULES = ("django", "rest_framework", "rest_framework_api_key")
KEYSHIELD_MODULES = ("keyshield", "fastapi", "sqlalchemy", "greenlet", "aiocache", "argon2")
PEER_KEY = "pk_bench_6f1c2e9a4b7d40e8a1c3f5e7d9b2a4c6"
ENV_KEY_NAME = "API_KEY_KEYSTILE_BENCH"  # fastapi-key-auth reads keys from API_KEY_* variables


def _target(app: Any, headers: tuple[tuple[str, str], ...], wrong: tuple[tuple[str, str], ...],
            missing_status: int = 401, **extra: Any) -> Target:
    from .cases import Target

    return Target(app, headers, wrong, missing_status=missing_status, **extra)


# -- Starlette's own AuthenticationMiddleware -------------------------------------------


class DictBackend(AuthenticationBackend):
    """Bearer keys looked up in a dict, as in Starlette's authentication docs."""

    def __init__(self, keys: dict[str, str]) -> None:
        self.keys = keys

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, SimpleUser] | None:
        if "authorization" not in conn.headers:
            return None
        scheme, _, token = conn.headers["authorization"].partition(" ")
        if scheme.lower() != "bearer":
            raise AuthenticationError("expected a Bearer token")
        user = self.keys.get(token)
        if user is None:
            raise AuthenticationError("invalid key")
        return AuthCredentials(["authenticated"]), SimpleUser(user)


@requires("authenticated", status_code=401)
async def _protected(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


def _auth_error(conn: HTTPConnection, exc: Exception) -> Response:
    return PlainTextResponse(str(exc), status_code=401)


def starlette_authentication(_: Fixture) -> Target:
    backend = DictBackend({PEER_KEY: "bench"})
    middleware = [Middleware(AuthenticationMiddleware, backend=backend, on_error=_auth_error)]
    app = starlette_app(middleware, endpoint=_protected)
    return _target(app, (("authorization", f"Bearer {PEER_KEY}"),),
                   (("authorization", f"Bearer {PEER_KEY}x"),))


# -- fastapi-key-auth -----------------------------------------------------------------------


def fastapi_key_auth_middleware(_: Fixture) -> Target:
    from fastapi_key_auth import AuthorizerMiddleware

    os.environ[ENV_KEY_NAME] = PEER_KEY
    app = fastapi_app(middleware=[Middleware(AuthorizerMiddleware, key_pattern="API_KEY_")])
    return _target(app, (("x-api-key", PEER_KEY),), (("x-api-key", PEER_KEY + "x"),))


def fastapi_key_auth_dependency(_: Fixture) -> Target:
    from fastapi import Depends
    from fastapi_key_auth import AuthorizerDependency

    os.environ[ENV_KEY_NAME] = PEER_KEY
    app = fastapi_app(dependencies=[Depends(AuthorizerDependency(key_pattern="API_KEY_"))])
    # A missing header fails FastAPI's validation of the required Header(...): 422.
    return _target(app, (("x-api-key", PEER_KEY),), (("x-api-key", PEER_KEY + "x"),),
                   missing_status=422)


# -- keyshield ------------------------------------------------------------------------------

_PEPPER = "keystile-bench-pepper-0f3a9c"


def _keyshield_service(cached: bool) -> tuple[Any, str]:
    """A keyshield service (its quick start: in-memory repo, argon2) and one new key.

    keyshield sleeps 0.1-0.3 s after every verify by default (``min_delay`` and
    ``max_delay``, against timing attacks); a benchmark measuring that sleep would
    measure nothing, so both are 0 here.
    """
    from keyshield import ApiKeyService
    from keyshield.hasher.argon2 import Argon2ApiKeyHasher
    from keyshield.repositories.in_memory import InMemoryApiKeyRepository
    from keyshield.services.cached import CachedApiKeyService

    factory = CachedApiKeyService if cached else ApiKeyService
    service = factory(repo=InMemoryApiKeyRepository(), hasher=Argon2ApiKeyHasher(pepper=_PEPPER),
                      min_delay=0.0, max_delay=0.0)
    _, key = asyncio.run(service.create(name="bench"))
    return service, key


def keyshield_cached(_: Fixture) -> Target:
    from fastapi import Depends
    from keyshield.api import create_depends_api_key

    service, key = _keyshield_service(cached=True)

    async def inject_service() -> Any:
        return service

    security = create_depends_api_key(inject_service)
    app = fastapi_app(dependencies=[Depends(security)])
    return _target(app, (("authorization", f"Bearer {key}"),),
                   (("authorization", f"Bearer {key[:-1]}{'A' if key[-1] != 'A' else 'B'}"),))


def keyshield_uncached_verify_ms(samples: int = 3) -> float:
    """Median ms of keyshield's uncached ``verify_key`` (one argon2 verify each)."""
    import time

    service, key = _keyshield_service(cached=False)

    async def timed() -> list[float]:
        out = []
        for _ in range(samples):
            start = time.perf_counter()
            await service.verify_key(key)
            out.append((time.perf_counter() - start) * 1000)
        return sorted(out)

    return asyncio.run(timed())[samples // 2]


# -- Django REST framework (WSGI) ---------------------------------------------------------------


def drf(variant: str) -> Callable[[Fixture], Target]:
    """A DRF view: ``bare`` (AllowAny), ``api_key`` (HasAPIKey) or ``keystile``."""

    def build(fixture: Fixture) -> Target:
        from . import drf_app

        return drf_app.target(fixture, variant)

    return build
