"""The remote backend's own behaviour, against real HTTP servers on loopback:
prefix routing, the circuit breaker, retries, timeouts and the answers it maps."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from keystile import Code, ConfigurationError, KeyAuthMiddleware, StoreUnavailableError, VerifyRequest
from keystile._remote import RemoteVerifier
from tests.conftest import free_port

KEY = "sk_live_3xituoZLNs2TE2YiXHbRvA"


class Endpoint:
    """A real HTTP server answering ``keys.verifyKey`` as told, counting what it gets."""

    def __init__(self) -> None:
        self.status = 200
        self.data: dict[str, Any] = {"valid": True, "code": "VALID", "keyId": "key_1", "enabled": True,
                                     "permissions": ["read"], "roles": []}
        self.delay = 0.0
        self.bodies: list[dict[str, Any]] = []
        self.port = free_port()

        async def verify(request: Request) -> JSONResponse:
            self.bodies.append(await request.json())
            if self.delay:
                time.sleep(self.delay)
            if self.status != 200:
                return JSONResponse({"meta": {"requestId": "req_1"}, "error": {
                    "title": "x", "detail": "the remote says no", "status": self.status, "type": "t"}},
                    status_code=self.status)
            return JSONResponse({"meta": {"requestId": "req_1"}, "data": self.data})

        app = Starlette(routes=[Route("/v2/keys.verifyKey", verify, methods=["POST"])])
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port,
                                                    log_level="error", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"unkey+http://127.0.0.1:{self.port}"

    def __enter__(self) -> Endpoint:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "the endpoint did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(5)


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    with Endpoint() as running:
        yield running


def remote(url: str, **options: Any) -> RemoteVerifier:
    options.setdefault("prefixes", ["sk_live"])
    options.setdefault("root_key", "unkey_root")
    return RemoteVerifier(url, **options)


def test_if_a_key_has_another_prefix_then_it_never_leaves_the_process(endpoint: Endpoint) -> None:
    verifier = remote(endpoint.url)
    for key in ("sk_test_3xituoZLNs2TE2YiXHbRvA", "garbage", "sk_live_0OIl", "x" * 5000):
        assert verifier.verify(key).code is Code.NOT_FOUND
    assert endpoint.bodies == []
    verifier.close()


def test_if_the_remote_answers_then_the_result_and_the_request_are_unkeys(endpoint: Endpoint) -> None:
    endpoint.data = {"valid": True, "code": "VALID", "keyId": "key_1", "credits": 9, "enabled": True,
                     "permissions": ["read"], "roles": ["r"],
                     "identity": {"id": "id_1", "externalId": "acme"},
                     "ratelimits": [{"id": "rl_1", "name": "requests", "limit": 10, "duration": 60000,
                                     "reset": 1, "remaining": 8, "exceeded": False, "autoApply": True}],
                     "somethingNew": 1}
    verifier = remote(endpoint.url)
    result = verifier.verify(KEY, permissions="read", cost=2, ratelimits=["requests"], tags=("a=b",))
    assert (result.valid, result.key_id, result.credits, result.roles) == (True, "key_1", 9, ("r",))
    assert result.identity is not None and result.identity.external_id == "acme"
    assert result.ratelimits[0].remaining == 8 and result.ratelimits[0].auto_apply
    assert endpoint.bodies == [{"key": KEY, "permissions": "read", "credits": {"cost": 2},
                                "ratelimits": [{"name": "requests"}], "tags": ["a=b"]}]
    verifier.close()


def test_if_a_valid_answer_spent_nothing_then_it_is_cached_and_spending_ones_are_not(
    endpoint: Endpoint,
) -> None:
    verifier = remote(endpoint.url, cache_ttl=60)
    request = VerifyRequest()
    for _ in range(5):
        assert verifier.verify_request(KEY, request).valid
    assert len(endpoint.bodies) == 1
    endpoint.data = {**endpoint.data, "credits": 5}
    verifier.invalidate(None)
    for _ in range(3):
        assert verifier.verify_request(KEY, request).credits == 5
    assert len(endpoint.bodies) == 1 + 3  # every spending verify is forwarded
    verifier.close()


def test_if_the_remote_says_not_found_then_it_is_asked_again_only_after_negative_ttl(
    endpoint: Endpoint,
) -> None:
    endpoint.data = {"valid": False, "code": "NOT_FOUND"}
    now = [1_000_000]
    verifier = remote(endpoint.url, negative_ttl=2, now=lambda: now[0])
    assert [verifier.verify(KEY).code for _ in range(3)] == [Code.NOT_FOUND] * 3
    assert len(endpoint.bodies) == 1
    now[0] += 2_000
    verifier.verify(KEY)
    assert len(endpoint.bodies) == 2
    verifier.close()


def test_if_the_remote_keeps_failing_then_the_breaker_fails_fast_and_recovers(endpoint: Endpoint) -> None:
    endpoint.status = 500
    verifier = remote(endpoint.url, failures=3, cooldown=0.3)
    for _ in range(3):
        with pytest.raises(StoreUnavailableError, match="500"):
            verifier.verify(KEY)
    for _ in range(10):
        with pytest.raises(StoreUnavailableError, match="failing fast"):
            verifier.verify(KEY)
    assert len(endpoint.bodies) == 3  # open: nothing reached the remote
    endpoint.status = 200
    time.sleep(0.35)
    assert verifier.verify(KEY).valid  # half-open: one try, and it worked
    assert verifier.verify(KEY, cost=1).valid
    verifier.close()


async def test_if_the_half_open_trial_is_cancelled_then_a_later_call_tries_again(endpoint: Endpoint) -> None:
    import asyncio

    verifier = remote(endpoint.url, failures=1, cooldown=0.1, cache_ttl=0)
    endpoint.status = 500
    with pytest.raises(StoreUnavailableError):
        await verifier.verify_async(KEY)
    endpoint.status, endpoint.delay = 200, 0.3
    await asyncio.sleep(0.15)  # cooled down: the next call is the half-open trial
    trial = asyncio.create_task(verifier.verify_async(KEY))
    await asyncio.sleep(0.05)
    trial.cancel()  # asyncio.wait_for, a cancel scope, a server shutting down
    with pytest.raises(asyncio.CancelledError):
        await trial
    endpoint.delay = 0
    await asyncio.sleep(0.4)  # past the slow answer and the cooldown, many times over
    try:
        tried_again = (await verifier.verify_async(KEY)).valid
    except StoreUnavailableError:
        tried_again = False
    finally:
        verifier.close()
    assert tried_again, "the remote is healthy, but the breaker stays open after a cancelled trial"


def test_if_nothing_listens_then_connecting_is_retried_then_store_unavailable() -> None:
    verifier = remote(f"unkey+http://127.0.0.1:{free_port()}", retries=2)
    with pytest.raises(StoreUnavailableError, match="ConnectError"):
        verifier.verify(KEY)
    verifier.close()


def test_if_the_remote_hangs_then_the_read_timeout_answers(endpoint: Endpoint) -> None:
    endpoint.delay = 1.0
    verifier = remote(endpoint.url + "?timeout=0.2")
    started = time.monotonic()
    with pytest.raises(StoreUnavailableError, match="Timeout"):
        verifier.verify(KEY)
    assert time.monotonic() - started < 0.9
    assert len(endpoint.bodies) == 1  # a read timeout is not retried: it may have been applied
    verifier.close()


@pytest.mark.parametrize("status, error", [(412, "UnknownRatelimitError"), (401, "StoreUnavailableError"),
                                           (403, "StoreUnavailableError")])
def test_if_the_remote_refuses_then_the_error_says_why(endpoint: Endpoint, status: int, error: str) -> None:
    endpoint.status = status
    verifier = remote(endpoint.url)
    with pytest.raises(Exception) as caught:
        verifier.verify(KEY, ratelimits=["nope"])
    assert type(caught.value).__name__ == error
    verifier.close()


async def test_if_the_middleware_uses_a_remote_then_it_verifies_there_and_503s_when_down(
    endpoint: Endpoint, monkeypatch: pytest.MonkeyPatch,
) -> None:
    import httpx

    monkeypatch.setenv("KEYSTILE_ROOT_KEY", "unkey_root")

    async def ok(request: Request) -> JSONResponse:
        return JSONResponse({"keyId": request.scope["keystile"].key_id})

    app = Starlette(routes=[Route("/", ok)])
    app.add_middleware(KeyAuthMiddleware, store=endpoint.url + "?prefixes=sk_live", failures=1,
                       cooldown=60, fail_policy="open_cached")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        response = await c.get("/", headers={"authorization": f"Bearer {KEY}"})
        assert response.json() == {"keyId": "key_1"}
        endpoint.status = 503
        other = "sk_live_4yjuvpAMPt3UF3ZjYJcSwB"
        refused = await c.get("/", headers={"authorization": f"Bearer {other}"})
        assert refused.status_code == 503
        assert refused.headers["content-type"] == "application/problem+json"
        assert other not in refused.text
        # Known and cached: served while the breaker is open (open_cached).
        assert (await c.get("/", headers={"authorization": f"Bearer {KEY}"})).status_code == 200


@pytest.mark.parametrize("options, message", [
    ({"prefixes": []}, "prefixes"), ({"root_key": ""}, "root key"),
])
def test_if_the_remote_is_misconfigured_then_configuration_error(
    options: dict[str, Any], message: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("KEYSTILE_ROOT_KEY", raising=False)
    with pytest.raises(ConfigurationError, match=message):
        remote("unkey+http://127.0.0.1:1", **options)


def test_if_a_route_requires_an_api_id_on_a_remote_then_configuration_error_at_startup() -> None:
    with pytest.raises(ConfigurationError, match="api_id"):
        KeyAuthMiddleware(lambda *a: None, store="unkey+http://127.0.0.1:1?prefixes=sk_live",
                          root_key="r", api_id="api_1")


def test_free_port_is_free() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", free_port()))
