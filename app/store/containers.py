"""Container rows: pure metadata, no runtime state."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

from ..errors import CargoholdError, ErrorKind, not_found
from ..models import Container, ContainerFields, ContainerHead, Runtime, RuntimeName
from ..topics import Topic
from .db import Database, Row, Tx, dumps, utcnow
from .namespaces import ensure_namespace, namespace_not_found
from .snapshots import DataDir, release_unreferenced, require_snapshot

_COLUMNS = (
    "id, labels, image, runtime, spec, snapshotter, snapshot_key, extensions, created_at, updated_at"
)


def container_not_found(namespace: str, container_id: str) -> CargoholdError:
    return not_found(f'container "{container_id}" not found in namespace "{namespace}"')


_HEAD_COLUMNS = "id, labels, image, runtime, snapshotter, snapshot_key"


def _container(row: Row) -> Container:
    # Rows were validated on the way in: construct without validating again (lists are hot).
    runtime = json.loads(row["runtime"])
    return Container.model_construct(
        id=row["id"],
        labels=json.loads(row["labels"]),
        image=row["image"],
        runtime=Runtime.model_construct(name=RuntimeName(runtime["name"]), options=runtime.get("options", {})),
        spec=json.loads(row["spec"]),
        snapshotter=row["snapshotter"],
        snapshot_key=row["snapshot_key"],
        extensions=json.loads(row["extensions"]),
        created_at=datetime.fromisoformat(row["created_at"]),
        updated_at=datetime.fromisoformat(row["updated_at"]),
    )


def _head(row: Row) -> ContainerHead:
    return ContainerHead(
        id=row["id"],
        image=row["image"],
        runtime=json.loads(row["runtime"])["name"],
        snapshotter=row["snapshotter"],
        snapshot_key=row["snapshot_key"],
        labels=json.loads(row["labels"]),
    )


def _columns(fields: ContainerFields, snapshotter: str) -> tuple[Any, ...]:
    """The mutable columns, in _COLUMNS order after id."""
    return (
        dumps(fields.labels),
        fields.image,
        fields.runtime.model_dump_json(),
        dumps(fields.spec.model_dump(mode="json", exclude_unset=True)),
        fields.snapshotter or snapshotter,
        fields.snapshot_key,
        dumps(fields.extensions),
    )


def _event(container: Container) -> dict[str, Any]:
    # containerd's /containers/create carries id, image and runtime; labels help filtering.
    return {
        "id": container.id,
        "image": container.image,
        "runtime": container.runtime.name.value,
        "labels": container.labels,
        "snapshot_key": container.snapshot_key,
    }


class ContainerStore:
    def __init__(self, db: Database, default_snapshotter: str) -> None:
        self._db = db
        self._default_snapshotter = default_snapshotter

    async def create(self, namespace: str, container_id: str, fields: ContainerFields) -> Container:
        """Insert the row (creating the namespace on first use); appends /containers/create.

        Raises ALREADY_EXISTS, or VALIDATION when `snapshot_key` names no snapshot."""
        async with self._db.write() as tx:
            await ensure_namespace(tx, namespace)
            if fields.snapshot_key:
                snapshotter = fields.snapshotter or self._default_snapshotter
                await require_snapshot(tx, namespace, snapshotter, fields.snapshot_key)
            if await tx.exists(
                "SELECT 1 FROM containers WHERE namespace = ? AND id = ?", namespace, container_id
            ):
                raise CargoholdError(
                    ErrorKind.ALREADY_EXISTS,
                    f'container "{container_id}" already exists in namespace "{namespace}"',
                )
            now = utcnow().isoformat()
            await tx.execute(
                f"INSERT INTO containers (namespace, {_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                namespace, container_id, *_columns(fields, self._default_snapshotter), now, now,
            )
            created = await self._get_in(tx, namespace, container_id)
            await tx.append_event(namespace, Topic.CONTAINER_CREATE, _event(created))
            return created

    async def get(self, namespace: str, container_id: str) -> Container:
        """Raises NOT_FOUND for the container or its namespace."""
        row = await self._db.one(
            f"SELECT {_COLUMNS} FROM containers WHERE namespace = ? AND id = ?",
            namespace, container_id,
        )
        if row is None:
            await self._require_namespace(namespace)
            raise container_not_found(namespace, container_id)
        return _container(row)

    async def list_in(
        self, namespace: str, select: Callable[[ContainerHead], bool] | None = None
    ) -> list[Container]:
        """The containers of `namespace` (those whose head `select` keeps), by id. Only the
        selected rows are read whole. Raises NOT_FOUND for an unknown namespace."""
        if select is None:
            rows = await self._db.all(f"SELECT {_COLUMNS} FROM containers WHERE namespace = ? ORDER BY id", namespace)
        else:
            heads = await self._db.all(
                f"SELECT {_HEAD_COLUMNS} FROM containers WHERE namespace = ? ORDER BY id", namespace
            )
            if not heads:
                await self._require_namespace(namespace)
                return []
            chosen = [row["id"] for row in heads if select(_head(row))]
            rows = []
            for start in range(0, len(chosen), 500):
                batch = chosen[start:start + 500]
                rows += await self._db.all(
                    f"SELECT {_COLUMNS} FROM containers WHERE namespace = ? AND id IN "
                    f"({', '.join('?' * len(batch))}) ORDER BY id",
                    namespace, *batch,
                )
            return [_container(row) for row in rows]
        if not rows:
            await self._require_namespace(namespace)
        return [_container(row) for row in rows]

    async def update(
        self,
        namespace: str,
        container_id: str,
        apply: Callable[[Container], ContainerFields],
    ) -> tuple[Container, list[DataDir]]:
        """Replace the mutable fields with `apply(current)`, read and written in one
        transaction so a precondition checked by `apply` holds; appends /containers/update.
        A snapshot the container no longer pins is released as on delete: its data dirs
        are returned for the caller to remove."""
        async with self._db.write() as tx:
            current = await self._get_in(tx, namespace, container_id)
            fields = apply(current)
            snapshotter = fields.snapshotter or self._default_snapshotter
            pinned = (snapshotter, fields.snapshot_key)
            if fields.snapshot_key and pinned != (current.snapshotter, current.snapshot_key):
                await require_snapshot(tx, namespace, snapshotter, fields.snapshot_key)
            await tx.execute(
                "UPDATE containers SET labels = ?, image = ?, runtime = ?, spec = ?, snapshotter = ?,"
                " snapshot_key = ?, extensions = ?, updated_at = ? WHERE namespace = ? AND id = ?",
                *_columns(fields, self._default_snapshotter), utcnow().isoformat(),
                namespace, container_id,
            )
            updated = await self._get_in(tx, namespace, container_id)
            await tx.append_event(namespace, Topic.CONTAINER_UPDATE, _event(updated))
            if pinned == (current.snapshotter, current.snapshot_key):
                return updated, []
            return updated, await self._release(tx, namespace, current)

    async def delete(self, namespace: str, container_id: str) -> list[DataDir]:
        """Delete the row (appends /containers/delete), then release its active snapshot
        if nothing else uses it (appends /snapshot/remove). Returns the released
        snapshots' data dirs for the caller to remove once committed."""
        async with self._db.write() as tx:
            deleted = await self._get_in(tx, namespace, container_id)
            if await tx.exists("SELECT 1 FROM tasks WHERE namespace = ? AND id = ?", namespace, container_id):
                raise CargoholdError(
                    ErrorKind.CONFLICT, f'container "{container_id}" has a task; delete the task first'
                )
            await tx.execute(
                "DELETE FROM containers WHERE namespace = ? AND id = ?", namespace, container_id
            )
            await tx.append_event(namespace, Topic.CONTAINER_DELETE, {"id": container_id})
            return await self._release(tx, namespace, deleted)

    async def _release(self, tx: Tx, namespace: str, container: Container) -> list[DataDir]:
        if not container.snapshot_key:
            return []
        released = await release_unreferenced(tx, namespace, container.snapshotter, container.snapshot_key)
        return [released] if released else []

    async def _get_in(self, tx: Tx, namespace: str, container_id: str) -> Container:
        row = await tx.one(
            f"SELECT {_COLUMNS} FROM containers WHERE namespace = ? AND id = ?",
            namespace, container_id,
        )
        if row is None:
            if not await tx.exists("SELECT 1 FROM namespaces WHERE name = ?", namespace):
                raise namespace_not_found(namespace)
            raise container_not_found(namespace, container_id)
        return _container(row)

    async def _require_namespace(self, namespace: str) -> None:
        if await self._db.one("SELECT 1 FROM namespaces WHERE name = ?", namespace) is None:
            raise namespace_not_found(namespace)
