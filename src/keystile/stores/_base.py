"""The store contract: a few document and state primitives, and what is built on them.

A store keeps JSON documents by kind, with unique and grouping fields per kind,
and a map of small dynamic states (credits, rate-limit counters) that it can
read, change and write back atomically with :meth:`Store.transact`. Everything
else (building a key record, settling a verify) is written once here on top of
those primitives; a store may override it with a faster native form.

Stores are synchronous. :class:`AsyncStore` gives the async face: it calls a
store that does no blocking I/O inline and runs a blocking one in a worker thread.
"""

from __future__ import annotations

import abc
import functools
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, ClassVar, Protocol, TypeVar

import anyio.to_thread

from .._analytics import Event, EventFilter
from .._bus import Listener, publish, subscribe
from .._decide import Plan, Settlement, settle
from .._models import KeyRecord, Keyspace
from .._records import key_record_from_docs, keyspace_from_doc

__all__ = ["KINDS", "AsyncStore", "Doc", "NativeAsync", "State", "Store"]

Doc = dict[str, Any]
State = dict[str, Any]
R = TypeVar("R")

# kind -> (unique fields, grouping fields). Lookups by a unique field find one
# document; scans by a grouping field list documents in id order.
KINDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "api": ((), ()),
    "keyspace": (("prefix",), ("api_id",)),
    "key": (("hash",), ("api_id", "identity_id", "states_of")),
    "identity": (("external_id",), ()),
    "role": (("name",), ()),
    "permission": (("slug",), ()),
    # Recoverable keys (keystile._vault): the data keys, and each key's sealed plaintext.
    "vault": ((), ()),
    "encrypted_key": ((), ()),
}


class Store(abc.ABC):
    """A synchronous store. Subclasses implement the primitives below."""

    #: True when calls block on I/O, so async callers run them in a thread.
    blocking: ClassVar[bool] = True

    def __init__(self, url: str) -> None:
        self.url = url

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

    # -- primitives -----------------------------------------------------------------

    @abc.abstractmethod
    def get(self, kind: str, id: str) -> Doc | None: ...

    @abc.abstractmethod
    def find(self, kind: str, field: str, value: str) -> Doc | None:
        """The document of ``kind`` whose unique ``field`` equals ``value``."""

    @abc.abstractmethod
    def scan(
        self, kind: str, *, where: tuple[str, str] | None = None, after: str | None = None,
        limit: int = 100,
    ) -> list[Doc]:
        """Documents of ``kind`` in id order, after id ``after``, filtered by a grouping field."""

    @abc.abstractmethod
    def insert(self, kind: str, doc: Doc) -> None:
        """Add a document; raise :class:`ConflictError` if a unique field clashes."""

    @abc.abstractmethod
    def replace(self, kind: str, doc: Doc) -> None:
        """Overwrite the document with ``doc["id"]``; unique clashes raise ConflictError."""

    @abc.abstractmethod
    def delete(self, kind: str, id: str) -> None: ...

    @abc.abstractmethod
    def modify(self, kind: str, id: str, fn: Callable[[Doc | None], Doc]) -> Doc:
        """Atomically read the document ``id`` (``None`` if absent), write ``fn``'s answer.

        No other write to the store interleaves, so two concurrent changes to one
        document cannot lose either. ``fn`` may raise to write nothing.
        """

    @abc.abstractmethod
    def transact(
        self, keys: Sequence[str],
        fn: Callable[[Mapping[str, State | None]], tuple[dict[str, State | None], R]],
    ) -> R:
        """Atomically read the states of ``keys``, call ``fn``, write what it returns.

        ``fn`` gets the current states (``None`` when absent) and returns the states
        to write (``None`` deletes) and a value handed back to the caller. No other
        transaction on the same keys, in any thread or process, interleaves.
        """

    @abc.abstractmethod
    def read_states(self, keys: Sequence[str]) -> dict[str, State | None]: ...

    def close(self) -> None:  # noqa: B027 - stores without resources need nothing
        """Release connections; the store is unusable afterwards."""

    # -- analytics events -----------------------------------------------------------------

    def write_events(self, events: Sequence[Event]) -> None:
        """Record verification events (called by the analytics writer, in batches)."""
        raise NotImplementedError(f"{type(self).__name__} does not record analytics events")

    def read_events(self, since: int, until: int, where: EventFilter) -> list[Event]:
        """The recorded events of ``since <= time < until`` that ``where`` matches.

        A store may read more than ``where`` selects (the caller filters again), never less.
        """
        raise NotImplementedError(f"{type(self).__name__} does not record analytics events")

    def trim_events(self, before: int) -> None:
        """Forget events older than ``before`` (Unix ms): the retention."""
        raise NotImplementedError(f"{type(self).__name__} does not record analytics events")

    # -- invalidation -------------------------------------------------------------------

    def announce(self, key_hash: str | None, *, keyspaces: bool = False) -> None:
        """Tell every verifier of this store that ``key_hash`` (``None``: any key) or
        the keyspaces changed: in this process at once; a store shared across
        processes may also tell the others (Redis does, through pub/sub)."""
        publish(self.url, key_hash, keyspaces=keyspaces)

    def listen(self, listener: Listener) -> None:
        """Have ``listener`` hear every :meth:`announce` of this store's URL."""
        subscribe(self.url, listener)

    # -- built on the primitives ------------------------------------------------------

    def load_record(self, key_hash: str) -> KeyRecord | None:
        """The verification record of the live key with this hash, or ``None``."""
        key = self.find("key", "hash", key_hash)
        if key is None or key.get("deleted_at") is not None:
            return None
        identity = self.get("identity", key["identity_id"]) if key.get("identity_id") else None
        roles = [self.find("role", "name", name) for name in key.get("roles", ())]
        return key_record_from_docs(key, identity, [role for role in roles if role])

    def load_keyspaces(self) -> list[Keyspace]:
        """Every keyspace of a live API (for prefix routing)."""
        docs = self.scan_all("keyspace")
        return [keyspace_from_doc(doc) for doc in docs if not doc.get("deleted_at")]

    def settle(self, plan: Plan, now: int) -> Settlement:
        """Apply a verify's dynamic checks in one transaction."""

        def step(states: Mapping[str, State | None]) -> tuple[dict[str, State | None], Settlement]:
            settlement, writes = settle(plan, states, now)
            return dict(writes), settlement

        return self.transact(plan.state_keys, step)

    def native_async(self) -> NativeAsync | None:
        """The store's native asyncio calls, if it has any (default: none)."""
        return None

    def scan_all(self, kind: str, where: tuple[str, str] | None = None) -> list[Doc]:
        docs: list[Doc] = []
        after: str | None = None
        while page := self.scan(kind, where=where, after=after, limit=500):
            docs.extend(page)
            after = page[-1]["id"]
        return docs


class NativeAsync(Protocol):
    """What a store may do natively under asyncio, with no thread: the two hot calls."""

    async def load_record(self, key_hash: str) -> KeyRecord | None: ...

    async def settle(self, plan: Plan, now: int) -> Settlement: ...


class AsyncStore:
    """The async face of a :class:`Store`: its native async calls where it has them
    (Redis), else inline if it never blocks, else in a thread."""

    def __init__(self, store: Store) -> None:
        self.sync = store
        self.native: NativeAsync | None = store.native_async()
        # The two hot calls: straight to the native coroutine where there is one (a
        # coroutine frame less on every verify that goes to the store).
        native = self.native
        self.load_record: Callable[[str], Awaitable[KeyRecord | None]] = (
            native.load_record if native is not None else self._load_record)
        self.settle: Callable[[Plan, int], Awaitable[Settlement]] = (
            native.settle if native is not None else self._settle)

    async def run(self, fn: Callable[..., R], *args: Any) -> R:
        if not self.sync.blocking:
            return fn(*args)
        return await anyio.to_thread.run_sync(functools.partial(fn, *args))

    async def _load_record(self, key_hash: str) -> KeyRecord | None:
        return await self.run(self.sync.load_record, key_hash)

    async def load_keyspaces(self) -> list[Keyspace]:
        return await self.run(self.sync.load_keyspaces)

    async def _settle(self, plan: Plan, now: int) -> Settlement:
        return await self.run(self.sync.settle, plan, now)
