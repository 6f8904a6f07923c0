"""A lean asyncio Redis client for the store's two hot calls (``settle``, ``load_record``).

redis-py's asyncio client costs about as much per call as the round trip itself:
a connection taken from a pool and given back, two ``wait_for`` timers, its command
encoders, several loop iterations. A verify needs none of that: one connection per
event loop, requests written at once and pipelined (concurrent verifies of one loop
share the connection, their replies come back in order), replies parsed by
``hiredis``, and one timer per connection, not per call.

- **Deadline**: every request must be answered within the store's ``timeout`` of
  being sent; one ``loop.call_at`` timer watches the oldest request (it is re-armed
  only when it fires, never per call). A request past its deadline closes the
  connection and fails every request on it with :class:`StoreUnavailableError`,
  since the later replies could only be the stuck ones'; the next call reconnects.
- **Errors**: a refused, reset or closed connection, a TLS or handshake failure and
  a timeout are :class:`StoreUnavailableError` (the middleware's 503, never a hang);
  an error reply is :class:`StoreError`, but ``LOADING``, ``BUSY``, ``READONLY`` and
  the like (the server cannot serve now) are :class:`StoreUnavailableError`, which the
  ``open_cached`` fail policy falls back on. ``NOSCRIPT`` (a restarted or flushed
  server) loads the script and runs it again, in one write. Nothing else is sent
  twice: a settle whose connection broke after it was written may have been applied,
  so it is a 503, never a second settle.
- **The URL**: host, port, ``db``, username and password (``AUTH``), ``client_name``
  and, for ``rediss://``, the ``ssl_*`` options, read by redis-py's own URL parser and
  TLS context, so both clients of a store connect alike. The other options tune
  redis-py's pools and apply to the blocking client only.
- **Counted**: every write goes through :meth:`LeanConnection.send_packed_command`, as
  redis-py's do through theirs, so what counts round trips (the benchmark harness, the
  tests) wraps that class attribute as well.

Without ``hiredis`` (``pip install 'keystile[redis]'`` brings it) there is no lean
client: the store's async calls then run the blocking client in a worker thread.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import ssl
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from .._errors import StoreError, StoreUnavailableError

try:
    import hiredis
except ImportError:  # pragma: no cover - exercised only without hiredis
    hiredis = None  # type: ignore[assignment]

__all__ = ["AVAILABLE", "LeanClient", "LeanConnection", "Script", "Target", "pack", "target_from_url"]

AVAILABLE = hiredis is not None
_ReplyError = hiredis.ReplyError if AVAILABLE else None  # what a Reader makes of an error reply

# Error replies that mean "not now" rather than "wrong": the request may succeed later
# (a server loading its data, running a long script, or a replica during a failover).
_UNAVAILABLE = (b"LOADING", b"BUSY", b"MASTERDOWN", b"TRYAGAIN", b"CLUSTERDOWN", b"READONLY")


@dataclass(frozen=True)
class Target:
    """Where and how to connect (what the lean client honours of a Redis URL)."""

    host: str
    port: int
    db: int
    username: str | None
    password: str | None
    client_name: str | None
    tls: ssl.SSLContext | None
    keepalive: bool
    timeout: float

    def handshake(self) -> list[tuple[Any, ...]]:
        """The commands a new connection sends first."""
        commands: list[tuple[Any, ...]] = []
        if self.password is not None:
            commands.append(("AUTH", self.username, self.password) if self.username
                            else ("AUTH", self.password))
        if self.db:
            commands.append(("SELECT", self.db))
        if self.client_name:
            commands.append(("CLIENT", "SETNAME", self.client_name))
        return commands


def target_from_url(url: str, timeout: float) -> Target:
    """The :class:`Target` of a ``redis://`` or ``rediss://`` URL (keystile's own
    options already removed), parsed as redis-py parses it."""
    from redis.asyncio.connection import SSLConnection, parse_url

    options: dict[str, Any] = dict(parse_url(url))
    tls = None
    if url.startswith("rediss:"):
        # redis-py's TLS options and defaults (verify the certificate and the host name).
        ssl_options = {name: value for name, value in options.items() if name.startswith("ssl_")}
        tls = SSLConnection(**ssl_options).ssl_context.get()
    return Target(
        host=options.get("host") or "localhost", port=int(options.get("port") or 6379),
        db=int(options.get("db") or 0), username=options.get("username") or None,
        password=options.get("password"), client_name=options.get("client_name"),
        tls=tls, keepalive=bool(options.get("socket_keepalive")), timeout=timeout)


class Script:
    """A Lua script called by its SHA: ``EVALSHA sha numkeys keys... args...``."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode("utf-8")).hexdigest()  # Redis's name for it

    def command(self, keys: Sequence[str], args: Sequence[str | int]) -> bytes:
        packed: bytes = hiredis.pack_command(("EVALSHA", self.sha, len(keys), *keys, *args))  # type: ignore[arg-type]
        return packed


class LeanConnection(asyncio.Protocol):
    """One connection to Redis: requests pipelined, their replies in order (FIFO)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self._loop = loop
        self._timeout = timeout
        self._reader = hiredis.Reader()
        self._waiting: deque[tuple[asyncio.Future[Any], float]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._transport: asyncio.Transport | None = None
        #: Why the connection is unusable (``None`` while it is open).
        self.lost: StoreUnavailableError | None = StoreUnavailableError("Redis store: not connected")

    # -- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._transport is None:  # once: see LeanClient._open
            self._transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
            self.lost = None

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        waiting = self._waiting
        try:
            while (reply := reader.gets()) is not False:
                future = waiting.popleft()[0]
                if not future.done():  # its caller may have been cancelled
                    future.set_result(reply)
        except (hiredis.ProtocolError, IndexError) as exc:  # garbage, or a reply nobody asked for
            self.close(StoreUnavailableError(f"Redis store: protocol error: {exc!r}"))

    def connection_lost(self, exc: Exception | None) -> None:
        reason = f": {exc}" if exc else ""
        self._fail(StoreUnavailableError(f"Redis store: connection lost{reason}"))

    # -- requests ---------------------------------------------------------------------

    def send_packed_command(self, command: bytes, check_health: bool = True) -> None:
        """Write ``command`` (one or more packed commands): one round trip. The name and
        signature are redis-py's, so round-trip counters wrap this as they wrap those."""
        assert self._transport is not None
        self._transport.write(command)

    def request(self, command: bytes) -> asyncio.Future[Any]:
        """Send one packed command: its future reply.

        An error reply is a result (a ``hiredis.ReplyError``), for the caller to judge;
        a lost connection or a timeout fails the future.
        """
        if self.lost is not None or self._transport.is_closing():  # type: ignore[union-attr]
            raise StoreUnavailableError(str(self.lost or "Redis store: connection closing"))
        loop = self._loop
        future = loop.create_future()
        self._waiting.append((future, loop.time() + self._timeout))
        if self._timer is None:
            self._timer = loop.call_at(self._waiting[0][1], self._check_deadline)
        self.send_packed_command(command)
        return future

    def request_many(self, command: bytes, count: int) -> list[asyncio.Future[Any]]:
        """Send ``count`` commands packed together, in one write: their future replies."""
        if self.lost is not None:
            raise StoreUnavailableError(str(self.lost))
        loop = self._loop
        deadline = loop.time() + self._timeout
        futures = [loop.create_future() for _ in range(count)]
        self._waiting.extend((future, deadline) for future in futures)
        if self._timer is None:
            self._timer = loop.call_at(self._waiting[0][1], self._check_deadline)
        self.send_packed_command(command)
        return futures

    def _check_deadline(self) -> None:
        self._timer = None
        if not self._waiting:
            return  # answered: the next request arms the timer again
        deadline = self._waiting[0][1]
        if self._loop.time() >= deadline:
            self.close(StoreUnavailableError(
                f"Redis store: no reply within the timeout ({self._timeout:g} s)"))
        else:
            self._timer = self._loop.call_at(deadline, self._check_deadline)

    def close(self, reason: StoreUnavailableError | None = None) -> None:
        """Fail what is waiting and drop the connection (at once: a stuck server's
        replies must never reach a later request)."""
        self._fail(reason or StoreUnavailableError("Redis store: closed"))
        if self._transport is not None:
            self._transport.abort()

    def _fail(self, reason: StoreUnavailableError) -> None:
        if self.lost is None:
            self.lost = reason
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._waiting:
            future = self._waiting.popleft()[0]
            if not future.done():
                future.set_exception(StoreUnavailableError(str(reason)))


class LeanClient:
    """The lean client of one event loop: one connection, opened on first use and
    again after it was lost."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self._connection: LeanConnection | None = None
        self._opening: asyncio.Future[LeanConnection] | None = None
        self._closed = False

    async def connection(self) -> LeanConnection:
        connection = self._connection
        if connection is not None and connection.lost is None:
            return connection
        if self._opening is None:
            self._opening = asyncio.ensure_future(self._open())
            self._opening.add_done_callback(self._opened)
        # Shielded: a cancelled caller must not cancel the opening others wait for.
        return await asyncio.shield(self._opening)

    def _opened(self, opening: asyncio.Future[LeanConnection]) -> None:
        self._opening = None
        if not opening.cancelled() and opening.exception() is None:
            self._connection = opening.result()
            if self._closed:  # closed while it was being opened
                self.close()

    async def _open(self) -> LeanConnection:
        target, loop = self.target, asyncio.get_running_loop()
        connection: LeanConnection | None = None
        try:
            async with asyncio.timeout(target.timeout):
                transport, connection = await loop.create_connection(
                    lambda: LeanConnection(loop, target.timeout), target.host, target.port,
                    ssl=target.tls, server_hostname=target.host if target.tls else None)
                # uvloop returns before it calls connection_made (asyncio after): the
                # transport is the same either way.
                connection.connection_made(transport)
                if target.keepalive:
                    sock = connection._transport.get_extra_info("socket") if connection._transport else None
                    if sock is not None:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                handshake = target.handshake()
                if handshake:
                    packed = b"".join(pack(*command) for command in handshake)
                    for reply in await asyncio.gather(*connection.request_many(packed, len(handshake))):
                        if type(reply) is _ReplyError:
                            raise StoreUnavailableError(f"Redis store: connecting: {reply}")
        except (OSError, TimeoutError, StoreUnavailableError) as exc:
            if connection is not None:
                connection.close()
            if isinstance(exc, StoreUnavailableError):
                raise
            raise StoreUnavailableError(
                f"Redis store: cannot connect to {target.host}:{target.port}: {exc or 'timed out'}"
            ) from exc
        return connection

    async def call(self, command: bytes) -> Any:
        """Send one packed command; its reply (an error reply raises)."""
        connection = self._connection
        if connection is None or connection.lost is not None:
            connection = await self.connection()
        return _checked(await connection.request(command))

    async def evalsha(self, script: Script, keys: Sequence[str], args: Sequence[str | int]) -> Any:
        """Run ``script``; loaded first (in the same write) when the server lacks it."""
        return await self.evalsha_packed(script, script.command(keys, args))

    async def evalsha_packed(self, script: Script, command: bytes) -> Any:
        """Run ``command``, an ``EVALSHA`` of ``script`` packed by the caller (who may
        have kept most of it); loaded first (in the same write) when the server lacks it."""
        connection = self._connection
        if connection is None or connection.lost is not None:
            connection = await self.connection()
        reply = await connection.request(command)
        if type(reply) is _ReplyError and str(reply).startswith("NOSCRIPT"):
            # Not run at all: load it and run it again, one round trip for both.
            load = pack("SCRIPT", "LOAD", script.source)
            loaded, reply = await asyncio.gather(*connection.request_many(load + command, 2))
            _checked(loaded)
        return _checked(reply)

    def close(self) -> None:
        self._closed = True
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def pack(*parts: str | int | bytes) -> bytes:
    """One command in the protocol's form."""
    packed: bytes = hiredis.pack_command(cast(Any, parts))
    return packed


def _checked(reply: Any) -> Any:
    if type(reply) is _ReplyError:
        message = str(reply)
        if message.encode().startswith(_UNAVAILABLE):
            raise StoreUnavailableError(f"Redis store: {message}")
        raise StoreError(f"Redis store: {message}")
    return reply
