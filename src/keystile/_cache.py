"""The process-local record cache in front of every store.

A bounded ``cachetools.FIFOCache`` from the key's SHA-256 digest to an
:class:`Entry`: the record (or ``None`` for a hash the store does not have) with
its own deadline: records live ``ttl`` seconds but never past the key's expiry,
negative entries ``negative_ttl``. The hot path is one lookup and one comparison
with the stored deadline; expired entries are simply replaced on the next load.
Concurrent misses for one hash share one store read (single flight), in threads
and in asyncio tasks alike. Only static records are cached: credits and rate-limit
counters are always settled in the store.

Beside the entries, ``answers`` remembers the last answer given to a key:
``key bytes -> (deadline, request, answer)``. A caller holding the same request
object gets the same result with one plain dict lookup and one comparison, before
any parsing or hashing; a key only gets an answer after it passed every check, so a
hit means these very bytes were checked before. For a request that spends (credits,
rate limits), the answer is the entry and the plan it passed the checks with: the
next verify goes straight to settling them in the store. Every eviction drops the key's
answer, and the verifier drops them all whenever it reloads the keyspace map, so a
key's bytes stay in this table no longer than that interval after its last use.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Protocol

from cachetools import FIFOCache

from ._errors import ConfigurationError
from ._forks import on_fork
from ._models import KeyRecord, VerifyRequest, VerifyResult

if TYPE_CHECKING:
    from ._decide import Plan
    from ._verify import Step, Verifier

__all__ = ["Answer", "Entry", "RecordCache"]

class Remembered(Protocol):
    """What a spending request is remembered by (the entry it passed every check on,
    and the plan of credits and limits it spends each time): its next verify is the
    spending alone."""

    def spend(self, verifier: Verifier, request: VerifyRequest, now: int) -> Step:
        """The verify's first step (a result is not recorded yet)."""

    def step(self, verifier: Verifier, request: VerifyRequest, now: int) -> Step:
        """The verify's first step, a result recorded (as ``Verifier.start``)."""


Answer = tuple[int, VerifyRequest, "VerifyResult | Remembered"]
"""``(deadline, request, answer)``: the result ``request`` got (static: the same each
time), or what it settles each time; good until ``deadline``."""


class Entry:
    """A cached record (``None``: known not to exist) and its deadline (clock ms).

    ``plans`` keeps the :class:`~keystile._decide.Plan` each request object needs of
    the record (by the request's id, with the request itself so the id stays its
    own), made once for the entry's life instead of once per verify.
    """

    __slots__ = ("deadline", "plans", "record")

    def __init__(self, record: KeyRecord | None, deadline: int) -> None:
        self.record = record
        self.deadline = deadline
        self.plans: dict[int, tuple[VerifyRequest, Plan]] | None = None


class RecordCache:
    """Digest -> :class:`Entry`, bounded to ``maxsize`` entries (the oldest go first)."""

    def __init__(
        self, *, maxsize: int = 100_000, ttl: float = 10.0, negative_ttl: float = 2.0,
        clock: Callable[[], int],
    ) -> None:
        if maxsize < 1 or ttl < 0 or negative_ttl < 0:
            raise ConfigurationError("cache maxsize must be >= 1 and lifetimes >= 0")
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.enabled = ttl > 0
        self._ttl_ms = int(ttl * 1000)
        self._negative_ms = int(negative_ttl * 1000)
        self._clock = clock
        self._lock = threading.Lock()
        # FIFO, not LRU: a read then costs one lookup and no bookkeeping; entries are
        # re-inserted on every refresh anyway, so the oldest is the one to drop.
        self._cache: FIFOCache[bytes, Entry] = FIFOCache(maxsize=maxsize)
        self._inflight: dict[bytes, Future[Entry]] = {}
        self._ainflight: dict[bytes, asyncio.Task[Entry]] = {}
        self._maxsize = maxsize
        # Read without the lock on the hot path; written and cleared under it.
        self.answers: dict[bytes, Answer] = {}
        self._answered: dict[bytes, bytes] = {}  # digest -> the key bytes of its answer
        # Bumped by every eviction: a load that began before one must not cache what it read.
        self._generation = 0
        self.hits = 0
        self.misses = 0
        on_fork(self)

    def _after_fork(self) -> None:
        # The parent's loading threads and tasks are not in the child: their lock and
        # loads are void (a waiter would wait for good).
        self._lock = threading.Lock()
        self._inflight = {}
        self._ainflight = {}

    def __len__(self) -> int:
        return len(self._cache)

    def fresh(self, digest: bytes, now: int) -> Entry | None:
        """The entry for ``digest`` if it is still fresh at ``now``; counts a hit or a miss."""
        try:
            # Lock-free read: a plain dict lookup under the GIL; a concurrent
            # eviction shows up as a KeyError, that is, as a miss.
            entry = self._cache[digest]
        except KeyError:
            self.misses += 1
            return None
        if now < entry.deadline:
            self.hits += 1
            return entry
        self.misses += 1
        return None

    def stale(self, digest: bytes, now: int, max_age_ms: int) -> Entry | None:
        """The entry for ``digest`` even past its deadline, up to ``max_age_ms`` past it
        (for the ``open_cached`` fail policy: only while the store cannot answer)."""
        entry = self._cache.get(digest)
        if entry is not None and now < entry.deadline + max_age_ms:
            return entry
        return None

    def get(self, key_hash: str) -> KeyRecord | None:
        """The fresh record cached for a stored hash (``base64(sha256)``), if any."""
        entry = self.fresh(_digest(key_hash), self._clock())
        return entry.record if entry is not None else None

    def put(self, digest: bytes, record: KeyRecord | None, now: int,
            generation: int | None = None) -> Entry:
        """Cache ``record`` (when caching is on) and return its entry.

        With ``generation`` (read before ``record`` was loaded), the entry is cached
        only if nothing was evicted since: a record read before an update is stale.
        """
        if record is None:
            entry = Entry(None, now + self._negative_ms)
        else:
            deadline = now + self._ttl_ms
            entry = Entry(record, deadline if record.expires is None else min(deadline, record.expires + 1))
        if self.enabled and entry.deadline > now:
            with self._lock:
                if generation is None or generation == self._generation:
                    self._cache[digest] = entry
        return entry

    def remember(self, key: bytes, digest: bytes, entry: Entry, request: VerifyRequest,
                 result: VerifyResult | Remembered, until: Callable[[], int]) -> None:
        """Remember ``result`` as the answer to ``request`` for ``key`` (whose digest
        is ``digest``) while ``entry`` is the cached one, and no later than ``until()``
        (read under the lock, so a concurrent change that clears the answers cannot be
        overtaken)."""
        with self._lock:
            if self._cache.get(digest) is not entry:
                return  # evicted meanwhile, or never cached: the answer may be stale
            deadline = min(entry.deadline, until())
            if deadline <= 0:
                return
            if len(self.answers) >= self._maxsize:
                self.answers.clear()
                self._answered.clear()
            self.answers[key] = (deadline, request, result)
            self._answered[digest] = key

    def forget_answers(self) -> None:
        """Drop every remembered answer (the keyspaces changed, or were reloaded)."""
        with self._lock:
            self.answers.clear()
            self._answered.clear()

    def evict(self, key_hash: str) -> None:
        """Drop the entry of a stored hash (``base64(sha256(key))``)."""
        digest = _digest(key_hash)
        with self._lock:
            self._generation += 1
            self._cache.pop(digest, None)
            key = self._answered.pop(digest, None)
            if key is not None:
                self.answers.pop(key, None)
            # Misses from now on load afresh rather than join a load begun before the change.
            self._inflight.pop(digest, None)
            self._ainflight.pop(digest, None)

    def clear(self) -> None:
        with self._lock:
            self._generation += 1
            self._cache.clear()
            self.answers.clear()
            self._answered.clear()
            self._inflight.clear()
            self._ainflight.clear()

    # -- single flight ----------------------------------------------------------------

    def load(self, digest: bytes, loader: Callable[[], KeyRecord | None], now: int) -> Entry:
        """Load a missed digest; one thread calls ``loader`` while the others wait for it."""
        with self._lock:
            flight = self._inflight.get(digest)
            leader = flight is None
            if flight is None:
                flight = self._inflight[digest] = Future()
        if not leader:
            return flight.result()
        generation = self._generation
        try:
            entry = self.put(digest, loader(), now, generation)
            flight.set_result(entry)
            return entry
        except BaseException as exc:
            flight.set_exception(exc)
            raise
        finally:
            with self._lock:
                if self._inflight.get(digest) is flight:
                    del self._inflight[digest]

    async def load_async(
        self, digest: bytes, loader: Callable[[], Awaitable[KeyRecord | None]], now: int
    ) -> Entry:
        """Like :meth:`load` for the asyncio tasks of one event loop.

        The load runs in a task of its own that every waiter awaits shielded, so a
        waiter that is cancelled (the first one included) cancels only its own wait.
        """
        loop = asyncio.get_running_loop()
        flight = self._ainflight.get(digest)
        if flight is None or flight.get_loop() is not loop:
            flight = loop.create_task(self._lead_async(digest, loader, now, self._generation))
            self._ainflight[digest] = flight
            flight.add_done_callback(lambda done: self._landed(digest, done))
        return await asyncio.shield(flight)

    async def _lead_async(
        self, digest: bytes, loader: Callable[[], Awaitable[KeyRecord | None]], now: int,
        generation: int,
    ) -> Entry:
        return self.put(digest, await loader(), now, generation)

    def _landed(self, digest: bytes, flight: asyncio.Task[Entry]) -> None:
        if self._ainflight.get(digest) is flight:
            del self._ainflight[digest]
        if not flight.cancelled():
            flight.exception()  # every waiter may have gone: mark it retrieved


def _digest(key_hash: str) -> bytes:
    try:
        return base64.b64decode(key_hash, validate=True)
    except (binascii.Error, ValueError):
        return b""


def stored_hash(digest: bytes) -> str:
    """The stored form of a digest: ``base64`` with padding, as Unkey stores it."""
    return binascii.b2a_base64(digest, newline=False).decode("ascii")


