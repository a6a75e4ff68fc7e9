"""Snapshot rows: key, kind, parent, labels and the data directory that holds the files.

The data directories themselves are the snapshot service's; this module only records
which directory belongs to which snapshot, so anything on disk without a row is an
orphan (a crash mid-import or mid-prepare) and is removed at start-up.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from ..errors import CargoholdError, ErrorKind, not_found
from ..models import FIRST_PAGE, Page, PageRequest, Snapshot, SnapshotKind
from ..pages import cut
from ..topics import Topic
from .db import Database, Row, Tx, dumps, utcnow
from .namespaces import ensure_namespace, require_namespace

# A snapshot's address across namespaces and snapshotters: (namespace, snapshotter, key).
SnapshotAddress = tuple[str, str, str]


@dataclass(frozen=True)
class DataDir:
    """A snapshot's data directory: `<root>/snapshots/<snapshotter>/<name>`."""

    snapshotter: str
    name: str


@dataclass(frozen=True)
class SnapshotRecord:
    snapshot: Snapshot
    dir: str

    @property
    def data_dir(self) -> DataDir:
        return DataDir(self.snapshot.snapshotter, self.dir)


def snapshot_not_found(namespace: str, snapshotter: str, key: str) -> CargoholdError:
    return not_found(f'snapshot "{key}" not found in snapshotter "{snapshotter}" of namespace "{namespace}"')


def _record(row: Row) -> SnapshotRecord:
    return SnapshotRecord(
        snapshot=Snapshot(
            key=row["key"],
            kind=SnapshotKind(row["kind"]),
            parent=row["parent"],
            labels=json.loads(row["labels"]),
            snapshotter=row["snapshotter"],
            created_at=datetime.fromisoformat(row["created_at"]),
            updated_at=datetime.fromisoformat(row["updated_at"]),
        ),
        dir=row["dir"],
    )


def _get_in(tx: Tx, namespace: str, snapshotter: str, key: str) -> SnapshotRecord:
    row = tx.one(
        "SELECT * FROM snapshots WHERE namespace = ? AND snapshotter = ? AND key = ?",
        namespace, snapshotter, key,
    )
    if row is None:
        raise snapshot_not_found(namespace, snapshotter, key)
    return _record(row)


def release_unreferenced(tx: Tx, namespace: str, snapshotter: str, key: str) -> DataDir | None:
    """Inside `tx`: remove active snapshot `key` if no container references it and it has no
    children (appends /snapshot/remove); return its data dir for the caller to delete."""
    row = tx.one(
        "SELECT * FROM snapshots WHERE namespace = ? AND snapshotter = ? AND key = ? AND kind = 'active'",
        namespace, snapshotter, key,
    )
    if row is None or _in_use(tx, namespace, snapshotter, key) is not None:
        return None
    tx.execute(
        "DELETE FROM snapshots WHERE namespace = ? AND snapshotter = ? AND key = ?", namespace, snapshotter, key
    )
    tx.append_event(namespace, Topic.SNAPSHOT_REMOVE, {"key": key, "snapshotter": snapshotter})
    return DataDir(snapshotter, row["dir"])


def require_snapshot(tx: Tx, namespace: str, snapshotter: str, key: str) -> None:
    """Inside `tx`: raise VALIDATION unless snapshot `key` exists (a container may pin it)."""
    if not tx.exists(
        "SELECT 1 FROM snapshots WHERE namespace = ? AND snapshotter = ? AND key = ?", namespace, snapshotter, key
    ):
        raise CargoholdError(
            ErrorKind.VALIDATION,
            f'snapshot_key "{key}" names no snapshot in snapshotter "{snapshotter}" of namespace '
            f'"{namespace}"; prepare it first (POST /snapshots)',
        )


def _in_use(tx: Tx, namespace: str, snapshotter: str, key: str) -> str | None:
    """Why `key` cannot be removed, or None."""
    child = tx.one(
        "SELECT key FROM snapshots WHERE namespace = ? AND snapshotter = ? AND parent = ? LIMIT 1",
        namespace, snapshotter, key,
    )
    if child is not None:
        return f'it is the parent of snapshot "{child["key"]}"'
    container = tx.one(
        "SELECT id FROM containers WHERE namespace = ? AND snapshotter = ? AND snapshot_key = ? LIMIT 1",
        namespace, snapshotter, key,
    )
    if container is not None:
        return f'container "{container["id"]}" uses it'
    return None


class SnapshotStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def insert(
        self,
        namespace: str,
        snapshotter: str,
        key: str,
        kind: SnapshotKind,
        parent: str | None,
        labels: dict[str, str],
        data_dir: str,
    ) -> Snapshot:
        """Record a new snapshot whose data is already in place. Appends /snapshot/prepare, or
        /snapshot/commit for a committed one (an import). Raises ALREADY_EXISTS, or VALIDATION
        when `parent` is missing or not committed."""
        async with self._db.write() as tx:
            ensure_namespace(tx, namespace)
            if tx.exists(
                "SELECT 1 FROM snapshots WHERE namespace = ? AND snapshotter = ? AND key = ?",
                namespace, snapshotter, key,
            ):
                raise CargoholdError(
                    ErrorKind.ALREADY_EXISTS,
                    f'snapshot "{key}" already exists in snapshotter "{snapshotter}" of namespace "{namespace}"',
                )
            if parent is not None:
                self._require_committed_parent(tx, namespace, snapshotter, parent)
            now = utcnow().isoformat()
            tx.execute(
                "INSERT INTO snapshots (namespace, snapshotter, key, kind, parent, labels, dir, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                namespace, snapshotter, key, kind.value, parent, dumps(labels), data_dir, now, now,
            )
            if kind is SnapshotKind.COMMITTED:
                payload = {"key": key, "name": key, "parent": parent, "snapshotter": snapshotter}
                tx.append_event(namespace, Topic.SNAPSHOT_COMMIT, payload)
            else:
                payload = {"key": key, "parent": parent, "snapshotter": snapshotter}
                tx.append_event(namespace, Topic.SNAPSHOT_PREPARE, payload)
            return _get_in(tx, namespace, snapshotter, key).snapshot

    async def get(self, namespace: str, snapshotter: str, key: str) -> SnapshotRecord:
        row = await self._db.one(
            "SELECT * FROM snapshots WHERE namespace = ? AND snapshotter = ? AND key = ?",
            namespace, snapshotter, key,
        )
        if row is None:
            await require_namespace(self._db, namespace)
            raise snapshot_not_found(namespace, snapshotter, key)
        return _record(row)

    async def chain(self, namespace: str, snapshotter: str, key: str | None) -> list[SnapshotRecord]:
        """`key` and its ancestors, nearest first ([] for None)."""
        records: list[SnapshotRecord] = []
        while key is not None:
            record = await self.get(namespace, snapshotter, key)
            records.append(record)
            key = record.snapshot.parent
        return records

    async def list_in(self, namespace: str, snapshotter: str, page: PageRequest = FIRST_PAGE) -> Page[Snapshot]:
        """A page of the snapshots of `snapshotter` in `namespace`, by key."""
        rows = await self._db.all(
            "SELECT * FROM snapshots WHERE namespace = ? AND snapshotter = ? AND key > ? ORDER BY key LIMIT ?",
            namespace, snapshotter, page.after, page.limit + 1,
        )
        if not rows:
            await require_namespace(self._db, namespace)
        cut_rows = cut(rows, page, key=lambda row: row["key"], size=lambda row: len(row["labels"]) + 200)
        return Page([_record(row).snapshot for row in cut_rows.items], cut_rows.next_cursor)

    async def commit(
        self, namespace: str, snapshotter: str, key: str, name: str, labels: dict[str, str]
    ) -> Snapshot:
        """Turn active snapshot `key` into committed snapshot `name`; appends /snapshot/commit.
        Raises NOT_FOUND, CONFLICT (not active, or in use), ALREADY_EXISTS (name taken)."""
        async with self._db.write() as tx:
            record = _get_in(tx, namespace, snapshotter, key)
            if record.snapshot.kind is not SnapshotKind.ACTIVE:
                raise CargoholdError(
                    ErrorKind.CONFLICT,
                    f'snapshot "{key}" is {record.snapshot.kind.value}; only an active snapshot can be committed',
                )
            if name != key and tx.exists(
                "SELECT 1 FROM snapshots WHERE namespace = ? AND snapshotter = ? AND key = ?",
                namespace, snapshotter, name,
            ):
                raise CargoholdError(
                    ErrorKind.ALREADY_EXISTS, f'snapshot "{name}" already exists in snapshotter "{snapshotter}"'
                )
            reason = _in_use(tx, namespace, snapshotter, key)
            if reason is not None:
                raise CargoholdError(ErrorKind.CONFLICT, f'snapshot "{key}" cannot be committed: {reason}')
            tx.execute(
                "UPDATE snapshots SET key = ?, kind = 'committed', labels = ?, updated_at = ?"
                " WHERE namespace = ? AND snapshotter = ? AND key = ?",
                name, dumps(labels or record.snapshot.labels), utcnow().isoformat(), namespace, snapshotter, key,
            )
            tx.append_event(
                namespace, Topic.SNAPSHOT_COMMIT, {"key": key, "name": name, "snapshotter": snapshotter}
            )
            return _get_in(tx, namespace, snapshotter, name).snapshot

    async def remove(self, namespace: str, snapshotter: str, key: str) -> DataDir:
        """Delete the row; appends /snapshot/remove; return its data dir for the caller to
        delete. Raises NOT_FOUND, or CONFLICT while a container or a child snapshot uses it."""
        async with self._db.write() as tx:
            record = _get_in(tx, namespace, snapshotter, key)
            reason = _in_use(tx, namespace, snapshotter, key)
            if reason is not None:
                raise CargoholdError(ErrorKind.CONFLICT, f'snapshot "{key}" is in use: {reason}')
            tx.execute(
                "DELETE FROM snapshots WHERE namespace = ? AND snapshotter = ? AND key = ?",
                namespace, snapshotter, key,
            )
            tx.append_event(namespace, Topic.SNAPSHOT_REMOVE, {"key": key, "snapshotter": snapshotter})
            return record.data_dir

    async def data_dirs(self, snapshotter: str) -> set[str]:
        """Every data dir a row of `snapshotter` owns (anything else on disk is an orphan)."""
        rows = await self._db.all("SELECT dir FROM snapshots WHERE snapshotter = ?", snapshotter)
        return {row["dir"] for row in rows}

    def _require_committed_parent(self, tx: Tx, namespace: str, snapshotter: str, parent: str) -> None:
        row = tx.one(
            "SELECT kind FROM snapshots WHERE namespace = ? AND snapshotter = ? AND key = ?",
            namespace, snapshotter, parent,
        )
        if row is None:
            raise CargoholdError(
                ErrorKind.VALIDATION,
                f'parent "{parent}" names no snapshot in snapshotter "{snapshotter}" of namespace "{namespace}"',
            )
        if row["kind"] != SnapshotKind.COMMITTED:
            raise CargoholdError(
                ErrorKind.VALIDATION, f'parent "{parent}" is {row["kind"]}; only a committed snapshot can be a parent'
            )
