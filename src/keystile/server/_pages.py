"""Cursor pagination over a list held in memory (ids in order; the cursor is the last id)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from ._ops import Page

__all__ = ["paginate"]

T = TypeVar("T")


def paginate(items: Sequence[T], id_of: Callable[[T], str], *, cursor: str | None,
             limit: int, render: Callable[[T], object]) -> Page:
    """The page of ``items`` (sorted by id) after ``cursor``, ``limit`` long."""
    ordered = sorted(items, key=id_of)
    after = [item for item in ordered if cursor is None or id_of(item) > cursor]
    page = after[:limit]
    more = len(after) > limit
    return Page([render(item) for item in page], id_of(page[-1]) if more and page else None)
