"""Objects that must be put right in a forked child (``gunicorn --preload``, multiprocessing).

A lock held by another thread of the parent at the moment of the fork stays held for
good in the child, where that thread does not exist; so does a load that thread had
in flight, and a connection pool's sockets would be shared by two processes. Objects
holding such things register with :func:`on_fork` and get their ``_after_fork()``
called in the child, before it runs anything else.
"""

from __future__ import annotations

import os
import weakref
from typing import Protocol

__all__ = ["on_fork"]


class _Forkable(Protocol):
    def _after_fork(self) -> None: ...


_OBJECTS: weakref.WeakSet[_Forkable] = weakref.WeakSet()


def on_fork(obj: _Forkable) -> None:
    """Call ``obj._after_fork()`` in every child this process forks (held weakly)."""
    _OBJECTS.add(obj)


def _in_child() -> None:
    for obj in list(_OBJECTS):
        obj._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_in_child)
