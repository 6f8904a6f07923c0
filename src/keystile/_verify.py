"""The verifier: prefix routing, the cache, the decision and the store, in one flow.

The flow is written once, as a generator that yields the I/O it needs (load the
keyspaces, load a record, settle a plan) and receives the answers; two short
drivers run it, one synchronously and one under asyncio.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable, Mapping
from typing import Any, Final

from ._bus import subscribe
from ._cache import RecordCache
from ._decide import Plan, build_result, decide_static, make_plan
from ._errors import ConfigurationError, PermissionQueryError
from ._ids import now_ms
from ._keys import hash_key, split_key
from ._models import Code, KeyRecord, Keyspace, VerifyRequest, VerifyResult
from ._permissions import parse_query
from .stores import AsyncStore, Store, open_store

__all__ = ["Verifier"]

_NOT_FOUND: Final = VerifyResult(valid=False, code=Code.NOT_FOUND)
_LOAD_KEYSPACES: Final = ("keyspaces",)
Op = tuple[Any, ...]
Flow = Generator[Op, Any, VerifyResult]


class Verifier:
    """Verifies keys against a store through a local cache.

    >>> verifier = Verifier("memory://")
    >>> verifier.verify("sk_live_nope").code
    <Code.NOT_FOUND: 'NOT_FOUND'>
    """

    def __init__(
        self,
        store: Store | str | None = None,
        *,
        cache_ttl: float = 10.0,
        negative_ttl: float = 2.0,
        cache_size: int = 100_000,
        keyspace_refresh: float = 30.0,
        now: Callable[[], int] = now_ms,
    ) -> None:
        self.store = store if isinstance(store, Store) else open_store(store)
        self.astore = AsyncStore(self.store)
        self.now = now
        self.cache = RecordCache(maxsize=cache_size, ttl=cache_ttl, negative_ttl=negative_ttl,
                                 clock=now)
        if keyspace_refresh <= 0:
            raise ConfigurationError("keyspace_refresh must be > 0 seconds")
        self._refresh_ms = int(keyspace_refresh * 1000)
        self._by_prefix: dict[str, Keyspace] = {}
        self._keyspaces_at: int | None = None
        subscribe(self.store.url, self)

    def __repr__(self) -> str:
        return f"Verifier({self.store!r})"

    def invalidate(self, key_hash: str | None, *, keyspaces: bool = False) -> None:
        if key_hash is None:
            self.cache.clear()
        else:
            self.cache.evict(key_hash)
        if keyspaces:
            self._keyspaces_at = None

    # -- the two drivers ------------------------------------------------------------

    def verify(self, key: str, **request: Any) -> VerifyResult:
        """Verify ``key``; keyword arguments are the fields of :class:`VerifyRequest`."""
        return self.verify_request(key, _request(request))

    async def verify_async(self, key: str, **request: Any) -> VerifyResult:
        return await self.verify_request_async(key, _request(request))

    def verify_request(self, key: str, request: VerifyRequest) -> VerifyResult:
        flow = self._flow(key, request)
        try:
            op = next(flow)
            while True:
                op = flow.send(self._run(op))
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]

    async def verify_request_async(self, key: str, request: VerifyRequest) -> VerifyResult:
        flow = self._flow(key, request)
        try:
            op = next(flow)
            while True:
                op = flow.send(await self._run_async(op))
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]

    def _run(self, op: Op) -> Any:
        if op is _LOAD_KEYSPACES:
            return self.store.load_keyspaces()
        if isinstance(op[0], Plan):
            return self.store.settle(op[0], op[1])
        if self.cache.enabled:
            return self.cache.load(op[0], self.store.load_record)
        return self.store.load_record(op[0])

    async def _run_async(self, op: Op) -> Any:
        if op is _LOAD_KEYSPACES:
            return await self.astore.load_keyspaces()
        if isinstance(op[0], Plan):
            return await self.astore.settle(op[0], op[1])
        if self.cache.enabled:
            return await self.cache.load_async(op[0], self.astore.load_record)
        return await self.astore.load_record(op[0])

    # -- the flow --------------------------------------------------------------------

    def _flow(self, key: str, request: VerifyRequest) -> Flow:
        if request.permissions is not None:
            if not isinstance(request.permissions, str):  # e.g. a list: not a query at all
                raise PermissionQueryError("a permission query must be a string such as 'a AND b'",
                                           query=repr(request.permissions), position=0)
            parse_query(request.permissions)  # a malformed query raises before any work
        now = self.now()
        if self._keyspaces_at is None or now - self._keyspaces_at >= self._refresh_ms:
            self._set_keyspaces((yield _LOAD_KEYSPACES), now)
        keyspace = self._route(key, request)
        if keyspace is None:
            return _NOT_FOUND
        record: KeyRecord | None = yield (hash_key(key),)
        if record is not None and record.keyspace_id != keyspace.id:
            record = None  # found by hash, but not a key of the keyspace its prefix names
        code = decide_static(record, keyspace, request, now)
        if code is not None or record is None:
            return build_result(code or Code.NOT_FOUND, record)
        plan = make_plan(record, request)
        if plan.empty:
            return build_result(Code.VALID, record)
        settlement = yield (plan, now)
        return build_result(settlement.code, record, settlement)

    def _route(self, key: str, request: VerifyRequest) -> Keyspace | None:
        prefix = split_key(key) if isinstance(key, str) else None
        keyspace = self._by_prefix.get(prefix) if prefix is not None else None
        if keyspace is None or (request.api_id is not None and keyspace.api_id != request.api_id):
            return None
        return keyspace

    def _set_keyspaces(self, keyspaces: Iterable[Keyspace], now: int) -> None:
        self._by_prefix = {keyspace.prefix: keyspace for keyspace in keyspaces}
        self._keyspaces_at = now

    def keyspace_for(self, prefix: str) -> Keyspace | None:
        """The keyspace of a prefix, as routing sees it now."""
        return self._by_prefix.get(prefix)


def _request(fields: Mapping[str, Any]) -> VerifyRequest:
    try:
        request = VerifyRequest(**fields)
    except TypeError as exc:
        raise ConfigurationError(f"unknown verify option: {exc}") from exc
    if isinstance(request.ratelimits, (str, dict)):
        return VerifyRequest(**{**fields, "ratelimits": (request.ratelimits,)})
    return VerifyRequest(**{**fields, "ratelimits": tuple(request.ratelimits)})
