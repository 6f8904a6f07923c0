"""What every way in (ASGI middleware, WSGI middleware) shares, without I/O.

A :class:`Gate` holds the options, reads the key from the request headers and turns
every outcome into either the verified result or a :class:`Problem` to answer with.
The middlewares add only their protocol: ASGI messages or a WSGI call.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from . import _problem
from ._errors import ConfigurationError, KeystileError, StoreError, UnknownRatelimitError
from ._extract import extract_key
from ._manage import Keystile
from ._models import VerifyRequest, VerifyResult
from ._problem import Problem
from ._verify import Verifier
from .stores import Store

__all__ = ["VERIFIER_SCOPE_KEY", "Gate"]

logger = logging.getLogger("keystile")

#: Where the ASGI middleware leaves its verifier for the routes behind it.
VERIFIER_SCOPE_KEY = "keystile.verifier"


class Gate:
    """The options of a middleware and its decisions about one request."""

    def __init__(
        self,
        *,
        store: Store | str | None = None,
        verifier: Verifier | Keystile | None = None,
        header: str = "authorization",
        exclude_paths: Iterable[str] = (),
        allow_anonymous: bool = False,
        permissions: str | None = None,
        cost: int | None = None,
        ratelimits: Sequence[str | Mapping[str, Any]] = (),
        api_id: str | None = None,
        ratelimit_headers: bool = True,
        **verifier_options: Any,
    ) -> None:
        self.verifier = _verifier(store, verifier, verifier_options)
        self.header = header.lower().encode("latin-1")
        self.scheme = "bearer" if self.header == b"authorization" else None
        self.exclude_paths = tuple(exclude_paths)
        self.allow_anonymous = allow_anonymous
        # VerifyRequest checks the query, the cost and the limits: a bad one fails
        # here, at startup, not on a request.
        self.request = VerifyRequest(permissions=permissions, cost=cost,
                                     ratelimits=tuple(ratelimits), api_id=api_id)
        self.ratelimit_headers = ratelimit_headers

    def excluded(self, path: str) -> bool:
        return bool(self.exclude_paths) and path.startswith(self.exclude_paths)

    def read(self, headers: Iterable[tuple[bytes, bytes]]) -> str | Problem | None:
        """The key; ``None`` when it is missing and anonymous requests may pass."""
        extracted = extract_key(headers, header=self.header, scheme=self.scheme)
        if extracted.key is not None:
            return extracted.key
        if not extracted.missing:
            return _problem.malformed_key(extracted.problem or "")
        return None if self.allow_anonymous else _problem.missing_key()

    def rejection(self, result: VerifyResult) -> Problem:
        """The answer to a verification that is not valid."""
        logger.debug("keystile: rejected key_id=%s code=%s", result.key_id, result.code.value)
        return _problem.problem_for_result(result, self.verifier.now())

    @staticmethod
    def failure(exc: KeystileError) -> Problem:
        """The answer when verifying raised; anything but these is a bug and propagates."""
        if isinstance(exc, UnknownRatelimitError):
            return _problem.misconfigured_ratelimit(exc.name)
        if isinstance(exc, StoreError):
            logger.warning("keystile: store unavailable, answering 503: %s", exc)
            return _problem.store_unavailable()
        raise exc

    def success_headers(self, result: VerifyResult) -> list[tuple[bytes, bytes]]:
        """Headers for a verified response: the rate-limit state, when there is one."""
        if not (self.ratelimit_headers and result.ratelimits):
            return []
        headers = _problem.ratelimit_headers(result, self.verifier.now())
        return [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers]


def _verifier(
    store: Store | str | None, verifier: Verifier | Keystile | None, options: dict[str, Any]
) -> Verifier:
    if verifier is not None:
        if store is not None or options:
            raise ConfigurationError("pass either verifier= or store= and cache options, not both")
        return verifier.verifier if isinstance(verifier, Keystile) else verifier
    return Verifier(store, **options)
