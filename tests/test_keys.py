"""The key format: generation, hashing, the shape check before any lookup, the start."""

from __future__ import annotations

import base64
import hashlib
import math
import string

import base58
import pytest

from keystile import generate_key, hash_key
from keystile._keys import MAX_BYTES, MAX_KEY_LENGTH, MIN_BYTES, key_start, split_key

BITCOIN_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
# A valid random part of 22 base58 characters (what 16 random bytes usually give).
RANDOM_22 = "3yQ9mZk7Hd2fXwVtPq8RbN"


def b58_length_bounds(nbytes: int) -> tuple[int, int]:
    """n bytes: at least n characters (all-zero bytes are all '1'), at most ceil(8n / log2 58)."""
    return nbytes, math.ceil(nbytes * 8 / math.log2(58))


# -- generate_key ----------------------------------------------------------------------


@pytest.mark.parametrize("nbytes", range(MIN_BYTES, MAX_BYTES + 1))
def test_if_key_is_generated_then_it_is_prefix_underscore_base58_of_nbytes(nbytes: int) -> None:
    low, high = b58_length_bounds(nbytes)
    for _ in range(20):
        key = generate_key("sk_live", nbytes)
        assert key.startswith("sk_live_")
        random_part = key.removeprefix("sk_live_")
        assert set(random_part) <= set(BITCOIN_ALPHABET)
        assert low <= len(random_part) <= high
        assert len(base58.b58decode(random_part)) == nbytes


@pytest.mark.parametrize("nbytes", range(MIN_BYTES, MAX_BYTES + 1))
def test_if_key_is_generated_then_its_shape_check_returns_its_prefix(nbytes: int) -> None:
    for _ in range(20):
        assert split_key(generate_key("sk_live", nbytes)) == "sk_live"


def test_if_the_byte_bounds_are_read_then_they_are_16_and_32() -> None:
    assert (MIN_BYTES, MAX_BYTES) == (16, 32)


def test_if_the_largest_key_is_measured_then_it_fits_max_key_length() -> None:
    # An 8-character prefix, "_", and 32 bytes of 0xff: the longest base58 part there is.
    longest = "sk_live1_" + base58.b58encode(b"\xff" * MAX_BYTES).decode()
    assert len(longest) == MAX_KEY_LENGTH == 53
    assert split_key(longest) == "sk_live1"


def test_if_many_keys_are_generated_then_no_two_are_equal() -> None:
    keys = {generate_key("sk", 16) for _ in range(1000)}
    assert len(keys) == 1000


def test_if_the_bitcoin_alphabet_is_checked_then_it_lacks_0_o_i_and_l() -> None:
    assert len(BITCOIN_ALPHABET) == 58
    assert not set("0OIl") & set(BITCOIN_ALPHABET)
    assert set(BITCOIN_ALPHABET) | set("0OIl") == set(string.ascii_letters + string.digits)


# -- hash_key --------------------------------------------------------------------------


def test_if_a_key_is_hashed_then_the_hash_is_padded_standard_base64_of_sha256() -> None:
    # sha256(b"sk_live_3yQ9mZk7Hd2fXwVtPq8RbN"), computed once with hashlib and written here.
    digest_hex = "690b04d67a17ce8fea923a3bf93f886527d6a7e93fa69c4b7029f23073f3d145"
    assert hash_key("sk_live_" + RANDOM_22) == "aQsE1noXzo/qkjo7+T+IZSfWp+k/ppxLcCnyMHPz0UU="
    assert hash_key("sk_live_" + RANDOM_22) == base64.b64encode(bytes.fromhex(digest_hex)).decode()


def test_if_the_empty_string_is_hashed_then_the_well_known_sha256_comes_out() -> None:
    assert hash_key("") == "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="


def test_if_generated_keys_are_hashed_then_each_is_44_characters_ending_in_padding() -> None:
    for nbytes in (16, 24, 32):
        key = generate_key("sk", nbytes)
        key_hash = hash_key(key)
        assert key_hash == base64.b64encode(hashlib.sha256(key.encode()).digest()).decode()
        assert len(key_hash) == 44
        assert key_hash.endswith("=")
        assert set(key_hash) <= set(string.ascii_letters + string.digits + "+/=")


def test_if_a_non_ascii_key_is_hashed_then_its_utf8_bytes_are_hashed() -> None:
    expected = base64.b64encode(hashlib.sha256("sk_é".encode()).digest()).decode()
    assert hash_key("sk_é") == expected


def test_if_two_keys_differ_in_one_character_then_their_hashes_differ() -> None:
    assert hash_key("sk_" + RANDOM_22) != hash_key("sk_" + RANDOM_22[:-1] + "M")


# -- split_key: plausible shapes -------------------------------------------------------


def test_if_the_prefix_has_underscores_then_everything_before_the_last_one_is_the_prefix() -> None:
    assert split_key("sk_live_" + RANDOM_22) == "sk_live"
    assert split_key("a_b_c_" + RANDOM_22) == "a_b_c"


def test_if_the_random_part_has_16_characters_then_the_shape_is_plausible() -> None:
    assert split_key("sk_" + "1" * 16) == "sk"


def test_if_the_random_part_has_44_characters_then_the_shape_is_plausible() -> None:
    assert split_key("sk_" + "z" * 44) == "sk"


# -- split_key: unknown shapes ---------------------------------------------------------


def test_if_the_key_has_no_underscore_then_its_shape_is_unknown() -> None:
    assert split_key("sk" + RANDOM_22) is None


def test_if_the_prefix_is_empty_then_the_shape_is_unknown() -> None:
    assert split_key("_" + RANDOM_22) is None


def test_if_the_random_part_is_empty_then_the_shape_is_unknown() -> None:
    assert split_key("sk_live_") is None


def test_if_the_key_is_empty_then_the_shape_is_unknown() -> None:
    assert split_key("") is None


@pytest.mark.parametrize("bad", ["0", "O", "I", "l", "+", "/", "=", "-", " ", "é"])
def test_if_the_random_part_has_a_non_base58_character_then_the_shape_is_unknown(bad: str) -> None:
    assert split_key("sk_" + RANDOM_22[:10] + bad + RANDOM_22[11:]) is None


def test_if_the_random_part_is_shorter_than_16_then_the_shape_is_unknown() -> None:
    assert split_key("sk_" + "1" * 15) is None


def test_if_the_random_part_is_longer_than_44_then_the_shape_is_unknown() -> None:
    assert split_key("sk_" + "z" * 45) is None


def test_if_the_key_is_longer_than_max_key_length_then_the_shape_is_unknown() -> None:
    # Every part is plausible on its own; only the total length is one too many.
    key = "sk_live12_" + "z" * 44
    assert len(key) == MAX_KEY_LENGTH + 1
    assert split_key(key) is None


def test_if_the_key_has_a_trailing_newline_then_the_shape_is_unknown() -> None:
    assert split_key("sk_" + RANDOM_22 + "\n") is None


# -- key_start ---------------------------------------------------------------------------


def test_if_the_start_is_taken_then_it_is_the_prefix_and_four_characters() -> None:
    assert key_start("sk_live_" + RANDOM_22) == "sk_live_3yQ9"
    assert key_start("sk_" + RANDOM_22) == "sk_3yQ9"


def test_if_the_start_of_a_generated_key_is_taken_then_the_rest_of_the_secret_is_not_in_it() -> None:
    key = generate_key("sk_live", 16)
    start = key_start(key)
    assert key.startswith(start)
    assert len(start) == len("sk_live_") + 4
