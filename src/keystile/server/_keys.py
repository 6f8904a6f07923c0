"""``keys.*``: create, verify, read, change, reroll and delete keys."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from typing import Any

from .._errors import ConflictError, NotFoundError, ValidationError
from .._keys import MAX_BYTES, MIN_BYTES, split_key
from .._manage import UNSET, Keystile
from .._models import Code, Credits, KeyInfo, Permission, Refill, VerifyRequest
from .._validate import (
    MAX_EXPIRES,
    check_bytes,
    check_credits,
    check_expires,
    check_external_id,
    check_meta,
    check_name,
    check_prefix,
    check_ratelimits,
    check_slugs,
)
from ._errors import ApiError, at, invalid, not_found
from ._ops import Body, Call, Operation
from ._schema import FREE_OBJECT, array, boolean, integer, nullable, obj, string
from ._shapes import (
    CREDITS,
    EMPTY,
    EXTERNAL_ID,
    ID,
    IDENTITY,
    KEY_DATA,
    PERMISSION,
    PERMISSION_SLUG,
    RATELIMIT_REQUEST,
    REFILL,
    ROLE,
    credits_from,
    key_data,
    ratelimits_from,
    role_data,
)
from .rootkeys import ROOT_PREFIX

__all__ = [
    "OPERATIONS",
    "existing_roles",
    "key_for",
    "live_api",
    "permission_slugs",
    "require_permissions_exist",
    "require_vault",
    "with_plaintext",
]


# -- shared steps ---------------------------------------------------------------------------


def live_api(call: Call, api_id: str) -> None:
    """404 unless ``api_id`` is a live API of the user's (never the root keys' API)."""
    try:
        call.ks.get_api(api_id)
    except NotFoundError:
        raise not_found("api", f"There is no API {api_id!r}.") from None
    if call.roots.owns(api_id):
        raise not_found("api", f"There is no API {api_id!r}.")


def key_for(call: Call, key_id: str, action: str) -> KeyInfo:
    """The key ``key_id`` if the root key may ``action`` it; 404 for root keys and keys of
    deleted APIs, 403 without ``api.*.<action>`` or ``api.<its apiId>.<action>``."""
    call.require_anywhere("api", action)
    try:
        info = call.ks.get_key(key_id)
        call.ks.get_api(info.api_id)
    except NotFoundError:
        raise not_found("key", f"There is no key {key_id!r}.") from None
    if call.roots.owns(info.api_id):
        raise not_found("key", f"There is no key {key_id!r}.")
    call.require("api", action, info.api_id)
    return info


def require_permissions_exist(call: Call, slugs: Iterable[str]) -> None:
    """Missing permissions are created on the fly only for a root key that may create them."""
    missing = [slug for slug in slugs if not _permission_exists(call, slug)]
    if missing and not call.principal.allows("rbac", "create_permission"):
        raise ApiError(403, "unkey/authorization/insufficient_permissions",
                       f"The permissions {', '.join(missing)} do not exist, and creating them needs "
                       "rbac.*.create_permission.", title="Insufficient Permissions")


def _permission_exists(call: Call, slug: str) -> bool:
    try:
        call.ks.get_permission(slug)
    except NotFoundError:
        return False
    return True


def existing_roles(call: Call, names: Iterable[str], location: str) -> list[str]:
    """Role names (a role id is accepted too); 404 for a role that does not exist."""
    out = []
    for name in names:
        try:
            out.append(call.ks.get_role(name).name)
        except NotFoundError:
            raise not_found("role", f"There is no role {name!r}; create it first.") from None
    with at(location):
        return check_slugs(out, "role")


def permission_slugs(call: Call, names: Iterable[str], location: str) -> list[str]:
    """Permission slugs (a permission id is accepted too)."""
    out = []
    for name in names:
        if name.startswith("perm_"):
            with contextlib.suppress(NotFoundError):
                name = call.ks.get_permission(name).slug
        out.append(name)
    with at(location):
        return check_slugs(out)


def require_vault(call: Call, api_id: str) -> None:
    """412 unless keys of ``api_id`` can be recoverable (as Unkey answers): the API stores
    encrypted keys and the server has a master key to seal them with."""
    keyspace = call.ks.get_keyspace(call.ks.get_api(api_id).keyspace_id)
    if not keyspace.store_encrypted_keys:
        raise ApiError(412, "unkey/application/precondition_failed",
                       f"API {api_id} does not store encrypted keys, so its keys cannot be recoverable;"
                       f" turn it on with `keystile apis update {api_id} --store-encrypted-keys`.")
    call.ks.vault.require_master_key()  # its ConfigurationError is a 412 too


def with_plaintext(call: Call, data: dict[str, Any]) -> dict[str, Any]:
    """``data`` of a key with its ``plaintext`` when the key is recoverable (unchanged if not,
    as Unkey answers); 412 when the vault cannot open it."""
    plaintext = call.ks.vault.open(data["keyId"])
    return data if plaintext is None else {**data, "plaintext": plaintext}


def _checked(location: str, check: Callable[..., Any], *args: Any) -> Any:
    with at(location):
        return check(*args)


# -- createKey -------------------------------------------------------------------------------


def create_key(call: Call, body: Body) -> dict[str, Any]:
    api_id = body["apiId"]
    call.require("api", "create_key", api_id)
    live_api(call, api_id)
    recoverable = bool(body.get("recoverable", False))
    if recoverable:
        call.require("api", "encrypt_key", api_id)
        require_vault(call, api_id)
    options = _key_options(call, body)
    try:
        created = call.ks.create_key(
            api_id, byte_length=body.get("byteLength"), enabled=body.get("enabled", True),
            prefix=body.get("prefix"), recoverable=recoverable, **options)
    except (ValidationError, ConflictError) as exc:  # the one check left: the API's prefix
        raise invalid("body.prefix", str(exc)) from exc
    return created.to_dict()


def _key_options(call: Call, body: Body) -> dict[str, Any]:
    """The checked options of a new key, each error reported at its field."""
    if "prefix" in body:
        _checked("body.prefix", check_prefix, body["prefix"])
    if "byteLength" in body:
        _checked("body.byteLength", check_bytes, body["byteLength"])
    options: dict[str, Any] = {}
    for field, name, check in (("name", "name", check_name), ("meta", "meta", check_meta),
                               ("expires", "expires", check_expires),
                               ("externalId", "external_id", check_external_id)):
        if body.get(field) is not None:
            args = (body[field], "key name") if field == "name" else (body[field],)
            options[name] = _checked(f"body.{field}", check, *args)
    credits = _checked("body.credits", lambda: check_credits(credits_from(body.get("credits"))))
    options["credits"] = credits
    options["ratelimits"] = _checked(
        "body.ratelimits", lambda: check_ratelimits(ratelimits_from(body.get("ratelimits"))))
    options["permissions"] = permission_slugs(call, body.get("permissions", ()), "body.permissions")
    require_permissions_exist(call, options["permissions"])
    options["roles"] = existing_roles(call, body.get("roles", ()), "body.roles")
    return options


CREATE_KEY_REQUEST = obj({
    "apiId": ID,
    "prefix": string(1, 8, pattern="^[a-zA-Z0-9_]+$", description=(
        "The API's key prefix (keystile: at most 8 characters). keystile routes keys by prefix,"
        " so all keys of an API share one; the first key of a new API may choose it.")),
    "name": string(1, 255),
    "byteLength": integer(MIN_BYTES, MAX_BYTES, description="Random bytes (keystile: 16 to 32)."),
    "externalId": EXTERNAL_ID,
    "meta": FREE_OBJECT,
    "roles": array(string(1, 128), high=100, description="Names of existing roles."),
    "permissions": array(PERMISSION_SLUG, high=1000,
                         description="Permission slugs; missing ones are created."),
    "expires": integer(0, MAX_EXPIRES, description="Unix milliseconds."),
    "credits": CREDITS,
    "ratelimits": array(RATELIMIT_REQUEST, high=50),
    "enabled": boolean(),
    "recoverable": boolean(
        "Keep the key encrypted, for keys.getKey with decrypt (needs api.*.encrypt_key, an API"
        " that stores encrypted keys and a server with a master key; else 412)."),
}, required=["apiId"])
CREATED_KEY = obj({"keyId": string(), "key": string()}, required=["keyId", "key"])


# -- verifyKey -------------------------------------------------------------------------------


async def verify_key(call: Call, body: Body) -> dict[str, Any]:
    call.require_anywhere("api", "verify_key")
    key: str = body["key"]
    prefix = split_key(key)
    if prefix is None or prefix == ROOT_PREFIX:
        return {"valid": False, "code": Code.NOT_FOUND.value}
    api_id = None
    every_api = call.principal.allows("api", "verify_key")
    if not every_api or body.get("keyspaces"):
        keyspace = await call.ks.verifier.astore.run(call.ks.store.find, "keyspace", "prefix", prefix)
        if keyspace is None or (body.get("keyspaces") and keyspace["id"] not in body["keyspaces"]):
            return {"valid": False, "code": Code.NOT_FOUND.value}
        api_id = str(keyspace["api_id"])
        if not call.principal.allows("api", "verify_key", api_id):  # no leak: as if unknown
            return {"valid": False, "code": Code.NOT_FOUND.value}
    with at("body.ratelimits"):  # a PermissionQueryError passes: it has its own answer
        request = VerifyRequest(
            permissions=body.get("permissions"), cost=(body.get("credits") or {}).get("cost"),
            ratelimits=tuple(body.get("ratelimits") or ()), api_id=api_id,
            tags=tuple(body.get("tags") or ()), ip=call.client_ip)
    result = await call.ks.verifier.verify_request_async(key, request)
    data = result.to_dict()
    data.pop("apiId", None)  # not in Unkey's answer
    return data


VERIFY_REQUEST = obj({
    "key": string(1, 512),
    "tags": array(string(1, 512), high=20),
    "permissions": string(1, 1000, description="A permission query: 'a AND (b OR c)'."),
    "credits": obj({"cost": integer(0, 1_000_000_000_000)}, required=["cost"]),
    "ratelimits": array(obj({
        "name": string(3, 255), "cost": integer(0), "limit": integer(0),
        "duration": integer(1, description="Milliseconds; with limit: an ad-hoc limit."),
    }, required=["name"])),
    "migrationId": string(0, 256, description="Accepted; keystile has no migrated keys."),
    "keyspaces": array(string(), description="Only keys of these keyspaces are found."),
}, required=["key"])
CODES = [code.value for code in Code]
VERIFY_RESPONSE = obj({
    "valid": boolean(), "code": string(enum=CODES), "keyId": string(), "keyspaceId": string(),
    "name": string(), "meta": FREE_OBJECT, "expires": integer(), "credits": integer(),
    "enabled": boolean(), "permissions": array(string()), "roles": array(string()),
    "identity": IDENTITY,
    "ratelimits": array(obj({
        "id": string(), "name": string(), "limit": integer(), "duration": integer(),
        "reset": integer(), "remaining": integer(0), "exceeded": boolean(), "autoApply": boolean(),
    }, required=["id", "name", "limit", "duration", "reset", "remaining", "exceeded", "autoApply"])),
}, required=["valid", "code"])


# -- reading -----------------------------------------------------------------------------------


def get_key(call: Call, body: Body) -> dict[str, Any]:
    info = key_for(call, body["keyId"], "read_key")
    if not body.get("decrypt"):
        return key_data(info)
    call.require("api", "decrypt_key", info.api_id)
    return with_plaintext(call, key_data(info))


def whoami(call: Call, body: Body) -> dict[str, Any]:
    call.require_anywhere("api", "read_key")
    key: str = body["key"]
    try:
        if split_key(key) == ROOT_PREFIX:
            raise NotFoundError("a root key")
        info = call.ks.whoami(key)
        call.ks.get_api(info.api_id)
    except NotFoundError:
        raise not_found("key", "No key matches.") from None
    call.require("api", "read_key", info.api_id)
    return key_data(info)


# -- changing -----------------------------------------------------------------------------------


def update_key(call: Call, body: Body) -> dict[str, Any]:
    info = key_for(call, body["keyId"], "update_key")
    changes: dict[str, Any] = {}
    for field, name, check in (("name", "name", check_name), ("meta", "meta", check_meta),
                               ("expires", "expires", check_expires),
                               ("externalId", "external_id", check_external_id)):
        if field in body:
            value = body[field]
            args = (value, "key name") if field == "name" else (value,)
            changes[name] = None if value is None else _checked(f"body.{field}", check, *args)
    if "enabled" in body:
        changes["enabled"] = body["enabled"]
    refill: Any = UNSET
    if "credits" in body:
        data = body["credits"]
        if data is not None and "remaining" not in data:
            # What remains stays: changed in one step with the spends, never read and
            # written back (a verify spending in between would be undone).
            if "refill" in data:
                refill = _checked("body.credits.refill", _refill, data["refill"])
        else:
            changes["credits"] = _checked("body.credits", _updated_credits, body["credits"])
    if "ratelimits" in body:
        changes["ratelimits"] = _checked("body.ratelimits", lambda: check_ratelimits(
            ratelimits_from(body["ratelimits"], keep=info.ratelimits)))
    if "permissions" in body:
        changes["permissions"] = permission_slugs(call, body["permissions"], "body.permissions")
        require_permissions_exist(call, changes["permissions"])
    if "roles" in body:
        changes["roles"] = existing_roles(call, body["roles"], "body.roles")
    if refill is not UNSET:
        with at("body.credits.refill"):
            call.ks.update_refill(info.id, refill)
    call.ks.update_key(info.id, **changes)
    return {}


def _updated_credits(data: dict[str, Any] | None) -> Any:
    """Unkey's credit update with ``remaining``: it drops the refill unless one is given."""
    if data is None:
        return None
    return check_credits(credits_from({"remaining": data["remaining"], "refill": data.get("refill")}))


def _refill(data: dict[str, Any] | None) -> Refill | None:
    """A refill alone, its shape checked (whether the key's credits can refill is checked
    with them)."""
    if data is None:
        return None
    refill = Refill.from_dict(data)
    check_credits(Credits(0, refill))
    return refill


UPDATE_KEY_REQUEST = obj({
    "keyId": ID,
    "name": nullable(string(1, 255)),
    "externalId": nullable(EXTERNAL_ID),
    "meta": nullable(FREE_OBJECT),
    "expires": nullable(integer(0, MAX_EXPIRES)),
    "credits": nullable(obj({"remaining": nullable(integer(0)), "refill": nullable(REFILL)})),
    "ratelimits": nullable(array(RATELIMIT_REQUEST, high=50)),
    "enabled": boolean(),
    "roles": array(string(1, 128), high=100),
    "permissions": array(PERMISSION_SLUG, high=1000),
}, required=["keyId"], description="Omitted: unchanged; null: cleared.")


def update_credits(call: Call, body: Body) -> dict[str, Any]:
    info = key_for(call, body["keyId"], "update_key")
    operation, value = body["operation"], body.get("value")
    if operation != "set" and value is None:
        raise invalid("body.value", f"is required to {operation}", "send the amount")
    with at("body.operation"):
        credits = call.ks.update_credits(info.id, operation, value)
    return credits.to_dict() if credits is not None else {"remaining": None}


UPDATE_CREDITS_REQUEST = obj({
    "keyId": ID,
    "operation": string(enum=["set", "increment", "decrement"]),
    "value": nullable(integer(0, description="set to null: unlimited")),
}, required=["keyId", "operation"])


def delete_key(call: Call, body: Body) -> dict[str, Any]:
    info = key_for(call, body["keyId"], "delete_key")
    call.ks.delete_key(info.id, permanent=bool(body.get("permanent", False)))
    return {}


def reroll_key(call: Call, body: Body) -> dict[str, Any]:
    info = key_for(call, body["keyId"], "create_key")
    if call.ks.vault.holds(info.id):  # the new key is sealed too, as Unkey rerolls
        call.require("api", "encrypt_key", info.api_id)
        require_vault(call, info.api_id)
    with at("body.expiration"):
        created = call.ks.reroll_key(info.id, expiration_ms=body["expiration"])
    return created.to_dict()


REROLL_REQUEST = obj({
    "keyId": ID,
    "expiration": nullable(integer(0, MAX_EXPIRES, description=(
        "Milliseconds the old key stays valid, sharing credits and rate limits with the new"
        " one (0: rejected at once); null: it keeps its expiry."))),
}, required=["keyId", "expiration"], strict=False)


# -- permissions and roles of a key -----------------------------------------------------------------


def _change_permissions(change: Callable[[Keystile, str, set[str]], KeyInfo], creating: bool) -> Any:
    def handler(call: Call, body: Body) -> list[dict[str, Any]]:
        info = key_for(call, body["keyId"], "update_key")
        given = set(permission_slugs(call, body["permissions"], "body.permissions"))
        if creating:
            require_permissions_exist(call, given)
        updated = change(call.ks, info.id, given)
        return [permission.to_dict() for permission in _permissions(call, updated.permissions)]
    return handler


def _change_roles(change: Callable[[Keystile, str, set[str]], KeyInfo], existing: bool) -> Any:
    def handler(call: Call, body: Body) -> list[dict[str, Any]]:
        info = key_for(call, body["keyId"], "update_key")
        names = body["roles"]
        given = set(existing_roles(call, names, "body.roles") if existing else names)
        updated = change(call.ks, info.id, given)
        return [role_data(call.ks, call.ks.get_role(name)) for name in updated.roles]
    return handler


def _permissions(call: Call, slugs: Iterable[str]) -> list[Permission]:
    found = []
    for slug in slugs:
        with contextlib.suppress(NotFoundError):  # deleted meanwhile
            found.append(call.ks.get_permission(slug))
    return found


def _permissions_request(low: int) -> dict[str, Any]:
    return obj({"keyId": ID, "permissions": array(PERMISSION_SLUG, low, 1000)},
               required=["keyId", "permissions"])


def _roles_request(low: int) -> dict[str, Any]:
    return obj({"keyId": ID, "roles": array(string(1, 128), low, 100)}, required=["keyId", "roles"])


def _add_permissions(ks: Keystile, key_id: str, given: set[str]) -> KeyInfo:
    return ks.add_permissions(key_id, given)


def _remove_permissions(ks: Keystile, key_id: str, given: set[str]) -> KeyInfo:
    return ks.remove_permissions(key_id, given)


def _set_permissions(ks: Keystile, key_id: str, given: set[str]) -> KeyInfo:
    return ks.update_key(key_id, permissions=sorted(given))


def _add_roles(ks: Keystile, key_id: str, given: set[str]) -> KeyInfo:
    return ks.add_roles(key_id, given)


def _remove_roles(ks: Keystile, key_id: str, given: set[str]) -> KeyInfo:
    return ks.remove_roles(key_id, given)


def _set_roles(ks: Keystile, key_id: str, given: set[str]) -> KeyInfo:
    return ks.update_key(key_id, roles=sorted(given))


OPERATIONS = (
    Operation("keys.verifyKey", verify_key, VERIFY_REQUEST, VERIFY_RESPONSE,
              "Verify a key: always 200, with valid and a code", kind="key", statuses=(404, 412)),
    Operation("keys.createKey", create_key, CREATE_KEY_REQUEST, CREATED_KEY,
              "Issue a key; its plaintext is in this answer only", kind="api", statuses=(404, 412)),
    Operation("keys.getKey", get_key, obj({"keyId": ID, "decrypt": boolean(
        "With api.*.decrypt_key: the plaintext of a recoverable key.")}, required=["keyId"]),
              KEY_DATA, "A key by id (its plaintext only with decrypt, if it is recoverable)",
              kind="key", statuses=(404, 412)),
    Operation("keys.whoami", whoami, obj({"key": string(1, 512)}, required=["key"]), KEY_DATA,
              "The key a plaintext key is, without verifying it", kind="key", statuses=(404,)),
    Operation("keys.updateKey", update_key, UPDATE_KEY_REQUEST, EMPTY,
              "Change a key", kind="key", statuses=(404,)),
    Operation("keys.updateCredits", update_credits, UPDATE_CREDITS_REQUEST, CREDITS,
              "Set, increment or decrement a key's credits", kind="key", statuses=(404,)),
    Operation("keys.rerollKey", reroll_key, REROLL_REQUEST, CREATED_KEY,
              "Replace a key by a new one of the same settings", kind="key", statuses=(404, 412)),
    Operation("keys.deleteKey", delete_key,
              obj({"keyId": ID, "permanent": boolean()}, required=["keyId"]), EMPTY,
              "Revoke a key", kind="key", statuses=(404,)),
    Operation("keys.addPermissions", _change_permissions(_add_permissions, True), _permissions_request(1),
              array(PERMISSION), "Add permissions to a key", kind="key", statuses=(404,)),
    Operation("keys.removePermissions", _change_permissions(_remove_permissions, False),
              _permissions_request(1), array(PERMISSION), "Remove permissions from a key", kind="key",
              statuses=(404,)),
    Operation("keys.setPermissions", _change_permissions(_set_permissions, True), _permissions_request(0),
              array(PERMISSION), "Replace a key's permissions", kind="key", statuses=(404,)),
    Operation("keys.addRoles", _change_roles(_add_roles, True), _roles_request(1), array(ROLE),
              "Add roles to a key", kind="key", statuses=(404,)),
    Operation("keys.removeRoles", _change_roles(_remove_roles, False), _roles_request(1), array(ROLE),
              "Remove roles from a key", kind="key", statuses=(404,)),
    Operation("keys.setRoles", _change_roles(_set_roles, True), _roles_request(0), array(ROLE),
              "Replace a key's roles", kind="key", statuses=(404,)),
)
