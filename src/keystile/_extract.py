"""Reading the request: the key (headers, query string) and the client address, as pure
functions, strict about bad input."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

__all__ = [
    "MAX_HEADER_BYTES", "Extracted", "bare_key", "bearer_token", "client_ip", "extract_key",
    "header_map", "plain_bearer", "plain_key", "query_key",
]

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


def bearer_token(headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    """The raw token of the one ``Authorization: Bearer <token>`` header, else ``None``.

    Unchecked bytes: the hot path hashes them to find a remembered answer, which
    only a key that passed every check can have; anything else goes through
    :func:`plain_key`.
    """
    found = None
    for name, value in headers:
        if name == b"authorization":
            if found is not None:
                return None
            found = value
    if found is None or found[:7] != b"Bearer " or len(found) > MAX_HEADER_BYTES:
        return None
    return found[7:]


def plain_key(token: bytes) -> str | None:
    """``token`` as a key if it has the usual shape (letters, digits and ``_``, not
    starting with a digit), else ``None``: checked in one C call (bytes ``in`` tests
    cost far more than str ones)."""
    try:
        key = token.decode("ascii")
    except UnicodeDecodeError:
        return None
    return key if key.isidentifier() else None


def plain_bearer(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The key of the one well-formed ``Authorization: Bearer <key>`` header, else ``None``.

    The fast path for the common case. Anything else (no header, two headers,
    another scheme, any character but letters, digits and ``_`` in the key) gets
    ``None`` and goes to :func:`extract_key` for a precise answer.
    """
    token = bearer_token(headers)
    return plain_key(token) if token is not None else None


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
    if scheme is None:
        return bare_key(value, f"the {header.decode()} header")
    return _split_scheme(value, scheme.lower())


def _split_scheme(value: str, scheme: str) -> Extracted:
    parts = value.split()
    if parts[0].lower() != scheme:
        return Extracted(None, f"expected 'Authorization: {scheme.title()} <key>'")
    if len(parts) != 2 or "," in value:
        return Extracted(None, f"expected exactly one key after '{scheme.title()}'")
    return Extracted(parts[1])


# -- a key given as a whole value: a query parameter, an extractor's answer ------------


def bare_key(value: str, where: str) -> Extracted:
    """Check a whole value as one key; ``where`` names its source in the messages."""
    if len(value) > MAX_HEADER_BYTES:
        return Extracted(None, f"{where} is longer than {MAX_HEADER_BYTES} bytes")
    if not value.isascii():
        return Extracted(None, f"{where} has non-ASCII characters")
    value = value.strip(" \t")
    if not value:
        return _MISSING
    if len(value.split()) != 1 or "," in value:
        return Extracted(None, f"expected exactly one key in {where}")
    return Extracted(value)


def query_key(query_string: bytes, param: str) -> tuple[Extracted, bytes]:
    """The key in the query parameter ``param``, and the query string without it.

    The second value is what the app and the server's access log should see, so
    the key is never written down. A repeated parameter is rejected.
    """
    name = param.encode("ascii")
    found: list[bytes] = []
    kept: list[bytes] = []
    for part in query_string.split(b"&"):
        (found if _unquote(part.partition(b"=")[0]) == name else kept).append(part)
    if not found:
        return _MISSING, query_string
    rest = b"&".join(kept)
    where = f"the {param} query parameter"
    if len(found) > 1:
        return Extracted(None, f"several {param} query parameters; send exactly one"), rest
    value = _unquote(found[0].partition(b"=")[2])
    if not value.isascii():
        return Extracted(None, f"{where} has non-ASCII characters"), rest
    return bare_key(value.decode("ascii"), where), rest


def _unquote(raw: bytes) -> bytes:
    return unquote_to_bytes(raw.replace(b"+", b" ")) if b"%" in raw or b"+" in raw else raw


def header_map(headers: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """Raw headers as ``{lower-case name: value}``; repeated headers joined with ``", "``."""
    joined: dict[str, str] = {}
    for raw_name, raw_value in headers:
        name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
        joined[name] = f"{joined[name]}, {value}" if name in joined else value
    return joined


# -- the client address behind trusted proxies -------------------------------------------

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def client_ip(
    peer: str | None, headers: Iterable[tuple[bytes, bytes]], *,
    trusted: tuple[Network, ...], header: bytes = b"x-forwarded-for",
) -> str | None:
    """The client's address: the peer's own, unless the peer is a trusted proxy.

    Behind a trusted proxy, the forwarding chain in ``header`` (``x-forwarded-for``
    or RFC 7239 ``forwarded``) is walked from the right, and the first address that
    is not a trusted proxy is the client: everything left of it was written by the
    client and could be forged. An entry a trusted proxy wrote but that is no
    address (``unknown``, an obfuscated name, garbage) makes the client unknown:
    ``None``, which no IP whitelist admits.
    """
    if not _is_trusted(_address(peer), trusted):
        return peer
    nodes = _forwarded_nodes(headers, header)
    for node in reversed(nodes):
        address = _address(node)
        if address is None:
            return None
        if not _is_trusted(address, trusted):
            return str(address)
    leftmost = _address(nodes[0]) if nodes else None
    return peer if leftmost is None else str(leftmost)  # every hop is a trusted proxy


def _forwarded_nodes(headers: Iterable[tuple[bytes, bytes]], header: bytes) -> list[str | None]:
    # Repeated header fields form one list, in order (RFC 9110, 5.3).
    joined = b",".join(value for name, value in headers if name == header).decode("latin-1")
    elements = [element for element in joined.split(",") if element.strip(" \t")]
    if header != b"forwarded":
        return list(elements)
    return [_for_parameter(element) for element in elements]


def _for_parameter(element: str) -> str | None:
    for pair in element.split(";"):
        name, _, value = pair.partition("=")
        if name.strip(" \t").lower() == "for":
            return value
    return None


def _address(node: str | None) -> Address | None:
    """An address from ``1.2.3.4``, ``1.2.3.4:80``, ``[2001:db8::1]:80``, quoted or not."""
    if node is None:
        return None
    node = node.strip(" \t").strip('"')
    if node.startswith("["):
        node = node[1:node.find("]")] if "]" in node else ""
    elif node.count(":") == 1:
        node = node.partition(":")[0]
    try:
        address = ipaddress.ip_address(node)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _is_trusted(address: Address | None, trusted: tuple[Network, ...]) -> bool:
    return address is not None and any(address in network for network in trusted)
