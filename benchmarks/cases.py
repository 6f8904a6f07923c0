"""The cases: what each one serves, which key it accepts, and how it must reject.

A case builds a :class:`Target` from the shared :class:`Fixture`: the app (ASGI or
WSGI), the headers of a valid request, and the status a request without a key and
one with a wrong key must get. Peers are imported only when their case is built,
so the bare and keystile cases need nothing beyond keystile's own dependencies.
The Redis cases need a Redis server too (``KEYSTILE_BENCH_REDIS``); without one they
are skipped with the reason, as a peer that is not installed. The remote cases start
a ``keystile serve`` of their own (see :mod:`benchmarks.remote`), which needs uvicorn.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from starlette.middleware import Middleware

from keystile import KeyAuthMiddleware

from . import peers, redisbench
from .apps import IdealAuth, fastapi_app, ideal_dependency, starlette_app
from .fixture import PERMISSION_QUERY, Fixture, KeystileSetup, wrong_key

__all__ = ["CASES", "Case", "Target", "needs_redis", "needs_remote", "select"]

Kind = Literal["bare", "ideal", "keystile", "peer"]
IDEAL_TOKEN = "Bearer sk_ideal_0123456789abcdefghijkl"


@dataclass(frozen=True)
class Target:
    """A built case: the app and the requests that check it."""

    app: Any
    headers: tuple[tuple[str, str], ...]
    wrong_headers: tuple[tuple[str, str], ...] | None
    missing_status: int = 401
    wrong_status: int = 401
    interface: Literal["asgi", "wsgi"] = "asgi"
    path: str = "/"
    note: str = ""
    round_trips: bool = False  # count the round trips its requests make
    trips_to: Literal["redis", "remote"] = "redis"  # to Redis, or HTTP requests to keystile serve


@dataclass(frozen=True)
class Case:
    name: str
    framework: str
    kind: Kind
    build: Callable[[Fixture], Target]
    requires: tuple[str, ...] = ()
    http: bool = True  # can run under uvicorn (the WSGI cases run in-process only)
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    ideal: str | None = None  # the ideal case to compare with, if not its framework's first
    unavailable: Callable[[], str | None] | None = None  # why a service it needs is missing
    references: tuple[str, ...] = ()  # cases always run beside it, to compare it with

    def missing_modules(self) -> list[str]:
        return [name for name in self.requires if importlib.util.find_spec(name) is None]


def _bearer(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


# -- baselines --------------------------------------------------------------------------


def _bare_starlette(_: Fixture) -> Target:
    return Target(starlette_app(), (), None, missing_status=200)


def _bare_fastapi(_: Fixture) -> Target:
    return Target(fastapi_app(), (), None, missing_status=200)


def _ideal(framework: str) -> Callable[[Fixture], Target]:
    def build(_: Fixture) -> Target:
        middleware = [Middleware(IdealAuth, expected=IDEAL_TOKEN)]
        app = starlette_app(middleware) if framework == "starlette" else fastapi_app(
            middleware=middleware)
        wrong = (("authorization", IDEAL_TOKEN[:-1] + "X"),)
        return Target(app, (("authorization", IDEAL_TOKEN),), wrong)

    return build


def _ideal_dependency(_: Fixture) -> Target:
    from fastapi import Depends

    app = fastapi_app(dependencies=[Depends(ideal_dependency(IDEAL_TOKEN))])
    wrong = (("authorization", IDEAL_TOKEN[:-1] + "X"),)
    return Target(app, (("authorization", IDEAL_TOKEN),), wrong)


# -- keystile -----------------------------------------------------------------------------


def _keystile(
    framework: str, setup: Callable[[Fixture], KeystileSetup], *,
    key: Literal["plain", "perm", "full"] = "plain", by_url: bool = False, analytics: bool = True,
    **options: Any,
) -> Callable[[Fixture], Target]:
    """keystile's middleware on ``framework``; ``by_url`` passes ``store=URL`` as users do.

    The ``perm`` and ``full`` keys are checked against the permission query. Analytics
    is on (the default) unless ``analytics=False``: a verifier of the same store that
    records no events, to show what recording them costs.
    """
    permissions = None if key == "plain" else PERMISSION_QUERY

    def build(fixture: Fixture) -> Target:
        chosen = setup(fixture)
        source: dict[str, Any] = {"store": chosen.url, **options} if by_url else {
            "verifier": chosen.ks if analytics else fixture.quiet_verifier(chosen)}
        if by_url and not analytics:
            source["analytics"] = False
        # cast: mypy cannot match KeyAuthMiddleware to Starlette's middleware-factory protocol
        middleware = [Middleware(cast(Any, KeyAuthMiddleware), permissions=permissions, **source)]
        app = starlette_app(middleware) if framework == "starlette" else fastapi_app(
            middleware=middleware)
        plaintext = {"plain": chosen.key, "perm": chosen.perm_key, "full": chosen.full_key}[key]
        return Target(app, _bearer(plaintext), _bearer(wrong_key(plaintext)))

    return build


def _decorator(fixture: Fixture) -> Target:
    """``@require_key`` on the Starlette route, no middleware: the route verifies."""
    from keystile import require_key

    from .apps import ok

    chosen = fixture.memory()
    endpoint = require_key(verifier=chosen.ks)(ok)
    return Target(starlette_app(endpoint=endpoint), _bearer(chosen.key),
                  _bearer(wrong_key(chosen.key)))


def _dependency(fixture: Fixture) -> Target:
    """``Depends(KeyAuth(...))`` on the FastAPI route, with ``install(app)``."""
    from fastapi import Depends

    from keystile.fastapi import KeyAuth, install

    chosen = fixture.memory()
    app = fastapi_app(dependencies=[Depends(KeyAuth(verifier=chosen.ks))])
    install(app)
    return Target(app, _bearer(chosen.key), _bearer(wrong_key(chosen.key)))


def _flask(variant: Literal["bare", "keystile"]) -> Callable[[Fixture], Target]:
    """A Flask view, bare or behind KeyAuthWSGIMiddleware (memory://, cache hit)."""

    def build(fixture: Fixture) -> Target:
        from flask import Flask

        from keystile import KeyAuthWSGIMiddleware

        app = Flask("bench")
        app.add_url_rule("/", "ok", lambda: {"ok": True})
        if variant == "bare":
            return Target(app, (), None, missing_status=200, interface="wsgi")
        chosen = fixture.memory()
        app.wsgi_app = KeyAuthWSGIMiddleware(app.wsgi_app, verifier=chosen.ks)  # type: ignore[method-assign]
        return Target(app, _bearer(chosen.key), _bearer(wrong_key(chosen.key)), interface="wsgi")

    return build


def _redis(key: Literal["plain", "full"], *, lease: int = 0,
           **verifier_options: Any) -> Callable[[Fixture], Target]:
    """keystile's middleware on Starlette with a verifier on ``redis://`` (the fixture's
    own, closed with it), its Redis round trips counted.

    ``lease`` is the mode of the full key's credits and rate limit: 0 is exact (each
    verify settles them in the store), N > 0 leased (the verifier takes N units per
    store trip and spends them locally). ``verifier_options`` (``cache_ttl=0``) give the
    case a verifier of its own.
    """
    permissions = None if key == "plain" else PERMISSION_QUERY

    def build(fixture: Fixture) -> Target:
        chosen = fixture.redis()
        verifier = fixture.verifier(chosen, **verifier_options) if verifier_options else chosen.ks
        plaintext = chosen.key if key == "plain" else (
            fixture.leased_key(chosen, lease) if lease else chosen.full_key)
        middleware = [Middleware(cast(Any, KeyAuthMiddleware), permissions=permissions,
                                 verifier=verifier)]
        return Target(starlette_app(middleware), _bearer(plaintext), _bearer(wrong_key(plaintext)),
                      round_trips=True)

    return build


def _redis_settle_floor(fixture: Fixture) -> Target:
    """Bare Starlette whose route makes the exact path's round trip itself, without any
    auth: the settle script with redis-full's arguments (a limit and credits, with a
    deadline) on keystile's lean client, on states of its own. What redis-full costs
    beyond this is keystile's work around its one round trip."""
    from starlette.requests import Request
    from starlette.responses import JSONResponse

    from keystile._loops import PerLoop
    from keystile.stores._redis_lean import LeanClient, Script, target_from_url

    fixture.redis()  # the fixture's prefix is in use: close() deletes the states below
    url = redisbench.redis_url()
    client = redisbench.sync_client(url)
    try:
        source, keys, args = redisbench.settle_call(client, fixture.redis_prefix)
    finally:
        client.close()
    script = Script(source)

    async def close(client: LeanClient) -> None:
        client.close()

    # As keystile's Redis store keeps its own: one client per loop, closed when it ends.
    clients = PerLoop(lambda: LeanClient(target_from_url(url, 2.0)), close)

    async def settle_then_ok(request: Request) -> JSONResponse:
        client = clients.current() or await clients.get()
        await client.evalsha(script, keys, args)
        return JSONResponse({"ok": True})

    return Target(starlette_app(endpoint=settle_then_ok), (), None, missing_status=200,
                  round_trips=True)


def _remote(key: Literal["plain", "full"]) -> Callable[[Fixture], Target]:
    """keystile's middleware on Starlette with ``store="unkey+http://…"`` (the remote
    backend) in front of the fixture's ``keystile serve``, its forwards counted.

    The plain key spends nothing, so its VALID answer is cached (``cache_ttl``, 10 s);
    the full key is checked against the permission query and has credits and an
    auto-applied rate limit, so every request is forwarded to the server.
    """
    permissions = None if key == "plain" else PERMISSION_QUERY

    def build(fixture: Fixture) -> Target:
        server = fixture.remote()
        middleware = [Middleware(cast(Any, KeyAuthMiddleware), store=server.store_url,
                                 root_key=server.root_key, permissions=permissions)]
        plaintext = server.key if key == "plain" else server.full_key
        return Target(starlette_app(middleware), _bearer(plaintext), _bearer(wrong_key(plaintext)),
                      round_trips=True, trips_to="remote")

    return build


REDIS_MODULES = ("redis",)
REMOTE_MODULES = ("uvicorn",)  # keystile serve
LEASE = 50


def _memory(fixture: Fixture) -> KeystileSetup:
    return fixture.memory()


def _sqlite(fixture: Fixture) -> KeystileSetup:
    return fixture.sqlite()


CASES: tuple[Case, ...] = (
    Case("starlette-bare", "starlette", "bare", _bare_starlette,
         description="Starlette, no auth (the baseline)"),
    Case("starlette-ideal", "starlette", "ideal", _ideal("starlette"),
         description="pure ASGI: compare the header with a constant"),
    Case("starlette-keystile-memory-hit", "starlette", "keystile", _keystile("starlette", _memory),
         description="KeyAuthMiddleware, memory://, cache hit"),
    Case("starlette-keystile-memory-perm", "starlette", "keystile",
         _keystile("starlette", _memory, key="perm"),
         description=f"memory://, cache hit + permission query {PERMISSION_QUERY!r}"),
    Case("starlette-keystile-memory-full", "starlette", "keystile",
         _keystile("starlette", _memory, key="full"),
         description="memory://, cache hit + permission query + credits + auto rate limit"),
    Case("starlette-keystile-memory-hit-noanalytics", "starlette", "keystile",
         _keystile("starlette", _memory, analytics=False),
         description="as memory-hit with analytics=False: what recording every verification costs"),
    Case("starlette-keystile-memory-full-noanalytics", "starlette", "keystile",
         _keystile("starlette", _memory, key="full", analytics=False),
         description="as memory-full with analytics=False"),
    Case("starlette-keystile-sqlite-hit", "starlette", "keystile",
         _keystile("starlette", _sqlite, by_url=True),
         description="KeyAuthMiddleware(store='sqlite:///…'), cache hit"),
    Case("starlette-keystile-sqlite-hit-noanalytics", "starlette", "keystile",
         _keystile("starlette", _sqlite, by_url=True, analytics=False),
         description="as sqlite-hit with analytics=False (sqlite-hit writes every event to the file)"),
    Case("starlette-keystile-sqlite-miss", "starlette", "keystile",
         _keystile("starlette", _sqlite, by_url=True, cache_ttl=0),
         description="SQLite, cache disabled (cache_ttl=0): a store read per request"),
    Case("starlette-keystile-sqlite-full", "starlette", "keystile",
         _keystile("starlette", _sqlite, key="full", by_url=True),
         description="SQLite, cache hit + permission query + credits + rate limit (settled)"),
    Case("starlette-keystile-redis-hit", "starlette", "keystile", _redis("plain"),
         requires=REDIS_MODULES, unavailable=redisbench.unavailable,
         description="KeyAuthMiddleware, redis://, cache hit (no credits or limits)"),
    Case("starlette-keystile-redis-full", "starlette", "keystile", _redis("full"),
         requires=REDIS_MODULES, unavailable=redisbench.unavailable,
         description="redis://, cache hit + permission query + credits + auto rate limit"
                     " (exact: settled in Redis)", references=("starlette-bare-redis-settle",)),
    Case("starlette-keystile-redis-full-noanalytics", "starlette", "keystile",
         _redis("full", analytics=False), requires=REDIS_MODULES,
         unavailable=redisbench.unavailable,
         description="as redis-full with analytics=False: what recording every verification"
                     " costs beside the settle"),
    Case("starlette-bare-redis-settle", "starlette", "bare", _redis_settle_floor,
         requires=REDIS_MODULES, unavailable=redisbench.unavailable,
         description="no auth: the route makes redis-full's settle call itself (lean client,"
                     " same script and arguments): the floor of the exact path"),
    Case("starlette-keystile-redis-leased", "starlette", "keystile", _redis("full", lease=LEASE),
         requires=REDIS_MODULES, unavailable=redisbench.unavailable,
         description=f"redis://, as redis-full with the key in leased mode (lease={LEASE})"),
    Case("starlette-keystile-redis-miss", "starlette", "keystile", _redis("plain", cache_ttl=0),
         requires=REDIS_MODULES, unavailable=redisbench.unavailable,
         description="redis://, cache disabled (cache_ttl=0): a store read per request"),
    Case("starlette-keystile-remote-hit", "starlette", "keystile", _remote("plain"),
         requires=REMOTE_MODULES,
         description="store='unkey+http://…' (keystile serve on loopback), cache hit (no credits"
                     " or limits)"),
    Case("starlette-keystile-remote-forwarded", "starlette", "keystile", _remote("full"),
         requires=REMOTE_MODULES,
         description="unkey+http://…, permission query + credits + auto rate limit: every request"
                     " forwarded to keystile serve (SQLite)"),
    Case("starlette-keystile-decorator", "starlette", "keystile", _decorator,
         description="@require_key on the route, no middleware, memory://, cache hit"),
    Case("starlette-authmw-dict", "starlette", "peer", peers.starlette_authentication,
         description="Starlette AuthenticationMiddleware + dict-backed backend"),
    Case("fastapi-bare", "fastapi", "bare", _bare_fastapi, requires=("fastapi",),
         description="FastAPI, no auth (the baseline)"),
    Case("fastapi-ideal", "fastapi", "ideal", _ideal("fastapi"), requires=("fastapi",),
         description="pure ASGI: compare the header with a constant"),
    Case("fastapi-keystile-memory-hit", "fastapi", "keystile", _keystile("fastapi", _memory),
         requires=("fastapi",), description="KeyAuthMiddleware on FastAPI, memory://, cache hit"),
    Case("fastapi-ideal-dependency", "fastapi", "ideal", _ideal_dependency, requires=("fastapi",),
         description="a dependency that compares the header with a constant (the floor for any)"),
    Case("fastapi-keystile-dependency", "fastapi", "keystile", _dependency,
         requires=("fastapi",), ideal="fastapi-ideal-dependency",
         description="Depends(KeyAuth()) with install(app), memory://, hit"),
    Case("fastapi-key-auth-middleware", "fastapi", "peer", peers.fastapi_key_auth_middleware,
         requires=("fastapi_key_auth",), description="fastapi-key-auth AuthorizerMiddleware"),
    Case("fastapi-key-auth-dependency", "fastapi", "peer", peers.fastapi_key_auth_dependency,
         requires=("fastapi_key_auth",), ideal="fastapi-ideal-dependency",
         description="fastapi-key-auth AuthorizerDependency (missing header: 422)"),
    Case("fastapi-keyshield-cached", "fastapi", "peer", peers.keyshield_cached,
         requires=peers.KEYSHIELD_MODULES,
         description="keyshield CachedApiKeyService (aiocache) + argon2, in-memory repo"),
    Case("flask-bare", "flask", "bare", _flask("bare"), requires=("flask",), http=False,
         description="Flask view, no auth (WSGI)"),
    Case("flask-keystile-wsgi", "flask", "keystile", _flask("keystile"), requires=("flask",),
         http=False, description="KeyAuthWSGIMiddleware, memory://, cache hit (WSGI)"),
    Case("django-drf-bare", "django", "bare", peers.drf("bare"), requires=peers.DRF_MODULES,
         http=False, description="Django REST framework APIView, no auth (WSGI)"),
    Case("django-drf-keystile", "django", "keystile", peers.drf("keystile"),
         requires=peers.DRF_MODULES, http=False,
         description="keystile Verifier in a DRF authentication class, memory://, cache hit"),
    Case("django-drf-api-key", "django", "peer", peers.drf("api_key"), requires=peers.DRF_MODULES,
         http=False, description="djangorestframework-api-key HasAPIKey, SQLite (missing: 403)"),
)


def needs_redis(case: Case) -> bool:
    return case.unavailable is redisbench.unavailable


def needs_remote(case: Case) -> bool:
    """The case runs against a ``keystile serve`` of the fixture's."""
    return case.requires == REMOTE_MODULES


def select(patterns: list[str] | None, *, http: bool) -> tuple[list[Case], list[tuple[Case, str]]]:
    """The cases to run (baselines, and the ideal and references a case names, always
    added) and the skipped ones with the reason."""
    chosen = [c for c in CASES if not patterns or any(p in c.name for p in patterns)]
    frameworks = {c.framework for c in chosen} | {"starlette"}
    wanted = {c.name for c in chosen} | {
        c.name for c in CASES if c.kind == "bare" and c.framework in frameworks and c.unavailable is None
    } | {c.ideal for c in chosen if c.ideal} | {name for c in chosen for name in c.references}
    run: list[Case] = []
    skipped: list[tuple[Case, str]] = []
    for case in CASES:
        if case.name not in wanted:
            continue
        missing = case.missing_modules()
        if missing:
            skipped.append((case, f"not installed: {', '.join(missing)} (pip install -e '.[bench]')"))
        elif http and not case.http:
            skipped.append((case, "WSGI: in-process mode only"))
        elif case.unavailable is not None and (reason := case.unavailable()) is not None:
            skipped.append((case, reason))
        else:
            run.append(case)
    return run, skipped
