"""Reading the key from request headers: a pure function, strict about bad input."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["MAX_HEADER_BYTES", "Extracted", "extract_key", "plain_bearer"]

MAX_HEADER_BYTES = 4096


@dataclass(frozen=True, slots=True)
class Extracted:
    """The key, or why there is none: ``problem`` is ``"missing"`` or a message."""

    key: str | None
    problem: str | None = None

    @property
    def missing(self) -> bool:
        return self.problem == "missing"


_MISSING = Extracted(None, "missing")


def plain_bearer(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The key of the one well-formed ``Authorization: Bearer <key>`` header, else ``None``.

    The fast path for the common case. Anything else (no header, two headers,
    another scheme, any character but letters, digits and ``_`` in the key) gets
    ``None`` and goes to :func:`extract_key` for a precise answer.
    """
    found = None
    for name, value in headers:
        if name == b"authorization":
            if found is not None:
                return None
            found = value
    if found is None or found[:7] != b"Bearer " or len(found) > MAX_HEADER_BYTES:
        return None
    try:
        token = found[7:].decode("ascii")
    except UnicodeDecodeError:
        return None
    # Letters, digits and "_", not starting with a digit: every key of the usual
    # shape, checked in one C call (bytes "in" tests cost far more than str ones).
    return token if token.isidentifier() else None


def extract_key(
    headers: Iterable[tuple[bytes, bytes]], *, header: bytes = b"authorization",
    scheme: str | None = "bearer",
) -> Extracted:
    """Find the key in raw ASGI ``headers`` (lower-case names).

    With a ``scheme`` the header must read ``<scheme> <key>``; without, the whole
    value is the key. Repeated headers, non-ASCII bytes, oversized values, several
    schemes or extra words are rejected with a message that never contains the key.
    """
    values = [value for name, value in headers if name == header]
    if not values:
        return _MISSING
    if len(values) > 1:
        return Extracted(None, f"several {header.decode()} headers; send exactly one")
    raw = values[0]
    if len(raw) > MAX_HEADER_BYTES:
        return Extracted(None, f"the {header.decode()} header is longer than {MAX_HEADER_BYTES} bytes")
    if not raw.isascii():
        return Extracted(None, f"the {header.decode()} header has non-ASCII characters")
    value = raw.decode("ascii").strip(" \t")
    if not value:
        return _MISSING if scheme is None else Extracted(None, f"the {header.decode()} header is empty")
    return _split_scheme(value, scheme.lower()) if scheme else _bare(value)


def _split_scheme(value: str, scheme: str) -> Extracted:
    parts = value.split()
    if parts[0].lower() != scheme:
        return Extracted(None, f"expected 'Authorization: {scheme.title()} <key>'")
    if len(parts) != 2 or "," in value:
        return Extracted(None, f"expected exactly one key after '{scheme.title()}'")
    return Extracted(parts[1])


def _bare(value: str) -> Extracted:
    if len(value.split()) != 1 or "," in value:
        return Extracted(None, "expected exactly one key in the header")
    return Extracted(value)
