"""Running test bodies in real processes (spawned), with a barrier so they start together."""

from __future__ import annotations

import multiprocessing
from collections import Counter
from collections.abc import Callable
from typing import Any


def run_children(target: Callable[..., None], args: tuple[Any, ...], processes: int) -> Counter[str]:
    """Run ``target(*args, barrier, results)`` in ``processes`` spawned processes; each
    puts a list of codes on ``results`` (or the repr of what it raised). Returns the
    codes of all, counted; fails the test with the child's reason."""
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(processes)
    results = context.Queue()
    children = [context.Process(target=target, args=(*args, barrier, results)) for _ in range(processes)]
    for child in children:
        child.start()
    outcomes = [results.get(timeout=60) for _ in children]
    for child in children:
        child.join(timeout=30)
    assert all(isinstance(codes, list) for codes in outcomes), outcomes
    assert [child.exitcode for child in children] == [0] * processes
    return Counter(code for codes in outcomes for code in codes)
