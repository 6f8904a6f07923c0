"""Failure answers: RFC 9457 problem details, RFC 6750 ``WWW-Authenticate``, ``Retry-After``."""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass

from ._models import Code, VerifyResult

__all__ = ["Problem", "close_reason", "problem_for_result", "ratelimit_headers", "raw_ratelimit_headers"]

_STATUS = {
    Code.NOT_FOUND: 401,
    Code.EXPIRED: 401,
    Code.DISABLED: 403,
    Code.FORBIDDEN: 403,
    Code.INSUFFICIENT_PERMISSIONS: 403,
    Code.RATE_LIMITED: 429,
    Code.USAGE_EXCEEDED: 429,
}
_TITLES = {401: "Unauthorized", 403: "Forbidden", 429: "Too Many Requests",
           503: "Service Unavailable"}
_DETAILS = {
    Code.NOT_FOUND: "The API key is not valid.",
    Code.EXPIRED: "The API key has expired.",
    Code.DISABLED: "The API key is disabled.",
    Code.FORBIDDEN: "The API key may not be used from this address.",
    Code.INSUFFICIENT_PERMISSIONS: "The API key lacks the permissions this route needs.",
    Code.RATE_LIMITED: "The API key's rate limit is exceeded.",
    Code.USAGE_EXCEEDED: "The API key has no credits left.",
}
_REALM = 'Bearer realm="api"'


@dataclass(frozen=True, slots=True)
class Problem:
    """An error answer; ``body()`` is the ``application/problem+json`` document."""

    status: int
    code: str
    detail: str
    headers: tuple[tuple[str, str], ...] = ()

    def body(self) -> bytes:
        return json.dumps({
            "type": f"urn:keystile:problem:{self.code.lower().replace('_', '-')}",
            "title": _TITLES.get(self.status, "Error"),
            "status": self.status,
            "detail": self.detail,
            "code": self.code,
        }).encode("utf-8")

    def raw_headers(self) -> list[tuple[bytes, bytes]]:
        body_length = str(len(self.body())).encode()
        return [
            (b"content-type", b"application/problem+json"),
            (b"content-length", body_length),
            *((name.encode("latin-1"), value.encode("latin-1")) for name, value in self.headers),
        ]


def close_reason(problem: Problem) -> str:
    """The reason of a WebSocket close frame for ``problem``: at most 123 bytes (RFC 6455)."""
    reason = f"{problem.code}: {problem.detail}"
    if len(reason.encode("utf-8")) <= 123:
        return reason
    return reason.encode("utf-8")[:120].decode("utf-8", "ignore") + "..."


def missing_key() -> Problem:
    return Problem(401, "MISSING_KEY", "This route needs an API key: send "
                   "'Authorization: Bearer <key>'.", (("www-authenticate", _REALM),))


def malformed_key(reason: str) -> Problem:
    return Problem(401, "MALFORMED_KEY", f"The API key could not be read: {reason}.",
                   (("www-authenticate", _invalid_token()),))


def store_unavailable() -> Problem:
    return Problem(503, "STORE_UNAVAILABLE",
                   "Keys cannot be verified right now; try again shortly.",
                   (("retry-after", "1"),))


def misconfigured_ratelimit(name: str) -> Problem:
    return Problem(403, "RATELIMIT_NOT_CONFIGURED",
                   f"This route applies the rate limit {name!r}, which the API key does not have.")


def problem_for_result(result: VerifyResult, now: int) -> Problem:
    """The answer for a rejected verification."""
    status = _STATUS[result.code]
    headers: list[tuple[str, str]] = []
    if status == 401:
        headers.append(("www-authenticate", _invalid_token()))
    retry_at = _retry_at(result)
    if retry_at is not None:
        headers.append(("retry-after", str(max(1, math.ceil((retry_at - now) / 1000)))))
    detail = _DETAILS[result.code]
    if result.code is Code.USAGE_EXCEEDED and retry_at is None:
        detail += " They do not refill."
    return Problem(status, result.code.value, detail, (*headers, *ratelimit_headers(result, now)))


def _retry_at(result: VerifyResult) -> int | None:
    if result.code is Code.RATE_LIMITED:
        return max((rl.reset for rl in result.ratelimits if rl.exceeded), default=None)
    if result.code is Code.USAGE_EXCEEDED:
        return result.credits_reset
    return None


def _invalid_token() -> str:
    return f'{_REALM}, error="invalid_token"'


@functools.lru_cache(maxsize=1024)
def _policy(name: str, limit: int, duration: int) -> tuple[bytes, bytes]:
    """A limit's name as a structured-field string, and its ``RateLimit-Policy`` value
    (the same few limits on every request)."""
    quoted = json.dumps(name).encode("ascii")  # ensure_ascii: escapes are ASCII
    return quoted, b"%s;q=%d;w=%d" % (quoted, limit, max(1, duration // 1000))


def raw_ratelimit_headers(result: VerifyResult, now: int) -> list[tuple[bytes, bytes]]:
    """IETF ``RateLimit-Policy`` and ``RateLimit`` for the tightest checked limit, as
    ASGI sends headers (every verify that checks a limit adds them to its response)."""
    limit = result.tightest_ratelimit
    if limit is None:
        return []
    quoted, policy = _policy(limit.name, limit.limit, limit.duration)
    seconds = (limit.reset - now + 999) // 1000  # whole seconds, rounded up
    return [(b"ratelimit-policy", policy),
            (b"ratelimit", b"%s;r=%d;t=%d" % (quoted, limit.remaining, max(0, seconds)))]


def ratelimit_headers(result: VerifyResult, now: int) -> list[tuple[str, str]]:
    """:func:`raw_ratelimit_headers` as text."""
    return [(name.decode("ascii"), value.decode("ascii"))
            for name, value in raw_ratelimit_headers(result, now)]
