"""Unkey's official Python SDK (unkey-py), unchanged, against a real ``keystile serve``.

One server process per module, on a SQLite file; its root key comes from the real
``keystile rootkeys create`` command. Retries are off, so a 5xx fails at once.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import free_port
from served import (
    ROOT_PERMISSIONS,
    Served,
    keystile_cli,
    new_api,
    served_on_sqlite,
    serving,
    unkey_client,
    wait_until_live,
)
from unkey.py import Unkey, errors

from keystile import KeyAuthMiddleware, Keystile, VerifyResult
from keystile._remote import RemoteVerifier

HOUR = 3_600_000


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    yield from served_on_sqlite(tmp_path_factory, "serve")


@pytest.fixture
def unkey(served: Served) -> Iterator[Unkey]:
    yield from unkey_client(served)


_api = new_api


def _code(unkey: Unkey, key: str, **request: Any) -> str:
    return str(unkey.keys.verify_key(key=key, **request).data.code.value)


def test_if_serve_is_started_without_a_store_then_it_serves_the_embedded_default(
    tmp_path: Path,
) -> None:
    env = {name: value for name, value in os.environ.items() if name != "KEYSTILE_STORE"}
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "keystile", "serve", "--port", str(port),
                                "--log-level", "warning"], cwd=tmp_path, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until_live(f"http://127.0.0.1:{port}", process)
        refused = httpx.post(f"http://127.0.0.1:{port}/v2/apis.createApi", json={"name": "x1x"},
                             headers={"authorization": "Bearer ks-root_" + "1" * 43}, timeout=5)
    finally:
        process.terminate()
        _, err = process.communicate(timeout=10)

    assert refused.status_code == 401
    assert (tmp_path / "keystile.db").exists()
    assert str(tmp_path / "keystile.db").encode() in err and b"no root key yet" in err


# -- the scenario ------------------------------------------------------------------------------


def test_if_unkey_py_issues_keys_then_it_reads_them_back(unkey: Unkey) -> None:
    created_api = unkey.apis.create_api(name="payments")
    api_id = created_api.data.api_id
    unkey.identities.create_identity(external_id="acme", meta={"tier": "gold"}, ratelimits=[
        {"name": "shared", "limit": 100, "duration": 60_000, "auto_apply": False}])
    created = unkey.keys.create_key(
        api_id=api_id, prefix="sk_sdk", name="prod", byte_length=16, external_id="acme",
        meta={"plan": "pro"}, permissions=["docs.read"],
        credits={"remaining": 100, "refill": {"interval": "daily", "amount": 100}},
        ratelimits=[{"name": "requests", "limit": 10, "duration": 60_000, "auto_apply": True}])

    key = unkey.keys.get_key(key_id=created.data.key_id).data
    me = unkey.keys.whoami(key=created.data.key).data
    listed = unkey.apis.list_keys(api_id=api_id)

    assert created_api.meta.request_id.startswith("req_")
    assert unkey.apis.get_api(api_id=api_id).data.name == "payments"
    assert created.data.key.startswith("sk_sdk_")
    assert key.key_id == me.key_id == created.data.key_id
    assert (key.name, key.meta, key.permissions) == ("prod", {"plan": "pro"}, ["docs.read"])
    assert key.credits is not None and key.credits.remaining == 100
    assert key.credits.refill is not None and key.credits.refill.amount == 100
    assert key.identity is not None and key.identity.external_id == "acme"
    assert key.ratelimits is not None and key.ratelimits[0].auto_apply is True
    assert listed is not None and [k.key_id for k in listed.result.data] == [created.data.key_id]
    assert listed.result.pagination.has_more is False


def test_if_unkey_py_verifies_keys_then_every_code_comes_back(unkey: Unkey) -> None:
    api_id = _api(unkey, "sk_codes")
    unkey.permissions.create_role(name="editor", permissions=["docs.read", "docs.write"])
    rich = unkey.keys.create_key(api_id=api_id, roles=["editor"], permissions=["docs.read"],
                                 external_id="owner", meta={"plan": "pro"}).data
    gone = unkey.keys.create_key(api_id=api_id, expires=int(time.time() * 1000) - 60_000).data
    off = unkey.keys.create_key(api_id=api_id, enabled=False).data
    limited = unkey.keys.create_key(api_id=api_id, ratelimits=[
        {"name": "requests", "limit": 1, "duration": HOUR, "auto_apply": True}]).data
    credited = unkey.keys.create_key(api_id=api_id, credits={"remaining": 1}).data

    valid = unkey.keys.verify_key(key=rich.key, permissions="docs.read AND docs.write",
                                  tags=["path=/x"]).data
    codes = [
        _code(unkey, "sk_codes_" + "1" * 22), _code(unkey, gone.key), _code(unkey, off.key),
        _code(unkey, rich.key, permissions="docs.delete"),
        _code(unkey, limited.key), _code(unkey, limited.key),
        _code(unkey, credited.key), _code(unkey, credited.key),
    ]

    assert valid.valid is True and valid.code.value == "VALID" and valid.key_id == rich.key_id
    assert valid.roles == ["editor"] and valid.permissions == ["docs.read", "docs.write"]
    assert valid.identity is not None and valid.identity.external_id == "owner"
    assert valid.meta == {"plan": "pro"}
    assert codes == ["NOT_FOUND", "EXPIRED", "DISABLED", "INSUFFICIENT_PERMISSIONS", "VALID",
                     "RATE_LIMITED", "VALID", "USAGE_EXCEEDED"]


def test_if_unkey_py_verifies_with_limits_then_the_numbers_come_back(unkey: Unkey) -> None:
    api_id = _api(unkey, "sk_nums")
    created = unkey.keys.create_key(api_id=api_id, credits={"remaining": 10}, ratelimits=[
        {"name": "requests", "limit": 5, "duration": HOUR, "auto_apply": True},
        {"name": "search", "limit": 1, "duration": HOUR, "auto_apply": False}]).data

    first = unkey.keys.verify_key(key=created.key, credits={"cost": 4}, ratelimits=[{"name": "search"}])
    second = unkey.keys.verify_key(key=created.key, ratelimits=[{"name": "search"}])

    assert first.data.code.value == "VALID" and first.data.credits == 6
    assert first.data.ratelimits is not None
    assert {(r.name, r.remaining, r.exceeded) for r in first.data.ratelimits} == {
        ("requests", 4, False), ("search", 0, False)}
    assert second.data.code.value == "RATE_LIMITED" and second.data.credits == 6


def test_if_unkey_py_updates_credits_then_verification_follows(unkey: Unkey) -> None:
    created = unkey.keys.create_key(api_id=_api(unkey, "sk_cred"), credits={"remaining": 1}).data

    assert _code(unkey, created.key) == "VALID"
    assert _code(unkey, created.key) == "USAGE_EXCEEDED"
    added = unkey.keys.update_credits(key_id=created.key_id, operation="increment", value=2).data
    assert added.remaining == 2
    assert _code(unkey, created.key) == "VALID"
    unlimited = unkey.keys.update_credits(key_id=created.key_id, operation="set", value=None).data
    assert unlimited.remaining is None
    assert unkey.keys.verify_key(key=created.key).data.credits is None  # unlimited


def test_if_unkey_py_updates_a_key_then_verification_follows(unkey: Unkey) -> None:
    created = unkey.keys.create_key(api_id=_api(unkey, "sk_upd"), name="before").data

    unkey.keys.update_key(key_id=created.key_id, enabled=False, name=None, meta={"v": 2})
    disabled = unkey.keys.verify_key(key=created.key).data
    unkey.keys.update_key(key_id=created.key_id, enabled=True, expires=int(time.time() * 1000) - 1)
    expired = _code(unkey, created.key)
    unkey.keys.update_key(key_id=created.key_id, expires=None)

    assert disabled.code.value == "DISABLED" and disabled.name is None and disabled.meta == {"v": 2}
    assert expired == "EXPIRED"
    assert _code(unkey, created.key) == "VALID"


def test_if_unkey_py_rerolls_a_key_then_the_new_one_works_and_the_old_one_stops(unkey: Unkey) -> None:
    old = unkey.keys.create_key(api_id=_api(unkey, "sk_roll"), permissions=["docs.read"]).data

    new = unkey.keys.reroll_key(key_id=old.key_id, expiration=0).data
    time.sleep(0.01)  # the old key expired "now"; a later millisecond sees it expired

    assert new.key.startswith("sk_roll_") and new.key_id != old.key_id
    assert _code(unkey, old.key) == "EXPIRED"
    assert _code(unkey, new.key, permissions="docs.read") == "VALID"


def test_if_unkey_py_creates_a_recoverable_key_then_get_key_decrypts_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KEYSTILE_MASTER_KEY", base64.b64encode(b"m" * 32).decode())  # for serve too
    store = f"sqlite:///{tmp_path / 'keys.db'}"
    api = keystile_cli("apis", "create", "vaulted", "--prefix", "sk_vault", "--store-encrypted-keys",
                       "--store", store)
    permissions = [*ROOT_PERMISSIONS, "api.*.encrypt_key", "api.*.decrypt_key"]
    with serving(store, tmp_path, permissions) as running, running.client() as unkey:
        created = unkey.keys.create_key(api_id=api["apiId"], recoverable=True).data
        decrypted = unkey.keys.get_key(key_id=created.key_id, decrypt=True).data
        plain = unkey.keys.get_key(key_id=created.key_id).data

    assert decrypted.plaintext == created.key and plain.plaintext is None


def test_if_unkey_py_deletes_keys_and_apis_then_their_keys_are_not_found(unkey: Unkey) -> None:
    api_id = _api(unkey, "sk_del")
    soft = unkey.keys.create_key(api_id=api_id).data
    hard = unkey.keys.create_key(api_id=api_id).data
    survivor = unkey.keys.create_key(api_id=api_id).data

    unkey.keys.delete_key(key_id=soft.key_id)
    unkey.keys.delete_key(key_id=hard.key_id, permanent=True)
    codes = [_code(unkey, soft.key), _code(unkey, hard.key), _code(unkey, survivor.key)]
    unkey.apis.delete_api(api_id=api_id)

    assert codes == ["NOT_FOUND", "NOT_FOUND", "VALID"]
    assert _code(unkey, survivor.key) == "NOT_FOUND"


def test_if_unkey_py_manages_permissions_roles_and_identities_then_each_answers(unkey: Unkey) -> None:
    created = unkey.keys.create_key(api_id=_api(unkey, "sk_rbac")).data
    unkey.permissions.create_permission(name="Ship", slug="ship.it", description="deploys")
    unkey.permissions.create_role(name="shipper", permissions=["ship.it"])
    identity_id = unkey.identities.create_identity(external_id="crew").data.identity_id

    added = unkey.keys.add_permissions(key_id=created.key_id, permissions=["ship.it"]).data
    roles = unkey.keys.set_roles(key_id=created.key_id, roles=["shipper"]).data
    role = unkey.permissions.get_role(role="shipper").data
    permission = unkey.permissions.get_permission(permission="ship.it").data
    updated = unkey.identities.update_identity(identity="crew", meta={"size": 3}).data
    listed = unkey.identities.list_identities()
    unkey.identities.delete_identity(identity=identity_id)

    assert [p.slug for p in added] == ["ship.it"] and [r.name for r in roles] == ["shipper"]
    assert role.permissions is not None and role.permissions[0].slug == "ship.it"
    assert (permission.name, permission.description) == ("Ship", "deploys")
    assert updated.meta == {"size": 3} and updated.id == identity_id
    assert listed is not None and identity_id in [i.id for i in listed.result.data]
    with pytest.raises(errors.NotFoundErrorResponse):
        unkey.identities.get_identity(identity="crew")


def test_if_unkey_py_takes_a_standalone_rate_limit_then_it_denies_when_exhausted(unkey: Unkey) -> None:
    answers = [unkey.ratelimit.limit(namespace="sdk", identifier="user_1", limit=1, duration=HOUR).data
               for _ in range(2)]

    assert [(a.success, a.remaining) for a in answers] == [(True, 0), (False, 0)]


# -- errors, as unkey-py's typed exceptions ---------------------------------------------------------


def test_if_unkey_py_queries_the_verifications_then_the_rows_and_typed_400s_come_back(
    unkey: Unkey,
) -> None:
    api_id = _api(unkey, "sk_stats")
    key = unkey.keys.create_key(api_id=api_id, credits={"remaining": 2}).data
    codes = [_code(unkey, key.key, tags=["path=/stats"]) for _ in range(3)]

    answer = unkey.analytics.get_verifications(query=(
        "SELECT outcome, count() AS n, sum(spent_credits) AS spent FROM key_verifications_v1 "
        f"WHERE key_id = '{key.key_id}' AND has(tags, 'path=/stats') AND time >= now() - INTERVAL 1 HOUR "
        "GROUP BY outcome ORDER BY outcome"))
    with pytest.raises(errors.BadRequestErrorResponse) as invalid:
        unkey.analytics.get_verifications(query="SELECT latency FROM key_verifications_v1")

    assert codes == ["VALID", "VALID", "USAGE_EXCEEDED"]
    assert answer.data == [{"outcome": "USAGE_EXCEEDED", "n": 1, "spent": 0},
                           {"outcome": "VALID", "n": 2, "spent": 2}]
    assert invalid.value.data.error.type.endswith("/user/bad_request/invalid_analytics_query")
    assert invalid.value.data.error.errors[0].location == "body.query"


def test_if_the_root_key_is_unknown_or_lacks_the_permission_then_typed_401_and_403(served: Served) -> None:
    with served.client("ks-root_" + "1" * 43) as stranger, pytest.raises(
            errors.UnauthorizedErrorResponse) as unknown:
        stranger.apis.create_api(name="nope")
    limited_key = keystile_cli("rootkeys", "create", "--store", served.store,
                               "--permission", "api.*.read_api")["key"]
    with served.client(limited_key) as limited, pytest.raises(errors.ForbiddenErrorResponse) as denied:
        limited.apis.create_api(name="nope")

    assert unknown.value.data.error.type.endswith("/unkey/authentication/key_not_found")
    assert unknown.value.data.meta.request_id.startswith("req_")
    assert denied.value.data.error.type.endswith("/unkey/authorization/insufficient_permissions")


def test_if_a_request_is_invalid_then_unkey_py_raises_its_typed_400_with_field_errors(unkey: Unkey) -> None:
    api_id = _api(unkey, "sk_bad")

    with pytest.raises(errors.BadRequestErrorResponse) as invalid:
        unkey.keys.create_key(api_id=api_id, byte_length=300)
    with pytest.raises(errors.BadRequestErrorResponse) as query:
        unkey.keys.verify_key(key="sk_bad_" + "1" * 22, permissions="a AND (")

    assert [e.location for e in invalid.value.data.error.errors] == ["body.byteLength"]
    assert query.value.data.error.type.endswith("/permissions_query_syntax_error")


def test_if_things_are_missing_clash_or_are_protected_then_typed_404_409_412(
    unkey: Unkey, served: Served,
) -> None:
    with Keystile(served.store) as ks:  # another process on the same SQLite file
        protected = ks.create_api("guarded", prefix="sk_guard", delete_protection=True).id
    unkey.identities.create_identity(external_id="twice")

    with pytest.raises(errors.NotFoundErrorResponse) as missing:
        unkey.keys.get_key(key_id="key_missing")
    with pytest.raises(errors.ConflictErrorResponse) as clash:
        unkey.identities.create_identity(external_id="twice")
    with pytest.raises(errors.PreconditionFailedErrorResponse) as guarded:
        unkey.apis.delete_api(api_id=protected)

    assert missing.value.data.error.type.endswith("/unkey/data/key_not_found")
    assert clash.value.data.error.type.endswith("/unkey/data/identity_already_exists")
    assert guarded.value.data.error.type.endswith("/unkey/application/protected_resource")


def test_if_verify_names_an_unknown_rate_limit_then_the_answer_is_unkeys_412(unkey: Unkey) -> None:
    created = unkey.keys.create_key(api_id=_api(unkey, "sk_412")).data

    # unkey-py 3.2.2 lists no 412 for verifyKey, so it raises its generic APIError
    with pytest.raises(errors.APIError) as failed:
        unkey.keys.verify_key(key=created.key, ratelimits=[{"name": "undefined"}])

    assert failed.value.status_code == 412
    assert json.loads(failed.value.body)["error"]["type"].endswith("/precondition_failed")


def test_if_the_server_publishes_its_document_then_it_lists_the_operations(served: Served) -> None:
    document = httpx.get(f"{served.url}/openapi.json", timeout=5).json()

    assert "/v2/keys.verifyKey" in document["paths"] and document["openapi"] == "3.1.0"


# -- keystile's own remote backend, end to end --------------------------------------------------


async def test_if_an_app_uses_keystile_serve_as_its_remote_store_then_its_keys_work_there(
    unkey: Unkey, served: Served,
) -> None:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    api_id = _api(unkey, "sk_rmt")
    good = unkey.keys.create_key(api_id=api_id, permissions=["docs.read"]).data
    metered = unkey.keys.create_key(api_id=api_id, credits={"remaining": 1}).data
    other_api = _api(unkey, "sk_oth")
    foreign = unkey.keys.create_key(api_id=other_api).data
    scoped_root = keystile_cli("rootkeys", "create", "--store", served.store,
                               "--permission", f"api.{api_id}.verify_key")["key"]
    remote = RemoteVerifier(f"{served.remote_url}?prefixes=sk_rmt,sk_oth", root_key=scoped_root)

    async def hello(request: Request) -> PlainTextResponse:
        result: VerifyResult = request.scope["keystile"]
        return PlainTextResponse(f"{result.key_id} {result.credits}")

    app = Starlette(routes=[Route("/hello", hello)])
    app.add_middleware(KeyAuthMiddleware, verifier=remote, permissions="docs.read")
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            async def get(key: str) -> tuple[int, str]:
                response = await client.get("/hello", headers={"authorization": f"Bearer {key}"})
                return response.status_code, response.text

            answers = [await get(good.key), await get("sk_rmt_" + "1" * 22), await get(foreign.key)]
            unkey.keys.update_key(key_id=metered.key_id, permissions=["docs.read"])
            spent = [(await get(metered.key))[0], (await get(metered.key))[0]]
    finally:
        remote.close()

    assert answers[0] == (200, f"{good.key_id} None")
    assert answers[1][0] == 401
    assert answers[2][0] == 401  # the root key may verify only its API's keys: NOT_FOUND
    assert spent == [200, 429]
