"""Migrations keep the shape they were written for: a database at an old schema version,
built from that version's SQL with rows as the store wrote them then, migrates to the
same rows it always did, whatever today's models say (they are not consulted)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

import pytest

from app.store.db import MIGRATIONS, Database

pytestmark = pytest.mark.anyio

# Schema 3's containers as the store wrote them: maps by `dumps` (sorted keys, NaN and
# Infinity as Python's json writes them), the runtime by pydantic, timestamps by isoformat.
SCHEMA_3_ROWS = [
    (
        "odd", '{"c":"\\u0001\\u001f","\\u00e9":"\\u00fc"}', "\u00efmage\n\x7f\U0001f600/x:1",
        '{"name":"crun","options":{"small":0.00001,"big":1e+16,"u":"\u00e9","n":null}}',
        '{"ociVersion":"1.0.2","root":{"path":"rootfs"},"x":[0.1,-0.0,100.0,1e-05,1e+16,1180591620717411303424]}',
        "overlayfs", "root-1", '{"inf":[Infinity,-Infinity],"nan":NaN,"t":true}',
        "2024-01-02T03:04:05.120000+00:00", "2024-01-02T05:04:05.500000+02:00",
    ),
    ("plain", "{}", "", '{"name":"runc"}', "{}", "overlayfs", "", "{}", "2024-01-02T03:04:05",
     "2024-01-02T03:04:05+00:00"),
]

# What schema 4's migration made of them, byte for byte: the container as pydantic wrote
# it then (members in that order, UTF-8, non-finite floats as null, UTC as `Z`).
SCHEMA_4_DOCUMENTS = [
    '{"id":"odd","labels":{"c":"\\u0001\\u001f","\u00e9":"\u00fc"},"image":"\u00efmage\\n\x7f\U0001f600/x:1",'
    '"runtime":{"name":"crun","options":{"small":0.00001,"big":1e+16,"u":"\u00e9","n":null}},'
    '"spec":{"ociVersion":"1.0.2","root":{"path":"rootfs"},"x":[0.1,-0.0,100.0,0.00001,1e+16,'
    '1180591620717411303424]},"snapshotter":"overlayfs","snapshot_key":"root-1",'
    '"extensions":{"inf":[null,null],"nan":null,"t":true},"created_at":"2024-01-02T03:04:05.120000Z",'
    '"updated_at":"2024-01-02T05:04:05.500000+02:00"}',
    '{"id":"plain","labels":{},"image":"","runtime":{"name":"runc","options":{}},"spec":{},'
    '"snapshotter":"overlayfs","snapshot_key":"","extensions":{},"created_at":"2024-01-02T03:04:05",'
    '"updated_at":"2024-01-02T03:04:05Z"}',
]


def schema_3(path: Path, rows: Sequence[tuple[str, ...]]) -> None:
    with sqlite3.connect(path) as old:
        for script in MIGRATIONS[:3]:
            assert isinstance(script, str)
            old.executescript(script)
        old.execute("PRAGMA user_version = 3")
        old.execute("INSERT INTO namespaces VALUES ('ns1', '{}', '2024-01-01T00:00:00+00:00', "
                    "'2024-01-01T00:00:00+00:00')")
        for row in rows:
            old.execute("INSERT INTO containers VALUES ('ns1', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)


async def test_schema_3_containers_become_the_documents_schema_4_wrote(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    schema_3(path, SCHEMA_3_ROWS)
    migrated = await Database.open(path)
    try:
        documents = await migrated.all("SELECT namespace, id, doc FROM container_documents ORDER BY id")
        assert [tuple(row) for row in documents] == [
            ("ns1", "odd", SCHEMA_4_DOCUMENTS[0]), ("ns1", "plain", SCHEMA_4_DOCUMENTS[1])
        ]
        heads = await migrated.all("SELECT * FROM containers ORDER BY id")
        assert [tuple(row) for row in heads] == [("ns1", *row[:4], *row[5:7]) for row in SCHEMA_3_ROWS]
        version = await migrated.one("PRAGMA user_version")
        assert version is not None and version[0] == len(MIGRATIONS)
    finally:
        await migrated.close()


async def test_a_runtime_schema_4_did_not_know_stops_the_migration(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    unknown = ("odd", "{}", "", '{"name":"kata"}', "{}", "overlayfs", "", "{}", "2024-01-02T03:04:05",
               "2024-01-02T03:04:05")
    schema_3(path, [unknown])
    with pytest.raises(ValueError, match="kata"):
        await Database.open(path)
    with sqlite3.connect(path) as old:  # rolled back: still schema 3, every column there
        assert old.execute("PRAGMA user_version").fetchone()[0] == 3
        assert old.execute("SELECT spec, created_at FROM containers").fetchall() == [("{}", "2024-01-02T03:04:05")]
