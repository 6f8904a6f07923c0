"""Analytics: an event per verification, written off the request path, counted exactly.

Every store that records events (memory, a real SQLite file, a real Redis) runs the
same scenario: thousands of verifications through the middleware, with every
outcome, then the queries must give exactly the counts that were sent.
"""

from __future__ import annotations

import datetime as dt
import multiprocessing
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from keystile import (
    Analytics,
    ConfigurationError,
    Credits,
    KeyAuthMiddleware,
    Keystile,
    RatelimitConfig,
    SQLiteStore,
    ValidationError,
    Verifier,
    VerifyRequest,
)
from keystile._analytics import Event, EventFilter
from keystile._models import lasting
from keystile._remote import RemoteVerifier
from tests.conftest import Clock

MINUTE = 60_000
HOUR = 3_600_000
WEEK = dt.timedelta(days=7)


def app_for(ks: Keystile, **options: Any) -> Starlette:
    async def home(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    starlette = Starlette(routes=[Route("/", home)])
    starlette.add_middleware(KeyAuthMiddleware, verifier=ks, **options)  # type: ignore[arg-type]
    return starlette


async def send(client: httpx.AsyncClient, key: str) -> int:
    return (await client.get("/", headers={"authorization": f"Bearer {key}"})).status_code


async def test_if_thousands_of_mixed_verifications_pass_the_middleware_then_every_count_is_exact(
    store_url: str, clock: Clock,
) -> None:
    ks = Keystile(store_url, now=clock, analytics=Analytics(flush_interval=0.05))
    api = ks.create_api("payments", prefix="sk_pay")
    other = ks.create_api("other", prefix="sk_oth")
    ks.create_identity("acme")
    plain = ks.create_key(api.id, external_id="acme")
    paid = ks.create_key(api.id, credits=Credits(300), external_id="acme")
    limited = ks.create_key(api.id, ratelimits=[RatelimitConfig("req", 50, HOUR, auto_apply=True)])
    disabled = ks.create_key(api.id, enabled=False)
    expired = ks.create_key(api.id, expires=clock() + 1_000)
    elsewhere = ks.create_key(other.id)
    plan = ([plain.key] * 6 + [paid.key] * 2 + [limited.key] * 2 + [disabled.key, expired.key,
            "sk_pay_unknown000000000000", elsewhere.key])
    sent: Counter[tuple[int, str]] = Counter()  # (minute, key) -> requests
    clock.advance(2_000)  # the expiring key has expired
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app_for(ks)),
                                 base_url="http://test") as client:
        for minute in range(3):
            for _ in range(70):
                for key in plan:
                    await send(client, key)
                    sent[minute, key] += 1
            clock.advance(MINUTE)
    since, until = clock() - 3 * MINUTE - 1, clock()

    buckets = ks.verifications(since=since, until=until, by="minute")
    by_code = Counter[str]()
    for bucket in buckets:
        by_code.update(bucket.counts)
    keys = {t.id: t for t in ks.top_keys(since=since, until=until, limit=20)}
    acme = ks.top_identities(since=since, until=until)
    only_other = ks.verifications(since=since, until=until, by="hour", api_id=other.id)

    per_minute = 70 * len(plan)
    assert sum(b.total for b in buckets) == 3 * per_minute == sum(sent.values())
    assert [b.total for b in buckets if b.total] == [per_minute] * 3
    # 300 credits: spent in the first minute and a half (2 per round), then exceeded;
    # 50 an hour (a fresh window: the clock starts on the hour) then rate limited.
    assert by_code == {
        "VALID": 3 * 70 * (6 + 1) + 300 + 50,
        "USAGE_EXCEEDED": 3 * 70 * 2 - 300,
        "RATE_LIMITED": 3 * 70 * 2 - 50,
        "DISABLED": 3 * 70, "EXPIRED": 3 * 70, "NOT_FOUND": 3 * 70,
    }
    assert sum(b.spent for b in buckets) == 300
    assert keys[paid.key_id].total == 3 * 70 * 2 and keys[paid.key_id].spent == 300
    assert keys[paid.key_id].credits == 0 and keys[plain.key_id].credits is None
    assert keys[limited.key_id].counts == {"VALID": 50, "RATE_LIMITED": 3 * 70 * 2 - 50}
    acme_id = ks.get_identity("acme").id
    assert [(t.id, t.external_id, t.total) for t in acme] == [(acme_id, "acme", 3 * 70 * 8)]
    assert sum(b.total for b in only_other) == 3 * 70 and only_other[-1].valid == 3 * 70
    assert ks.verifier.events is not None and ks.verifier.events.dropped == 0
    ks.close()


def test_if_queries_filter_then_only_matching_events_count(ks: Keystile, clock: Clock) -> None:
    api = ks.create_api("a", prefix="sk_a")
    one, two = ks.create_key(api.id), ks.create_key(api.id)
    ks.create_identity("bob")
    bobs = ks.create_key(api.id, external_id="bob")
    for key, tags in ((one.key, ("plan=pro",)), (one.key, ("plan=pro", "eu")), (two.key, ("eu",)),
                      (bobs.key, ())):
        assert ks.verify(key, tags=tags).valid
    ks.verify(one.key, permissions="admin")  # INSUFFICIENT_PERMISSIONS
    since = dt.timedelta(minutes=5)

    def total(**where: Any) -> int:
        return sum(b.total for b in ks.verifications(since=since, by="minute", **where))

    assert total() == 5
    assert total(key_id=one.key_id) == 3
    assert total(tags=["eu"]) == 2 and total(tags=["eu", "plan=pro"]) == 1 and total(tags="eu") == 2
    assert total(identity="bob") == 1 == total(identity=ks.get_identity("bob").id)
    assert total(codes=["INSUFFICIENT_PERMISSIONS"]) == 1
    assert total(keyspace_id=api.keyspace_id) == 5 and total(api_id="api_other") == 0


def test_if_the_range_has_no_events_then_every_bucket_is_there_and_empty(ks: Keystile, clock: Clock) -> None:
    buckets = ks.verifications(since=clock() - 3 * HOUR, until=clock(), by="hour")

    assert len(buckets) == 3 and all(b.total == 0 for b in buckets)
    assert [b.start for b in buckets] == [clock() - 3 * HOUR + i * HOUR for i in range(3)]


@pytest.mark.parametrize(("options", "message"), [
    ({"by": "week"}, "buckets are 'minute', 'hour' or 'day'"),
    ({"until": 1}, "must come after its start"),
    ({"codes": ["NOPE"]}, "unknown outcome code: NOPE"),
    ({"since": dt.datetime(2026, 1, 1)}, "aware datetime"),
    ({"since": -5}, "Unix ms, a datetime or a timedelta"),
])
def test_if_a_query_is_malformed_then_a_validation_error_says_why(
    ks: Keystile, clock: Clock, options: dict[str, Any], message: str,
) -> None:
    query: dict[str, Any] = {"since": clock() - HOUR, **options}
    with pytest.raises(ValidationError, match=message):
        ks.verifications(**query)


def test_if_a_minute_range_is_too_long_then_larger_buckets_are_asked_for(ks: Keystile, clock: Clock) -> None:
    with pytest.raises(ValidationError, match="more than 10000 minutes"):
        ks.verifications(since=dt.timedelta(days=30), by="minute")
    with pytest.raises(ValidationError, match="limit must be from 1 to 1000"):
        ks.top_keys(since=dt.timedelta(days=1), limit=0)


def test_if_a_key_is_verified_then_last_used_at_moves_at_most_once_per_interval(
    store_url: str, clock: Clock,
) -> None:
    ks = Keystile(store_url, now=clock, analytics=Analytics(last_used_interval=60))
    api = ks.create_api("a", prefix="sk_a")
    created = ks.create_key(api.id)
    never = ks.get_key(created.key_id).last_used_at
    first = clock()
    ks.verify(created.key)
    ks.verifications(since=WEEK, by="day")  # a query writes what is queued
    clock.advance(30_000)
    ks.verify(created.key)
    ks.verifications(since=WEEK, by="day")
    within = ks.get_key(created.key_id).last_used_at
    clock.advance(40_000)
    ks.verify(created.key)
    ks.verifications(since=WEEK, by="day")
    after = ks.get_key(created.key_id)

    # To the minute: the first verification's, then (70 s later, past the interval) the next one's.
    assert never is None
    assert within == first  # 30 s later: not written again
    assert after.last_used_at == first + 60_000 and after.to_dict()["lastUsedAt"] == first + 60_000
    page = ks.list_keys(api.id)
    assert [k.last_used_at for k in page.keys] == [first + 60_000]
    ks.close()


class BlockingSQLiteStore(SQLiteStore):
    """A real SQLite store whose event writes wait until the test lets them through."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.writing, self.release = threading.Event(), threading.Event()

    def write_events(self, events: Any) -> None:
        self.writing.set()
        self.release.wait(10)
        super().write_events(events)


def test_if_the_writer_is_stuck_then_requests_go_on_and_overflow_is_dropped_and_counted(
    tmp_path: Path, clock: Clock,
) -> None:
    store = BlockingSQLiteStore(f"sqlite:///{tmp_path / 'k.db'}")
    ks = Keystile(store, now=clock, analytics=Analytics(queue_size=100, batch_size=10,
                                                        flush_interval=0.01))
    created = ks.create_key(ks.create_api("a", prefix="sk_a").id)
    for _ in range(10):
        assert ks.verify(created.key).valid
    assert store.writing.wait(5)  # the writer took the first batch and is stuck in the store
    for _ in range(250):
        assert ks.verify(created.key).valid  # never waits for it
    events = ks.verifier.events
    assert events is not None

    dropped = events.dropped
    store.release.set()
    total = sum(b.total for b in ks.verifications(since=WEEK, by="day"))

    assert dropped == 10 + 250 - 10 - 100  # beyond the 100 queued while 10 were being written
    assert total == 110 and events.written == 110
    ks.close()


def test_if_the_store_fails_then_events_wait_and_are_written_once_it_is_back(
    private_redis: Any, clock: Clock,
) -> None:
    ks = Keystile(private_redis.url, now=clock, analytics=Analytics(flush_interval=30))
    created = ks.create_key(ks.create_api("a", prefix="sk_a").id)
    for _ in range(20):
        assert ks.verify(created.key).valid  # cached: no store trip
    events = ks.verifier.events
    assert events is not None
    private_redis.kill()
    with pytest.raises(Exception, match="Redis"):
        events.flush()
    private_redis.start()
    total = sum(b.total for b in ks.verifications(since=WEEK, by="day"))

    assert total == 20 and events.write_errors >= 1 and events.dropped == 0
    ks.close()


def test_if_the_store_stays_down_then_events_wait_within_the_queue_size_and_are_still_counted(
    private_redis: Any, clock: Clock,
) -> None:
    ks = Keystile(private_redis.url, now=clock, analytics=Analytics(queue_size=100, flush_interval=30))
    created = ks.create_key(ks.create_api("a", prefix="sk_a").id)
    for _ in range(20):
        assert ks.verify(created.key).valid  # cached: no store trip
    events = ks.verifier.events
    assert events is not None
    private_redis.kill()
    with pytest.raises(Exception, match="Redis"):
        events.flush()  # the 20 wait
    for _ in range(250):
        assert ks.verify(created.key).valid  # 100 queue up, 150 find the queue full

    with pytest.raises(Exception, match="Redis"):
        events.flush()  # 120 would wait: the 20 oldest go

    assert sum(event.count for event in events._pending) == 100 and events.queued == 0
    assert events.dropped == 150 + 20
    assert ks.verifier.metrics.snapshot().verifications["VALID"] == 20 + 100  # counted while down
    ks.close()  # the events cannot be written: logged, not raised


def test_if_events_are_older_than_the_retention_then_the_writer_deletes_them(
    store_url: str, clock: Clock,
) -> None:
    ks = Keystile(store_url, now=clock, analytics=Analytics(retention_days=1))
    created = ks.create_key(ks.create_api("a", prefix="sk_a").id)
    ks.verify(created.key)
    ks.verifications(since=WEEK, by="day")
    clock.advance(2 * 86_400_000)
    ks.verify(created.key)
    events = ks.verifier.events
    assert events is not None
    events._trimmed_at = 0  # the writer trims every 10 minutes; now is due

    events.flush()
    left = ks.store.read_events(0, clock() + 1, EventFilter())

    assert [e.time for e in left] == [clock()]
    ks.close()


def test_if_analytics_is_off_then_verifications_are_only_counted_and_nothing_is_written(
    tmp_path: Path,
) -> None:
    verifier = Verifier(f"sqlite:///{tmp_path / 'k.db'}", analytics=False)
    with Keystile(verifier.store) as ks:
        created = ks.create_key(ks.create_api("a", prefix="sk_a").id)
        assert verifier.verify(created.key).valid
        assert verifier.events is not None and not verifier.events.records
        verifier.events.flush()
        assert verifier.metrics.snapshot().verifications["VALID"] == 1
        assert verifier.store.read_events(0, 2**62, EventFilter()) == []
    verifier.close()


def test_if_analytics_and_metrics_are_off_then_nothing_is_queued(tmp_path: Path) -> None:
    verifier = Verifier(f"sqlite:///{tmp_path / 'k.db'}", analytics=False, metrics=False)
    with Keystile(verifier.store) as ks:
        created = ks.create_key(ks.create_api("a", prefix="sk_a").id)
        assert verifier.verify(created.key).valid
        assert verifier.events is None
        assert verifier.metrics.snapshot().total == 0
    verifier.close()


def test_if_options_are_wrong_then_configuration_errors_say_which() -> None:
    with pytest.raises(ConfigurationError, match="queue_size must be an integer of 1 or more"):
        Analytics(queue_size=0)
    with pytest.raises(ConfigurationError, match="flush_interval must be a number above 0"):
        Analytics(flush_interval=0)
    with pytest.raises(ConfigurationError, match="analytics must be True, False or an Analytics"):
        Verifier("memory://", analytics="yes")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="records no analytics"):
        RemoteVerifier("unkey+http://127.0.0.1:1?prefixes=sk", root_key="r", analytics=Analytics())


def test_if_an_event_is_read_back_then_it_has_every_field(store_url: str, clock: Clock) -> None:
    ks = Keystile(store_url, now=clock, analytics=Analytics(instance="web-1", region="eu-west"))
    api = ks.create_api("a", prefix="sk_a")
    ks.create_identity("acme")
    created = ks.create_key(api.id, credits=Credits(10), external_id="acme")
    ks.verify(created.key, tags=("plan=pro",), cost=3)
    ks.verifications(since=WEEK, by="day")

    [event] = ks.store.read_events(0, clock() + 1, EventFilter())

    assert event == Event(clock(), "VALID", created.key_id, api.keyspace_id, api.id,
                          ks.get_identity("acme").id, "acme", ("plan=pro",), 3, "web-1", "eu-west")
    ks.close()


def _child_verifies(ks: Keystile, key: str, times: int, done: Any) -> None:
    for _ in range(times):
        ks.verify(key)
    events = ks.verifier.events
    assert events is not None
    deadline = time.monotonic() + 10  # the child's own writer (restarted after the fork) writes them
    while events.written < times and time.monotonic() < deadline:
        time.sleep(0.02)
    done.put(events.written)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # 3.12+: fork with threads running
def test_if_the_process_forks_then_the_child_records_its_own_verifications(tmp_path: Path) -> None:
    ks = Keystile(f"sqlite:///{tmp_path / 'k.db'}", analytics=Analytics(flush_interval=0.05))
    created = ks.create_key(ks.create_api("a", prefix="sk_a").id)
    for _ in range(5):
        ks.verify(created.key)  # the parent's, queued (perhaps written) before the fork
    context = multiprocessing.get_context("fork")
    done = context.Queue()
    child = context.Process(target=_child_verifies, args=(ks, created.key, 40, done))
    child.start()
    try:
        written = done.get(timeout=20)
    finally:
        child.join(10)
    total = sum(b.total for b in ks.verifications(since=WEEK, by="day"))

    assert written == 40  # the child's writer wrote the child's verifications, not the parent's
    assert total == 45
    ks.close()


def test_if_a_key_spends_then_its_queued_verifications_share_one_entry_and_count_exactly(
    ks: Keystile, clock: Clock
) -> None:
    api = ks.create_api("shop", prefix="sk_shop")
    created = ks.create_key(api.id, credits=30, ratelimits=[RatelimitConfig("requests", 20, MINUTE, True)])
    route = lasting(VerifyRequest())
    codes = Counter(ks.verifier.verify_request(created.key, route).code.value for _ in range(25))
    assert codes == {"VALID": 20, "RATE_LIMITED": 5}
    recorder = ks.verifier.events
    assert recorder is not None
    queued = list(recorder._current)
    # Nothing of each request's own result stays queued: one entry per outcome (and the
    # first verify's, which read the record), whatever the number of requests.
    assert len(queued) == 25 and len({id(entry) for entry in queued}) == 3
    assert all(entry[2].ratelimits == () for entry in queued)
    recorder.flush()
    assert ks.verifier.verify_request(created.key, route).code.value == "RATE_LIMITED"
    assert recorder._current[0] is not queued[-1]  # a drain starts the shared entries afresh
    recorder.flush()
    top = {t.id: t for t in ks.top_keys(since=clock() - HOUR, until=clock() + HOUR)}
    assert top[created.key_id].total == 26 and top[created.key_id].spent == 20
    assert top[created.key_id].counts == {"VALID": 20, "RATE_LIMITED": 6}
    assert ks.get_key(created.key_id).credits.remaining == 10  # type: ignore[union-attr]


def test_if_one_off_verifies_spend_then_each_queues_its_own_entry_and_nothing_is_kept(
    ks: Keystile,
) -> None:
    created = ks.create_key(ks.create_api("shop", prefix="sk_shop").id, credits=10)
    for _ in range(5):
        assert ks.verify(created.key).valid  # a request object of its own each time
    recorder = ks.verifier.events
    assert recorder is not None
    assert recorder._shared == {} and len({id(entry) for entry in recorder._current}) == 5
