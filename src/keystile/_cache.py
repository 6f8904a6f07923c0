"""The process-local record cache in front of every store.

A ``cachetools.TLRUCache`` from key hash to record (or to a negative marker for a
hash that does not exist), each entry with its own lifetime: records live
``ttl`` seconds but never past the key's expiry, negative entries ``negative_ttl``.
Concurrent misses for one hash share one store read (single flight), in threads
and in asyncio tasks alike. Only static records are cached: credits and rate-limit
counters are always settled in the store.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from typing import Any, Final

from cachetools import TLRUCache

from ._errors import ConfigurationError
from ._models import KeyRecord

__all__ = ["MISSING", "RecordCache"]

MISSING: Final = object()  # returned by RecordCache.get on a miss
_NEGATIVE: Final = object()  # stored for hashes the store does not have


class RecordCache:
    """Hash -> :class:`KeyRecord` or ``None`` (known not to exist)."""

    def __init__(
        self, *, maxsize: int = 100_000, ttl: float = 10.0, negative_ttl: float = 2.0,
        clock: Callable[[], int],
    ) -> None:
        if maxsize < 1 or ttl < 0 or negative_ttl < 0:
            raise ConfigurationError("cache maxsize must be >= 1 and lifetimes >= 0")
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self._lock = threading.Lock()
        self._cache: TLRUCache[str, Any] = TLRUCache(
            maxsize=maxsize, ttu=self._ttu, timer=lambda: clock() / 1000.0
        )
        self._inflight: dict[str, Future[KeyRecord | None]] = {}
        self._ainflight: dict[str, asyncio.Future[KeyRecord | None]] = {}
        self.hits = 0
        self.misses = 0

    @property
    def enabled(self) -> bool:
        return self.ttl > 0

    def _ttu(self, _key: str, value: Any, now: float) -> float:
        if value is _NEGATIVE:
            return now + self.negative_ttl
        expires: int | None = value.expires
        lifetime = now + self.ttl
        return lifetime if expires is None else min(lifetime, expires / 1000.0)

    def __len__(self) -> int:
        return len(self._cache)

    def get(self, key_hash: str) -> Any:
        """The cached record, ``None`` for a known-missing hash, or :data:`MISSING`."""
        with self._lock:
            value = self._cache.get(key_hash, MISSING)
        if value is MISSING:
            self.misses += 1
            return MISSING
        self.hits += 1
        return None if value is _NEGATIVE else value

    def put(self, key_hash: str, record: KeyRecord | None) -> None:
        if not self.enabled or (record is None and self.negative_ttl <= 0):
            return
        with self._lock:
            self._cache[key_hash] = _NEGATIVE if record is None else record

    def evict(self, key_hash: str) -> None:
        with self._lock:
            self._cache.pop(key_hash, None)

    def clear(self) -> None:
        with self._lock:
            self._cache.clear()

    # -- single flight ----------------------------------------------------------------

    def load(self, key_hash: str, loader: Callable[[str], KeyRecord | None]) -> KeyRecord | None:
        """Look up ``key_hash``; on a miss, one thread loads it while the others wait."""
        cached = self.get(key_hash)
        if cached is not MISSING:
            return cached  # type: ignore[no-any-return]
        with self._lock:
            flight = self._inflight.get(key_hash)
            leader = flight is None
            if flight is None:
                flight = self._inflight[key_hash] = Future()
        if not leader:
            return flight.result()
        try:
            record = loader(key_hash)
            self.put(key_hash, record)
            flight.set_result(record)
            return record
        except BaseException as exc:
            flight.set_exception(exc)
            raise
        finally:
            with self._lock:
                self._inflight.pop(key_hash, None)

    async def load_async(
        self, key_hash: str, loader: Callable[[str], Awaitable[KeyRecord | None]]
    ) -> KeyRecord | None:
        """Like :meth:`load` for asyncio tasks of one event loop."""
        cached = self.get(key_hash)
        if cached is not MISSING:
            return cached  # type: ignore[no-any-return]
        flight = self._ainflight.get(key_hash)
        if flight is not None and flight.get_loop() is asyncio.get_running_loop():
            return await asyncio.shield(flight)
        flight = self._ainflight[key_hash] = asyncio.get_running_loop().create_future()
        try:
            record = await loader(key_hash)
            self.put(key_hash, record)
            flight.set_result(record)
            return record
        except BaseException as exc:
            flight.set_exception(exc)
            flight.exception()  # followers may be none: mark it retrieved
            raise
        finally:
            if self._ainflight.get(key_hash) is flight:
                del self._ainflight[key_hash]
