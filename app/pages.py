"""Cutting lists into pages: at most `limit` rows after a key, and about `max_bytes`.

A page holds rows while the bytes before each are under `PageRequest.max_bytes`, so a
page of big objects ends early (with a cursor) and its body stays near the bound: one
object always fits, however large. Stores fetch `limit + 1` rows ordered by key; the
extra row only says that there is a next page.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from .models import Page, PageRequest

T = TypeVar("T")


def cut(rows: Sequence[T], page: PageRequest, key: Callable[[T], str], size: Callable[[T], int]) -> Page[T]:
    """The page of `rows` (sorted by `key`, after `page.after`, at most `page.limit + 1`)."""
    kept: list[T] = []
    used = 0
    for row in rows[: page.limit]:
        if kept and used >= page.max_bytes:
            break
        kept.append(row)
        used += size(row)
    more = len(rows) > len(kept)
    return Page(kept, key(kept[-1]) if more and kept else None)


def cut_sizes(sizes: Sequence[tuple[str, int]], page: PageRequest) -> tuple[int, str | None]:
    """For (key, bytes) of up to `page.limit + 1` rows: how many the page keeps, and the
    next cursor (None: the last page)."""
    kept = cut(sizes, page, key=lambda row: row[0], size=lambda row: row[1])
    return len(kept.items), kept.next_cursor
