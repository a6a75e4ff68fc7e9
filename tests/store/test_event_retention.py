"""The events table's bounds (store/retention.py): payloads cut to a size, and the newest
events kept under a count and a number of bytes, counted across rollbacks and reopens."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.store.db import Database
from app.store.retention import EventRetention

pytestmark = pytest.mark.anyio


def size(payload: object) -> int:
    return len(json.dumps(payload, separators=(",", ":"), sort_keys=True).encode())


def test_a_small_payload_is_kept_as_it_is() -> None:
    payload = {"id": "web", "labels": {"a": "b"}}
    assert EventRetention(max_payload_bytes=100).cut(payload) == (payload, '{"id":"web","labels":{"a":"b"}}')


def test_labels_go_first_in_key_order_then_the_largest_members() -> None:
    retention = EventRetention(max_payload_bytes=1000)
    labels = {f"k{n}": "v" * 100 for n in range(20)}
    cut, text = retention.cut({"id": "web", "image": "busybox", "labels": labels})
    assert size(cut) <= 1000 and json.loads(text) == cut
    assert cut["truncated"] == ["labels"] and cut["image"] == "busybox" and cut["id"] == "web"
    assert list(cut["labels"]) == sorted(labels)[: len(cut["labels"])] and len(cut["labels"]) >= 7
    # A huge image: labels cannot make room, the image goes; the id always stays.
    cut, _ = retention.cut({"id": "web", "image": "i" * 5000, "labels": {"a": "b"}})
    assert cut == {"id": "web", "image": None, "labels": {"a": "b"}, "truncated": ["image"]}
    cut, _ = retention.cut({"id": "x" * 2000, "snapshot_key": "s" * 2000})
    assert cut == {"id": "x" * 2000, "snapshot_key": None, "truncated": ["snapshot_key"]}


async def test_bytes_are_counted_across_rollbacks_and_reopens(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "m.db", event_retention_bytes=10_000, event_max_payload_bytes=2_000)
    try:
        with pytest.raises(RuntimeError):
            async with db.write() as tx:
                tx.append_event("ns", "/t", {"pad": "x" * 1500})
                raise RuntimeError("rolled back: its bytes never count")
        for n in range(30):
            async with db.write() as tx:
                tx.append_event("ns", "/t", {"n": n, "pad": "x" * 900})
        rows = await db.all("SELECT id, length(CAST(payload AS BLOB)) AS size FROM events ORDER BY id")
        total = sum(row["size"] for row in rows)
        assert total <= 10_000 and rows[-1]["id"] == 30
        assert db._retention.stored_bytes == total
    finally:
        await db.close()
    reopened = await Database.open(tmp_path / "m.db", event_retention_bytes=10_000)
    try:
        assert reopened._retention.stored_bytes == total
    finally:
        await reopened.close()


async def test_the_count_bound_still_prunes(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "m.db", event_retention=500)
    try:
        for _ in range(2000):
            async with db.write() as tx:
                tx.append_event("ns", "/t", {})
        row = await db.one("SELECT min(id) AS low, count(*) AS n FROM events")
        assert row is not None and row["low"] == 1501 and row["n"] == 500
        assert db._retention.stored_bytes == 2 * 500  # "{}" each
    finally:
        await db.close()
