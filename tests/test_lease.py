"""Leased mode: units reserved in batches, spent locally, never more than the limit."""

from __future__ import annotations

import os
import threading
from collections import Counter
from typing import Any

import pytest

from keystile import Code, Credits, Keystile, RatelimitConfig, Refill, ValidationError
from keystile._decide import LimitCheck, Plan
from keystile._lease import FOREVER, Lease, Leases, acquire, release
from tests import procs
from tests.conftest import T0, Clock

LIMIT = RatelimitConfig("requests", 20, 60_000, auto_apply=True)


def plan_of(*, credits: bool = True, limit: bool = True, cost: int = 1) -> Plan:
    checks = (LimitCheck("rl:key_1:requests:60000", LIMIT, 1),) if limit else ()
    return Plan("credits:key_1" if credits else None, cost, checks)


# -- the pure part ------------------------------------------------------------------------


def test_if_a_lease_is_acquired_then_the_store_counts_the_whole_batch_as_spent() -> None:
    plan = plan_of()
    states = {"credits:key_1": {"remaining": 100, "refill": None, "refilledAt": 0}}
    rejection, writes, grants = acquire(plan, states, T0, 10, {"credits:key_1": 1,
                                                                "rl:key_1:requests:60000": 1})
    assert rejection is None
    assert writes["credits:key_1"]["remaining"] == 90
    assert writes["rl:key_1:requests:60000"] == {"seq": T0 // 60_000, "cur": 10, "prev": 0}
    assert grants["credits:key_1"] == Lease(10, FOREVER, 90, 0)
    assert grants["rl:key_1:requests:60000"].until == (T0 // 60_000 + 1) * 60_000


def test_if_less_than_a_batch_is_left_then_the_lease_takes_what_is_left() -> None:
    states = {"credits:key_1": {"remaining": 3, "refill": None, "refilledAt": 0}}
    _, writes, grants = acquire(plan_of(limit=False), states, T0, 10, {"credits:key_1": 1})
    assert writes["credits:key_1"]["remaining"] == 0 and grants["credits:key_1"].balance == 3


@pytest.mark.parametrize("credits_left, counted, code", [
    (0, 0, Code.USAGE_EXCEEDED), (50, 20, Code.RATE_LIMITED)])
def test_if_a_lease_cannot_cover_the_verify_then_it_is_rejected_and_nothing_is_written(
    credits_left: int, counted: int, code: Code,
) -> None:
    seq = T0 // 60_000
    states = {"credits:key_1": {"remaining": credits_left, "refill": None, "refilledAt": 0},
              "rl:key_1:requests:60000": {"seq": seq, "cur": counted, "prev": 0}}
    rejection, writes, grants = acquire(plan_of(), states, T0, 10,
                                        {"credits:key_1": 1, "rl:key_1:requests:60000": 1})
    assert rejection is not None and rejection.code is code
    assert writes == {} and grants == {}


def test_if_leases_are_given_back_then_only_the_current_window_and_period_take_them() -> None:
    seq = T0 // 60_000
    held = {"rl:a": Lease(4, 0, 0, seq), "rl:b": Lease(4, 0, 0, seq - 1),
            "credits:x": Lease(7, 0, 0, 1000), "credits:y": Lease(7, 0, 0, 1000)}
    states = {"rl:a": {"seq": seq, "cur": 10, "prev": 2}, "rl:b": {"seq": seq, "cur": 10, "prev": 2},
              "credits:x": {"remaining": 5, "refill": None, "refilledAt": 1000},
              "credits:y": {"remaining": 5, "refill": {"interval": "daily", "amount": 9},
                            "refilledAt": 2000}}
    assert release(held, states) == {"rl:a": {"seq": seq, "cur": 6, "prev": 2},
                                     "credits:x": {"remaining": 12, "refill": None, "refilledAt": 1000}}


def test_if_a_window_ends_then_its_lease_is_void() -> None:
    leases = Leases()
    plan = plan_of(credits=False)
    leases.grant({"rl:key_1:requests:60000": Lease(5, T0 + 1000, 10, T0 // 60_000)}, T0)
    assert leases.spend(plan, T0) is not None
    assert leases.spend(plan, T0 + 1000) is None
    assert leases.lacking(plan, T0 + 1000) == {"rl:key_1:requests:60000": 1}


# -- through a verifier, on every store ------------------------------------------------------


def test_if_a_key_is_leased_then_it_spends_exactly_its_credits_in_few_transactions(
    counting_store: Any, clock: Clock,
) -> None:
    ks = Keystile(counting_store, now=clock)
    api = ks.create_api("shop", prefix="sk_shop", lease=10)
    key = ks.create_key(api.id, credits=95).key
    ks.verify("sk_shop_3xituoZLNs2TE2YiXHbRvA")  # load the keyspace map
    counting_store.calls.clear()
    codes = Counter(ks.verify(key).code for _ in range(120))
    assert codes == {Code.VALID: 95, Code.USAGE_EXCEEDED: 25}
    assert counting_store.calls["settle"] == 0
    # 10 leases of up to 10 credits (the last one 5), then each refused verify asks again.
    assert counting_store.calls["transact"] == 10 + 25
    ks.close()


def test_if_a_key_overrides_its_keyspace_lease_then_the_key_setting_wins(ks: Keystile) -> None:
    api = ks.create_api("shop", prefix="sk_shop", lease=10)
    exact = ks.create_key(api.id, credits=50, lease=0)
    leased = ks.create_key(api.id, credits=50)
    assert ks.verify(exact.key).credits == 49
    assert ks.verify(leased.key).credits == 49  # reported: what the store has plus the lease
    assert ks.get_key(exact.key_id).credits == Credits(49)
    assert ks.get_key(leased.key_id).credits == Credits(40)  # the store counts the batch


def test_if_a_leased_rate_limit_is_shared_then_exactly_the_limit_is_admitted(
    ks: Keystile, clock: Clock,
) -> None:
    api = ks.create_api("shop", prefix="sk_shop", lease=7)
    key = ks.create_key(api.id, ratelimits=[LIMIT]).key
    codes = Counter(ks.verify(key).code for _ in range(30))
    assert codes == {Code.VALID: 20, Code.RATE_LIMITED: 10}
    clock.advance(120_000)  # two windows later: a new lease
    assert ks.verify(key).valid


def test_if_the_keystile_closes_gracefully_then_unused_leased_credits_go_back(
    store_url: str, clock: Clock,
) -> None:
    ks = Keystile(store_url, now=clock)
    api = ks.create_api("shop", prefix="sk_shop", lease=50)
    created = ks.create_key(api.id, credits=100, ratelimits=[LIMIT])
    for _ in range(3):
        assert ks.verify(created.key).valid
    assert ks.get_key(created.key_id).credits == Credits(50)
    ks.verifier.release_leases()
    assert ks.get_key(created.key_id).credits == Credits(97)
    state = ks.store.read_states([f"rl:{created.key_id}:requests:60000"])
    assert state[f"rl:{created.key_id}:requests:60000"]["cur"] == 3  # 20 leased, 17 back
    ks.close()


def test_if_a_refill_passes_then_the_old_period_lease_is_neither_spent_nor_given_back(
    ks: Keystile, clock: Clock,
) -> None:
    api = ks.create_api("shop", prefix="sk_shop", lease=10)
    created = ks.create_key(api.id, credits=Credits(30, Refill("daily", 30)))
    assert ks.verify(created.key).credits == 29
    clock.advance(86_400_000)  # past 00:00 UTC: refilled to 30
    assert ks.verify(created.key).credits == 29
    ks.verifier.release_leases()
    assert ks.get_key(created.key_id).credits == Credits(29, Refill("daily", 30))


def test_if_the_lease_setting_is_bad_then_validation_error(ks: Keystile) -> None:
    with pytest.raises(ValidationError, match="lease"):
        ks.create_api("shop", prefix="sk_shop", lease=-1)
    api = ks.create_api("shop", prefix="sk_shop")
    with pytest.raises(ValidationError, match="lease"):
        ks.create_key(api.id, lease=True)  # type: ignore[arg-type]
    created = ks.create_key(api.id, credits=10)
    ks.update_key(created.key_id, lease=5)
    assert ks.verify(created.key).credits == 9
    assert ks.get_key(created.key_id).credits == Credits(5)


def test_if_threads_share_leases_then_no_credit_is_spent_twice(ks: Keystile) -> None:
    api = ks.create_api("shop", prefix="sk_shop", lease=7)
    key = ks.create_key(api.id, credits=200).key
    codes: list[Code] = []
    lock = threading.Lock()

    def spend() -> None:
        mine = [ks.verify(key).code for _ in range(60)]
        with lock:
            codes.extend(mine)

    threads = [threading.Thread(target=spend) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert Counter(codes) == {Code.VALID: 200, Code.USAGE_EXCEEDED: 40}


# -- several processes on Redis ------------------------------------------------------------

T = 1_773_576_003_000


def _spend(url: str, key: str, attempts: int, crash: bool, barrier: Any, results: Any) -> None:
    with Keystile(url, now=lambda: T) as ks:
        ks.verify(key)  # warm-up, counted
        barrier.wait(timeout=30)
        codes: list[str] = []
        lock = threading.Lock()

        def spend() -> None:
            mine = [ks.verify(key).code.value for _ in range(attempts)]
            with lock:
                codes.extend(mine)

        threads = [threading.Thread(target=spend) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        results.put(codes)
        if crash:
            results.close()
            results.join_thread()  # the answer must reach the parent before the crash
            os._exit(0)  # no graceful shutdown: the leases are not given back


def _run(url: str, key: str, attempts: int, crash: bool) -> Counter[str]:
    return procs.run_children(_spend, (url, key, attempts, crash), 4)


@pytest.mark.multiprocess
@pytest.mark.parametrize("crash", [False, True], ids=["graceful", "crash"])
def test_if_4_leased_processes_spend_1000_credits_then_never_more_and_graceful_loses_none(
    redis_store_url: str, crash: bool,
) -> None:
    with Keystile(redis_store_url, now=lambda: T) as ks:
        api = ks.create_api("payments", prefix="sk_live", lease=50)
        created = ks.create_key(api.id, credits=1000)

    counts = _run(redis_store_url, created.key, attempts=150, crash=crash)

    valid = counts[Code.VALID.value] + 4  # the warm-ups
    with Keystile(redis_store_url, now=lambda: T) as ks:
        left = ks.get_key(created.key_id).credits
    assert left is not None and left.remaining is not None
    assert valid <= 1000
    if crash:
        assert valid + left.remaining <= 1000  # what the crashed held is lost, never doubled
    else:
        assert valid + left.remaining == 1000  # every unused lease came back


@pytest.mark.multiprocess
def test_if_4_leased_processes_share_100_per_10s_then_never_more_are_admitted(
    redis_store_url: str,
) -> None:
    with Keystile(redis_store_url, now=lambda: T) as ks:
        api = ks.create_api("payments", prefix="sk_live", lease=8)
        created = ks.create_key(api.id, ratelimits=[
            RatelimitConfig("requests", 100, 10_000, auto_apply=True)])

    counts = _run(redis_store_url, created.key, attempts=20, crash=False)

    assert counts[Code.VALID.value] + 4 <= 100
    assert counts[Code.VALID.value] + 4 >= 100 - 4 * 8  # at most a batch per process unused


async def test_if_16_tasks_find_the_lease_empty_at_once_then_one_batch_serves_them_all(
    counting_store: Any, clock: Clock,
) -> None:
    import asyncio

    ks = Keystile(counting_store, now=clock)
    api = ks.create_api("shop", prefix="sk_shop", lease=50)
    created = ks.create_key(api.id, credits=1000, ratelimits=[
        RatelimitConfig("requests", 1000, 60_000, auto_apply=True)])
    await ks.verifier.verify_async("sk_shop_3xituoZLNs2TE2YiXHbRvA")  # the keyspace map
    assert (await ks.verifier.verify_async(created.key)).valid  # the record and a first lease
    ks.verifier.leases.take_all()  # empty, as if spent
    counting_store.calls.clear()

    results = await asyncio.gather(*(ks.verifier.verify_async(created.key) for _ in range(16)))

    assert all(result.valid for result in results)
    assert counting_store.calls["transact"] == 1  # one batch of 50, not one per task
    held = ks.verifier.leases.held[f"credits:{created.key_id}"]
    assert held.balance == 50 - 16
    ks.close()


def counting_hops(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    import anyio.to_thread

    hops: Counter[str] = Counter()
    real = anyio.to_thread.run_sync

    async def counted(fn: Any, *args: Any, **kwargs: Any) -> Any:
        hops[getattr(fn, "__qualname__", "?").rsplit(".", 1)[-1]] += 1
        return await real(fn, *args, **kwargs)

    monkeypatch.setattr(anyio.to_thread, "run_sync", counted)
    return hops


async def test_if_many_requests_find_the_lease_empty_at_once_then_one_thread_tops_it_up(
    store_url: str, clock: Clock, monkeypatch: pytest.MonkeyPatch,
) -> None:
    import asyncio

    ks = Keystile(store_url, now=clock)
    api = ks.create_api("shop", prefix="sk_shop", lease=50)
    created = ks.create_key(api.id, credits=Credits(10_000))
    assert (await ks.verifier.verify_async(created.key)).valid  # the record is cached
    hops = counting_hops(monkeypatch)
    results = await asyncio.gather(*(ks.verifier.verify_async(created.key) for _ in range(200)))
    ks.verifier.release_leases()

    assert all(result.valid for result in results)
    # 201 spent from leases of 50: about 4 acquisitions, each one thread; the other requests
    # that found the lease empty waited on the loop for it (before: a thread each).
    assert hops["_locked"] <= 8, hops
    assert ks.get_key(created.key_id).credits == Credits(10_000 - 201)
    ks.close()


# -- leasing ahead, under asyncio -----------------------------------------------------------


async def settle_ahead(ks: Keystile) -> None:
    import asyncio

    await asyncio.gather(*ks.verifier._lease_ahead_tasks)


async def test_if_a_route_spends_its_lease_under_asyncio_then_it_is_topped_up_before_it_runs_out(
    store_url: str, clock: Clock, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from keystile import VerifyRequest
    from keystile._models import lasting

    ks = Keystile(store_url, now=clock)
    api = ks.create_api("shop", prefix="sk_shop", lease=10)
    created = ks.create_key(api.id, credits=1000, ratelimits=[
        RatelimitConfig("requests", 1000, 60_000, auto_apply=True)])
    route = lasting(VerifyRequest())
    hops = counting_hops(monkeypatch)
    for _ in range(100):
        assert (await ks.verifier.verify_request_async(created.key, route)).valid
        await settle_ahead(ks)  # as a busy loop would let it land between requests
    # One acquisition when the key was first seen; every later batch was leased ahead,
    # in the background, while the current one still had units: no request waited.
    assert hops["_locked"] == 1 and hops["lease"] >= 9, hops
    held = ks.verifier.leases.held[f"credits:{created.key_id}"]
    assert held.balance <= 15  # never more than one and a half batches held
    ks.verifier.release_leases()
    assert ks.get_key(created.key_id).credits == Credits(900)
    ks.close()


async def test_if_the_store_cannot_cover_a_top_up_then_the_lease_runs_out_and_verifies_are_refused(
    store_url: str, clock: Clock, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from keystile import VerifyRequest
    from keystile._models import lasting

    ks = Keystile(store_url, now=clock)
    api = ks.create_api("shop", prefix="sk_shop", lease=10)
    created = ks.create_key(api.id, credits=15)
    route = lasting(VerifyRequest())
    hops = counting_hops(monkeypatch)
    codes = []
    for _ in range(20):
        codes.append((await ks.verifier.verify_request_async(created.key, route)).code)
        await settle_ahead(ks)
    assert codes == [Code.VALID] * 15 + [Code.USAGE_EXCEEDED] * 5
    assert hops["lease"] <= 2, hops  # tried once per lease, never again and again
    ks.verifier.release_leases()
    assert ks.get_key(created.key_id).credits == Credits(0)
    ks.close()


def test_if_verifies_block_then_nothing_is_leased_ahead(ks: Keystile) -> None:
    api = ks.create_api("shop", prefix="sk_shop", lease=10)
    created = ks.create_key(api.id, credits=100)
    for _ in range(30):
        assert ks.verify(created.key).valid
    assert ks.verifier._lease_ahead_tasks == set() and ks.verifier._lease_flights == {}
    ks.verifier.release_leases()
    assert ks.get_key(created.key_id).credits == Credits(70)
