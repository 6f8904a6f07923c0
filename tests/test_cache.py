"""The record cache, observed through a real store that counts its calls."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from keystile import (
    Code,
    Credits,
    Keystile,
    RatelimitConfig,
    StoreUnavailableError,
    Verifier,
    VerifyResult,
)
from keystile.stores import Store

if TYPE_CHECKING:
    from conftest import Clock

UNKNOWN = "sk_live_3yZe7d8Vq2PjK9hWbG4xT1"  # well formed, known prefix, no such key


@pytest.fixture
def cks(counting_store: Any, clock: Clock) -> Iterator[Keystile]:
    """A Keystile on a counting store: 10 s records, 2 s negative entries."""
    keystile = Keystile(counting_store, now=clock, cache_ttl=10, negative_ttl=2)
    keystile.create_api("payments", prefix="sk_live")
    yield keystile
    keystile.close()


def api_id_of(ks: Keystile) -> str:
    return ks.list_apis()[0].id


def loads(store: Any) -> int:
    return int(store.calls["load_record"])


def direct_update(store: Store, key_id: str, **fields: Any) -> None:
    """Change a key document in the store without telling any cache (as another process would)."""
    doc = store.get("key", key_id)
    assert doc is not None
    store.replace("key", {**doc, **fields})


# -- hits, misses, lifetimes ---------------------------------------------------------------


def test_if_a_record_is_cached_then_verifying_it_again_reads_the_store_zero_times(
    cks: Keystile, counting_store: Any,
) -> None:
    created = cks.create_key(api_id_of(cks), permissions=["read"])
    assert cks.verify(created.key).valid
    counting_store.calls.clear()

    results = [cks.verify(created.key, permissions="read") for _ in range(10)]

    assert all(r.code is Code.VALID for r in results)
    assert counting_store.calls == {}
    assert cks.verifier.cache.hits >= 10


def test_if_a_cached_key_has_credits_then_only_the_settle_transaction_touches_the_store(
    cks: Keystile, counting_store: Any,
) -> None:
    created = cks.create_key(api_id_of(cks), credits=5)
    cks.verify(created.key)
    counting_store.calls.clear()

    assert [cks.verify(created.key).credits for _ in range(3)] == [3, 2, 1]

    native = counting_store.url.startswith("redis")  # one Lua script, no generic transaction
    assert counting_store.calls == ({"settle": 3} if native else {"settle": 3, "transact": 3})


def test_if_an_unknown_key_is_verified_100_times_then_the_store_is_read_once(
    cks: Keystile, counting_store: Any, clock: Clock,
) -> None:
    cks.verify("warm")
    counting_store.calls.clear()

    results = []
    for _ in range(100):
        results.append(cks.verify(UNKNOWN))
        clock.advance(19)  # 1.9 s in all: still inside the 2 s negative lifetime

    assert all(r == VerifyResult(valid=False, code=Code.NOT_FOUND) for r in results)
    assert loads(counting_store) == 1


def test_if_the_negative_lifetime_passes_then_the_unknown_key_is_looked_up_again(
    cks: Keystile, counting_store: Any, clock: Clock,
) -> None:
    cks.verify(UNKNOWN)
    clock.advance(1999)
    cks.verify(UNKNOWN)
    assert loads(counting_store) == 1

    clock.advance(1)
    cks.verify(UNKNOWN)

    assert loads(counting_store) == 2


def test_if_the_record_lifetime_passes_then_a_change_made_elsewhere_is_seen(
    cks: Keystile, counting_store: Any, clock: Clock,
) -> None:
    created = cks.create_key(api_id_of(cks))
    assert cks.verify(created.key).valid
    direct_update(counting_store, created.key_id, enabled=False)

    clock.advance(9_999)
    stale = cks.verify(created.key)
    clock.advance(1)
    fresh = cks.verify(created.key)

    assert stale.code is Code.VALID and fresh.code is Code.DISABLED
    assert loads(counting_store) == 2


def test_if_a_key_expires_before_the_record_lifetime_then_the_entry_ends_with_the_key(
    cks: Keystile, counting_store: Any, clock: Clock,
) -> None:
    expires = clock.ms + 3000
    created = cks.create_key(api_id_of(cks), expires=expires)
    assert cks.verify(created.key).valid
    direct_update(counting_store, created.key_id, expires=None)  # extended elsewhere

    clock.advance(2999)
    before = cks.verify(created.key)
    loads_before = loads(counting_store)
    clock.advance(2)
    after = cks.verify(created.key)

    assert before.code is Code.VALID and before.expires == expires
    assert loads_before == 1
    assert after.code is Code.VALID and after.expires is None  # a cached copy would say EXPIRED
    assert loads(counting_store) == 2


def test_if_a_key_has_already_expired_then_it_is_not_kept_in_the_cache(
    cks: Keystile, counting_store: Any, clock: Clock,
) -> None:
    created = cks.create_key(api_id_of(cks), expires=clock.ms - 1)

    codes = [cks.verify(created.key).code for _ in range(3)]

    assert codes == [Code.EXPIRED] * 3
    assert loads(counting_store) == 3


def test_if_the_cache_lifetime_is_zero_then_every_verify_loads_from_the_store(
    counting_store: Any, clock: Clock,
) -> None:
    ks = Keystile(counting_store, now=clock, cache_ttl=0)
    api = ks.create_api("payments", prefix="sk_live")
    created = ks.create_key(api.id)

    known = [ks.verify(created.key).code for _ in range(5)]
    unknown = [ks.verify(UNKNOWN).code for _ in range(5)]

    assert known == [Code.VALID] * 5 and unknown == [Code.NOT_FOUND] * 5
    assert loads(counting_store) == 10
    assert len(ks.verifier.cache) == 0
    ks.close()


def test_if_loading_fails_then_nothing_is_cached_and_the_next_verify_loads_again(
    counting_store_class: type[Store], store_url: str, clock: Clock,
) -> None:
    class FailingOnce(counting_store_class):  # type: ignore[valid-type, misc]
        failures = 1

        def load_record(self, key_hash: str) -> Any:
            if self.failures:
                self.failures -= 1
                raise StoreUnavailableError("down for a moment")
            return super().load_record(key_hash)

    store = FailingOnce(store_url)
    ks = Keystile(store, now=clock)
    api = ks.create_api("payments", prefix="sk_live")
    created = ks.create_key(api.id)

    with pytest.raises(StoreUnavailableError):
        ks.verify(created.key)

    assert ks.verify(created.key).code is Code.VALID
    ks.close()


# -- invalidation --------------------------------------------------------------------------


CHANGES: dict[str, tuple[Callable[[Keystile, str], Any], Code]] = {
    "disable": (lambda ks, key_id: ks.update_key(key_id, enabled=False), Code.DISABLED),
    "expire": (lambda ks, key_id: ks.update_key(key_id, expires=0), Code.EXPIRED),
    "roles": (lambda ks, key_id: ks.update_key(key_id, roles=[]), Code.INSUFFICIENT_PERMISSIONS),
    "role": (lambda ks, key_id: ks.update_role("reader", permissions=["other"]),
             Code.INSUFFICIENT_PERMISSIONS),
    "limit": (lambda ks, key_id: ks.update_key(
        key_id, ratelimits=[RatelimitConfig("r", 1, 60_000, auto_apply=True)]), Code.RATE_LIMITED),
    "credits": (lambda ks, key_id: ks.update_credits(key_id, "set", 0), Code.USAGE_EXCEEDED),
    "delete": (lambda ks, key_id: ks.delete_key(key_id), Code.NOT_FOUND),
    "delete permanently": (lambda ks, key_id: ks.delete_key(key_id, permanent=True), Code.NOT_FOUND),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_if_another_keystile_of_the_same_store_changes_a_key_then_the_cached_record_is_evicted_at_once(
    ks: Keystile, same_store: Callable[..., Keystile], store_url: str, clock: Clock, change: str,
) -> None:
    act, code = CHANGES[change]
    api = ks.create_api("payments", prefix="sk_live")
    ks.create_role("reader", permissions=["read"])
    created = ks.create_key(api.id, roles=["reader"], ratelimits=[
        RatelimitConfig("r", 100, 60_000, auto_apply=True)])
    verifier = Verifier(ks.store if store_url.startswith("memory") else store_url, now=clock,
                        cache_ttl=3600)
    assert ks.verify(created.key, permissions="read").valid
    assert verifier.verify(created.key, permissions="read").valid

    act(same_store(cache_ttl=3600), created.key_id)

    assert ks.verify(created.key, permissions="read").code is code
    assert verifier.verify(created.key, permissions="read").code is code
    if verifier.store is not ks.store:
        verifier.store.close()


def test_if_a_disabled_key_is_enabled_elsewhere_in_the_process_then_it_is_valid_at_once(
    ks: Keystile, same_store: Callable[..., Keystile],
) -> None:
    api = ks.create_api("payments", prefix="sk_live")
    created = ks.create_key(api.id, enabled=False)
    assert ks.verify(created.key).code is Code.DISABLED

    same_store().update_key(created.key_id, enabled=True)

    assert ks.verify(created.key).code is Code.VALID


def test_if_an_identitys_limits_change_elsewhere_then_its_keys_follow_at_once(
    ks: Keystile, same_store: Callable[..., Keystile],
) -> None:
    api = ks.create_api("payments", prefix="sk_live")
    created = ks.create_key(api.id, external_id="acme")
    assert ks.verify(created.key).ratelimits == ()

    same_store().update_identity("acme", ratelimits=[RatelimitConfig("r", 1, 60_000, auto_apply=True)])

    assert [ks.verify(created.key).code for _ in range(2)] == [Code.VALID, Code.RATE_LIMITED]


# -- dynamic state is never cached -----------------------------------------------------------


def test_if_another_keystile_spends_credits_then_this_one_sees_the_true_balance(
    ks: Keystile, same_store: Callable[..., Keystile],
) -> None:
    api = ks.create_api("payments", prefix="sk_live")
    created = ks.create_key(api.id, credits=Credits(10))
    other = same_store(cache_ttl=3600)
    assert ks.verify(created.key).credits == 9

    assert [other.verify(created.key).credits for _ in range(3)] == [8, 7, 6]
    assert ks.verify(created.key).credits == 5
    assert [other.verify(created.key, cost=5).code for _ in range(2)] == [
        Code.VALID, Code.USAGE_EXCEEDED]
    assert ks.verify(created.key).code is Code.USAGE_EXCEEDED


def test_if_a_separate_verifier_on_the_same_sqlite_file_spends_then_both_share_one_balance(
    sqlite_url: str, clock: Clock,
) -> None:
    with Keystile(sqlite_url, now=clock, cache_ttl=3600) as ks:
        api = ks.create_api("payments", prefix="sk_live")
        created = ks.create_key(api.id, credits=4,
                                ratelimits=[RatelimitConfig("r", 3, 60_000, auto_apply=True)])
        verifier = Verifier(sqlite_url, now=clock, cache_ttl=3600)

        codes = [v.verify(created.key).code for v in (ks.verifier, verifier, ks.verifier, verifier)]

        assert codes == [Code.VALID, Code.VALID, Code.VALID, Code.RATE_LIMITED]
        assert ks.get_key(created.key_id).credits == Credits(1)
        verifier.store.close()


# -- single flight --------------------------------------------------------------------------


def gated(base: type[Store]) -> type[Any]:
    """A real store whose load_record, once armed, waits until the test releases it."""

    class Gated(base):  # type: ignore[valid-type, misc]
        blocking = True  # so the async face runs it in a worker thread, as for SQLite

        def native_async(self) -> None:
            return None  # Redis too: the gate is in the sync load_record

        def __init__(self, url: str) -> None:
            super().__init__(url)
            self.armed = False
            self.entered = threading.Event()
            self.release = threading.Event()

        def load_record(self, key_hash: str) -> Any:
            if self.armed:
                self.entered.set()
                if not self.release.wait(10):
                    raise AssertionError("the test never released the load")
            return super().load_record(key_hash)

    return Gated


def waiting_in_threading(thread: threading.Thread) -> bool:
    """Whether ``thread`` is blocked in a threading wait (an Event, a Condition, a Future)."""
    frame = sys._current_frames().get(thread.ident or -1)
    while frame is not None:
        if frame.f_code.co_filename == threading.__file__ and frame.f_code.co_name == "wait":
            return True
        frame = frame.f_back
    return False


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)  # polling other threads' state: there is no clock to advance here


def test_if_20_threads_miss_the_same_hash_at_once_then_the_store_loads_it_once(
    counting_store_class: type[Store], store_url: str, clock: Clock,
) -> None:
    store = gated(counting_store_class)(store_url)
    ks = Keystile(store, now=clock)
    api = ks.create_api("payments", prefix="sk_live")
    created = ks.create_key(api.id)
    ks.verify("warm")  # the keyspace map
    store.armed = True
    codes: list[Code] = []
    threads = [threading.Thread(target=lambda: codes.append(ks.verify(created.key).code))
               for _ in range(20)]

    for thread in threads:
        thread.start()
    wait_for(store.entered.is_set)
    wait_for(lambda: all(waiting_in_threading(t) for t in threads))
    store.release.set()
    for thread in threads:
        thread.join(10)

    assert codes == [Code.VALID] * 20
    assert loads(store) == 1
    ks.close()


async def test_if_20_tasks_miss_the_same_hash_at_once_then_the_store_loads_it_once(
    counting_store_class: type[Store], store_url: str, clock: Clock,
) -> None:
    store = gated(counting_store_class)(store_url)
    ks = Keystile(store, now=clock)
    api = ks.create_api("payments", prefix="sk_live")
    created = ks.create_key(api.id)
    await ks.verifier.verify_async("warm")
    store.armed = True
    misses = ks.verifier.cache.misses

    tasks = [asyncio.create_task(ks.verifier.verify_async(created.key)) for _ in range(20)]
    for _ in range(1000):
        if ks.verifier.cache.misses == misses + 20:
            break
        await asyncio.sleep(0)
    assert ks.verifier.cache.misses == misses + 20  # every task has missed and is waiting
    assert await asyncio.to_thread(store.entered.wait, 10)
    store.release.set()
    results = await asyncio.gather(*tasks)

    assert [r.code for r in results] == [Code.VALID] * 20
    assert loads(store) == 1
    ks.close()



def test_if_one_sqlite_file_is_spelled_two_ways_then_a_change_evicts_in_both(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clock: Clock
) -> None:
    monkeypatch.chdir(tmp_path)
    relative = Keystile("sqlite:///keys.db", now=clock)
    absolute = Keystile(f"sqlite:///{tmp_path}/./keys.db", now=clock)
    created = relative.create_key(relative.create_api("a", prefix="sk_a").id)
    assert absolute.verify(created.key).valid
    relative.update_key(created.key_id, enabled=False)
    assert absolute.verify(created.key).code is Code.DISABLED


# -- loads that race an invalidation (review) ----------------------------------------------


def read_then_wait(base: type[Store], method: str) -> type[Any]:
    """A real store whose ``method``, once armed, reads first and then waits to be released:
    the answer it returns was read before whatever the test does meanwhile."""

    class ReadThenWait(base):  # type: ignore[valid-type, misc]
        blocking = True

        def __init__(self, url: str) -> None:
            super().__init__(url)
            self.armed = False
            self.entered = threading.Event()
            self.release = threading.Event()

        def _read_then_wait(self, *args: Any) -> Any:
            answer = getattr(super(), method)(*args)
            if self.armed:
                self.armed = False
                self.entered.set()
                if not self.release.wait(10):
                    raise AssertionError("the test never released the load")
            return answer

    setattr(ReadThenWait, method, ReadThenWait._read_then_wait)
    return ReadThenWait


def test_if_a_key_is_disabled_while_its_record_is_being_loaded_then_the_old_record_is_not_cached(
    counting_store_class: type[Store], store_url: str, clock: Clock,
) -> None:
    store = read_then_wait(counting_store_class, "load_record")(store_url)
    ks = Keystile(store, now=clock)
    created = ks.create_key(ks.create_api("payments", prefix="sk_live").id)
    ks.verify("warm")  # the keyspace map
    store.armed = True
    early: list[Code] = []
    thread = threading.Thread(target=lambda: early.append(ks.verify(created.key).code))
    thread.start()
    assert store.entered.wait(10)  # the enabled record has been read, not yet cached

    ks.update_key(created.key_id, enabled=False)  # evicts: nothing is cached yet
    store.release.set()
    thread.join(10)

    assert early == [Code.VALID]  # concurrent with the change: either answer is fair
    assert ks.verify(created.key).code is Code.DISABLED  # but the stale read is not kept
    ks.close()


def test_if_an_api_is_deleted_while_the_keyspace_map_is_being_loaded_then_its_keys_are_not_found(
    counting_store_class: type[Store], store_url: str, clock: Clock,
) -> None:
    store = read_then_wait(counting_store_class, "load_keyspaces")(store_url)
    ks = Keystile(store, now=clock)
    api = ks.create_api("payments", prefix="sk_live")
    created = ks.create_key(api.id)
    store.armed = True  # the next verify reloads the map (create_api asked for it)
    thread = threading.Thread(target=lambda: ks.verify(created.key))
    thread.start()
    assert store.entered.wait(10)  # the map with the live API has been read

    ks.delete_api(api.id)  # asks every verifier to reload the map
    store.release.set()
    thread.join(10)

    assert ks.verify(created.key).code is Code.NOT_FOUND  # not VALID for keyspace_refresh
    ks.close()


async def test_if_the_task_loading_a_record_is_cancelled_then_the_tasks_waiting_for_it_still_get_it(
    counting_store_class: type[Store], store_url: str, clock: Clock,
) -> None:
    store = gated(counting_store_class)(store_url)
    ks = Keystile(store, now=clock)
    created = ks.create_key(ks.create_api("payments", prefix="sk_live").id)
    await ks.verifier.verify_async("warm")
    store.armed = True
    leader = asyncio.create_task(ks.verifier.verify_async(created.key))
    assert await asyncio.to_thread(store.entered.wait, 10)  # the leader is loading
    follower = asyncio.create_task(ks.verifier.verify_async(created.key))
    for _ in range(100):
        await asyncio.sleep(0)  # the follower misses and joins the leader's flight

    leader.cancel()
    store.release.set()
    results = await asyncio.gather(leader, follower, return_exceptions=True)

    assert isinstance(results[0], asyncio.CancelledError)
    assert isinstance(results[1], VerifyResult) and results[1].code is Code.VALID
    ks.close()
