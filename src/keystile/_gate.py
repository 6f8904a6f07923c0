"""What every way in (ASGI middleware, WSGI middleware) shares, without I/O.

A :class:`Gate` holds the options, reads the key from the request (headers, an
extractor, the query string when enabled), finds the client address (behind trusted
proxies too) and turns every outcome into either the verified result or a
:class:`Problem` to answer with. The middlewares add only their protocol: ASGI
messages or a WSGI call.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from . import _problem
from ._errors import ConfigurationError, KeystileError, StoreError, UnknownRatelimitError
from ._extract import (
    Extracted,
    Network,
    bare_key,
    client_ip,
    extract_key,
    header_map,
    query_key,
)
from ._logs import failure_fields, key_fields
from ._manage import Keystile
from ._models import VerifyRequest, VerifyResult, lasting
from ._problem import Problem
from ._remote import RemoteVerifier, is_remote_url
from ._verify import Verifier
from .stores import Store

__all__ = ["VERIFIER_SCOPE_KEY", "Extractor", "Gate"]

#: ``extractor=``: reads the key from the request headers (lower-case names, repeated
#: headers joined with ``", "``); ``None`` when there is none, ``ValueError`` to reject.
Extractor = Callable[[Mapping[str, str]], str | None]

logger = logging.getLogger("keystile")

#: Where the ASGI middleware leaves its verifier for the routes behind it.
VERIFIER_SCOPE_KEY = "keystile.verifier"


class Gate:
    """The options of a middleware and its decisions about one request."""

    def __init__(
        self,
        *,
        store: Store | str | None = None,
        verifier: Verifier | RemoteVerifier | Keystile | None = None,
        header: str = "authorization",
        exclude_paths: Iterable[str] = (),
        allow_anonymous: bool = False,
        permissions: str | None = None,
        cost: int | None = None,
        ratelimits: Sequence[str | Mapping[str, Any]] = (),
        api_id: str | None = None,
        ratelimit_headers: bool = True,
        query_param: str | None = None,
        extractor: Extractor | None = None,
        trusted_proxies: Iterable[str | Network] | None = None,
        forwarded_header: str | None = None,
        credits_header: str | None = None,
        fail_policy: str = "closed",
        stale_max_age: float = 300.0,
        **verifier_options: Any,
    ) -> None:
        self.verifier = _verifier(store, verifier, verifier_options)
        self.header = header.lower().encode("latin-1")
        self.scheme = "bearer" if self.header == b"authorization" else None
        # Whole path segments: "/docs" excludes "/docs" and "/docs/…", not "/docs-api".
        paths = [exclude_paths] if isinstance(exclude_paths, str) else list(exclude_paths)
        self.excluded_exact = frozenset(p.rstrip("/") or "/" for p in paths)
        self.exclude_paths = tuple(p if p.endswith("/") else p + "/" for p in paths)
        self.allow_anonymous = allow_anonymous
        # VerifyRequest checks the query, the cost and the limits: a bad one fails
        # here, at startup, not on a request.
        self.request = lasting(VerifyRequest(permissions=permissions, cost=cost,
                                             ratelimits=tuple(ratelimits), api_id=api_id))
        if api_id is not None and isinstance(self.verifier, RemoteVerifier):
            raise ConfigurationError(
                "api_id is not checked by the remote backend: give it a root key limited to "
                "api.<apiId>.verify_key instead")
        self.ratelimit_headers = ratelimit_headers
        self.query_param = _query_param(query_param)
        self.extractor = _extractor(extractor, self.header)
        self.trusted_proxies = _trusted_proxies(trusted_proxies)
        self.forwarded_header = _forwarded_header(forwarded_header, self.trusted_proxies)
        self.credits_header = _credits_header(credits_header)
        #: ms a cached record may serve past its lifetime while the store cannot
        #: answer (the ``open_cached`` fail policy); ``None``: fail closed with 503.
        self.stale_ms = check_fail_policy(fail_policy, stale_max_age)
        #: Nothing but one ``Authorization: Bearer`` header to read and the rate-limit
        #: headers to send: the ASGI middleware's inlined hot path may serve it.
        self.fast = self.scheme is not None and not (
            self.query_param or self.extractor or self.trusted_proxies or self.credits_header)

    def excluded(self, path: str) -> bool:
        return bool(self.exclude_paths) and (
            path in self.excluded_exact or path.startswith(self.exclude_paths))

    def read(self, headers: Iterable[tuple[bytes, bytes]]) -> str | Problem | None:
        """The key; ``None`` when it is missing and anonymous requests may pass."""
        return self._answer(extract_key(headers, header=self.header, scheme=self.scheme))

    def read_request(
        self, headers: Iterable[tuple[bytes, bytes]], query_string: bytes = b""
    ) -> str | Problem | None:
        """Like :meth:`read`, from wherever the options say: the header or the
        extractor, and the query string when ``query_param`` is set. A key in both
        places is ambiguous and rejected."""
        extracted = self._from_headers(headers)
        if self.query_param is not None:
            in_query = query_key(query_string, self.query_param)[0]
            if not (in_query.missing or extracted.missing):
                return _problem.malformed_key(
                    f"it was sent both in {self._source} and in the {self.query_param} "
                    "query parameter; send it once")
            if extracted.missing:
                extracted = in_query
        return self._answer(extracted)

    def strip_query(self, query_string: bytes) -> bytes:
        """The query string without the key parameter: what the app and logs may see."""
        return query_key(query_string, self.query_param)[1] if self.query_param else query_string

    def client_ip(self, peer: str | None, headers: Iterable[tuple[bytes, bytes]]) -> str | None:
        """The client address for the IP whitelist: the peer's, or the forwarded one
        when the peer is a trusted proxy."""
        if not self.trusted_proxies:
            return peer
        return client_ip(peer, headers, trusted=self.trusted_proxies, header=self.forwarded_header)

    def response_headers(self, result: VerifyResult) -> list[tuple[bytes, bytes]]:
        """:meth:`success_headers` plus the remaining credits when ``credits_header`` is set."""
        headers = self.success_headers(result)
        if self.credits_header is not None and result.credits is not None:
            headers.append((self.credits_header, str(result.credits).encode("ascii")))
        return headers

    @property
    def _source(self) -> str:
        return "the extracted headers" if self.extractor else f"the {self.header.decode()} header"

    def _from_headers(self, headers: Iterable[tuple[bytes, bytes]]) -> Extracted:
        if self.extractor is None:
            return extract_key(headers, header=self.header, scheme=self.scheme)
        try:
            value = self.extractor(header_map(headers))
        except ValueError:  # the extractor's way to reject; its message may hold the key
            return Extracted(None, "the key extractor rejected the request")
        if value is None:
            return Extracted(None, "missing")
        if not isinstance(value, str):
            raise TypeError(f"the key extractor returned {type(value).__name__}, not str or None")
        return bare_key(value, "the extracted key")

    def _answer(self, extracted: Extracted) -> str | Problem | None:
        if extracted.key is not None:
            return extracted.key
        if not extracted.missing:
            return _problem.malformed_key(extracted.problem or "")
        return None if self.allow_anonymous else _problem.missing_key()

    def rejection(self, result: VerifyResult) -> Problem:
        """The answer to a verification that is not valid."""
        logger.debug("keystile: rejected key %s: %s", result.key_id or "(unknown)", result.code.value,
                     extra=key_fields(result))
        return _problem.problem_for_result(result, self.verifier.now())

    def failure(self, exc: KeystileError) -> Problem:
        """The answer when verifying raised; anything but these is a bug and propagates."""
        if isinstance(exc, UnknownRatelimitError):
            return _problem.misconfigured_ratelimit(exc.name)
        if isinstance(exc, StoreError):
            logger.warning("keystile: store unavailable, answering 503: %s", exc,
                           extra=failure_fields(self.verifier.metrics.store, None, exc))
            return _problem.store_unavailable()
        raise exc

    def success_headers(self, result: VerifyResult) -> list[tuple[bytes, bytes]]:
        """Headers for a verified response: the rate-limit state, when there is one."""
        if not (self.ratelimit_headers and result.ratelimits):
            return []
        return _problem.raw_ratelimit_headers(result, self.verifier.now())


def _verifier(
    store: Store | str | None, verifier: Verifier | RemoteVerifier | Keystile | None,
    options: dict[str, Any],
) -> Verifier | RemoteVerifier:
    if verifier is not None:
        if store is not None or options:
            raise ConfigurationError("pass either verifier= or store= and cache options, not both")
        return verifier.verifier if isinstance(verifier, Keystile) else verifier
    if is_remote_url(store):
        assert isinstance(store, str)
        return RemoteVerifier(store, **options)
    return Verifier(store, **options)


_QUERY_PARAM = re.compile(r"[A-Za-z0-9_.~-]+")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # a header name (RFC 9110, 5.1)
_FORWARDED_HEADERS = ("x-forwarded-for", "forwarded")


def _query_param(name: str | None) -> str | None:
    if name is not None and not (isinstance(name, str) and _QUERY_PARAM.fullmatch(name)):
        raise ConfigurationError(
            f"query_param must be a query parameter name such as 'api_key', not {name!r}")
    return name


def _extractor(extractor: Extractor | None, header: bytes) -> Extractor | None:
    if extractor is None:
        return None
    if not callable(extractor):
        raise ConfigurationError(f"extractor must be a callable(headers) -> str | None, not {extractor!r}")
    if header != b"authorization":
        raise ConfigurationError("pass header= or extractor=, not both: the extractor reads the key")
    return extractor


def _trusted_proxies(cidrs: Iterable[str | Network] | None) -> tuple[Network, ...]:
    if cidrs is None:
        return ()
    if isinstance(cidrs, str | bytes):
        raise ConfigurationError(f"trusted_proxies takes a list of CIDRs, e.g. [{cidrs!r}]")
    networks = []
    for cidr in cidrs:
        try:
            networks.append(ipaddress.ip_network(cidr, strict=False))
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(
                f"trusted_proxies: {cidr!r} is not an address or CIDR such as '10.0.0.0/8'") from exc
    return tuple(networks)


def _forwarded_header(name: str | None, trusted: tuple[Network, ...]) -> bytes:
    if name is None:
        return b"x-forwarded-for"
    if not trusted:
        raise ConfigurationError("forwarded_header is read only from trusted_proxies; list them too")
    if not isinstance(name, str) or name.lower() not in _FORWARDED_HEADERS:
        raise ConfigurationError(f"forwarded_header must be 'x-forwarded-for' or 'forwarded', not {name!r}")
    return name.lower().encode("ascii")


def _credits_header(name: str | None) -> bytes | None:
    if name is None:
        return None
    if not (isinstance(name, str) and _TOKEN.fullmatch(name)):
        raise ConfigurationError(f"credits_header must be a header name such as 'X-Credits-Remaining', "
                                 f"not {name!r}")
    return name.lower().encode("ascii")


FAIL_POLICIES = ("closed", "open_cached")


def check_fail_policy(policy: str, max_age: float) -> int | None:
    """The stale allowance in ms of a fail policy (``None``: closed); raises for bad ones."""
    if policy not in FAIL_POLICIES:
        raise ConfigurationError(f"fail_policy must be one of {', '.join(FAIL_POLICIES)}, not {policy!r}")
    if not isinstance(max_age, int | float) or isinstance(max_age, bool) or max_age < 0:
        raise ConfigurationError(f"stale_max_age must be seconds >= 0, not {max_age!r}")
    return int(max_age * 1000) if policy == "open_cached" else None
