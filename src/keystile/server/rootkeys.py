"""Root keys: the keys that may call the server, each with its own permissions.

A root key is an ordinary keystile key (only its SHA-256 is stored) in a reserved
API whose prefix, ``ks-root``, holds a ``-`` that user prefixes cannot have, so no
user API can ever route a key there and no root key can pass as a user key. Its
permissions are Unkey's tuples (``api.*.create_key``, ``api.<apiId>.verify_key``,
``rbac.*.create_role``, ``identity.*.read_identity``, ``ratelimit.*.limit``, …),
kept in the key's meta rather than as keystile permissions, so they never show up
among (or get deleted with) the permissions of the user's own keys.

A request's root key is verified by keystile's own :class:`~keystile.Verifier`
(cached like any key) and its permissions are matched with keystile's permission
queries: an operation on API ``api_1`` asks ``api.*.x OR api.api_1.x``.

>>> from keystile import Keystile
>>> roots = RootKeys(Keystile("memory://"))
>>> created = roots.create(["api.*.verify_key"])
>>> created.key.startswith("ks-root_")
True
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from .. import _keys
from .._errors import ConflictError, NotFoundError, ValidationError
from .._keys import split_key
from .._manage import Keystile
from .._models import Code, CreatedKey, KeyInfo, VerifyRequest
from .._permissions import parse_query
from ._errors import ApiError

__all__ = [
    "ROOT_ACTIONS",
    "ROOT_PREFIX",
    "Principal",
    "RootKeys",
    "bearer_token",
    "check_root_permissions",
]

ROOT_PREFIX: Final = _keys.ROOT_PREFIX
ROOT_API_NAME: Final = "keystile root keys"
_META_FIELD: Final = "rootPermissions"

#: The actions a root key may be granted, by resource group (as Unkey names them).
ROOT_ACTIONS: Final[dict[str, frozenset[str]]] = {
    "api": frozenset({
        "create_api", "read_api", "update_api", "delete_api", "create_key", "read_key",
        "update_key", "delete_key", "verify_key", "encrypt_key", "decrypt_key", "read_analytics"}),
    "rbac": frozenset({
        "create_permission", "read_permission", "update_permission", "delete_permission",
        "create_role", "read_role", "update_role", "delete_role", "add_permission_to_role",
        "remove_permission_from_role"}),
    "identity": frozenset({"create_identity", "read_identity", "update_identity", "delete_identity"}),
    "ratelimit": frozenset({"limit", "create_namespace", "read_namespace", "delete_namespace"}),
}
_RESOURCE = re.compile(r"\*|[A-Za-z0-9_\-:]{1,255}")
_QUERY_SAFE = re.compile(r"[A-Za-z0-9_\-:]+")


def check_root_permissions(permissions: Iterable[str]) -> list[str]:
    """The permissions, sorted and unique; a ValidationError names a malformed one."""
    if isinstance(permissions, str):
        raise ValidationError("root key permissions must be a list of names")
    checked = set()
    for permission in permissions:
        group, _, rest = str(permission).partition(".")
        resource, _, action = rest.rpartition(".")
        if action not in ROOT_ACTIONS.get(group, ()) or not _RESOURCE.fullmatch(resource):
            groups = ", ".join(f"{name}.*.{{{','.join(sorted(actions))}}}"
                               for name, actions in ROOT_ACTIONS.items())
            raise ValidationError(f"{permission!r} is not a root key permission; they are {groups}"
                                  " (a specific API: api.<apiId>.<action>)")
        checked.add(permission)
    if not checked:
        raise ValidationError("a root key needs at least one permission")
    return sorted(checked)


@dataclass(frozen=True, slots=True)
class Principal:
    """The root key of a request: its id and permission tuples."""

    key_id: str
    permissions: frozenset[str]

    def allows(self, group: str, action: str, resource: str | None = None) -> bool:
        """Whether ``group.*.action`` (or, with ``resource``, ``group.resource.action``) is granted."""
        query = f"{group}.*.{action}"
        if resource is not None and _QUERY_SAFE.fullmatch(resource):
            query += f" OR {group}.{resource}.{action}"
        return parse_query(query).allows(self.permissions)

    def allows_anywhere(self, group: str, action: str) -> bool:
        """Whether ``action`` is granted on at least one resource of ``group``."""
        return any(p.startswith(group + ".") and p.endswith("." + action) for p in self.permissions)

    def resources(self, group: str, action: str) -> frozenset[str]:
        """The resources granted ``action`` one by one: ``api_1`` for ``api.api_1.action``
        (``*`` is not one: ask :meth:`allows`)."""
        found = set()
        for permission in self.permissions:
            name, _, rest = permission.partition(".")
            resource, _, granted = rest.rpartition(".")
            if name == group and granted == action and resource not in ("", "*"):
                found.add(resource)
        return frozenset(found)


class RootKeys:
    """The root keys of a store: create, list, delete, and authenticate requests."""

    def __init__(self, ks: Keystile) -> None:
        self.ks = ks
        self._api_id: str | None = None
        self._request: VerifyRequest | None = None

    def api_id(self) -> str:
        """The reserved API of root keys, created on first use."""
        if self._api_id is None:
            self._api_id = self._find_api() or self._create_api()
            self._request = VerifyRequest(api_id=self._api_id)
        return self._api_id

    def owns(self, api_id: str) -> bool:
        """Whether ``api_id`` is the reserved root-key API (never served to users)."""
        return api_id == self.api_id()

    def create(self, permissions: Iterable[str], *, name: str | None = None) -> CreatedKey:
        """Issue a root key; its plaintext is in the answer only."""
        granted = check_root_permissions(permissions)
        return self.ks.create_key(self.api_id(), name=name, meta={_META_FIELD: granted})

    def list(self) -> list[dict[str, Any]]:
        """Every live root key: id, start, name, permissions (never the key)."""
        infos: list[KeyInfo] = []
        cursor: str | None = None
        while True:
            page = self.ks.list_keys(self.api_id(), cursor=cursor)
            infos.extend(page.keys)
            if page.cursor is None:
                break
            cursor = page.cursor
        return [_describe(info) for info in infos]

    def delete(self, key_id: str) -> None:
        """Revoke a root key at once."""
        if self.ks.get_key(key_id).api_id != self.api_id():
            raise NotFoundError(f"no root key {key_id!r}")
        self.ks.delete_key(key_id, permanent=True)

    async def authenticate(self, authorization: str | None) -> Principal:
        """The root key of an ``Authorization`` header, or the ApiError to answer."""
        return await self.principal(bearer_token(authorization))

    async def principal(self, token: str) -> Principal:
        """The root key ``token`` is: 401 if unknown, expired or deleted, 403 if disabled."""
        if split_key(token) != ROOT_PREFIX:
            raise _unknown_root_key()
        self.api_id()
        assert self._request is not None
        result = await self.ks.verifier.verify_request_async(token, self._request)
        if result.code is Code.DISABLED:
            raise ApiError(403, "unkey/authorization/key_disabled", "The root key is disabled.",
                           title="Key is disabled")
        if not result.valid or result.key_id is None:
            raise _unknown_root_key()
        granted = (result.meta or {}).get(_META_FIELD) or ()
        return Principal(result.key_id, frozenset(str(p) for p in granted))

    def _find_api(self) -> str | None:
        doc = self.ks.store.find("keyspace", "prefix", ROOT_PREFIX)
        return None if doc is None else str(doc["api_id"])

    def _create_api(self) -> str:
        settings = {"prefix": ROOT_PREFIX, "default_bytes": 32, "store_encrypted_keys": False,
                    "ip_whitelist": [], "delete_protection": True, "lease": 0}
        try:
            return self.ks._insert_api(ROOT_API_NAME, settings).id
        except ConflictError:  # another process created it just now
            found = self._find_api()
            if found is None:
                raise
            return found


def _describe(info: KeyInfo) -> dict[str, Any]:
    out: dict[str, Any] = {"keyId": info.id, "start": info.start, "createdAt": info.created_at,
                           "permissions": list((info.meta or {}).get(_META_FIELD) or ())}
    if info.name is not None:
        out["name"] = info.name
    return out


def bearer_token(authorization: str | None) -> str:
    """The token of ``Bearer <token>``; a 400 ApiError when missing or malformed."""
    if not authorization or not authorization.strip():
        raise ApiError(400, "unkey/authentication/missing",
                       "The Authorization header is missing; send 'Authorization: Bearer <root key>'.",
                       errors=[{"location": "header.Authorization", "message": "is required",
                                "fix": "send 'Authorization: Bearer <root key>'"}])
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        raise ApiError(400, "unkey/authentication/malformed",
                       "The Authorization header must be 'Bearer <root key>'.",
                       errors=[{"location": "header.Authorization",
                                "message": "must be 'Bearer <root key>'",
                                "fix": "send 'Authorization: Bearer <root key>'"}])
    return token


def _unknown_root_key() -> ApiError:
    return ApiError(401, "unkey/authentication/key_not_found",
                    "The root key was not found (unknown, expired or deleted).")
