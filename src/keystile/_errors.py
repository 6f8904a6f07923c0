"""The exceptions keystile raises.

A verification outcome is never an exception: it is a :class:`VerifyResult` with a
code. Exceptions are for misuse and for failures around the verification::

    KeystileError
    ├── ConfigurationError        bad options, raised at construction
    ├── PermissionQueryError      a permission query that does not parse (also a ValueError)
    ├── UnknownRatelimitError     a verify names a rate limit the key does not have
    ├── NotFoundError             management: no such API, key, identity, role, permission
    ├── ConflictError             management: the prefix, externalId, role or slug exists
    ├── ProtectedError            management: the API has delete protection
    ├── ValidationError           management: an argument out of range (also a ValueError)
    ├── VaultError                a recoverable key does not open: wrong master key, changed data
    └── StoreError                the store failed
        └── StoreUnavailableError the store cannot answer now (down, locked, timed out)
"""

from __future__ import annotations

__all__ = [
    "ConfigurationError",
    "ConflictError",
    "KeystileError",
    "NotFoundError",
    "PermissionQueryError",
    "ProtectedError",
    "StoreError",
    "StoreUnavailableError",
    "UnknownRatelimitError",
    "ValidationError",
    "VaultError",
]


class KeystileError(Exception):
    """The root of every exception keystile raises."""


class ConfigurationError(KeystileError):
    """An option or argument that cannot work; raised when the object is built."""


class PermissionQueryError(KeystileError, ValueError):
    """A permission query that does not parse; ``position`` is the 0-based offset."""

    def __init__(self, message: str, *, query: str, position: int) -> None:
        super().__init__(f"{message} at position {position} in permission query {query!r}")
        self.reason = message
        self.query = query
        self.position = position


class UnknownRatelimitError(KeystileError):
    """A verify named a rate limit that neither the key nor its identity has."""

    def __init__(self, name: str) -> None:
        super().__init__(f"rate limit {name!r} is not configured on this key or its identity")
        self.name = name


class NotFoundError(KeystileError):
    """A management call referred to something that does not exist."""


class ConflictError(KeystileError):
    """A management call would create a duplicate of something unique."""


class ProtectedError(KeystileError):
    """A delete refused because the resource has delete protection."""


class ValidationError(KeystileError, ValueError):
    """A management argument outside its allowed range or shape."""


class VaultError(KeystileError):
    """The encrypted copy of a key, or a data key of the vault, does not open: the master
    key is not the one the vault was made with, or the stored data was changed."""


class StoreError(KeystileError):
    """The store failed to do what was asked."""


class StoreUnavailableError(StoreError):
    """The store cannot answer now: unreachable, locked beyond the timeout, or closed."""
