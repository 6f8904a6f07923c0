"""Failure answers: status per code, WWW-Authenticate, Retry-After, RateLimit headers, the body."""

from __future__ import annotations

import json

import pytest

from keystile import Code, RatelimitResult, VerifyResult
from keystile._extract import extract_key
from keystile._problem import (
    Problem,
    malformed_key,
    misconfigured_ratelimit,
    missing_key,
    problem_for_result,
    ratelimit_headers,
    raw_ratelimit_headers,
    store_unavailable,
)

NOW = 1_773_576_000_000
KEY = "sk_live_3yQ9mZk7Hd2fXwVtPq8RbN"
INVALID_TOKEN = 'Bearer realm="api", error="invalid_token"'


def rejected(code: Code, *ratelimits: RatelimitResult, credits_reset: int | None = None) -> VerifyResult:
    return VerifyResult(valid=False, code=code, key_id="key_1", name="alice", meta={"k": "v"},
                        enabled=True, ratelimits=ratelimits, credits_reset=credits_reset)


def rl(name: str = "requests", *, limit: int = 100, duration: int = 60_000, remaining: int = 0,
       reset: int = NOW + 30_000, exceeded: bool = True) -> RatelimitResult:
    return RatelimitResult(name, limit, duration, remaining, reset, exceeded)


def header(problem: Problem, name: str) -> str | None:
    values = [value for key, value in problem.headers if key == name]
    assert len(values) <= 1
    return values[0] if values else None


def body(problem: Problem) -> dict[str, object]:
    document = json.loads(problem.body())
    assert isinstance(document, dict)
    return document


@pytest.mark.parametrize(
    ("code", "status"),
    [(Code.NOT_FOUND, 401), (Code.EXPIRED, 401), (Code.DISABLED, 403), (Code.FORBIDDEN, 403),
     (Code.INSUFFICIENT_PERMISSIONS, 403), (Code.RATE_LIMITED, 429), (Code.USAGE_EXCEEDED, 429)],
)
def test_if_a_verification_is_rejected_then_the_status_follows_its_code(code: Code, status: int) -> None:
    result = rejected(code, rl()) if code is Code.RATE_LIMITED else rejected(code)
    problem = problem_for_result(result, NOW)
    assert problem.status == status
    assert problem.code == code.value


@pytest.mark.parametrize("code", [Code.NOT_FOUND, Code.EXPIRED])
def test_if_the_status_is_401_then_www_authenticate_says_invalid_token(code: Code) -> None:
    assert header(problem_for_result(rejected(code), NOW), "www-authenticate") == INVALID_TOKEN


@pytest.mark.parametrize("code", [Code.DISABLED, Code.FORBIDDEN, Code.INSUFFICIENT_PERMISSIONS,
                                  Code.USAGE_EXCEEDED])
def test_if_the_status_is_not_401_then_there_is_no_www_authenticate(code: Code) -> None:
    assert header(problem_for_result(rejected(code), NOW), "www-authenticate") is None


@pytest.mark.parametrize("code", [Code.NOT_FOUND, Code.EXPIRED, Code.DISABLED, Code.FORBIDDEN,
                                  Code.INSUFFICIENT_PERMISSIONS])
def test_if_the_code_is_not_a_429_then_there_is_no_retry_after(code: Code) -> None:
    assert header(problem_for_result(rejected(code), NOW), "retry-after") is None


def test_if_rate_limited_then_retry_after_is_the_latest_reset_of_the_exceeded_limits() -> None:
    result = rejected(Code.RATE_LIMITED,
                      rl("a", reset=NOW + 1_500), rl("b", reset=NOW + 4_200),
                      rl("c", reset=NOW + 59_000, exceeded=False, remaining=3))
    # The exceeded limits free up at +1.5 s and +4.2 s; both must: ceil(4.2) = 5 s.
    assert header(problem_for_result(result, NOW), "retry-after") == "5"


def test_if_the_reset_is_a_whole_number_of_seconds_away_then_retry_after_is_that_number() -> None:
    result = rejected(Code.RATE_LIMITED, rl(reset=NOW + 30_000))
    assert header(problem_for_result(result, NOW), "retry-after") == "30"


def test_if_the_reset_is_now_or_past_then_retry_after_is_at_least_one_second() -> None:
    assert header(problem_for_result(rejected(Code.RATE_LIMITED, rl(reset=NOW)), NOW),
                  "retry-after") == "1"
    assert header(problem_for_result(rejected(Code.RATE_LIMITED, rl(reset=NOW - 5000)), NOW),
                  "retry-after") == "1"


def test_if_usage_is_exceeded_with_a_refill_then_retry_after_counts_to_the_refill() -> None:
    problem = problem_for_result(rejected(Code.USAGE_EXCEEDED, credits_reset=NOW + 43_200_000), NOW)
    assert header(problem, "retry-after") == "43200"
    assert "do not refill" not in problem.detail


def test_if_usage_is_exceeded_without_a_refill_then_there_is_no_retry_after_and_the_detail_says_so() -> None:
    problem = problem_for_result(rejected(Code.USAGE_EXCEEDED), NOW)
    assert header(problem, "retry-after") is None
    assert problem.detail.endswith("They do not refill.")


def test_if_limits_were_checked_then_the_ratelimit_headers_describe_the_tightest() -> None:
    result = rejected(Code.RATE_LIMITED,
                      rl("hourly", limit=1000, duration=3_600_000, remaining=500, reset=NOW + 600_000,
                         exceeded=False),
                      rl("requests", limit=100, duration=60_000, remaining=0, reset=NOW + 30_000))
    problem = problem_for_result(result, NOW)
    assert header(problem, "ratelimit-policy") == '"requests";q=100;w=60'
    assert header(problem, "ratelimit") == '"requests";r=0;t=30'


def test_if_ratelimit_headers_are_built_then_seconds_round_up_and_windows_never_drop_to_zero() -> None:
    result = VerifyResult(valid=True, code=Code.VALID, key_id="key_1",
                          ratelimits=(rl("fast", limit=5, duration=500, remaining=4, reset=NOW + 1,
                                         exceeded=False),))
    assert ratelimit_headers(result, NOW) == [
        ("ratelimit-policy", '"fast";q=5;w=1'),
        ("ratelimit", '"fast";r=4;t=1'),
    ]


def test_if_the_reset_has_passed_then_the_ratelimit_header_says_zero_seconds() -> None:
    result = VerifyResult(valid=True, code=Code.VALID, key_id="key_1",
                          ratelimits=(rl(remaining=7, reset=NOW - 10, exceeded=False),))
    assert ratelimit_headers(result, NOW)[1] == ("ratelimit", '"requests";r=7;t=0')


def test_if_a_limit_name_has_a_quote_then_it_is_escaped_in_the_header() -> None:
    result = VerifyResult(valid=True, code=Code.VALID, key_id="key_1",
                          ratelimits=(rl('say "hi"', exceeded=False, remaining=1),))
    assert ratelimit_headers(result, NOW)[0] == ("ratelimit-policy", '"say \\"hi\\"";q=100;w=60')


def test_if_no_limit_was_checked_then_there_are_no_ratelimit_headers() -> None:
    assert ratelimit_headers(VerifyResult(valid=True, code=Code.VALID, key_id="key_1"), NOW) == []
    problem = problem_for_result(rejected(Code.FORBIDDEN), NOW)
    assert header(problem, "ratelimit") is None
    assert header(problem, "ratelimit-policy") is None


@pytest.mark.parametrize("code", [Code.NOT_FOUND, Code.EXPIRED, Code.DISABLED, Code.FORBIDDEN,
                                  Code.INSUFFICIENT_PERMISSIONS, Code.USAGE_EXCEEDED])
def test_if_a_problem_body_is_built_then_it_is_json_with_the_rfc_9457_members(code: Code) -> None:
    problem = problem_for_result(rejected(code), NOW)
    document = body(problem)
    assert set(document) == {"type", "title", "status", "detail", "code"}
    assert document["status"] == problem.status
    assert document["code"] == code.value
    assert document["detail"] == problem.detail
    assert document["type"] == "urn:keystile:problem:" + code.value.lower().replace("_", "-")
    assert document["title"] == {401: "Unauthorized", 403: "Forbidden",
                                 429: "Too Many Requests"}[problem.status]


def test_if_raw_headers_are_built_then_they_carry_the_problem_type_and_the_body_length() -> None:
    problem = problem_for_result(rejected(Code.RATE_LIMITED, rl()), NOW)
    raw = dict(problem.raw_headers())
    assert raw[b"content-type"] == b"application/problem+json"
    assert raw[b"content-length"] == str(len(problem.body())).encode()
    assert raw[b"retry-after"] == b"30"
    assert raw[b"ratelimit"] == b'"requests";r=0;t=30'


def test_if_the_header_holds_a_bad_key_then_the_problem_never_contains_the_key() -> None:
    for value in (b"Bearer " + KEY.encode() + b" extra", b"Basic " + KEY.encode(),
                  b"Bearer " + KEY.encode() + b",x"):
        extracted = extract_key([(b"authorization", value)])
        problem = malformed_key(extracted.problem or "")
        assert problem.status == 401
        assert header(problem, "www-authenticate") == INVALID_TOKEN
        assert KEY.encode() not in problem.body()
        assert all(KEY.encode() not in v for _, v in problem.raw_headers())


def test_if_a_rejection_is_answered_then_the_body_holds_nothing_from_the_key_record() -> None:
    result = VerifyResult(valid=False, code=Code.INSUFFICIENT_PERMISSIONS, key_id="key_secret_id",
                          name="alice-private", meta={"email": "alice@example.com"},
                          permissions=("docs.read",))
    raw = problem_for_result(result, NOW).body()
    for secret in (b"key_secret_id", b"alice-private", b"alice@example.com", b"docs.read"):
        assert secret not in raw


def test_if_the_key_is_missing_then_the_challenge_has_no_error_attribute() -> None:
    problem = missing_key()
    assert problem.status == 401
    assert header(problem, "www-authenticate") == 'Bearer realm="api"'
    assert body(problem)["code"] == "MISSING_KEY"


def test_if_the_store_is_unavailable_then_the_answer_is_503_with_retry_after() -> None:
    problem = store_unavailable()
    assert problem.status == 503
    assert header(problem, "retry-after") == "1"
    assert body(problem)["title"] == "Service Unavailable"


def test_if_a_route_names_a_limit_the_key_lacks_then_the_answer_is_403() -> None:
    problem = misconfigured_ratelimit("uploads")
    assert problem.status == 403
    assert "'uploads'" in problem.detail
    assert body(problem)["code"] == "RATELIMIT_NOT_CONFIGURED"


@pytest.mark.parametrize(("ahead", "seconds"), [(1, 1), (999, 1), (1000, 1), (1001, 2), (0, 0), (-1, 0)])
def test_if_the_reset_is_ahead_then_its_seconds_are_rounded_up_exactly(ahead: int, seconds: int) -> None:
    result = VerifyResult(valid=True, code=Code.VALID, key_id="key_1",
                          ratelimits=(rl(remaining=7, reset=NOW + ahead, exceeded=False),))
    assert raw_ratelimit_headers(result, NOW)[1] == (b"ratelimit", b'"requests";r=7;t=%d' % seconds)


def test_if_a_limit_name_is_not_ascii_then_the_header_escapes_it() -> None:
    result = VerifyResult(valid=True, code=Code.VALID, key_id="key_1",
                          ratelimits=(rl("débit", exceeded=False, remaining=1),))
    assert raw_ratelimit_headers(result, NOW)[0] == (b"ratelimit-policy", b'"d\\u00e9bit";q=100;w=60')
