"""The store on a real SQLite file: each write has its event in the same transaction,
a failed write leaves nothing (no row, no event, no implicit namespace), and what was
committed is there after the database is reopened."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from app.errors import CargoholdError, ErrorKind
from app.models import ContainerFields, Event
from app.store.containers import ContainerStore
from app.store.db import MIGRATIONS, Database
from app.store.events import EventStore
from app.store.namespaces import NamespaceStore

pytestmark = pytest.mark.anyio

SPEC = {"ociVersion": "1.0.2", "root": {"path": "rootfs"}}


def fields(**labels: str) -> ContainerFields:
    return ContainerFields.model_validate({"spec": SPEC, "labels": labels})


def rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    """Read with a separate plain sqlite3 connection: what another process would see."""
    with sqlite3.connect(path) as conn:
        return list(conn.execute(sql))


async def test_create_appends_namespace_and_container_events_in_order(db: Database) -> None:
    published: list[Event] = []
    db.on_commit = published.extend
    await ContainerStore(db, "overlayfs").create("ns1", "web", fields(env="prod"))
    topics = [(e.topic, e.namespace) for e in await EventStore(db).after(0, 10)]
    assert topics == [("/namespaces/create", "ns1"), ("/containers/create", "ns1")]
    assert [e.id for e in published] == [1, 2], "events reach the bus after commit, in id order"


async def test_failed_create_leaves_no_row_event_or_namespace(db: Database, tmp_path: Path) -> None:
    containers = ContainerStore(db, "overlayfs")
    await containers.create("ns1", "web", fields())
    published: list[Event] = []
    db.on_commit = published.extend
    with pytest.raises(CargoholdError) as raised:
        await containers.create("ns1", "web", fields())
    assert raised.value.kind is ErrorKind.ALREADY_EXISTS
    assert published == []
    assert await EventStore(db).last_id() == 2
    assert rows(tmp_path / "metadata.db", "SELECT count(*) FROM containers") == [(1,)]


async def test_rollback_on_error_inside_update_undoes_everything(db: Database) -> None:
    containers = ContainerStore(db, "overlayfs")
    await containers.create("ns1", "web", fields(a="1"))

    def refuse(current: object) -> ContainerFields:
        raise CargoholdError(ErrorKind.PRECONDITION_FAILED, "no")

    with pytest.raises(CargoholdError):
        await containers.update("ns1", "web", refuse)
    assert (await containers.get("ns1", "web")).labels == {"a": "1"}
    assert await EventStore(db).last_id() == 2


async def test_exception_in_transaction_rolls_back_rows_and_events(db: Database) -> None:
    with pytest.raises(RuntimeError):
        async with db.write() as tx:
            tx.execute(
                "INSERT INTO namespaces (name, labels, created_at, updated_at) VALUES ('x', '{}', '', '')"
            )
            tx.append_event("x", "/namespaces/create", {"name": "x"})
            raise RuntimeError("boom")
    assert (await NamespaceStore(db).list_all()).items == []
    assert await EventStore(db).last_id() == 0


async def test_namespace_delete_refused_while_it_holds_containers(db: Database) -> None:
    await ContainerStore(db, "overlayfs").create("ns1", "web", fields())
    with pytest.raises(CargoholdError) as raised:
        await NamespaceStore(db).delete("ns1")
    assert raised.value.kind is ErrorKind.CONFLICT
    assert "1 container" in raised.value.detail
    assert [n.name for n in (await NamespaceStore(db).list_all()).items] == ["ns1"]


async def test_committed_writes_survive_reopen(tmp_path: Path) -> None:
    path = tmp_path / "metadata.db"
    first = await Database.open(path)
    await ContainerStore(first, "native").create("ns1", "web", fields(env="prod"))
    await first.close()
    second = await Database.open(path)
    try:
        container = await ContainerStore(second, "overlayfs").get("ns1", "web")
        assert container.labels == {"env": "prod"}
        assert container.snapshotter == "native"
        assert await EventStore(second).last_id() == 2
    finally:
        await second.close()


async def test_schema_is_migrated_once_and_foreign_keys_hold(tmp_path: Path) -> None:
    path = tmp_path / "metadata.db"
    for _ in range(2):
        await (await Database.open(path)).close()
    assert rows(path, "PRAGMA user_version") == [(len(MIGRATIONS),)]
    assert rows(path, "PRAGMA journal_mode") == [("wal",)]
    db = await Database.open(path)
    try:
        with pytest.raises(sqlite3.IntegrityError):
            async with db.write() as tx:
                tx.execute(
                    "INSERT INTO containers (namespace, id, labels, image, runtime, snapshotter, snapshot_key)"
                    " VALUES ('nowhere', 'c', '{}', '', '{}', '', '')"
                )
    finally:
        await db.close()


async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "metadata.db"
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    with pytest.raises(RuntimeError, match="newer than this daemon"):
        await Database.open(path)


async def test_event_ids_strictly_increase_and_are_never_reused(tmp_path: Path) -> None:
    path = tmp_path / "metadata.db"
    db = await Database.open(path)
    containers = ContainerStore(db, "overlayfs")
    await containers.create("ns1", "a", fields())
    await containers.delete("ns1", "a")
    await db.close()
    db = await Database.open(path)
    try:
        await ContainerStore(db, "overlayfs").create("ns1", "b", fields())
        ids = [e.id for e in await EventStore(db).after(0, 100)]
        assert ids == [1, 2, 3, 4]
    finally:
        await db.close()
