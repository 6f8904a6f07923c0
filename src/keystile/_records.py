"""Stored documents (plain JSON dicts) to typed models and back.

Stores keep documents by kind (``api``, ``keyspace``, ``key``, ``identity``,
``role``, ``permission``). This module is the only place that knows their fields.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any

from ._credits import CreditState
from ._models import (
    Api,
    Credits,
    Identity,
    KeyInfo,
    KeyRecord,
    Keyspace,
    Permission,
    RatelimitConfig,
    Refill,
    Role,
)

__all__ = [
    "api_from_doc",
    "credits_from_state",
    "identity_from_doc",
    "key_info_from_doc",
    "key_record_from_docs",
    "keyspace_from_doc",
    "permission_from_doc",
    "ratelimits_from_docs",
    "role_from_doc",
]

Doc = dict[str, Any]


def api_from_doc(doc: Mapping[str, Any]) -> Api:
    return Api(doc["id"], doc["name"], doc["keyspace_id"], doc["created_at"])


def keyspace_from_doc(doc: Mapping[str, Any]) -> Keyspace:
    whitelist = tuple(doc.get("ip_whitelist") or ())
    return Keyspace(
        id=doc["id"],
        api_id=doc["api_id"],
        prefix=doc["prefix"],
        default_bytes=doc.get("default_bytes", 16),
        store_encrypted_keys=bool(doc.get("store_encrypted_keys", False)),
        ip_whitelist=whitelist,
        delete_protection=bool(doc.get("delete_protection", False)),
        lease=int(doc.get("lease") or 0),
        networks=tuple(ipaddress.ip_network(cidr, strict=False) for cidr in whitelist),
    )


def ratelimits_from_docs(items: Iterable[Mapping[str, Any]] | None) -> tuple[RatelimitConfig, ...]:
    return tuple(RatelimitConfig.from_dict(item) for item in items or ())


def identity_from_doc(doc: Mapping[str, Any]) -> Identity:
    return Identity(
        id=doc["id"],
        external_id=doc["external_id"],
        meta=doc.get("meta"),
        ratelimits=ratelimits_from_docs(doc.get("ratelimits")),
    )


def role_from_doc(doc: Mapping[str, Any]) -> Role:
    return Role(doc["id"], doc["name"], doc.get("description"), tuple(doc.get("permissions", ())))


def permission_from_doc(doc: Mapping[str, Any]) -> Permission:
    return Permission(doc["id"], doc["name"], doc["slug"], doc.get("description"))


def credits_from_state(state: CreditState | None) -> Credits | None:
    if state is None or state.get("remaining") is None:
        return None
    refill = state.get("refill")
    return Credits(state["remaining"], Refill.from_dict(refill) if refill else None)


def key_record_from_docs(
    key: Mapping[str, Any], identity: Mapping[str, Any] | None, roles: Iterable[Mapping[str, Any]]
) -> KeyRecord:
    """The verification view of a key: role permissions folded into ``permissions``."""
    permissions = set(key.get("permissions", ()))
    for role in roles:
        permissions.update(role.get("permissions", ()))
    return KeyRecord(
        key_id=key["id"],
        keyspace_id=key["keyspace_id"],
        api_id=key["api_id"],
        name=key.get("name"),
        meta=key.get("meta"),
        expires=key.get("expires"),
        enabled=key.get("enabled", True),
        roles=tuple(key.get("roles", ())),
        permissions=tuple(sorted(permissions)),
        ratelimits=ratelimits_from_docs(key.get("ratelimits")),
        identity=identity_from_doc(identity) if identity else None,
        credits_limited=bool(key.get("credits_limited", False)),
        lease=key.get("lease"),
        states_of=key.get("states_of"),
    )


def key_info_from_doc(
    key: Mapping[str, Any], identity: Mapping[str, Any] | None, credits: CreditState | None,
    last_used_at: int | None = None,
) -> KeyInfo:
    return KeyInfo(
        id=key["id"],
        api_id=key["api_id"],
        keyspace_id=key["keyspace_id"],
        start=key["start"],
        enabled=key.get("enabled", True),
        created_at=key["created_at"],
        updated_at=key.get("updated_at"),
        name=key.get("name"),
        meta=key.get("meta"),
        expires=key.get("expires"),
        roles=tuple(key.get("roles", ())),
        permissions=tuple(key.get("permissions", ())),
        ratelimits=ratelimits_from_docs(key.get("ratelimits")),
        credits=credits_from_state(credits),
        identity=identity_from_doc(identity) if identity else None,
        last_used_at=last_used_at,
    )
