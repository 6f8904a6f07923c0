"""Reroll with a grace period: the old and the new key share credits and rate limits
until the old one expires, on every store."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest

from keystile import AsyncKeystile, Code, Credits, Keystile, RatelimitConfig, Refill

if TYPE_CHECKING:
    from conftest import Clock

MINUTE = 60_000
DAY = 86_400_000


@pytest.fixture
def api_id(ks: Keystile) -> str:
    return ks.create_api("payments", prefix="sk_live").id


def codes(ks: Keystile, key: str, times: int, **request: object) -> list[Code]:
    return [ks.verify(key, **request).code for _ in range(times)]


# -- sharing during the grace period ----------------------------------------------------------


def test_if_a_key_is_rerolled_then_both_keys_spend_one_credit_balance(
    ks: Keystile, api_id: str,
) -> None:
    old = ks.create_key(api_id, credits=10)

    new = ks.reroll_key(old.key_id, expiration_ms=DAY)

    assert codes(ks, old.key, 6) == [Code.VALID] * 6
    assert [ks.verify(new.key).credits for _ in range(4)] == [3, 2, 1, 0]
    assert ks.verify(old.key).code is Code.USAGE_EXCEEDED
    assert ks.verify(new.key).code is Code.USAGE_EXCEEDED
    assert ks.get_key(old.key_id).credits == ks.get_key(new.key_id).credits == Credits(0)


def test_if_a_key_is_rerolled_then_both_keys_count_against_one_rate_limit(
    ks: Keystile, api_id: str,
) -> None:
    old = ks.create_key(api_id, ratelimits=[RatelimitConfig("requests", 5, MINUTE, auto_apply=True)])

    new = ks.reroll_key(old.key_id, expiration_ms=DAY)

    assert codes(ks, old.key, 3) + codes(ks, new.key, 2) == [Code.VALID] * 5
    assert ks.verify(old.key).code is Code.RATE_LIMITED
    assert ks.verify(new.key).code is Code.RATE_LIMITED


def test_if_a_key_is_rerolled_then_named_and_ad_hoc_limits_are_shared_too(
    ks: Keystile, api_id: str,
) -> None:
    old = ks.create_key(api_id, ratelimits=[RatelimitConfig("search", 1, MINUTE)])
    uploads = {"name": "uploads", "limit": 1, "duration": MINUTE}  # given by the route

    new = ks.reroll_key(old.key_id, expiration_ms=DAY)

    assert ks.verify(old.key, ratelimits=["search", uploads]).valid
    assert ks.verify(new.key, ratelimits=["search"]).code is Code.RATE_LIMITED
    assert ks.verify(new.key, ratelimits=[uploads]).code is Code.RATE_LIMITED


def test_if_the_grace_period_ends_then_the_old_key_expires_and_the_new_one_keeps_the_balance(
    ks: Keystile, api_id: str, clock: Clock,
) -> None:
    old = ks.create_key(api_id, credits=Credits(10, Refill("daily", 10)),
                        ratelimits=[RatelimitConfig("requests", 100, DAY, auto_apply=True)])
    assert ks.verify(old.key).valid  # cached, with a credit and a token spent

    new = ks.reroll_key(old.key_id, expiration_ms=MINUTE)
    assert codes(ks, old.key, 2) == [Code.VALID] * 2
    clock.advance(MINUTE + 1)

    assert ks.verify(old.key).code is Code.EXPIRED
    result = ks.verify(new.key)
    assert (result.code, result.credits, result.ratelimits[0].remaining) == (Code.VALID, 6, 96)
    assert ks.get_key(new.key_id).credits == Credits(6, Refill("daily", 10))


def test_if_the_grace_period_is_zero_then_the_old_key_is_rejected_at_once(
    ks: Keystile, api_id: str,
) -> None:
    old = ks.create_key(api_id, credits=5)
    assert ks.verify(old.key).valid  # cached

    new = ks.reroll_key(old.key_id, expiration_ms=0)  # the clock stands still

    assert ks.verify(old.key).code is Code.EXPIRED
    assert ks.verify(new.key).credits == 3


def test_if_the_old_key_expires_with_no_grace_given_then_it_keeps_its_own_expiry_and_shares(
    ks: Keystile, api_id: str, clock: Clock,
) -> None:
    old = ks.create_key(api_id, credits=5, expires=clock.ms + MINUTE)

    new = ks.reroll_key(old.key_id, expiration_ms=None)

    assert ks.get_key(old.key_id).expires == ks.get_key(new.key_id).expires == clock.ms + MINUTE
    assert ks.verify(old.key).credits == 4 and ks.verify(new.key).credits == 3


# -- chains --------------------------------------------------------------------------------


def test_if_the_new_key_is_rerolled_again_then_all_three_keys_share_the_states(
    ks: Keystile, api_id: str,
) -> None:
    first = ks.create_key(api_id, credits=9,
                          ratelimits=[RatelimitConfig("requests", 6, MINUTE, auto_apply=True)])
    second = ks.reroll_key(first.key_id, expiration_ms=DAY)

    third = ks.reroll_key(second.key_id, expiration_ms=DAY)

    keys = (first.key, second.key, third.key)
    assert [ks.verify(key).credits for key in keys * 2] == [8, 7, 6, 5, 4, 3]
    assert {ks.verify(key).code for key in keys} == {Code.RATE_LIMITED}
    assert ks.store.get("key", third.key_id)["states_of"] == first.key_id  # no chain to follow


def test_if_a_key_in_its_grace_period_is_rerolled_again_then_every_key_shares_the_states(
    ks: Keystile, api_id: str,
) -> None:
    old = ks.create_key(api_id, credits=3)
    new = ks.reroll_key(old.key_id, expiration_ms=DAY)

    other = ks.reroll_key(old.key_id, expiration_ms=DAY)

    assert [ks.verify(k).credits for k in (old.key, new.key, other.key)] == [2, 1, 0]
    assert ks.verify(other.key).code is Code.USAGE_EXCEEDED


# -- management during the grace period -----------------------------------------------------


def test_if_the_old_keys_credits_change_in_its_grace_period_then_the_shared_balance_changes(
    ks: Keystile, api_id: str,
) -> None:
    old = ks.create_key(api_id, credits=10)
    new = ks.reroll_key(old.key_id, expiration_ms=DAY)

    ks.update_credits(old.key_id, "decrement", 4)
    ks.update_refill(old.key_id, Refill("monthly", 20, refill_day=1))

    expected = Credits(6, Refill("monthly", 20, refill_day=1))
    assert ks.get_key(new.key_id).credits == ks.get_key(old.key_id).credits == expected
    assert [k.credits for k in ks.list_keys(api_id).keys] == [expected, expected]
    assert ks.verify(new.key).credits == 5
    ks.update_key(old.key_id, credits=Credits(2))
    assert ks.verify(new.key).credits == 1 and ks.verify(old.key).credits == 0


def test_if_one_key_of_a_reroll_becomes_unlimited_or_limited_then_so_does_the_other(
    ks: Keystile, api_id: str,
) -> None:
    old = ks.create_key(api_id, credits=10)
    assert ks.verify(old.key).valid  # cached as limited
    new = ks.reroll_key(old.key_id, expiration_ms=DAY)
    assert ks.verify(new.key).valid  # cached as limited

    ks.update_key(new.key_id, credits=None)
    assert ks.verify(old.key).credits is None and ks.verify(new.key).credits is None

    ks.update_credits(old.key_id, "set", 1)
    assert ks.verify(new.key).credits == 0
    assert ks.verify(old.key).code is Code.USAGE_EXCEEDED  # its record knows it is limited again


def test_if_the_old_key_is_deleted_for_good_then_the_new_key_keeps_the_credits(
    ks: Keystile, api_id: str,
) -> None:
    old = ks.create_key(api_id, credits=10)
    new = ks.reroll_key(old.key_id, expiration_ms=DAY)
    assert ks.verify(old.key).valid

    ks.delete_key(old.key_id, permanent=True)

    assert ks.verify(old.key).code is Code.NOT_FOUND
    assert ks.get_key(new.key_id).credits == Credits(9)
    assert ks.verify(new.key).credits == 8


def test_if_the_new_key_is_deleted_for_good_in_the_grace_period_then_the_old_key_keeps_the_credits(
    ks: Keystile, api_id: str,
) -> None:
    old = ks.create_key(api_id, credits=10)
    new = ks.reroll_key(old.key_id, expiration_ms=DAY)

    ks.delete_key(new.key_id, permanent=True)

    assert ks.verify(old.key).credits == 9


def test_if_the_last_key_sharing_the_credits_is_deleted_for_good_then_they_are_erased(
    ks: Keystile, api_id: str,
) -> None:
    old = ks.create_key(api_id, credits=10)
    new = ks.reroll_key(old.key_id, expiration_ms=DAY)
    state = f"credits:{old.key_id}"

    ks.delete_key(old.key_id, permanent=True)
    kept = ks.store.read_states([state])[state]
    ks.delete_key(new.key_id, permanent=True)

    assert kept is not None and kept["remaining"] == 10
    assert ks.store.read_states([state]) == {state: None}


# -- caches, other instances, leases, concurrency ------------------------------------------------


def test_if_another_instance_has_the_old_key_cached_then_a_reroll_with_no_grace_reaches_it(
    ks: Keystile, api_id: str, same_store: Callable[..., Keystile],
) -> None:
    other = same_store()
    old = ks.create_key(api_id, credits=10)
    assert other.verify(old.key).valid  # cached there

    new = ks.reroll_key(old.key_id, expiration_ms=0)

    assert other.verify(old.key).code is Code.EXPIRED
    assert other.verify(new.key).credits == 8


def test_if_leased_keys_are_rerolled_then_both_spend_from_one_lease_and_one_balance(
    ks: Keystile,
) -> None:
    api = ks.create_api("shop", prefix="sk_shop", lease=10)
    old = ks.create_key(api.id, credits=25)
    assert ks.verify(old.key).valid  # leases 10

    new = ks.reroll_key(old.key_id, expiration_ms=DAY)

    assert ks.verify(new.key).credits == 23
    assert ks.get_key(new.key_id).credits == Credits(15)  # spent from the old key's lease
    spent = codes(ks, new.key, 11) + codes(ks, old.key, 13)
    assert spent.count(Code.VALID) == 23 and spent[-1] is Code.USAGE_EXCEEDED
    ks.verifier.release_leases()
    assert ks.get_key(new.key_id).credits == Credits(0)


def test_if_keys_spend_while_they_are_rerolled_then_no_spend_is_lost(
    ks: Keystile, api_id: str,
) -> None:
    first = ks.create_key(api_id, credits=1000,
                          ratelimits=[RatelimitConfig("requests", 1000, DAY, auto_apply=True)])
    valid: list[bool] = []
    done = threading.Event()

    def spend() -> None:
        for _ in range(60):
            valid.append(ks.verify(first.key).valid)
        done.set()

    spender = threading.Thread(target=spend)
    spender.start()
    latest = first.key_id
    rerolls = 0
    while not done.is_set() or rerolls < 5:
        latest = ks.reroll_key(latest, expiration_ms=DAY).key_id
        rerolls += 1
    spender.join(30)

    result = ks.verify(ks.reroll_key(latest, expiration_ms=DAY).key)
    assert all(valid) and len(valid) == 60
    assert (result.credits, result.ratelimits[0].remaining) == (1000 - 61, 1000 - 61)


async def test_if_rerolled_keys_are_verified_async_then_they_share_the_balance(
    store_url: str, clock: Clock,
) -> None:
    async with AsyncKeystile(store_url, now=clock) as aks:  # on Redis: the native async settle
        api = await aks.create_api("a", prefix="sk_a")
        old = await aks.create_key(api.id, credits=3)

        new = await aks.reroll_key(old.key_id, expiration_ms=DAY)

        credits = [(await aks.verify(key)).credits for key in (old.key, new.key, old.key)]
        assert credits == [2, 1, 0]
        assert (await aks.verify(new.key)).code is Code.USAGE_EXCEEDED
