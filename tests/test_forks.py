"""A process that forks while its threads hold keystile's locks (``gunicorn --preload``
with a listener or a writer thread busy) leaves a child that still works."""

from __future__ import annotations

import multiprocessing
import threading
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from keystile import Code, Keystile
from keystile import _bus as bus


def _child(ks: Keystile, key: str, key_id: str, out: Any) -> None:
    first = ks.verify(key).code  # a cache miss: the cache's lock and the store's
    ks.update_key(key_id, enabled=False)  # a store write, announced on the bus
    out.put((first.value, ks.verify(key).code.value))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # 3.12+: fork with threads running
@pytest.mark.parametrize("store", ["memory", "sqlite"])
def test_if_a_thread_holds_the_locks_when_the_process_forks_then_the_child_still_verifies(
    store: str, tmp_path: Path,
) -> None:
    ks = Keystile("memory://" if store == "memory" else f"sqlite:///{tmp_path / 'k.db'}")
    created = ks.create_key(ks.create_api("a", prefix="sk_a").id)
    locks = [ks.verifier.cache._lock, ks.verifier.leases._lock, ks.verifier._acquiring, bus._LOCK,
             getattr(ks.store, "_lock", None) or ks.store._connections_lock]  # type: ignore[attr-defined]
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with ExitStack() as stack:
            for lock in locks:
                stack.enter_context(lock)
            holding.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    assert holding.wait(5)
    context = multiprocessing.get_context("fork")
    out = context.Queue()
    child = context.Process(target=_child, args=(ks, created.key, created.key_id, out))
    try:
        child.start()
        answers = out.get(timeout=10)
    finally:
        release.set()
        holder.join(10)
        child.join(10)
        if child.is_alive():
            child.kill()
    ks.close()

    assert answers == (Code.VALID.value, Code.DISABLED.value)
