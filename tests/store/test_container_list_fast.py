"""ContainerStore.list_documents: the list body the API joins from the stored documents
must be the bytes FastAPI writes for `ContainerList` built through pydantic, for every
shape of container, also for rows written before containers were stored as documents
(schema 3); and narrowing a filtered list in SQL must never change which containers it
holds."""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter

from app import filters
from app.api.containers import list_body
from app.containers import container_field
from app.errors import CargoholdError, ErrorKind
from app.models import MAX_PAGE_LIMIT, ContainerFields, ContainerList, PageRequest, SnapshotKind
from app.store.containers import ContainerStore, _narrowing
from app.store.db import MIGRATIONS, Database, dumps
from app.store.snapshots import SnapshotStore

pytestmark = pytest.mark.anyio

NS = "ns1"
SPEC: dict[str, Any] = {"ociVersion": "1.0.2", "root": {"path": "rootfs"}}
# What FastAPI does with a route's response model: validate, then dump_json.
LIST = TypeAdapter(ContainerList)


@pytest.fixture
def store(db: Database) -> ContainerStore:
    return ContainerStore(db, "overlayfs")


def fields(**members: Any) -> ContainerFields:
    return ContainerFields.model_validate({"spec": SPEC, **members})


async def listed(store: ContainerStore, *args: Any) -> bytes:
    """The body `GET /containers` makes of the page `list_documents` gives (its cursor,
    None here, is in the body too)."""
    found = await store.list_documents(*args)
    assert found.next_cursor is None
    return list_body(found)


async def pydantic_body(store: ContainerStore, ids: Sequence[str]) -> bytes:
    """The list as it was served before: each container built by pydantic, then FastAPI."""
    containers = [await store.get(NS, container_id) for container_id in sorted(ids)]
    return LIST.dump_json(LIST.validate_python(ContainerList(containers=containers)))


# id -> fields: what JSON writers disagree on (escapes, floats, NaN, key order, unicode).
SHAPES: dict[str, dict[str, Any]] = {
    "plain": {"labels": {"env": "prod", "team": "web", "tier": "front"}, "image": "busybox"},
    "empty": {"image": ""},
    "odd-keys": {"labels": {"a.b": "1", 'a"b': "2", "a b": "3", "a\\b": "4", "x]": "6"}},
    "escapes": {"labels": {"text": 'line\nbreak\ttab "quoted" back\\slash /'}},
    "floats": {"spec": {**SPEC, "x-float": [0.1, 1.5, -0.0, 100.0, 1234567.125, 0.0001]}},
    "big-ints": {"spec": {**SPEC, "x-int": [2**70, -(2**63), 0, -1]}},
    "nested": {
        "spec": {
            **SPEC,
            "process": {"args": ["/bin/sh", "-c", "echo hi"], "env": ["A=1", "B=two"], "cwd": "/",
                        "user": {"uid": 0, "gid": 0, "additionalGids": [1, 2]}},
            "mounts": [{"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid"]}],
            "annotations": {"org.example/key": "value"},
            "linux": {"resources": {"memory": {"limit": 67108864}, "cpu": {"shares": 512}}},
            "hostname": "box",
        },
    },
    "key-order": {"labels": {"b": "1", "a": "2"}, "spec": {"root": {"path": "r"}, "ociVersion": "1.0.2"}},
    "extensions": {"extensions": {"x": {"a": [1, 2, {"b": None}], "t": True, "f": False, "s": "str"}}},
    "runtime": {"runtime": {"name": "crun", "options": {"small": 1e-05, "big": 1e16, "u": "é", "n": None}}},
    "image-odd": {"image": "ïmage\n\t\x01\x7f😀/x:1"},
    "unicode-labels": {"labels": {"é": "ü", "emoji": "😀", "cjk": "漢字"}},
    "control-label": {"labels": {"c": "\x01\x1f"}},
    "del-label": {"labels": {"d": "\x7f"}},
    "unicode-spec": {"spec": {**SPEC, "hostname": "hôte"}},
    "small-float": {"spec": {**SPEC, "x": 1e-05}},
    "big-float": {"extensions": {"x": 1e16}},
    "huge-float": {"extensions": {"x": 1.5e300}},
    "nan-in-spec": {"spec": {**SPEC, "x": math.nan}},
    "nan": {"extensions": {"x": math.nan}},
    "infinity": {"extensions": {"x": [math.inf, -math.inf]}},
    "nan-in-label": {"labels": {"word": "NaNa", "digest": "sha256:1e+5ab", "x": "1e-05"}},
    "nan-in-text": {"extensions": {"word": "NaNa"}},
    "exponent-in-text": {"spec": {**SPEC, "hostname": "h1e+5"}},
    "e-in-text": {"spec": {**SPEC, "hostname": "one-two"}, "extensions": {"t": "the-end"}},
}


@pytest.fixture
async def shapes(store: ContainerStore, db: Database) -> list[str]:
    await SnapshotStore(db).insert(NS, "overlayfs", "root-1", SnapshotKind.ACTIVE, None, {}, "/nonexistent/1")
    for container_id, members in SHAPES.items():
        await store.create(NS, container_id, fields(**members))
    await store.create(NS, "with-snapshot", fields(snapshot_key="root-1", labels={"k": "v"}))
    return sorted([*SHAPES, "with-snapshot"])


async def test_every_shape_is_written_as_pydantic_writes_it(store: ContainerStore, shapes: list[str]) -> None:
    fast = await listed(store, NS)
    assert fast == await pydantic_body(store, shapes)
    assert json.loads(fast)["containers"][0]["created_at"].endswith("Z")


@pytest.mark.parametrize("container_id", [*SHAPES, "with-snapshot"])
async def test_each_shape_alone(store: ContainerStore, shapes: list[str], container_id: str) -> None:
    # One at a time, so a difference names its shape.
    fast = await listed(store, NS, lambda head: head.id == container_id, [[(("id",), container_id)]])
    assert fast == await pydantic_body(store, [container_id])


TIMESTAMPS = [
    "2024-01-02T03:04:05+00:00",
    "2024-01-02T03:04:05.120000+00:00",
    "2024-01-02T03:04:05.000001+00:00",
    "2024-01-02T05:04:05.5+02:00",
]


async def test_rows_of_schema_3_become_documents(tmp_path: Path) -> None:
    """A database from before documents: each row's members in columns of their own,
    written as the store wrote them then (maps by `dumps`, timestamps by isoformat)."""
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as old:
        for script in MIGRATIONS[:3]:
            assert isinstance(script, str)
            old.executescript(script)
        old.execute("PRAGMA user_version = 3")
        old.execute("INSERT INTO namespaces VALUES (?, '{}', ?, ?)", (NS, TIMESTAMPS[0], TIMESTAMPS[0]))
        for n, (container_id, members) in enumerate(SHAPES.items()):
            shape, stamp = fields(**members), TIMESTAMPS[n % len(TIMESTAMPS)]
            old.execute(
                "INSERT INTO containers VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (NS, container_id, dumps(shape.labels), shape.image, shape.runtime.model_dump_json(),
                 dumps(shape.spec.model_dump(mode="json", exclude_unset=True)), "overlayfs", shape.snapshot_key,
                 dumps(shape.extensions), stamp, stamp),
            )
    migrated = await Database.open(path)
    try:
        store = ContainerStore(migrated, "overlayfs")
        assert await listed(store, NS) == await pydantic_body(store, list(SHAPES))
        columns = {row["name"] for row in await migrated.all("PRAGMA table_info(containers)")}
        assert columns == {"namespace", "id", "labels", "image", "runtime", "snapshotter", "snapshot_key"}
        for n, (container_id, members) in enumerate(SHAPES.items()):
            container = await store.get(NS, container_id)
            assert container.created_at == datetime.fromisoformat(TIMESTAMPS[n % len(TIMESTAMPS)])
            # The same content as the container created today from the same fields.
            await store.create(NS, f"{container_id}-new", fields(**members))
            fresh = await store.get(NS, f"{container_id}-new")
            assert container.model_dump(exclude={"id", "created_at", "updated_at"}) == fresh.model_dump(
                exclude={"id", "created_at", "updated_at"})
    finally:
        await migrated.close()


async def test_after_an_update(store: ContainerStore) -> None:
    await store.create(NS, "web", fields(labels={"a": "1"}))
    await store.update(NS, "web", lambda current: fields(labels={"a": "2", "b": "é"}))
    await store.update(NS, "web", lambda current: fields(labels={"a": "3"}, image="nginx"))
    assert await listed(store, NS) == await pydantic_body(store, ["web"])


async def test_many_rows_in_id_order_across_batches(store: ContainerStore) -> None:
    ids = [f"c{n:04d}" for n in range(1203)]
    for n, container_id in enumerate(reversed(ids)):
        members = {"labels": {"n": str(n), "u": "é"}} if n % 97 == 0 else {"labels": {"n": str(n)}}
        await store.create(NS, container_id, fields(**members))
    whole = PageRequest(limit=MAX_PAGE_LIMIT)
    assert await listed(store, NS, None, ((),), whole) == await pydantic_body(store, ids)
    odd = await listed(store, NS, lambda head: int(head.labels["n"]) % 2 == 1, ((),), whole)
    assert [c["id"] for c in json.loads(odd)["containers"]] == sorted(ids[-2::-2])


async def test_a_container_deleted_while_listed_is_left_out(
    store: ContainerStore, tmp_path: Path
) -> None:
    await store.create(NS, "a", fields())
    await store.create(NS, "b", fields(labels={"u": "é"}))
    await store.create(NS, "c", fields())

    def delete_while_selecting(head: Any) -> bool:
        # Another writer commits between the heads and the bodies being read.
        with sqlite3.connect(tmp_path / "metadata.db") as other:
            other.execute("PRAGMA foreign_keys = ON")  # as the daemon's: the documents go too
            other.execute("DELETE FROM containers WHERE id IN ('b', 'c')")
        return True

    found = json.loads(await listed(store, NS, delete_while_selecting))
    assert [c["id"] for c in found["containers"]] == ["a"]


async def test_empty_and_unknown_namespace(store: ContainerStore, db: Database) -> None:
    await store.create(NS, "web", fields())
    await store.delete(NS, "web")
    assert await db.all("SELECT id FROM container_documents") == [], "the document went with the row"
    assert await listed(store, NS) == b'{"containers":[],"next_cursor":null}'
    assert await listed(store, NS, lambda head: True, [[(("id",), "web")]]) == b'{"containers":[],"next_cursor":null}'
    for select in (None, lambda head: True):
        with pytest.raises(CargoholdError) as raised:
            await listed(store, "nope", select)
        assert raised.value.kind is ErrorKind.NOT_FOUND
        assert 'namespace "nope"' in raised.value.detail


# --- Filters narrowed in SQL --------------------------------------------------------

CORPUS: dict[str, dict[str, Any]] = {
    "web": {"image": "docker.io/library/nginx:1.25",
            "labels": {"env": "prod", "a.b": "v", 'q"k': "1", "tier": "front", "sp ace": "x"}},
    "db": {"image": "docker.io/library/postgres:16", "snapshot_key": "db-root",
           "labels": {"env": "dev", "é": "ü", "plain": "ü"}},
    "job": {"image": "quay.io/acme/job:1", "runtime": {"name": "crun"}},
    "api": {"image": "docker.io/library/nginx:1.25",
            "labels": {"env": "prod", "tier": "back", "empty": "", "quote": 'say "hi"', "path": "C:\\dir"}},
}

# (filters, expected ids, whether SQL narrows)
FILTER_TABLE = [
    pytest.param(["labels.env==prod"], ["api", "web"], True, id="label-equal"),
    pytest.param(["labels.env!=prod"], ["db", "job"], False, id="label-not-equal"),
    pytest.param(["labels.env~=^pr"], ["api", "web"], False, id="label-regex"),
    pytest.param(["labels.env==prod,labels.tier==front"], ["web"], True, id="and"),
    pytest.param(["labels.env==prod,labels.tier!=front"], ["api"], True, id="equal-and-not-equal"),
    pytest.param(["labels.env==prod,image~=nginx"], ["api", "web"], True, id="equal-and-regex"),
    pytest.param(["id==web", "id==job"], ["job", "web"], True, id="or"),
    pytest.param(["labels.env==prod", "id==job"], ["api", "job", "web"], True, id="or-mixed-fields"),
    pytest.param(["labels.env==prod", "labels.env"], ["api", "db", "web"], False, id="or-with-presence"),
    pytest.param(["id==web,id==db"], [], True, id="contradiction"),
    pytest.param(['labels."q\\"k"==1'], ["web"], False, id="key-with-quote"),
    pytest.param(['labels."q\\"k"==1,labels.env==prod'], ["web"], True, id="key-with-quote-and-plain"),
    pytest.param(['labels."a.b"==v'], ["web"], True, id="key-with-dot"),
    pytest.param(["labels.a.b==v"], [], False, id="unquoted-dotted-path"),
    pytest.param(['labels."sp ace"==x'], ["web"], True, id="key-with-space"),
    pytest.param(['labels."é"==ü'], ["db"], False, id="non-ascii-key"),
    pytest.param(["labels.plain==ü"], ["db"], True, id="non-ascii-value"),
    pytest.param(["labels.env==tier"], [], True, id="value-found-as-a-key-only"),
    pytest.param(["labels.tier==prod"], [], True, id="value-of-another-label"),
    pytest.param(['labels.quote=="say \\"hi\\""'], ["api"], True, id="value-with-quotes"),
    pytest.param(['labels.path=="C:\\\\dir"'], ["api"], True, id="value-with-backslash"),
    pytest.param(['labels.empty==""'], ["api"], True, id="empty-value"),
    pytest.param(["labels.missing==x"], [], True, id="missing-label"),
    pytest.param(["labels.missing!=x"], ["api", "db", "job", "web"], False, id="missing-label-not-equal"),
    pytest.param(["labels.env"], ["api", "db", "web"], False, id="presence"),
    pytest.param(["runtime==crun"], ["job"], True, id="runtime"),
    pytest.param(["runtime.name==runc"], ["api", "db", "web"], True, id="runtime-name"),
    pytest.param(["runtime.options==x"], [], False, id="runtime-other-member"),
    pytest.param(["image==docker.io/library/nginx:1.25"], ["api", "web"], True, id="image"),
    pytest.param(["snapshot_key==db-root"], ["db"], True, id="snapshot-key"),
    pytest.param(['snapshot_key==""'], ["api", "job", "web"], True, id="no-snapshot-key"),
    pytest.param(["snapshotter==overlayfs"], ["api", "db", "job", "web"], True, id="snapshotter"),
    pytest.param(["spec==x"], [], False, id="unknown-field"),
    pytest.param(["labels==x"], [], False, id="labels-itself"),
]


@pytest.fixture
async def corpus(store: ContainerStore, db: Database) -> None:
    await SnapshotStore(db).insert(NS, "overlayfs", "db-root", SnapshotKind.ACTIVE, None, {}, "/nonexistent/db")
    for container_id, members in CORPUS.items():
        await store.create(NS, container_id, fields(**members))


@pytest.mark.parametrize(("exprs", "expected", "narrows"), FILTER_TABLE)
async def test_narrowing_never_changes_the_result(
    store: ContainerStore, corpus: None, exprs: list[str], expected: list[str], narrows: bool
) -> None:
    match = filters.parse(exprs)

    def select(head: Any) -> bool:
        return match.matches(container_field(head))

    narrowed = await listed(store, NS, select, match.equalities())
    assert narrowed == await listed(store, NS, select), "narrowed in SQL or not, the same"
    assert narrowed == await pydantic_body(store, expected)
    assert bool(_narrowing(match.equalities())[0]) is narrows


def test_equalities_per_alternative() -> None:
    parsed = filters.parse(["labels.a==1,id!=x,image~=y,labels.b,labels.c==2", "id==web", "labels.d"])
    assert parsed.equalities() == (
        ((("labels", "a"), "1"), (("labels", "c"), "2")),
        ((("id",), "web"),),
        (),
    )
    assert filters.MATCH_ALL.equalities() == ((),)


def test_narrowing_sql() -> None:
    where, params = _narrowing(filters.parse(['labels."a.b"==v,runtime==crun', "id==web"]).equalities())
    assert where == (
        " AND ((instr(labels, ?) > 0 AND json_extract(labels, ?) = ? AND json_extract(runtime, '$.name') = ?)"
        " OR (id = ?))"
    )
    assert params == ['"v"', '$."a.b"', "v", "crun", "web"]
    # A value `dumps` would escape is looked up without the scan for its text.
    for value in ("ü", 'a"b', "a\\b", "tab\t"):
        where, params = _narrowing([[(("labels", "k"), value)]])
        assert (where, params) == (" AND ((json_extract(labels, ?) = ?))", ['$."k"', value])
    assert _narrowing([[(("id",), "\udc80")]]) == ("", []), "a value SQL can't bind is left to Python"
    assert _narrowing([]) == ("", [])
