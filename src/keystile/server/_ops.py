"""What an operation is (``keys.verifyKey``: schemas, handler, errors) and what a handler gets."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .._manage import Keystile
from ._errors import ApiError
from ._schema import Schema
from .rootkeys import Principal, RootKeys

__all__ = ["Body", "Call", "Operation", "Page"]

Body = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Page:
    """A list answer: the items and the cursor of the next page (``None``: last page)."""

    items: list[Any]
    cursor: str | None


@dataclass(frozen=True, slots=True)
class Call:
    """One authenticated request, as a handler sees it."""

    ks: Keystile
    roots: RootKeys
    principal: Principal
    client_ip: str | None = None

    def require(self, group: str, action: str, resource: str | None = None) -> None:
        """403 unless the root key has ``group.*.action`` or ``group.<resource>.action``."""
        if not self.principal.allows(group, action, resource):
            raise _insufficient(group, action, resource)

    def require_anywhere(self, group: str, action: str) -> None:
        """403 unless the root key has ``action`` on at least one resource of ``group``."""
        if not self.principal.allows_anywhere(group, action):
            raise _insufficient(group, action, None)


def _insufficient(group: str, action: str, resource: str | None) -> ApiError:
    needed = f"{group}.*.{action}"
    if resource is not None:
        needed += f" or {group}.{resource}.{action}"
    return ApiError(403, "unkey/authorization/insufficient_permissions",
                    f"The root key lacks the permission this needs: {needed}.",
                    title="Insufficient Permissions")


Handler = Callable[[Call, Body], Any]


@dataclass(frozen=True, slots=True)
class Operation:
    """One ``POST /v2/<name>`` operation.

    ``handler(call, body)`` gets the validated body and returns the ``data`` of the
    answer (a :class:`Page` for list operations); it may be a coroutine function.
    ``kind`` names what a NotFoundError or ConflictError of the handler is about;
    ``statuses`` are the error statuses it documents besides 400/401/403/500/503.
    """

    name: str
    handler: Handler
    request: Schema
    response: Schema
    summary: str
    kind: str = "resource"
    statuses: tuple[int, ...] = ()
    paginated: bool = False

    @property
    def path(self) -> str:
        return f"/v2/{self.name}"

    @property
    def tag(self) -> str:
        return self.name.split(".", 1)[0]
