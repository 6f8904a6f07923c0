"""Invalidation within one process: every verifier of a store hears every change.

A change made through any :class:`Keystile` evicts the affected entries from every
verifier of the same store URL in this process at once. (Across processes, SQLite
relies on the cache lifetime; Redis adds pub/sub.)
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import Protocol

__all__ = ["Listener", "publish", "subscribe"]


class Listener(Protocol):
    def invalidate(self, key_hash: str | None, *, keyspaces: bool = False) -> None:
        """Drop ``key_hash`` (every record when ``None``); reload keyspaces if asked."""


_LISTENERS: dict[str, weakref.WeakSet[Listener]] = {}
_LOCK = threading.Lock()


def _after_fork() -> None:
    global _LOCK
    _LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


def subscribe(url: str, listener: Listener) -> None:
    with _LOCK:
        _LISTENERS.setdefault(url, weakref.WeakSet()).add(listener)


def publish(url: str, key_hash: str | None, *, keyspaces: bool = False) -> None:
    with _LOCK:
        listeners = list(_LISTENERS.get(url, ()))
    for listener in listeners:
        listener.invalidate(key_hash, keyspaces=keyspaces)
