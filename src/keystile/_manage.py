"""The typed Python API: one object, opened from a store URL, for everything the CLI does.

>>> ks = Keystile("memory://")
>>> api = ks.create_api("payments", prefix="sk_test")
>>> created = ks.create_key(api.id, credits=10)
>>> ks.verify(created.key).valid
True
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import enum
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from ._analytics import (
    CODES,
    MINUTE_MS,
    Bucket,
    Event,
    EventFilter,
    Top,
    check_range,
    count_buckets,
    last_used_state_key,
    top,
)
from ._credits import apply_refill, new_credit_state
from ._decide import credits_state_key
from ._errors import ConflictError, NotFoundError, ProtectedError, ValidationError
from ._ids import new_id, now_ms
from ._keys import generate_key, hash_key, key_start, split_key
from ._models import (
    Api,
    CreatedKey,
    Credits,
    Identity,
    KeyInfo,
    Keyspace,
    Permission,
    RatelimitConfig,
    Refill,
    Role,
    VerifyResult,
)
from ._records import (
    api_from_doc,
    credits_from_state,
    identity_from_doc,
    key_info_from_doc,
    keyspace_from_doc,
    permission_from_doc,
    role_from_doc,
)
from ._validate import (
    MAX_EXPIRES,
    check_bytes,
    check_cidrs,
    check_credits,
    check_expires,
    check_external_id,
    check_lease,
    check_meta,
    check_name,
    check_prefix,
    check_ratelimits,
    check_slugs,
)
from ._vault import Vault, master_key_from, parse_master_key
from ._verify import Verifier
from .stores import Store

__all__ = ["UNSET", "KeyPage", "Keystile"]

Doc = dict[str, Any]


class _Unset(enum.Enum):
    UNSET = "UNSET"

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final = _Unset.UNSET
"""Marks an update argument as not given: the field stays as it is (``None`` clears it)."""


@dataclass(frozen=True, slots=True)
class KeyPage:
    """One page of :meth:`Keystile.list_keys`; pass ``cursor`` back for the next."""

    keys: list[KeyInfo]
    cursor: str | None

    @property
    def has_more(self) -> bool:
        return self.cursor is not None


class Keystile:
    """Manage APIs, keys, identities, roles and permissions, and verify keys.

    Every change evicts what it affects from the cache of every verifier of the
    same store in this process. All methods block; :class:`AsyncKeystile` is the
    async face.
    """

    def __init__(
        self, store: Store | str | None = None, *, now: Callable[[], int] = now_ms,
        master_key: bytes | str | None = None, **verifier_options: Any,
    ) -> None:
        """``master_key`` (32 bytes or their base64; default ``KEYSTILE_MASTER_KEY`` or the
        file ``KEYSTILE_MASTER_KEY_FILE`` names) seals and opens recoverable keys; without
        one they cannot be created or recovered, and everything else works as ever."""
        master = master_key_from(master_key)  # a malformed one fails here, not at first use
        self.verifier = Verifier(store, now=now, **verifier_options)
        self.store = self.verifier.store
        self.now = now
        self.vault = Vault(self.store, master, now=now)

    def __repr__(self) -> str:
        return f"Keystile({self.store!r})"

    def close(self) -> None:
        """Give leased units back (leased mode), then close the store."""
        self.verifier.close()

    def __enter__(self) -> Keystile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- verification ----------------------------------------------------------------

    def verify(self, key: str, **request: Any) -> VerifyResult:
        """Verify a key; see :class:`VerifyRequest` for the options."""
        return self.verifier.verify(key, **request)

    def whoami(self, key: str) -> KeyInfo:
        """The key a plaintext key is (without verifying or spending anything)."""
        doc = self.store.find("key", "hash", hash_key(key)) if split_key(key) else None
        if doc is None or doc.get("deleted_at") is not None:
            raise NotFoundError("no such key")
        return self._key_info(doc)

    # -- APIs and keyspaces -------------------------------------------------------------

    def create_api(
        self, name: str, *, prefix: str | None = None, default_bytes: int = 16,
        store_encrypted_keys: bool = False, ip_whitelist: Iterable[str] = (),
        delete_protection: bool = False, lease: int = 0,
    ) -> Api:
        """Create an API and its keyspace; ``prefix`` must be unused by other keyspaces.

        Without ``prefix`` (as Unkey's ``apis.createApi``, which knows no prefix) keystile
        picks an unused one, and the first key created with ``create_key(prefix=...)``
        may still choose the API's prefix (see :meth:`create_key`).

        ``lease`` > 0 puts its keys in leased mode: credits and rate-limit tokens are
        reserved from the store that many at a time and spent locally (see README).
        """
        check_name(name, "API name", high=256)
        settings: Doc = {
            "prefix": check_prefix(self._unused_prefix() if prefix is None else prefix),
            "default_bytes": check_bytes(default_bytes),
            "store_encrypted_keys": bool(store_encrypted_keys),
            "ip_whitelist": check_cidrs(ip_whitelist),
            "delete_protection": bool(delete_protection),
            "lease": check_lease(lease),
        }
        if prefix is None:
            settings["prefix_auto"] = True  # the first key may still choose another
        return self._insert_api(name, settings)

    def _insert_api(self, name: str, settings: Doc) -> Api:
        """Store an API and its keyspace of ``settings`` (checked by the caller)."""
        keyspace: Doc = {"id": new_id("ks"), "api_id": new_id("api"), **settings}
        if self.store.find("keyspace", "prefix", keyspace["prefix"]) is not None:
            raise ConflictError(f"prefix {keyspace['prefix']!r} is used by another keyspace")
        api: Doc = {"id": keyspace["api_id"], "name": name, "keyspace_id": keyspace["id"],
                    "created_at": self.now()}
        self.store.insert("keyspace", keyspace)
        self.store.insert("api", api)
        self.store.announce(None, keyspaces=True)
        return api_from_doc(api)

    def _unused_prefix(self) -> str:
        """A random prefix no keyspace has: ``k`` and 7 lowercase letters or digits."""
        while True:
            prefix = "k" + "".join(secrets.choice(_PREFIX_ALPHABET) for _ in range(7))
            if self.store.find("keyspace", "prefix", prefix) is None:
                return prefix

    def get_api(self, api_id: str) -> Api:
        return api_from_doc(self._api_doc(api_id))

    def list_apis(self) -> list[Api]:
        docs = self.store.scan_all("api")
        return [api_from_doc(doc) for doc in docs if doc.get("deleted_at") is None]

    def get_keyspace(self, keyspace_id: str) -> Keyspace:
        return keyspace_from_doc(self._keyspace_doc(keyspace_id))

    def _keyspace_doc(self, keyspace_id: str) -> Doc:
        doc = self.store.get("keyspace", keyspace_id)
        if doc is None or doc.get("deleted_at") is not None:
            raise NotFoundError(f"no keyspace {keyspace_id!r}")
        return doc

    def update_api(
        self, api_id: str, *, name: str | _Unset = UNSET,
        ip_whitelist: Iterable[str] | _Unset = UNSET,
        delete_protection: bool | _Unset = UNSET,
        store_encrypted_keys: bool | _Unset = UNSET,
    ) -> Api:
        api = self._api_doc(api_id)
        settings: Doc = {}
        if ip_whitelist is not UNSET:
            settings["ip_whitelist"] = check_cidrs(ip_whitelist)
        if delete_protection is not UNSET:
            settings["delete_protection"] = bool(delete_protection)
        if store_encrypted_keys is not UNSET:
            settings["store_encrypted_keys"] = bool(store_encrypted_keys)
        if name is not UNSET:
            renamed = check_name(name, "API name", high=256)
            api = self.store.modify("api", api_id, lambda d: {**(d or api), "name": renamed})
        if settings:
            self.store.modify("keyspace", api["keyspace_id"],
                              lambda d: {**(d or {"id": api["keyspace_id"]}), **settings})
        self.store.announce(None, keyspaces=True)
        return api_from_doc(api)

    def delete_api(self, api_id: str) -> None:
        """Delete an API; its keys verify as NOT_FOUND from then on."""
        api = self._api_doc(api_id)
        keyspace = self.store.get("keyspace", api["keyspace_id"]) or {"id": api["keyspace_id"]}
        if keyspace.get("delete_protection"):
            raise ProtectedError(f"API {api_id} has delete protection; turn it off first")
        deleted_at = self.now()
        # Free the prefix: keys found by hash no longer match a live keyspace.
        keyspace.update(deleted_at=deleted_at, deleted_prefix=keyspace.pop("prefix", None))
        self.store.replace("keyspace", keyspace)
        self.store.replace("api", {**api, "deleted_at": deleted_at})
        self.store.announce(None, keyspaces=True)

    def _api_doc(self, api_id: str) -> Doc:
        doc = self.store.get("api", api_id)
        if doc is None or doc.get("deleted_at") is not None:
            raise NotFoundError(f"no API {api_id!r}")
        return doc

    # -- keys -----------------------------------------------------------------------

    def create_key(
        self, api_id: str, *, name: str | None = None, byte_length: int | None = None,
        external_id: str | None = None, meta: Mapping[str, Any] | None = None,
        expires: int | dt.datetime | None = None, credits: Credits | int | None = None,
        ratelimits: Iterable[RatelimitConfig | Mapping[str, Any]] = (),
        permissions: Iterable[str] = (), roles: Iterable[str] = (), enabled: bool = True,
        lease: int | None = None, prefix: str | None = None, recoverable: bool | None = None,
    ) -> CreatedKey:
        """Issue a key; its plaintext is in the answer and, for a recoverable key, sealed
        in the vault (see :meth:`recover_key`); nowhere else, ever.

        Keys are routed by prefix, so all keys of an API share its prefix: ``prefix``,
        when given, must be the API's, except for the first key of an API created
        without a prefix, which gives the API this one.

        ``recoverable`` defaults to the API's ``store_encrypted_keys``; ``True`` needs that
        setting (as Unkey's), and either needs the master key (ConfigurationError without).
        """
        if prefix is not None:
            check_prefix(prefix)
        api = self._api_doc(api_id)
        keyspace_doc = self._keyspace_doc(api["keyspace_id"])
        keyspace = keyspace_from_doc(keyspace_doc)
        sealed = _recoverable(keyspace, recoverable)
        if sealed:
            self.vault.require_master_key()  # before the first write (a prefix claim)
        nbytes = check_bytes(byte_length if byte_length is not None else keyspace.default_bytes)
        credit = check_credits(credits)
        now = self.now()
        doc: Doc = {
            "id": new_id("key"), "api_id": api_id, "keyspace_id": keyspace.id, "created_at": now,
            "enabled": bool(enabled),
            "identity_id": self._identity_id_for(external_id),
            "credits_limited": credit is not None and credit.remaining is not None,
        }
        self._apply_key_fields(doc, name=name, meta=meta, expires=expires,
                               ratelimits=ratelimits, permissions=permissions, roles=roles,
                               lease=lease)
        plaintext = generate_key(self._key_prefix(keyspace_doc, prefix), nbytes)
        doc.update(hash=hash_key(plaintext), start=key_start(plaintext))
        if sealed:  # sealed first: a recoverable key never exists without its encrypted copy
            self.vault.seal(doc["id"], plaintext)
        if credit is not None:  # credits first: a key never exists without its credits
            self._write_credits(doc["id"], credit, now)
        self.store.insert("key", doc)
        return CreatedKey(doc["id"], plaintext)

    def _key_prefix(self, doc: Doc, wanted: str | None) -> str:
        """The prefix of a new key; the first key of an auto-prefixed API fixes it."""
        if doc.get("prefix_auto"):
            chosen = doc["prefix"] if wanted is None else wanted

            def claim(current: Doc | None) -> Doc:
                current = current or doc
                if not current.get("prefix_auto"):  # claimed by someone else just now
                    return current
                return {**current, "prefix": chosen, "prefix_auto": False}

            try:
                doc = self.store.modify("keyspace", doc["id"], claim)
            except ConflictError:
                raise ConflictError(f"prefix {chosen!r} is used by another API") from None
            self.store.announce(None, keyspaces=True)
        prefix = str(doc.get("prefix"))
        if wanted is not None and wanted != prefix:
            raise ValidationError(
                f"the keys of this API have the prefix {prefix!r}, not {wanted!r}: keys are "
                "routed by prefix, so each API has exactly one"
            )
        return prefix

    def reroll_key(self, key_id: str, *, expiration_ms: int | None) -> CreatedKey:
        """Replace a key with a new one of the same settings; the old one expires soon.

        The new key copies the old one's name, meta, expiry, enabled flag, identity,
        permissions, roles, lease and rate limits, and spends the same credits and
        rate-limit counters: while both are valid they share one balance and one set
        of counters, and the new key goes on with them. The old key then expires
        ``expiration_ms`` from now (0: at once; more gives clients a grace period to
        move over), never later than it already would; ``None`` leaves its expiry as
        it is.
        """
        if expiration_ms is not None and (
            isinstance(expiration_ms, bool) or not isinstance(expiration_ms, int)
            or not 0 <= expiration_ms <= MAX_EXPIRES
        ):
            raise ValidationError(f"expiration must be milliseconds from 0 to {MAX_EXPIRES}")
        old = self._key_doc(key_id)
        keyspace = self.get_keyspace(old["keyspace_id"])
        plaintext = generate_key(keyspace.prefix, keyspace.default_bytes)
        doc: Doc = {field: old[field] for field in _REROLL_COPIES if field in old}
        doc.update(id=new_id("key"), hash=hash_key(plaintext), start=key_start(plaintext),
                   created_at=self.now(), states_of=_states_owner(old),
                   ratelimits=[{**rl, "id": new_id("rl")} for rl in old.get("ratelimits") or ()])
        self._reseal(old, doc["id"], plaintext)
        self.store.insert("key", doc)
        if expiration_ms is not None:
            self._retire(old, expiration_ms)
        return CreatedKey(doc["id"], plaintext)

    def _retire(self, doc: Doc, grace_ms: int) -> None:
        """Make a key expire ``grace_ms`` from now (0: already), unless it expires sooner."""
        now = self.now()
        # expires is the last valid millisecond: 0 must reject the old key even within this one.
        retire_at = now + grace_ms if grace_ms else now - 1
        if doc.get("expires") is not None:
            retire_at = min(retire_at, doc["expires"])
        self._save_key(doc["id"], {"expires": retire_at})

    def _reseal(self, old: Doc, key_id: str, plaintext: str) -> None:
        """A rerolled key is recoverable when the key it replaces was (as Unkey rerolls):
        its new plaintext is sealed too, which needs the master key and the API's setting."""
        if self.vault.holds(old["id"]):
            _recoverable(self.get_keyspace(old["keyspace_id"]), True)
            self.vault.seal(key_id, plaintext)

    def get_key(self, key_id: str) -> KeyInfo:
        return self._key_info(self._key_doc(key_id))

    # -- recoverable keys -------------------------------------------------------------------

    def recover_key(self, key_id: str) -> str:
        """The plaintext of a recoverable key, opened from the vault with the master key.

        NotFoundError for a deleted key or one created without an encrypted copy;
        ConfigurationError without a master key; VaultError when the copy does not open
        (another master key, or changed data).
        """
        self._key_doc(key_id)
        plaintext = self.vault.open(key_id)
        if plaintext is None:
            raise NotFoundError(f"key {key_id} is not recoverable: it was created without an"
                                " encrypted copy (see create_key's recoverable)")
        return plaintext

    def rotate_master_key(self, new_master_key: bytes | str) -> int:
        """Re-wrap the vault's data keys under a new master key (32 bytes or their base64),
        in one atomic step; no ciphertext is rewritten and every key stays recoverable.

        This object uses the new key from then on; other processes need it too (a process
        still on the old one gets a VaultError when it seals or opens). Returns how many
        data keys were re-wrapped.
        """
        return self.vault.rotate_master_key(parse_master_key(new_master_key, "the new master key"))

    def rotate_data_key(self) -> int:
        """Start a new data-key version: keys sealed from now on use it, and the older
        versions stay in the vault so their keys stay recoverable. Returns the version."""
        return self.vault.rotate_data_key()

    def list_keys(
        self, api_id: str, *, limit: int = 100, cursor: str | None = None,
        external_id: str | None = None,
    ) -> KeyPage:
        """Keys of an API in id order, ``limit`` (1..100) at a time."""
        self._api_doc(api_id)
        if not 1 <= limit <= 100:
            raise ValidationError("limit must be from 1 to 100")
        where = ("api_id", api_id)
        if external_id is not None:
            identity = self.store.find("identity", "external_id", external_id)
            if identity is None:
                return KeyPage([], None)
            where = ("identity_id", identity["id"])
        docs = self.store.scan("key", where=where, after=cursor, limit=limit + 1)
        live = [d for d in docs[:limit] if d.get("deleted_at") is None and d["api_id"] == api_id]
        next_cursor = docs[limit - 1]["id"] if len(docs) > limit else None
        return KeyPage(self._key_infos(live), next_cursor)

    def update_key(
        self, key_id: str, *, name: str | _Unset | None = UNSET,
        meta: Mapping[str, Any] | _Unset | None = UNSET,
        expires: int | dt.datetime | _Unset | None = UNSET,
        enabled: bool | _Unset = UNSET, external_id: str | _Unset | None = UNSET,
        credits: Credits | int | _Unset | None = UNSET,
        ratelimits: Iterable[RatelimitConfig | Mapping[str, Any]] | _Unset | None = UNSET,
        permissions: Iterable[str] | _Unset = UNSET, roles: Iterable[str] | _Unset = UNSET,
        lease: int | _Unset | None = UNSET,
    ) -> KeyInfo:
        """Change a key: an omitted argument leaves its field alone, ``None`` clears it."""
        doc = self._key_doc(key_id)  # fail before any side effect if there is no such key
        given = {k: v for k, v in {
            "name": name, "meta": meta, "expires": expires, "ratelimits": ratelimits,
            "permissions": permissions, "roles": roles, "lease": lease}.items() if v is not UNSET}
        changes: Doc = {}
        self._apply_key_fields(changes, **given)
        if enabled is not UNSET:
            changes["enabled"] = bool(enabled)
        if external_id is not UNSET:
            changes["identity_id"] = self._identity_id_for(external_id)
        if credits is not UNSET:
            credit = check_credits(credits)
            self._write_credits(_states_owner(doc), credit or Credits(None), self.now())
            self._set_credits_limited(doc, credit is not None and credit.remaining is not None)
        return self._save_key(key_id, changes)

    def delete_key(self, key_id: str, *, permanent: bool = False) -> None:
        """Revoke a key at once; ``permanent`` also erases its hash, its encrypted copy and
        its credit state, unless another key still spends that (the other key of a reroll)."""
        doc = self._key_doc(key_id)
        if permanent:
            self.vault.forget(key_id)  # first: a crash never leaves a copy of a key gone
            self.store.delete("key", key_id)
            owner = _states_owner(doc)
            if not self._spenders(owner):
                state_key = credits_state_key(owner)
                self.store.transact([state_key], lambda _: ({state_key: None}, None))
        else:
            deleted_at = self.now()
            doc = self.store.modify("key", key_id, lambda d: {**_live_key(d, key_id),
                                                               "deleted_at": deleted_at})
        self.store.announce(doc["hash"])

    def update_credits(
        self, key_id: str, operation: Literal["set", "increment", "decrement"],
        value: int | None = None,
    ) -> Credits | None:
        """Change a key's credits atomically; ``set`` to ``None`` makes them unlimited.

        ``set`` clears the refill schedule (as Unkey does); ``decrement`` stops at 0.
        Returns the credits after the change (``None``: unlimited).
        """
        doc = self._key_doc(key_id)
        if operation not in ("set", "increment", "decrement"):
            raise ValidationError("operation must be 'set', 'increment' or 'decrement'")
        if value is not None and (not isinstance(value, int) or value < 0):
            raise ValidationError("value must be 0 or more")
        if operation != "set" and value is None:
            raise ValidationError(f"{operation} needs a value")
        now = self.now()
        state_key = credits_state_key(_states_owner(doc))

        def step(states: Mapping[str, Doc | None]) -> tuple[dict[str, Doc | None], Doc]:
            current = states[state_key] or new_credit_state(None, None, now)
            state = apply_refill(current, now)
            if operation == "set":
                state = new_credit_state(value, None, now)
            elif state["remaining"] is None:
                raise ValidationError(f"cannot {operation} unlimited credits; set them first")
            else:
                delta = value if operation == "increment" else -value  # type: ignore[operator]
                state = {**state, "remaining": max(0, state["remaining"] + delta)}
            return {state_key: state}, state

        state = self.store.transact([state_key], step)
        self._set_credits_limited(doc, state["remaining"] is not None)
        return credits_from_state(state)  # with its refill, as Unkey answers

    def update_refill(self, key_id: str, refill: Refill | None) -> Credits | None:
        """Change how a key's credits refill, keeping what remains: one atomic step with
        the spends, so a verify spending meanwhile is never undone. ``None`` stops refills.
        The new schedule counts from now: its first refill is its next moment."""
        state_key = credits_state_key(_states_owner(self._key_doc(key_id)))
        now = self.now()

        def step(states: Mapping[str, Doc | None]) -> tuple[dict[str, Doc | None], Doc]:
            state = apply_refill(states[state_key] or new_credit_state(None, None, now), now)
            if refill is not None:
                check_credits(Credits(state["remaining"], refill))
            state = {**state, "refill": refill.to_dict() if refill else None, "refilledAt": now}
            return {state_key: state}, state

        return credits_from_state(self.store.transact([state_key], step))

    def add_permissions(self, key_id: str, permissions: Iterable[str]) -> KeyInfo:
        """Grant ``permissions`` to a key (each created if missing), keeping those it has."""
        given = self._check_key_field("permissions", permissions)
        return self._change_key_set(key_id, "permissions", lambda have: have | set(given))

    def remove_permissions(self, key_id: str, permissions: Iterable[str]) -> KeyInfo:
        """Take ``permissions`` from a key (direct grants; its roles' stay), keeping the rest."""
        given = set(check_slugs(permissions))
        return self._change_key_set(key_id, "permissions", lambda have: have - given)

    def add_roles(self, key_id: str, roles: Iterable[str]) -> KeyInfo:
        """Give a key existing ``roles``, keeping those it has."""
        given = self._check_key_field("roles", roles)
        return self._change_key_set(key_id, "roles", lambda have: have | set(given))

    def remove_roles(self, key_id: str, roles: Iterable[str]) -> KeyInfo:
        """Take ``roles`` from a key, keeping the rest."""
        given = set(check_slugs(roles, "role"))
        return self._change_key_set(key_id, "roles", lambda have: have - given)

    def _change_key_set(self, key_id: str, field: str,
                        combine: Callable[[set[str]], set[str]]) -> KeyInfo:
        """Read, combine and write one list field of a key in one atomic step, so that
        two concurrent grants (or a grant and a removal) both stand."""
        now = self.now()

        def step(doc: Doc | None) -> Doc:
            live = _live_key(doc, key_id)
            return {**live, field: sorted(combine(set(live.get(field) or ()))), "updated_at": now}

        doc = self.store.modify("key", key_id, step)
        self.store.announce(doc["hash"])
        return self._key_info(doc)

    def _key_doc(self, key_id: str) -> Doc:
        return _live_key(self.store.get("key", key_id), key_id)

    def _save_key(self, key_id: str, changes: Doc) -> KeyInfo:
        """Apply ``changes`` to the stored key in one atomic read-modify-write, so a
        concurrent change to another field is never lost."""
        changes = {**changes, "updated_at": self.now()}
        doc = self.store.modify("key", key_id, lambda d: {**_live_key(d, key_id), **changes})
        self.store.announce(doc["hash"])
        return self._key_info(doc)

    def _apply_key_fields(self, doc: Doc, **fields: Any) -> None:
        for field, value in fields.items():
            doc[field] = self._check_key_field(field, value)

    def _check_key_field(self, field: str, value: Any) -> Any:
        if field == "name":
            return None if value is None else check_name(value, "key name")
        if field == "meta":
            return check_meta(value)
        if field == "expires":
            return check_expires(value)
        if field == "ratelimits":
            return [_with_id(rl).to_dict() for rl in check_ratelimits(value or ())]
        if field == "permissions":
            return self._ensure_permissions(check_slugs(value))
        if field == "lease":
            return None if value is None else check_lease(value)
        return self._existing_roles(check_slugs(value, "role"))

    def _write_credits(self, owner: str, credit: Credits, now: int) -> None:
        refill = credit.refill.to_dict() if credit.refill else None
        state = new_credit_state(credit.remaining, refill, now)
        key = credits_state_key(owner)
        self.store.transact([key], lambda _: ({key: state}, None))

    def _spenders(self, owner: str) -> list[Doc]:
        """The live keys spending the states of key ``owner``: itself and its rerolls."""
        docs = [self.store.get("key", owner), *self.store.scan_all("key", ("states_of", owner))]
        return [doc for doc in docs if doc is not None and doc.get("deleted_at") is None]

    def _set_credits_limited(self, doc: Doc, limited: bool) -> None:
        """Mark the keys spending ``doc``'s credits limited or not, all alike (each
        verify skips the credit state of a key marked unlimited)."""
        if doc.get("credits_limited") == limited:
            return  # and so are the others: they change together
        for spender in self._spenders(_states_owner(doc)):
            if spender.get("credits_limited") != limited:
                self._save_key(spender["id"], {"credits_limited": limited})

    def _key_info(self, doc: Doc) -> KeyInfo:
        return self._key_infos([doc])[0]

    def _key_infos(self, docs: Sequence[Doc]) -> list[KeyInfo]:
        states = self.store.read_states([name for d in docs for name in (
            credits_state_key(_states_owner(d)), last_used_state_key(d["id"]))])
        now = self.now()
        infos = []
        for doc in docs:
            state = states[credits_state_key(_states_owner(doc))]
            used = states[last_used_state_key(doc["id"])]
            identity = self.store.get("identity", doc["identity_id"]) if doc.get(
                "identity_id") else None
            infos.append(key_info_from_doc(doc, identity, state and apply_refill(state, now),
                                           used["at"] if used else None))
        return infos

    # -- analytics ------------------------------------------------------------------------

    def verifications(
        self, *, since: Moment, until: Moment | None = None, by: str = "hour",
        api_id: str | None = None, keyspace_id: str | None = None, key_id: str | None = None,
        identity: str | None = None, tags: Iterable[str] = (), codes: Iterable[str] = (),
    ) -> list[Bucket]:
        """Verifications per ``by`` bucket (``minute``, ``hour``, ``day``) from ``since``
        to ``until`` (default: now), counted by outcome code, every bucket present.

        ``since``/``until``: Unix ms, a datetime, or a timedelta meaning that long ago.
        ``identity`` is an identity's id or external id; ``tags`` must all be present.
        Events of this process still queued are written first, so they count.
        """
        start, end = self._range(since, until)
        check_range(start, end, by)
        where = _event_filter(api_id, keyspace_id, key_id, identity, tags, codes)
        return count_buckets(self._events(start, end, where), start, end, by)

    def top_keys(
        self, *, since: Moment, until: Moment | None = None, limit: int = 10,
        api_id: str | None = None, keyspace_id: str | None = None, identity: str | None = None,
        tags: Iterable[str] = (), codes: Iterable[str] = (),
    ) -> list[Top]:
        """The keys verified most in the range, with what they spent and the credits
        they have left now (``credits``: ``None`` when unlimited or deleted)."""
        start, end = self._range(since, until)
        where = _event_filter(api_id, keyspace_id, None, identity, tags, codes)
        ranked = top(self._events(start, end, where), "key", _check_limit(limit))
        owners = {}
        for entry in ranked:
            doc = self.store.get("key", entry.id)
            owners[entry.id] = credits_state_key(_states_owner(doc)) if doc else None
        states = self.store.read_states([name for name in owners.values() if name])
        now = self.now()
        out = []
        for entry in ranked:
            owner = owners[entry.id]
            state = states[owner] if owner else None
            remaining = apply_refill(state, now)["remaining"] if state else None
            out.append(dataclasses.replace(entry, credits=remaining))
        return out

    def top_identities(
        self, *, since: Moment, until: Moment | None = None, limit: int = 10,
        api_id: str | None = None, keyspace_id: str | None = None, tags: Iterable[str] = (),
        codes: Iterable[str] = (),
    ) -> list[Top]:
        """The identities whose keys were verified most in the range."""
        start, end = self._range(since, until)
        where = _event_filter(api_id, keyspace_id, None, None, tags, codes)
        return top(self._events(start, end, where), "identity", _check_limit(limit))

    def _events(self, since: int, until: int, where: EventFilter) -> list[Event]:
        events = self.verifier.events
        if events is not None:
            events.flush()
        return self.store.read_events(since, until, where)

    def _range(self, since: Moment, until: Moment | None) -> tuple[int, int]:
        now = self.now()
        end = now + 1 if until is None else _moment(until, now, "until")
        start = _moment(since, now, "since")
        return start - start % MINUTE_MS, end  # events are kept per minute: whole minutes

    # -- identities --------------------------------------------------------------------

    def create_identity(
        self, external_id: str, *, meta: Mapping[str, Any] | None = None,
        ratelimits: Iterable[RatelimitConfig | Mapping[str, Any]] = (),
    ) -> Identity:
        """Create an identity; its rate limits are shared by every key it owns."""
        doc: Doc = {
            "id": new_id("id"), "external_id": check_external_id(external_id),
            "meta": check_meta(meta),
            "ratelimits": [_with_id(rl).to_dict() for rl in check_ratelimits(ratelimits)],
            "created_at": self.now(),
        }
        try:
            self.store.insert("identity", doc)
        except ConflictError:
            raise ConflictError(f"identity {external_id!r} exists") from None
        return identity_from_doc(doc)

    def get_identity(self, identity: str) -> Identity:
        """An identity by its id or its externalId."""
        return identity_from_doc(self._identity_doc(identity))

    def list_identities(self) -> list[Identity]:
        return [identity_from_doc(doc) for doc in self.store.scan_all("identity")]

    def update_identity(
        self, identity: str, *, meta: Mapping[str, Any] | _Unset | None = UNSET,
        ratelimits: Iterable[RatelimitConfig | Mapping[str, Any]] | _Unset = UNSET,
    ) -> Identity:
        found = self._identity_doc(identity)
        changes: Doc = {}
        if meta is not UNSET:
            changes["meta"] = check_meta(meta)
        if ratelimits is not UNSET:
            changes["ratelimits"] = [_with_id(rl).to_dict() for rl in check_ratelimits(ratelimits)]
        doc = self.store.modify("identity", found["id"], lambda d: {**(d or found), **changes})
        self.store.announce(None)
        return identity_from_doc(doc)

    def delete_identity(self, identity: str) -> None:
        doc = self._identity_doc(identity)
        for key in self.store.scan_all("key", where=("identity_id", doc["id"])):
            self.store.replace("key", {**key, "identity_id": None})
        self.store.delete("identity", doc["id"])
        self.store.announce(None)

    def _identity_doc(self, identity: str) -> Doc:
        doc = self.store.get("identity", identity) or self.store.find(
            "identity", "external_id", identity)
        if doc is None:
            raise NotFoundError(f"no identity {identity!r}")
        return doc

    def _identity_id_for(self, external_id: str | None) -> str | None:
        """Find or create the identity of an externalId (as Unkey's createKey does)."""
        if external_id is None:
            return None
        doc = self.store.find("identity", "external_id", check_external_id(external_id))
        if doc is not None:
            return str(doc["id"])
        try:
            return self.create_identity(external_id).id
        except ConflictError:  # created by someone else just now
            return str(self._identity_doc(external_id)["id"])

    # -- roles and permissions -----------------------------------------------------------

    def create_permission(
        self, slug: str, *, name: str | None = None, description: str | None = None
    ) -> Permission:
        check_slugs([slug])
        doc: Doc = {"id": new_id("perm"), "slug": slug, "name": name or slug,
                    "description": description}
        try:
            self.store.insert("permission", doc)
        except ConflictError:
            raise ConflictError(f"permission {slug!r} exists") from None
        return permission_from_doc(doc)

    def get_permission(self, permission: str) -> Permission:
        """A permission by its slug or its id."""
        doc = self.store.find("permission", "slug", permission) or self.store.get(
            "permission", permission)
        if doc is None:
            raise NotFoundError(f"no permission {permission!r}")
        return permission_from_doc(doc)

    def list_permissions(self) -> list[Permission]:
        return [permission_from_doc(doc) for doc in self.store.scan_all("permission")]

    def delete_permission(self, slug: str) -> None:
        doc = self.store.find("permission", "slug", slug)
        if doc is None:
            raise NotFoundError(f"no permission {slug!r}")
        for kind in ("role", "key"):
            for item in self.store.scan_all(kind):
                if slug in item.get("permissions", ()):
                    item["permissions"] = [p for p in item["permissions"] if p != slug]
                    self.store.replace(kind, item)
        self.store.delete("permission", doc["id"])
        self.store.announce(None)

    def create_role(
        self, name: str, *, permissions: Iterable[str] = (), description: str | None = None
    ) -> Role:
        """A named set of permissions; keys with the role have them all."""
        doc: Doc = {"id": new_id("role"), "name": check_slugs([name], "role")[0],
                    "description": description,
                    "permissions": self._ensure_permissions(check_slugs(permissions))}
        try:
            self.store.insert("role", doc)
        except ConflictError:
            raise ConflictError(f"role {name!r} exists") from None
        return role_from_doc(doc)

    def get_role(self, name: str) -> Role:
        doc = self.store.find("role", "name", name) or self.store.get("role", name)
        if doc is None:
            raise NotFoundError(f"no role {name!r}")
        return role_from_doc(doc)

    def list_roles(self) -> list[Role]:
        return [role_from_doc(doc) for doc in self.store.scan_all("role")]

    def update_role(self, name: str, *, permissions: Iterable[str]) -> Role:
        found = self.store.find("role", "name", name)
        if found is None:
            raise NotFoundError(f"no role {name!r}")
        slugs = self._ensure_permissions(check_slugs(permissions))
        doc = self.store.modify("role", found["id"], lambda d: {**(d or found), "permissions": slugs})
        self.store.announce(None)
        return role_from_doc(doc)

    def delete_role(self, name: str) -> None:
        doc = self.store.find("role", "name", name)
        if doc is None:
            raise NotFoundError(f"no role {name!r}")
        for key in self.store.scan_all("key"):
            if name in key.get("roles", ()):
                self.store.replace("key", {**key, "roles": [r for r in key["roles"] if r != name]})
        self.store.delete("role", doc["id"])
        self.store.announce(None)

    def _ensure_permissions(self, slugs: list[str]) -> list[str]:
        for slug in slugs:
            if self.store.find("permission", "slug", slug) is None:
                with contextlib.suppress(ConflictError):  # created concurrently: fine
                    self.create_permission(slug)
        return slugs

    def _existing_roles(self, names: list[str]) -> list[str]:
        missing = [n for n in names if self.store.find("role", "name", n) is None]
        if missing:
            raise NotFoundError(f"no such role: {', '.join(missing)}; create roles first")
        return names


_PREFIX_ALPHABET = "abcdefghijkmnopqrstuvwxyz23456789"
# What a rerolled key takes over from the key it replaces (never its hash or plaintext).
_REROLL_COPIES = ("api_id", "keyspace_id", "name", "meta", "expires", "enabled", "identity_id",
                  "permissions", "roles", "lease", "credits_limited")


#: A point in time for the analytics queries: Unix ms, a datetime, or a timedelta ago.
Moment = int | dt.datetime | dt.timedelta


def _moment(value: Moment, now: int, name: str) -> int:
    if isinstance(value, dt.timedelta):
        return now - int(value.total_seconds() * 1000)
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            raise ValidationError(f"{name} must be an aware datetime (with a time zone)")
        return int(value.timestamp() * 1000)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValidationError(f"{name} must be Unix ms, a datetime or a timedelta, not {value!r}")
    return value


def _check_limit(limit: int) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1000:
        raise ValidationError("limit must be from 1 to 1000")
    return limit


def _event_filter(api_id: str | None, keyspace_id: str | None, key_id: str | None,
                  identity: str | None, tags: Iterable[str], codes: Iterable[str]) -> EventFilter:
    tags, codes = (tags,) if isinstance(tags, str) else tuple(tags), (
        (codes,) if isinstance(codes, str) else tuple(codes))
    unknown = [c for c in codes if c not in CODES]
    if unknown:
        raise ValidationError(f"unknown outcome code: {', '.join(map(str, unknown))}")
    return EventFilter(api_id, keyspace_id, key_id, identity, tags, codes)


def _states_owner(doc: Doc) -> str:
    """The key whose credits and key-scoped rate-limit counters ``doc`` spends."""
    return str(doc.get("states_of") or doc["id"])


def _recoverable(keyspace: Keyspace, wanted: bool | None) -> bool:
    """Whether a new key of ``keyspace`` is sealed: as asked, by default as the keyspace says."""
    if wanted is None:
        return keyspace.store_encrypted_keys
    if wanted and not keyspace.store_encrypted_keys:
        raise ValidationError(
            f"API {keyspace.api_id} does not store encrypted keys, so its keys cannot be recoverable;"
            " turn it on with update_api(api_id, store_encrypted_keys=True)")
    return bool(wanted)


def _live_key(doc: Doc | None, key_id: str) -> Doc:
    if doc is None or doc.get("deleted_at") is not None:
        raise NotFoundError(f"no key {key_id!r}")
    return doc


def _with_id(config: RatelimitConfig) -> RatelimitConfig:
    if config.id:
        return config
    return RatelimitConfig(config.name, config.limit, config.duration, config.auto_apply,
                           new_id("rl"))
