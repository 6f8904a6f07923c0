"""Unkey's error answers: ``{meta: {requestId}, error: {title, detail, status, type[, errors]}}``.

``type`` is ``https://unkey.com/docs/errors/`` plus a code such as
``unkey/data/key_not_found``. A 400 always carries ``errors`` (a list, maybe
empty): unkey-py refuses a 400 body without it. Answers are ``application/json``
except 429, which unkey-py only understands as ``application/problem+json``.

keystile's own exceptions map to these answers in :func:`api_error_from`:

==========================  ======  ==========================================
keystile                    status  type
==========================  ======  ==========================================
NotFoundError               404     ``unkey/data/<kind>_not_found``
ConflictError               409     ``unkey/data/<kind>_already_exists``
ProtectedError              412     ``unkey/application/protected_resource``
UnknownRatelimitError       412     ``unkey/application/precondition_failed``
VaultError                  412     ``unkey/application/precondition_failed``
ConfigurationError          412     ``unkey/application/precondition_failed`` (no master key)
PermissionQueryError        400     ``user/bad_request/permissions_query_syntax_error``
ValidationError             400     ``unkey/application/invalid_input``
StoreUnavailableError       503     ``unkey/application/service_unavailable``
anything else               500     ``unkey/application/unexpected_error``
==========================  ======  ==========================================
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from typing import Any

from starlette.responses import Response

from .._errors import (
    ConfigurationError,
    ConflictError,
    NotFoundError,
    PermissionQueryError,
    ProtectedError,
    StoreUnavailableError,
    UnknownRatelimitError,
    ValidationError,
    VaultError,
)

__all__ = [
    "ERROR_BASE",
    "ApiError",
    "api_error_from",
    "at",
    "error_response",
    "invalid",
    "not_found",
]

ERROR_BASE = "https://unkey.com/docs/errors/"

_TITLES = {
    400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 409: "Conflicting Resource", 410: "Resource Gone",
    412: "Precondition Failed", 413: "Request Entity Too Large", 422: "Unprocessable Entity",
    429: "Too Many Requests",
    500: "Internal Server Error", 503: "Service Unavailable",
}


class ApiError(Exception):
    """An error answer to send: status, Unkey error code, human detail, field errors."""

    def __init__(
        self, status: int, code: str, detail: str, *, title: str | None = None,
        errors: Sequence[dict[str, str]] | None = None, headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.title = title or _TITLES.get(status, "Error")
        self.errors = list(errors) if errors is not None else ([] if status == 400 else None)
        self.headers = headers or {}

    def body(self, request_id: str) -> dict[str, Any]:
        error: dict[str, Any] = {"title": self.title, "detail": self.detail,
                                 "status": self.status, "type": ERROR_BASE + self.code}
        if self.errors is not None:
            error["errors"] = self.errors
        return {"meta": {"requestId": request_id}, "error": error}


def error_response(error: ApiError, request_id: str, accept: str = "") -> Response:
    """The HTTP answer for ``error``: problem+json for 429 (unkey-py needs it) or when
    the client asks for it and not for plain JSON; application/json otherwise."""
    problem = error.status == 429 or (
        "application/problem+json" in accept and "application/json" not in accept)
    body = json.dumps(error.body(request_id), separators=(",", ":")).encode("utf-8")
    return Response(body, status_code=error.status, headers=error.headers,
                    media_type="application/problem+json" if problem else "application/json")


def invalid(location: str, message: str, fix: str | None = None) -> ApiError:
    """A 400 for one field, as Unkey's request validation reports it."""
    issue = {"location": location, "message": message}
    if fix:
        issue["fix"] = fix
    return ApiError(400, "unkey/application/invalid_input", f"{location}: {message}",
                    errors=[issue])


def not_found(kind: str, detail: str) -> ApiError:
    return ApiError(404, f"unkey/data/{kind}_not_found", detail)


@contextlib.contextmanager
def at(location: str) -> Iterator[None]:
    """Report a keystile ValidationError raised inside as a 400 at ``location``."""
    try:
        yield
    except ValidationError as exc:
        raise invalid(location, str(exc)) from exc


def api_error_from(exc: Exception, *, kind: str = "resource") -> ApiError | None:
    """The answer for a keystile exception (``kind`` names what was not found or
    clashes); ``None`` for anything unexpected (a 500, logged by the caller)."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, NotFoundError):
        return not_found(kind, str(exc))
    if isinstance(exc, ConflictError):
        return ApiError(409, f"unkey/data/{kind}_already_exists", str(exc))
    if isinstance(exc, ProtectedError):
        return ApiError(412, "unkey/application/protected_resource", str(exc),
                        title="Resource is protected")
    if isinstance(exc, (UnknownRatelimitError, VaultError, ConfigurationError)):
        # The last two: the server's master key is missing or does not open the vault.
        return ApiError(412, "unkey/application/precondition_failed", str(exc))
    if isinstance(exc, PermissionQueryError):
        return ApiError(400, "user/bad_request/permissions_query_syntax_error", str(exc), errors=[
            {"location": "body.permissions", "message": f"{exc.reason} at position {exc.position}",
             "fix": "join permission names with AND / OR and balance the parentheses"}])
    if isinstance(exc, ValidationError):
        return invalid("body", str(exc))
    if isinstance(exc, StoreUnavailableError):
        return ApiError(503, "unkey/application/service_unavailable",
                        "The key store cannot answer right now; try again shortly.",
                        headers={"retry-after": "1"})
    return None
