"""The verification decision without I/O: static checks, the plan, settling, the result."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from keystile import (
    Code,
    Identity,
    KeyRecord,
    KeystileError,
    PermissionQueryError,
    RatelimitConfig,
    RatelimitResult,
    UnknownRatelimitError,
    ValidationError,
    VerifyRequest,
    VerifyResult,
)
from keystile._decide import Settlement, build_result, decide_static, make_plan, settle
from keystile._records import keyspace_from_doc

NOW = 1_773_576_000_000  # 2026-03-15 12:00:00 UTC; a multiple of every duration used here
DAY = 86_400_000
KEYSPACE = keyspace_from_doc({"id": "ks_1", "api_id": "api_1", "prefix": "sk"})


def record(**changes: Any) -> KeyRecord:
    base = KeyRecord(
        key_id="key_1", keyspace_id="ks_1", api_id="api_1", name="alice's key",
        meta={"plan": "pro"}, expires=None, enabled=True, roles=("reader",),
        permissions=("docs.read", "docs.list"), ratelimits=(), identity=None,
        credits_limited=False,
    )
    return replace(base, **changes)


def keyspace(*whitelist: str) -> Any:
    return keyspace_from_doc({"id": "ks_1", "api_id": "api_1", "prefix": "sk",
                              "ip_whitelist": list(whitelist)})


def limit(name: str, limit: int, duration: int = 60_000, *, auto: bool = False,
          id: str = "") -> RatelimitConfig:
    return RatelimitConfig(name, limit, duration, auto_apply=auto, id=id)


def credits(remaining: int | None, refill: dict[str, Any] | None = None,
            refilled_at: int = NOW) -> dict[str, Any]:
    return {"remaining": remaining, "refill": refill, "refilledAt": refilled_at}


def full(limit: int, duration: int = 60_000) -> dict[str, int]:
    """A counter already at ``limit`` in the window holding NOW."""
    return {"seq": NOW // duration, "cur": limit, "prev": 0}


TEAM = Identity("id_1", "team-a", {"tier": "gold"},
                (limit("team", 100, auto=True, id="rl_team"), limit("team.burst", 5, 1000)))


# -- decide_static -------------------------------------------------------------------------


def test_if_there_is_no_record_then_the_code_is_not_found() -> None:
    assert decide_static(None, KEYSPACE, VerifyRequest(), NOW) is Code.NOT_FOUND


def test_if_the_key_belongs_to_another_api_then_the_code_is_not_found() -> None:
    assert decide_static(record(), KEYSPACE, VerifyRequest(api_id="api_2"), NOW) is Code.NOT_FOUND


def test_if_the_key_belongs_to_the_required_api_then_no_code_is_decided() -> None:
    assert decide_static(record(), KEYSPACE, VerifyRequest(api_id="api_1"), NOW) is None


def test_if_no_api_is_required_then_a_key_of_any_api_goes_on() -> None:
    assert decide_static(record(api_id="api_9"), KEYSPACE, VerifyRequest(), NOW) is None


def test_if_another_api_is_required_then_not_found_comes_before_disabled() -> None:
    disabled = record(enabled=False)
    assert decide_static(disabled, KEYSPACE, VerifyRequest(api_id="api_2"), NOW) is Code.NOT_FOUND


def test_if_the_key_is_disabled_and_expired_then_the_code_is_disabled() -> None:
    key = record(enabled=False, expires=NOW - 1)
    assert decide_static(key, KEYSPACE, VerifyRequest(), NOW) is Code.DISABLED


def test_if_now_equals_expires_then_the_key_is_not_yet_expired() -> None:
    assert decide_static(record(expires=NOW), KEYSPACE, VerifyRequest(), NOW) is None


def test_if_now_is_one_ms_after_expires_then_the_key_is_expired() -> None:
    assert decide_static(record(expires=NOW - 1), KEYSPACE, VerifyRequest(), NOW) is Code.EXPIRED


def test_if_the_key_is_expired_and_the_ip_is_not_allowed_then_the_code_is_expired() -> None:
    key = record(expires=NOW - 1)
    assert decide_static(key, keyspace("10.0.0.0/8"), VerifyRequest(ip="8.8.8.8"), NOW) is Code.EXPIRED


@pytest.mark.parametrize(
    ("whitelist", "ip"),
    [(("10.0.0.0/8",), "10.200.3.4"), (("10.0.0.0/8", "192.168.1.0/24"), "192.168.1.77"),
     (("203.0.113.7",), "203.0.113.7"), (("2001:db8::/32",), "2001:db8:ffff::1"),
     (("2001:db8::1",), "2001:db8::1"), (("10.0.0.0/8", "2001:db8::/32"), "2001:db8::5"),
     (("2001:db8::/32",), "2001:DB8::5"), (("10.0.0.0/8",), "::ffff:10.1.2.3")],
)
def test_if_the_client_ip_is_in_the_keyspace_whitelist_then_no_code_is_decided(
    whitelist: tuple[str, ...], ip: str
) -> None:
    assert decide_static(record(), keyspace(*whitelist), VerifyRequest(ip=ip), NOW) is None


@pytest.mark.parametrize(
    ("whitelist", "ip"),
    [(("10.0.0.0/8",), "11.0.0.1"), (("203.0.113.7",), "203.0.113.8"),
     (("2001:db8::/32",), "2001:db9::1"), (("2001:db8::/32",), "10.0.0.1"),
     (("10.0.0.0/8",), "::ffff:11.0.0.1"), (("10.0.0.0/8",), "::a00:1"),
     (("10.0.0.0/8",), None), (("10.0.0.0/8",), ""), (("10.0.0.0/8",), "garbage"),
     (("10.0.0.0/8",), "10.0.0.1:443"), (("10.0.0.0/8",), "10.0.0.256"),
     (("10.0.0.0/8",), " 10.0.0.1")],
)
def test_if_the_client_ip_is_not_in_the_keyspace_whitelist_then_the_code_is_forbidden(
    whitelist: tuple[str, ...], ip: str | None
) -> None:
    assert decide_static(record(), keyspace(*whitelist), VerifyRequest(ip=ip), NOW) is Code.FORBIDDEN


def test_if_the_keyspace_has_no_whitelist_then_a_missing_ip_goes_on() -> None:
    assert decide_static(record(), keyspace(), VerifyRequest(ip=None), NOW) is None


def test_if_the_ip_is_forbidden_and_permissions_are_missing_then_the_code_is_forbidden() -> None:
    request = VerifyRequest(ip="8.8.8.8", permissions="admin")
    assert decide_static(record(), keyspace("10.0.0.0/8"), request, NOW) is Code.FORBIDDEN


def test_if_the_key_lacks_a_permission_then_the_code_is_insufficient_permissions() -> None:
    request = VerifyRequest(permissions="docs.read AND docs.write")
    assert decide_static(record(), KEYSPACE, request, NOW) is Code.INSUFFICIENT_PERMISSIONS


def test_if_the_key_has_the_permissions_then_no_code_is_decided() -> None:
    request = VerifyRequest(permissions="docs.read AND (docs.write OR docs.list)")
    assert decide_static(record(), KEYSPACE, request, NOW) is None


def test_if_the_key_has_no_permissions_then_any_query_is_insufficient() -> None:
    key = record(permissions=())
    assert decide_static(key, KEYSPACE, VerifyRequest(permissions="docs.read"), NOW) is (
        Code.INSUFFICIENT_PERMISSIONS
    )


def test_if_a_record_is_copied_with_other_permissions_then_only_the_new_ones_count() -> None:
    key = replace(record(), permissions=("docs.write",))
    assert decide_static(key, KEYSPACE, VerifyRequest(permissions="docs.write"), NOW) is None
    assert decide_static(key, KEYSPACE, VerifyRequest(permissions="docs.read"), NOW) is (
        Code.INSUFFICIENT_PERMISSIONS
    )


def test_if_the_query_is_malformed_then_decide_static_raises_a_permission_query_error() -> None:
    with pytest.raises(PermissionQueryError):
        decide_static(record(), KEYSPACE, VerifyRequest(permissions="docs.read AND"), NOW)


def test_if_everything_passes_then_decide_static_leaves_the_decision_to_settle() -> None:
    request = VerifyRequest(api_id="api_1", ip="10.0.0.1", permissions="docs.read")
    assert decide_static(record(expires=NOW + 1), keyspace("10.0.0.0/8"), request, NOW) is None


# -- make_plan -----------------------------------------------------------------------------


def test_if_the_key_has_no_limits_and_unlimited_credits_then_the_plan_is_empty() -> None:
    plan = make_plan(record(), VerifyRequest())
    assert plan.empty
    assert plan.state_keys == []


def test_if_credits_are_limited_then_the_plan_touches_the_credit_state_with_cost_1() -> None:
    plan = make_plan(record(credits_limited=True), VerifyRequest())
    assert not plan.empty
    assert plan.credits_key == "credits:key_1"
    assert plan.cost == 1
    assert plan.state_keys == ["credits:key_1"]


def test_if_a_cost_is_given_then_the_plan_uses_it_and_zero_is_allowed() -> None:
    assert make_plan(record(credits_limited=True), VerifyRequest(cost=7)).cost == 7
    assert make_plan(record(credits_limited=True), VerifyRequest(cost=0)).cost == 0


def test_if_the_cost_is_negative_then_make_plan_raises_a_validation_error() -> None:
    with pytest.raises(ValidationError):
        make_plan(record(credits_limited=True), VerifyRequest(cost=-1))


def test_if_key_and_identity_have_auto_applied_limits_then_all_of_them_are_planned() -> None:
    key = record(ratelimits=(limit("requests", 10, auto=True), limit("search", 2)), identity=TEAM)
    plan = make_plan(key, VerifyRequest())
    assert sorted(check.config.name for check in plan.limits) == ["requests", "team"]
    assert all(check.cost == 1 for check in plan.limits)


def test_if_a_limit_is_not_auto_applied_then_it_is_not_planned_unless_named() -> None:
    plan = make_plan(record(ratelimits=(limit("search", 2),)), VerifyRequest())
    assert plan.limits == ()


def test_if_key_and_identity_both_auto_apply_a_name_then_both_are_checked() -> None:
    identity = Identity("id_1", "team-a", None, (limit("requests", 100, auto=True),))
    key = record(ratelimits=(limit("requests", 5, 1000, auto=True),), identity=identity)
    owners = {check.state_key.split(":")[1]: check.config.limit
              for check in make_plan(key, VerifyRequest()).limits}
    assert owners == {"key_1": 5, "id_1": 100}  # the key cannot escape the shared budget


def test_if_a_name_is_on_key_and_identity_then_naming_it_picks_the_key_limit() -> None:
    identity = Identity("id_1", "team-a", None, (limit("requests", 100),))
    key = record(ratelimits=(limit("requests", 5, 1000),), identity=identity)
    (named,) = make_plan(key, VerifyRequest(ratelimits=({"name": "requests", "cost": 3},))).limits
    assert (named.config.limit, named.cost) == (5, 3)
    assert named.state_key.startswith("rl:key_1:")


def test_if_a_limit_is_named_then_it_is_planned_with_cost_1() -> None:
    (check,) = make_plan(record(ratelimits=(limit("search", 2),)),
                         VerifyRequest(ratelimits=("search",))).limits
    assert check.config.name == "search"
    assert check.cost == 1


def test_if_a_limit_is_named_with_a_cost_then_the_cost_is_used() -> None:
    (check,) = make_plan(record(ratelimits=(limit("search", 2),)),
                         VerifyRequest(ratelimits=({"name": "search", "cost": 3},))).limits
    assert check.cost == 3


def test_if_an_auto_applied_limit_is_also_named_then_it_is_checked_once_with_the_named_cost() -> None:
    key = record(ratelimits=(limit("requests", 10, auto=True),))
    plan = make_plan(key, VerifyRequest(ratelimits=({"name": "requests", "cost": 0},)))
    assert [(check.config.name, check.cost) for check in plan.limits] == [("requests", 0)]


def test_if_an_identity_limit_is_named_then_it_is_planned() -> None:
    (check,) = make_plan(record(identity=TEAM),
                         VerifyRequest(ratelimits=({"name": "team.burst"},))).limits[1:]
    assert check.config.name == "team.burst"
    assert check.state_key.startswith("rl:id_1:")


def test_if_an_ad_hoc_limit_gives_limit_and_duration_then_it_is_planned_without_configuration() -> None:
    request = VerifyRequest(ratelimits=({"name": "uploads", "limit": 3, "duration": 5000, "cost": 2},))
    (check,) = make_plan(record(), request).limits
    assert (check.config.name, check.config.limit, check.config.duration) == ("uploads", 3, 5000)
    assert check.config.id == ""
    assert check.cost == 2


def test_if_an_ad_hoc_limit_has_a_configured_name_then_it_does_not_share_its_counter() -> None:
    key = record(ratelimits=(limit("uploads", 3, 5000),))
    (named,) = make_plan(key, VerifyRequest(ratelimits=("uploads",))).limits
    (adhoc,) = make_plan(key, VerifyRequest(
        ratelimits=({"name": "uploads", "limit": 3, "duration": 5000},))).limits
    assert named.state_key != adhoc.state_key


def test_if_two_keys_use_the_same_ad_hoc_limit_then_each_key_has_its_own_counter() -> None:
    request = VerifyRequest(ratelimits=({"name": "uploads", "limit": 3, "duration": 5000},))
    (first,) = make_plan(record(key_id="key_1"), request).limits
    (second,) = make_plan(record(key_id="key_2"), request).limits
    assert first.state_key != second.state_key


@pytest.mark.parametrize("spec", [{"name": "x", "limit": 3, "duration": 0},
                                  {"name": "x", "limit": 3, "duration": -1000},
                                  {"name": "x", "limit": -1, "duration": 1000}])
def test_if_an_ad_hoc_limit_has_an_impossible_window_then_make_plan_raises_a_validation_error(
    spec: dict[str, Any],
) -> None:
    with pytest.raises(ValidationError):
        make_plan(record(), VerifyRequest(ratelimits=(spec,)))


def test_if_an_ad_hoc_limit_has_only_a_limit_then_the_name_must_be_configured() -> None:
    with pytest.raises(UnknownRatelimitError):
        make_plan(record(), VerifyRequest(ratelimits=({"name": "uploads", "limit": 3},)))


def test_if_a_named_limit_is_unknown_then_make_plan_raises_unknown_ratelimit_error() -> None:
    with pytest.raises(UnknownRatelimitError) as info:
        make_plan(record(identity=TEAM), VerifyRequest(ratelimits=("nope",)))
    assert info.value.name == "nope"
    assert isinstance(info.value, KeystileError)


def test_if_a_named_limit_has_a_negative_cost_then_make_plan_raises_a_validation_error() -> None:
    with pytest.raises(ValidationError):
        make_plan(record(ratelimits=(limit("search", 2),)),
                  VerifyRequest(ratelimits=({"name": "search", "cost": -1},)))


def test_if_two_keys_share_an_identity_then_its_limits_share_one_state_key() -> None:
    first = make_plan(record(key_id="key_1", identity=TEAM), VerifyRequest()).limits
    second = make_plan(record(key_id="key_2", identity=TEAM), VerifyRequest()).limits
    assert [c.state_key for c in first] == [c.state_key for c in second]
    key_limit = limit("requests", 10, auto=True)
    own_1 = make_plan(record(key_id="key_1", ratelimits=(key_limit,)), VerifyRequest()).limits
    own_2 = make_plan(record(key_id="key_2", ratelimits=(key_limit,)), VerifyRequest()).limits
    assert own_1[0].state_key != own_2[0].state_key


def test_if_a_key_spends_the_states_of_another_then_credits_and_every_key_limit_are_that_ones() -> None:
    limits = (limit("requests", 10, auto=True), limit("search", 2))
    owner = record(key_id="key_old", ratelimits=limits, identity=TEAM, credits_limited=True)
    rerolled = replace(owner, key_id="key_new", states_of="key_old")
    request = VerifyRequest(ratelimits=("search", {"name": "uploads", "limit": 3, "duration": 5000}))

    plans = [make_plan(key, request) for key in (owner, rerolled)]

    assert plans[0].state_keys == plans[1].state_keys
    assert plans[1].credits_key == "credits:key_old"
    assert len(plans[1].state_keys) == 5  # requests, team, search, uploads and the credits
    assert not any("key_new" in state_key for state_key in plans[1].state_keys)


# -- settle --------------------------------------------------------------------------------


def test_if_credits_suffice_then_settle_is_valid_and_writes_the_spent_credits() -> None:
    plan = make_plan(record(credits_limited=True), VerifyRequest(cost=2))
    settlement, writes = settle(plan, {"credits:key_1": credits(5)}, NOW)
    assert settlement == Settlement(Code.VALID, (), 3)
    assert writes == {"credits:key_1": credits(3)}


def test_if_credits_are_exactly_the_cost_then_settle_is_valid_and_leaves_zero() -> None:
    plan = make_plan(record(credits_limited=True), VerifyRequest(cost=5))
    settlement, writes = settle(plan, {"credits:key_1": credits(5)}, NOW)
    assert (settlement.code, settlement.credits) == (Code.VALID, 0)
    assert writes["credits:key_1"]["remaining"] == 0


def test_if_credits_are_short_then_settle_is_usage_exceeded_and_writes_nothing() -> None:
    plan = make_plan(record(credits_limited=True), VerifyRequest(cost=3))
    settlement, writes = settle(plan, {"credits:key_1": credits(2)}, NOW)
    assert settlement == Settlement(Code.USAGE_EXCEEDED, (), 2, None)
    assert writes == {}


def test_if_credits_are_short_and_refill_daily_then_credits_reset_is_the_next_midnight() -> None:
    plan = make_plan(record(credits_limited=True), VerifyRequest())
    state = credits(0, {"interval": "daily", "amount": 10})
    settlement, _ = settle(plan, {"credits:key_1": state}, NOW)
    assert settlement.code is Code.USAGE_EXCEEDED
    assert settlement.credits_reset == NOW + DAY // 2  # 12:00 -> next 00:00 UTC


def test_if_the_cost_is_zero_then_a_key_without_credits_passes_and_nothing_is_written() -> None:
    plan = make_plan(record(credits_limited=True), VerifyRequest(cost=0))
    settlement, writes = settle(plan, {"credits:key_1": credits(0)}, NOW)
    assert (settlement.code, settlement.credits) == (Code.VALID, 0)
    assert writes == {}


def test_if_a_refill_is_due_then_settle_persists_it_even_at_cost_zero() -> None:
    refill = {"interval": "daily", "amount": 10}
    plan = make_plan(record(credits_limited=True), VerifyRequest(cost=0))
    state = credits(0, refill, refilled_at=NOW - DAY)
    settlement, writes = settle(plan, {"credits:key_1": state}, NOW)
    assert (settlement.code, settlement.credits) == (Code.VALID, 10)
    assert writes == {"credits:key_1": {"remaining": 10, "refill": refill, "refilledAt": NOW}}


def test_if_a_refill_is_due_then_the_cost_is_taken_from_the_refilled_amount() -> None:
    refill = {"interval": "daily", "amount": 10}
    plan = make_plan(record(credits_limited=True), VerifyRequest(cost=4))
    state = credits(1, refill, refilled_at=NOW - DAY)
    settlement, writes = settle(plan, {"credits:key_1": state}, NOW)
    assert (settlement.code, settlement.credits) == (Code.VALID, 6)
    assert writes["credits:key_1"] == {"remaining": 6, "refill": refill, "refilledAt": NOW}


def test_if_credits_became_unlimited_then_settle_is_valid_without_credits() -> None:
    plan = make_plan(record(credits_limited=True), VerifyRequest(cost=5))
    settlement, writes = settle(plan, {"credits:key_1": credits(None)}, NOW)
    assert (settlement.code, settlement.credits) == (Code.VALID, None)
    assert writes == {}


def test_if_a_limit_has_room_then_settle_reports_it_and_writes_its_counter() -> None:
    key = record(ratelimits=(limit("requests", 10, auto=True, id="rl_req"),))
    plan = make_plan(key, VerifyRequest())
    (check,) = plan.limits
    settlement, writes = settle(plan, {}, NOW + 1500)
    assert settlement.code is Code.VALID
    assert settlement.ratelimits == (RatelimitResult(
        name="requests", limit=10, duration=60_000, remaining=9, reset=NOW + 60_000,
        exceeded=False, id="rl_req", auto_apply=True,
    ),)
    assert writes == {check.state_key: {"seq": NOW // 60_000, "cur": 1, "prev": 0}}


def test_if_rate_limited_and_out_of_credits_then_rate_limited_wins() -> None:
    key = record(credits_limited=True, ratelimits=(limit("requests", 10, auto=True),))
    plan = make_plan(key, VerifyRequest())
    states = {plan.limits[0].state_key: full(10), "credits:key_1": credits(0)}
    settlement, writes = settle(plan, states, NOW)
    assert settlement.code is Code.RATE_LIMITED
    assert settlement.credits == 0
    assert writes == {}


def test_if_one_of_several_limits_denies_then_no_counter_and_no_credit_is_written() -> None:
    key = record(credits_limited=True, identity=TEAM,
                 ratelimits=(limit("requests", 10, auto=True), limit("burst", 2, 1000, auto=True)))
    plan = make_plan(key, VerifyRequest())
    by_name = {check.config.name: check.state_key for check in plan.limits}
    states = {by_name["burst"]: full(2, 1000), "credits:key_1": credits(5)}
    settlement, writes = settle(plan, states, NOW)
    assert settlement.code is Code.RATE_LIMITED
    assert writes == {}
    assert settlement.credits == 5
    exceeded = {result.name: result.exceeded for result in settlement.ratelimits}
    assert exceeded == {"requests": False, "burst": True, "team": False}
    remaining = {result.name: result.remaining for result in settlement.ratelimits}
    assert remaining == {"requests": 10, "burst": 0, "team": 100}  # nothing was taken


def test_if_rate_limited_while_a_refill_is_due_then_the_refill_is_reported_but_not_written() -> None:
    refill = {"interval": "daily", "amount": 10}
    key = record(credits_limited=True, ratelimits=(limit("requests", 1, auto=True),))
    plan = make_plan(key, VerifyRequest())
    states = {plan.limits[0].state_key: full(1), "credits:key_1": credits(0, refill, NOW - DAY)}
    settlement, writes = settle(plan, states, NOW)
    assert (settlement.code, settlement.credits) == (Code.RATE_LIMITED, 10)
    assert writes == {}


def test_if_a_key_has_unlimited_credits_and_is_rate_limited_then_credits_are_none() -> None:
    key = record(ratelimits=(limit("requests", 1, auto=True),))
    plan = make_plan(key, VerifyRequest())
    settlement, writes = settle(plan, {plan.limits[0].state_key: full(1)}, NOW)
    assert (settlement.code, settlement.credits) == (Code.RATE_LIMITED, None)
    assert writes == {}


def test_if_usage_is_exceeded_then_the_limit_counters_are_not_written_either() -> None:
    key = record(credits_limited=True, ratelimits=(limit("requests", 10, auto=True),))
    plan = make_plan(key, VerifyRequest())
    settlement, writes = settle(plan, {"credits:key_1": credits(0)}, NOW)
    assert settlement.code is Code.USAGE_EXCEEDED
    assert settlement.ratelimits[0].remaining == 10  # the rejected request took no token
    assert writes == {}


def test_if_two_keys_of_one_identity_verify_then_they_spend_one_shared_budget() -> None:
    identity = Identity("id_1", "team-a", None, (limit("team", 2, auto=True),))
    states: dict[str, Any] = {}
    codes = []
    for key_id in ("key_1", "key_2", "key_1"):
        plan = make_plan(record(key_id=key_id, identity=identity), VerifyRequest())
        settlement, writes = settle(plan, states, NOW)
        states.update(writes)
        codes.append(settlement.code)
    assert codes == [Code.VALID, Code.VALID, Code.RATE_LIMITED]


def test_if_a_named_limit_costs_zero_then_it_is_checked_but_not_written() -> None:
    key = record(ratelimits=(limit("search", 2),))
    plan = make_plan(key, VerifyRequest(ratelimits=({"name": "search", "cost": 0},)))
    settlement, writes = settle(plan, {plan.limits[0].state_key: full(2)}, NOW)
    assert settlement.code is Code.VALID
    assert settlement.ratelimits[0].remaining == 0
    assert writes == {}


# -- build_result and to_dict ---------------------------------------------------------------


def test_if_the_code_is_not_found_then_the_result_carries_no_key_information() -> None:
    result = build_result(Code.NOT_FOUND, record(identity=TEAM), Settlement(Code.VALID, (), 3))
    assert result == VerifyResult(valid=False, code=Code.NOT_FOUND)
    assert result.to_dict() == {"valid": False, "code": "NOT_FOUND"}


def test_if_there_is_no_record_then_the_result_is_not_found_whatever_the_code() -> None:
    assert build_result(Code.VALID, None) == VerifyResult(valid=False, code=Code.NOT_FOUND)


@pytest.mark.parametrize("code", [Code.DISABLED, Code.EXPIRED, Code.FORBIDDEN,
                                  Code.INSUFFICIENT_PERMISSIONS])
def test_if_a_static_check_fails_then_the_result_still_carries_the_key_information(code: Code) -> None:
    result = build_result(code, record(enabled=code is not Code.DISABLED, expires=NOW))
    assert not result.valid
    assert result.code is code
    assert (result.key_id, result.keyspace_id, result.api_id) == ("key_1", "ks_1", "api_1")
    assert result.name == "alice's key"
    assert result.meta == {"plan": "pro"}
    assert result.expires == NOW
    assert result.permissions == ("docs.read", "docs.list")
    assert result.roles == ("reader",)
    assert result.credits is None
    assert result.ratelimits == ()


def test_if_settled_valid_then_the_result_is_valid_with_credits_and_limits() -> None:
    checked = RatelimitResult("requests", 10, 60_000, 9, NOW + 60_000, False, "rl_1", True)
    result = build_result(Code.VALID, record(), Settlement(Code.VALID, (checked,), 4, None))
    assert result.valid
    assert result.credits == 4
    assert result.ratelimits == (checked,)


def test_if_usage_is_exceeded_then_the_result_keeps_the_next_refill() -> None:
    result = build_result(Code.USAGE_EXCEEDED, record(),
                          Settlement(Code.USAGE_EXCEEDED, (), 0, NOW + 1000))
    assert not result.valid
    assert result.credits_reset == NOW + 1000


def snake_case_keys(value: Any) -> list[str]:
    if isinstance(value, dict):
        found = [key for key in value if "_" in key]
        return found + [k for v in value.values() for k in snake_case_keys(v)]
    if isinstance(value, list):
        return [k for v in value for k in snake_case_keys(v)]
    return []


def test_if_a_full_result_is_turned_into_a_dict_then_it_uses_unkey_camel_case_names() -> None:
    checked = RatelimitResult("requests", 10, 60_000, 9, NOW + 60_000, False, "rl_1", True)
    key = record(expires=NOW + DAY, identity=TEAM, meta={"user_id": 7})
    data = build_result(Code.VALID, key, Settlement(Code.VALID, (checked,), 4, NOW)).to_dict()
    assert data == {
        "valid": True, "code": "VALID", "keyId": "key_1", "keyspaceId": "ks_1", "apiId": "api_1",
        "name": "alice's key", "meta": {"user_id": 7}, "expires": NOW + DAY, "credits": 4,
        "enabled": True, "roles": ["reader"], "permissions": ["docs.read", "docs.list"],
        "identity": {
            "id": "id_1", "externalId": "team-a", "meta": {"tier": "gold"},
            "ratelimits": [
                {"id": "rl_team", "name": "team", "limit": 100, "duration": 60_000, "autoApply": True},
                {"id": "", "name": "team.burst", "limit": 5, "duration": 1000, "autoApply": False},
            ],
        },
        "ratelimits": [{"id": "rl_1", "name": "requests", "limit": 10, "duration": 60_000,
                        "reset": NOW + 60_000, "remaining": 9, "exceeded": False, "autoApply": True}],
    }
    assert snake_case_keys({k: v for k, v in data.items() if k != "meta"}) == []
    assert json.loads(json.dumps(data)) == data


def test_if_credits_are_unlimited_and_nothing_optional_is_set_then_those_fields_are_omitted() -> None:
    data = build_result(Code.VALID, record(name=None, meta=None)).to_dict()
    assert data == {"valid": True, "code": "VALID", "keyId": "key_1", "keyspaceId": "ks_1",
                    "apiId": "api_1", "enabled": True, "roles": ["reader"],
                    "permissions": ["docs.read", "docs.list"]}


def test_if_a_key_is_disabled_then_the_dict_says_enabled_false() -> None:
    data = build_result(Code.DISABLED, record(enabled=False)).to_dict()
    assert data["enabled"] is False
    assert data["valid"] is False
