"""The Gate both middlewares share: where the key is read from, the client address, headers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from keystile import Keystile
from keystile._gate import Gate
from keystile._problem import Problem
from tests.conftest import Clock

KEY = "sk_live_3yQ9mZk7Hd2fXwVtPq8RbN"
BEARER = [(b"authorization", f"Bearer {KEY}".encode())]


@pytest.fixture
def sqlite_ks(sqlite_url: str, clock: Clock) -> Keystile:
    return Keystile(sqlite_url, now=clock)


def gate(ks: Keystile, **options: Any) -> Gate:
    return Gate(verifier=ks, **options)


def test_if_no_new_option_is_set_then_the_gate_is_fast_and_reads_like_before(sqlite_ks: Keystile) -> None:
    plain = gate(sqlite_ks)
    assert plain.fast
    assert plain.read_request(BEARER, b"api_key=x") == plain.read(BEARER) == KEY
    assert plain.strip_query(b"api_key=x") == b"api_key=x"
    assert plain.client_ip("1.2.3.4", [(b"x-forwarded-for", b"10.0.0.1")]) == "1.2.3.4"


@pytest.mark.parametrize("options", [
    {"query_param": "api_key"}, {"extractor": lambda headers: None},
    {"trusted_proxies": ["10.0.0.0/8"]}, {"credits_header": "x-credits"}, {"header": "x-api-key"},
])
def test_if_any_option_beyond_one_bearer_header_is_set_then_the_gate_is_not_fast(
    sqlite_ks: Keystile, options: dict[str, Any]
) -> None:
    assert not gate(sqlite_ks, **options).fast


def test_if_the_header_is_malformed_and_the_query_has_a_key_then_it_is_ambiguous(
    sqlite_ks: Keystile,
) -> None:
    read = gate(sqlite_ks, query_param="api_key").read_request(
        [(b"authorization", b"Basic dXNlcjpwYXNz")], f"api_key={KEY}".encode())
    assert isinstance(read, Problem)
    assert read.status == 401
    assert "both in the authorization header and in the api_key query parameter" in read.detail
    assert KEY not in read.detail


def test_if_only_the_query_has_a_key_then_it_is_read(sqlite_ks: Keystile) -> None:
    assert gate(sqlite_ks, query_param="api_key").read_request([], f"x=1&api_key={KEY}".encode()) == KEY


def test_if_neither_has_a_key_and_anonymous_is_allowed_then_none(sqlite_ks: Keystile) -> None:
    assert gate(sqlite_ks, query_param="api_key", allow_anonymous=True).read_request([], b"") is None


def test_if_the_extractor_raises_value_error_then_malformed_without_its_message(
    sqlite_ks: Keystile,
) -> None:
    def picky(headers: Mapping[str, str]) -> str | None:
        raise ValueError(f"no good: {headers['x-key']}")

    read = gate(sqlite_ks, extractor=picky).read_request([(b"x-key", KEY.encode())])
    assert isinstance(read, Problem)
    assert read.code == "MALFORMED_KEY"
    assert KEY not in read.detail


def test_if_the_extractor_returns_something_else_than_a_str_then_it_is_a_bug_that_raises(
    sqlite_ks: Keystile,
) -> None:
    broken = gate(sqlite_ks, extractor=lambda headers: KEY.encode())
    with pytest.raises(TypeError, match="returned bytes"):
        broken.read_request([])


def test_if_a_credits_header_is_set_then_response_headers_add_it_to_the_success_headers(
    sqlite_ks: Keystile,
) -> None:
    created = sqlite_ks.create_key(sqlite_ks.create_api("a", prefix="sk_a").id, credits=4)
    result = sqlite_ks.verify(created.key)
    with_credits = gate(sqlite_ks, credits_header="X-Credits-Remaining")
    assert with_credits.response_headers(result) == [(b"x-credits-remaining", b"3")]
    assert with_credits.success_headers(result) == []
    assert gate(sqlite_ks).response_headers(result) == []
