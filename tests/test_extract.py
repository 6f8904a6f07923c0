"""Reading the key from raw ASGI headers: Bearer by default, a bare custom header on request."""

from __future__ import annotations

import pytest

from keystile._extract import MAX_HEADER_BYTES, Extracted, extract_key

KEY = "sk_live_3yQ9mZk7Hd2fXwVtPq8RbN"
Headers = list[tuple[bytes, bytes]]


def bearer(value: bytes, *others: tuple[bytes, bytes]) -> Extracted:
    return extract_key([(b"host", b"example.com"), (b"authorization", value), *others])


def assert_rejected(extracted: Extracted) -> None:
    assert extracted.key is None
    assert not extracted.missing
    assert extracted.problem
    assert KEY not in extracted.problem


def test_if_the_header_reads_bearer_and_a_key_then_the_key_is_extracted() -> None:
    extracted = bearer(b"Bearer " + KEY.encode())
    assert extracted == Extracted(KEY)
    assert not extracted.missing


@pytest.mark.parametrize("scheme", [b"bearer", b"BEARER", b"bEaReR"])
def test_if_the_scheme_is_written_in_any_case_then_the_key_is_extracted(scheme: bytes) -> None:
    assert bearer(scheme + b" " + KEY.encode()).key == KEY


def test_if_spaces_and_tabs_surround_the_value_then_the_key_is_extracted() -> None:
    assert bearer(b" \tBearer \t " + KEY.encode() + b" \t").key == KEY


def test_if_there_is_no_authorization_header_then_the_key_is_missing() -> None:
    extracted = extract_key([(b"host", b"example.com"), (b"x-api-key", KEY.encode())])
    assert extracted.key is None
    assert extracted.missing
    assert extracted.problem == "missing"


def test_if_there_are_no_headers_then_the_key_is_missing() -> None:
    assert extract_key([]).missing


@pytest.mark.parametrize("value", [b"", b"   ", b"\t"])
def test_if_the_authorization_header_is_empty_then_it_is_rejected_not_missing(value: bytes) -> None:
    extracted = bearer(value)
    assert_rejected(extracted)
    assert "empty" in (extracted.problem or "")


def test_if_the_header_is_only_the_scheme_then_it_is_rejected() -> None:
    assert_rejected(bearer(b"Bearer"))
    assert_rejected(bearer(b"Bearer   "))


@pytest.mark.parametrize("scheme", [b"Basic", b"Token", b"Bearer:", b"Bearerx", b"ApiKey"])
def test_if_the_scheme_is_not_bearer_then_it_is_rejected(scheme: bytes) -> None:
    extracted = bearer(scheme + b" " + KEY.encode())
    assert_rejected(extracted)
    assert "Bearer <key>" in (extracted.problem or "")


def test_if_the_value_is_a_bare_key_without_scheme_then_it_is_rejected() -> None:
    assert_rejected(bearer(KEY.encode()))


def test_if_two_tokens_follow_the_scheme_then_it_is_rejected() -> None:
    extracted = bearer(b"Bearer " + KEY.encode() + b" " + KEY.encode())
    assert_rejected(extracted)
    assert "exactly one key" in (extracted.problem or "")


@pytest.mark.parametrize("value", [b"Bearer " + KEY.encode() + b", Basic dXNlcjpwYXNz",
                                   b"Bearer " + KEY.encode() + b",",
                                   b"Bearer " + KEY.encode() + b"," + KEY.encode()])
def test_if_several_credentials_are_comma_separated_then_it_is_rejected(value: bytes) -> None:
    assert_rejected(bearer(value))


def test_if_the_authorization_header_is_duplicated_then_it_is_rejected() -> None:
    extracted = bearer(b"Bearer " + KEY.encode(), (b"authorization", b"Bearer " + KEY.encode()))
    assert_rejected(extracted)
    assert "several" in (extracted.problem or "")


@pytest.mark.parametrize("value", ["Bearer sk_live_ключ".encode(), b"Bearer sk_live_\xff\xfe",
                                   b"Bearer\xa0" + KEY.encode()])
def test_if_the_value_has_non_ascii_bytes_then_it_is_rejected(value: bytes) -> None:
    extracted = bearer(value)
    assert_rejected(extracted)
    assert "non-ASCII" in (extracted.problem or "")


def test_if_the_value_is_64_kib_then_it_is_rejected_without_echoing_it() -> None:
    value = b"Bearer " + b"A" * (64 * 1024)
    extracted = bearer(value)
    assert_rejected(extracted)
    assert "A" * 64 not in (extracted.problem or "")
    assert len(extracted.problem or "") < 200


def test_if_the_value_is_exactly_the_maximum_size_then_it_is_read() -> None:
    token = "k" * (MAX_HEADER_BYTES - len("Bearer "))
    assert bearer(b"Bearer " + token.encode()).key == token


def test_if_the_value_is_one_byte_over_the_maximum_then_it_is_rejected() -> None:
    assert_rejected(bearer(b"Bearer " + b"k" * (MAX_HEADER_BYTES - len("Bearer ") + 1)))


# -- a custom header without a scheme ------------------------------------------------------


def custom(*values: bytes) -> Extracted:
    headers: Headers = [(b"authorization", b"Basic dXNlcjpwYXNz")]
    headers += [(b"x-api-key", value) for value in values]
    return extract_key(headers, header=b"x-api-key", scheme=None)


def test_if_a_custom_header_is_configured_then_its_whole_value_is_the_key() -> None:
    assert custom(KEY.encode()) == Extracted(KEY)


def test_if_a_custom_header_value_has_surrounding_spaces_then_they_are_dropped() -> None:
    assert custom(b"  " + KEY.encode() + b"\t").key == KEY


def test_if_a_custom_header_is_absent_then_the_key_is_missing_even_with_authorization() -> None:
    assert custom().missing


def test_if_a_custom_header_is_empty_then_the_key_is_missing() -> None:
    assert custom(b"").missing
    assert custom(b"  ").missing


def test_if_a_custom_header_holds_bearer_and_a_key_then_it_is_rejected() -> None:
    assert_rejected(custom(b"Bearer " + KEY.encode()))


def test_if_a_custom_header_holds_comma_separated_keys_then_it_is_rejected() -> None:
    assert_rejected(custom(KEY.encode() + b"," + KEY.encode()))


def test_if_a_custom_header_is_duplicated_then_it_is_rejected() -> None:
    extracted = custom(KEY.encode(), KEY.encode())
    assert_rejected(extracted)
    assert "x-api-key" in (extracted.problem or "")


def test_if_a_custom_header_has_non_ascii_bytes_then_it_is_rejected() -> None:
    assert_rejected(custom(b"sk_live_\xc3\xa9"))
