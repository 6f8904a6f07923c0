"""Stores, chosen by URL: ``memory://``, ``sqlite:///path.db``, ``redis://host:port/db``.

>>> store = open_store("memory://")
"""

from __future__ import annotations

import os
from collections.abc import Callable

from .._errors import ConfigurationError
from ._base import AsyncStore, Store
from .memory import MemoryStore
from .sqlite import SQLiteStore

__all__ = [
    "DEFAULT_STORE_URL",
    "AsyncStore",
    "MemoryStore",
    "SQLiteStore",
    "Store",
    "check_store_url",
    "default_store_url",
    "open_store",
]

DEFAULT_STORE_URL = "sqlite:///./keystile.db"

def _redis(url: str) -> Store:
    from .redis import RedisStore  # imported when used: redis-py is an extra

    return RedisStore(url)


_SCHEMES: dict[str, Callable[[str], Store]] = {
    "memory": MemoryStore,
    "sqlite": SQLiteStore,
    "redis": _redis,
    "rediss": _redis,
}


def default_store_url() -> str:
    """``KEYSTILE_STORE`` if set, else ``sqlite:///./keystile.db`` (read at call time)."""
    return os.environ.get("KEYSTILE_STORE") or DEFAULT_STORE_URL


def open_store(url: str | None = None) -> Store:
    """Build the store a URL names; ``None`` means :func:`default_store_url`."""
    url = url or default_store_url()
    return _factory(url)(url)


def check_store_url(url: str) -> None:
    """Raise :class:`ConfigurationError` for a URL no store can open, without opening it."""
    _factory(url)


def _factory(url: str) -> Callable[[str], Store]:
    scheme, sep, _ = url.partition("://")
    if not sep:
        raise ConfigurationError(f"a store URL looks like sqlite:///keys.db, not {url!r}")
    factory = _SCHEMES.get(scheme)
    if factory is None and scheme in ("unkey+http", "unkey+https"):
        raise ConfigurationError(
            f"{scheme}:// is the remote backend: it verifies keys (the middleware, the decorator)"
            " but holds no store here, so keys are managed and analytics read where they live:"
            " with Unkey's API, or with keystile on the server's own --store")
    if factory is None:
        known = ", ".join(f"{name}://" for name in sorted(_SCHEMES))
        raise ConfigurationError(f"unknown store scheme {scheme!r} in {url!r}; known: {known}")
    return factory
