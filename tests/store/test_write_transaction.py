"""The write transaction's edges: statements run on the loop and COMMIT in the writer's
thread, so what must hold is that a database locked by another process is waited for
off the loop, a COMMIT that fails leaves the connection usable, and a writer cancelled
during COMMIT still has its events published and releases the lock only when done."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from app.models import Event
from app.store.db import Database
from app.store.events import EventStore

pytestmark = pytest.mark.anyio

INSERT_NAMESPACE = "INSERT INTO namespaces (name, labels, created_at, updated_at) VALUES (?, '{}', '', '')"
# A write that waited for the lock on the loop would stall it for up to the busy timeout
# (BUSY_TIMEOUT_MS, 5 s); a turning loop's 10 ms sleep takes nowhere near this, even on a
# loaded machine.
STALL_SECONDS = 1.0


async def add_namespace(db: Database, name: str) -> None:
    async with db.write() as tx:
        tx.execute(INSERT_NAMESPACE, name)
        tx.append_event(name, "/namespaces/create", {"name": name})


async def namespaces(db: Database) -> list[str]:
    return [row["name"] for row in await db.all("SELECT name FROM namespaces ORDER BY name")]


async def test_a_database_locked_by_another_process_is_waited_for_off_the_loop(tmp_path: Path) -> None:
    path = tmp_path / "metadata.db"
    db = await Database.open(path)
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        writing = asyncio.create_task(add_namespace(db, "late"))
        loop = asyncio.get_running_loop()
        longest = 0.0
        for _ in range(20):  # the loop keeps turning while the write waits: no tick takes long
            before = loop.time()
            await asyncio.sleep(0.01)
            longest = max(longest, loop.time() - before)
        assert longest < STALL_SECONDS, f"the loop stalled {longest:.2f} s while the write waited for the lock"
        assert not writing.done(), "the write did not wait for the lock"
        other.execute("COMMIT")
        await asyncio.wait_for(writing, 5)
        assert await namespaces(db) == ["late"]
    finally:
        other.close()
        await db.close()


async def test_a_failed_commit_rolls_back_and_the_next_write_works(db: Database) -> None:
    published: list[Event] = []
    db.on_commit = published.extend
    with pytest.raises(sqlite3.IntegrityError):
        async with db.write() as tx:
            # A deferred foreign key is only checked at COMMIT, so COMMIT itself fails.
            tx.execute("PRAGMA defer_foreign_keys = ON")
            tx.execute("INSERT INTO containers (namespace, id, labels, image, runtime, snapshotter, snapshot_key)"
                       " VALUES ('nowhere', 'c', '{}', '', '{}', '', '')")
            tx.append_event("nowhere", "/containers/create", {"id": "c"})
    assert published == []
    await add_namespace(db, "after")
    assert [e.topic for e in published] == ["/namespaces/create"]
    assert [e.namespace for e in await EventStore(db).after(0, 10)] == ["after"]


async def test_a_writer_cancelled_during_commit_still_publishes_and_holds_the_lock_until_done(db: Database) -> None:
    published: list[Event] = []
    db.on_commit = published.extend
    writing = asyncio.create_task(add_namespace(db, "cancelled"))
    await asyncio.sleep(0)  # the body has no await: the task is now waiting for COMMIT
    writing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await writing
    # Committed, published, and the lock was held until then: the next write goes through.
    assert [e.namespace for e in published] == ["cancelled"]
    await add_namespace(db, "next")
    assert await namespaces(db) == ["cancelled", "next"]
