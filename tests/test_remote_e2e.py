"""keystile's remote backend against a real ``keystile serve``, end to end.

- The unkey-py scenario (every code; credits, rate limits, permissions, an identity)
  verified through :class:`RemoteVerifier` gets the answers unkey-py gets, step for
  step. Each verify may spend, so a key that spends (credits, rate limits) has a twin
  made with the same options: unkey-py verifies one, the remote backend the other,
  alternately, so both see the same states. Keys that spend nothing are shared.
- An app with ``KeyAuthMiddleware(store="unkey+http://…")`` in front of a server on
  SQLite and one on Redis: its answers, the credits spent on the server, the server
  killed mid-run (503 fast once the breaker is open; ``open_cached`` keeps admitting
  a key it verified before) and restarted on the same port and store (the app
  recovers by itself).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from served import Served, ServeProcess, new_api, served_on_sqlite, serving, unkey_client
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from unkey.py import Unkey

from keystile import KeyAuthMiddleware, VerifyResult
from keystile._remote import RemoteVerifier

HOUR = 3_600_000


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    yield from served_on_sqlite(tmp_path_factory, "remote-e2e")


@pytest.fixture
def unkey(served: Served) -> Iterator[Unkey]:
    yield from unkey_client(served)


_api = new_api


# -- the same scenario, two clients -------------------------------------------------------------

Step = tuple[str, dict[str, Any]]


def _unkey_request(request: dict[str, Any]) -> dict[str, Any]:
    """A step's request as unkey-py's ``verify_key`` arguments."""
    out: dict[str, Any] = {}
    if "permissions" in request:
        out["permissions"] = request["permissions"]
    if "cost" in request:
        out["credits"] = {"cost": request["cost"]}
    if "ratelimits" in request:
        out["ratelimits"] = [{"name": name} for name in request["ratelimits"]]
    if "tags" in request:
        out["tags"] = list(request["tags"])
    return out


def _seen_by_unkey(unkey: Unkey, key: str, request: dict[str, Any]) -> dict[str, Any]:
    data = unkey.keys.verify_key(key=key, **_unkey_request(request)).data
    seen: dict[str, Any] = data.model_dump(by_alias=True, exclude_none=True, mode="json")
    return seen


def _seen_by_remote(remote: RemoteVerifier, key: str, request: dict[str, Any]) -> dict[str, Any]:
    result: VerifyResult = remote.verify(key, **request)
    seen = result.to_dict()
    assert seen.pop("apiId", None) is None  # keys.verifyKey has no apiId; the backend invents none
    return seen


def _comparable(seen: dict[str, Any], *, twin: bool) -> dict[str, Any]:
    """What two twins must share: everything but their own ids (and a rate limit's
    window end, which a twin verified a moment later may see in the next window)."""
    if not twin:
        return seen
    out = {name: value for name, value in seen.items() if name != "keyId"}
    if "ratelimits" in out:
        out["ratelimits"] = sorted(({k: v for k, v in rl.items() if k not in ("id", "reset")}
                                    for rl in out["ratelimits"]), key=lambda rl: rl["name"])
    return out


def test_if_the_remote_backend_verifies_the_unkey_py_scenario_then_its_answers_are_unkey_pys(
    unkey: Unkey, served: Served,
) -> None:
    api_id = _api(unkey, "sk_same")
    unkey.permissions.create_role(name="twin-editor", permissions=["docs.read", "docs.write"])
    unkey.identities.create_identity(external_id="twin-owner", meta={"tier": "gold"}, ratelimits=[
        {"name": "shared", "limit": 100, "duration": 60_000, "auto_apply": False}])

    def create(**options: Any) -> str:
        return str(unkey.keys.create_key(api_id=api_id, **options).data.key)

    def twins(**options: Any) -> tuple[str, str]:
        return create(**options), create(**options)

    rich = create(roles=["twin-editor"], permissions=["docs.read"], external_id="twin-owner",
                  meta={"plan": "pro"}, name="rich")
    gone = create(expires=int(time.time() * 1000) - 60_000)
    off = create(enabled=False, name="off")
    keys: dict[str, tuple[str, str]] = {
        "rich": (rich, rich), "unknown": ("sk_same_" + "1" * 22,) * 2, "gone": (gone, gone),
        "off": (off, off),
        "limited": twins(ratelimits=[{"name": "requests", "limit": 1, "duration": HOUR,
                                      "auto_apply": True}]),
        "credited": twins(credits={"remaining": 3}, meta={"n": 1}),
        "numbers": twins(credits={"remaining": 10}, permissions=["docs.read"], ratelimits=[
            {"name": "requests", "limit": 5, "duration": HOUR, "auto_apply": True},
            {"name": "search", "limit": 1, "duration": HOUR, "auto_apply": False}]),
    }
    steps: list[Step] = [
        ("rich", {"permissions": "docs.read AND docs.write", "tags": ("path=/x",)}),
        ("unknown", {}), ("gone", {}), ("off", {}),
        ("rich", {"permissions": "docs.delete"}),
        ("limited", {}), ("limited", {}),
        ("credited", {"cost": 2}), ("credited", {"cost": 2}), ("credited", {}), ("credited", {}),
        ("numbers", {"cost": 4, "ratelimits": ("search",), "permissions": "docs.read"}),
        ("numbers", {"ratelimits": ("search",)}),
        ("numbers", {"cost": 7}),
        ("numbers", {"cost": 6, "permissions": "docs.write"}),
        ("numbers", {"cost": 6}),
    ]
    remote = RemoteVerifier(f"{served.remote_url}?prefixes=sk_same", root_key=served.root_key)
    try:
        answers = []
        for name, request in steps:  # alternately: unkey-py, then the remote backend
            mine, theirs = keys[name]
            answers.append((_seen_by_unkey(unkey, mine, request), _seen_by_remote(remote, theirs, request)))
    finally:
        remote.close()

    for (name, request), (by_unkey, by_remote) in zip(steps, answers, strict=True):
        twin = keys[name][0] != keys[name][1]
        assert _comparable(by_remote, twin=twin) == _comparable(by_unkey, twin=twin), (name, request)
    codes = [by_unkey["code"] for by_unkey, _ in answers]
    assert codes == [
        "VALID", "NOT_FOUND", "EXPIRED", "DISABLED", "INSUFFICIENT_PERMISSIONS",
        "VALID", "RATE_LIMITED",
        "VALID", "USAGE_EXCEEDED", "VALID", "USAGE_EXCEEDED",
        "VALID", "RATE_LIMITED", "USAGE_EXCEEDED", "INSUFFICIENT_PERMISSIONS", "VALID"]
    # The numbers the twins saw, step for step (equal on both sides, as asserted above); a
    # key refused for its permissions is not told its credits.
    credits = [(by_unkey.get("credits"), by_remote.get("credits")) for by_unkey, by_remote in answers]
    assert credits[7:] == [(1, 1), (1, 1), (0, 0), (0, 0), (6, 6), (6, 6), (6, 6), (None, None), (0, 0)]
    remaining = {(rl["name"], rl["remaining"], rl["exceeded"]) for rl in answers[11][1]["ratelimits"]}
    assert remaining == {("requests", 4, False), ("search", 0, False)}
    valid = answers[0][1]
    assert valid["roles"] == ["twin-editor"] and valid["permissions"] == ["docs.read", "docs.write"]
    assert valid["identity"]["externalId"] == "twin-owner" and valid["identity"]["meta"] == {"tier": "gold"}
    assert [rl["name"] for rl in valid["identity"]["ratelimits"]] == ["shared"]
    assert valid["meta"] == {"plan": "pro"} and valid["name"] == "rich"


# -- an app in front of the server, which dies and comes back -----------------------------------


async def _whoami(request: Request) -> JSONResponse:
    result: VerifyResult = request.scope["keystile"]
    return JSONResponse({"keyId": result.key_id, "credits": result.credits})


def _app_behind(url: str, **options: Any) -> KeyAuthMiddleware:
    inner = Starlette(routes=[Route("/whoami", _whoami)])
    return KeyAuthMiddleware(inner, store=url, permissions="docs.read", failures=2, cooldown=1.0,
                             **options)


@pytest.fixture(params=["sqlite", "redis"])
def server_store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'served.db'}"
    url: str = request.getfixturevalue("redis_store_url")
    return url


def _problem(response: httpx.Response) -> str:
    assert response.headers["content-type"] == "application/problem+json"
    code: str = response.json()["code"]
    return code


def _unavailable_causes(caplog: pytest.LogCaptureFixture) -> tuple[int, int]:
    """How many 503s came from a failed connection and how many from the open breaker."""
    messages = [r.getMessage() for r in caplog.records if "store unavailable" in r.getMessage()]
    return (sum("ConnectError" in m for m in messages),
            sum("failing fast after repeated failures" in m for m in messages))


async def test_if_an_app_verifies_through_keystile_serve_then_it_answers_and_survives_a_server_crash(
    server_store: str, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.WARNING, logger="keystile")
    with serving(server_store, tmp_path) as served, served.client() as unkey:
        api_id = _api(unkey, "sk_app")

        def create(**options: Any) -> Any:
            return unkey.keys.create_key(api_id=api_id, **options).data

        plain = create(permissions=["docs.read"])
        metered = create(permissions=["docs.read"], credits={"remaining": 5})
        spent = create(permissions=["docs.read"], credits={"remaining": 1})
        limited = create(permissions=["docs.read"], ratelimits=[
            {"name": "requests", "limit": 1, "duration": HOUR, "auto_apply": True}])
        reader = create()  # lacks docs.read
        off = create(permissions=["docs.read"], enabled=False)
        gone = create(permissions=["docs.read"], expires=int(time.time() * 1000) - 60_000)
        url = f"{served.remote_url}?prefixes=sk_app"
        # Fails closed; the root key passed as an option.
        closed = _app_behind(url, root_key=served.root_key)
        # Admits known keys while the server is away; the root key from the environment,
        # and no fresh cache (cache_ttl=0), so every request goes to the server while it is up.
        monkeypatch.setenv("KEYSTILE_ROOT_KEY", served.root_key)
        lenient = _app_behind(url, fail_policy="open_cached", cache_ttl=0)
        monkeypatch.delenv("KEYSTILE_ROOT_KEY")
        clients = [httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app")
                   for app in (closed, lenient)]
        try:
            strict_client, lenient_client = clients

            async def get(client: httpx.AsyncClient, key: str) -> httpx.Response:
                return await client.get("/whoami", headers={"authorization": f"Bearer {key}"})

            def remaining(key_id: str) -> int | None:
                credits = unkey.keys.get_key(key_id=key_id).data.credits
                return None if credits is None else credits.remaining

            # -- the server is up ------------------------------------------------------------
            ok = await get(strict_client, plain.key)
            assert (ok.status_code, ok.json()) == (200, {"keyId": plain.key_id, "credits": None})
            assert (await get(lenient_client, plain.key)).status_code == 200
            unknown = await get(strict_client, "sk_app_" + "1" * 22)
            assert (unknown.status_code, _problem(unknown)) == (401, "NOT_FOUND")
            assert unknown.headers["www-authenticate"].startswith("Bearer")
            expired = await get(strict_client, gone.key)
            assert (expired.status_code, _problem(expired)) == (401, "EXPIRED")
            disabled = await get(strict_client, off.key)
            assert (disabled.status_code, _problem(disabled)) == (403, "DISABLED")
            denied = await get(strict_client, reader.key)
            assert (denied.status_code, _problem(denied)) == (403, "INSUFFICIENT_PERMISSIONS")
            charged = [await get(strict_client, metered.key) for _ in range(2)]
            assert [(r.status_code, r.json()["credits"]) for r in charged] == [(200, 4), (200, 3)]
            assert remaining(metered.key_id) == 3  # spent on the server
            last = [await get(strict_client, spent.key) for _ in range(2)]
            assert [r.status_code for r in last] == [200, 429] and _problem(last[1]) == "USAGE_EXCEEDED"
            assert remaining(spent.key_id) == 0
            first, throttled = await get(strict_client, limited.key), await get(strict_client, limited.key)
            assert first.status_code == 200 and "ratelimit" in first.headers
            assert (throttled.status_code, _problem(throttled)) == (429, "RATE_LIMITED")
            assert int(throttled.headers["retry-after"]) > 0
            assert _unavailable_causes(caplog) == (0, 0)

            # -- the server dies mid-run ----------------------------------------------------------
            served.server.kill()
            down = [await get(strict_client, metered.key) for _ in range(5)]
            assert {(r.status_code, _problem(r)) for r in down} == {(503, "STORE_UNAVAILABLE")}
            assert all(r.headers["retry-after"] == "1" for r in down)
            assert metered.key not in "".join(r.text for r in down)
            # Two requests (failures=2) tried to connect; the breaker opened, and the three
            # after it answered at once, without trying.
            assert _unavailable_causes(caplog) == (2, 3)
            # A VALID answer that spent nothing is still fresh in the closed app's cache.
            assert (await get(strict_client, plain.key)).status_code == 200
            # open_cached: the key it verified before passes; one that spends, or that it
            # never saw, gets 503; another prefix never needed the server.
            assert (await get(lenient_client, plain.key)).json() == {"keyId": plain.key_id, "credits": None}
            assert (await get(lenient_client, metered.key)).status_code == 503
            assert (await get(lenient_client, "sk_app_" + "2" * 22)).status_code == 503
            assert (await get(lenient_client, "sk_else_" + "2" * 22)).status_code == 401
            assert (await get(lenient_client, plain.key)).status_code == 200  # breaker open too

            # -- the server comes back on the same port and store -----------------------------
            served.server.start()
            recovered = await _eventually(lambda: get(strict_client, metered.key))
            assert recovered.json() == {"keyId": metered.key_id, "credits": 2}
            assert remaining(metered.key_id) == 2  # the store kept what was spent before the crash
            fresh = create(permissions=["docs.read"])
            assert (await get(strict_client, fresh.key)).json() == {"keyId": fresh.key_id, "credits": None}
            assert (await get(strict_client, spent.key)).status_code == 429
            await _eventually(lambda: get(lenient_client, "sk_app_" + "2" * 22), status=401)
            assert (await get(lenient_client, metered.key)).json()["credits"] == 1
        finally:
            for client in clients:
                await client.aclose()
            closed.verifier.close()
            lenient.verifier.close()


async def _eventually(request: Callable[[], Any], status: int = 200, timeout: float = 10.0) -> httpx.Response:
    """Repeat ``request`` until it is answered ``status`` (while the breaker cools down)."""
    deadline = time.monotonic() + timeout
    while True:
        response: httpx.Response = await request()
        if response.status_code == status or time.monotonic() > deadline:
            assert response.status_code == status, response.text
            return response
        await asyncio.sleep(0.05)


async def test_if_a_key_is_revoked_before_the_server_dies_then_open_cached_does_not_admit_it(
    served: Served, tmp_path: Path,
) -> None:
    # A server of its own (killed below) on the module's store and root key; the key is
    # disabled through it, so its own cache knows at once.
    second = Served(ServeProcess(served.store, tmp_path / "second.log"), served.root_key)
    second.server.start()
    app = None
    try:
        with second.client() as unkey:
            created = unkey.keys.create_key(api_id=_api(unkey, "sk_rev"), permissions=["docs.read"]).data
            app = _app_behind(f"{second.remote_url}?prefixes=sk_rev", root_key=served.root_key,
                              fail_policy="open_cached", cache_ttl=0)
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                         base_url="http://app") as client:
                headers = {"authorization": f"Bearer {created.key}"}
                before = (await client.get("/whoami", headers=headers)).status_code
                unkey.keys.update_key(key_id=created.key_id, enabled=False)
                revoked = await client.get("/whoami", headers=headers)
                second.server.kill()
                during = await client.get("/whoami", headers=headers)
    finally:
        second.server.stop()
        if app is not None:
            app.verifier.close()

    assert (before, revoked.status_code, _problem(revoked)) == (200, 403, "DISABLED")
    assert during.status_code != 200, "a key the server said is disabled was admitted while it was down"
