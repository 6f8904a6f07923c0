"""Verification analytics: an event per verification, recorded off the request path.

The request path only appends an entry ``(deadline, request, result)`` to the deque
of the current minute (a cache hit appends the answer entry it found: nothing is
allocated); when the queue is full the verification is dropped and counted, the
request never waits. A background thread copies the deques in batches, counts the
entries by identity, tallies them into the verifier's metrics and, with a store, turns
them into per-minute :class:`Event` rows (``write_events``: a SQLite table, a capped
Redis stream, a bounded list in memory); it updates ``last_used_at`` of each key at
most once per ``last_used_interval`` and trims events past the retention.

Queries (:func:`count_buckets`, :func:`top`) are pure functions over the events a
store reads back for a time range and a filter.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
import os
import socket
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal

from ._errors import ConfigurationError, KeystileError, ValidationError
from ._forks import on_fork
from ._logs import failure_fields, safe_url
from ._models import LASTING, Code, VerifyRequest, VerifyResult

if TYPE_CHECKING:
    from ._metrics import Metrics

__all__ = [
    "BUCKETS",
    "Analytics",
    "Bucket",
    "Event",
    "EventFilter",
    "Recorder",
    "Top",
    "count_buckets",
    "event_of",
    "last_used_state_key",
    "top",
]

logger = logging.getLogger("keystile")

#: Bucket sizes of the queries, in ms.
BUCKETS: Final[dict[str, int]] = {"minute": 60_000, "hour": 3_600_000, "day": 86_400_000}
CODES: Final = tuple(code.value for code in Code)
_DAY_MS: Final = 86_400_000
MINUTE_MS: Final = 60_000
_WRITE_BATCH: Final = 5_000  # events per store write, at most


@dataclass(frozen=True)
class Analytics:
    """How a verifier records its verifications (``analytics=`` of a verifier, a
    middleware or :class:`~keystile.Keystile`; ``False`` records nothing).

    - ``queue_size``: events waiting to be written; beyond it new ones are dropped
      (and counted in :attr:`Recorder.dropped`), never blocking a request.
    - ``batch_size``/``flush_interval``: the background writer writes when this many
      wait or this many seconds passed, whichever comes first.
    - ``last_used_interval``: seconds between two updates of one key's ``last_used_at``.
    - ``retention_days``: events older than this are deleted by the writer.
    - ``instance``/``region``: recorded with each event (default: ``host:pid`` and
      ``$KEYSTILE_REGION``).
    """

    queue_size: int = 100_000
    batch_size: int = 10_000
    flush_interval: float = 1.0
    last_used_interval: float = 60.0
    retention_days: float = 30.0
    instance: str | None = None
    region: str | None = None

    def __post_init__(self) -> None:
        for name in ("queue_size", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"analytics {name} must be an integer of 1 or more")
        for name in ("flush_interval", "last_used_interval", "retention_days"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ConfigurationError(f"analytics {name} must be a number above 0")


@dataclass(frozen=True, slots=True)
class Event:
    """``count`` verifications of one key with one outcome (and tags) in the minute that
    starts at ``time`` (Unix ms), and the credits they spent.

    The writer records verifications per minute, not one row each: a busy key makes a
    row per outcome per batch, so writing costs next to nothing per request, and every
    query (per minute, hour or day) stays exact.
    """

    time: int
    code: str
    key_id: str | None = None
    keyspace_id: str | None = None
    api_id: str | None = None
    identity_id: str | None = None
    external_id: str | None = None
    tags: tuple[str, ...] = ()
    spent: int = 0
    instance: str | None = None
    region: str | None = None
    count: int = 1

    def to_dict(self) -> dict[str, Any]:
        return {"time": self.time, "code": self.code, "key_id": self.key_id,
                "keyspace_id": self.keyspace_id, "api_id": self.api_id,
                "identity_id": self.identity_id, "external_id": self.external_id,
                "tags": list(self.tags), "spent": self.spent, "instance": self.instance,
                "region": self.region, "count": self.count}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Event:
        return cls(int(data["time"]), str(data["code"]), data.get("key_id"), data.get("keyspace_id"),
                   data.get("api_id"), data.get("identity_id"), data.get("external_id"),
                   tuple(data.get("tags") or ()), int(data.get("spent") or 0), data.get("instance"),
                   data.get("region"), int(data.get("count") or 1))


def last_used_state_key(key_id: str) -> str:
    """The state holding when a key was last verified: ``{"at": unix_ms}``."""
    return f"used:{key_id}"


def event_of(now: int, result: VerifyResult, request: VerifyRequest, instance: str | None,
             region: str | None, count: int = 1) -> Event:
    """The event of ``count`` verifications with this result in the minute of ``now``."""
    identity = result.identity
    spent = 0
    if result.valid and result.credits is not None:
        spent = count * (1 if request.cost is None else request.cost)
    return Event(now - now % MINUTE_MS, result.code.value, result.key_id, result.keyspace_id,
                 result.api_id or request.api_id, identity.id if identity else None,
                 identity.external_id if identity else None, request.tags, spent, instance, region,
                 count)


#: What the request path queues: ``(deadline, request, result)``, the very shape of an
#: entry of the verifier's answers (a cache hit queues that tuple itself: no allocation).
Entry = tuple[int, VerifyRequest, VerifyResult]


def _shared_result(result: VerifyResult) -> VerifyResult:
    """What the events of a spending result record, the same for every result of its
    key and outcome: whether it had credits, not how many, and no limit's state."""
    return dataclasses.replace(result, credits=None if result.credits is None else 0, ratelimits=(),
                               credits_reset=None)


def count_entries(segments: Iterable[tuple[int, Sequence[Entry]]]) -> list[tuple[int, Entry, int]]:
    """``(minute, entry, how many times)`` of queued entries, a list per minute.

    Cache hits queue the same tuple again and again, so entries are counted by
    identity in C (``Counter(map(id, ...))``): a busy key costs a few dict operations
    per batch, not per request.
    """
    counted = []
    for minute, entries in segments:
        ids = list(map(id, entries))
        by_id = dict(zip(ids, entries, strict=True))
        counted += [(minute, by_id[ident], count)
                    for ident, count in collections.Counter(ids).items()]
    return counted


def events_of(counted: Iterable[tuple[int, Entry, int]], instance: str | None,
              region: str | None) -> tuple[list[Event], dict[str, int]]:
    """Counted entries as per-minute events (one per key, outcome and request), and the
    latest minute each key was verified in.

    A verify that settles credits answers with a result of its own each time, so this
    groups by what an event records before building one (a tuple and a dict lookup per
    entry), rather than building an event per entry.
    """
    groups: dict[tuple[Any, ...], list[Any]] = {}
    for minute, entry, count in counted:
        request, result = entry[1], entry[2]
        spent = 0
        if result.valid and result.credits is not None:
            spent = count * (1 if request.cost is None else request.cost)
        group_key = (minute, result.code, result.key_id, id(request))
        group = groups.get(group_key)
        if group is None:
            groups[group_key] = [minute, request, result, count, spent]
        else:
            group[3] += count
            group[4] += spent
    rows: dict[tuple[Any, ...], Event] = {}
    latest: dict[str, int] = {}
    for minute, request, result, count, spent in groups.values():
        event = dataclasses.replace(event_of(minute, result, request, instance, region, count),
                                    spent=spent)
        row_key = (event.time, event.code, event.key_id, event.keyspace_id, event.api_id,
                   event.identity_id, event.tags)
        known = rows.get(row_key)
        rows[row_key] = event if known is None else dataclasses.replace(
            known, count=known.count + event.count, spent=known.spent + event.spent)
        if event.key_id is not None and minute > latest.get(event.key_id, -1):
            latest[event.key_id] = minute
    return list(rows.values()), latest


# -- queries -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EventFilter:
    """Which events a query counts; every field given must match (tags: all present).

    ``identity`` matches an identity's id or its external id.
    """

    api_id: str | None = None
    keyspace_id: str | None = None
    key_id: str | None = None
    identity: str | None = None
    tags: tuple[str, ...] = ()
    codes: tuple[str, ...] = ()

    def matches(self, event: Event) -> bool:
        if self.api_id is not None and event.api_id != self.api_id:
            return False
        if self.keyspace_id is not None and event.keyspace_id != self.keyspace_id:
            return False
        if self.key_id is not None and event.key_id != self.key_id:
            return False
        if self.identity is not None and self.identity not in (event.identity_id, event.external_id):
            return False
        if self.codes and event.code not in self.codes:
            return False
        return all(tag in event.tags for tag in self.tags)


@dataclass(frozen=True)
class Bucket:
    """The verifications of one time bucket, by outcome code."""

    start: int
    counts: dict[str, int] = field(default_factory=dict)
    spent: int = 0

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def valid(self) -> int:
        return self.counts.get(Code.VALID.value, 0)

    def to_dict(self) -> dict[str, Any]:
        return {"start": self.start, "total": self.total, "valid": self.valid,
                "counts": dict(self.counts), "spent": self.spent}


@dataclass(frozen=True)
class Top:
    """One key's or identity's verifications in a range."""

    id: str
    total: int
    valid: int
    spent: int
    counts: dict[str, int]
    credits: int | None = None  # what remains now (keys only; None: unlimited or unknown)
    external_id: str | None = None  # identities

    def to_dict(self) -> dict[str, Any]:
        out = {"id": self.id, "total": self.total, "valid": self.valid, "spent": self.spent,
               "counts": dict(self.counts)}
        if self.credits is not None:
            out["credits"] = self.credits
        if self.external_id is not None:
            out["externalId"] = self.external_id
        return out


def check_range(since: int, until: int, by: str | None = None) -> int:
    """The bucket size of ``by`` (ms), after checking the range."""
    if until <= since:
        raise ValidationError("the end of the range must come after its start")
    if by is None:
        return 0
    size = BUCKETS.get(by)
    if size is None:
        raise ValidationError(f"buckets are 'minute', 'hour' or 'day', not {by!r}")
    if (until - since) // size > 10_000:
        raise ValidationError(f"that range holds more than 10000 {by}s; take larger buckets")
    return size


def count_buckets(events: Iterable[Event], since: int, until: int, by: str) -> list[Bucket]:
    """Verifications per bucket of ``by`` from ``since`` (floored to a bucket) to
    ``until``, every bucket present, empty ones too."""
    size = check_range(since, until, by)
    first = since - since % size
    counts: list[collections.Counter[str]] = [collections.Counter() for _ in range(
        (until - 1 - first) // size + 1)]
    spent = [0] * len(counts)
    for event in events:
        if since <= event.time < until:
            index = (event.time - first) // size
            counts[index][event.code] += event.count
            spent[index] += event.spent
    return [Bucket(first + i * size, dict(c), spent[i]) for i, c in enumerate(counts)]


def top(events: Iterable[Event], by: Literal["key", "identity"], limit: int = 10) -> list[Top]:
    """The keys (or identities) with the most verifications, most first."""
    if by not in ("key", "identity"):
        raise ValidationError(f"top is by 'key' or 'identity', not {by!r}")
    counts: dict[str, collections.Counter[str]] = {}
    spent: collections.Counter[str] = collections.Counter()
    external: dict[str, str | None] = {}
    for event in events:
        owner = event.key_id if by == "key" else event.identity_id
        if owner is None:
            continue
        counts.setdefault(owner, collections.Counter())[event.code] += event.count
        spent[owner] += event.spent
        if by == "identity":
            external[owner] = event.external_id
    ranked = sorted(counts, key=lambda owner: (-counts[owner].total(), owner))[:limit]
    return [Top(owner, counts[owner].total(), counts[owner].get(Code.VALID.value, 0), spent[owner],
                dict(counts[owner]), external_id=external.get(owner)) for owner in ranked]


# -- recording -----------------------------------------------------------------------------------


#: ``entry[0]`` of an entry not taken from the answers (whose first item is a deadline):
#: a verification that did not read the key's record from the store, or one that did.
EMITTED: Final = 0
MISSED: Final = 1


class Recorder:
    """The bounded queue of a verifier's events and the thread that writes them
    (``store=None``: that only counts them into ``metrics``)."""

    def __init__(self, store: Any | None, options: Analytics, clock: Callable[[], int],
                 metrics: Metrics | None = None) -> None:
        self.store: Any = store
        self.options, self.clock, self.metrics = options, clock, metrics
        self.instance = options.instance or f"{socket.gethostname()}:{os.getpid()}"
        self.region = options.region or os.environ.get("KEYSTILE_REGION") or None
        # One deque per minute, the last the current one: the request path appends to the
        # current deque; the writer copies whole deques (never pops), so nothing appended
        # concurrently is lost, and a deque it copied is read once more for stragglers.
        self._current: collections.deque[Entry] = collections.deque()
        self._minute, self._minute_end = 0, -1  # the current deque's minute (none yet)
        self._segments: list[tuple[int, collections.deque[Entry]]] = []
        self._retired: list[tuple[int, collections.deque[Entry], int]] = []
        self._backlog = 0  # entries in deques older than the current one
        self._segments_lock = threading.Lock()
        self._max = options.queue_size
        self._batch = options.batch_size
        self.dropped = 0  # not recorded: the queue was full, or the store failed too long
        self.written = 0  # verifications written (an event holds a minute's count)
        self.write_errors = 0
        self._last_used: dict[str, int] = {}
        self._last_used_ms = int(options.last_used_interval * 1000)
        self._trimmed_at = 0
        self._wake = threading.Event()
        self._stop = False
        self._lock = threading.Lock()  # one drain at a time (the thread, flush, close)
        self._pending: list[Event] = []  # counted, not yet written (the store failed)
        self._pending_latest: dict[str, int] = {}
        self._shared: dict[tuple[Any, ...], Entry] = {}  # see emit(); emptied by every drain
        self._thread: threading.Thread | None = None
        self._start()
        on_fork(self)

    @property
    def records(self) -> bool:
        """Whether the events are written to the store (else only counted)."""
        return self.store is not None

    def emit(self, now: int, result: VerifyResult, request: VerifyRequest, missed: bool = False) -> None:
        """Queue one verification (the request path: no I/O, no lock, never blocks);
        ``missed``: it read the store for the key's record."""
        if now >= self._minute_end:
            self._new_minute(now)
        current = self._current
        if len(current) + self._backlog >= self._max:
            self.dropped += 1
            return
        if (result.ratelimits or result.credits is not None) and LASTING.get(id(request)) is request:
            # A route's verify that spends answers with a result of its own each time,
            # which the queue would keep alive until the writer drains it: four objects a
            # request for the garbage collector to walk, again and again. The event needs
            # only what every such result of this key, outcome and request shares: queue
            # one shared entry for them all (made again after each drain, so a changed
            # key shows within one).
            mark = (id(request), result.key_id, id(result.code), result.credits is None, missed)
            entry = self._shared.get(mark)
            if entry is None:
                entry = self._shared[mark] = (MISSED if missed else EMITTED, request, _shared_result(result))
            current.append(entry)
        else:
            current.append((MISSED if missed else EMITTED, request, result))  # record(), inlined
        if len(current) == self._batch:
            self._wake.set()

    def record(self, now: int, entry: Entry) -> None:
        """Queue one verification given as ``(deadline, request, result)``: a cache hit
        passes the answer entry it found, so queueing it allocates nothing."""
        if now >= self._minute_end:
            self._new_minute(now)
        current = self._current
        if len(current) + self._backlog >= self._max:
            self.dropped += 1
            return
        current.append(entry)
        if len(current) == self._batch:
            self._wake.set()

    @property
    def queued(self) -> int:
        """Verifications waiting for the writer."""
        return len(self._current) + self._backlog

    def _new_minute(self, now: int) -> None:
        with self._segments_lock:
            if self._minute <= now < self._minute_end:
                return  # another thread started this minute
            self._minute = now - now % MINUTE_MS
            self._minute_end = self._minute + MINUTE_MS
            self._backlog += len(self._current)
            self._current = collections.deque()
            self._segments.append((self._minute, self._current))

    def flush(self) -> None:
        """Count and write every verification queued so far, now (the caller waits)."""
        self._drain()

    def close(self) -> None:
        """Stop the writer after writing what is queued (store errors are logged)."""
        self._stop = True
        self._wake.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(10)
        try:
            self._drain()
        except KeystileError as exc:
            lost = sum(e.count for e in self._pending) + self.queued
            logger.warning("keystile: %d analytics events not written at close: %s", lost, exc,
                           extra=self._fields(exc, events=lost))

    # -- the writer ------------------------------------------------------------------------

    def _start(self) -> None:
        # The thread holds the recorder weakly: a verifier dropped without close() takes
        # its writer with it (within a flush interval) instead of leaking both.
        self._thread = threading.Thread(
            target=_write_loop, args=(weakref.ref(self), self._wake, self.options.flush_interval),
            name="keystile-analytics", daemon=True)
        self._thread.start()

    def _write_once(self) -> None:
        try:
            self._drain()
        except KeystileError as exc:  # the store is down: keep the events, try again
            logger.warning("keystile: analytics events not written yet: %s", exc,
                           extra=self._fields(exc, events=sum(e.count for e in self._pending)))
        except Exception as exc:  # never let the writer die silently
            logger.exception("keystile: analytics writer failed", extra=self._fields(exc))

    def _fields(self, error: Exception, **more: Any) -> dict[str, Any]:
        """The ``extra`` of the writer's log records."""
        store = safe_url(self.store.url) if self.store is not None else None
        return failure_fields(store, "write_events", error, **more)

    def _drain(self) -> None:
        """Count every queued verification, then write their events, a batch at a time.
        Counting goes on while the store fails; the events then wait here (within the
        queue's size: beyond it the oldest are dropped, and counted as dropped)."""
        with self._lock:
            for _ in range(2):  # the second pass: what was appended while the first copied
                self._collect()
            while self._pending:
                events = self._pending[:_WRITE_BATCH]
                try:
                    self.store.write_events(events)
                except KeystileError:
                    self.write_errors += 1
                    raise
                del self._pending[:len(events)]
                self.written += sum(event.count for event in events)
            if self.store is not None:
                latest, self._pending_latest = self._pending_latest, {}
                self._touch(latest)
                self._trim()

    def _collect(self) -> None:
        counted = count_entries(self._take())
        if not counted:
            return
        if self.metrics is not None:
            self.metrics.tally(counted)
        if self.store is None:
            return
        events, latest = events_of(counted, self.instance, self.region)
        self._pending.extend(events)
        for key_id, minute in latest.items():
            if minute > self._pending_latest.get(key_id, -1):
                self._pending_latest[key_id] = minute
        waiting = sum(event.count for event in self._pending)
        while waiting > self._max and self._pending:
            lost = self._pending.pop(0)
            waiting -= lost.count
            self.dropped += lost.count

    def _take(self) -> list[tuple[int, Sequence[Entry]]]:
        """Everything queued so far, by minute; the current minute goes on in a new deque."""
        with self._segments_lock:
            segments, self._backlog = self._segments, 0
            self._current = collections.deque()
            self._segments = [(self._minute, self._current)]
        self._shared = {}  # a new dict: an emit that holds the old one only adds to it
        retired, self._retired = self._retired, []
        taken: list[tuple[int, Sequence[Entry]]] = []
        for minute, entries, seen in retired:  # appended after the copy, by a thread that had it
            if len(entries) > seen:
                taken.append((minute, list(itertools.islice(entries, seen, None))))
        for minute, entries in segments:
            copied = list(entries)
            self._retired.append((minute, entries, len(copied)))
            if copied:
                taken.append((minute, copied))
        return taken

    def _touch(self, latest: Mapping[str, int]) -> None:
        """``last_used_at`` of each key (a small state beside its credits), at most once
        per interval per key, all in one store transaction."""
        due = {key_id: t for key_id, t in latest.items()
               if t - self._last_used.get(key_id, -self._last_used_ms) >= self._last_used_ms}
        if not due:
            return
        names = {last_used_state_key(key_id): t for key_id, t in due.items()}

        def step(states: Mapping[str, Any]) -> tuple[dict[str, Any], None]:
            return {name: {"at": t} for name, t in names.items()
                    if states[name] is None or states[name]["at"] < t}, None

        self.store.transact(list(names), step)
        self._last_used.update(due)
        if len(self._last_used) > 4 * self._max:
            self._last_used.clear()

    def _trim(self) -> None:
        now = self.clock()
        if now - self._trimmed_at >= 600_000:
            self._trimmed_at = now
            self.store.trim_events(now - int(self.options.retention_days * _DAY_MS))

    def _after_fork(self) -> None:
        """In a forked child: a lock held by the parent's writer, and no thread."""
        self._lock = threading.Lock()
        self._segments_lock = threading.Lock()
        self._wake = threading.Event()
        self._current = collections.deque()
        self._minute, self._minute_end, self._backlog = 0, -1, 0
        self._segments, self._retired = [], []
        self._pending, self._pending_latest = [], {}
        if not self._stop:
            self._start()


def _write_loop(ref: weakref.ref[Recorder], wake: threading.Event, interval: float) -> None:
    while True:
        wake.wait(interval)
        wake.clear()
        recorder = ref()
        if recorder is None or recorder._stop or recorder._wake is not wake:
            return  # dropped, closed, or replaced after a fork
        recorder._write_once()
        del recorder


def records_events(store: Any) -> bool:
    """Whether ``store`` keeps analytics events (memory, SQLite and Redis do)."""
    from .stores import Store

    return type(store).write_events is not Store.write_events


def recorder_for(store: Any | None, analytics: bool | Analytics | None, clock: Callable[[], int],
                 metrics: Metrics | None) -> Recorder | None:
    """The recorder ``analytics=`` asks for on ``store`` (``None``: a store that records no
    events); without analytics, one that only counts into ``metrics``, if given."""
    if analytics is not None and not isinstance(analytics, bool | Analytics):
        raise ConfigurationError(f"analytics must be True, False or an Analytics(...), not {analytics!r}")
    options = analytics if isinstance(analytics, Analytics) else Analytics()
    if store is None or not analytics:
        return None if metrics is None else Recorder(None, options, clock, metrics)
    return Recorder(store, options, clock, metrics)
