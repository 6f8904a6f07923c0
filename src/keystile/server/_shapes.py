"""Schemas shared by several operations, and keystile's models in those shapes."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from typing import Any

from .._errors import NotFoundError, ValidationError
from .._manage import Keystile
from .._models import Credits, Identity, KeyInfo, Permission, RatelimitConfig, Refill, Role
from ._schema import FREE_OBJECT, Schema, array, boolean, integer, nullable, obj, string

__all__ = [
    "CREDITS",
    "EMPTY",
    "EXTERNAL_ID",
    "ID",
    "IDENTITY",
    "KEY_DATA",
    "MAX_DURATION",
    "PERMISSION",
    "PERMISSION_SLUG",
    "RATELIMIT_REQUEST",
    "RATELIMIT_RESPONSE",
    "REFILL",
    "ROLE",
    "credits_from",
    "identity_data",
    "key_data",
    "limit_field",
    "permission_data",
    "ratelimits_from",
    "role_data",
]

ID_PATTERN = "^[a-zA-Z0-9_]+$"
SLUG_PATTERN = r"^[a-zA-Z0-9_:\-\.\*]+$"
ID = string(3, 255, pattern=ID_PATTERN)
EXTERNAL_ID = string(1, 255, pattern=r"^[a-zA-Z0-9_.\-]+$",
                     description="Your id of the owner (user, team, …); created as an identity if new.")
PERMISSION_SLUG = string(1, 128, pattern=SLUG_PATTERN)
EMPTY: Schema = obj({}, description="Nothing to return.")
MAX_DURATION = 2_592_000_000  # 30 days in ms

REFILL = obj({
    "interval": string(enum=["daily", "monthly"]),
    "amount": integer(1),
    "refillDay": integer(1, 31, description="Monthly only; past the month's end: its last day."),
}, required=["interval", "amount"])
CREDITS = obj({
    "remaining": nullable(integer(0, description="null: unlimited")),
    "refill": REFILL,
}, required=["remaining"])
RATELIMIT_REQUEST = obj({
    "name": string(3, 128),
    "limit": integer(1, 1_000_000),
    "duration": integer(1000, MAX_DURATION, description="Window in milliseconds."),
    "autoApply": boolean("Applied on every verify (default false: only when named)."),
}, required=["name", "limit", "duration"])
RATELIMIT_RESPONSE = obj({
    "id": string(), "name": string(1, 128), "limit": integer(1, 1_000_000),
    "duration": integer(1000, MAX_DURATION), "autoApply": boolean(),
}, required=["id", "name", "limit", "duration", "autoApply"])
IDENTITY = obj({
    "id": string(), "externalId": string(), "meta": FREE_OBJECT,
    "ratelimits": array(RATELIMIT_RESPONSE),
}, required=["id", "externalId"])
PERMISSION = obj({
    "id": string(), "name": string(1, 512), "slug": string(1, 512),
    "description": string(0, 512),
}, required=["id", "name", "slug"])
ROLE = obj({
    "id": string(), "name": string(), "description": string(),
    "permissions": array(PERMISSION),
}, required=["id", "name"])
KEY_DATA = obj({
    "keyId": string(), "start": string(1, 50), "enabled": boolean(), "createdAt": integer(),
    "name": string(0, 255), "meta": FREE_OBJECT, "updatedAt": integer(), "lastUsedAt": integer(),
    "expires": integer(), "permissions": array(string()), "roles": array(string()),
    "credits": CREDITS, "identity": IDENTITY, "plaintext": string(),
    "ratelimits": array(RATELIMIT_RESPONSE, high=50),
}, required=["keyId", "start", "enabled", "createdAt"])


def limit_field(default: int = 100) -> Schema:
    return integer(1, 100, description=f"Items per page (default {default}).")


# -- keystile models in Unkey's shapes ------------------------------------------------------


def key_data(info: KeyInfo) -> dict[str, Any]:
    data = info.to_dict()
    data.pop("apiId", None)  # not part of Unkey's KeyResponseData
    return data


def identity_data(identity: Identity) -> dict[str, Any]:
    return identity.to_dict()


def permission_data(permission: Permission) -> dict[str, Any]:
    return permission.to_dict()


def role_data(ks: Keystile, role: Role) -> dict[str, Any]:
    """A role with its permissions as objects (Unkey's shape), not slugs."""
    data: dict[str, Any] = {"id": role.id, "name": role.name}
    if role.description is not None:
        data["description"] = role.description
    permissions = []
    for slug in role.permissions:
        with contextlib.suppress(NotFoundError):  # deleted meanwhile
            permissions.append(ks.get_permission(slug).to_dict())
    data["permissions"] = permissions
    return data


def credits_from(data: Mapping[str, Any] | None) -> Credits | None:
    if data is None:
        return None
    refill = data.get("refill")
    return Credits(data.get("remaining"), None if refill is None else Refill(
        refill["interval"], refill["amount"], refill.get("refillDay")))


def ratelimits_from(items: Iterable[Mapping[str, Any]] | None,
                    keep: Iterable[RatelimitConfig] = ()) -> list[RatelimitConfig]:
    """Rate limits of a request; a name in ``keep`` keeps its id (Unkey matches by name)."""
    ids = {config.name: config.id for config in keep}
    out = []
    for item in items or ():
        if not isinstance(item, Mapping):
            raise ValidationError("a rate limit is an object {name, limit, duration, autoApply}")
        out.append(RatelimitConfig(item["name"], item["limit"], item["duration"],
                                   bool(item.get("autoApply", False)), ids.get(item["name"], "")))
    return out
