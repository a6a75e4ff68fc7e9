"""Namespace rows. A namespace is created on first use by any write inside it."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime

from ..errors import CargoholdError, ErrorKind, not_found
from ..models import FIRST_PAGE, Namespace, Page, PageRequest
from ..pages import cut
from ..topics import Topic
from .db import Database, Row, Tx, dumps, utcnow

_EXISTS = "SELECT 1 FROM namespaces WHERE name = ?"


def namespace_not_found(name: str) -> CargoholdError:
    return not_found(f'namespace "{name}" not found')


def namespace_exists_in(tx: Tx, name: str) -> bool:
    """Whether `name` exists, read inside the write transaction `tx`."""
    return tx.exists(_EXISTS, name)


async def require_namespace(db: Database, name: str) -> None:
    """Raise NOT_FOUND unless namespace `name` exists (a read outside any transaction)."""
    if await db.one(_EXISTS, name) is None:
        raise namespace_not_found(name)


def _namespace(row: Row) -> Namespace:
    return Namespace(
        name=row["name"],
        labels=json.loads(row["labels"]),
        created_at=datetime.fromisoformat(row["created_at"]),
        updated_at=datetime.fromisoformat(row["updated_at"]),
    )


def ensure_namespace(tx: Tx, name: str) -> None:
    """Create `name` inside `tx` if it does not exist yet (appends /namespaces/create)."""
    if not namespace_exists_in(tx, name):
        _insert(tx, name, {})


def _insert(tx: Tx, name: str, labels: dict[str, str]) -> Namespace:
    now = utcnow().isoformat()
    tx.execute(
        "INSERT INTO namespaces (name, labels, created_at, updated_at) VALUES (?, ?, ?, ?)",
        name, dumps(labels), now, now,
    )
    tx.append_event(name, Topic.NAMESPACE_CREATE, {"name": name, "labels": labels})
    row = tx.one("SELECT * FROM namespaces WHERE name = ?", name)
    assert row is not None
    return _namespace(row)


class NamespaceStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(self, name: str, labels: dict[str, str]) -> Namespace:
        """Raises ALREADY_EXISTS."""
        async with self._db.write() as tx:
            if namespace_exists_in(tx, name):
                raise CargoholdError(ErrorKind.ALREADY_EXISTS, f'namespace "{name}" already exists')
            return _insert(tx, name, labels)

    async def get(self, name: str) -> Namespace:
        row = await self._db.one("SELECT * FROM namespaces WHERE name = ?", name)
        if row is None:
            raise namespace_not_found(name)
        return _namespace(row)

    async def exists(self, name: str) -> bool:
        return await self._db.one(_EXISTS, name) is not None

    async def list_all(self, page: PageRequest = FIRST_PAGE) -> Page[Namespace]:
        """A page of the namespaces, by name."""
        rows = await self._db.all(
            "SELECT * FROM namespaces WHERE name > ? ORDER BY name LIMIT ?", page.after, page.limit + 1
        )
        cut_rows = cut(rows, page, key=lambda row: row["name"], size=lambda row: len(row["labels"]) + 100)
        return Page([_namespace(row) for row in cut_rows.items], cut_rows.next_cursor)

    async def update(
        self, name: str, new_labels: Callable[[Namespace], dict[str, str]]
    ) -> Namespace:
        """Replace the labels with `new_labels(current)` (which may raise); appends /namespaces/update."""
        async with self._db.write() as tx:
            row = tx.one("SELECT * FROM namespaces WHERE name = ?", name)
            if row is None:
                raise namespace_not_found(name)
            labels = new_labels(_namespace(row))
            tx.execute(
                "UPDATE namespaces SET labels = ?, updated_at = ? WHERE name = ?",
                dumps(labels), utcnow().isoformat(), name,
            )
            tx.append_event(name, Topic.NAMESPACE_UPDATE, {"name": name, "labels": labels})
            updated = tx.one("SELECT * FROM namespaces WHERE name = ?", name)
            assert updated is not None
            return _namespace(updated)

    async def delete(self, name: str) -> None:
        """Raises NOT_FOUND, or CONFLICT while the namespace holds any object."""
        async with self._db.write() as tx:
            if not namespace_exists_in(tx, name):
                raise namespace_not_found(name)
            held = []
            for table, noun in (("containers", "container"), ("snapshots", "snapshot"), ("images", "image")):
                row = tx.one(f"SELECT count(*) AS n FROM {table} WHERE namespace = ?", name)
                if row is not None and row["n"]:
                    held.append(f"{row['n']} {noun}(s)")
            if held:
                raise CargoholdError(
                    ErrorKind.CONFLICT,
                    f'namespace "{name}" is not empty: it holds {" and ".join(held)}; delete them first',
                )
            tx.execute("DELETE FROM namespaces WHERE name = ?", name)
            tx.append_event(name, Topic.NAMESPACE_DELETE, {"name": name})
