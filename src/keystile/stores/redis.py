"""``redis://host:port/db`` (``rediss://`` for TLS): the store for many instances.

Documents are JSON strings; unique fields have a hash ``value -> id`` per kind and
field, grouping fields and each kind's ids a sorted set (scanned by id with
``ZRANGEBYLEX``). Every document write is one Lua script that checks the unique
fields and moves the indexes with the document, so it is atomic. Dynamic states
(credits, rate-limit windows) are JSON strings too, written in a canonical form the
settle script reads without decoding; a verify settles them in ONE round trip (one
``EVALSHA``, see ``_redis_settle``), and a cache miss reads the key, its identity and
its roles in one script as well.

Two clients: redis-py's blocking one for everything, and, under asyncio, a lean one
per event loop for the two hot calls (``_redis_lean``: pipelined, ``hiredis``-parsed,
one timer per connection), so an ASGI app's verify costs about one bare round trip.

Options in the URL's query: ``prefix`` (default ``ks:``) namespaces every key, so
several apps or test runs can share a database; ``timeout`` (seconds, default 0.5)
bounds every call, so a Redis that hangs costs a 503, never a hung request.

Invalidation: a change made through any instance is published on the channel
``<prefix>invalidate``; every instance with a verifier on the store listens in a
background thread and evicts the key from its cache (in milliseconds). After the
listening connection was lost and comes back, an instance drops its whole cache,
since it may have missed messages meanwhile.

Redis keeps keys in memory: configure persistence (``appendonly yes``) or a restart
loses every key and API, and verifies then answer ``NOT_FOUND``.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .._analytics import Event, EventFilter
from .._bus import Listener, publish, subscribe
from .._decide import Plan, Settlement
from .._errors import ConfigurationError, ConflictError, StoreError, StoreUnavailableError
from .._logs import safe_url
from .._loops import PerLoop
from .._models import KeyRecord
from .._records import key_record_from_docs
from ._base import KINDS, Doc, NativeAsync, State, Store
from ._redis_lean import AVAILABLE as LEAN_AVAILABLE
from ._redis_lean import LeanClient, Script, target_from_url
from ._redis_settle import LuaSettle, TooLate, decode_state, encode_state, state_redis_key

try:
    import redis
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import RedisError, WatchError
    from redis.exceptions import TimeoutError as RedisTimeoutError
except ImportError:  # pragma: no cover - exercised only without the extra
    redis = None  # type: ignore[assignment]

__all__ = ["RedisStore"]

R = TypeVar("R")

#: The analytics stream keeps about this many events (and those within the retention).
MAX_EVENTS = 1_000_000
_SKEW_MS = 300_000  # how far apart the instances' clocks may be, for event reads

# KEYS[1]: the stream; ARGV: the cap, then time, event pairs. Ids "<ms>-<seq>" with ms
# the event's time unless an earlier-written entry is later (then its ms, next seq).
_WRITE_EVENTS = """
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local ms, seq = 0, -1
if last[1] then
  local dash = string.find(last[1][1], '-', 1, true)
  ms, seq = tonumber(string.sub(last[1][1], 1, dash - 1)), tonumber(string.sub(last[1][1], dash + 1))
end
for i = 2, #ARGV, 2 do
  local t = tonumber(ARGV[i])
  if t > ms then ms, seq = t, 0 else seq = seq + 1 end
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], string.format('%d-%d', ms, seq), 'e', ARGV[i + 1])
end
return #ARGV
"""
logger = logging.getLogger("keystile.redis")
_PROCESS = {"origin": uuid.uuid4().hex}  # this process's own messages are delivered locally


_LISTENING: weakref.WeakSet[RedisStore] = weakref.WeakSet()  # stores with a listener


def _after_fork() -> None:
    """A forked child (gunicorn --preload, multiprocessing) is another instance: a new
    origin, listeners of its own (threads do not survive a fork), and asyncio
    connections of its own (the inherited ones are the parent's sockets)."""
    _PROCESS["origin"] = uuid.uuid4().hex
    for store in list(_LISTENING):
        if not store._closed.is_set():
            store._start_listener()


os.register_at_fork(after_in_child=_after_fork)

_WRITE_DOC = """
local prefix, kind, id, mode, doc_json = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local nu = tonumber(ARGV[6])
local uniques, groups = {}, {}
for i = 1, nu do uniques[i] = ARGV[6 + i] end
local ng = tonumber(ARGV[7 + nu])
for i = 1, ng do groups[i] = ARGV[7 + nu + i] end
local function field(doc, name)
  local v = doc[name]
  if v == nil or v == cjson.null then return nil end
  return tostring(v)
end
local doc_key = prefix .. "d:" .. kind .. ":" .. id
local old_json = redis.call("GET", doc_key)
if mode == "insert" and old_json then return {"conflict", "id", id} end
local old = nil
if old_json then old = cjson.decode(old_json) end
local new = nil
if mode ~= "delete" then
  new = cjson.decode(doc_json)
  for _, f in ipairs(uniques) do
    local v = field(new, f)
    if v then
      local owner = redis.call("HGET", prefix .. "u:" .. kind .. ":" .. f, v)
      if owner and owner ~= id then return {"conflict", f, v} end
    end
  end
end
if old then
  for _, f in ipairs(uniques) do
    local v = field(old, f)
    if v and redis.call("HGET", prefix .. "u:" .. kind .. ":" .. f, v) == id then
      redis.call("HDEL", prefix .. "u:" .. kind .. ":" .. f, v)
    end
  end
  for _, f in ipairs(groups) do
    local v = field(old, f)
    if v then redis.call("ZREM", prefix .. "g:" .. kind .. ":" .. f .. ":" .. v, id) end
  end
end
if new then
  for _, f in ipairs(uniques) do
    local v = field(new, f)
    if v then redis.call("HSET", prefix .. "u:" .. kind .. ":" .. f, v, id) end
  end
  for _, f in ipairs(groups) do
    local v = field(new, f)
    if v then redis.call("ZADD", prefix .. "g:" .. kind .. ":" .. f .. ":" .. v, 0, id) end
  end
  redis.call("SET", doc_key, doc_json)
  redis.call("ZADD", prefix .. "a:" .. kind, 0, id)
elseif old then
  redis.call("DEL", doc_key)
  redis.call("ZREM", prefix .. "a:" .. kind, id)
end
return {"ok"}
"""

_LOAD_RECORD = """
local prefix, hash = ARGV[1], ARGV[2]
local id = redis.call("HGET", prefix .. "u:key:hash", hash)
if not id then return {} end
local key_json = redis.call("GET", prefix .. "d:key:" .. id)
if not key_json then return {} end
local key = cjson.decode(key_json)
local out = {key_json, ""}
local identity_id = key["identity_id"]
if identity_id and identity_id ~= cjson.null then
  out[2] = redis.call("GET", prefix .. "d:identity:" .. identity_id) or ""
end
local roles = key["roles"]
if roles and roles ~= cjson.null then
  for _, name in ipairs(roles) do
    local role_id = redis.call("HGET", prefix .. "u:role:name", name)
    if role_id then
      local role = redis.call("GET", prefix .. "d:role:" .. role_id)
      if role then out[#out + 1] = role end
    end
  end
end
return out
"""

_OWN_OPTIONS = ("prefix", "timeout")


def _split_url(url: str) -> tuple[str, str, float]:
    """The URL redis-py gets, and the ``prefix`` and ``timeout`` options taken from it."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ConfigurationError(f"not a Redis URL: {safe_url(url)!r}")
    query = parse_qsl(parts.query, keep_blank_values=True)
    own = {name: value for name, value in query if name in _OWN_OPTIONS}
    rest = [(name, value) for name, value in query if name not in _OWN_OPTIONS]
    prefix = own.get("prefix", "ks:")
    try:
        timeout = float(own.get("timeout", "0.5"))
    except ValueError:
        raise ConfigurationError(f"timeout in {safe_url(url)!r} must be a number of seconds") from None
    if timeout <= 0:
        raise ConfigurationError(f"timeout in {safe_url(url)!r} must be > 0 seconds")
    return urlunsplit(parts._replace(query=urlencode(rest))), prefix, timeout


class RedisStore(Store):
    """A Redis database shared by every instance of an app."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        if redis is None:
            raise ConfigurationError("redis:// needs the [redis] extra: pip install 'keystile[redis]'")
        client_url, self.prefix, self.timeout = _split_url(url)
        self.channel = f"{self.prefix}invalidate"
        self._listener: threading.Thread | None = None
        self._listener_pid = 0
        self._closed = threading.Event()
        try:
            # Any: redis-py types replies loosely (bytes | str | Awaitable)
            self.client: Any = redis.Redis.from_url(
                client_url, socket_timeout=self.timeout, socket_connect_timeout=self.timeout,
                health_check_interval=30, retry_on_timeout=False)
        except ValueError as exc:
            raise ConfigurationError(f"bad Redis URL {safe_url(url)!r}: {exc}") from exc
        self._write_doc = self.client.register_script(_WRITE_DOC)
        self._load_record = self.client.register_script(_LOAD_RECORD)
        self._write_events = self.client.register_script(_WRITE_EVENTS)
        self._settle = LuaSettle(self.client, self.prefix)
        self._offset_us, self._offset_due = 0, 0.0
        self._client_url = client_url
        # The lean asyncio client needs hiredis; without it async calls run in a thread.
        self._native = _AsyncRedis(self) if LEAN_AVAILABLE else None

    def __repr__(self) -> str:
        parts = urlsplit(self.url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
        return f"RedisStore('{parts.scheme}://{host}{port}{parts.path}', prefix={self.prefix!r})"

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise StoreUnavailableError(f"Redis store: {exc}") from exc
        except RedisError as exc:
            raise StoreError(f"Redis store: {exc}") from exc

    def _doc_key(self, kind: str, id: str) -> str:
        return f"{self.prefix}d:{kind}:{id}"

    def _state_key(self, key: str) -> str:
        return state_redis_key(self.prefix, key)

    def close(self) -> None:
        self._closed.set()
        self.client.close()
        if self._native is not None:
            self._native.close()

    # -- invalidation across instances ----------------------------------------------------

    def announce(self, key_hash: str | None, *, keyspaces: bool = False) -> None:
        publish(self.url, key_hash, keyspaces=keyspaces)  # this process: at once
        message = json.dumps({"origin": _PROCESS["origin"], "hash": key_hash, "keyspaces": keyspaces})
        try:
            with self._errors():
                self.client.publish(self.channel, message)
        except StoreError as exc:
            # The change itself is stored; other instances see it when their cache
            # entries expire (cache_ttl) or when their listener reconnects.
            logger.warning("keystile: could not publish an invalidation: %s", exc,
                           extra=self._fields(exc))

    def listen(self, listener: Listener) -> None:
        subscribe(self.url, listener)
        if self._listener is None or not self._listener.is_alive() or self._listener_pid != os.getpid():
            self._start_listener()
        _LISTENING.add(self)

    def _start_listener(self) -> None:
        self._listener_pid = os.getpid()
        self._listener = threading.Thread(target=self._listen, name="keystile-redis-invalidate",
                                          daemon=True)
        self._listener.start()

    def _listen(self) -> None:
        """Deliver other instances' invalidations to this process's verifiers, forever."""
        backoff, connected_before = 0.05, False
        while not self._closed.is_set():
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(self.channel)
                if connected_before:
                    # Messages may have been missed while the connection was down.
                    logger.warning("keystile: Redis invalidations reconnected; dropping cached keys",
                                   extra=self._fields())
                    publish(self.url, None, keyspaces=True)
                connected_before, backoff = True, 0.05
                while not self._closed.is_set():
                    message = pubsub.get_message(timeout=0.2)
                    if message is not None and message["type"] == "message":
                        self._deliver(message["data"])
            except Exception as exc:  # a background thread must never die of anything
                if self._closed.is_set():
                    return  # closed under us: the pool's sockets went away
                logger.warning("keystile: Redis invalidation listener lost its connection: %s", exc,
                               extra=self._fields(exc))
                self._closed.wait(backoff)
                backoff = min(backoff * 2, 1.0)
            finally:
                with suppress(RedisError, OSError):
                    pubsub.close()

    def _deliver(self, data: bytes) -> None:
        try:
            message = json.loads(data)
            if message.get("origin") == _PROCESS["origin"]:
                return  # announced by this process: delivered already
            key_hash = message.get("hash")
            publish(self.url, key_hash if isinstance(key_hash, str) else None,
                    keyspaces=bool(message.get("keyspaces")))
        except (ValueError, AttributeError):
            logger.warning("keystile: ignored a malformed invalidation message", extra=self._fields())

    def _fields(self, error: Exception | None = None) -> dict[str, Any]:
        """The ``extra`` of the invalidation listener's log records."""
        fields: dict[str, Any] = {"store": safe_url(self.url), "channel": self.channel}
        if error is not None:
            fields["error"] = type(error).__name__
        return fields

    # -- documents --------------------------------------------------------------------

    def get(self, kind: str, id: str) -> Doc | None:
        with self._errors():
            raw = self.client.get(self._doc_key(kind, id))
        return json.loads(raw) if raw is not None else None

    def find(self, kind: str, field: str, value: str) -> Doc | None:
        if field not in KINDS[kind][0]:
            raise ValueError(f"{field!r} is not a unique field of {kind!r}")
        with self._errors():
            id = self.client.hget(f"{self.prefix}u:{kind}:{field}", value)
            if id is None:
                return None
            raw = self.client.get(self._doc_key(kind, id.decode()))
        return json.loads(raw) if raw is not None else None

    def scan(
        self, kind: str, *, where: tuple[str, str] | None = None, after: str | None = None,
        limit: int = 100,
    ) -> list[Doc]:
        if where is None:
            index = f"{self.prefix}a:{kind}"
        else:
            if where[0] not in KINDS[kind][1]:
                raise ValueError(f"{where[0]!r} is not a grouping field of {kind!r}")
            index = f"{self.prefix}g:{kind}:{where[0]}:{where[1]}"
        with self._errors():
            ids = self.client.zrangebylex(index, f"({after}" if after else "-", "+", start=0, num=limit)
            if not ids:
                return []
            raws = self.client.mget([self._doc_key(kind, id.decode()) for id in ids])
        return [json.loads(raw) for raw in raws if raw is not None]

    def _write_args(self, kind: str, id: str, mode: str, doc: Doc | None) -> list[Any]:
        uniques, groups = KINDS[kind]
        return [self.prefix, kind, id, mode, json.dumps(doc) if doc is not None else "",
                len(uniques), *uniques, len(groups), *groups]

    @staticmethod
    def _check_written(answer: Any) -> None:
        if answer and answer[0] == b"conflict":
            field, value = answer[1].decode(), answer[2].decode()
            raise ConflictError(f"a unique field clashes: {field} {value!r} exists")

    def insert(self, kind: str, doc: Doc) -> None:
        with self._errors():
            self._check_written(self._write_doc(args=self._write_args(kind, doc["id"], "insert", doc)))

    def replace(self, kind: str, doc: Doc) -> None:
        with self._errors():
            self._check_written(self._write_doc(args=self._write_args(kind, doc["id"], "replace", doc)))

    def delete(self, kind: str, id: str) -> None:
        with self._errors():
            self._write_doc(args=self._write_args(kind, id, "delete", None))

    def modify(self, kind: str, id: str, fn: Callable[[Doc | None], Doc]) -> Doc:
        key = self._doc_key(kind, id)
        with self._errors(), self.client.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    raw = pipe.get(key)
                    doc = fn(json.loads(raw) if raw is not None else None)
                    pipe.multi()
                    self._write_doc(args=self._write_args(kind, doc["id"], "replace", doc), client=pipe)
                    answer = pipe.execute()[0]
                except WatchError:
                    continue  # changed between the read and the write: read again
                self._check_written(answer)
                return doc

    # -- states -------------------------------------------------------------------------

    def transact(
        self, keys: Sequence[str],
        fn: Callable[[Mapping[str, State | None]], tuple[dict[str, State | None], R]],
    ) -> R:
        names = [self._state_key(key) for key in keys]
        with self._errors(), self.client.pipeline() as pipe:
            while True:
                try:
                    if names:
                        pipe.watch(*names)
                    raws = pipe.mget(names) if names else []
                    states = {key: decode_state(raw) if raw is not None else None
                              for key, raw in zip(keys, raws, strict=True)}
                    writes, value = fn(states)
                    pipe.multi()
                    for key, state in writes.items():
                        if state is None:
                            pipe.delete(self._state_key(key))
                        else:
                            pipe.set(self._state_key(key), encode_state(state))
                    pipe.execute()
                    return value
                except WatchError:
                    continue

    def read_states(self, keys: Sequence[str]) -> dict[str, State | None]:
        if not keys:
            return {}
        with self._errors():
            raws = self.client.mget([self._state_key(key) for key in keys])
        return {key: decode_state(raw) if raw is not None else None
                for key, raw in zip(keys, raws, strict=True)}

    # -- analytics events -----------------------------------------------------------------

    def write_events(self, events: Sequence[Event]) -> None:
        """The batch into a stream capped at about :data:`MAX_EVENTS` entries, in one
        ``EVALSHA``: each entry's id is its event's time (kept increasing), so reading
        a time range is an ``XRANGE``."""
        args: list[Any] = [MAX_EVENTS]
        for event in events:
            args += [event.time, json.dumps(event.to_dict(), separators=(",", ":"))]
        with self._errors():
            self._write_events(keys=[f"{self.prefix}events"], args=args)

    def read_events(self, since: int, until: int, where: EventFilter) -> list[Event]:
        # An entry's id is at or after its event's time (ids only increase, so an event
        # written after a later one gets that one's time): read a margin past the end.
        stream, high = f"{self.prefix}events", until + _SKEW_MS
        found: list[Event] = []
        start = str(since)
        with self._errors():
            while True:
                page = self.client.xrange(stream, start, str(high), count=10_000)
                for _, fields in page:
                    event = Event.from_dict(json.loads(fields[b"e" if b"e" in fields else "e"]))
                    if since <= event.time < until and where.matches(event):
                        found.append(event)
                if len(page) < 10_000:
                    return found
                last = page[-1][0]
                start = "(" + (last.decode() if isinstance(last, bytes) else last)

    def trim_events(self, before: int) -> None:
        with self._errors():
            self.client.xtrim(f"{self.prefix}events", minid=str(max(0, before)), approximate=False)

    # -- native forms: one round trip each ------------------------------------------------

    def settle(self, plan: Plan, now: int) -> Settlement:
        """Every limit and the credits of one verify, all or nothing: one ``EVALSHA``.

        The script carries a deadline on the server's clock (this call's timeout
        from now): a call stuck behind a paused server runs after the client gave up
        and answered 503, and must then take nothing, or the key pays for a request
        that was refused.
        """
        deadline = self._deadline_us(self._clock_offset_us())
        with self._errors():
            try:
                return self._settle(plan, now, deadline)
            except TooLate as exc:
                raise StoreUnavailableError(f"Redis store: {exc}") from exc

    def _clock_offset_us(self) -> int:
        """The server's clock minus ours (us), measured once a minute: a skewed clock
        must not make every settle late (or none)."""
        if time.monotonic() < self._offset_due:
            return self._offset_us
        with self._errors():
            before = time.time()
            seconds, micros = self.client.time()
            self._note_offset(before, seconds, micros, time.time())
        return self._offset_us

    def _note_offset(self, before: float, seconds: int, micros: int, after: float) -> None:
        """The offset from a ``TIME`` answered between ``before`` and ``after``."""
        self._offset_us = int(seconds * 1_000_000 + micros - (before + after) / 2 * 1_000_000)
        self._offset_due = time.monotonic() + 60

    def load_record(self, key_hash: str) -> KeyRecord | None:
        with self._errors():
            found = self._load_record(args=[self.prefix, key_hash])
        return _record_from(found)

    def native_async(self) -> NativeAsync | None:
        return self._native

    # -- under asyncio ----------------------------------------------------------------------

    def _deadline_us(self, offset_us: int) -> int:
        return int((time.time() + self.timeout) * 1_000_000) + offset_us


def _record_from(found: Any) -> KeyRecord | None:
    """The record the load script found (key, identity or "", roles...), if live."""
    if not found:
        return None
    key = json.loads(found[0])
    if key.get("deleted_at") is not None:
        return None
    identity = json.loads(found[1]) if found[1] else None
    roles = [json.loads(raw) for raw in found[2:]]
    return key_record_from_docs(key, identity, roles)


class _AsyncRedis:
    """The store's two hot calls under asyncio, on the lean client (``_redis_lean``):
    one connection per event loop (see ``_loops``), no thread, one round trip each."""

    def __init__(self, store: RedisStore) -> None:
        self.store = store
        try:
            self.target = target_from_url(store._client_url, store.timeout)
        except (OSError, ValueError, TypeError, RedisError) as exc:  # a bad TLS file or option
            raise ConfigurationError(f"bad Redis URL for asyncio: {exc}") from exc
        self._clients: PerLoop[LeanClient] = PerLoop(self._make, _close_client)
        self._load = Script(_LOAD_RECORD)
        self._settle = Script(LuaSettle.source())

    def _make(self) -> LeanClient:
        return LeanClient(self.target)

    async def load_record(self, key_hash: str) -> KeyRecord | None:
        client = self._clients.current() or await self._clients.get()
        return _record_from(await client.evalsha(self._load, (), (self.store.prefix, key_hash)))

    async def settle(self, plan: Plan, now: int) -> Settlement:
        store = self.store
        client = self._clients.current() or await self._clients.get()
        if time.monotonic() >= store._offset_due:
            before = time.time()
            seconds, micros = await client.call(_TIME)
            store._note_offset(before, int(seconds), int(micros), time.time())
        script = self._settle
        command = store._settle.packed(plan, script.sha, now, store._deadline_us(store._offset_us))
        try:
            return LuaSettle.settlement(plan, now, await client.evalsha_packed(script, command))
        except TooLate as exc:
            raise StoreUnavailableError(f"Redis store: {exc}") from exc

    def close(self) -> None:
        self._clients.close()


_TIME = b"*1\r\n$4\r\nTIME\r\n"


async def _close_client(client: LeanClient) -> None:
    client.close()
