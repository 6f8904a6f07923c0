"""Permission queries in Unkey's grammar: precedence, words, names and the errors."""

from __future__ import annotations

import pytest

from keystile import KeystileError, PermissionQuery, PermissionQueryError, parse_query
from keystile._permissions import MAX_QUERY_LENGTH


def allows(query: str, *permissions: str) -> bool:
    return parse_query(query).allows(frozenset(permissions))


def error_of(query: str) -> PermissionQueryError:
    with pytest.raises(PermissionQueryError) as info:
        parse_query(query)
    return info.value


# -- evaluation ------------------------------------------------------------------------


def test_if_the_query_is_one_name_then_it_allows_exactly_that_permission() -> None:
    assert allows("docs.read", "docs.read")
    assert not allows("docs.read", "docs.write")
    assert not allows("docs.read")


def test_if_names_are_joined_with_and_then_all_are_needed() -> None:
    assert allows("a AND b AND c", "a", "b", "c")
    assert not allows("a AND b AND c", "a", "b")


def test_if_names_are_joined_with_or_then_one_is_enough() -> None:
    assert allows("a OR b OR c", "c")
    assert not allows("a OR b OR c", "d")


def test_if_and_and_or_are_mixed_then_and_binds_tighter() -> None:
    # "a OR b AND c" is "a OR (b AND c)", not "(a OR b) AND c".
    assert allows("a OR b AND c", "a")
    assert not allows("a OR b AND c", "b")
    assert allows("a OR b AND c", "b", "c")
    # "a AND b OR c" is "(a AND b) OR c".
    assert allows("a AND b OR c", "c")
    assert not allows("a AND b OR c", "a")


def test_if_and_and_or_are_mixed_then_the_tree_groups_and_under_or() -> None:
    assert parse_query("a OR b AND c").tree == ("or", ("a", ("and", ("b", "c"))))
    assert parse_query("a AND b OR c AND d").tree == (
        "or", (("and", ("a", "b")), ("and", ("c", "d")))
    )


def test_if_parentheses_group_an_or_then_it_is_evaluated_first() -> None:
    assert not allows("(a OR b) AND c", "a")
    assert allows("(a OR b) AND c", "b", "c")
    assert allows("read AND (write OR admin)", "read", "admin")
    assert not allows("read AND (write OR admin)", "write", "admin")


def test_if_parentheses_nest_then_each_level_is_evaluated() -> None:
    assert allows("((a AND (b OR c)) OR d)", "a", "c")
    assert allows("((a AND (b OR c)) OR d)", "d")
    assert not allows("((a AND (b OR c)) OR d)", "a", "d2")


@pytest.mark.parametrize("query", ["a and b", "a And b", "a aNd b", "a AND b"])
def test_if_and_is_written_in_any_case_then_it_is_the_operator(query: str) -> None:
    assert parse_query(query).tree == ("and", ("a", "b"))


@pytest.mark.parametrize("query", ["a or b", "a Or b", "a oR b", "a OR b"])
def test_if_or_is_written_in_any_case_then_it_is_the_operator(query: str) -> None:
    assert parse_query(query).tree == ("or", ("a", "b"))


@pytest.mark.parametrize("name", ["readANDwrite", "ORacle", "android", "band", "orAND", "AND.read"])
def test_if_an_operator_is_part_of_a_longer_word_then_the_word_is_a_name(name: str) -> None:
    assert parse_query(name).tree == name
    assert allows(name, name)


def test_if_whitespace_includes_tabs_and_newlines_then_it_is_insignificant() -> None:
    query = "\t read\nAND\r\n(\twrite  OR\nadmin )\n\t"
    assert parse_query(query).tree == ("and", ("read", ("or", ("write", "admin"))))


def test_if_no_whitespace_surrounds_parentheses_then_the_query_still_parses() -> None:
    assert parse_query("(a)AND(b)").tree == ("and", ("a", "b"))


@pytest.mark.parametrize(
    "name", ["api.docs.read", "docs_read", "docs-read", "docs.*", "*", "api:docs:read", "docs/read",
             "A-z.0_9*:/"],
)
def test_if_a_name_uses_letters_digits_and_dot_underscore_dash_star_colon_slash_then_it_parses(
    name: str,
) -> None:
    assert parse_query(name).tree == name
    assert allows(f"{name} AND x", name, "x")


def test_if_a_name_has_a_star_then_it_matches_only_the_same_literal_name() -> None:
    assert not allows("docs.*", "docs.read")
    assert allows("docs.*", "docs.*")


def test_if_names_are_asked_for_then_every_mentioned_name_is_returned() -> None:
    assert parse_query("a AND (b OR c) OR a").names() == frozenset({"a", "b", "c"})


def test_if_a_query_is_parsed_then_it_keeps_its_text_and_works_with_a_plain_set() -> None:
    query = parse_query("a OR b")
    assert isinstance(query, PermissionQuery)
    assert query.text == "a OR b"
    assert query.allows({"b"})


def test_if_a_query_is_exactly_the_maximum_length_then_it_parses() -> None:
    query = " OR ".join(["p"] * 200)  # 200 + 199 * 4 = 996 characters
    query += " " * (MAX_QUERY_LENGTH - len(query))
    assert len(query) == MAX_QUERY_LENGTH == 1000
    assert allows(query, "p")


def test_if_parentheses_nest_50_deep_then_the_query_parses() -> None:
    assert allows("(" * 50 + "a" + ")" * 50, "a")


def test_if_the_same_text_is_parsed_twice_then_the_cached_query_is_returned() -> None:
    assert parse_query("cached.a AND cached.b") is parse_query("cached.a AND cached.b")


# -- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize("query", ["", " ", "\t\n"])
def test_if_the_query_is_empty_then_it_fails_at_position_0(query: str) -> None:
    assert error_of(query).position == 0


def test_if_the_query_ends_with_and_then_it_fails_at_the_end() -> None:
    error = error_of("read AND")
    assert error.position == 8
    assert "ended" in error.reason


def test_if_the_query_ends_with_or_and_spaces_then_it_fails_at_the_end() -> None:
    assert error_of("read OR  ").position == 9


def test_if_the_query_starts_with_an_operator_then_it_fails_at_position_0() -> None:
    error = error_of("AND read")
    assert error.position == 0
    assert "'AND'" in error.reason


def test_if_two_operators_follow_each_other_then_it_fails_at_the_second() -> None:
    assert error_of("a AND OR b").position == 6


def test_if_a_parenthesis_is_not_closed_then_it_fails_at_the_end() -> None:
    error = error_of("(a OR b")
    assert error.position == 7
    assert "')'" in error.reason


def test_if_a_closing_parenthesis_has_no_opening_then_it_fails_at_it() -> None:
    assert error_of("a OR b)").position == 6


def test_if_parentheses_are_empty_then_it_fails_at_the_closing_one() -> None:
    assert error_of("a AND ()").position == 7


def test_if_a_name_follows_a_closing_parenthesis_then_it_fails_at_the_name() -> None:
    assert error_of("(a) b").position == 4


@pytest.mark.parametrize(
    ("query", "position", "char"),
    [("a & b", 2, "&"), ("a AND b!", 7, "!"), ("\tdocs.read AND é", 15, "é"), ("a,b", 1, ","),
     ("a AND 'b'", 6, "'")],
)
def test_if_a_character_is_not_allowed_then_it_fails_at_that_character(
    query: str, position: int, char: str
) -> None:
    error = error_of(query)
    assert error.position == position
    assert repr(char) in error.reason


def test_if_two_names_have_no_operator_then_it_fails_at_the_second_name() -> None:
    error = error_of("read write")
    assert error.position == 5
    assert "AND or OR" in error.reason


def test_if_an_operator_is_glued_to_a_name_then_the_missing_operator_is_reported() -> None:
    assert error_of("a ANDb").position == 2


def test_if_the_query_is_longer_than_1000_characters_then_it_fails_at_position_1000() -> None:
    error = error_of("p" * (MAX_QUERY_LENGTH + 1))
    assert error.position == 1000


def test_if_parentheses_nest_51_deep_then_it_fails_at_the_51st_parenthesis() -> None:
    error = error_of("(" * 51 + "a" + ")" * 51)
    assert error.position == 50
    assert "50" in error.reason


def test_if_a_query_is_malformed_then_the_error_is_a_value_error_and_a_keystile_error() -> None:
    with pytest.raises(ValueError, match="position 2"):
        parse_query("a b")
    assert isinstance(error_of("a b"), KeystileError)


def test_if_a_query_is_malformed_then_the_error_names_the_query() -> None:
    error = error_of("a OR OR b")
    assert error.query == "a OR OR b"
    assert "'a OR OR b'" in str(error)
    assert "position 5" in str(error)
