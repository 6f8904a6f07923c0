"""keystile serve's ``analytics.getVerifications``: Unkey's SQL over the verifications the
server made, in process on a real SQLite file (the Server helper of test_server.py, which
checks every answer against the served /openapi.json).

Traffic (the ``traffic`` fixture), driven through ``keys.verifyKey`` at 12:00 (T0) and
13:05, 14 verifications in all:

- key a (API payments, identity acme, 100 credits): 3 VALID at 12:00 tagged path=/x,
  2 VALID at 13:05 tagged path=/y;
- key b (payments, 1 a hour): VALID and RATE_LIMITED at 12:00 tagged path=/y, VALID at 13:05;
- key c (payments, disabled): DISABLED at 12:00;
- key d (API billing): 4 VALID at 12:00;
- an unknown key of payments' prefix: NOT_FOUND at 12:00.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from test_server import Server
from test_sql import garbled

from keystile import Keystile, SQLiteStore
from keystile._analytics import Event, EventFilter
from keystile.server import _analytics as served_analytics
from keystile.server import build_app

if TYPE_CHECKING:
    from conftest import Clock

HOUR = 3_600_000
MINUTE = 60_000
DAY = 24 * HOUR
T0 = 1_773_576_000_000  # 2026-03-15 12:00 UTC, the clock fixture's start
RAW = "key_verifications_v1"


class RecordingStore(SQLiteStore):
    """A real SQLite store that also notes the range and filter of each events read."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.reads: list[tuple[int, int, EventFilter]] = []

    def read_events(self, since: int, until: int, where: EventFilter) -> list[Event]:
        self.reads.append((since, until, where))
        return super().read_events(since, until, where)


@pytest.fixture
async def server(tmp_path: Path, clock: Clock) -> AsyncIterator[Server]:
    """test_server.py's server, on a RecordingStore."""
    ks = Keystile(RecordingStore(f"sqlite:///{tmp_path / 'keys.db'}"), now=clock)
    app = build_app(ks)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://keystile.test") as client:
        served = Server(app, ks, client)
        served.document = (await client.get("/openapi.json")).json()
        yield served
    ks.close()


def reads(server: Server) -> list[tuple[int, int, EventFilter]]:
    store = server.ks.store
    assert isinstance(store, RecordingStore)
    return store.reads


@dataclass
class Traffic:
    payments: str
    billing: str
    a: str
    b: str
    c: str
    d: str


@pytest.fixture
async def traffic(server: Server, clock: Clock) -> Traffic:
    payments = await server.api("payments", "sk_pay")
    billing = await server.api("billing", "sk_bill")
    a = await server.key(payments, externalId="acme", credits={"remaining": 100})
    b = await server.key(payments, ratelimits=[
        {"name": "requests", "limit": 1, "duration": HOUR, "autoApply": True}])
    c = await server.key(payments, enabled=False)
    d = await server.key(billing)
    codes = [(await server.verify(a["key"], tags=["path=/x"]))["code"] for _ in range(3)]
    codes += [(await server.verify(b["key"], tags=["path=/y"]))["code"] for _ in range(2)]
    codes += [(await server.verify(c["key"]))["code"]]
    codes += [(await server.verify(d["key"]))["code"] for _ in range(4)]
    codes += [(await server.verify("sk_pay_" + "1" * 22))["code"]]
    clock.advance(HOUR + 5 * MINUTE)
    codes += [(await server.verify(a["key"], tags=["path=/y"]))["code"] for _ in range(2)]
    codes += [(await server.verify(b["key"]))["code"]]
    assert codes == ["VALID"] * 4 + ["RATE_LIMITED", "DISABLED"] + ["VALID"] * 4 + ["NOT_FOUND"] + [
        "VALID"] * 3
    return Traffic(payments, billing, a["keyId"], b["keyId"], c["keyId"], d["keyId"])


async def rows(server: Server, query: str, *, key: str | None = "") -> Any:
    return await server.ok("analytics.getVerifications", {"query": query}, key=key)


# -- what the tables hold -------------------------------------------------------------------------


async def test_if_verifications_are_counted_by_outcome_then_each_count_is_exact(
    server: Server, traffic: Traffic,
) -> None:
    answer = await rows(server, f"SELECT outcome, count() AS n FROM {RAW} WHERE time >= now() - "
                                "INTERVAL 7 DAY GROUP BY outcome ORDER BY n DESC, outcome")

    assert answer == [{"outcome": "VALID", "n": 11}, {"outcome": "DISABLED", "n": 1},
                      {"outcome": "NOT_FOUND", "n": 1}, {"outcome": "RATE_LIMITED", "n": 1}]


async def test_if_root_keys_verify_on_every_request_then_their_verifications_never_show(
    server: Server, traffic: Traffic,
) -> None:
    root_api = server.roots.api_id()

    assert await rows(server, f"SELECT count() AS n FROM {RAW}") == [{"n": 14}]
    assert await rows(server, f"SELECT count() AS n FROM {RAW} WHERE api_id = '{root_api}'") == [{"n": 0}]


async def test_if_verifications_are_bucketed_by_hour_then_raw_and_hourly_tables_agree(
    server: Server, traffic: Traffic,
) -> None:
    raw = await rows(server, "SELECT toStartOfHour(time) AS hour, count() AS total, "
                             "countIf(outcome = 'VALID') AS valid FROM key_verifications_v1 "
                             "GROUP BY hour ORDER BY hour")
    hourly = await rows(server, "SELECT time AS hour, sum(count) AS total, sumIf(count, outcome = 'VALID') "
                                "AS valid FROM key_verifications_per_hour_v1 GROUP BY hour ORDER BY hour")

    assert raw == hourly == [{"hour": T0, "total": 11, "valid": 8},
                             {"hour": T0 + HOUR, "total": 3, "valid": 3}]


async def test_if_the_aggregated_tables_are_read_then_time_is_the_start_of_each_bucket(
    server: Server, traffic: Traffic,
) -> None:
    minutes = await rows(server, "SELECT time, sum(count) AS n FROM key_verifications_per_minute_v1 "
                                 "GROUP BY time ORDER BY time")
    days = await rows(server, "SELECT time, outcome, sum(count) AS n, sum(spent_credits) AS spent "
                              "FROM key_verifications_per_day GROUP BY time, outcome ORDER BY n DESC LIMIT 1")
    months = await rows(server, "SELECT time, sum(count) AS n FROM key_verifications_per_month_v1 "
                                "WHERE time >= toStartOfMonth(now()) GROUP BY time")

    assert minutes == [{"time": T0, "n": 11}, {"time": T0 + HOUR + 5 * MINUTE, "n": 3}]
    assert days == [{"time": T0 - 12 * HOUR, "outcome": "VALID", "n": 11, "spent": 5}]
    assert months == [{"time": 1_772_323_200_000, "n": 14}]  # 2026-03-01


async def test_if_usage_is_asked_per_key_then_counts_credits_spent_and_owners_come_back(
    server: Server, traffic: Traffic,
) -> None:
    answer = await rows(server, f"SELECT key_id, external_id, count() AS n, sum(spent_credits) AS spent "
                                f"FROM {RAW} WHERE api_id = '{traffic.payments}' "
                                "GROUP BY key_id, external_id ORDER BY n DESC")

    assert answer == [{"key_id": traffic.a, "external_id": "acme", "n": 5, "spent": 5},
                      {"key_id": traffic.b, "external_id": "", "n": 3, "spent": 0},
                      {"key_id": traffic.c, "external_id": "", "n": 1, "spent": 0}]


async def test_if_tags_filter_or_group_the_verifications_then_each_tag_counts_its_own(
    server: Server, traffic: Traffic,
) -> None:
    tagged = await rows(server, f"SELECT count() AS n FROM {RAW} WHERE has(tags, 'path=/x')")
    by_tag = await rows(server, f"SELECT arrayJoin(tags) AS tag, count() AS n FROM {RAW} "
                                "GROUP BY tag ORDER BY n DESC")
    any_path = await rows(server, f"SELECT key_id, count() AS n FROM {RAW} WHERE "
                                  "hasAny(tags, ['path=/x', 'path=/y']) AND outcome = 'VALID' "
                                  "GROUP BY key_id ORDER BY key_id")

    assert tagged == [{"n": 3}]
    assert by_tag == [{"tag": "path=/y", "n": 4}, {"tag": "path=/x", "n": 3}]
    assert any_path == sorted([{"key_id": traffic.a, "n": 5}, {"key_id": traffic.b, "n": 1}],
                              key=lambda row: row["key_id"])


async def test_if_an_answer_is_ordered_and_limited_then_the_top_rows_come_in_order(
    server: Server, traffic: Traffic,
) -> None:
    top = await rows(server, f"SELECT key_id, count() AS n FROM {RAW} WHERE key_id != '' "
                             "GROUP BY key_id ORDER BY n DESC LIMIT 2")
    second = await rows(server, f"SELECT key_id, count() AS n FROM {RAW} WHERE key_id != '' "
                                "GROUP BY key_id ORDER BY n DESC LIMIT 1 OFFSET 1")
    latest = await rows(server, f"SELECT time FROM {RAW} ORDER BY time DESC LIMIT 1")

    assert top == [{"key_id": traffic.a, "n": 5}, {"key_id": traffic.d, "n": 4}]
    assert second == [{"key_id": traffic.d, "n": 4}]
    assert latest == [{"time": T0 + HOUR + 5 * MINUTE}]


async def test_if_unkeys_documented_queries_are_sent_then_each_answers(
    server: Server, traffic: Traffic,
) -> None:
    queries = [
        "SELECT COUNT(*) as total FROM key_verifications_v1 WHERE outcome = 'VALID' "
        "AND time >= now() - INTERVAL 7 DAY",
        "SELECT SUM(count) as total_verifications FROM key_verifications_per_day_v1 "
        "WHERE time >= now() - INTERVAL 7 DAY",
        "SELECT time as date, SUM(count) as verifications FROM key_verifications_per_day_v1 "
        "WHERE time >= now() - INTERVAL 30 DAY GROUP BY date ORDER BY date",
        "SELECT time as hour, outcome, SUM(count) as verifications FROM key_verifications_per_hour_v1 "
        "WHERE time >= toStartOfDay(now()) GROUP BY time, outcome ORDER BY time, outcome",
        "SELECT external_id, COUNT(*) as total_verifications, countIf(outcome = 'VALID') as successful, "
        "countIf(outcome = 'RATE_LIMITED') as rate_limited FROM key_verifications_v1 WHERE time >= now() "
        "- INTERVAL 30 DAY AND external_id != '' GROUP BY external_id ORDER BY total_verifications DESC "
        "LIMIT 100",
        "SELECT key_space_id, COUNT(*) as verifications, round(countIf(outcome = 'VALID') / COUNT(*) * 100, "
        "2) as success_rate FROM key_verifications_v1 WHERE time >= now() - INTERVAL 7 DAY "
        "GROUP BY key_space_id",
        "SELECT key_id, COUNT(*) as total_errors, groupArray(DISTINCT outcome) as error_types FROM "
        "key_verifications_v1 WHERE outcome != 'VALID' AND time >= now() - INTERVAL 7 DAY GROUP BY key_id "
        "ORDER BY total_errors DESC LIMIT 20",
        "SELECT identity_id, toStartOfMonth(time) as month, countIf(outcome = 'VALID') as billable_requests "
        "FROM key_verifications_v1 WHERE identity_id != '' AND time >= toStartOfMonth(now()) "
        "GROUP BY identity_id, month ORDER BY billable_requests DESC",
        "SELECT toDate(time) as date, countIf(outcome = 'VALID') as billable_requests, "
        "billable_requests * 0.001 as estimated_cost FROM key_verifications_v1 WHERE external_id = 'acme' "
        "AND time >= now() - INTERVAL 30 DAY GROUP BY date ORDER BY date",
        "SELECT time as date, SUM(count) as total_requests, SUM(if(outcome = 'VALID', count, 0)) as "
        "successful_requests, round(successful_requests / total_requests * 100, 2) as success_rate "
        "FROM key_verifications_per_day WHERE time >= now() - INTERVAL 30 DAY GROUP BY date ORDER BY date",
    ]
    answers = [await rows(server, query) for query in queries]

    assert answers[0] == [{"total": 11}]
    assert answers[1] == [{"total_verifications": 14}]
    assert answers[4] == [{"external_id": "acme", "total_verifications": 5, "successful": 5,
                           "rate_limited": 0}]
    assert answers[8] == [{"date": T0 - 12 * HOUR, "billable_requests": 5, "estimated_cost": 0.005}]
    assert answers[9] == [{"date": T0 - 12 * HOUR, "total_requests": 14, "successful_requests": 11,
                           "success_rate": 78.57}]


# -- who may read what ----------------------------------------------------------------------------


async def test_if_a_root_key_may_read_one_apis_analytics_then_it_sees_only_that_apis_rows(
    server: Server, traffic: Traffic,
) -> None:
    scoped = server.root_key(f"api.{traffic.payments}.read_analytics")

    total = await rows(server, f"SELECT count() AS n FROM {RAW}", key=scoped)
    by_api = await rows(server, f"SELECT api_id, count() AS n FROM {RAW} GROUP BY api_id", key=scoped)
    named = await rows(server, f"SELECT count() AS n FROM {RAW} WHERE api_id IN ('{traffic.payments}')",
                       key=scoped)

    assert total == named == [{"n": 9}]  # not billing's 4, not the unknown key's NOT_FOUND
    assert by_api == [{"api_id": traffic.payments, "n": 9}]


async def test_if_a_scoped_root_key_names_another_api_then_403_naming_the_permission(
    server: Server, traffic: Traffic,
) -> None:
    scoped = server.root_key(f"api.{traffic.payments}.read_analytics")

    error = await server.fail("analytics.getVerifications", {
        "query": f"SELECT count() FROM {RAW} WHERE api_id = '{traffic.billing}'"}, 403,
        "unkey/authorization/insufficient_permissions", key=scoped)

    assert f"api.{traffic.billing}.read_analytics" in error["detail"]


async def test_if_a_root_key_may_read_two_apis_then_it_sees_both_and_never_unknown_keys(
    server: Server, traffic: Traffic,
) -> None:
    both = server.root_key(f"api.{traffic.payments}.read_analytics", f"api.{traffic.billing}.read_analytics")

    assert await rows(server, f"SELECT count() AS n FROM {RAW}", key=both) == [{"n": 13}]


async def test_if_a_root_key_may_not_read_analytics_then_403(server: Server, traffic: Traffic) -> None:
    verifier = server.root_key("api.*.verify_key", f"api.{traffic.payments}.read_key")

    error = await server.fail("analytics.getVerifications", {"query": f"SELECT count() FROM {RAW}"}, 403,
                              "unkey/authorization/insufficient_permissions", key=verifier)

    assert "read_analytics" in error["detail"]


# -- what is read ---------------------------------------------------------------------------------


async def test_if_the_where_bounds_time_and_ids_then_only_that_range_is_read_with_that_filter(
    server: Server, traffic: Traffic,
) -> None:

    answer = await rows(server, f"SELECT count() AS n FROM {RAW} WHERE time >= {T0} AND time < {T0 + HOUR} "
                                f"AND key_id = '{traffic.a}' AND outcome IN ('VALID', 'EXPIRED') "
                                "AND has(tags, 'path=/x')")

    assert answer == [{"n": 3}]
    assert reads(server)[-1] == (T0, T0 + HOUR, EventFilter(
        key_id=traffic.a, tags=("path=/x",), codes=("VALID", "EXPIRED")))


async def test_if_an_aggregated_table_is_read_then_whole_buckets_are_read(
    server: Server, traffic: Traffic, clock: Clock,
) -> None:
    now = clock()

    answer = await rows(server, "SELECT sum(count) AS n FROM key_verifications_per_hour_v1 "
                                f"WHERE time >= {T0 + 30 * MINUTE}")

    assert answer == [{"n": 3}]  # the 12:00 bucket starts before the bound: not counted, but read whole
    assert reads(server)[-1][:2] == (T0, now - now % HOUR + HOUR)


async def test_if_the_where_gives_no_lower_bound_then_the_retention_is_read_and_nothing_more(
    server: Server, traffic: Traffic, clock: Clock,
) -> None:
    now = clock()

    await rows(server, f"SELECT count() FROM {RAW}")
    await rows(server, f"SELECT count() FROM {RAW} WHERE time < now() - INTERVAL 40 DAY")

    assert reads(server)[-1] == (now - 30 * DAY, now + 1, EventFilter())  # the second read nothing


async def test_if_a_scoped_root_key_queries_then_the_store_filters_by_its_api(
    server: Server, traffic: Traffic,
) -> None:

    await rows(server, f"SELECT count() FROM {RAW} WHERE key_id = ''",
               key=server.root_key(f"api.{traffic.billing}.read_analytics"))

    assert reads(server)[-1][2] == EventFilter(api_id=traffic.billing)  # '' is no key: not filtered on


async def test_if_the_range_reaches_beyond_the_retention_then_400_saying_how_far_back_it_may(
    server: Server, traffic: Traffic,
) -> None:
    error = await server.fail("analytics.getVerifications", {
        "query": f"SELECT count() FROM {RAW} WHERE time >= now() - INTERVAL 31 DAY"}, 400,
        "user/bad_request/query_range_exceeds_retention")

    ancient = await server.fail("analytics.getVerifications", {
        "query": f"SELECT count() FROM {RAW} WHERE time > -9223372036854775807"}, 400,
        "user/bad_request/query_range_exceeds_retention")

    assert "keeps 30 days" in error["detail"] and "2026-02-13 00:00 UTC" in error["detail"]
    assert error["errors"][0]["location"] == "body.query"
    assert "reaches back to -4611686018427387904 (Unix ms)" in ancient["detail"]
    assert await rows(server, f"SELECT count() AS n FROM {RAW} WHERE time >= toStartOfDay(now() - "
                              "INTERVAL 30 DAY)") == [{"n": 14}]


# -- limits ---------------------------------------------------------------------------------------


async def test_if_a_query_reads_more_events_than_allowed_then_422(
    server: Server, traffic: Traffic, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(served_analytics, "MAX_EVENTS", 10)

    error = await server.fail("analytics.getVerifications", {"query": f"SELECT count() FROM {RAW}"}, 422,
                              "user/unprocessable_entity/query_rows_limit_exceeded")

    assert error["title"] == "Unprocessable Entity" and "narrow its time range" in error["detail"]
    assert await rows(server, f"SELECT count() AS n FROM {RAW} "
                              "WHERE outcome IN ('RATE_LIMITED', 'DISABLED')") == [{"n": 2}]
    assert await rows(server, f"SELECT count() AS n FROM {RAW} WHERE key_id = '{traffic.a}'") == [{"n": 5}]


async def test_if_an_answer_has_more_rows_than_allowed_then_it_is_cut_as_unkey_cuts_it(
    server: Server, traffic: Traffic, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(served_analytics, "MAX_ROWS", 2)

    assert len(await rows(server, f"SELECT time FROM {RAW}")) == 2


async def test_if_the_store_cannot_answer_then_503_with_retry_after(
    server: Server, traffic: Traffic,
) -> None:
    server.ks.store.close()

    response = await server.post("analytics.getVerifications", {"query": f"SELECT count() FROM {RAW}"})

    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert response.json()["error"]["type"].endswith("/unkey/application/service_unavailable")


# -- malformed queries ----------------------------------------------------------------------------


@pytest.mark.parametrize(("query", "code", "fragment"), [
    ("SELEC outcome FROM key_verifications_v1", "invalid_analytics_query", "a query starts with SELECT"),
    ("DROP TABLE key_verifications_v1", "invalid_analytics_query_type", "only SELECT queries are allowed"),
    ("INSERT INTO key_verifications_v1 VALUES (1)", "invalid_analytics_query_type", "not INSERT"),
    ("SELECT * FROM users", "invalid_analytics_table", "there is no table users"),
    ("SELECT * FROM default.key_verifications_raw_v2", "invalid_analytics_table",
     "no table default.key_verifications_raw_v2"),
    ("SELECT url(key_id) FROM key_verifications_v1", "invalid_analytics_function", "url() is not supported"),
    ("SELECT * FROM numbers(10)", "invalid_analytics_function", "table functions"),
    ("SELECT latency_ms FROM key_verifications_v1", "invalid_analytics_query",
     "there is no column latency_ms"),
    ("SELECT count FROM key_verifications_v1", "invalid_analytics_query", "there is no column count"),
    ("SELECT request_id FROM key_verifications_v1", "invalid_analytics_query", "does not record request ids"),
    ("SELECT outcome, count() FROM key_verifications_v1", "invalid_analytics_query",
     "outcome is neither in GROUP BY"),
    ("SELECT key_id FROM key_verifications_v1 WHERE outcome = 1", "invalid_analytics_query",
     "cannot be compared with the number 1"),
    ("SELECT 1 FROM key_verifications_v1 WHERE", "invalid_analytics_query", "expected a value"),
    ("SELECT 1 FROM key_verifications_v1; DELETE FROM key_verifications_v1", "invalid_analytics_query",
     "one statement per query"),
    ("SELECT 'oops FROM key_verifications_v1", "invalid_analytics_query", "never closed"),
])
async def test_if_a_query_is_malformed_then_400_names_what_is_wrong(
    server: Server, traffic: Traffic, query: str, code: str, fragment: str,
) -> None:
    error = await server.fail("analytics.getVerifications", {"query": query}, 400, f"user/bad_request/{code}")

    assert fragment in error["detail"]
    assert error["errors"][0]["location"] == "body.query" and fragment in error["errors"][0]["message"]


async def test_if_the_query_is_missing_or_empty_then_400_at_body_query(server: Server) -> None:
    for body in ({}, {"query": ""}, {"query": 7}):
        error = await server.fail("analytics.getVerifications", body, 400, "unkey/application/invalid_input")
        assert error["errors"][0]["location"] == "body.query"


TABLED = [
    "SELECT outcome, count() AS n FROM key_verifications_v1 WHERE time >= now() - INTERVAL 7 DAY "
    "GROUP BY outcome ORDER BY n DESC LIMIT 5",
    "SELECT toStartOfHour(time) AS hour, countIf(outcome = 'VALID') AS ok, round(ok / count() * 100, 2) "
    "FROM key_verifications_v1 GROUP BY hour ORDER BY hour",
    "SELECT arrayJoin(tags) AS tag, sum(spent_credits) FROM key_verifications_v1 WHERE has(tags, 'x') "
    "OR key_id IN ('a', 'b') GROUP BY tag",
    "SELECT time, key_id, sum(count) FROM key_verifications_per_hour_v1 WHERE time > now() - INTERVAL 1 DAY "
    "GROUP BY time, key_id HAVING sum(count) > 1 ORDER BY 1",
    "SELECT DISTINCT outcome FROM key_verifications_per_day WHERE outcome LIKE 'R%' AND time BETWEEN "
    "0 AND now() ORDER BY outcome DESC LIMIT 2 OFFSET 1",
]


ITEMS = ["count() AS n", "sum(spent_credits) AS spent", "countIf(outcome = 'VALID') AS ok",
         "uniq(key_id) AS keys", "groupArray(DISTINCT outcome) AS seen", "max(time) AS last"]
CONDITIONS = ["time >= now() - INTERVAL 1 DAY", "has(tags, 'path=/x')", "outcome IN ('VALID', 'DISABLED')",
              "key_id != ''", "time BETWEEN 0 AND now()", "NOT (outcome = 'VALID')", "external_id = 'acme'"]
GROUPS = ["outcome", "key_id", "toStartOfHour(time)", "api_id", "external_id", "arrayJoin(tags)"]


def sound(rng: random.Random) -> str:
    """A valid query of random parts."""
    where = " AND ".join(rng.sample(CONDITIONS, rng.randint(0, 3)))
    return (f"SELECT {rng.choice(GROUPS)} AS g, {', '.join(rng.sample(ITEMS, rng.randint(1, 3)))} FROM "
            f"{rng.choice(['key_verifications_v1', 'key_verifications'])}{f' WHERE {where}' if where else ''}"
            f" GROUP BY g ORDER BY g {rng.choice(['ASC', 'DESC'])} LIMIT {rng.randint(0, 5)}")


async def test_if_hundreds_of_garbled_queries_are_sent_then_every_answer_is_200_400_or_422(
    server: Server, traffic: Traffic,
) -> None:
    rng = random.Random(7)
    statuses: dict[int, int] = {}
    for _ in range(300):
        query = sound(rng) if rng.random() < 0.3 else garbled(rng, TABLED)
        answer = await server.answer("analytics.getVerifications", {"query": query})
        statuses[answer["status"]] = statuses.get(answer["status"], 0) + 1
        if answer["status"] == 400:
            assert answer["error"]["errors"][0]["location"] == "body.query", answer

    assert set(statuses) <= {200, 400, 422} and statuses.get(200, 0) > 50, statuses
