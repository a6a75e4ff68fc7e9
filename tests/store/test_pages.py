"""Lists a page at a time in the stores: `limit`, the cursor, and the page's bytes, so that
big documents never make SQLite build a string past its length limit."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

import pytest

from app.models import ContainerFields, Page, PageRequest
from app.pages import cut
from app.store.containers import ContainerStore
from app.store.db import Database
from app.store.namespaces import NamespaceStore

pytestmark = pytest.mark.anyio

NS = "ns1"
MIB = 1024 * 1024


def fields(**members: Any) -> ContainerFields:
    return ContainerFields.model_validate({"spec": {"ociVersion": "1.0.2", "root": {"path": "rootfs"}}, **members})


def big(n: int) -> ContainerFields:
    """A container whose document is a little over 1 MiB."""
    spec = {"ociVersion": "1.0.2", "root": {"path": "rootfs"}, "annotations": {"pad": f"{n}" + "x" * MIB}}
    return ContainerFields.model_validate({"spec": spec})


async def read_all(store: ContainerStore, page: PageRequest, select: Any = None) -> list[list[str]]:
    """Follow the cursors from the first page; the ids of each page."""
    pages: list[list[str]] = []
    after = ""
    while True:
        found = await store.list_documents(NS, select, ((),), PageRequest(page.limit, after, page.max_bytes))
        cursor = found.next_cursor
        pages.append([json.loads(document)["id"] for document in found.items])
        if cursor is None:
            return pages
        assert cursor == pages[-1][-1]
        after = cursor


async def test_pages_by_count_with_and_without_a_filter(db: Database) -> None:
    store = ContainerStore(db, "overlayfs")
    ids = [f"c{n:02d}" for n in range(25)]
    for n, container_id in enumerate(ids):
        await store.create(NS, container_id, fields(labels={"odd": str(n % 2)}))
    assert await read_all(store, PageRequest(limit=10)) == [ids[:10], ids[10:20], ids[20:]]
    assert await read_all(store, PageRequest(limit=25)) == [ids]
    assert await read_all(store, PageRequest(limit=5)) == [ids[i:i + 5] for i in range(0, 25, 5)]
    odd = ids[1::2]
    assert await read_all(store, PageRequest(limit=5), lambda head: head.labels["odd"] == "1") == [
        odd[:5], odd[5:10], odd[10:],
    ]
    # After the last id, or after an id that is not there: the rest, from the next one up.
    found = await store.list_documents(NS, page=PageRequest(limit=10, after="c24"))
    assert found == Page([], None)
    found = await store.list_documents(NS, page=PageRequest(limit=2, after="c05a"))
    assert [json.loads(document)["id"] for document in found.items] == ["c06", "c07"]


async def test_one_mib_specs_page_under_sqlites_length_limit(db: Database) -> None:
    """Issue 12: 1,000 containers of 1 MiB specs made every list a 500, the joined
    documents passing SQLITE_MAX_LENGTH (1e9 bytes). The same at a smaller scale: the
    reader's length limit lowered to 8 MiB, 12 containers of 1 MiB."""
    store = ContainerStore(db, "overlayfs")
    for n in range(12):
        await store.create(NS, f"c{n:02d}", big(n))
    reader = db._reader  # the connection lists are read on, in its own thread
    await reader._execute(reader._conn.setlimit, sqlite3.SQLITE_LIMIT_LENGTH, 8 * MIB)  # type: ignore[no-untyped-call]
    # What the list did before: one group_concat of every document.
    with pytest.raises(sqlite3.DataError, match="too big"):
        await db.all("SELECT group_concat(doc) FROM (SELECT doc FROM container_documents ORDER BY id)")

    # Each page stops once its documents reach 3 MiB: 3 documents of a little over 1 MiB.
    pages = await read_all(store, PageRequest(limit=1000, max_bytes=3 * MIB))
    assert pages == [[f"c{n:02d}" for n in range(start, min(start + 3, 12))] for start in range(0, 12, 3)]
    # A filtered list is cut the same way.
    filtered = await read_all(store, PageRequest(limit=1000, max_bytes=3 * MIB), lambda head: True)
    assert filtered == pages
    # One document larger than the page's bytes still comes, alone.
    assert await read_all(store, PageRequest(limit=1000, max_bytes=1000)) == [[f"c{n:02d}"] for n in range(12)]


async def test_namespaces_page_by_name_and_bytes(db: Database) -> None:
    store = NamespaceStore(db)
    for n in range(7):
        await store.create(f"ns{n}", {"pad": "x" * 4000} if n == 3 else {})
    page = await store.list_all(PageRequest(limit=3))
    assert [ns.name for ns in page.items] == ["ns0", "ns1", "ns2"] and page.next_cursor == "ns2"
    page = await store.list_all(PageRequest(limit=3, after="ns2"))
    assert [ns.name for ns in page.items] == ["ns3", "ns4", "ns5"] and page.next_cursor == "ns5"
    page = await store.list_all(PageRequest(limit=3, after="ns5"))
    assert [ns.name for ns in page.items] == ["ns6"] and page.next_cursor is None
    # ns3's labels fill a 1,000-byte page alone.
    page = await store.list_all(PageRequest(limit=10, after="ns2", max_bytes=1000))
    assert [ns.name for ns in page.items] == ["ns3"] and page.next_cursor == "ns3"


@pytest.mark.parametrize("filtered", [False, True], ids=["all", "filtered"])
async def test_every_byte_bound_cuts_as_pages_cut_says(db: Database, filtered: bool) -> None:
    """The page as `pages.cut` makes it from the documents' sizes, at every bound around
    them, whichever statement reads it: the one-statement page (its documents' sum within
    the bound) or the sizes-then-documents one (over it); and always in id order."""
    store = ContainerStore(db, "overlayfs")
    ids = [f"c{n:02d}" for n in range(12)]
    for n, container_id in enumerate(reversed(ids)):
        await store.create(NS, container_id, fields(labels={"pad": "é" * (n * 37 % 200)}))
    everything = await store.list_documents(NS, page=PageRequest(limit=100))
    assert [json.loads(document)["id"] for document in everything.items] == ids
    sizes = [(container_id, len(document)) for container_id, document in zip(ids, everything.items, strict=True)]
    select = (lambda head: True) if filtered else None
    total = sum(size for _, size in sizes)
    bounds = {1, total - 1, total, total + 1, *(size + delta for _, size in sizes for delta in (-1, 0, 1))}
    for limit in (3, 11, 12, 13):
        for max_bytes in sorted(bounds):
            request = PageRequest(limit=limit, max_bytes=max_bytes)
            expected, after = [], ""
            while True:
                rest = [row for row in sizes if row[0] > after][: limit + 1]
                kept = cut(rest, request, key=lambda row: row[0], size=lambda row: row[1])
                expected.append([container_id for container_id, _ in kept.items])
                if kept.next_cursor is None:
                    break
                after = kept.next_cursor
            assert await read_all(store, request, select) == expected, (limit, max_bytes)
            first = await store.list_documents(NS, select, ((),), request)
            assert first.items == everything.items[: len(expected[0])], "the documents themselves, in id order"
