"""Container rows: pure metadata, no runtime state.

Lists are the hot read: `list_json` has SQLite write the response body from the stored
JSON text, and narrows filtered lists in SQL before the filter decides in Python.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from ..errors import CargoholdError, ErrorKind, not_found
from ..filters import Equality
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


# What filters look at; the runtime's name is all of it they read.
_HEAD_COLUMNS = "id, labels, image, json_extract(runtime, '$.name') AS runtime, snapshotter, snapshot_key"

# --- Lists as JSON stitched by SQLite ------------------------------------------------
#
# A list is the hot read: parsing every row into pydantic models only for FastAPI to
# serialize them again costs ~40 us a container. The columns already hold JSON text, so
# SQLite splices them into each container's JSON as they are, and the bytes come out as
# pydantic would write them (`ContainerList` through FastAPI), member for member.
#
# That holds only where the stored text is what pydantic would write back: labels, spec
# and extensions are written by `dumps` (Python's json), runtime by pydantic itself.
# Python's json differs from pydantic's writer in three ways, and a row showing any of
# them is built through pydantic instead, as `get` builds it:
# - `\u` escapes: `dumps` escapes every non-ASCII character, pydantic writes UTF-8;
# - NaN and Infinity: `dumps` writes them bare, pydantic writes null;
# - exponents: `dumps` writes 1e-05, pydantic 0.00001 (floats without one are equal).
# Labels hold strings only, so for them only the first can apply; the spec is stored
# from pydantic's JSON mode, which has already turned NaN and Infinity into null. The
# checks are textual, so "NaN" or "1e+5" inside a string also falls back: slower for
# that row, never wrong. Timestamps are stored by `isoformat()` (`+00:00`); pydantic
# writes `Z`. Every check runs for every row of a list: the fewer the better.


def _no_escape(column: str) -> str:
    return f"instr({column}, '\\u') = 0"


def _no_exponent(column: str) -> str:
    # instr is cheap; the GLOB (a digit before the e) only runs where "e+" or "e-" is.
    return f"((instr({column}, 'e+') = 0 AND instr({column}, 'e-') = 0) OR {column} NOT GLOB '*[0-9]e[+-]*')"


def _finite(column: str) -> str:
    return f"instr({column}, 'NaN') = 0 AND instr({column}, 'Infinity') = 0"


_VERBATIM = " AND ".join([
    _no_escape("labels"),
    f"{_no_escape('spec')} AND {_no_exponent('spec')}",
    f"(extensions = '{{}}' OR ({_no_escape('extensions')} AND {_finite('extensions')}"
    f" AND {_no_exponent('extensions')}))",
    "substr(created_at, -6) = '+00:00'",
    "substr(updated_at, -6) = '+00:00'",
])

# Each member of Container as a format() conversion and the SQL arguments it takes.
_MEMBER_SQL = {
    "id": ("%s", "json_quote(id)"),
    "labels": ("%s", "labels"),
    "image": ("%s", "json_quote(image)"),
    "runtime": ("%s", "runtime"),
    "spec": ("%s", "spec"),
    "snapshotter": ("%s", "json_quote(snapshotter)"),
    "snapshot_key": ("%s", "json_quote(snapshot_key)"),
    "extensions": ("%s", "extensions"),
    # All but the `+00:00`, then `Z`.
    "created_at": ('"%.*sZ"', "length(created_at) - 6, created_at"),
    "updated_at": ('"%.*sZ"', "length(updated_at) - 6, updated_at"),
}


def _object_sql() -> str:
    """SQL for a container's JSON object, members in the model's order (pydantic's). One
    format() call: a chain of `||` copies the growing string once per piece. A member
    added to Container without SQL here fails at import (KeyError)."""
    members = [(name, *_MEMBER_SQL[name]) for name in Container.model_fields]
    template = ",".join(f'"{name}":{conversion}' for name, conversion, _ in members)
    return f"format('{{{template}}}', {', '.join(args for _, _, args in members)})"


# A container's JSON, or NULL where the row must go through pydantic.
_BODY = f"CASE WHEN {_VERBATIM} THEN {_object_sql()} END AS body"

# A list comes back from SQLite as one string, group_concat's: a Python row object per
# container would cost more than all the stitching. JSON text never holds a raw control
# character (every writer escapes them) and ids are identifiers, so \x01 separates the
# rows and \x00 + id stands for a row to be built through pydantic. group_concat sees the rows in the
# subquery's order: SQLite keeps a FROM-subquery's ORDER BY under an aggregate other
# than count/min/max (select.c), and a test holds it to that.
_ROW_SEPARATOR = "\x01"
_REBUILD = "\x00"

# Text `dumps` writes as it is, between quotes: printable ASCII but `"` and `\`. Only
# such a label key can be looked up as `$."key"`: SQLite's path syntax has no escapes,
# and SQLite 3.40 compares keys as stored (escaped) text. Other keys are left to Python.
_PLAIN = re.compile(r'[ !#-\[\]-~]*')
_COLUMN_FIELDS = ("id", "image", "snapshotter", "snapshot_key")
_BATCH = 500  # ids bound in one statement; well under SQLite's variable limit


def _batches(ids: list[str]) -> list[list[str]]:
    return [ids[start:start + _BATCH] for start in range(0, len(ids), _BATCH)]


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
            ensure_namespace(tx, namespace)
            if fields.snapshot_key:
                snapshotter = fields.snapshotter or self._default_snapshotter
                require_snapshot(tx, namespace, snapshotter, fields.snapshot_key)
            if tx.exists("SELECT 1 FROM containers WHERE namespace = ? AND id = ?", namespace, container_id):
                raise CargoholdError(
                    ErrorKind.ALREADY_EXISTS,
                    f'container "{container_id}" already exists in namespace "{namespace}"',
                )
            now = utcnow().isoformat()
            tx.execute(
                f"INSERT INTO containers (namespace, {_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                namespace, container_id, *_columns(fields, self._default_snapshotter), now, now,
            )
            created = self._get_in(tx, namespace, container_id)
            tx.append_event(namespace, Topic.CONTAINER_CREATE, _event(created))
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

    async def list_json(
        self,
        namespace: str,
        select: Callable[[ContainerHead], bool] | None = None,
        equalities: Sequence[Sequence[Equality]] = ((),),
    ) -> bytes:
        """The JSON of `ContainerList` for the containers of `namespace` (those whose head
        `select` keeps), by id: the body of `GET /containers`, as FastAPI would write it.

        `equalities` are, per alternative of `select`, the field == value pairs it
        requires (`Filter.equalities()`); those SQL can express narrow the rows read
        before `select` decides, so they must never exclude a row `select` keeps.
        Raises NOT_FOUND for an unknown namespace."""
        if select is None:
            stitched = [await self._stitched(namespace)]
        else:
            where, params = _narrowing(equalities)
            heads = await self._db.all(
                f"SELECT {_HEAD_COLUMNS} FROM containers WHERE namespace = ?{where} ORDER BY id",
                namespace, *params,
            )
            chosen = [row["id"] for row in heads if select(_head(row))]
            stitched = [await self._stitched(namespace, batch) for batch in _batches(chosen)]
        text = _ROW_SEPARATOR.join(filter(None, stitched))
        if not text:
            await self._require_namespace(namespace)
            return b'{"containers":[]}'
        if _REBUILD in text:
            text = await self._rebuilt(namespace, text)
        else:
            text = text.replace(_ROW_SEPARATOR, ",")
        return f'{{"containers":[{text}]}}'.encode()

    async def _stitched(self, namespace: str, ids: Sequence[str] | None = None) -> str:
        """The rows of `namespace` (only those with `ids`, if given) by id, joined by
        _ROW_SEPARATOR: each a container's JSON, or _REBUILD and its id; "" for none."""
        where = "" if ids is None else f" AND id IN ({', '.join('?' * len(ids))})"
        row = await self._db.one(
            "SELECT group_concat(coalesce(body, char(0) || id), char(1)) AS stitched"
            f" FROM (SELECT id, {_BODY} FROM containers WHERE namespace = ?{where} ORDER BY id)",
            namespace, *(ids or ()),
        )
        return (row["stitched"] if row else None) or ""  # group_concat of no rows is NULL

    async def _rebuilt(self, namespace: str, text: str) -> str:
        """`text` from `_stitched` as a JSON array's members, each row marked _REBUILD
        built through pydantic as `get` builds it (FastAPI writes a Container in a list
        as `model_dump_json` does). A container deleted since `text` was read is left out."""
        rows = text.split(_ROW_SEPARATOR)
        marked = [row.removeprefix(_REBUILD) for row in rows if row.startswith(_REBUILD)]
        built: dict[str, str] = {}
        for batch in _batches(marked):
            for record in await self._db.all(
                f"SELECT {_COLUMNS} FROM containers WHERE namespace = ? AND id IN ({', '.join('?' * len(batch))})",
                namespace, *batch,
            ):
                built[record["id"]] = _container(record).model_dump_json()
        bodies = (built.get(row.removeprefix(_REBUILD), "") if row.startswith(_REBUILD) else row for row in rows)
        return ",".join(filter(None, bodies))

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
            current = self._get_in(tx, namespace, container_id)
            fields = apply(current)
            snapshotter = fields.snapshotter or self._default_snapshotter
            pinned = (snapshotter, fields.snapshot_key)
            if fields.snapshot_key and pinned != (current.snapshotter, current.snapshot_key):
                require_snapshot(tx, namespace, snapshotter, fields.snapshot_key)
            tx.execute(
                "UPDATE containers SET labels = ?, image = ?, runtime = ?, spec = ?, snapshotter = ?,"
                " snapshot_key = ?, extensions = ?, updated_at = ? WHERE namespace = ? AND id = ?",
                *_columns(fields, self._default_snapshotter), utcnow().isoformat(),
                namespace, container_id,
            )
            updated = self._get_in(tx, namespace, container_id)
            tx.append_event(namespace, Topic.CONTAINER_UPDATE, _event(updated))
            if pinned == (current.snapshotter, current.snapshot_key):
                return updated, []
            return updated, self._release(tx, namespace, current)

    async def delete(self, namespace: str, container_id: str) -> list[DataDir]:
        """Delete the row (appends /containers/delete), then release its active snapshot
        if nothing else uses it (appends /snapshot/remove). Returns the released
        snapshots' data dirs for the caller to remove once committed."""
        async with self._db.write() as tx:
            deleted = self._get_in(tx, namespace, container_id)
            if tx.exists("SELECT 1 FROM tasks WHERE namespace = ? AND id = ?", namespace, container_id):
                raise CargoholdError(
                    ErrorKind.CONFLICT, f'container "{container_id}" has a task; delete the task first'
                )
            tx.execute(
                "DELETE FROM containers WHERE namespace = ? AND id = ?", namespace, container_id
            )
            tx.append_event(namespace, Topic.CONTAINER_DELETE, {"id": container_id})
            return self._release(tx, namespace, deleted)

    def _release(self, tx: Tx, namespace: str, container: Container) -> list[DataDir]:
        if not container.snapshot_key:
            return []
        released = release_unreferenced(tx, namespace, container.snapshotter, container.snapshot_key)
        return [released] if released else []

    def _get_in(self, tx: Tx, namespace: str, container_id: str) -> Container:
        row = tx.one(
            f"SELECT {_COLUMNS} FROM containers WHERE namespace = ? AND id = ?",
            namespace, container_id,
        )
        if row is None:
            if not tx.exists("SELECT 1 FROM namespaces WHERE name = ?", namespace):
                raise namespace_not_found(namespace)
            raise container_not_found(namespace, container_id)
        return _container(row)

    async def _require_namespace(self, namespace: str) -> None:
        if await self._db.one("SELECT 1 FROM namespaces WHERE name = ?", namespace) is None:
            raise namespace_not_found(namespace)
