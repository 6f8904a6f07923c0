"""keystile's small SQL (the analytics queries of keystile serve): parsing, checking and
evaluating, as pure functions over rows, with no store and no server."""

from __future__ import annotations

import json
import random
import time
from typing import Any

import pytest

from keystile._sql import SqlError, parse
from keystile._sqleval import bounds, plan, run
from keystile._sqlfunctions import Span, like, shift, start_of

COLUMNS = ["time", "outcome", "key_id", "identity_id", "tags", "spent_credits"]
HOUR = 3_600_000
DAY = 24 * HOUR
NOW = 1_773_576_000_000  # 2026-03-15 12:00 UTC
ROWS = [
    {"time": NOW - 2 * HOUR, "outcome": "VALID", "key_id": "key_a", "identity_id": "id_1",
     "tags": ("path=/x",), "spent_credits": 1},
    {"time": NOW - 2 * HOUR + 60_000, "outcome": "VALID", "key_id": "key_a", "identity_id": "id_1",
     "tags": ("path=/x", "beta"), "spent_credits": 1},
    {"time": NOW - HOUR, "outcome": "RATE_LIMITED", "key_id": "key_b", "identity_id": "",
     "tags": (), "spent_credits": 0},
    {"time": NOW - 1, "outcome": "VALID", "key_id": "key_b", "identity_id": "", "tags": ("path=/y",),
     "spent_credits": 0},
]


def query(text: str, rows: list[dict[str, Any]] = ROWS, **options: Any) -> list[dict[str, Any]]:
    return run(plan(parse(text), COLUMNS), rows, now=NOW, **options)


def failure(text: str) -> SqlError:
    with pytest.raises(SqlError) as caught:
        query(text)
    return caught.value


# -- parsing --------------------------------------------------------------------------------------


def test_if_a_query_is_parsed_then_its_clauses_come_back_in_the_tree() -> None:
    select = parse("SELECT DISTINCT outcome AS o, count(*) FROM key_verifications_v1 WHERE time > 0 "
                   "GROUP BY o HAVING count() > 1 ORDER BY 2 DESC NULLS FIRST LIMIT 5 OFFSET 2;")

    assert [item.name for item in select.items] == ["o", "count(*)"]
    assert (select.table, select.distinct, select.limit, select.offset) == (
        "key_verifications_v1", True, 5, 2)
    assert select.order_by[0].descending and select.order_by[0].nulls_first
    assert select.where is not None and select.having is not None and len(select.group_by) == 1


def test_if_limit_is_written_as_offset_comma_count_then_both_are_read() -> None:
    select = parse("SELECT 1 FROM t LIMIT 3, 10")

    assert (select.offset, select.limit) == (3, 10)


def test_if_an_item_has_no_alias_then_its_column_is_named_by_its_text() -> None:
    assert [item.name for item in parse("SELECT  sum( spent_credits ) , key_id k FROM t").items] == [
        "sum( spent_credits )", "k"]


def test_if_comments_and_quoted_names_are_used_then_they_read_as_clickhouse_reads_them() -> None:
    select = parse('SELECT "outcome", `key_id` -- the key\nFROM t /* a table */')

    assert [item.name for item in select.items] == ["outcome", "key_id"]


@pytest.mark.parametrize(("text", "fragment", "position"), [
    ("", "empty", None),
    ("SELECT", "expected a value", 6),
    ("SELECT outcome", "expected FROM", 14),
    ("SELECT outcome FROM", "expected a table name", 19),
    ("SELECT 'abc FROM t", "never closed", 7),
    ("SELECT 1 FROM t /* open", "comment is never closed", 16),
    ("SELECT 1 FROM t WHERE", "expected a value", 21),
    ("SELECT (1 FROM t", "expected ) to close", 10),
    ("SELECT 1 FROM t LIMIT x", "expected a whole number", 22),
    ("SELECT 1 FROM (SELECT 1)", "subqueries", 14),
    ("SELECT 1 FROM t WHERE key_id IN (SELECT 1)", "subqueries", 33),
    ("SELECT 1 FROM a JOIN b", "joins are not supported", 16),
    ("SELECT 1 FROM t; DROP TABLE t", "nothing may follow ';'", 17),
    ("SELECT 1 FROM t UNION ALL SELECT 2 FROM t", "UNION is not supported", 16),
    ("SELECT 1 FROM t ORDER BY 1 WHERE time > 0", "WHERE is out of place", 27),
    ("SELECT arrayFilter(x -> x, tags) FROM t", "lambda", 21),
    ("SELECT quantile(0.5)(time) FROM t", "parametric functions", 20),
    ("SELECT now() - INTERVAL 1 FORTNIGHT FROM t", "not an interval unit", 26),
    ("SELECT 99999999999999999999 FROM t", "beyond 64 bits", 7),
    ("WITH x AS (SELECT 1) SELECT * FROM x", "WITH", 0),
    ("SELECT t.outcome FROM t", "qualified names", 8),
    ("SELECT 1 FROM t x", "table aliases", 16),
    ("SELECT 1 FROM numbers(10)", "table functions", 14),
    ("SELECT 1 FROM t WHERE a = b = c", "unexpected '='", 28),
    ("SELECT # FROM t", "unexpected character '#'", 7),
])
def test_if_a_query_is_malformed_then_the_error_names_the_problem_and_where(
    text: str, fragment: str, position: int | None,
) -> None:
    with pytest.raises(SqlError) as caught:
        parse(text)

    assert fragment in str(caught.value)
    assert caught.value.position == position
    assert caught.value.code == ("invalid_analytics_function" if "table functions" in fragment
                                 else "invalid_analytics_query")


@pytest.mark.parametrize("statement", ["INSERT INTO t VALUES (1)", "DROP TABLE key_verifications_v1",
                                       "delete from t", "ALTER TABLE t DELETE WHERE 1", "SET x = 1"])
def test_if_a_statement_is_not_a_select_then_it_is_refused_as_such(statement: str) -> None:
    with pytest.raises(SqlError, match="only SELECT queries are allowed") as caught:
        parse(statement)

    assert caught.value.code == "invalid_analytics_query_type"


def test_if_parentheses_nest_deeper_than_allowed_then_an_error_not_a_recursion_error() -> None:
    with pytest.raises(SqlError, match="nests more than 32 levels"):
        parse("SELECT " + "(" * 500 + "1" + ")" * 500 + " FROM t")
    with pytest.raises(SqlError, match="nests more than 32 levels"):
        parse("SELECT " + "NOT " * 500 + "1 FROM t")


def test_if_a_chain_of_operators_is_too_long_then_an_error_not_a_recursion_error() -> None:
    assert parse("SELECT " + " + ".join(["1"] * 99) + " FROM t")
    with pytest.raises(SqlError, match="nested more than 100 levels"):
        parse("SELECT " + " + ".join(["1"] * 200) + " FROM t")


# -- checking names -------------------------------------------------------------------------------


def test_if_a_column_is_unknown_then_the_error_lists_the_columns() -> None:
    error = failure("SELECT latency FROM t")

    assert "there is no column latency; the columns are identity_id, key_id" in str(error)
    assert error.position == 7


def test_if_a_column_is_known_elsewhere_then_the_error_says_why_it_is_not_here() -> None:
    with pytest.raises(SqlError, match="keystile does not record request ids"):
        plan(parse("SELECT request_id FROM t"), COLUMNS,
             {"request_id": "keystile does not record request ids"})


def test_if_a_function_is_unknown_then_the_error_is_of_the_function_kind() -> None:
    error = failure("SELECT url(key_id) FROM t")

    assert error.code == "invalid_analytics_function"
    assert "url() is not supported" in str(error) and "toStartOfHour" in str(error)


@pytest.mark.parametrize(("text", "fragment"), [
    ("SELECT count(1, 2, 3) FROM t", "count() takes 0 to 1 arguments, not 3"),
    ("SELECT has(tags) FROM t", "has() takes 2 arguments, not 1"),
    ("SELECT sum(*) FROM t", "'*' is an argument of count(*) only"),
    ("SELECT lower(DISTINCT key_id) FROM t", "DISTINCT goes inside aggregate functions only"),
    ("SELECT 1 FROM t WHERE count() > 1", "cannot be in WHERE; filter groups with HAVING"),
    ("SELECT count() FROM t GROUP BY sum(spent_credits)", "cannot be in GROUP BY"),
    ("SELECT sum(count()) FROM t", "count() is inside another aggregate function, sum()"),
    ("SELECT outcome, count() FROM t", "outcome is neither in GROUP BY nor inside an aggregate"),
    ("SELECT time FROM t GROUP BY outcome", "time is neither in GROUP BY"),
    ("SELECT key_id AS x, outcome AS x FROM t", "the alias x names two different expressions"),
    ("SELECT 1 FROM t ORDER BY 3", "ORDER BY 3 names no column: the query selects 1"),
    ("SELECT arrayJoin(tags), arrayJoin(['a']) FROM t", "one arrayJoin"),
])
def test_if_a_query_uses_names_wrongly_then_the_error_says_how(text: str, fragment: str) -> None:
    assert fragment in str(failure(text))


def test_if_aliases_refer_to_each_other_then_they_expand_and_a_loop_is_an_error() -> None:
    assert query("SELECT count() AS n, n * 2 AS twice FROM t") == [{"n": 4, "twice": 8}]
    with pytest.raises(SqlError, match="no column a"):
        query("SELECT b AS a, a AS b FROM t")


def test_if_an_alias_names_a_column_inside_its_own_definition_then_it_is_the_column() -> None:
    rows = [{**row, "count": 2} for row in ROWS]
    built = plan(parse("SELECT outcome, sum(count) AS count FROM t GROUP BY outcome ORDER BY count DESC"),
                 [*COLUMNS, "count"])

    by_position = plan(parse("SELECT outcome, sum(count) AS count FROM t GROUP BY 1 ORDER BY 2 DESC"),
                       [*COLUMNS, "count"])

    assert run(built, rows, now=NOW) == run(by_position, rows, now=NOW) == [
        {"outcome": "VALID", "count": 6}, {"outcome": "RATE_LIMITED", "count": 2}]


def test_if_an_alias_is_grouped_by_then_the_expression_is_grouped_as_clickhouse_does() -> None:
    answer = query("SELECT toStartOfHour(time) AS time, count() AS n FROM t GROUP BY time ORDER BY time")

    assert answer == [{"time": NOW - 2 * HOUR, "n": 2}, {"time": NOW - HOUR, "n": 2}]


# -- evaluating -----------------------------------------------------------------------------------


def test_if_rows_are_counted_by_outcome_then_counts_and_order_are_exact() -> None:
    assert query("SELECT outcome, count() AS n, sum(spent_credits) AS spent FROM t "
                 "GROUP BY outcome ORDER BY n DESC") == [
        {"outcome": "VALID", "n": 3, "spent": 2}, {"outcome": "RATE_LIMITED", "n": 1, "spent": 0}]


def test_if_no_row_matches_an_aggregate_without_group_by_then_one_row_of_zeros() -> None:
    assert query("SELECT count() AS n, sum(spent_credits) AS s, max(time) AS m FROM t WHERE 0") == [
        {"n": 0, "s": 0, "m": None}]
    assert query("SELECT outcome, count() FROM t WHERE 0 GROUP BY outcome") == []


def test_if_conditional_aggregates_are_used_then_each_counts_its_own_rows() -> None:
    answer = query("SELECT key_id, countIf(outcome = 'VALID') AS ok, sumIf(spent_credits, has(tags, 'beta')) "
                   "AS beta, uniq(outcome) AS kinds, groupArray(DISTINCT outcome) AS seen, "
                   "round(countIf(outcome = 'VALID') / count() * 100, 1) AS rate "
                   "FROM t GROUP BY key_id ORDER BY key_id")

    assert answer == [
        {"key_id": "key_a", "ok": 2, "beta": 1, "kinds": 1, "seen": ["VALID"], "rate": 100.0},
        {"key_id": "key_b", "ok": 1, "beta": 0, "kinds": 2, "seen": ["RATE_LIMITED", "VALID"], "rate": 50.0},
    ]


def test_if_tags_are_unrolled_with_array_join_then_each_tag_is_a_row() -> None:
    assert query("SELECT arrayJoin(tags) AS tag, count() AS n FROM t GROUP BY tag ORDER BY n DESC, tag") == [
        {"tag": "path=/x", "n": 2}, {"tag": "beta", "n": 1}, {"tag": "path=/y", "n": 1}]


@pytest.mark.parametrize(("where", "keys"), [
    ("has(tags, 'path=/x')", ["key_a", "key_a"]),
    ("hasAny(tags, ['beta', 'path=/y'])", ["key_a", "key_b"]),
    ("hasAll(tags, ['beta', 'path=/x'])", ["key_a"]),
    ("key_id IN ('key_b') AND NOT outcome = 'VALID'", ["key_b"]),
    ("key_id NOT IN ('key_a', 'key_c')", ["key_b", "key_b"]),
    ("outcome LIKE 'RATE%' OR identity_id != ''", ["key_a", "key_a", "key_b"]),
    ("outcome ILIKE '%limit%'", ["key_b"]),
    ("time BETWEEN now() - INTERVAL 90 MINUTE AND now()", ["key_b", "key_b"]),
    ("time >= fromUnixTimestamp64Milli(1773568800000) AND time < toStartOfHour(now()) - INTERVAL 1 HOUR",
     ["key_a", "key_a"]),
    ("time NOT BETWEEN 0 AND now() - INTERVAL 1 HOUR", ["key_b"]),
    ("empty(tags)", ["key_b"]),
    ("length(identity_id) > 0 AND startsWith(key_id, 'key_')", ["key_a", "key_a"]),
])
def test_if_rows_are_filtered_then_only_the_matching_ones_remain(where: str, keys: list[str]) -> None:
    assert [row["key_id"] for row in query(f"SELECT key_id FROM t WHERE {where} ORDER BY time")] == keys


def test_if_values_are_null_then_sql_three_valued_logic_applies() -> None:
    answer = query("SELECT 1 / 0 AS a, NULL = 1 AS b, NULL OR 1 AS c, NULL AND 0 AS d, NULL AND 1 AS e, "
                   "coalesce(NULL, 2) AS f, ifNull(NULL, 'x') AS g, NULL IS NULL AS h, "
                   "if(NULL, 'then', 'else') AS i FROM t LIMIT 1")

    assert answer == [{"a": None, "b": None, "c": 1, "d": 0, "e": None, "f": 2, "g": "x", "h": 1,
                       "i": "else"}]


def test_if_values_of_different_kinds_meet_then_the_error_names_both_and_where() -> None:
    error = failure("SELECT key_id FROM t WHERE outcome = 1")

    assert "the string 'VALID' cannot be compared with the number 1" in str(error)
    assert error.position == 35
    assert "sum() needs a number, not the string 'VALID'" in str(failure("SELECT sum(outcome) FROM t"))
    assert "a condition is a comparison" in str(failure("SELECT 1 FROM t WHERE key_id"))


def test_if_numbers_overflow_then_an_error_and_floats_beyond_range_become_null() -> None:
    assert "beyond 64-bit integers" in str(failure("SELECT 9223372036854775807 + 1 FROM t"))
    assert query("SELECT 1e308 * 10 AS x FROM t LIMIT 1") == [{"x": None}]


def test_if_a_case_expression_is_used_then_the_first_true_branch_wins() -> None:
    answer = query("SELECT key_id, CASE WHEN count() >= 2 THEN 'busy' ELSE 'quiet' END AS level, "
                   "CASE key_id WHEN 'key_a' THEN 'A' END AS short FROM t GROUP BY key_id ORDER BY key_id")

    assert answer == [{"key_id": "key_a", "level": "busy", "short": "A"},
                      {"key_id": "key_b", "level": "busy", "short": None}]


def test_if_rows_are_ordered_then_nulls_go_last_unless_asked_first_and_positions_work() -> None:
    rows = [{"time": 1, "key_id": "b"}, {"time": 2, "key_id": None}, {"time": 3, "key_id": "a"}]

    def order(clause: str) -> list[int]:
        return [row["time"] for row in query(f"SELECT time, key_id FROM t ORDER BY {clause}", rows)]

    assert order("key_id") == [3, 1, 2]
    assert order("key_id DESC") == [1, 3, 2]
    assert order("key_id NULLS FIRST") == [2, 3, 1]
    assert order("2 DESC NULLS FIRST") == [2, 1, 3]


def test_if_distinct_limit_offset_and_max_rows_apply_then_the_answer_is_cut_in_that_order() -> None:
    assert query("SELECT DISTINCT key_id FROM t ORDER BY key_id") == [
        {"key_id": "key_a"}, {"key_id": "key_b"}]
    assert query("SELECT time FROM t ORDER BY time LIMIT 2 OFFSET 1") == [
        {"time": NOW - 2 * HOUR + 60_000}, {"time": NOW - HOUR}]
    assert len(query("SELECT time FROM t", max_rows=3)) == 3


def test_if_select_star_is_asked_then_every_column_comes_sorted_by_name() -> None:
    assert list(query("SELECT * FROM t LIMIT 1")[0]) == sorted(COLUMNS)
    assert query("SELECT * FROM t LIMIT 1")[0]["tags"] == ["path=/x"]


def test_if_an_interval_is_returned_then_an_error_says_to_add_it_to_a_time() -> None:
    assert "an INTERVAL is not a value to return" in str(failure("SELECT INTERVAL 1 DAY FROM t"))


# -- time -----------------------------------------------------------------------------------------


def test_if_months_are_added_or_taken_then_the_calendar_decides_and_the_day_is_clamped() -> None:
    march_31 = 1_711_886_400_000  # 2024-03-31 12:00 UTC

    assert shift(march_31, Span(1, "MONTH"), -1) == 1_709_208_000_000  # 2024-02-29 12:00
    assert shift(march_31, Span(1, "YEAR"), -1) == 1_680_264_000_000  # 2023-03-31 12:00
    assert shift(march_31, Span(2, "DAY"), 1) == march_31 + 2 * DAY


def test_if_times_are_floored_then_weeks_start_monday_or_sunday_and_months_on_the_first() -> None:
    sunday = 1_773_576_000_000 - 12 * HOUR  # 2026-03-15 00:00 was a Sunday

    assert start_of("WEEK", NOW) == sunday - 6 * DAY
    assert start_of("WEEK", NOW, sunday=True) == sunday
    assert start_of("MONTH", NOW) == 1_772_323_200_000  # 2026-03-01
    assert start_of("QUARTER", NOW) == 1_767_225_600_000  # 2026-01-01
    assert query("SELECT toStartOfWeek(now()) AS s, toStartOfWeek(now(), 1) AS m, toDate(now()) AS d "
                 "FROM t LIMIT 1") == [{"s": sunday, "m": sunday - 6 * DAY, "d": sunday}]


@pytest.mark.parametrize(("where", "expected"), [
    ("time >= now() - INTERVAL 7 DAY", (NOW - 7 * DAY, None)),
    ("time > 10 AND time <= 20", (11, 21)),
    ("100 <= time AND 200 > time AND outcome = 'VALID'", (100, 200)),
    ("time BETWEEN 5 AND 9", (5, 10)),
    ("time = 42", (42, 43)),
    ("time >= 10 AND time >= 30 AND time < 50 AND time < 40", (30, 40)),
    ("time >= 10 OR time < 5", (None, None)),
    ("toStartOfHour(time) >= 10", (None, None)),
    ("time >= key_id", (None, None)),
    ("time > 1.5", (2, None)),
    ("time >= 1e300", (2**62, None)),
])
def test_if_a_where_bounds_time_then_the_bounds_are_read_from_its_top_level_ands(
    where: str, expected: tuple[int | None, int | None],
) -> None:
    built = plan(parse(f"SELECT 1 FROM t WHERE {where}"), COLUMNS)

    assert bounds(built.where, "time", NOW) == expected


# -- LIKE ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "pattern", "matches"), [
    ("path=/users", "path=%", True), ("path=/users", "%users", True), ("path=/users", "%=/u%s", True),
    ("abc", "a_c", True), ("abc", "a_", False), ("a%c", "a\\%c", True), ("abc", "a\\%c", False),
    ("", "%", True), ("abc", "%%%", True), ("ab", "a%b%", True), ("aXbXc", "a%b%c", True),
    ("acb", "a%b%c", False), ("abab", "%ab", True), ("a_c", "a\\_c", True), ("abc", "a\\_c", False),
])
def test_if_like_patterns_are_matched_then_percent_and_underscore_work_as_in_sql(
    text: str, pattern: str, matches: bool,
) -> None:
    assert like(text, pattern) is matches


def test_if_a_like_pattern_is_pathological_then_it_still_answers_at_once() -> None:
    started = time.perf_counter()

    assert like("a" * 5_000, "%a" * 2_000 + "%b") is False
    assert time.perf_counter() - started < 1


# -- nothing but SqlError ------------------------------------------------------------------------

PIECES = [
    "SELECT", "FROM", "WHERE", "GROUP BY", "ORDER BY", "LIMIT", "HAVING", "AND", "OR", "NOT", "IN",
    "BETWEEN", "LIKE", "IS NULL", "AS", "DESC", "DISTINCT", "CASE", "WHEN", "THEN", "ELSE", "END",
    "INTERVAL", "DAY", "(", ")", ",", "*", "+", "-", "/", "%", "=", "!=", "<", ">=", "||", "[", "]",
    ";", "'VALID'", "''", "0", "1", "-1", "2.5", "1e3", "9223372036854775807", "now()", "time",
    "outcome", "tags", "key_id", "count()", "count(*)", "sum(", "countIf(", "toStartOfHour(", "has(",
    "arrayJoin(", "round(", "if(", "toInt64(", "groupArray(", "min(", "date_trunc(", "'month'",
    "toStartOfMonth(", "hasAny(", "substring(", "--", "/*", "*/", '"outcome"', "->", "x", ".",
]
VALID = [
    "SELECT outcome, count() AS n FROM t WHERE time >= now() - INTERVAL 7 DAY GROUP BY outcome "
    "ORDER BY n DESC LIMIT 5",
    "SELECT toStartOfHour(time) AS hour, countIf(outcome = 'VALID') AS ok, round(ok / count() * 100, 2) "
    "FROM t GROUP BY hour ORDER BY hour",
    "SELECT arrayJoin(tags) AS tag, sum(spent_credits) FROM t WHERE has(tags, 'x') OR key_id IN ('a', 'b') "
    "GROUP BY tag",
    "SELECT key_id, CASE WHEN count() > 3 THEN 'many' ELSE 'few' END AS size FROM t GROUP BY key_id "
    "HAVING count() > 1 ORDER BY 1",
    "SELECT DISTINCT outcome FROM t WHERE outcome LIKE 'R%' AND time BETWEEN 0 AND now() "
    "ORDER BY outcome DESC NULLS FIRST LIMIT 2 OFFSET 1",
]


def garbled(rng: random.Random, valid: list[str] = VALID) -> str:
    """A query of random pieces, or a valid one with a few characters or pieces changed."""
    if rng.random() < 0.4:
        return " ".join(rng.choice(PIECES) for _ in range(rng.randint(1, 20)))
    chars = list(rng.choice(valid))
    for _ in range(rng.randint(1, 4)):
        at = rng.randrange(len(chars) + 1)
        if rng.random() < 0.5 and chars:
            del chars[min(at, len(chars) - 1)]
        else:
            chars[at:at] = list(" " + rng.choice(PIECES) + " ")
    return "".join(chars)


def test_if_thousands_of_garbled_queries_are_run_then_each_answers_or_raises_only_sql_error() -> None:
    rng = random.Random(20260315)
    answered = 0
    for _ in range(3_000):
        text = garbled(rng)
        try:
            rows = query(text, max_rows=50)
        except SqlError as error:
            assert error.reason and error.code.startswith(("invalid_analytics", "query_")), text
        else:
            json.dumps(rows, allow_nan=False)
            answered += 1
    assert answered > 20  # some mutations stay valid, and those run end to end
