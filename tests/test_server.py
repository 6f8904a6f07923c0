"""keystile serve in process: Unkey's v2 API over httpx's ASGI transport, on a real SQLite file.

Every answer is checked against the server's own OpenAPI document with an independent
JSON Schema validator (jsonschema-rs), so shapes cannot drift from what is published.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import jsonschema_rs
import pytest
from starlette.applications import Starlette

from keystile import Keystile, StoreUnavailableError
from keystile.server import OPERATIONS, ROOT_ACTIONS, ROOT_PREFIX, RootKeys, build_app
from keystile.server._errors import ApiError, error_response
from keystile.server._ops import Operation
from keystile.server._schema import obj

if TYPE_CHECKING:
    from conftest import Clock

EVERY_PERMISSION = [f"{group}.*.{action}" for group, actions in ROOT_ACTIONS.items()
                    for action in sorted(actions)]
ERROR_BASE = "https://unkey.com/docs/errors/"
HOUR = 3_600_000


class Server:
    """The app, its Keystile and a client; ``ok``/``fail`` check status, type and schema."""

    def __init__(self, app: Starlette, ks: Keystile, client: httpx.AsyncClient) -> None:
        self.app, self.ks, self.client = app, ks, client
        self.roots: RootKeys = app.state.root_keys
        self.root = self.root_key(*EVERY_PERMISSION)
        self.document: dict[str, Any] = {}  # the served /openapi.json, read by the fixture

    def root_key(self, *permissions: str) -> str:
        return self.roots.create(permissions).key

    async def post(self, operation: str, body: Any, *, key: str | None = "", **kwargs: Any) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}))
        if key is not None:
            headers.setdefault("authorization", f"Bearer {key or self.root}")
        if isinstance(body, (bytes, str)):
            return await self.client.post(f"/v2/{operation}", content=body, headers=headers, **kwargs)
        return await self.client.post(f"/v2/{operation}", json=body, headers=headers, **kwargs)

    def schema(self, operation: str, status: int) -> Any:
        responses = self.document["paths"][f"/v2/{operation}"]["post"]["responses"]
        return responses[str(status)]["content"]["application/json"]["schema"]

    async def answer(self, operation: str, body: Any, *, key: str | None = "") -> dict[str, Any]:
        response = await self.post(operation, body, key=key)
        payload = response.json()
        if response.status_code == 200:
            assert response.headers["content-type"] == "application/json"
            assert payload["meta"]["requestId"].startswith("req_")
        jsonschema_rs.Draft202012Validator(self.schema(operation, response.status_code)).validate(payload)
        return {"status": response.status_code, **payload}

    async def ok(self, operation: str, body: Any, *, key: str | None = "") -> Any:
        payload = await self.answer(operation, body, key=key)
        assert payload["status"] == 200, payload
        return payload["data"]

    async def fail(self, operation: str, body: Any, status: int, code: str, *,
                   key: str | None = "") -> dict[str, Any]:
        payload = await self.answer(operation, body, key=key)
        assert payload["status"] == status, payload
        assert payload["error"]["status"] == status
        assert payload["error"]["type"] == ERROR_BASE + code, payload
        error: dict[str, Any] = payload["error"]
        return error

    async def api(self, name: str = "payments", prefix: str = "sk_test") -> str:
        api_id: str = (await self.ok("apis.createApi", {"name": name}))["apiId"]
        if prefix:
            await self.ok("keys.createKey", {"apiId": api_id, "prefix": prefix})  # claims the prefix
        return api_id

    async def key(self, api_id: str, **fields: Any) -> dict[str, Any]:
        created: dict[str, Any] = await self.ok("keys.createKey", {"apiId": api_id, **fields})
        return created

    async def verify(self, key: str, **fields: Any) -> dict[str, Any]:
        data: dict[str, Any] = await self.ok("keys.verifyKey", {"key": key, **fields})
        return data


@pytest.fixture
async def server(tmp_path: Path, clock: Clock) -> AsyncIterator[Server]:
    ks = Keystile(f"sqlite:///{tmp_path / 'keys.db'}", now=clock)
    app = build_app(ks)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://keystile.test") as client:
        server = Server(app, ks, client)
        server.document = (await client.get("/openapi.json")).json()
        yield server
    ks.close()


# -- the envelope and the root key ---------------------------------------------------------


async def test_if_a_request_succeeds_then_the_answer_is_meta_and_data(server: Server) -> None:
    response = await server.post("apis.createApi", {"name": "payments"})

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert set(response.json()) == {"meta", "data"}
    assert response.json()["meta"]["requestId"].startswith("req_")
    assert response.json()["data"]["apiId"].startswith("api_")


async def test_if_two_requests_are_answered_then_their_request_ids_differ(server: Server) -> None:
    first = await server.post("apis.createApi", {"name": "one"})
    second = await server.post("apis.createApi", {"name": "two"})

    assert first.json()["meta"]["requestId"] != second.json()["meta"]["requestId"]


async def test_if_the_authorization_header_is_missing_then_400_as_unkey_answers(server: Server) -> None:
    error = await server.fail("apis.createApi", {"name": "payments"}, 400,
                              "unkey/authentication/missing", key=None)

    assert error["errors"][0]["location"] == "header.Authorization"
    assert error["title"] == "Bad Request"


@pytest.mark.parametrize("header", ["Basic abc", "Bearer", "Bearer a b", "ks-root_abc"])
async def test_if_the_authorization_header_is_malformed_then_400(server: Server, header: str) -> None:
    response = await server.post("apis.createApi", {"name": "payments"}, key=None,
                                 headers={"authorization": header})

    assert response.status_code == 400
    assert response.json()["error"]["type"] == ERROR_BASE + "unkey/authentication/malformed"
    assert response.json()["error"]["errors"]


async def test_if_the_root_key_is_unknown_then_401(server: Server) -> None:
    unknown = f"{ROOT_PREFIX}_{'1' * 43}"

    error = await server.fail("apis.createApi", {"name": "payments"}, 401,
                              "unkey/authentication/key_not_found", key=unknown)

    assert error["title"] == "Unauthorized" and "errors" not in error


async def test_if_a_user_key_is_sent_as_root_key_then_401(server: Server) -> None:
    api_id = await server.api()
    user_key = (await server.key(api_id))["key"]

    await server.fail("apis.createApi", {"name": "payments"}, 401,
                      "unkey/authentication/key_not_found", key=user_key)


async def test_if_a_root_key_is_deleted_then_it_gets_401_at_once(server: Server) -> None:
    root = server.roots.create(["api.*.create_api"])
    await server.ok("apis.createApi", {"name": "payments"}, key=root.key)

    server.roots.delete(root.key_id)

    await server.fail("apis.createApi", {"name": "payments"}, 401,
                      "unkey/authentication/key_not_found", key=root.key)


async def test_if_a_root_key_is_disabled_or_expired_then_403_or_401(server: Server, clock: Clock) -> None:
    disabled = server.roots.create(["api.*.create_api"])
    expiring = server.roots.create(["api.*.create_api"])
    server.ks.update_key(disabled.key_id, enabled=False)
    server.ks.update_key(expiring.key_id, expires=clock.ms + 10)
    clock.advance(11)

    error = await server.fail("apis.createApi", {"name": "x1x"}, 403,
                              "unkey/authorization/key_disabled", key=disabled.key)
    await server.fail("apis.createApi", {"name": "x1x"}, 401, "unkey/authentication/key_not_found",
                      key=expiring.key)
    assert error["title"] == "Key is disabled"


async def test_if_the_root_key_lacks_the_permission_then_403_naming_it(server: Server) -> None:
    reader = server.root_key("api.*.read_api")

    error = await server.fail("apis.createApi", {"name": "payments"}, 403,
                              "unkey/authorization/insufficient_permissions", key=reader)

    assert "api.*.create_api" in error["detail"]
    assert error["title"] == "Insufficient Permissions"


async def test_if_a_root_key_may_act_on_one_api_then_other_apis_are_403(server: Server) -> None:
    mine, other = await server.api("mine", "sk_mine"), await server.api("other", "sk_other")
    scoped = server.root_key(f"api.{mine}.create_key", f"api.{mine}.read_api")

    await server.ok("keys.createKey", {"apiId": mine}, key=scoped)
    await server.ok("apis.getApi", {"apiId": mine}, key=scoped)
    await server.fail("keys.createKey", {"apiId": other}, 403,
                      "unkey/authorization/insufficient_permissions", key=scoped)
    await server.fail("apis.getApi", {"apiId": other}, 403,
                      "unkey/authorization/insufficient_permissions", key=scoped)


async def test_if_root_keys_are_stored_then_only_their_hash_is(server: Server) -> None:
    created = server.roots.create(["api.*.verify_key"])

    docs = server.ks.store.scan_all("key")

    digest = base64.b64encode(hashlib.sha256(created.key.encode()).digest()).decode()
    assert [doc["hash"] for doc in docs if doc["id"] == created.key_id] == [digest]
    assert created.key not in json.dumps(docs)
    assert created.key.startswith(ROOT_PREFIX + "_")


async def test_if_root_keys_are_listed_then_their_permissions_show_and_never_the_key(
    server: Server,
) -> None:
    created = server.roots.create(["api.*.verify_key", "api.*.create_key"], name="ci")

    listed = [item for item in server.roots.list() if item["keyId"] == created.key_id]

    assert listed == [{"keyId": created.key_id, "start": created.key[:len(ROOT_PREFIX) + 5],
                       "createdAt": listed[0]["createdAt"], "name": "ci",
                       "permissions": ["api.*.create_key", "api.*.verify_key"]}]


@pytest.mark.parametrize("permission", ["api.*.verfy_key", "apis.*.verify_key", "api.verify_key",
                                        "api.a b.verify_key", ""])
def test_if_a_root_key_permission_is_malformed_then_validation_error(
    server: Server, permission: str,
) -> None:
    from keystile import ValidationError

    with pytest.raises(ValidationError, match="root key permission"):
        server.roots.create([permission])


def test_if_a_root_key_gets_no_permission_then_validation_error(server: Server) -> None:
    from keystile import ValidationError

    with pytest.raises(ValidationError, match="at least one"):
        server.roots.create([])


async def test_if_root_keys_are_asked_for_through_the_api_then_they_do_not_exist(server: Server) -> None:
    root = server.roots.create(["api.*.read_key"])
    root_api = server.roots.api_id()

    assert await server.verify(root.key) == {"valid": False, "code": "NOT_FOUND"}
    await server.fail("keys.whoami", {"key": root.key}, 404, "unkey/data/key_not_found")
    await server.fail("keys.getKey", {"keyId": root.key_id}, 404, "unkey/data/key_not_found")
    await server.fail("keys.updateKey", {"keyId": root.key_id, "meta": {}}, 404,
                      "unkey/data/key_not_found")
    await server.fail("keys.addPermissions", {"keyId": root.key_id, "permissions": ["x"]}, 404,
                      "unkey/data/key_not_found")
    await server.fail("keys.rerollKey", {"keyId": root.key_id, "expiration": 0}, 404,
                      "unkey/data/key_not_found")
    await server.fail("keys.deleteKey", {"keyId": root.key_id}, 404, "unkey/data/key_not_found")
    for operation in ("apis.getApi", "apis.listKeys", "apis.deleteApi", "keys.createKey"):
        await server.fail(operation, {"apiId": root_api}, 404, "unkey/data/api_not_found")
    await server.ok("apis.createApi", {"name": "x1x"}, key=server.root)  # still works


# -- request validation and other errors ------------------------------------------------------


async def test_if_a_field_is_unknown_then_400_names_it(server: Server) -> None:
    error = await server.fail("apis.getApi", {"apiId": "api_12345678", "extra": 1}, 400,
                              "unkey/application/invalid_input")

    assert error["errors"] == [{"location": "body.extra", "message": "is not a known field",
                                "fix": "remove it; the fields are apiId"}]


async def test_if_fields_are_missing_or_of_the_wrong_type_then_each_is_reported(server: Server) -> None:
    error = await server.fail("apis.listKeys", {"limit": "ten", "cursor": ""}, 400,
                              "unkey/application/invalid_input")

    assert {(e["location"], e["message"]) for e in error["errors"]} == {
        ("body.apiId", "is required"), ("body.limit", "must be an integer"),
        ("body.cursor", "must be at least 1 characters long")}


async def test_if_a_nested_field_is_invalid_then_its_location_is_its_path(server: Server) -> None:
    api_id = await server.api()

    error = await server.fail("keys.createKey", {"apiId": api_id, "ratelimits": [
        {"name": "requests", "limit": 1, "duration": 60_000},
        {"name": "burst", "limit": 0, "duration": 60_000}]}, 400, "unkey/application/invalid_input")

    assert [e["location"] for e in error["errors"]] == ["body.ratelimits[1].limit"]


@pytest.mark.parametrize("body", [b"{not json", b"", b'{"name": NaN}'])
async def test_if_the_body_is_not_json_then_400_unreadable(server: Server, body: bytes) -> None:
    await server.fail("apis.createApi", body, 400, "user/bad_request/request_body_unreadable")


@pytest.mark.parametrize("body", [[], "payments", 3, None])
async def test_if_the_body_is_json_but_not_an_object_then_400_at_body(server: Server, body: Any) -> None:
    error = await server.fail("apis.createApi", json.dumps(body), 400, "unkey/application/invalid_input")

    assert error["errors"][0]["location"] == "body"


async def test_if_the_body_is_too_large_then_413(server: Server) -> None:
    response = await server.post("apis.createApi", {"name": "x" * (1 << 20)})

    assert response.status_code == 413
    assert response.json()["error"]["type"] == ERROR_BASE + "user/bad_request/request_body_too_large"


async def test_if_a_path_is_unknown_or_the_method_wrong_then_unkey_shaped_json(server: Server) -> None:
    missing = await server.client.post("/v2/keys.nothing", json={})
    wrong = await server.client.get("/v2/keys.verifyKey")

    assert missing.status_code == 404 and missing.json()["error"]["status"] == 404
    assert wrong.status_code == 405 and wrong.headers["allow"] == "POST"
    assert wrong.headers["content-type"] == "application/json"


async def test_if_the_client_asks_for_problem_json_then_errors_come_as_problem_json(server: Server) -> None:
    response = await server.post("apis.getApi", {}, headers={"accept": "application/problem+json"})

    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"


def test_if_an_error_is_429_then_it_is_problem_json_as_unkey_py_expects() -> None:
    limited = error_response(ApiError(429, "user/too_many_requests/workspace_rate_limited", "slow"),
                             "req_1", "application/json")
    other = error_response(ApiError(404, "unkey/data/key_not_found", "no"), "req_1",
                           "application/json")

    assert limited.headers["content-type"] == "application/problem+json"
    assert other.headers["content-type"] == "application/json"
    assert json.loads(bytes(limited.body))["error"]["title"] == "Too Many Requests"


async def test_if_something_unexpected_fails_then_500_without_details_and_it_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(call: Any, body: Any) -> Any:
        raise RuntimeError("secret internals")

    ks = Keystile(f"sqlite:///{tmp_path / 'k.db'}")
    app = build_app(ks, operations=[Operation("test.broken", broken, obj({}), obj({}), "breaks")])
    root = RootKeys(ks).create(["api.*.read_key"]).key
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        with caplog.at_level(logging.ERROR, logger="keystile.server"):
            response = await client.post("/v2/test.broken", json={},
                                         headers={"authorization": f"Bearer {root}"})
    ks.close()

    assert response.status_code == 500
    assert response.json()["error"]["type"] == ERROR_BASE + "unkey/application/unexpected_error"
    assert "secret internals" not in response.text and "Traceback" not in response.text
    assert response.json()["meta"]["requestId"] in response.json()["error"]["detail"]
    assert "test.broken failed unexpectedly" in caplog.text and root not in caplog.text


async def test_if_the_store_cannot_answer_then_503_with_retry_after(server: Server) -> None:
    server.ks.store.close()

    response = await server.post("apis.createApi", {"name": "payments"})

    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert response.json()["error"]["type"] == ERROR_BASE + "unkey/application/service_unavailable"


# -- keys.verifyKey -----------------------------------------------------------------------------


async def test_if_keys_are_verified_then_every_code_comes_with_200(server: Server, clock: Clock) -> None:
    api_id = await server.api()
    role = {"name": "admin", "permissions": ["docs.read", "docs.write"]}
    await server.ok("permissions.createRole", role)
    valid = await server.key(api_id, permissions=["docs.read"], roles=["admin"])
    disabled = await server.key(api_id, enabled=False)
    expired = await server.key(api_id, expires=clock.ms - 1)
    limited = await server.key(api_id, ratelimits=[
        {"name": "requests", "limit": 1, "duration": HOUR, "autoApply": True}])
    spent = await server.key(api_id, credits={"remaining": 1})

    codes = [
        (await server.verify(valid["key"], permissions="docs.read AND docs.write"))["code"],
        (await server.verify("sk_test_" + "1" * 22))["code"],
        (await server.verify(disabled["key"]))["code"],
        (await server.verify(expired["key"]))["code"],
        (await server.verify(valid["key"], permissions="docs.delete"))["code"],
        (await server.verify(limited["key"]))["code"], (await server.verify(limited["key"]))["code"],
        (await server.verify(spent["key"]))["code"], (await server.verify(spent["key"]))["code"],
    ]

    assert codes == ["VALID", "NOT_FOUND", "DISABLED", "EXPIRED", "INSUFFICIENT_PERMISSIONS",
                     "VALID", "RATE_LIMITED", "VALID", "USAGE_EXCEEDED"]


async def test_if_a_key_is_verified_then_the_answer_has_unkeys_fields_only(server: Server) -> None:
    api_id = await server.api()
    created = await server.key(api_id, name="prod", meta={"plan": "pro"}, externalId="acme",
                               credits={"remaining": 10}, permissions=["docs.read"],
                               ratelimits=[{"name": "requests", "limit": 5, "duration": HOUR,
                                            "autoApply": True}])

    data = await server.verify(created["key"], credits={"cost": 3}, tags=["path=/x"])

    assert data["valid"] is True and data["credits"] == 7 and data["keyId"] == created["keyId"]
    assert (data["name"], data["meta"], data["permissions"]) == ("prod", {"plan": "pro"}, ["docs.read"])
    assert data["identity"]["externalId"] == "acme" and data["enabled"] is True
    assert data["ratelimits"][0]["remaining"] == 4 and data["ratelimits"][0]["autoApply"] is True
    assert "apiId" not in data and data["keyspaceId"].startswith("ks_")


async def test_if_an_unknown_key_is_verified_then_only_valid_and_code_come_back(server: Server) -> None:
    await server.api()

    for key in ("sk_test_" + "1" * 22, "nonsense", "x" * 512):
        assert await server.verify(key) == {"valid": False, "code": "NOT_FOUND"}


async def test_if_verify_names_an_unknown_rate_limit_then_412_precondition_failed(server: Server) -> None:
    api_id = await server.api()
    created = await server.key(api_id)

    error = await server.fail("keys.verifyKey", {"key": created["key"], "ratelimits": [{"name": "nope"}]},
                              412, "unkey/application/precondition_failed")

    assert "nope" in error["detail"]


async def test_if_verify_gives_an_ad_hoc_rate_limit_then_it_applies_with_an_empty_id(server: Server) -> None:
    created = await server.key(await server.api())
    adhoc = {"name": "search", "limit": 1, "duration": HOUR}

    first = await server.verify(created["key"], ratelimits=[adhoc])
    second = await server.verify(created["key"], ratelimits=[adhoc])

    assert (first["code"], second["code"]) == ("VALID", "RATE_LIMITED")
    assert first["ratelimits"][0]["id"] == ""


async def test_if_a_permission_query_does_not_parse_then_400_syntax_error(server: Server) -> None:
    created = await server.key(await server.api())

    error = await server.fail("keys.verifyKey", {"key": created["key"], "permissions": "a AND ("},
                              400, "user/bad_request/permissions_query_syntax_error")

    assert error["errors"][0]["location"] == "body.permissions"


async def test_if_cost_is_zero_then_credits_are_checked_without_spending(server: Server) -> None:
    created = await server.key(await server.api(), credits={"remaining": 1})

    free = await server.verify(created["key"], credits={"cost": 0})
    paid = await server.verify(created["key"])

    assert (free["code"], free["credits"], paid["credits"]) == ("VALID", 1, 0)


async def test_if_verify_gives_keyspaces_then_keys_of_others_are_not_found_and_unspent(
    server: Server,
) -> None:
    created = await server.key(await server.api(), credits={"remaining": 5})
    keyspace = (await server.verify(created["key"], credits={"cost": 0}))["keyspaceId"]

    outside = await server.verify(created["key"], keyspaces=["ks_other"])
    inside = await server.verify(created["key"], keyspaces=[keyspace])

    assert outside == {"valid": False, "code": "NOT_FOUND"}
    assert (inside["code"], inside["credits"]) == ("VALID", 4)


async def test_if_a_root_key_may_verify_one_api_then_keys_of_others_are_not_found_unspent(
    server: Server,
) -> None:
    mine, other = await server.api("mine", "sk_mine"), await server.api("other", "sk_other")
    scoped = server.root_key(f"api.{mine}.verify_key")
    own = await server.key(mine)
    foreign = await server.key(other, credits={"remaining": 3})

    assert (await server.ok("keys.verifyKey", {"key": own["key"]}, key=scoped))["code"] == "VALID"
    assert await server.ok("keys.verifyKey", {"key": foreign["key"]}, key=scoped) == {
        "valid": False, "code": "NOT_FOUND"}
    assert (await server.verify(foreign["key"], credits={"cost": 0}))["credits"] == 3


async def test_if_a_root_key_may_verify_nothing_then_403(server: Server) -> None:
    created = await server.key(await server.api())

    await server.fail("keys.verifyKey", {"key": created["key"]}, 403,
                      "unkey/authorization/insufficient_permissions",
                      key=server.root_key("api.*.create_key"))


async def test_if_the_keyspace_has_an_ip_whitelist_then_other_clients_are_forbidden(server: Server) -> None:
    api = server.ks.create_api("internal", prefix="sk_int", ip_whitelist=["10.0.0.0/8"])
    created = await server.key(api.id)

    assert (await server.verify(created["key"]))["code"] == "FORBIDDEN"  # the client is 127.0.0.1


async def test_if_an_api_is_deleted_then_its_keys_verify_as_not_found(server: Server) -> None:
    api_id = await server.api()
    created = await server.key(api_id)

    await server.ok("apis.deleteApi", {"apiId": api_id})

    assert await server.verify(created["key"]) == {"valid": False, "code": "NOT_FOUND"}
    await server.fail("keys.getKey", {"keyId": created["keyId"]}, 404, "unkey/data/key_not_found")


# -- keys.createKey ---------------------------------------------------------------------------------


async def test_if_a_key_is_created_with_every_option_then_get_key_shows_them(
    server: Server, clock: Clock,
) -> None:
    api_id = await server.api()
    await server.ok("permissions.createRole", {"name": "admin"})

    created = await server.key(
        api_id, prefix="sk_test", name="prod", byteLength=24, externalId="acme", meta={"plan": "pro"},
        roles=["admin"], permissions=["docs.read"], expires=clock.ms + HOUR, enabled=True,
        recoverable=False, credits={"remaining": 10, "refill": {"interval": "monthly", "amount": 10,
                                                                 "refillDay": 1}},
        ratelimits=[{"name": "requests", "limit": 5, "duration": 60_000, "autoApply": True}])
    data = await server.ok("keys.getKey", {"keyId": created["keyId"]})

    assert created["key"].startswith("sk_test_") and created["keyId"].startswith("key_")
    assert data["start"] == created["key"][:12]
    assert (data["name"], data["meta"], data["expires"]) == ("prod", {"plan": "pro"}, clock.ms + HOUR)
    assert (data["roles"], data["permissions"]) == (["admin"], ["docs.read"])
    assert data["credits"] == {"remaining": 10, "refill": {"interval": "monthly", "amount": 10,
                                                          "refillDay": 1}}
    assert data["identity"]["externalId"] == "acme"
    assert data["ratelimits"][0]["name"] == "requests" and data["ratelimits"][0]["id"].startswith("rl_")
    assert "apiId" not in data and "plaintext" not in data


async def test_if_the_first_key_of_a_new_api_names_a_prefix_then_later_keys_must_share_it(
    server: Server,
) -> None:
    api_id = (await server.ok("apis.createApi", {"name": "payments"}))["apiId"]

    first = await server.key(api_id, prefix="sk_live")
    second = await server.key(api_id)
    error = await server.fail("keys.createKey", {"apiId": api_id, "prefix": "sk_test"}, 400,
                              "unkey/application/invalid_input")

    assert first["key"].startswith("sk_live_") and second["key"].startswith("sk_live_")
    assert error["errors"][0]["location"] == "body.prefix" and "sk_live" in error["errors"][0]["message"]


async def test_if_a_prefix_belongs_to_another_api_then_400_at_prefix(server: Server) -> None:
    await server.api("first", "sk_live")
    api_id = (await server.ok("apis.createApi", {"name": "second"}))["apiId"]

    error = await server.fail("keys.createKey", {"apiId": api_id, "prefix": "sk_live"}, 400,
                              "unkey/application/invalid_input")

    assert error["errors"][0]["location"] == "body.prefix"


@pytest.mark.parametrize(("field", "value"), [("byteLength", 33), ("prefix", "toolongprefix"),
                                              ("externalId", "a b"), ("expires", -1)])
async def test_if_a_create_key_field_is_out_of_keystiles_range_then_400_at_it(
    server: Server, field: str, value: Any,
) -> None:
    api_id = await server.api()

    error = await server.fail("keys.createKey", {"apiId": api_id, field: value}, 400,
                              "unkey/application/invalid_input")

    assert error["errors"][0]["location"] == f"body.{field}"


async def test_if_credits_refill_without_a_limit_then_400_at_credits(server: Server) -> None:
    api_id = await server.api()

    error = await server.fail("keys.createKey", {"apiId": api_id, "credits": {
        "remaining": None, "refill": {"interval": "daily", "amount": 5}}}, 400,
                              "unkey/application/invalid_input")

    assert error["errors"][0]["location"] == "body.credits"


async def test_if_a_key_names_a_missing_role_or_api_then_404(server: Server) -> None:
    api_id = await server.api()

    await server.fail("keys.createKey", {"apiId": api_id, "roles": ["ghost"]}, 404,
                      "unkey/data/role_not_found")
    await server.fail("keys.createKey", {"apiId": "api_missing"}, 404, "unkey/data/api_not_found")


async def test_if_new_permissions_are_named_then_only_a_root_key_that_may_create_them_can(
    server: Server,
) -> None:
    api_id = await server.api()
    creator = server.root_key("api.*.create_key")
    await server.ok("permissions.createPermission", {"name": "read", "slug": "docs.read"})

    await server.ok("keys.createKey", {"apiId": api_id, "permissions": ["docs.read"]}, key=creator)
    error = await server.fail("keys.createKey", {"apiId": api_id, "permissions": ["docs.new"]}, 403,
                              "unkey/authorization/insufficient_permissions", key=creator)

    assert "docs.new" in error["detail"] and "rbac.*.create_permission" in error["detail"]


# -- reading and changing keys -----------------------------------------------------------------------


async def test_if_whoami_gets_a_key_then_it_answers_its_data_without_spending(server: Server) -> None:
    created = await server.key(await server.api(), credits={"remaining": 2})

    data = await server.ok("keys.whoami", {"key": created["key"]})

    assert data["keyId"] == created["keyId"] and data["credits"]["remaining"] == 2
    await server.fail("keys.whoami", {"key": "sk_test_" + "1" * 22}, 404, "unkey/data/key_not_found")


async def test_if_a_key_is_updated_then_omitted_fields_stay_and_null_clears(
    server: Server, clock: Clock,
) -> None:
    created = await server.key(await server.api(), name="prod", meta={"a": 1}, externalId="acme",
                               expires=clock.ms + HOUR, permissions=["docs.read"])

    assert await server.ok("keys.updateKey", {"keyId": created["keyId"], "name": None,
                                              "externalId": None, "enabled": False,
                                              "permissions": ["docs.write"]}) == {}
    data = await server.ok("keys.getKey", {"keyId": created["keyId"]})

    assert "name" not in data and "identity" not in data and data["enabled"] is False
    assert (data["meta"], data["expires"], data["permissions"]) == ({"a": 1}, clock.ms + HOUR,
                                                                    ["docs.write"])
    assert (await server.verify(created["key"]))["code"] == "DISABLED"


async def test_if_credits_are_updated_partly_then_unkeys_rules_apply(server: Server) -> None:
    created = await server.key(await server.api(), credits={
        "remaining": 5, "refill": {"interval": "daily", "amount": 5}})
    key_id = created["keyId"]

    await server.ok("keys.updateKey", {"keyId": key_id, "credits": {"refill": {
        "interval": "daily", "amount": 9}}})
    refilled = (await server.ok("keys.getKey", {"keyId": key_id}))["credits"]
    await server.ok("keys.updateKey", {"keyId": key_id, "credits": {"remaining": 3}})
    reset = (await server.ok("keys.getKey", {"keyId": key_id}))["credits"]
    await server.ok("keys.updateKey", {"keyId": key_id, "credits": None})
    unlimited = (await server.ok("keys.getKey", {"keyId": key_id})).get("credits")

    assert refilled == {"remaining": 5, "refill": {"interval": "daily", "amount": 9}}
    assert reset == {"remaining": 3}  # setting remaining drops the refill
    assert unlimited is None


async def test_if_only_the_refill_is_updated_then_credits_spent_stay_spent(server: Server) -> None:
    api_id = await server.api()
    created = await server.key(api_id, credits={"remaining": 5})
    unlimited = await server.key(api_id)
    for _ in range(2):
        assert (await server.verify(created["key"]))["valid"]

    await server.ok("keys.updateKey", {"keyId": created["keyId"], "credits": {}})
    untouched = (await server.ok("keys.getKey", {"keyId": created["keyId"]}))["credits"]
    await server.ok("keys.updateKey", {"keyId": created["keyId"], "credits": {"refill": {
        "interval": "monthly", "amount": 20, "refillDay": 3}}})
    refilling = (await server.ok("keys.getKey", {"keyId": created["keyId"]}))["credits"]
    failed = await server.fail("keys.updateKey", {"keyId": unlimited["keyId"], "credits": {"refill": {
        "interval": "daily", "amount": 5}}}, 400, "unkey/application/invalid_input")

    assert untouched == {"remaining": 3}
    assert refilling == {"remaining": 3, "refill": {"interval": "monthly", "amount": 20, "refillDay": 3}}
    assert "limited credits" in failed["detail"]


async def test_if_permissions_are_added_and_removed_then_the_key_keeps_the_others(server: Server) -> None:
    created = await server.key(await server.api(), permissions=["docs.read"])
    await server.ok("permissions.createPermission", {"name": "docs.write", "slug": "docs.write"})

    added = await server.ok("keys.addPermissions", {"keyId": created["keyId"],
                                                    "permissions": ["docs.write"]})
    removed = await server.ok("keys.removePermissions", {"keyId": created["keyId"],
                                                         "permissions": ["docs.read"]})

    assert sorted(p["slug"] for p in added) == ["docs.read", "docs.write"]
    assert [p["slug"] for p in removed] == ["docs.write"]


async def test_if_rate_limits_are_replaced_then_names_kept_keep_their_ids(server: Server) -> None:
    created = await server.key(await server.api(), ratelimits=[
        {"name": "requests", "limit": 5, "duration": 60_000, "autoApply": True}])
    before = (await server.ok("keys.getKey", {"keyId": created["keyId"]}))["ratelimits"]

    await server.ok("keys.updateKey", {"keyId": created["keyId"], "ratelimits": [
        {"name": "requests", "limit": 9, "duration": 60_000, "autoApply": True},
        {"name": "burst", "limit": 2, "duration": 1000}]})
    after = (await server.ok("keys.getKey", {"keyId": created["keyId"]}))["ratelimits"]

    assert after[0] == {**before[0], "limit": 9}
    assert after[1]["name"] == "burst" and after[1]["autoApply"] is False


@pytest.mark.parametrize(("operation", "value", "expected"), [
    ("set", 7, {"remaining": 7}), ("set", None, {"remaining": None}),
    ("increment", 3, {"remaining": 8}), ("decrement", 9, {"remaining": 0}),
])
async def test_if_credits_are_set_incremented_or_decremented_then_the_new_balance_comes_back(
    server: Server, operation: str, value: int | None, expected: dict[str, Any],
) -> None:
    created = await server.key(await server.api(), credits={"remaining": 5})

    data = await server.ok("keys.updateCredits", {"keyId": created["keyId"], "operation": operation,
                                                  "value": value})

    assert data == expected


async def test_if_credits_change_without_a_value_or_on_unlimited_keys_then_400(server: Server) -> None:
    unlimited = await server.key(await server.api())

    missing = await server.fail("keys.updateCredits", {"keyId": unlimited["keyId"],
                                                       "operation": "increment"},
                                400, "unkey/application/invalid_input")
    await server.fail("keys.updateCredits", {"keyId": unlimited["keyId"], "operation": "increment",
                                             "value": 1}, 400, "unkey/application/invalid_input")

    assert missing["errors"][0]["location"] == "body.value"


async def test_if_a_key_is_deleted_then_it_verifies_as_not_found_and_is_gone(server: Server) -> None:
    api_id = await server.api()
    soft, hard = await server.key(api_id), await server.key(api_id)

    await server.ok("keys.deleteKey", {"keyId": soft["keyId"]})
    await server.ok("keys.deleteKey", {"keyId": hard["keyId"], "permanent": True})

    for created in (soft, hard):
        assert (await server.verify(created["key"]))["code"] == "NOT_FOUND"
        await server.fail("keys.getKey", {"keyId": created["keyId"]}, 404, "unkey/data/key_not_found")
    assert server.ks.store.get("key", hard["keyId"]) is None


async def test_if_a_key_is_rerolled_then_the_new_one_works_and_the_old_one_expires(
    server: Server, clock: Clock,
) -> None:
    old = await server.key(await server.api(), permissions=["docs.read"], credits={"remaining": 4})

    new = await server.ok("keys.rerollKey", {"keyId": old["keyId"], "expiration": 1000})
    still = await server.verify(old["key"], credits={"cost": 0})
    clock.advance(1001)

    assert new["key"].startswith("sk_test_") and new["keyId"] != old["keyId"]
    assert still["code"] == "VALID"
    assert (await server.verify(old["key"]))["code"] == "EXPIRED"
    fresh = await server.verify(new["key"], permissions="docs.read")
    assert (fresh["code"], fresh["credits"]) == ("VALID", 3)


async def test_if_a_key_is_rerolled_with_a_grace_period_then_both_share_credits_and_limits(
    server: Server, clock: Clock,
) -> None:
    old = await server.key(await server.api(), credits={"remaining": 10}, ratelimits=[
        {"name": "requests", "limit": 100, "duration": 3_600_000, "autoApply": True}])

    new = await server.ok("keys.rerollKey", {"keyId": old["keyId"], "expiration": 60_000})
    by_old = await server.verify(old["key"], credits={"cost": 6})
    by_new = await server.verify(new["key"], credits={"cost": 4})
    spent = [(await server.verify(k["key"]))["code"] for k in (old, new)]
    old_info = await server.ok("keys.getKey", {"keyId": old["keyId"]})
    await server.ok("keys.updateCredits", {"keyId": old["keyId"], "operation": "increment", "value": 5})
    clock.advance(60_001)
    after = await server.verify(new["key"])

    assert (by_old["credits"], by_new["credits"]) == (4, 0)
    assert by_new["ratelimits"][0]["remaining"] == 98
    assert spent == ["USAGE_EXCEEDED", "USAGE_EXCEEDED"]
    assert old_info["credits"] == {"remaining": 0}
    assert (await server.verify(old["key"]))["code"] == "EXPIRED"
    assert (after["code"], after["credits"], after["ratelimits"][0]["remaining"]) == ("VALID", 4, 97)
    await server.ok("keys.deleteKey", {"keyId": old["keyId"], "permanent": True})
    assert (await server.ok("keys.getKey", {"keyId": new["keyId"]}))["credits"] == {"remaining": 4}


async def test_if_permissions_of_a_key_are_added_removed_and_set_then_the_list_follows(
    server: Server,
) -> None:
    created = await server.key(await server.api(), permissions=["docs.read"])
    key_id = created["keyId"]

    added = await server.ok("keys.addPermissions", {"keyId": key_id, "permissions": ["docs.write"]})
    removed = await server.ok("keys.removePermissions", {"keyId": key_id, "permissions": ["docs.read"]})
    replaced = await server.ok("keys.setPermissions", {"keyId": key_id, "permissions": []})

    assert [p["slug"] for p in added] == ["docs.read", "docs.write"]
    assert all(p["id"].startswith("perm_") for p in added)
    assert [p["slug"] for p in removed] == ["docs.write"] and replaced == []


async def test_if_roles_of_a_key_are_added_removed_and_set_then_they_come_with_permissions(
    server: Server,
) -> None:
    await server.ok("permissions.createRole", {"name": "admin", "permissions": ["docs.write"]})
    role_id = (await server.ok("permissions.createRole", {"name": "reader"}))["roleId"]
    created = await server.key(await server.api())
    key_id = created["keyId"]

    added = await server.ok("keys.addRoles", {"keyId": key_id, "roles": ["admin", role_id]})
    verified = await server.verify(created["key"], permissions="docs.write")
    removed = await server.ok("keys.removeRoles", {"keyId": key_id, "roles": ["reader"]})
    replaced = await server.ok("keys.setRoles", {"keyId": key_id, "roles": []})

    assert [r["name"] for r in added] == ["admin", "reader"]
    assert added[0]["permissions"][0]["slug"] == "docs.write"
    assert verified["code"] == "VALID" and verified["roles"] == ["admin", "reader"]
    assert [r["name"] for r in removed] == ["admin"] and replaced == []
    await server.fail("keys.addRoles", {"keyId": key_id, "roles": ["ghost"]}, 404,
                      "unkey/data/role_not_found")


# -- apis.* -----------------------------------------------------------------------------------------


async def test_if_an_api_is_read_then_its_id_and_name_come_back(server: Server) -> None:
    api_id = await server.api()

    assert await server.ok("apis.getApi", {"apiId": api_id}) == {"id": api_id, "name": "payments"}
    await server.fail("apis.getApi", {"apiId": "api_missing"}, 404, "unkey/data/api_not_found")


async def test_if_keys_are_listed_then_pages_follow_the_cursor(server: Server) -> None:
    api_id = await server.api()  # its first key claims the prefix
    for _ in range(4):
        await server.key(api_id, externalId="acme")

    first = await server.answer("apis.listKeys", {"apiId": api_id, "limit": 3})
    second = await server.answer("apis.listKeys", {"apiId": api_id, "limit": 3,
                                                   "cursor": first["pagination"]["cursor"]})
    owned = await server.ok("apis.listKeys", {"apiId": api_id, "externalId": "acme"})

    assert len(first["data"]) == 3 and first["pagination"]["hasMore"] is True
    assert len(second["data"]) == 2 and second["pagination"] == {"hasMore": False}
    assert len({k["keyId"] for k in first["data"] + second["data"]}) == 5
    assert len(owned) == 4


async def test_if_a_protected_api_is_deleted_then_412_and_it_stays(server: Server) -> None:
    api = server.ks.create_api("guarded", prefix="sk_g", delete_protection=True)

    await server.fail("apis.deleteApi", {"apiId": api.id}, 412, "unkey/application/protected_resource")

    assert await server.ok("apis.getApi", {"apiId": api.id}) == {"id": api.id, "name": "guarded"}


# -- permissions.* ----------------------------------------------------------------------------------


async def test_if_permissions_are_created_read_listed_and_deleted_then_each_answers(server: Server) -> None:
    permission_id = (await server.ok("permissions.createPermission", {
        "name": "Read docs", "slug": "docs.read", "description": "reads"}))["permissionId"]
    await server.ok("permissions.createPermission", {"name": "Write", "slug": "docs.write"})

    by_slug = await server.ok("permissions.getPermission", {"permission": "docs.read"})
    by_id = await server.ok("permissions.getPermission", {"permission": permission_id})
    page = await server.answer("permissions.listPermissions", {"limit": 1})
    found = await server.ok("permissions.listPermissions", {"search": "WRITE"})
    await server.fail("permissions.createPermission", {"name": "again", "slug": "docs.read"}, 409,
                      "unkey/data/permission_already_exists")
    await server.ok("permissions.deletePermission", {"permission": "docs.read"})

    assert by_slug == by_id == {"id": permission_id, "name": "Read docs", "slug": "docs.read",
                                "description": "reads"}
    assert len(page["data"]) == 1 and page["pagination"]["hasMore"] is True
    assert [p["slug"] for p in found] == ["docs.write"]
    await server.fail("permissions.getPermission", {"permission": "docs.read"}, 404,
                      "unkey/data/permission_not_found")


async def test_if_roles_are_created_read_listed_and_deleted_then_each_answers(server: Server) -> None:
    role_id = (await server.ok("permissions.createRole", {
        "name": "admin", "description": "all", "permissions": ["docs.read"]}))["roleId"]

    by_name = await server.ok("permissions.getRole", {"role": "admin"})
    by_id = await server.ok("permissions.getRole", {"role": role_id})
    listed = await server.answer("permissions.listRoles", {})
    await server.fail("permissions.createRole", {"name": "admin"}, 409, "unkey/data/role_already_exists")
    await server.ok("permissions.deleteRole", {"role": "admin"})

    assert by_name == by_id
    assert by_name["description"] == "all" and by_name["permissions"][0]["slug"] == "docs.read"
    assert [r["id"] for r in listed["data"]] == [role_id] and listed["pagination"] == {"hasMore": False}
    await server.fail("permissions.getRole", {"role": "admin"}, 404, "unkey/data/role_not_found")


async def test_if_a_role_gets_permissions_then_the_root_key_needs_the_rbac_rights(server: Server) -> None:
    creator = server.root_key("rbac.*.create_role")

    await server.ok("permissions.createRole", {"name": "plain"}, key=creator)
    await server.fail("permissions.createRole", {"name": "rich", "permissions": ["a.b"]}, 403,
                      "unkey/authorization/insufficient_permissions", key=creator)


# -- identities.* -----------------------------------------------------------------------------------


async def test_if_identities_are_created_read_updated_listed_and_deleted_then_each_answers(
    server: Server,
) -> None:
    limits = [{"name": "shared", "limit": 2, "duration": 60_000, "autoApply": True}]
    identity_id = (await server.ok("identities.createIdentity", {
        "externalId": "acme", "meta": {"plan": "pro"}, "ratelimits": limits}))["identityId"]

    by_external = await server.ok("identities.getIdentity", {"identity": "acme"})
    by_id = await server.ok("identities.getIdentity", {"identity": identity_id})
    updated = await server.ok("identities.updateIdentity", {"identity": "acme", "meta": None})
    listed = await server.answer("identities.listIdentities", {"search": "ac"})
    await server.fail("identities.createIdentity", {"externalId": "acme"}, 409,
                      "unkey/data/identity_already_exists")
    await server.ok("identities.deleteIdentity", {"identity": identity_id})

    assert by_external == by_id and by_id["meta"] == {"plan": "pro"}
    assert by_id["ratelimits"][0]["name"] == "shared" and by_id["ratelimits"][0]["id"].startswith("rl_")
    assert "meta" not in updated and updated["ratelimits"] == by_id["ratelimits"]
    assert [i["id"] for i in listed["data"]] == [identity_id]
    await server.fail("identities.getIdentity", {"identity": "acme"}, 404,
                      "unkey/data/identity_not_found")


async def test_if_keys_share_an_identity_then_its_rate_limit_is_shared(server: Server) -> None:
    await server.ok("identities.createIdentity", {"externalId": "acme", "ratelimits": [
        {"name": "shared", "limit": 1, "duration": HOUR, "autoApply": True}]})
    api_id = await server.api()
    first, second = await server.key(api_id, externalId="acme"), await server.key(api_id, externalId="acme")

    assert (await server.verify(first["key"]))["code"] == "VALID"
    assert (await server.verify(second["key"]))["code"] == "RATE_LIMITED"


# -- ratelimit.limit --------------------------------------------------------------------------------


async def test_if_a_standalone_limit_is_taken_then_it_denies_once_exhausted(server: Server) -> None:
    body = {"namespace": "email", "identifier": "user_1", "limit": 2, "duration": HOUR}

    answers = [await server.ok("ratelimit.limit", body) for _ in range(3)]
    other = await server.ok("ratelimit.limit", {**body, "identifier": "user_2"})

    assert [(a["success"], a["remaining"]) for a in answers] == [(True, 1), (True, 0), (False, 0)]
    assert other["success"] is True and answers[0]["reset"] % HOUR == 0


async def test_if_a_root_key_may_limit_one_namespace_then_others_are_403(server: Server) -> None:
    scoped = server.root_key("ratelimit.email.limit")
    body = {"identifier": "u", "limit": 1, "duration": 1000}

    await server.ok("ratelimit.limit", {**body, "namespace": "email"}, key=scoped)
    await server.fail("ratelimit.limit", {**body, "namespace": "sms"}, 403,
                      "unkey/authorization/insufficient_permissions", key=scoped)


# -- the published document ---------------------------------------------------------------------------


async def test_if_the_openapi_document_is_served_then_every_operation_is_in_it(server: Server) -> None:
    paths = server.document["paths"]

    assert server.document["openapi"] == "3.1.0"
    assert sorted(paths) == sorted(f"/v2/{op.name}" for op in OPERATIONS)
    assert {op.name.split(".")[0] for op in OPERATIONS} == {
        "apis", "keys", "permissions", "identities", "ratelimit", "analytics"}
    for op in OPERATIONS:
        post = paths[op.path]["post"]
        assert post["requestBody"]["content"]["application/json"]["schema"] == op.request
        assert post["security"] == [{"rootKey": []}]
    assert server.document["components"]["securitySchemes"]["rootKey"]["scheme"] == "bearer"


def test_if_the_request_schemas_are_read_by_a_json_schema_validator_then_each_is_valid() -> None:
    for op in OPERATIONS:
        jsonschema_rs.Draft202012Validator(op.request)  # raises on an invalid schema
        assert jsonschema_rs.is_valid(op.request, {}) == ("required" not in op.request)


async def test_if_the_server_runs_on_every_store_then_it_issues_and_verifies(
    store_url: str, clock: Clock,
) -> None:
    ks = Keystile(store_url, now=clock)
    app = build_app(ks)
    root = RootKeys(ks).create(["api.*.create_api", "api.*.create_key", "api.*.verify_key"]).key
    headers = {"authorization": f"Bearer {root}"}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t", headers=headers) as client:
        api_id = (await client.post("/v2/apis.createApi", json={"name": "x1x"})).json()["data"]["apiId"]
        created = (await client.post("/v2/keys.createKey", json={
            "apiId": api_id, "prefix": "sk_every", "credits": {"remaining": 1}})).json()["data"]
        codes = [(await client.post("/v2/keys.verifyKey", json={"key": created["key"]})).json()[
            "data"]["code"] for _ in range(2)]
    ks.close()

    assert codes == ["VALID", "USAGE_EXCEEDED"]


async def test_if_the_app_is_built_from_a_store_url_then_it_owns_and_closes_it(tmp_path: Path) -> None:
    app = build_app(f"sqlite:///{tmp_path / 'k.db'}")
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            assert (await client.get("/v2/liveness")).json()["data"] == {"message": "OK"}
    ks: Keystile = app.state.keystile

    with pytest.raises(StoreUnavailableError, match="closed"):
        ks.store.get("api", "api_x")


def test_if_a_user_api_takes_the_closest_prefix_then_root_and_user_keys_stay_apart(
    tmp_path: Path,
) -> None:
    ks = Keystile(f"sqlite:///{tmp_path / 'k.db'}")
    roots = RootKeys(ks)
    root = roots.create(["api.*.verify_key"])
    api = ks.create_api("user", prefix="ks_root")  # the closest a user prefix can get

    user_key = ks.create_key(api.id).key

    assert ks.verify(user_key).api_id == api.id
    assert ks.verify(root.key, api_id=api.id).code.value == "NOT_FOUND"
    ks.close()
