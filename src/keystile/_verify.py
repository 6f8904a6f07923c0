"""The verifier: prefix routing, the cache, the decision and the store.

The verification is written once, as steps: :meth:`Verifier.start` either answers
at once (the common case: a cache hit that needs no store trip) or returns the I/O
it needs next, an object with ``run_sync``/``run_async`` and ``resume``. Two short
drivers (:class:`Driver`) run those steps, one blocking and one under asyncio, with
the metrics and the fail policy around each store trip, so sync and async callers
share every decision and the hot path pays for no machinery.
"""

from __future__ import annotations

import abc
import asyncio
import atexit
import hashlib
import logging
import threading
import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Final, Protocol, TypeVar, cast

import anyio.to_thread

from ._analytics import Analytics, Recorder, recorder_for, records_events
from ._cache import Answer, Entry, RecordCache, stored_hash
from ._decide import Plan, Settlement, State, build_result, decide_static, make_plan
from ._errors import ConfigurationError, KeystileError, StoreUnavailableError
from ._forks import on_fork
from ._ids import now_ms
from ._keys import MAX_KEY_LENGTH, ROOT_PREFIX, split_key
from ._lease import Leases, acquire, release
from ._logs import failure_fields, key_fields, safe_url
from ._metrics import UNROUTED, Metrics
from ._models import LASTING, Code, KeyRecord, Keyspace, VerifyRequest, VerifyResult
from .stores import AsyncStore, Store, open_store

__all__ = ["OPERATIONS", "Driver", "Step", "Verifier"]

logger = logging.getLogger("keystile")

_NOT_FOUND: Final = VerifyResult(valid=False, code=Code.NOT_FOUND)
#: The store trips of a verification, as the metrics and spans name them.
OPERATIONS: Final = ("load_keyspaces", "load_record", "settle", "lease")
_sha256 = hashlib.sha256
R = TypeVar("R")
# Plans an entry keeps: one per long-lived request object (a route's; see lasting()).
_PLANS_PER_ENTRY: Final = 32


class Driver(abc.ABC):
    """What :class:`Verifier` and the remote backend share: the first step, the
    remembered answers, and the two drivers of the steps. Each driver runs the I/O a
    step asks for, blocking or awaited, with the metrics (:meth:`Metrics.trip`) and the
    fail policy around it, and records the verification.

    A subclass gives ``_begin`` (the first step), ``_fall_back`` (what the
    ``open_cached`` fail policy makes of a step the store could not serve), ``events``,
    ``metrics``, ``now`` and ``answers`` (raw key bytes -> the answer a request got,
    while it holds).
    """

    events: Recorder | None
    metrics: Metrics
    now: Callable[[], int]
    answers: Mapping[bytes, Answer]

    @abc.abstractmethod
    def _begin(self, key: str, request: VerifyRequest, ip: str | None, now: int) -> Step: ...

    @abc.abstractmethod
    def _fall_back(self, step: _Pending, error: StoreUnavailableError, stale_ms: int | None) -> Step: ...

    def start(self, key: str, request: VerifyRequest, ip: str | None = None,
              now: int | None = None) -> Step:
        """The first step of a verification: a result, or the I/O to run next.

        For callers that can avoid a coroutine when no I/O is needed (the common
        cache hit): ``step = verifier.start(...)``; if it is not a result, ``await
        verifier.finish_async(step)``. ``ip`` overrides ``request.ip``.
        """
        if now is None:
            now = self.now()
        return self._first(self._begin(key, request, ip, now), request, now)

    def _first(self, step: Step, request: VerifyRequest, now: int) -> Step:
        """A verification's first step, recorded when it is already the result."""
        if self.events is not None and type(step) is VerifyResult:
            self.events.emit(now, step, request)
        return step

    def recall(self, key: bytes, request: VerifyRequest) -> VerifyResult | None:
        """The answer ``request`` got for ``key`` (its raw bytes, as received), if it
        still holds; else ``None`` and the caller verifies the key.

        For hot paths that hold the raw bytes: a hit needs no decoding, parsing or
        hashing, since only a key that passed every check gets an answer remembered.
        """
        answer = self.answers.get(key)
        if answer is not None and answer[1] is request and type(answer[2]) is VerifyResult:
            now = self.now()
            if now < answer[0]:
                if self.events is not None:
                    self.events.record(now, answer)  # type: ignore[arg-type]  # a result: checked above
                return answer[2]
        return None

    def verify(self, key: str, **request: Any) -> VerifyResult:
        """Verify ``key``; keyword arguments are the fields of :class:`VerifyRequest`."""
        return self.verify_request(key, _request(request))

    async def verify_async(self, key: str, **request: Any) -> VerifyResult:
        return await self.verify_request_async(key, _request(request))

    def verify_request(self, key: str, request: VerifyRequest, ip: str | None = None, *,
                       stale_ms: int | None = None) -> VerifyResult:
        """Verify ``key`` for ``request``; ``ip`` overrides ``request.ip``.

        With ``stale_ms`` (the ``open_cached`` fail policy), a store that cannot
        answer does not fail a key whose record is cached, even expired up to that
        many ms: it is decided on the cached record and admitted without spending.
        """
        return self.finish_sync(self.start(key, request, ip), stale_ms)

    async def verify_request_async(
        self, key: str, request: VerifyRequest, ip: str | None = None, *,
        stale_ms: int | None = None,
    ) -> VerifyResult:
        return await self.finish_async(self.start(key, request, ip), stale_ms)

    # The two drivers: the same loop, one blocking and one awaited. Around each store
    # trip the metrics (and a span), after a failed one the fail policy, at the end the
    # event; each of those is written once, below and in Trip.

    def finish_sync(self, step: Step, stale_ms: int | None = None) -> VerifyResult:
        if isinstance(step, VerifyResult):
            return step  # answered by start(), which recorded it
        request, missed, trip = step.request, False, self.metrics.trip
        while not isinstance(step, VerifyResult):
            pending = step
            missed = missed or pending.miss
            try:
                with trip(pending.operation):
                    answer = pending.run_sync()
                step = pending.resume(answer)
            except StoreUnavailableError as error:
                step = self._failed(pending, error, stale_ms)
        self._finished(step, request, missed)
        return step

    async def finish_async(self, step: Step, stale_ms: int | None = None) -> VerifyResult:
        if isinstance(step, VerifyResult):
            return step  # answered by start(), which recorded it
        request, missed, trip = step.request, False, self.metrics.trip
        while not isinstance(step, VerifyResult):
            pending = step
            missed = missed or pending.miss
            try:
                with trip(pending.operation):
                    answer = await pending.run_async()
                step = pending.resume(answer)
            except StoreUnavailableError as error:
                step = self._failed(pending, error, stale_ms)
        self._finished(step, request, missed)
        return step

    def _failed(self, step: _Pending, error: StoreUnavailableError, stale_ms: int | None) -> Step:
        """The fail policy's answer to a failed step (re-raises when it has none), counted."""
        answer = self._fall_back(step, error, stale_ms)
        self.metrics.fell_back(step.operation)
        return answer

    def _finished(self, result: VerifyResult, request: VerifyRequest, missed: bool) -> None:
        if self.events is not None:
            self.events.emit(self.now(), result, request, missed)


class Verifier(Driver):
    """Verifies keys against a store through a local cache.

    >>> verifier = Verifier("memory://")
    >>> verifier.verify("sk_live_nope").code
    <Code.NOT_FOUND: 'NOT_FOUND'>

    ``verifier.metrics`` counts what it does (:class:`~keystile.Metrics`); with
    ``analytics=False`` a counting-only queue keeps verifications counted, at the
    per-request cost of analytics (a queue append), unless ``metrics=False``.
    """

    def __init__(
        self,
        store: Store | str | None = None,
        *,
        cache_ttl: float = 10.0,
        negative_ttl: float = 2.0,
        cache_size: int = 100_000,
        keyspace_refresh: float = 30.0,
        analytics: bool | Analytics = True,
        metrics: bool = True,
        now: Callable[[], int] = now_ms,
    ) -> None:
        self.store = store if isinstance(store, Store) else open_store(store)
        self.astore = AsyncStore(self.store)
        self.now = now
        self.cache = RecordCache(maxsize=cache_size, ttl=cache_ttl, negative_ttl=negative_ttl,
                                 clock=now)
        self.answers = self.cache.answers  # the cache's own dict, changed in place only
        if keyspace_refresh <= 0:
            raise ConfigurationError("keyspace_refresh must be > 0 seconds")
        self._refresh_ms = int(keyspace_refresh * 1000)
        self._by_prefix: dict[str, Keyspace] = {}
        self._keyspaces_due = 0  # the clock time (ms) of the next keyspace reload
        self._keyspaces_generation = 0  # bumped by every keyspace invalidation
        self.store.listen(self)
        self.leases = Leases()
        self._acquiring = threading.Lock()
        #: The acquisition in flight on each event loop (leased mode), for others to await.
        self._lease_flights: dict[asyncio.AbstractEventLoop, asyncio.Future[None]] = {}
        self._lease_ahead_tasks: set[asyncio.Task[None]] = set()  # held: a task is weakly referenced
        on_fork(self)
        self._release_at_exit = False
        #: Counters and histograms of this verifier (:meth:`Metrics.snapshot`).
        self.metrics = Metrics(store=safe_url(self.store.url), operations=OPERATIONS)
        self.metrics.cache_entries = self.cache.__len__
        #: Where each verification's event goes: the analytics writer, a counting-only
        #: recorder (``analytics=False`` or a store that records none), or ``None``
        #: (neither analytics nor ``metrics``).
        self.events = recorder_for(self.store if records_events(self.store) else None, analytics, now,
                                   self.metrics if metrics else None)
        self.metrics.recorder = self.events

    def _after_fork(self) -> None:
        self._acquiring = threading.Lock()
        self._lease_flights = {}
        self._lease_ahead_tasks = set()

    def __repr__(self) -> str:
        return f"Verifier({self.store!r})"

    def invalidate(self, key_hash: str | None, *, keyspaces: bool = False) -> None:
        if key_hash is None:
            self.cache.clear()
        else:
            self.cache.evict(key_hash)
        if keyspaces:
            self._keyspaces_generation += 1
            self._keyspaces_due = 0
            self.cache.forget_answers()

    # -- the steps -------------------------------------------------------------------

    def _begin(self, key: str, request: VerifyRequest, ip: str | None, now: int) -> Step:
        if now >= self._keyspaces_due:
            return _LoadKeyspaces(self, key, request, ip, now)
        if type(key) is not str or len(key) > MAX_KEY_LENGTH:
            return UNROUTED
        raw = key.encode("utf-8", "surrogatepass")
        answer = self.cache.answers.get(raw)
        if answer is not None and answer[1] is request and now < answer[0]:
            found = answer[2]
            if type(found) is VerifyResult:
                return found  # this route asked this of this key before: same answer
            return found.spend(self, request, now)  # type: ignore[union-attr]  # passed every check before
        prefix = split_key(key)
        keyspace = self._by_prefix.get(prefix) if prefix is not None else None
        if keyspace is None:
            return UNROUTED
        if request.api_id is not None:
            if keyspace.api_id != request.api_id:
                return UNROUTED
        elif prefix == ROOT_PREFIX:
            return UNROUTED  # keystile serve's root keys are never an app's keys
        digest = _sha256(raw).digest()
        entry = self.cache.fresh(digest, now)
        if entry is None:
            return _LoadRecord(self, raw, digest, keyspace, request, ip, now)
        return self._decide(raw, digest, entry, keyspace, request, ip, now)

    def _fall_back(self, step: _Pending, error: StoreUnavailableError, stale_ms: int | None) -> Step:
        """What the ``open_cached`` fail policy makes of a step the store could not
        serve (re-raises the store's error when there is nothing cached to go on)."""
        if stale_ms is None:
            raise error
        now = self.now()
        if isinstance(step, _LoadKeyspaces) and self._by_prefix:
            # Go on with the last map; ask the store again in a second.
            self._keyspaces_due = now + min(self._refresh_ms, 1000)
            logger.warning("keystile: store unavailable; keeping the keyspaces it gave before"
                           " (open_cached): %s", error,
                           extra=failure_fields(self.metrics.store, step.operation, error))
            return self._begin(step.key, step.request, step.ip, now)
        if isinstance(step, _LoadRecord):
            entry = self.cache.stale(step.digest, now, stale_ms)
            if entry is not None and entry.record is not None:
                return self._stale_result(entry.record, step, error, now)
        if isinstance(step, _Settle) and step.entry.record is not None:
            record = step.entry.record
            failed = failure_fields(self.metrics.store, step.operation, error)
            logger.warning("keystile: store unavailable; admitting key %s unspent (open_cached): %s",
                           record.key_id, error, extra=key_fields(record, **failed))
            return build_result(Code.VALID, record)
        raise error

    def _stale_result(self, record: KeyRecord, step: _LoadRecord, error: StoreUnavailableError,
                      now: int) -> VerifyResult:
        if record.keyspace_id != step.keyspace.id:
            return _NOT_FOUND
        code = decide_static(record, step.keyspace, step.request, now, step.ip or step.request.ip)
        if code is None:
            failed = failure_fields(self.metrics.store, step.operation, error)
            logger.warning("keystile: store unavailable; admitting key %s from a stale cache entry"
                           " (open_cached): %s", record.key_id, error, extra=key_fields(record, **failed))
        return build_result(code or Code.VALID, record)

    def _decide(
        self, raw: bytes, digest: bytes, entry: Entry, keyspace: Keyspace, request: VerifyRequest,
        ip: str | None, now: int,
    ) -> Step:
        record = entry.record
        if record is None or record.keyspace_id != keyspace.id:
            return _NOT_FOUND  # unknown, or found by hash in another keyspace than its prefix's
        code = decide_static(record, keyspace, request, now, ip or request.ip)
        if code is not None:
            return build_result(code, record)
        if record.static_only and not request.ratelimits:
            valid = build_result(Code.VALID, record)
            if not keyspace.networks:
                # Within the entry's life nothing else can change this answer: the
                # entry ends before the key expires, and no client IP is involved.
                # It holds while this keyspace is the one its prefix maps to.
                self.cache.remember(raw, digest, entry, request, valid,
                                   lambda: self._keyspace_due(keyspace))
            return valid
        plans = entry.plans
        known = plans.get(id(request)) if plans is not None else None
        if known is not None and known[0] is request:
            plan, kept = known[1], True
        else:
            plan = make_plan(record, request)
            kept = LASTING.get(id(request)) is request
            if kept:
                if plans is None or len(plans) >= _PLANS_PER_ENTRY:
                    plans = entry.plans = {}  # a new dict: a reader elsewhere keeps the old one
                plans[id(request)] = (request, plan)
        if plan.empty:
            return build_result(Code.VALID, record)
        remembered = _Remembered(entry, plan, keyspace.lease if record.lease is None else record.lease)
        if kept and not keyspace.networks:
            # A route's request (its plan is kept) on a key that passed every check: as
            # long as a static answer would hold, its next verify only spends.
            self.cache.remember(raw, digest, entry, request, remembered,
                                lambda: self._keyspace_due(keyspace))
        return remembered.spend(self, request, now)

    # -- leased mode ------------------------------------------------------------------

    def release_leases(self) -> None:
        """Give unused leased credits and tokens back to the store (graceful shutdown)."""
        with self._acquiring:  # after an acquisition under way (a top-up ahead) has granted
            held = self.leases.take_all()
            if held:
                self.store.transact(list(held), lambda states: (dict(release(held, states)), None))

    def close(self) -> None:
        """Write the queued analytics events, release leases, then close the store."""
        try:
            if self.events is not None:
                self.events.close()
            self.release_leases()
        finally:
            self.store.close()

    def _lease(self, plan: Plan, now: int, size: int,
               lacking: Callable[[], Mapping[str, int]]) -> Settlement | None:
        """One store transaction topping up the leases that ``lacking()`` names (state
        key -> units needed, read inside it); the rejection when the store cannot cover
        them (nothing written), else ``None``: granted. Under ``_acquiring``."""
        def step(states: Mapping[str, State | None]) -> tuple[dict[str, State | None], Any]:
            rejection, writes, grants = acquire(plan, states, now, size, lacking())
            return dict(writes), (rejection, grants)

        rejection, grants = self.store.transact(plan.state_keys, step)
        if rejection is not None:
            return cast(Settlement, rejection)
        self.leases.grant(grants, now)
        self._leasing()
        return None

    def _lease_ahead(self, plan: Plan, now: int, size: int, low: dict[str, int]) -> None:
        """Under asyncio, top up the leases running low (``low``) in the background, so
        that requests find units when the current ones run out instead of all waiting
        for one acquisition (the app's core idle meanwhile). Blocking callers lease when
        they run out, as before. It counts as the loop's acquisition in flight."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if loop in self._lease_flights:
            return  # one is under way already

        def lease() -> None:
            with self._acquiring:
                self._lease(plan, now, size, lambda: low)  # a rejection: they run out, then ask

        acquisition = self._acquisition(loop, lease)  # in flight from now on

        async def top_up() -> None:
            try:
                await acquisition
            except Exception as exc:  # the lease is asked again when it runs out
                logger.info("keystile: leasing ahead failed: %s", exc,
                            extra=failure_fields(self.metrics.store, "lease", exc))

        self._lease_ahead_tasks.add(task := loop.create_task(top_up()))
        task.add_done_callback(self._lease_ahead_tasks.discard)

    def _acquisition(self, loop: asyncio.AbstractEventLoop, acquire: Callable[[], R]) -> Awaitable[R]:
        """``acquire()`` run in a worker thread as this loop's acquisition in flight, which
        the requests that find a lease empty meanwhile await instead of leasing their own.
        It is in flight from this call, not from the first await."""
        flight = self._lease_flights[loop] = loop.create_future()

        async def run() -> R:
            try:
                return await anyio.to_thread.run_sync(acquire)
            finally:
                if self._lease_flights.get(loop) is flight:
                    del self._lease_flights[loop]
                flight.set_result(None)

        return run()

    def _leasing(self) -> None:
        """Once leases are held: give them back when the interpreter exits normally."""
        if not self._release_at_exit:
            self._release_at_exit = True
            atexit.register(_release_at_exit, weakref.ref(self))

    def _keyspace_due(self, keyspace: Keyspace) -> int:
        """When the map holding ``keyspace`` is due again; 0 if it no longer holds it."""
        return self._keyspaces_due if self._by_prefix.get(keyspace.prefix) is keyspace else 0

    def _set_keyspaces(self, keyspaces: Iterable[Keyspace], now: int, generation: int) -> None:
        """Install a loaded map, unless keyspaces changed since ``generation`` (the
        load may predate the change): then the map stays due and is loaded again."""
        if generation != self._keyspaces_generation:
            return
        self._by_prefix = {keyspace.prefix: keyspace for keyspace in keyspaces}
        self._keyspaces_due = now + self._refresh_ms
        if generation != self._keyspaces_generation:  # invalidated meanwhile, in a thread
            self._keyspaces_due = 0
        self.cache.forget_answers()  # they were given under the previous map


class _Pending(Protocol):
    """A step waiting for I/O: run it (blocking or awaited), then resume with the answer.

    ``operation`` names the store trip (one of :data:`OPERATIONS`, or the remote's);
    ``miss``: the trip reads the key's record, so the verification missed the cache.
    """

    operation: str
    miss: bool

    def run_sync(self) -> Any: ...

    async def run_async(self) -> Any: ...

    def resume(self, answer: Any) -> Step: ...

    @property
    def request(self) -> VerifyRequest: ...


Step = VerifyResult | _Pending


class _LoadKeyspaces:
    """Reload the prefix map, then start over."""

    __slots__ = ("generation", "ip", "key", "now", "request", "verifier")
    operation, miss = "load_keyspaces", False

    def __init__(self, verifier: Verifier, key: str, request: VerifyRequest, ip: str | None,
                 now: int) -> None:
        self.verifier, self.key, self.request, self.ip, self.now = verifier, key, request, ip, now
        self.generation = verifier._keyspaces_generation

    def run_sync(self) -> list[Keyspace]:
        return self.verifier.store.load_keyspaces()

    async def run_async(self) -> list[Keyspace]:
        return await self.verifier.astore.load_keyspaces()

    def resume(self, keyspaces: list[Keyspace]) -> Step:
        self.verifier._set_keyspaces(keyspaces, self.now, self.generation)
        return self.verifier._begin(self.key, self.request, self.ip, self.now)


class _LoadRecord:
    """Read a missed record through the cache's single flight, then decide."""

    __slots__ = ("digest", "ip", "keyspace", "now", "raw", "request", "verifier")
    operation, miss = "load_record", True

    def __init__(self, verifier: Verifier, raw: bytes, digest: bytes, keyspace: Keyspace,
                 request: VerifyRequest, ip: str | None, now: int) -> None:
        self.verifier, self.raw, self.digest, self.keyspace = verifier, raw, digest, keyspace
        self.request, self.ip, self.now = request, ip, now

    def run_sync(self) -> Entry:
        store, key_hash = self.verifier.store, stored_hash(self.digest)
        return self.verifier.cache.load(self.digest, lambda: store.load_record(key_hash), self.now)

    async def run_async(self) -> Entry:
        astore, key_hash = self.verifier.astore, stored_hash(self.digest)
        return await self.verifier.cache.load_async(
            self.digest, lambda: astore.load_record(key_hash), self.now)

    def resume(self, entry: Entry) -> Step:
        return self.verifier._decide(self.raw, self.digest, entry, self.keyspace, self.request, self.ip,
                                     self.now)


class _Acquire:
    """Leased mode: top the lacking leases up in one store transaction, then spend.

    One acquisition at a time per verifier: requests that find a lease empty while
    another tops it up wait for it and spend from it, instead of each leasing a
    batch of its own (and colliding in the store).
    """

    __slots__ = ("entry", "now", "plan", "request", "size", "verifier")
    operation, miss = "lease", False

    def __init__(self, verifier: Verifier, entry: Entry, plan: Plan, now: int, size: int,
                 request: VerifyRequest) -> None:
        self.verifier, self.entry, self.plan, self.now, self.size = verifier, entry, plan, now, size
        self.request = request

    def _locked(self) -> Settlement | None:
        """The settlement (spent from a lease, or a rejection); ``None``: lease again."""
        verifier, plan, now = self.verifier, self.plan, self.now
        with verifier._acquiring:
            settled = verifier.leases.spend(plan, now)
            if settled is not None:
                return settled  # topped up by the acquisition this one waited for
            rejection = verifier._lease(plan, now, self.size, lambda: verifier.leases.lacking(plan, now))
            if rejection is not None:
                return rejection
            return verifier.leases.spend(plan, now)

    def run_sync(self) -> Settlement | None:
        return self._locked()

    async def run_async(self) -> Settlement | None:
        # One acquisition at a time per event loop, run in a thread (the lock may be held
        # while another thread's store trip runs); the requests that find the lease empty
        # meanwhile wait for it on the loop, not each in a thread of its own, then spend.
        verifier = self.verifier
        loop = asyncio.get_running_loop()
        flights = verifier._lease_flights
        flight = flights.get(loop)
        if flight is not None:
            await asyncio.shield(flight)
            return verifier.leases.spend(self.plan, self.now)  # None: spent by others, lease again
        return await verifier._acquisition(loop, self._locked)

    def resume(self, settled: Settlement | None) -> Step:
        record = self.entry.record
        assert record is not None  # a plan is made only for a record
        if settled is None:  # other threads spent the new lease first: lease again
            return _Acquire(self.verifier, self.entry, self.plan, self.now, self.size, self.request)
        return build_result(settled.code, record, settled)


class _Remembered:
    """A route's request that spends, on a key that passed every check (see ``answers``):
    its next verify only spends (settles in the store, or from a lease). It holds no
    verifier (the cache that holds it is the verifier's own): each call passes it."""

    __slots__ = ("entry", "lease", "plan")

    def __init__(self, entry: Entry, plan: Plan, lease: int) -> None:
        self.entry, self.plan, self.lease = entry, plan, lease

    def spend(self, verifier: Verifier, request: VerifyRequest, now: int) -> Step:
        if self.lease:
            leases = verifier.leases
            settled = leases.spend(self.plan, now)
            if settled is not None:
                low = leases.running_low(self.plan, self.lease)
                if low:
                    verifier._lease_ahead(self.plan, now, self.lease, low)
                return build_result(settled.code, self.entry.record, settled)
            return _Acquire(verifier, self.entry, self.plan, now, self.lease, request)
        return _Settle(verifier, self.entry, self.plan, now, request)

    def step(self, verifier: Verifier, request: VerifyRequest, now: int) -> Step:
        """:meth:`spend` as :meth:`Verifier.start` would answer it: a result is recorded."""
        return verifier._first(self.spend(verifier, request, now), request, now)


class _Settle:
    """Apply the plan's credits and rate limits in the store, then answer."""

    __slots__ = ("entry", "now", "plan", "request", "verifier")
    operation, miss = "settle", False

    def __init__(self, verifier: Verifier, entry: Entry, plan: Plan, now: int,
                 request: VerifyRequest) -> None:
        self.verifier, self.entry, self.plan, self.now, self.request = verifier, entry, plan, now, request

    def run_sync(self) -> Settlement:
        return self.verifier.store.settle(self.plan, self.now)

    async def run_async(self) -> Settlement:
        return await self.verifier.astore.settle(self.plan, self.now)

    def resume(self, settlement: Settlement) -> VerifyResult:
        return build_result(settlement.code, self.entry.record, settlement)


def _release_at_exit(ref: weakref.ref[Verifier]) -> None:
    verifier = ref()
    if verifier is not None:
        try:
            verifier.release_leases()
        except KeystileError as exc:  # the store is gone: the leased units are lost
            logger.warning("keystile: could not give leases back at exit: %s", exc,
                           extra=failure_fields(verifier.metrics.store, "lease", exc))


def _request(fields: Mapping[str, Any]) -> VerifyRequest:
    try:
        return VerifyRequest(**fields)
    except TypeError as exc:
        raise ConfigurationError(f"unknown verify option: {exc}") from exc
