"""``memory://``: documents and states in dicts, for tests and single-process apps."""

from __future__ import annotations

import collections
import json
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, TypeVar, cast

from .._analytics import Event, EventFilter
from .._errors import ConflictError
from .._forks import on_fork
from ._base import KINDS, Doc, State, Store

__all__ = ["MemoryStore"]

R = TypeVar("R")
T = TypeVar("T")

MAX_EVENTS = 1_000_000


class MemoryStore(Store):
    """Everything in this process's memory; gone when it exits."""

    blocking: ClassVar[bool] = False

    def __init__(self, url: str = "memory://") -> None:
        super().__init__(url)
        self._lock = threading.RLock()
        on_fork(self)
        self._docs: dict[str, dict[str, Doc]] = {kind: {} for kind in KINDS}
        self._unique: dict[tuple[str, str], dict[str, str]] = {
            (kind, field): {} for kind, (uniques, _) in KINDS.items() for field in uniques
        }
        self._states: dict[str, State] = {}
        #: The latest analytics events (a bounded window: this store is for tests and
        #: single processes; older events fall off the end).
        self._events: collections.deque[Event] = collections.deque(maxlen=MAX_EVENTS)

    def _after_fork(self) -> None:
        self._lock = threading.RLock()

    def get(self, kind: str, id: str) -> Doc | None:
        doc = self._docs[kind].get(id)
        return _clone(doc) if doc is not None else None

    def find(self, kind: str, field: str, value: str) -> Doc | None:
        doc_id = self._unique[(kind, field)].get(value)
        return self.get(kind, doc_id) if doc_id is not None else None

    def scan(
        self, kind: str, *, where: tuple[str, str] | None = None, after: str | None = None,
        limit: int = 100,
    ) -> list[Doc]:
        with self._lock:
            ids = sorted(i for i in self._docs[kind] if after is None or i > after)
            docs = (self._docs[kind][i] for i in ids)
            matching = [d for d in docs if where is None or d.get(where[0]) == where[1]]
        return _clone(matching[:limit])

    def insert(self, kind: str, doc: Doc) -> None:
        with self._lock:
            if doc["id"] in self._docs[kind]:
                raise ConflictError(f"{kind} {doc['id']} exists")
            self._write(kind, doc, previous=None)

    def replace(self, kind: str, doc: Doc) -> None:
        with self._lock:
            self._write(kind, doc, previous=self._docs[kind].get(doc["id"]))

    def modify(self, kind: str, id: str, fn: Callable[[Doc | None], Doc]) -> Doc:
        with self._lock:
            doc = fn(self.get(kind, id))
            self._write(kind, doc, previous=self._docs[kind].get(doc["id"]))
            return _clone(doc)

    def _write(self, kind: str, doc: Doc, previous: Doc | None) -> None:
        doc = json.loads(json.dumps(doc))  # store what a real store would: plain JSON
        for field in KINDS[kind][0]:
            index = self._unique[(kind, field)]
            value = doc.get(field)
            owner = index.get(value) if value is not None else None
            if owner is not None and owner != doc["id"]:
                raise ConflictError(f"{kind} with {field} {doc[field]!r} exists")
        for field in KINDS[kind][0]:
            if previous is not None and previous.get(field) is not None:
                self._unique[(kind, field)].pop(previous[field], None)
            if doc.get(field) is not None:
                self._unique[(kind, field)][doc[field]] = doc["id"]
        self._docs[kind][doc["id"]] = doc

    def delete(self, kind: str, id: str) -> None:
        with self._lock:
            doc = self._docs[kind].pop(id, None)
            for field in KINDS[kind][0]:
                if doc is not None and doc.get(field) is not None:
                    self._unique[(kind, field)].pop(doc[field], None)

    def transact(
        self, keys: Sequence[str],
        fn: Callable[[Mapping[str, State | None]], tuple[dict[str, State | None], R]],
    ) -> R:
        with self._lock:
            # Copies in and out, as a real store would: fn may change what it was given and fail.
            writes, value = fn(_clone({key: self._states.get(key) for key in keys}))
            for key, state in writes.items():
                if state is None:
                    self._states.pop(key, None)
                else:
                    self._states[key] = _clone(state)
            return value

    def read_states(self, keys: Sequence[str]) -> dict[str, State | None]:
        with self._lock:
            return _clone({key: self._states.get(key) for key in keys})


    # -- analytics events -----------------------------------------------------------------

    def write_events(self, events: Sequence[Event]) -> None:
        self._events.extend(events)

    def read_events(self, since: int, until: int, where: EventFilter) -> list[Event]:
        return [e for e in list(self._events) if since <= e.time < until and where.matches(e)]

    def trim_events(self, before: int) -> None:
        with self._lock:
            kept = [e for e in self._events if e.time >= before]
            self._events.clear()
            self._events.extend(kept)


def _clone(value: T) -> T:
    """A deep copy of plain JSON data (dicts, lists, scalars), far cheaper than
    ``copy.deepcopy``: what goes in or out of the store is never shared with callers."""
    return cast(T, _copy(value))


def _copy(value: Any) -> Any:
    if type(value) is dict:
        return {key: _copy(item) for key, item in value.items()}
    if type(value) is list:
        return [_copy(item) for item in value]
    return value
