"""Container rows: pure metadata, no runtime state.

A container is stored as its document: the JSON the API serves for it, as pydantic
writes it (table container_documents). The containers table holds, copied from it, what
SQL keys, joins and filters on: the members of `ContainerHead` (id, labels, image,
runtime, snapshotter, snapshot_key), as containerd keeps a record's encoded value beside
its index buckets. So a list is the documents as stored, by id, handed up as bytes for
the API to join into its body with no model built; a get is one document parsed; a
filter scans the narrow table only. Filtered lists are narrowed in SQL before the filter
decides in Python. Lists come a page at a time (`PageRequest`: after an id, at most
`limit` documents and about `max_bytes` of them), so no list reads unbounded bytes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from ..errors import CargoholdError, ErrorKind, not_found
from ..filters import Equality, off_loop
from ..models import (
    FIRST_PAGE,
    Container,
    ContainerFields,
    ContainerHead,
    ContainerNetwork,
    Page,
    PageRequest,
    Runtime,
    RuntimeName,
)
from ..pages import cut_sizes
from ..topics import Topic
from .db import Database, Row, Tx, dumps, utcnow
from .namespaces import ensure_namespace, namespace_exists_in, namespace_not_found, require_namespace
from .snapshots import DataDir, release_unreferenced, require_snapshot
from .tasks import refuse_task_in


def container_not_found(namespace: str, container_id: str) -> CargoholdError:
    return not_found(f'container "{container_id}" not found in namespace "{namespace}"')


# The head's columns beside the key as stored (labels as `dumps` writes them, runtime as
# its JSON), and the head as filters read it: the runtime's name is all they look at.
_HEAD_COLUMNS = "labels, image, runtime, snapshotter, snapshot_key"
_HEAD_SELECT = "id, labels, image, json_extract(runtime, '$.name') AS runtime, snapshotter, snapshot_key"
_DOCUMENT = "SELECT doc FROM container_documents WHERE namespace = ? AND id = ?"

# Text `dumps` writes as it is, between quotes: printable ASCII but `"` and `\`. Only
# such a label key can be looked up as `$."key"`: SQLite's path syntax has no escapes,
# and SQLite 3.40 compares keys as stored (escaped) text. Other keys are left to Python.
_PLAIN = re.compile(r'[ !#-\[\]-~]*')
_COLUMN_FIELDS = ("id", "image", "snapshotter", "snapshot_key")
_BATCH = 500  # ids bound in one statement; well under SQLite's variable limit


def _document(container: Container) -> str:
    """The stored document: what FastAPI writes for the container (`model_dump_json`)."""
    return container.model_dump_json()


def _from_document(doc: str) -> Container:
    # Documents were validated on the way in: construct without validating again.
    members = json.loads(doc)
    runtime = members["runtime"]
    return Container.model_construct(
        id=members["id"],
        labels=members["labels"],
        image=members["image"],
        runtime=Runtime.model_construct(name=RuntimeName(runtime["name"]), options=runtime["options"]),
        spec=members["spec"],
        snapshotter=members["snapshotter"],
        snapshot_key=members["snapshot_key"],
        extensions=members["extensions"],
        network=ContainerNetwork.model_validate(members["network"]) if members.get("network") else None,
        created_at=datetime.fromisoformat(members["created_at"]),
        updated_at=datetime.fromisoformat(members["updated_at"]),
    )


def _with_fields(
    container_id: str, fields: ContainerFields, snapshotter: str, created_at: datetime, updated_at: datetime
) -> Container:
    """The container `fields` describe. Maps are kept with their keys sorted (as `dumps`
    writes them), so what a client sent in any order is stored, and served, one way."""
    return Container.model_construct(
        id=container_id,
        labels=_key_sorted(fields.labels),
        image=fields.image,
        runtime=fields.runtime,
        spec=_key_sorted(fields.spec.model_dump(mode="json", exclude_unset=True)),
        snapshotter=fields.snapshotter or snapshotter,
        snapshot_key=fields.snapshot_key,
        extensions=_key_sorted(fields.extensions),
        network=fields.network,
        created_at=created_at,
        updated_at=updated_at,
    )


def _key_sorted(value: Any) -> Any:
    return json.loads(dumps(value))


def _head_values(container: Container) -> tuple[str, ...]:
    return (
        dumps(container.labels), container.image, container.runtime.model_dump_json(), container.snapshotter,
        container.snapshot_key,
    )


def _head(row: Row) -> ContainerHead:
    return ContainerHead(
        id=row["id"],
        image=row["image"],
        runtime=row["runtime"],
        snapshotter=row["snapshotter"],
        snapshot_key=row["snapshot_key"],
        labels=json.loads(row["labels"]),
    )


def _equality_sql(path: tuple[str, ...], value: str) -> tuple[str, tuple[str, ...]] | None:
    """SQL that holds exactly when the field at `path` (as `containers.container_field`
    reads it) equals `value`, with its parameters; None when SQL can't say."""
    if not _bindable(value):
        return None
    if len(path) == 1 and path[0] in _COLUMN_FIELDS:
        return f"{path[0]} = ?", (value,)
    if path in (("runtime",), ("runtime", "name")):
        return "json_extract(runtime, '$.name') = ?", (value,)
    if len(path) == 2 and path[0] == "labels" and _PLAIN.fullmatch(path[1]):
        lookup = "json_extract(labels, ?) = ?"
        params = (f'$."{path[1]}"', value)
        if _PLAIN.fullmatch(value):
            # The stored labels then hold `"value"` verbatim: a scan for it is far
            # cheaper than parsing the labels, so it goes first and skips most rows.
            return f"instr(labels, ?) > 0 AND {lookup}", (f'"{value}"', *params)
        return lookup, params
    return None


def _bindable(text: str) -> bool:
    # sqlite3 can't bind a str holding a lone surrogate: better no narrowing than an error.
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _narrowing(equalities: Sequence[Sequence[Equality]]) -> tuple[str, list[str]]:
    """An ` AND (...)` clause ORing, per alternative, the equalities SQL can test, and its
    parameters. Empty when some alternative leaves SQL nothing to test: it may match any
    row, so nothing can be left out."""
    alternatives: list[str] = []
    params: list[str] = []
    for pairs in equalities:
        tests = [test for test in (_equality_sql(path, value) for path, value in pairs) if test]
        if not tests:
            return "", []
        alternatives.append(" AND ".join(sql for sql, _ in tests))
        params += [param for _, bound in tests for param in bound]
    if not alternatives:
        return "", []
    return f" AND (({') OR ('.join(alternatives)}))", params


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

    async def create(self, namespace: str, container_id: str, fields: ContainerFields) -> str:
        """Insert the row (creating the namespace on first use); appends /containers/create.
        Returns the stored document.

        Raises ALREADY_EXISTS, or VALIDATION when `snapshot_key` names no snapshot."""
        async with self._db.write() as tx:
            now = utcnow()
            doc = _document(_with_fields(container_id, fields, self._default_snapshotter, now, now))
            created = _from_document(doc)  # as a get will read it back
            ensure_namespace(tx, namespace)
            if created.snapshot_key:
                require_snapshot(tx, namespace, created.snapshotter, created.snapshot_key)
            if tx.exists("SELECT 1 FROM containers WHERE namespace = ? AND id = ?", namespace, container_id):
                raise CargoholdError(
                    ErrorKind.ALREADY_EXISTS,
                    f'container "{container_id}" already exists in namespace "{namespace}"',
                )
            tx.execute(
                f"INSERT INTO containers (namespace, id, {_HEAD_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                namespace, container_id, *_head_values(created),
            )
            tx.execute("INSERT INTO container_documents VALUES (?, ?, ?)", namespace, container_id, doc)
            tx.append_event(namespace, Topic.CONTAINER_CREATE, _event(created))
            return doc

    async def get(self, namespace: str, container_id: str) -> Container:
        """Raises NOT_FOUND for the container or its namespace."""
        return _from_document(await self.get_document(namespace, container_id))

    async def get_document(self, namespace: str, container_id: str) -> str:
        """The container's stored document, the JSON `GET /containers/{id}` serves.
        Raises NOT_FOUND for the container or its namespace."""
        row = await self._db.one(_DOCUMENT, namespace, container_id)
        if row is None:
            await require_namespace(self._db, namespace)
            raise container_not_found(namespace, container_id)
        document: str = row["doc"]
        return document

    async def list_documents(
        self,
        namespace: str,
        select: Callable[[ContainerHead], bool] | None = None,
        equalities: Sequence[Sequence[Equality]] = ((),),
        page: PageRequest = FIRST_PAGE,
    ) -> Page[bytes]:
        """A page of the containers of `namespace` (those whose head `select` keeps), by
        id: each as its stored document, the JSON `GET /containers/{id}` serves (UTF-8
        bytes, for the API to join into a list without building models).

        `equalities` are, per alternative of `select`, the field == value pairs it
        requires (`Filter.equalities()`); those SQL can express narrow the rows read
        before `select` decides, so they must never exclude a row `select` keeps.
        Raises NOT_FOUND for an unknown namespace."""
        if select is None:
            found = await self._page(namespace, " AND id > ?", [page.after], page)
        else:
            where, params = _narrowing(equalities)
            heads = await self._db.all(
                f"SELECT {_HEAD_SELECT} FROM containers WHERE namespace = ? AND id > ?{where} ORDER BY id",
                namespace, page.after, *params,
            )
            # Off the event loop, on the filters' threads: over 10,000 long labels, parsing
            # heads and matching took up to 0.6 s of it (RE2 releases the GIL as it matches).
            chosen = [row["id"] for row in await off_loop(heads, lambda row: select(_head(row)))]
            found = await self._page_of(namespace, chosen, page)
        if not found.items:
            await require_namespace(self._db, namespace)
        return found

    async def _page_of(self, namespace: str, ids: list[str], page: PageRequest) -> Page[bytes]:
        """`_page` over the containers `ids` (sorted), in batches of bound ids."""
        documents: list[bytes] = []
        budget = page.max_bytes
        wanted = ids[: page.limit]
        for start in range(0, len(wanted), _BATCH):
            batch = wanted[start:start + _BATCH]
            where = f" AND id IN ({', '.join('?' * len(batch))})"
            found = await self._page(namespace, where, batch, replace(page, limit=len(batch), max_bytes=budget))
            documents += found.items
            if found.next_cursor is not None:  # the bytes ran out inside this batch
                return Page(documents, found.next_cursor)
            # The batch's bytes as a list holds them: with the commas between.
            budget -= sum(map(len, found.items)) + max(len(found.items) - 1, 0)
            if budget <= 0 and start + _BATCH < len(wanted):
                return Page(documents, batch[-1])
        return Page(documents, wanted[-1] if len(ids) > len(wanted) else None)

    async def _page(self, namespace: str, where: str, params: Sequence[str], page: PageRequest) -> Page[bytes]:
        """The documents of `namespace` matching `where` (an ` AND ...` clause) of one
        page, by id, and the next cursor.

        One statement in the usual case. The documents' order is that statement's own
        ORDER BY, the only order SQL promises (an aggregate such as group_concat keeps no
        order before SQLite 3.44). The page's bytes are summed first, in a subquery SQLite
        runs once, and the documents are read only when that sum is within the page's
        bytes, so a page never holds 1,000 one-MiB specs (joined, they once passed
        SQLITE_MAX_LENGTH, 1e9 bytes). Over the bound, the sizes are read and the page
        cut where they reach it (`pages.cut_sizes`)."""
        rows = f"FROM container_documents WHERE namespace = ?{where} ORDER BY id LIMIT ?"
        # The sum is over one row more than the page: that row, if it comes, only says
        # there is a next page. No row: none to list, or more bytes than the page holds.
        # CAST: the stored text's UTF-8 bytes, as they go out, with no decoding on the way.
        found = await self._db.all(
            f"SELECT id, CAST(doc AS BLOB) AS doc FROM container_documents WHERE namespace = ?{where}"
            f" AND (SELECT sum(length(CAST(doc AS BLOB))) FROM (SELECT doc {rows})) <= ? ORDER BY id LIMIT ?",
            namespace, *params, namespace, *params, page.limit + 1, page.max_bytes, page.limit + 1,
        )
        if found:
            kept = found[: page.limit]
            return Page([row["doc"] for row in kept], kept[-1]["id"] if len(found) > len(kept) else None)
        sizes = await self._db.all(
            f"SELECT id, length(CAST(doc AS BLOB)) AS size {rows}", namespace, *params, page.limit + 1
        )
        if not sizes:
            return Page([], None)
        count, cursor = cut_sizes([(row["id"], row["size"]) for row in sizes], page)
        # The page runs to its last id, not `count` rows: a row written since the sizes
        # were read then joins this page rather than push one past its cursor.
        documents = await self._db.all(
            f"SELECT CAST(doc AS BLOB) AS doc FROM container_documents WHERE namespace = ?{where} AND id <= ?"
            " ORDER BY id",
            namespace, *params, sizes[count - 1]["id"],
        )
        return Page([row["doc"] for row in documents], cursor)

    async def update(
        self,
        namespace: str,
        container_id: str,
        apply: Callable[[Container], ContainerFields],
    ) -> tuple[str, list[DataDir]]:
        """Replace the mutable fields with `apply(current)`, read and written in one
        transaction so a precondition checked by `apply` holds; appends /containers/update.
        Returns the new stored document.
        A snapshot the container no longer pins is released as on delete: its data dirs
        are returned for the caller to remove."""
        async with self._db.write() as tx:
            current = self._get_in(tx, namespace, container_id)
            doc = _document(_with_fields(
                container_id, apply(current), self._default_snapshotter, current.created_at, utcnow()
            ))
            updated = _from_document(doc)
            pinned = (updated.snapshotter, updated.snapshot_key)
            if updated.snapshot_key and pinned != (current.snapshotter, current.snapshot_key):
                require_snapshot(tx, namespace, *pinned)
            tx.execute(
                f"UPDATE containers SET ({_HEAD_COLUMNS}) = (?, ?, ?, ?, ?) WHERE namespace = ? AND id = ?",
                *_head_values(updated), namespace, container_id,
            )
            tx.execute(
                "UPDATE container_documents SET doc = ? WHERE namespace = ? AND id = ?", doc, namespace, container_id
            )
            tx.append_event(namespace, Topic.CONTAINER_UPDATE, _event(updated))
            if pinned == (current.snapshotter, current.snapshot_key):
                return doc, []
            return doc, self._release(tx, namespace, current.snapshotter, current.snapshot_key)

    async def delete(self, namespace: str, container_id: str) -> list[DataDir]:
        """Delete the row (appends /containers/delete), then release its active snapshot
        if nothing else uses it (appends /snapshot/remove). Returns the released
        snapshots' data dirs for the caller to remove once committed."""
        async with self._db.write() as tx:
            # Its head, not its document: what the delete needs is which snapshot it pins.
            deleted = tx.one("SELECT snapshotter, snapshot_key FROM containers WHERE namespace = ? AND id = ?",
                             namespace, container_id)
            if deleted is None:
                raise self._missing_in(tx, namespace, container_id)
            refuse_task_in(tx, namespace, container_id)
            # Its document goes with it (ON DELETE CASCADE).
            tx.execute("DELETE FROM containers WHERE namespace = ? AND id = ?", namespace, container_id)
            tx.append_event(namespace, Topic.CONTAINER_DELETE, {"id": container_id})
            return self._release(tx, namespace, deleted["snapshotter"], deleted["snapshot_key"])

    def _release(self, tx: Tx, namespace: str, snapshotter: str, snapshot_key: str) -> list[DataDir]:
        if not snapshot_key:
            return []
        released = release_unreferenced(tx, namespace, snapshotter, snapshot_key)
        return [released] if released else []

    def _get_in(self, tx: Tx, namespace: str, container_id: str) -> Container:
        row = tx.one(_DOCUMENT, namespace, container_id)
        if row is None:
            raise self._missing_in(tx, namespace, container_id)
        return _from_document(row["doc"])

    def _missing_in(self, tx: Tx, namespace: str, container_id: str) -> CargoholdError:
        if not namespace_exists_in(tx, namespace):
            return namespace_not_found(namespace)
        return container_not_found(namespace, container_id)

