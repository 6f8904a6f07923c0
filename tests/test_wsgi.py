"""KeyAuthWSGIMiddleware through real Flask and Django apps on a real SQLite store."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask, request
from werkzeug.test import TestResponse

from keystile import Credits, KeyAuthWSGIMiddleware, Keystile, RatelimitConfig, Refill
from tests.conftest import Clock


@pytest.fixture
def ks(sqlite_url: str, clock: Clock) -> Keystile:
    return Keystile(sqlite_url, now=clock)


@pytest.fixture
def api_id(ks: Keystile) -> str:
    return ks.create_api("shop", prefix="sk_shop").id


def flask_app(**options: Any) -> Flask:
    app = Flask("wsgi-test")

    @app.get("/")
    def whoami() -> dict[str, Any]:
        result = request.environ["keystile"]
        return {"keyId": None if result is None else result.key_id}

    app.wsgi_app = KeyAuthWSGIMiddleware(app.wsgi_app, **options)  # type: ignore[method-assign]
    return app


def get(app: Flask, key: str | None = None, **kwargs: Any) -> TestResponse:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return app.test_client().get("/", headers={**headers, **kwargs.pop("headers", {})}, **kwargs)


def problem(response: TestResponse) -> dict[str, Any]:
    assert response.headers["Content-Type"] == "application/problem+json"
    body: dict[str, Any] = response.get_json(force=True)
    assert body["status"] == response.status_code
    return body


def test_if_key_valid_then_result_is_in_the_environ(ks: Keystile, api_id: str) -> None:
    created = ks.create_key(api_id)
    response = get(flask_app(verifier=ks), created.key)
    assert response.status_code == 200
    assert response.get_json() == {"keyId": created.key_id}


def test_if_key_missing_then_401_with_bearer_challenge(ks: Keystile, api_id: str) -> None:
    response = get(flask_app(verifier=ks))
    assert response.status_code == 401
    assert problem(response)["code"] == "MISSING_KEY"
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="api"'


@pytest.mark.parametrize(("setup", "status", "code"), [
    ({"expires": 1}, 401, "EXPIRED"),
    ({"enabled": False}, 403, "DISABLED"),
])
def test_if_key_rejected_then_the_status_follows_the_code(
    ks: Keystile, api_id: str, setup: dict[str, Any], status: int, code: str
) -> None:
    response = get(flask_app(verifier=ks), ks.create_key(api_id, **setup).key)
    assert response.status_code == status
    assert problem(response)["code"] == code


def test_if_rate_limited_then_429_and_successes_carry_ratelimit_headers(
    ks: Keystile, api_id: str
) -> None:
    key = ks.create_key(api_id, ratelimits=[RatelimitConfig("requests", 1, 10_000, True)]).key
    app = flask_app(verifier=ks)
    first, second = get(app, key), get(app, key)
    assert first.headers["RateLimit"] == '"requests";r=0;t=10'
    assert second.status_code == 429
    assert problem(second)["code"] == "RATE_LIMITED"
    assert second.headers["Retry-After"] == "10"


def test_if_credits_run_out_then_429_with_retry_after_until_the_refill(
    ks: Keystile, api_id: str
) -> None:
    key = ks.create_key(api_id, credits=Credits(0, Refill("daily", 3))).key
    response = get(flask_app(verifier=ks), key)
    assert response.status_code == 429
    assert response.headers["Retry-After"] == str(12 * 3600)


@pytest.mark.parametrize("value", [
    "Bearer sk_shop_a, Bearer sk_shop_b",  # how WSGI servers join a repeated header
    "Basic dXNlcjpwYXNz",
    "Bearer " + "A" * 65536,
    "Bearer sk_shop_ünïcode",
])
def test_if_authorization_header_is_bad_then_401_problem(
    ks: Keystile, api_id: str, value: str
) -> None:
    response = flask_app(verifier=ks).test_client().get(
        "/", environ_overrides={"HTTP_AUTHORIZATION": value})
    assert response.status_code == 401
    assert problem(response)["code"] in ("MALFORMED_KEY", "NOT_FOUND")


def test_if_path_excluded_or_anonymous_allowed_then_no_key_is_needed(
    ks: Keystile, api_id: str
) -> None:
    assert get(flask_app(verifier=ks, exclude_paths=["/"])).get_json() == {"keyId": None}
    assert get(flask_app(verifier=ks, allow_anonymous=True)).status_code == 200
    assert get(flask_app(verifier=ks, allow_anonymous=True), "sk_shop_" + "2" * 22).status_code == 401


def test_if_custom_header_configured_then_the_bare_key_is_read_from_it(
    ks: Keystile, api_id: str
) -> None:
    key = ks.create_key(api_id).key
    app = flask_app(verifier=ks, header="X-API-Key")
    assert get(app, headers={"X-API-Key": key}).status_code == 200
    assert get(app, key).status_code == 401


def test_if_client_address_is_outside_the_whitelist_then_403(ks: Keystile) -> None:
    key = ks.create_key(ks.create_api("office", prefix="sk_off", ip_whitelist=["10.0.0.0/8"]).id).key
    app = flask_app(verifier=ks)
    assert get(app, key, environ_base={"REMOTE_ADDR": "192.168.0.9"}).status_code == 403
    assert get(app, key, environ_base={"REMOTE_ADDR": "10.9.8.7"}).status_code == 200


def test_if_store_cannot_answer_then_503_problem(ks: Keystile, api_id: str) -> None:
    key = ks.create_key(api_id, credits=5).key
    app = flask_app(verifier=ks)
    assert get(app, key).status_code == 200
    ks.store.close()
    response = get(app, key)
    assert response.status_code == 503
    assert problem(response)["code"] == "STORE_UNAVAILABLE"


def test_if_the_flask_example_runs_on_sqlite_then_it_answers_as_documented(
    ks: Keystile, api_id: str
) -> None:
    from keystile_examples.flask_app import build_app

    created = ks.create_key(api_id, permissions=["read"], credits=1)
    client = build_app(ks).test_client()
    assert client.get("/health").status_code == 200
    ok = client.get("/hello", headers={"Authorization": f"Bearer {created.key}"})
    assert ok.get_json() == {"keyId": created.key_id, "permissions": ["read"], "creditsLeft": 0}
    spent = client.get("/hello", headers={"Authorization": f"Bearer {created.key}"})
    assert spent.status_code == 429


_DJANGO_SCRIPT = """
import json, sys
from werkzeug.test import Client
from keystile import Keystile
from keystile_examples.django_app import build_app

ks = Keystile(sys.argv[1])
created = ks.create_key(ks.create_api("shop", prefix="sk_shop").id, permissions=["read"])
client = Client(build_app(ks))
ok = client.get("/hello", headers={"Authorization": "Bearer " + created.key})
print(json.dumps({
    "health": client.get("/health").status_code,
    "ok": ok.status_code, "body": ok.get_json(), "keyId": created.key_id,
    "missing": client.get("/hello").status_code,
}))
"""


def test_if_the_django_example_runs_on_sqlite_then_request_meta_has_the_result(
    sqlite_url: str,
) -> None:
    # Its own process: Django's settings are global, and other tests configure them too.
    import json
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-c", _DJANGO_SCRIPT, sqlite_url],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout)
    assert (seen["health"], seen["ok"], seen["missing"]) == (200, 200, 401)
    assert seen["body"] == {"keyId": seen["keyId"], "permissions": ["read"], "creditsLeft": None}


# -- the options of issue 5, the same as the ASGI middleware's ------------------------------


@pytest.fixture
def office_key(ks: Keystile) -> str:
    return ks.create_key(ks.create_api("office", prefix="sk_off", ip_whitelist=["10.0.0.0/8"]).id).key


def test_if_an_untrusted_peer_sends_a_whitelisted_x_forwarded_for_then_403(
    ks: Keystile, office_key: str
) -> None:
    for options in ({}, {"trusted_proxies": ["172.16.0.0/12"]}):
        response = get(flask_app(verifier=ks, **options), office_key,
                       headers={"X-Forwarded-For": "10.1.2.3"},
                       environ_base={"REMOTE_ADDR": "192.168.0.9"})
        assert response.status_code == 403
        assert problem(response)["code"] == "FORBIDDEN"


def test_if_a_trusted_proxy_forwards_a_whitelisted_client_then_it_passes(
    ks: Keystile, office_key: str
) -> None:
    app = flask_app(verifier=ks, trusted_proxies=["172.16.0.0/12"])
    proxy = {"REMOTE_ADDR": "172.16.0.1"}
    inside = get(app, office_key, headers={"X-Forwarded-For": "10.1.2.3"}, environ_base=proxy)
    spoofed = get(app, office_key, headers={"X-Forwarded-For": "10.1.2.3, 192.168.0.9"},
                  environ_base=proxy)
    assert inside.status_code == 200
    assert spoofed.status_code == 403


def test_if_the_proxy_uses_rfc_7239_forwarded_then_it_is_read(ks: Keystile, office_key: str) -> None:
    app = flask_app(verifier=ks, trusted_proxies=["172.16.0.0/12"], forwarded_header="Forwarded")
    response = get(app, office_key, headers={"Forwarded": "for=192.168.0.9, for=10.1.2.3"},
                   environ_base={"REMOTE_ADDR": "172.16.0.1"})
    assert response.status_code == 200


def test_if_query_keys_are_enabled_then_the_key_is_read_and_removed_from_the_environ(
    ks: Keystile, api_id: str
) -> None:
    created = ks.create_key(api_id)
    app = Flask("query-test")
    seen: dict[str, Any] = {}

    @app.get("/")
    def echo() -> dict[str, Any]:
        seen.update({name: request.environ.get(name)
                     for name in ("QUERY_STRING", "REQUEST_URI", "RAW_URI")})
        return {"keyId": request.environ["keystile"].key_id, "args": dict(request.args)}

    app.wsgi_app = KeyAuthWSGIMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, verifier=ks, query_param="api_key")
    response = app.test_client().get(f"/?page=2&api_key={created.key}")
    assert response.get_json() == {"keyId": created.key_id, "args": {"page": "2"}}
    assert seen == {"QUERY_STRING": "page=2", "REQUEST_URI": "/?page=2", "RAW_URI": "/?page=2"}


def test_if_the_key_is_in_both_header_and_query_then_401_ambiguous(ks: Keystile, api_id: str) -> None:
    key = ks.create_key(api_id).key
    app = flask_app(verifier=ks, query_param="api_key")
    assert get(app, query_string={"api_key": key}).status_code == 200
    response = get(app, key, query_string={"api_key": key})
    assert response.status_code == 401
    assert "both" in problem(response)["detail"]
    assert get(flask_app(verifier=ks), query_string={"api_key": key}).status_code == 401


def test_if_an_extractor_is_configured_then_it_sees_every_header(ks: Keystile, api_id: str) -> None:
    key = ks.create_key(api_id).key

    def from_cookie_like_header(headers: Any) -> str | None:
        assert headers["content-type"] == "text/plain"
        value: str | None = headers.get("x-client-key")
        return value

    app = flask_app(verifier=ks, extractor=from_cookie_like_header)
    response = get(app, headers={"X-Client-Key": key, "Content-Type": "text/plain"})
    assert response.status_code == 200
    assert problem(get(app, headers={"Content-Type": "text/plain"}))["code"] == "MISSING_KEY"


def test_if_a_credits_header_is_configured_then_successes_carry_the_remaining_credits(
    ks: Keystile, api_id: str
) -> None:
    key = ks.create_key(api_id, credits=2).key
    assert get(flask_app(verifier=ks, credits_header="X-Credits-Remaining"), key).headers[
        "X-Credits-Remaining"] == "1"
    assert "X-Credits-Remaining" not in get(flask_app(verifier=ks), key).headers
