"""Logs: structured records with ids, and never a plaintext key or a root key.

One scenario goes everywhere a key passes (the ASGI and WSGI middlewares, the
decorator, the CLI, ``keystile serve`` with root keys, a Redis store killed under
``open_cached``, a remote backend that fails or refuses its root key) with every
logger captured at DEBUG; then every record's message, arguments, extras and
traceback, every answer the clients got and every error raised are searched for
each key that was issued or sent.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from flask import Flask
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from keystile import (
    Analytics,
    Credits,
    KeyAuthMiddleware,
    KeyAuthWSGIMiddleware,
    Keystile,
    KeystileError,
    RatelimitConfig,
    StoreUnavailableError,
    generate_key,
    require_key,
)
from keystile._logs import safe_url
from keystile.cli import main
from keystile.server import RootKeys, build_app
from tests.conftest import Clock, InProcessServe, RedisServer, free_port

HOUR = 3_600_000


class Secrets:
    """Every key issued or sent, and every text that must not hold one."""

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.seen: list[tuple[str, str]] = []  # (where, text)

    def key(self, key: str) -> str:
        self.keys.append(key)
        return key

    def saw(self, where: str, text: Any) -> None:
        self.seen.append((where, text if isinstance(text, str) else repr(text)))

    def response(self, where: str, response: Any) -> None:
        """An HTTP answer (httpx's, or werkzeug's test client's): its headers and body."""
        self.saw(where, f"{dict(response.headers)!r} {response.text}")

    def leaks(self) -> list[tuple[str, str]]:
        return [(where, key) for where, text in self.seen for key in self.keys if key in text]


def record_text(record: logging.LogRecord) -> str:
    """Everything a handler could write of a record: message, arguments, extras, traceback."""
    text = f"{record.getMessage()} {record.msg!r} {record.args!r} {vars(record)!r}"
    if record.exc_info:
        text += logging.Formatter().formatException(record.exc_info)
    return text


async def ok(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def asgi_client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


# -- the phases of the scenario -----------------------------------------------------------------


async def through_asgi_wsgi_and_the_decorator(ks: Keystile, secrets: Secrets, clock: Clock) -> None:
    api = ks.create_api("shop", prefix="sk_shop")
    ks.create_identity("acme")
    keys = [secrets.key(ks.create_key(api.id, permissions=["read"], external_id="acme", **options).key)
            for options in ({}, {"enabled": False}, {"expires": clock() + 1_000},
                            {"credits": Credits(1)},
                            {"ratelimits": [RatelimitConfig("req", 1, HOUR, auto_apply=True)]})]
    keys += [secrets.key(generate_key("sk_shop", 16)), secrets.key(generate_key("sk_else", 24))]
    clock.advance(2_000)  # the third key has expired

    @require_key(permissions="write", cost=1, verifier=ks)
    async def decorated(request: Request) -> JSONResponse:
        return JSONResponse({"keyId": request.scope["keystile"].key_id})

    plain = Starlette(routes=[Route("/", ok)])
    plain.add_middleware(KeyAuthMiddleware, verifier=ks, permissions="read")
    by_query = Starlette(routes=[Route("/", ok)])
    by_query.add_middleware(KeyAuthMiddleware, verifier=ks, query_param="api_key")
    only_decorated = Starlette(routes=[Route("/", decorated)])
    flask = Flask("logs-test")
    flask.get("/")(lambda: "ok")
    flask.wsgi_app = KeyAuthWSGIMiddleware(flask.wsgi_app, verifier=ks)  # type: ignore[method-assign]
    async with asgi_client(plain) as a, asgi_client(by_query) as q, asgi_client(only_decorated) as d:
        for key in keys:
            for _ in range(2):
                secrets.response("asgi", await a.get("/", headers=bearer(key)))
                secrets.response("query", await q.get("/", params={"api_key": key}))
                secrets.response("decorator", await d.get("/", headers=bearer(key)))
                secrets.response("wsgi", flask.test_client().get("/", headers=bearer(key)))
            both = await q.get("/", params={"api_key": key}, headers=bearer(key))
            secrets.response("ambiguous", both)
            secrets.response("malformed", await a.get("/", headers={"authorization": f"Bearer {key} {key}"}))
            secrets.response("scheme", await a.get("/", headers={"authorization": f"Basic {key}"}))
            secrets.saw("verify", ks.verify(key))
    assert ks.verifier.events is not None
    ks.verifier.events.flush()
    secrets.saw("metrics", ks.verifier.metrics.snapshot())


def through_the_cli(store: str, secrets: Secrets, capsys: pytest.CaptureFixture[str]) -> None:
    def cli(*argv: str) -> Any:
        main([*argv, "--store", store, "--json"])
        captured = capsys.readouterr()
        secrets.saw(f"cli {argv[:2]} stderr", captured.err)
        return json.loads(captured.out)

    api = cli("apis", "create", "cli", "--prefix", "sk_cli")
    created = cli("keys", "create", "--api", api["apiId"], "--credits", "5", "--permission", "read")
    key = secrets.key(created["key"])
    for verified in (key, secrets.key(generate_key("sk_cli", 16)), "sk_cli_0OIl"):
        secrets.saw("cli verify", cli("keys", "verify", verified, "--permissions", "read AND write"))
        secrets.saw("cli verify", cli("keys", "verify", verified, "--cost", "2"))
    secrets.saw("cli get", cli("keys", "get", created["keyId"]))
    secrets.saw("cli update", cli("keys", "update", created["keyId"], "--disable"))
    secrets.saw("cli verify", cli("keys", "verify", key))
    root = cli("rootkeys", "create", "--permission", "api.*.verify_key", "--name", "ops")
    secrets.key(root["key"])
    secrets.saw("cli rootkeys", cli("rootkeys", "list"))
    secrets.saw("cli delete", cli("keys", "delete", created["keyId"]))


async def through_keystile_serve(ks: Keystile, secrets: Secrets) -> None:
    roots = RootKeys(ks)
    root = secrets.key(roots.create(["api.*.create_api", "api.*.create_key", "api.*.verify_key",
                                     "api.*.read_key", "api.*.update_key"]).key)
    weak = secrets.key(roots.create(["api.*.read_api"]).key)
    forged = secrets.key(generate_key("ks-root", 32))
    async with asgi_client(build_app(ks, metrics=True)) as c:
        async def call(operation: str, body: dict[str, Any], token: str = root) -> dict[str, Any]:
            response = await c.post(f"/v2/{operation}", json=body, headers=bearer(token))
            if operation not in ("keys.createKey", "keys.rerollKey"):  # they show the new key, once
                secrets.response(f"serve {operation}", response)
            answer: dict[str, Any] = response.json()
            return answer

        api = (await call("apis.createApi", {"name": "served"}))["data"]["apiId"]
        created = (await call("keys.createKey", {"apiId": api, "prefix": "sk_srv", "credits":
                                                 {"remaining": 1}}))["data"]
        key = secrets.key(created["key"])
        for verified in (key, key, root, secrets.key(generate_key("sk_srv", 16)), "not a key"):
            await call("keys.verifyKey", {"key": verified})
            await call("keys.whoami", {"key": verified})
        rerolled = await call("keys.rerollKey", {"keyId": created["keyId"], "expiration": 0})
        secrets.key(rerolled["data"]["key"])
        for token in (weak, forged, f"{root}x"):
            await call("keys.verifyKey", {"key": key}, token=token)
        response = await c.post("/v2/keys.verifyKey", json={"key": key}, headers={"authorization": root})
        secrets.response("serve malformed", response)
        secrets.response("serve metrics", await c.get("/metrics"))


async def with_redis_killed(url: str, secrets: Secrets, clock: Clock, private_redis: RedisServer) -> None:
    ks = Keystile(url + "?timeout=1", now=clock, analytics=Analytics(flush_interval=0.05))
    api = ks.create_api("down", prefix="sk_down")
    plain = secrets.key(ks.create_key(api.id).key)
    paid = secrets.key(ks.create_key(api.id, credits=Credits(10)).key)
    unknown = secrets.key(generate_key("sk_down", 16))
    app = Starlette(routes=[Route("/", ok)])
    app.add_middleware(KeyAuthMiddleware, verifier=ks, fail_policy="open_cached", stale_max_age=60)
    async with asgi_client(app) as c:
        async def send(key: str) -> None:
            secrets.response("redis", await c.get("/", headers=bearer(key)))

        for key in (plain, paid):
            await send(key)
        private_redis.kill()
        await send(paid)  # settle fails: admitted unspent, logged
        clock.advance(31_000)  # the keyspaces and every record are due
        for key in (plain, paid, unknown):
            await send(key)
        deadline = time.monotonic() + 5
        while ks.verifier.events is not None and ks.verifier.events.write_errors == 0:
            assert time.monotonic() < deadline, "the analytics writer never tried"
            await asyncio.sleep(0.02)
    with pytest.raises(StoreUnavailableError) as raised:
        ks.verify(unknown)
    secrets.saw("redis error", str(raised.value))
    ks.close()  # the events cannot be written: logged


async def through_a_failing_remote(store: str, secrets: Secrets) -> None:
    ks = Keystile(store)
    root = secrets.key(RootKeys(ks).create(["api.*.verify_key"]).key)
    api = ks.create_api("remote", prefix="sk_rem")
    key = secrets.key(ks.create_key(api.id).key)
    unknown = secrets.key(generate_key("sk_rem", 16))
    server = InProcessServe(ks)
    url = f"unkey+http://127.0.0.1:{server.port}?prefixes=sk_rem"
    lenient = Starlette(routes=[Route("/", ok)])
    lenient.add_middleware(KeyAuthMiddleware, store=url, root_key=root, fail_policy="open_cached",
                           cache_ttl=0, failures=2, retries=0)
    refused = Starlette(routes=[Route("/", ok)])
    wrong_root = secrets.key(generate_key("ks-root", 32))
    refused.add_middleware(KeyAuthMiddleware, store=url, root_key=wrong_root)
    try:
        async with asgi_client(lenient) as good, asgi_client(refused) as bad:
            for client, where in ((good, "remote"), (bad, "remote, wrong root key")):
                for sent in (key, unknown):
                    secrets.response(where, await client.get("/", headers=bearer(sent)))
            server.stop()
            for _ in range(3):  # two failures open the breaker; the known key still passes
                for sent in (key, unknown):
                    secrets.response("remote down", await good.get("/", headers=bearer(sent)))
    finally:
        server.stop()
        ks.close()


# -- the tests --------------------------------------------------------------------------------------


@pytest.fixture
def everything_logged(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.DEBUG)  # every logger, keystile's, uvicorn's, httpx's, ...
    yield caplog


async def test_if_a_full_scenario_runs_then_no_log_answer_or_error_holds_a_key(
    tmp_path: Path, clock: Clock, capsys: pytest.CaptureFixture[str], private_redis: RedisServer,
    everything_logged: pytest.LogCaptureFixture,
) -> None:
    secrets = Secrets()
    store = f"sqlite:///{tmp_path / 'keys.db'}"
    ks = Keystile(store, now=clock)
    await through_asgi_wsgi_and_the_decorator(ks, secrets, clock)
    through_the_cli(store, secrets, capsys)
    await through_keystile_serve(ks, secrets)
    await with_redis_killed(private_redis.url, secrets, clock, private_redis)
    await through_a_failing_remote(f"sqlite:///{tmp_path / 'served.db'}", secrets)
    ks.close()

    # The test's own client (the browser, or curl) logs the URLs it asks for, the key in
    # a query string included: its records are not the server's.
    records = [record for record in everything_logged.records
               if not (record.name == "httpx" and "http://test/" in record.getMessage())]
    for record in records:
        secrets.saw(f"log record {record.name}:{record.levelname}", record_text(record))
    messages = " ".join(record.getMessage() for record in records)

    assert len(secrets.keys) >= 20 and len(records) > 30
    leaks = secrets.leaks()
    assert not leaks, "\n".join(f"{where}: {key}" for where, key in leaks)
    # The scenario reached the paths that log about keys and failures.
    for expected in ("rejected key key_", "admitting key key_", "unspent (open_cached)",
                     "answering 503", "failed 2 times in a row", "analytics events not written",
                     "invalidation listener lost its connection", "answered 401"):
        assert expected in messages, expected


async def test_if_a_verification_is_logged_then_the_record_carries_its_ids_as_extras(
    private_redis: RedisServer, clock: Clock, everything_logged: pytest.LogCaptureFixture,
) -> None:
    ks = Keystile(private_redis.url + "?timeout=1", now=clock, analytics=False)
    api = ks.create_api("shop", prefix="sk_shop")
    created = ks.create_key(api.id, credits=Credits(10))
    app = Starlette(routes=[Route("/", ok)])
    app.add_middleware(KeyAuthMiddleware, verifier=ks, fail_policy="open_cached")
    async with asgi_client(app) as c:
        assert (await c.get("/", headers={"authorization": f"Bearer {created.key}"})).status_code == 200
        private_redis.kill()
        assert (await c.get("/", headers={"authorization": f"Bearer {created.key}"})).status_code == 200

    [record] = [r for r in everything_logged.records if "unspent" in r.getMessage()]

    fields = {name: getattr(record, name) for name in ("key_id", "keyspace_id", "api_id", "store",
                                                        "operation", "error")}
    assert fields == {"key_id": created.key_id, "keyspace_id": api.keyspace_id, "api_id": api.id,
                      "store": private_redis.url + "?timeout=1", "operation": "settle",
                      "error": "StoreUnavailableError"}
    ks.close()


class EchoingRemote:
    """A careless Unkey-compatible endpoint: its errors quote the request's key and root key."""

    def __init__(self, status: int) -> None:
        async def verify(request: Request) -> JSONResponse:
            body = await request.json()
            detail = f"bad key {body['key']} (permission) for {request.headers['authorization']}"
            return JSONResponse({"error": {"title": "no", "detail": detail, "status": status,
                                           "type": "t"}}, status_code=status)

        self.port = free_port()
        app = Starlette(routes=[Route("/v2/keys.verifyKey", verify, methods=["POST"])])
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port,
                                                    log_level="error", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.mark.parametrize("status", [400, 401, 412, 500])
def test_if_the_remote_quotes_the_keys_in_its_error_then_keystile_does_not_pass_them_on(
    status: int, everything_logged: pytest.LogCaptureFixture,
) -> None:
    from keystile._remote import RemoteVerifier

    remote_server = EchoingRemote(status)
    root, key = generate_key("ks-root", 32), generate_key("sk_live", 16)
    remote = RemoteVerifier(f"unkey+http://127.0.0.1:{remote_server.port}?prefixes=sk_live", root_key=root)
    try:
        with pytest.raises(KeystileError) as raised:
            remote.verify(key)
    finally:
        remote.close()
        remote_server.stop()

    assert "***" in str(raised.value)
    assert key not in str(raised.value) and root not in str(raised.value)
    assert all(key not in record_text(r) and root not in record_text(r) for r in everything_logged.records)


def test_if_a_store_url_has_a_password_then_logs_and_errors_show_it_masked() -> None:
    url = "redis://app:s3cret@redis.internal:6379/0?prefix=ks:&password=hunter2&timeout=0.5"

    shown = safe_url(url)

    assert shown == "redis://app:***@redis.internal:6379/0?prefix=ks:&password=***&timeout=0.5"
    assert safe_url("sqlite:////var/keys.db") == "sqlite:////var/keys.db"
    with pytest.raises(KeystileError) as raised:
        Keystile("redis://app:s3cret@127.0.0.1:6379/0?timeout=nope")
    assert "s3cret" not in str(raised.value) and "***" in str(raised.value)
