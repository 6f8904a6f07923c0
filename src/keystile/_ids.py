"""Random identifiers and clocks."""

from __future__ import annotations

import secrets
import time

import base58

__all__ = ["new_id", "now_ms"]


def new_id(prefix: str, nbytes: int = 12) -> str:
    """Return ``prefix_`` + base58 of ``nbytes`` random bytes, e.g. ``key_3x9F…``."""
    return f"{prefix}_{base58.b58encode(secrets.token_bytes(nbytes)).decode('ascii')}"


def now_ms() -> int:
    """The wall clock in Unix milliseconds: the default ``now`` everywhere."""
    return time.time_ns() // 1_000_000
