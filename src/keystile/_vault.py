"""Recoverable keys: a key's plaintext sealed with AES-256-GCM, under envelope encryption.

The master key (32 bytes, from ``Keystile(master_key=...)``, ``KEYSTILE_MASTER_KEY``
or ``KEYSTILE_MASTER_KEY_FILE``; never from the store) wraps versioned data keys,
and a data key seals the plaintext of each recoverable key::

    master key  --wraps-->  data key v1, v2, ...   one "vault" document, "keyring"
    data key vN --seals-->  a key's plaintext      one "encrypted_key" document per key,
                            (key id as associated   recording N
                            data)

Rotating the master key re-wraps the few data keys in one atomic step and rewrites no
ciphertext. Rotating the data key starts version N+1 for new keys; older versions stay
in the keyring, so their ciphertexts stay readable. Verification never reads any of it.

The crypto is pure functions (:func:`seal`, :func:`unseal`, :func:`wrap_data_key`,
:func:`unwrap_data_key`); :class:`Vault` adds the store reads and writes.

>>> master = bytes(32)
>>> data_key = unwrap_data_key(master, 1, wrap_data_key(master, 1, bytes(range(32)), now=0))
>>> unseal(data_key, "key_1", seal(data_key, 1, "key_1", "sk_live_abc", now=0))
'sk_live_abc'
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Callable, Mapping
from typing import Any, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ._errors import ConfigurationError, VaultError
from .stores import Store

__all__ = [
    "KEYRING",
    "MASTER_KEY_ENV",
    "MASTER_KEY_FILE_ENV",
    "Vault",
    "master_key_from",
    "parse_master_key",
    "read_master_key_file",
    "seal",
    "unseal",
    "unwrap_data_key",
    "wrap_data_key",
]

Doc = dict[str, Any]

MASTER_KEY_ENV: Final = "KEYSTILE_MASTER_KEY"
MASTER_KEY_FILE_ENV: Final = "KEYSTILE_MASTER_KEY_FILE"
#: The id of the one "vault" document: the data keys, each wrapped by the master key.
KEYRING: Final = "keyring"
_NONCE_BYTES: Final = 12  # AES-GCM's standard nonce; random, so at most ~2**32 seals per data key
_NO_MASTER_KEY: Final = (
    f"recoverable keys need a master key: set {MASTER_KEY_ENV} to the base64 of 32 random bytes"
    f" (e.g. `openssl rand -base64 32`), or {MASTER_KEY_FILE_ENV} to a file holding it, or pass"
    " Keystile(master_key=...)"
)


# -- the master key ---------------------------------------------------------------------------


def parse_master_key(value: bytes | str, source: str) -> bytes:
    """32 raw bytes, or their base64 (text or bytes); the error names ``source``, never the value."""
    if isinstance(value, bytes) and len(value) == 32:
        return value
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise ConfigurationError(
            f"{source} must be the base64 of 32 random bytes (e.g. `openssl rand -base64 32`)")
    return raw


def read_master_key_file(path: str, source: str) -> bytes:
    """The master key held (as base64) in the file at ``path``."""
    try:
        with open(path, encoding="ascii") as file:
            text = file.read()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not ASCII base64"
        raise ConfigurationError(f"{source} {path!r} cannot be read: {reason}") from None
    return parse_master_key(text, f"the file {path!r} of {source}")


def master_key_from(option: bytes | str | None, environ: Mapping[str, str] = os.environ) -> bytes | None:
    """The master key: ``option`` if given, else ``KEYSTILE_MASTER_KEY``, else the file
    ``KEYSTILE_MASTER_KEY_FILE`` names; ``None`` when there is none (keys are then not
    recoverable, and verification works as ever)."""
    if option is not None:
        return parse_master_key(option, "master_key")
    value, path = environ.get(MASTER_KEY_ENV), environ.get(MASTER_KEY_FILE_ENV)
    if value and path:
        raise ConfigurationError(f"set {MASTER_KEY_ENV} or {MASTER_KEY_FILE_ENV}, not both")
    if value:
        return parse_master_key(value, MASTER_KEY_ENV)
    if path:
        return read_master_key_file(path, MASTER_KEY_FILE_ENV)
    return None


# -- the crypto, without I/O ------------------------------------------------------------------------


def wrap_data_key(master: bytes, version: int, data_key: bytes, *, now: int) -> Doc:
    """A keyring entry: ``data_key`` sealed by the master key, bound to its ``version``."""
    nonce = os.urandom(_NONCE_BYTES)
    wrapped = AESGCM(master).encrypt(nonce, data_key, _data_key_aad(version))
    return {"nonce": _b64(nonce), "wrapped": _b64(wrapped), "created_at": now}


def unwrap_data_key(master: bytes, version: int, entry: Mapping[str, Any]) -> bytes:
    """The data key of a keyring entry; VaultError when the master key does not open it."""
    try:
        return AESGCM(master).decrypt(_unb64(entry["nonce"]), _unb64(entry["wrapped"]),
                                      _data_key_aad(version))
    except (InvalidTag, KeyError, ValueError):
        raise VaultError(
            f"the master key does not open data key v{version} of the vault: is it the master key"
            f" this store's vault was made with ({MASTER_KEY_ENV}; after a rotation, the new one)?"
        ) from None


def seal(data_key: bytes, version: int, key_id: str, plaintext: str, *, now: int) -> Doc:
    """The "encrypted_key" document of ``key_id``: its plaintext under data key ``version``,
    with the key id as associated data (a ciphertext moved to another key does not open)."""
    nonce = os.urandom(_NONCE_BYTES)
    ciphertext = AESGCM(data_key).encrypt(nonce, plaintext.encode("utf-8"), key_id.encode("utf-8"))
    return {"id": key_id, "version": version, "nonce": _b64(nonce),
            "ciphertext": _b64(ciphertext), "created_at": now}


def unseal(data_key: bytes, key_id: str, sealed: Mapping[str, Any]) -> str:
    """The plaintext of a :func:`seal` answer; VaultError if it was changed or is another key's."""
    try:
        plaintext = AESGCM(data_key).decrypt(_unb64(sealed["nonce"]), _unb64(sealed["ciphertext"]),
                                             key_id.encode("utf-8"))
        return plaintext.decode("utf-8")
    except (InvalidTag, KeyError, ValueError):
        raise VaultError(
            f"the encrypted copy of key {key_id} does not open: it was changed in the store, or"
            " belongs to another key") from None


def _data_key_aad(version: int) -> bytes:
    return f"keystile vault data key v{version}".encode()


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)  # binascii.Error is a ValueError


# -- the vault in a store ---------------------------------------------------------------------------


class Vault:
    """The data keys and sealed plaintexts of one store, opened with one master key.

    Without a master key, whatever needs one raises a ConfigurationError naming
    ``KEYSTILE_MASTER_KEY``; the rest (is a key recoverable? forget a key) still works.
    """

    def __init__(self, store: Store, master_key: bytes | None, *, now: Callable[[], int]) -> None:
        self.store = store
        self._master_key = master_key
        self.now = now

    def __repr__(self) -> str:  # never the master key
        return f"Vault({self.store!r}, master key {'set' if self.configured else 'not set'})"

    @property
    def configured(self) -> bool:
        """Whether a master key was given, so keys can be sealed and opened."""
        return self._master_key is not None

    def require_master_key(self) -> None:
        """Raise the ConfigurationError naming ``KEYSTILE_MASTER_KEY`` if there is none."""
        self._master()

    def _master(self) -> bytes:
        if self._master_key is None:
            raise ConfigurationError(_NO_MASTER_KEY)
        return self._master_key

    def holds(self, key_id: str) -> bool:
        """Whether ``key_id`` has an encrypted copy (it was created recoverable)."""
        return self.store.get("encrypted_key", key_id) is not None

    def seal(self, key_id: str, plaintext: str) -> None:
        """Keep ``plaintext`` sealed under the current data key (the first use makes it)."""
        master = self._master()
        ring = self.store.get("vault", KEYRING)
        if ring is None:
            ring = self.store.modify("vault", KEYRING, lambda doc: doc or self._new_keyring(master))
        version = int(ring["current"])
        data_key = unwrap_data_key(master, version, ring["data_keys"][str(version)])
        self.store.insert("encrypted_key", seal(data_key, version, key_id, plaintext, now=self.now()))

    def open(self, key_id: str) -> str | None:
        """The plaintext of ``key_id``, or ``None`` if it has no encrypted copy."""
        sealed = self.store.get("encrypted_key", key_id)
        if sealed is None:
            return None
        master = self._master()
        version = int(sealed.get("version", 0))
        ring = self.store.get("vault", KEYRING) or {}
        entry = (ring.get("data_keys") or {}).get(str(version))
        if entry is None:
            raise VaultError(f"the vault has no data key v{version}, which sealed key {key_id}")
        return unseal(unwrap_data_key(master, version, entry), key_id, sealed)

    def forget(self, key_id: str) -> None:
        """Erase the encrypted copy of ``key_id`` (if any)."""
        self.store.delete("encrypted_key", key_id)

    def rotate_master_key(self, new_master_key: bytes) -> int:
        """Re-wrap every data key under ``new_master_key`` in one atomic step; ciphertexts
        stay as they are. Returns how many data keys were re-wrapped."""
        old = self._master()
        now = self.now()

        def rewrap(doc: Doc | None) -> Doc:
            if doc is None:  # checked below, and a keyring is never deleted; but to be sure
                return self._new_keyring(new_master_key)
            entries = {version: wrap_data_key(new_master_key, int(version),
                                              unwrap_data_key(old, int(version), entry), now=now)
                       for version, entry in doc["data_keys"].items()}
            return {**doc, "data_keys": entries, "master_rotated_at": now}

        if self.store.get("vault", KEYRING) is not None:
            ring = self.store.modify("vault", KEYRING, rewrap)
            count = len(ring["data_keys"])
        else:
            count = 0  # nothing sealed yet: the first seal wraps with the new key
        self._master_key = new_master_key
        return count

    def rotate_data_key(self) -> int:
        """Start a new data-key version for the keys sealed from now on; returns it."""
        master = self._master()
        now = self.now()

        def add(doc: Doc | None) -> Doc:
            if doc is None:
                return self._new_keyring(master)
            current = int(doc["current"])
            # Never wrap a data key with a master key the rest of the keyring is not under.
            unwrap_data_key(master, current, doc["data_keys"][str(current)])
            version = max(int(v) for v in doc["data_keys"]) + 1
            entry = wrap_data_key(master, version, AESGCM.generate_key(256), now=now)
            return {**doc, "current": version, "data_keys": {**doc["data_keys"], str(version): entry}}

        return int(self.store.modify("vault", KEYRING, add)["current"])

    def _new_keyring(self, master: bytes) -> Doc:
        entry = wrap_data_key(master, 1, AESGCM.generate_key(256), now=self.now())
        return {"id": KEYRING, "current": 1, "data_keys": {"1": entry}}
