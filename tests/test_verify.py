"""Verification end to end, on every store: codes, their order, credits, limits, routing."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest

from keystile import (
    Code,
    Credits,
    Keystile,
    PermissionQueryError,
    RatelimitConfig,
    Refill,
    Verifier,
    VerifyRequest,
    VerifyResult,
    hash_key,
)
from keystile._models import lasting

if TYPE_CHECKING:
    from conftest import Clock

MINUTE = 60_000
DAY = 86_400_000
WELL_FORMED = "3yZe7d8Vq2PjK9hWbG4xT1"  # 22 base58 characters, like 16 random bytes


@pytest.fixture
def api_id(ks: Keystile) -> str:
    return ks.create_api("payments", prefix="sk_live").id


def per_minute(limit: int, name: str = "requests", *, auto: bool = True) -> RatelimitConfig:
    return RatelimitConfig(name, limit, MINUTE, auto_apply=auto)


# -- every code ----------------------------------------------------------------------------


def test_if_a_key_is_live_then_it_is_valid_with_its_details(ks: Keystile, api_id: str, clock: Clock) -> None:
    created = ks.create_key(api_id, name="ci", meta={"team": "infra"}, expires=clock.ms + DAY,
                           credits=10, permissions=["docs.read"])

    result = ks.verify(created.key)

    assert result.valid is True and result.code is Code.VALID
    assert (result.key_id, result.api_id, result.name) == (created.key_id, api_id, "ci")
    assert result.keyspace_id == ks.get_api(api_id).keyspace_id
    assert (result.meta, result.expires, result.credits, result.enabled) == (
        {"team": "infra"}, clock.ms + DAY, 9, True)
    assert result.permissions == ("docs.read",)


def test_if_no_key_has_the_hash_then_not_found_with_nothing_else(ks: Keystile, api_id: str) -> None:
    ks.create_key(api_id)

    result = ks.verify("sk_live_" + WELL_FORMED)

    assert result == VerifyResult(valid=False, code=Code.NOT_FOUND)
    assert result.to_dict() == {"valid": False, "code": "NOT_FOUND"}


def test_if_a_key_is_disabled_then_disabled_and_invalid(ks: Keystile, api_id: str) -> None:
    created = ks.create_key(api_id, enabled=False)

    result = ks.verify(created.key)

    assert (result.valid, result.code, result.key_id, result.enabled) == (
        False, Code.DISABLED, created.key_id, False)


def test_if_a_key_is_past_its_expiry_then_expired(ks: Keystile, api_id: str, clock: Clock) -> None:
    created = ks.create_key(api_id, expires=clock.ms + 10)

    clock.advance(11)

    assert ks.verify(created.key).code is Code.EXPIRED


@pytest.mark.parametrize(
    ("ip", "code"),
    [("10.1.2.3", Code.VALID), ("2001:db8::7", Code.VALID), ("192.168.0.1", Code.FORBIDDEN),
     ("11.0.0.1", Code.FORBIDDEN), (None, Code.FORBIDDEN), ("", Code.FORBIDDEN),
     ("not-an-ip", Code.FORBIDDEN), ("2001:db9::1", Code.FORBIDDEN)],
)
def test_if_the_keyspace_has_an_ip_whitelist_then_only_clients_inside_it_pass(
    ks: Keystile, ip: str | None, code: Code,
) -> None:
    api = ks.create_api("internal", prefix="sk_int", ip_whitelist=["10.0.0.0/8", "2001:db8::/32"])
    created = ks.create_key(api.id)

    assert ks.verify(created.key, ip=ip).code is code


def test_if_the_whitelist_is_changed_then_the_next_verify_follows_it(ks: Keystile, api_id: str) -> None:
    created = ks.create_key(api_id)
    assert ks.verify(created.key, ip="192.168.0.1").code is Code.VALID

    ks.update_api(api_id, ip_whitelist=["10.0.0.0/8"])
    forbidden = ks.verify(created.key, ip="192.168.0.1")
    ks.update_api(api_id, ip_whitelist=[])

    assert forbidden.code is Code.FORBIDDEN
    assert ks.verify(created.key, ip="192.168.0.1").code is Code.VALID


def test_if_the_permission_query_is_not_met_then_insufficient_permissions(ks: Keystile, api_id: str) -> None:
    created = ks.create_key(api_id, permissions=["read", "admin"])

    assert ks.verify(created.key, permissions="read AND (write OR admin)").code is Code.VALID
    assert ks.verify(created.key, permissions="read AND write").code is Code.INSUFFICIENT_PERMISSIONS


def test_if_a_rate_limit_is_used_up_then_rate_limited_until_the_window_slides(
    ks: Keystile, api_id: str, clock: Clock,
) -> None:
    created = ks.create_key(api_id, ratelimits=[per_minute(2)])

    codes = [ks.verify(created.key).code for _ in range(3)]
    clock.advance(2 * MINUTE)

    assert codes == [Code.VALID, Code.VALID, Code.RATE_LIMITED]
    assert ks.verify(created.key).code is Code.VALID


def test_if_credits_run_out_then_usage_exceeded(ks: Keystile, api_id: str) -> None:
    created = ks.create_key(api_id, credits=2)

    results = [ks.verify(created.key) for _ in range(3)]

    assert [(r.code, r.credits) for r in results] == [
        (Code.VALID, 1), (Code.VALID, 0), (Code.USAGE_EXCEEDED, 0)]
    assert results[-1].credits_reset is None


# -- the order of the codes -------------------------------------------------------------------


def test_if_a_key_fails_every_check_then_each_fix_reveals_the_next_code_in_unkeys_order(
    ks: Keystile, api_id: str, clock: Clock,
) -> None:
    created = ks.create_key(api_id, credits=1, ratelimits=[per_minute(1)], permissions=["read"])
    assert ks.verify(created.key).code is Code.VALID  # spends the only credit and token
    ks.update_key(created.key_id, enabled=False, expires=clock.ms - 1)
    ks.update_api(api_id, ip_whitelist=["10.0.0.0/8"])
    request: dict[str, Any] = {"ip": "192.168.0.1", "permissions": "write"}

    seen = [ks.verify(created.key, **request).code]
    ks.update_key(created.key_id, enabled=True)
    seen.append(ks.verify(created.key, **request).code)
    ks.update_key(created.key_id, expires=None)
    seen.append(ks.verify(created.key, **request).code)
    ks.update_api(api_id, ip_whitelist=[])
    seen.append(ks.verify(created.key, **request).code)
    del request["permissions"]
    seen.append(ks.verify(created.key, **request).code)
    clock.advance(2 * MINUTE)
    seen.append(ks.verify(created.key, **request).code)
    ks.update_credits(created.key_id, "set", 1)
    seen.append(ks.verify(created.key, **request).code)

    assert seen == [Code.DISABLED, Code.EXPIRED, Code.FORBIDDEN, Code.INSUFFICIENT_PERMISSIONS,
                    Code.RATE_LIMITED, Code.USAGE_EXCEEDED, Code.VALID]
    assert seen == list(Code)[1:]


def test_if_a_key_is_disabled_and_expired_then_disabled(ks: Keystile, api_id: str, clock: Clock) -> None:
    created = ks.create_key(api_id, enabled=False, expires=clock.ms - 1)

    assert ks.verify(created.key).code is Code.DISABLED


def test_if_a_key_is_expired_and_the_ip_is_outside_the_whitelist_then_expired(
    ks: Keystile, clock: Clock,
) -> None:
    api = ks.create_api("internal", prefix="sk_int", ip_whitelist=["10.0.0.0/8"])
    created = ks.create_key(api.id, expires=clock.ms - 1)

    assert ks.verify(created.key, ip="192.168.0.1").code is Code.EXPIRED


def test_if_rate_limited_and_out_of_credits_then_rate_limited(ks: Keystile, api_id: str) -> None:
    created = ks.create_key(api_id, credits=1, ratelimits=[per_minute(1)])
    ks.verify(created.key)

    result = ks.verify(created.key)

    assert result.code is Code.RATE_LIMITED and result.credits == 0


def test_if_a_key_of_a_deleted_api_fails_other_checks_too_then_not_found(
    ks: Keystile, api_id: str, clock: Clock,
) -> None:
    created = ks.create_key(api_id, enabled=False, expires=clock.ms - 1)

    ks.delete_api(api_id)

    assert ks.verify(created.key).code is Code.NOT_FOUND


# -- a rejection spends nothing ------------------------------------------------------------------


def test_if_a_verify_is_rejected_before_the_dynamic_checks_then_no_credit_or_token_is_taken(
    ks: Keystile, api_id: str, clock: Clock,
) -> None:
    created = ks.create_key(api_id, credits=3, ratelimits=[per_minute(2)], permissions=["read"])
    other = ks.create_api("other", prefix="other")

    for _ in range(5):
        assert ks.verify(created.key, permissions="write").code is Code.INSUFFICIENT_PERMISSIONS
        assert ks.verify(created.key, api_id=other.id).code is Code.NOT_FOUND
    ks.update_key(created.key_id, enabled=False)
    for _ in range(5):
        assert ks.verify(created.key).code is Code.DISABLED
    ks.update_key(created.key_id, enabled=True)

    results = [ks.verify(created.key) for _ in range(3)]
    assert [(r.code, r.credits) for r in results] == [
        (Code.VALID, 2), (Code.VALID, 1), (Code.RATE_LIMITED, 1)]


def test_if_a_verify_is_rate_limited_then_no_credit_is_spent(ks: Keystile, api_id: str, clock: Clock) -> None:
    created = ks.create_key(api_id, credits=5, ratelimits=[per_minute(1)])
    assert ks.verify(created.key).credits == 4

    for _ in range(10):
        assert ks.verify(created.key).code is Code.RATE_LIMITED
    clock.advance(2 * MINUTE)

    assert ks.verify(created.key).credits == 3
    assert ks.get_key(created.key_id).credits == Credits(3)


def test_if_usage_is_exceeded_then_no_rate_limit_token_is_taken(ks: Keystile, api_id: str) -> None:
    created = ks.create_key(api_id, credits=1, ratelimits=[per_minute(3)])
    first = ks.verify(created.key)

    exceeded = [ks.verify(created.key) for _ in range(5)]
    ks.update_credits(created.key_id, "set", 10)
    after = [ks.verify(created.key) for _ in range(3)]

    assert first.code is Code.VALID and first.ratelimits[0].remaining == 2
    assert {r.code for r in exceeded} == {Code.USAGE_EXCEEDED}
    assert [r.ratelimits[0].remaining for r in exceeded] == [2] * 5  # nothing taken
    assert [r.code for r in after] == [Code.VALID, Code.VALID, Code.RATE_LIMITED]
    assert after[-1].credits == 8


def test_if_one_of_several_limits_rejects_then_none_of_them_takes_a_token(ks: Keystile, api_id: str) -> None:
    created = ks.create_key(api_id, ratelimits=[per_minute(5, "wide"), per_minute(1, "narrow")])
    ks.verify(created.key)

    rejected = [ks.verify(created.key) for _ in range(4)]

    wide_remaining = []
    for result in rejected:
        by_name = {rl.name: rl for rl in result.ratelimits}
        assert result.code is Code.RATE_LIMITED
        assert by_name["narrow"].exceeded and not by_name["wide"].exceeded
        wide_remaining.append(by_name["wide"].remaining)
    assert wide_remaining == [4, 4, 4, 4]  # a taken token would make it 3, 2, 1, 0


# -- credits ----------------------------------------------------------------------------------


def test_if_no_cost_is_given_then_one_credit_is_spent(ks: Keystile, api_id: str) -> None:
    created = ks.create_key(api_id, credits=5)

    assert [ks.verify(created.key).credits for _ in range(2)] == [4, 3]


def test_if_the_cost_is_zero_then_nothing_is_spent_even_at_zero_credits(ks: Keystile, api_id: str) -> None:
    created = ks.create_key(api_id, credits=1)
    assert ks.verify(created.key, cost=0).credits == 1
    ks.verify(created.key)

    results = [ks.verify(created.key, cost=0) for _ in range(3)]

    assert all(r.code is Code.VALID and r.credits == 0 for r in results)
    assert ks.verify(created.key).code is Code.USAGE_EXCEEDED


def test_if_a_custom_cost_exceeds_the_balance_then_exceeded_and_the_balance_stays(
    ks: Keystile, api_id: str,
) -> None:
    created = ks.create_key(api_id, credits=5)

    results = [ks.verify(created.key, cost=c) for c in (3, 3, 2, 1)]

    assert [(r.code, r.credits) for r in results] == [
        (Code.VALID, 2), (Code.USAGE_EXCEEDED, 2), (Code.VALID, 0), (Code.USAGE_EXCEEDED, 0)]


def test_if_routes_ask_different_costs_and_limits_of_one_cached_key_then_each_gets_its_own(
    ks: Keystile, api_id: str,
) -> None:
    # A cached record keeps the plan each route's request object needs: alternating
    # routes, and one-off requests between them, must never get another request's plan.
    created = ks.create_key(api_id, credits=10_000, ratelimits=[per_minute(10_000, "calls", auto=False)])
    cheap, dear = lasting(VerifyRequest()), lasting(VerifyRequest(cost=3, ratelimits=("calls",)))
    verifier = ks.verifier
    spent, calls = 0, 0
    for i in range(30):
        request = (cheap, dear)[i % 2] if i % 3 else VerifyRequest(cost=2)  # one-offs too
        result = verifier.verify_request(created.key, request)
        spent += 1 if request is cheap else request.cost
        calls += request is dear
        assert result.code is Code.VALID and result.credits == 10_000 - spent, i
        assert [rl.remaining for rl in result.ratelimits] == ([10_000 - calls] if request is dear else [])
    # Only the routes' plans are kept with the record: a one-off request's would only fill memory.
    entry = verifier.cache.fresh(hashlib.sha256(created.key.encode()).digest(), verifier.now())
    assert entry is not None and entry.plans is not None
    assert {kept for kept, _ in entry.plans.values()} == {cheap, dear}
    assert all(kept is cheap or kept is dear for kept, _ in entry.plans.values())


def test_if_a_key_has_unlimited_credits_then_any_cost_is_valid_and_credits_are_absent(
    ks: Keystile, api_id: str,
) -> None:
    created = ks.create_key(api_id)

    result = ks.verify(created.key, cost=1_000_000)

    assert result.code is Code.VALID and result.credits is None
    assert "credits" not in result.to_dict()


def test_if_the_clock_passes_midnight_utc_then_a_daily_refill_sets_the_credits_on_next_verify(
    ks: Keystile, api_id: str, clock: Clock,
) -> None:
    assert clock.ms % DAY == DAY // 2  # noon UTC
    midnight = clock.ms + DAY // 2
    created = ks.create_key(api_id, credits=Credits(2, Refill("daily", 5)))
    spent = [ks.verify(created.key) for _ in range(3)]

    clock.ms = midnight - 1
    before = ks.verify(created.key)
    clock.ms = midnight
    after = ks.verify(created.key)

    assert [(r.code, r.credits) for r in spent] == [
        (Code.VALID, 1), (Code.VALID, 0), (Code.USAGE_EXCEEDED, 0)]
    assert spent[-1].credits_reset == midnight
    assert before.code is Code.USAGE_EXCEEDED
    assert (after.code, after.credits) == (Code.VALID, 4)
    assert ks.get_key(created.key_id).credits == Credits(4, Refill("daily", 5))


def test_if_several_days_pass_then_the_refill_sets_the_amount_once_and_does_not_add(
    ks: Keystile, api_id: str, clock: Clock,
) -> None:
    created = ks.create_key(api_id, credits=Credits(3, Refill("daily", 5)))
    ks.verify(created.key)

    clock.advance(3 * DAY)

    assert ks.verify(created.key).credits == 4
    assert ks.verify(created.key).credits == 3


# -- identities and rate limits -----------------------------------------------------------------


def test_if_three_keys_share_an_identity_then_its_limit_is_one_budget_for_all(
    ks: Keystile, api_id: str,
) -> None:
    ks.create_identity("acme", ratelimits=[per_minute(6)])
    keys = [ks.create_key(api_id, external_id="acme").key for _ in range(3)]
    stranger = ks.create_key(api_id, ratelimits=[per_minute(100)]).key

    results = [ks.verify(keys[i % 3]) for i in range(9)]

    assert [r.code for r in results] == [Code.VALID] * 6 + [Code.RATE_LIMITED] * 3
    assert [r.ratelimits[0].remaining for r in results[:6]] == [5, 4, 3, 2, 1, 0]
    assert results[0].identity is not None and results[0].identity.external_id == "acme"
    assert ks.verify(stranger).code is Code.VALID


def test_if_a_key_has_its_own_limit_of_the_identitys_name_then_both_apply(
    ks: Keystile, api_id: str,
) -> None:
    ks.create_identity("acme", ratelimits=[per_minute(3)])
    shared = ks.create_key(api_id, external_id="acme").key
    own = ks.create_key(api_id, external_id="acme", ratelimits=[per_minute(1)]).key

    assert [ks.verify(own).code for _ in range(2)] == [Code.VALID, Code.RATE_LIMITED]
    assert [ks.verify(shared).code for _ in range(3)] == [Code.VALID] * 2 + [Code.RATE_LIMITED]
    assert ks.verify(own).code is Code.RATE_LIMITED  # its own limit does not exempt it


def test_if_an_identity_limit_is_not_auto_applied_then_it_counts_only_when_named(
    ks: Keystile, api_id: str,
) -> None:
    ks.create_identity("acme", ratelimits=[per_minute(1, "expensive", auto=False)])
    key = ks.create_key(api_id, external_id="acme").key

    plain = [ks.verify(key) for _ in range(3)]
    named = [ks.verify(key, ratelimits=["expensive"]) for _ in range(2)]

    assert all(r.code is Code.VALID and r.ratelimits == () for r in plain)
    assert [r.code for r in named] == [Code.VALID, Code.RATE_LIMITED]


# -- the API a key must belong to ---------------------------------------------------------------


def test_if_a_key_of_another_api_is_verified_for_this_api_then_not_found(ks: Keystile, api_id: str) -> None:
    other = ks.create_api("other", prefix="other")
    mine = ks.create_key(api_id, credits=2)
    theirs = ks.create_key(other.id)

    assert ks.verify(theirs.key, api_id=api_id).code is Code.NOT_FOUND
    assert ks.verify(mine.key, api_id=other.id).code is Code.NOT_FOUND
    assert ks.verify(mine.key, api_id="api_unknown").code is Code.NOT_FOUND
    assert ks.verify(mine.key, api_id=api_id).code is Code.VALID
    assert ks.verify(theirs.key, api_id=other.id).code is Code.VALID
    assert ks.get_key(mine.key_id).credits == Credits(1)


def test_if_a_stored_hash_belongs_to_another_keyspace_than_the_prefix_names_then_not_found(
    ks: Keystile, api_id: str,
) -> None:
    other = ks.create_api("other", prefix="other")
    created = ks.create_key(other.id)
    # Forge a key whose prefix names sk_live but whose stored record is in "other".
    forged = "sk_live_" + created.key.split("_", 1)[1]
    doc = ks.store.get("key", created.key_id)
    assert doc is not None
    ks.store.replace("key", {**doc, "hash": hash_key(forged)})

    assert ks.verify(forged).code is Code.NOT_FOUND


# -- the result's JSON shape ---------------------------------------------------------------------


def snake_case_keys(value: Any, path: str = "") -> list[str]:
    if isinstance(value, dict):
        found = [f"{path}.{k}" for k in value if "_" in k]
        return found + [p for k, v in value.items() if k != "meta" for p in snake_case_keys(v, k)]
    if isinstance(value, list):
        return [p for item in value for p in snake_case_keys(item, path)]
    return []


def test_if_a_result_is_turned_into_a_dict_then_it_has_unkeys_camel_case_names(
    ks: Keystile, api_id: str, clock: Clock,
) -> None:
    ks.create_role("reader", permissions=["docs.read"])
    ks.create_identity("acme", meta={"tier": "gold"}, ratelimits=[per_minute(10, "shared")])
    created = ks.create_key(api_id, name="ci", meta={"snake_case": 1}, expires=clock.ms + DAY,
                           credits=5, external_id="acme", roles=["reader"],
                           ratelimits=[per_minute(3)])

    data = ks.verify(created.key).to_dict()

    assert set(data) == {"valid", "code", "keyId", "keyspaceId", "apiId", "name", "meta", "expires",
                         "credits", "enabled", "identity", "roles", "permissions", "ratelimits"}
    assert data["code"] == "VALID" and data["credits"] == 4 and data["meta"] == {"snake_case": 1}
    assert data["roles"] == ["reader"] and data["permissions"] == ["docs.read"]
    assert set(data["identity"]) == {"id", "externalId", "meta", "ratelimits"}
    assert set(data["identity"]["ratelimits"][0]) == {"id", "name", "limit", "duration", "autoApply"}
    by_name = {rl["name"]: rl for rl in data["ratelimits"]}
    assert by_name["requests"] == {
        "id": by_name["requests"]["id"], "name": "requests", "limit": 3, "duration": MINUTE,
        "reset": (clock.ms // MINUTE + 1) * MINUTE, "remaining": 2, "exceeded": False, "autoApply": True}
    assert snake_case_keys(data) == []
    assert json.loads(json.dumps(data)) == data


def test_if_a_rejected_result_is_turned_into_a_dict_then_it_keeps_the_key_details(
    ks: Keystile, api_id: str,
) -> None:
    created = ks.create_key(api_id, name="ci", enabled=False)

    data = ks.verify(created.key).to_dict()

    assert data["valid"] is False and data["code"] == "DISABLED"
    assert data["keyId"] == created.key_id and data["enabled"] is False and data["name"] == "ci"


# -- prefix routing ------------------------------------------------------------------------------


MALFORMED = [
    "sk_test_" + WELL_FORMED,  # unknown prefix
    "other_" + WELL_FORMED,  # unknown prefix
    WELL_FORMED,  # no "_"
    "sk_live" + WELL_FORMED,  # no "_" before the random part
    "_" + WELL_FORMED,  # empty prefix
    "sk_live_",  # empty random part
    "sk_live_" + "0OIl" * 6,  # not base58
    "sk_live_" + WELL_FORMED[:-1] + "0",  # one non-base58 character
    "sk_live_" + "abc",  # too short for 16 bytes
    "sk_live_" + WELL_FORMED[:15],  # one short of the minimum
    "sk_live_" + "a" * 45,  # too long for 32 bytes
    "sk_live_" + WELL_FORMED + "\n",
    "Bearer sk_live_" + WELL_FORMED,
    "sk_live_" + "ä" * 22,
    "sk_live_" + WELL_FORMED + "_",
    "",
    "x" * 10_000,
]


def test_if_a_key_is_malformed_or_has_an_unknown_prefix_then_not_found_without_any_store_call(
    counting_store: Any, clock: Clock,
) -> None:
    ks = Keystile(counting_store, now=clock)
    api = ks.create_api("payments", prefix="sk_live")
    other = ks.create_api("other", prefix="sk")
    created = ks.create_key(api.id)
    assert ks.verify(created.key).valid  # loads the keyspace map
    counting_store.calls.clear()

    results = [ks.verify(key) for key in MALFORMED]
    results.append(ks.verify(created.key, api_id=other.id))  # routed to another API: no lookup
    results.append(ks.verify(b"sk_live_" + WELL_FORMED.encode()))  # type: ignore[arg-type]
    results.append(ks.verify(None))  # type: ignore[arg-type]

    assert all(r == VerifyResult(valid=False, code=Code.NOT_FOUND) for r in results)
    assert counting_store.calls == {}
    # the control: a well-formed unknown key of a known prefix does reach the store
    assert ks.verify("sk_live_" + WELL_FORMED).code is Code.NOT_FOUND
    assert counting_store.calls["load_record"] == 1
    ks.close()


async def test_if_a_malformed_key_is_verified_async_then_not_found_without_any_store_call(
    counting_store: Any, clock: Clock,
) -> None:
    ks = Keystile(counting_store, now=clock)
    ks.create_api("payments", prefix="sk_live")
    await ks.verifier.verify_async("warm")
    counting_store.calls.clear()

    results = [await ks.verifier.verify_async(key) for key in MALFORMED]

    assert {r.code for r in results} == {Code.NOT_FOUND}
    assert counting_store.calls == {}
    ks.close()


def test_if_the_keyspace_map_is_older_than_the_refresh_then_it_is_loaded_again(
    counting_store: Any, clock: Clock,
) -> None:
    ks = Keystile(counting_store, now=clock, keyspace_refresh=30)
    ks.create_api("payments", prefix="sk_live")
    ks.verify("garbage")
    counting_store.calls.clear()

    clock.advance(29_999)
    ks.verify("garbage")
    before = counting_store.calls["load_keyspaces"]
    clock.advance(1)
    ks.verify("garbage")

    assert before == 0 and counting_store.calls["load_keyspaces"] == 1
    ks.close()


def test_if_another_keystile_on_the_same_store_creates_an_api_then_it_is_routable_at_once(
    ks: Keystile, same_store: Callable[..., Keystile],
) -> None:
    ks.create_api("first", prefix="first")
    assert ks.verify("first_" + WELL_FORMED).code is Code.NOT_FOUND  # map loaded
    other = same_store()

    api = other.create_api("second", prefix="second")
    created = other.create_key(api.id, credits=3)

    assert ks.verify(created.key).code is Code.VALID
    assert ks.verify(created.key).credits == 1


def test_if_another_keystile_on_the_same_store_deletes_an_api_then_its_keys_fail_at_once(
    ks: Keystile, api_id: str, same_store: Callable[..., Keystile],
) -> None:
    created = ks.create_key(api_id)
    assert ks.verify(created.key).valid
    other = same_store()

    other.delete_api(api_id)

    assert ks.verify(created.key).code is Code.NOT_FOUND


def test_if_a_verifier_was_opened_before_the_api_then_it_routes_the_new_prefix_at_once(
    ks: Keystile, store_url: str, clock: Clock,
) -> None:
    verifier = Verifier(ks.store if store_url.startswith("memory") else store_url, now=clock)
    assert verifier.verify("fresh_" + WELL_FORMED).code is Code.NOT_FOUND

    api = ks.create_api("fresh", prefix="fresh")
    created = ks.create_key(api.id)

    assert verifier.verify(created.key).code is Code.VALID
    if verifier.store is not ks.store:
        verifier.store.close()


# -- async ------------------------------------------------------------------------------------


async def test_if_verified_async_then_every_answer_equals_the_sync_one(
    ks: Keystile, api_id: str, clock: Clock,
) -> None:
    ks.create_role("reader", permissions=["read"])
    ks.create_identity("acme", ratelimits=[per_minute(100, "shared", auto=False)])
    cases: list[tuple[str, dict[str, Any]]] = [
        (ks.create_key(api_id, roles=["reader"], external_id="acme", name="n").key, {}),
        (ks.create_key(api_id, roles=["reader"]).key, {"permissions": "read AND write"}),
        (ks.create_key(api_id, enabled=False).key, {}),
        (ks.create_key(api_id, expires=clock.ms - 1).key, {}),
        (ks.create_key(api_id).key, {"api_id": "api_other"}),
        ("sk_live_" + WELL_FORMED, {}),
        ("garbage", {}),
    ]

    for key, request in cases:
        sync = ks.verify(key, **request)
        asynchronous = await ks.verifier.verify_async(key, **request)
        assert asynchronous.to_dict() == sync.to_dict(), key


async def test_if_two_equal_keys_are_spent_sync_and_async_then_the_sequences_match(
    ks: Keystile, api_id: str,
) -> None:
    def make() -> str:
        return ks.create_key(api_id, credits=2, ratelimits=[per_minute(3)]).key

    first, second = make(), make()
    costs = (1, 1, 1, 0, 0)

    sync = [ks.verify(first, cost=c) for c in costs]
    asynchronous = [await ks.verifier.verify_async(second, cost=c) for c in costs]

    assert [(r.code, r.credits) for r in sync] == [(r.code, r.credits) for r in asynchronous]
    assert [r.code for r in sync] == [
        Code.VALID, Code.VALID, Code.USAGE_EXCEEDED, Code.VALID, Code.RATE_LIMITED]


# -- malformed permission queries ------------------------------------------------------------------


BAD_QUERIES: list[Any] = [
    "", "   ", "read AND", "OR read", "(read", "read)", "()", "read write", "read && write",
    "read AND (write OR)", "rëad", "read;drop", "a" * 1001, "(" * 60 + "a" + ")" * 60,
    ["read"], 42, {"read": True},
]


@pytest.mark.parametrize("query", BAD_QUERIES, ids=[repr(q)[:20] for q in BAD_QUERIES])
async def test_if_the_permission_query_is_malformed_then_permission_query_error_and_nothing_else(
    ks: Keystile, api_id: str, query: Any,
) -> None:
    created = ks.create_key(api_id, credits=1, permissions=["read"])

    with pytest.raises(PermissionQueryError):
        ks.verify(created.key, permissions=query)
    with pytest.raises(PermissionQueryError):
        ks.verify("garbage", permissions=query)
    with pytest.raises(PermissionQueryError):
        await ks.verifier.verify_async(created.key, permissions=query)

    assert ks.verify(created.key).credits == 0


def test_if_8_threads_spend_from_one_key_then_exactly_its_credits_are_valid(
    store_url: str, clock: Clock
) -> None:
    import threading

    ks = Keystile(store_url, now=clock)
    key = ks.create_key(ks.create_api("a", prefix="sk_a").id, credits=100).key
    codes: list[Code] = []

    def spend() -> None:
        codes.extend(ks.verify(key).code for _ in range(25))

    threads = [threading.Thread(target=spend) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert codes.count(Code.VALID) == 100
    assert codes.count(Code.USAGE_EXCEEDED) == 100
    ks.close()


def test_if_a_rate_limit_spec_given_as_a_dict_changes_later_then_the_request_does_not(
    ks: Keystile, api_id: str,
) -> None:
    # The plan of a request object is kept with the cached record: the request is copied
    # read-only at construction, so a caller's later change cannot go unnoticed or stale.
    created = ks.create_key(api_id, ratelimits=[per_minute(100, "calls", auto=False)])
    spec = {"name": "calls", "cost": 1}
    request = VerifyRequest(ratelimits=(spec,))
    spec["cost"] = 10
    first = ks.verifier.verify_request(created.key, request)
    second = ks.verifier.verify_request(created.key, request)
    assert [rl.remaining for rl in (*first.ratelimits, *second.ratelimits)] == [99, 98]
    with pytest.raises(TypeError):
        request.ratelimits[0]["cost"] = 5  # type: ignore[index]
