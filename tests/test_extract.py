"""Reading the key from raw ASGI headers: Bearer by default, a bare custom header on request."""

from __future__ import annotations

import ipaddress

import pytest

from keystile._extract import (
    MAX_HEADER_BYTES,
    Extracted,
    bare_key,
    client_ip,
    extract_key,
    header_map,
    query_key,
)

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


# -- a key in the query string ----------------------------------------------------------------


def test_if_the_query_has_the_parameter_then_the_key_is_read_and_removed() -> None:
    extracted, rest = query_key(b"page=2&api_key=" + KEY.encode() + b"&sort=name", "api_key")
    assert extracted == Extracted(KEY)
    assert rest == b"page=2&sort=name"


def test_if_the_parameter_name_is_percent_encoded_then_it_is_still_found_and_removed() -> None:
    extracted, rest = query_key(b"api%5Fkey=" + KEY.encode(), "api_key")
    assert extracted.key == KEY
    assert rest == b""


@pytest.mark.parametrize("query", [b"", b"page=2", b"api_key_other=x", b"xapi_key=x"])
def test_if_the_query_lacks_the_parameter_then_the_key_is_missing_and_the_query_kept(
    query: bytes,
) -> None:
    extracted, rest = query_key(query, "api_key")
    assert extracted.missing
    assert rest == query


@pytest.mark.parametrize("query", [b"api_key=", b"api_key", b"api_key=+"])
def test_if_the_parameter_is_empty_then_the_key_is_missing_but_still_removed(query: bytes) -> None:
    extracted, rest = query_key(query, "api_key")
    assert extracted.missing
    assert rest == b""


def test_if_the_parameter_is_repeated_then_it_is_rejected_and_every_copy_removed() -> None:
    extracted, rest = query_key(b"api_key=" + KEY.encode() + b"&a=1&api_key=x", "api_key")
    assert_rejected(extracted)
    assert "several" in (extracted.problem or "")
    assert rest == b"a=1"


@pytest.mark.parametrize("value", [b"a%20b", b"a+b", b"%C3%A9", b"\xff", b"a,b",
                                   b"k" * (MAX_HEADER_BYTES + 1)])
def test_if_the_parameter_is_not_one_ascii_key_then_it_is_rejected(value: bytes) -> None:
    assert_rejected(query_key(b"api_key=" + value, "api_key")[0])


@pytest.mark.parametrize(("value", "expected"), [
    (KEY, Extracted(KEY)), ("  " + KEY, Extracted(KEY)), ("", Extracted(None, "missing")),
])
def test_if_a_whole_value_is_one_key_then_bare_key_returns_it(value: str, expected: Extracted) -> None:
    assert bare_key(value, "the value") == expected


def test_if_headers_repeat_then_the_header_map_joins_them_with_commas() -> None:
    assert header_map([(b"X-A", b"1"), (b"x-a", b"2"), (b"b", b"\xe9")]) == {"x-a": "1, 2", "b": "é"}


# -- the client address behind trusted proxies ----------------------------------------------

TRUSTED = (ipaddress.ip_network("172.16.0.0/12"), ipaddress.ip_network("2001:db8::/32"))


def xff(value: bytes) -> list[tuple[bytes, bytes]]:
    return [(b"x-forwarded-for", value)]


def test_if_the_peer_is_not_a_trusted_proxy_then_its_own_address_is_the_client() -> None:
    assert client_ip("192.168.0.9", xff(b"10.1.2.3"), trusted=TRUSTED) == "192.168.0.9"
    assert client_ip(None, xff(b"10.1.2.3"), trusted=TRUSTED) is None
    assert client_ip("/run/app.sock", xff(b"10.1.2.3"), trusted=TRUSTED) == "/run/app.sock"


@pytest.mark.parametrize(("chain", "client"), [
    (b"10.1.2.3", "10.1.2.3"),
    (b"10.1.2.3, 192.168.0.9", "192.168.0.9"),        # the client forged the left part
    (b"192.168.0.9, 10.1.2.3, 172.16.0.8", "10.1.2.3"),  # two trusted proxies
    (b"172.16.0.7, 172.16.0.8", "172.16.0.7"),          # every hop trusted: the left-most
    (b"10.1.2.3:5555", "10.1.2.3"),
    (b"[2001:db9::1]:443", "2001:db9::1"),
    (b"::ffff:10.1.2.3", "10.1.2.3"),
    (b"garbage, 10.1.2.3", "10.1.2.3"),                 # garbage left of the client is not read
    (b"10.1.2.3, unknown", None),                       # a trusted proxy did not know the client
    (b"", "172.16.0.1"),
])
def test_if_a_trusted_proxy_forwards_then_the_rightmost_untrusted_address_is_the_client(
    chain: bytes, client: str | None
) -> None:
    assert client_ip("172.16.0.1", xff(chain), trusted=TRUSTED) == client


def test_if_there_is_no_forwarding_header_then_the_trusted_proxy_itself_is_the_client() -> None:
    assert client_ip("172.16.0.1", [], trusted=TRUSTED) == "172.16.0.1"


def test_if_the_header_is_repeated_then_its_fields_form_one_chain_in_order() -> None:
    headers = [(b"x-forwarded-for", b"10.1.2.3"), (b"x-forwarded-for", b"192.168.0.9")]
    assert client_ip("172.16.0.1", headers, trusted=TRUSTED) == "192.168.0.9"


@pytest.mark.parametrize(("value", "client"), [
    (b'for=10.1.2.3;proto=https', "10.1.2.3"),
    (b'For="[2001:db9::1]:4711"', "2001:db9::1"),
    (b'for=10.1.2.3, for=192.168.0.9;by=172.16.0.1', "192.168.0.9"),
    (b'for=192.168.0.9, proto=http', None),              # a proxy's element without for=
    (b'for="_hidden"', None),
])
def test_if_the_forwarded_header_is_configured_then_its_for_parameters_are_the_chain(
    value: bytes, client: str | None
) -> None:
    headers = [(b"forwarded", value), (b"x-forwarded-for", b"10.9.9.9")]
    assert client_ip("172.16.0.1", headers, trusted=TRUSTED, header=b"forwarded") == client
