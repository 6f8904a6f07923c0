"""The key format: generation, hashing and the shape check done before any lookup.

A key is ``prefix + "_" + base58(random bytes)``. Only ``base64(sha256(key))`` is
stored (standard alphabet, padded), the encoding Unkey uses, so hashes can move
between the two. Keys carry 16 to 32 random bytes, so a fast hash is the right
tool: the lookup is by hash and there is no secret to stretch.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets

import base58

__all__ = [
    "MAX_BYTES",
    "MAX_KEY_LENGTH",
    "MIN_BYTES",
    "PREFIX_PATTERN",
    "ROOT_PREFIX",
    "generate_key",
    "hash_key",
    "key_start",
    "split_key",
]

MIN_BYTES = 16
MAX_BYTES = 32
MAX_PREFIX_LENGTH = 8
PREFIX_PATTERN = re.compile(r"[A-Za-z0-9_]{1,8}")
# n random bytes encode to between n characters (leading zero bytes become "1")
# and ceil(n * log(256) / log(58)) characters: 16 bytes -> 16..22, 32 bytes -> 32..44.
_MIN_B58 = MIN_BYTES
_MAX_B58 = 44
_RANDOM_PART = re.compile(
    rf"[1-9A-HJ-NP-Za-km-z]{{{_MIN_B58},{_MAX_B58}}}"
)
MAX_KEY_LENGTH = MAX_PREFIX_LENGTH + 1 + _MAX_B58

#: The prefix of ``keystile serve``'s root keys: its ``-`` is in no user prefix, and
#: a verifier accepts such keys only for a request naming their API.
ROOT_PREFIX = "ks-root"


def generate_key(prefix: str, nbytes: int) -> str:
    """A new key: ``prefix_`` + base58 (Bitcoin alphabet) of ``nbytes`` random bytes."""
    random_part = base58.b58encode(secrets.token_bytes(nbytes)).decode("ascii")
    return f"{prefix}_{random_part}"


def hash_key(key: str) -> str:
    """``base64(sha256(key))``, standard alphabet with padding (44 characters)."""
    return base64.b64encode(hashlib.sha256(key.encode("utf-8")).digest()).decode("ascii")


def split_key(key: str) -> str | None:
    """The key's prefix if the key has a plausible shape, else ``None``.

    The prefix is everything before the last ``_``; the rest must be base58 of a
    length that 16 to 32 random bytes can produce.
    """
    if len(key) > MAX_KEY_LENGTH:
        return None
    prefix, sep, random_part = key.rpartition("_")
    if not sep or not prefix or _RANDOM_PART.fullmatch(random_part) is None:
        return None
    return prefix


def key_start(key: str) -> str:
    """The displayable start of a key: the prefix, ``_`` and 4 characters (as Unkey does)."""
    prefix, _, random_part = key.rpartition("_")
    return f"{prefix}_{random_part[:4]}"
