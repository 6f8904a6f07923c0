"""A verifier's counters and histograms, kept in the process, with no dependency.

>>> from keystile import Verifier
>>> verifier = Verifier("memory://")
>>> verifier.verify("sk_live_nope").code
<Code.NOT_FOUND: 'NOT_FOUND'>
>>> verifier.events.flush()  # counted by the events' background thread; now, here
>>> verifier.metrics.snapshot().verifications["NOT_FOUND"]
1

Where each number is counted, so that a cache hit pays for none of them beyond the
event it queues for analytics anyway:

- **Verifications by code, cache hits and misses** are counted by the background
  thread that drains the verification events (the analytics writer, or a counting-only
  one when analytics is off), from the events themselves. They lag by up to the
  flush interval (1 s by default), and all lag together: ``cache_hits`` is the
  verifications that neither read the store for the key's record (``cache_misses``)
  nor were rejected by prefix routing or the key's shape before any lookup
  (``unrouted``). A verification whose store trip failed with nothing to fall back on
  raised instead of answering: it is in ``store_errors``, not here. A verification
  whose event found the queue full is not counted (it is in ``events_dropped``).
- **Store latency, store errors, fail-policy activations** are recorded around each
  store trip of a verification (reading the keyspaces or a record, settling credits and
  rate limits, leasing, a remote ``verifyKey``): only requests that do I/O pay, two
  clock reads beside a trip. A verification that joined another's read of the same key
  (single flight) waited for it, and counts that wait as its own trip.
- **Circuit-breaker openings** of the remote backend, as they happen.
- The **analytics queue** (dropped, written, write errors, waiting) and the number of
  cached entries are read when a snapshot is taken.

Thread safety: every update and every snapshot holds the registry's lock, and
updates happen only off the hot path (in the events' thread and around store trips),
so counts are exact and a snapshot is consistent in itself. The analytics numbers
are the recorder's own, read without that lock.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from time import perf_counter
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

from ._analytics import MISSED
from ._errors import StoreError
from ._models import Code, VerifyResult
from ._tracing import store_span

if TYPE_CHECKING:
    from ._analytics import Recorder

__all__ = ["LATENCY_BUCKETS", "UNROUTED", "HistogramSnapshot", "Metrics", "MetricsSnapshot", "Trip"]

#: Upper bounds (seconds) of the store latency buckets: a memory store's microseconds
#: to a remote's timeouts.
LATENCY_BUCKETS: Final = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                          0.25, 0.5, 1.0, 2.5, 5.0)

#: The answer to a key rejected before any lookup (unknown prefix, bad shape, another
#: API): equal to any ``NOT_FOUND``, but this very object, so the counting thread can
#: tell it from a ``NOT_FOUND`` the cache or the store gave.
UNROUTED: Final = VerifyResult(valid=False, code=Code.NOT_FOUND)


@dataclass(frozen=True, slots=True)
class HistogramSnapshot:
    """Observations by bucket: ``buckets`` holds ``(upper bound, count at or below it)``,
    cumulative as Prometheus has them; the last bound is ``inf`` and its count ``count``."""

    buckets: tuple[tuple[float, int], ...]
    count: int
    sum: float


@dataclass(frozen=True, slots=True)
class MetricsSnapshot:
    """A verifier's numbers at one moment (every counter only grows).

    ``verifications`` holds every code, by value (``"VALID"``, ``"NOT_FOUND"``, …);
    ``store_latency``, ``store_errors`` and ``fail_policy`` hold every operation of the
    verifier: ``load_keyspaces``, ``load_record``, ``settle`` and ``lease``, or
    ``verify_remote`` for the remote backend.
    """

    verifications: Mapping[str, int]
    cache_hits: int
    cache_misses: int
    unrouted: int
    cache_entries: int
    store_latency: Mapping[str, HistogramSnapshot]
    store_errors: Mapping[str, int]
    fail_policy: Mapping[str, int]
    breaker_opens: int
    events_dropped: int
    events_written: int
    event_write_errors: int
    events_queued: int

    @property
    def total(self) -> int:
        """Every verification counted, whatever its code."""
        return sum(self.verifications.values())


class _Histogram:
    __slots__ = ("count", "counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)  # the last: above every bound
        self.count = 0
        self.sum = 0.0

    def snapshot(self) -> HistogramSnapshot:
        cumulative, buckets = 0, []
        for bound, count in zip((*LATENCY_BUCKETS, float("inf")), self.counts, strict=True):
            cumulative += count
            buckets.append((bound, cumulative))
        return HistogramSnapshot(tuple(buckets), self.count, self.sum)


class Metrics:
    """The registry of one verifier: ``verifier.metrics``; read it with :meth:`snapshot`.

    ``store`` (a URL without secrets) and ``operations`` (the store trips the verifier
    makes) name what is measured; every operation is present from the start, at 0.
    """

    def __init__(self, *, store: str, operations: Sequence[str]) -> None:
        self.store = store
        self.operations = tuple(operations)
        self._lock = threading.Lock()
        self._codes = dict.fromkeys(Code, 0)
        self._misses = 0
        self._unrouted = 0
        self._latency = {operation: _Histogram() for operation in self.operations}
        self._errors = dict.fromkeys(self.operations, 0)
        self._fell_back = dict.fromkeys(self.operations, 0)
        self._breaker_opens = 0
        #: Where the verification events go (set by the verifier; read at snapshots).
        self.recorder: Recorder | None = None
        #: How many entries the verifier's cache holds now (set by the verifier).
        self.cache_entries: Callable[[], int] = lambda: 0

    def __repr__(self) -> str:
        return f"Metrics({self.store!r})"

    # -- updates (never on the hot path) ------------------------------------------------

    def tally(self, counted: Iterable[tuple[int, tuple[Any, ...], int]]) -> None:
        """Count drained verifications: ``(minute, entry, how many)``, an entry being
        ``(deadline or 1 if it read the key's record, request, result)``."""
        codes: dict[Code, int] = {}
        misses = unrouted = 0
        for _, entry, count in counted:
            result = entry[2]
            codes[result.code] = codes.get(result.code, 0) + count
            if entry[0] == MISSED:
                misses += count
            elif result is UNROUTED:
                unrouted += count
        with self._lock:
            for code, count in codes.items():
                self._codes[code] += count
            self._misses += misses
            self._unrouted += unrouted

    def trip(self, operation: str) -> Trip:
        """Measure one store trip: ``with metrics.trip("settle"): ...``."""
        return Trip(self, operation)

    def observe(self, operation: str, seconds: float, failed: bool) -> None:
        histogram, bucket = self._latency[operation], bisect.bisect_left(LATENCY_BUCKETS, seconds)
        with self._lock:  # this runs around every store trip: no method call more
            histogram.counts[bucket] += 1
            histogram.count += 1
            histogram.sum += seconds
            if failed:
                self._errors[operation] += 1

    def fell_back(self, operation: str) -> None:
        """The fail policy answered a verification whose ``operation`` failed."""
        with self._lock:
            self._fell_back[operation] += 1

    def breaker_opened(self) -> None:
        with self._lock:
            self._breaker_opens += 1

    # -- reading ---------------------------------------------------------------------------

    def snapshot(self) -> MetricsSnapshot:
        """Every number now (verification counts as of the last drain of the events)."""
        recorder = self.recorder
        entries = self.cache_entries()
        with self._lock:
            total = sum(self._codes.values())
            return MetricsSnapshot(
                verifications={code.value: count for code, count in self._codes.items()},
                cache_hits=total - self._misses - self._unrouted,
                cache_misses=self._misses,
                unrouted=self._unrouted,
                cache_entries=entries,
                store_latency={op: histogram.snapshot() for op, histogram in self._latency.items()},
                store_errors=dict(self._errors),
                fail_policy=dict(self._fell_back),
                breaker_opens=self._breaker_opens,
                events_dropped=recorder.dropped if recorder else 0,
                events_written=recorder.written if recorder else 0,
                event_write_errors=recorder.write_errors if recorder else 0,
                events_queued=recorder.queued if recorder else 0,
            )


class Trip:
    """One store trip as a context manager: its latency and failure go to the registry,
    and with OpenTelemetry present it is a span (a client span named
    ``keystile.<operation>``)."""

    __slots__ = ("_metrics", "_operation", "_span", "_started")

    def __init__(self, metrics: Metrics, operation: str) -> None:
        self._metrics, self._operation = metrics, operation

    def __enter__(self) -> None:
        self._span = store_span(self._operation, self._metrics.store)
        self._started = perf_counter()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._metrics.observe(self._operation, perf_counter() - self._started,
                              isinstance(error, StoreError))
        if self._span is not None:
            self._span.__exit__(kind, error, traceback)
