"""Async clients that belong to an event loop: one per loop, closed with it.

Connections of the Redis store's lean client and ``httpx.AsyncClient`` belong to the
loop that opened them. A verifier may serve several loops over its life (a test suite
makes one per test), so it keeps one client per loop and closes it when that loop ends:
the loop finalises its async generators before it closes (``asyncio.run``,
``asyncio.Runner``, uvicorn, pytest-asyncio), and one such generator per client
closes it then, so no socket outlives its loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import suppress
from typing import Generic, TypeVar

from ._forks import on_fork

__all__ = ["PerLoop"]

C = TypeVar("C")


class PerLoop(Generic[C]):
    """``await per_loop.get()``: this loop's client, made by ``make`` on first use;
    ``close`` is the coroutine function that closes one."""

    def __init__(self, make: Callable[[], C], close: Callable[[C], Awaitable[object]]) -> None:
        self._make = make
        self._close = close
        self._clients: dict[asyncio.AbstractEventLoop, tuple[C, AsyncIterator[None]]] = {}
        self._lock = threading.Lock()
        on_fork(self)

    def _after_fork(self) -> None:
        # The parent's loops and their clients' sockets are not the child's to use.
        self._lock = threading.Lock()
        self._clients = {}

    def current(self) -> C | None:
        """This loop's client if it was made already (no await: for hot paths)."""
        found = self._clients.get(asyncio.get_running_loop())
        return found[0] if found is not None else None

    async def get(self) -> C:
        loop = asyncio.get_running_loop()
        found = self._clients.get(loop)
        if found is None:
            client = self._make()
            closer = self._close_at_loop_end(client, loop)
            await closer.__anext__()  # now the loop knows it, and finalises it at its end
            found = (client, closer)
            with self._lock:
                self._clients[loop] = found
        return found[0]

    async def _close_at_loop_end(self, client: C, loop: asyncio.AbstractEventLoop) -> AsyncIterator[None]:
        try:
            yield
        finally:
            with self._lock:
                self._clients.pop(loop, None)
            await self._close(client)

    def close(self) -> None:
        """Close every loop's client on its own loop, where that loop still runs."""
        with self._lock:
            clients, self._clients = self._clients, {}
        for loop, (client, _) in clients.items():
            if not loop.is_closed():
                with suppress(RuntimeError):
                    asyncio.run_coroutine_threadsafe(self._aclose(client), loop)

    async def _aclose(self, client: C) -> None:
        await self._close(client)
