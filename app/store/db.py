"""The SQLite database: connections, schema migrations, and the one-writer transaction.

Writes go through `Database.write()`: one writer at a time (an asyncio lock over a
single connection), `BEGIN IMMEDIATE ... COMMIT`, and the events the transaction
appended are handed to `on_commit` only after COMMIT succeeds, still under the lock, so
subscribers see events in id order. On any error the transaction rolls back and its
events never existed. Reads use a second connection; WAL lets them run beside a write.

One rule for both, from the figures in bench/README.md: a statement runs on the event
loop only when it cannot wait; what can (for the disk, for another process's lock, for
a result of any size) runs in its connection's own thread.
- Reads run on the reader's thread, one trip a query (`execute_fetchall`): a list page
  costs SQLite about a millisecond, too long for the loop. aiosqlite is exactly that, a
  connection and its thread, so it stays.
- But a read of one row by an indexed key (`Database.one`, e.g. a get) runs on the loop,
  on a connection of its own, as a write's statements do: it costs SQLite a few
  microseconds, where the trip to the reader's thread and back cost the daemon about
  0.1 ms of CPU a get (bench/README.md, W10). One that would wait for a lock
  (SQLITE_BUSY; its busy timeout is 0) is retried on the reader's thread.
- A write transaction's statements run on the loop, under the write lock: on these
  small, indexed tables one costs a few microseconds, where a trip to a thread costs ~70 us
  and a transaction makes five to ten. COMMIT, which waits for the disk, runs in the
  writer's own thread (the trip costs 0.3-0.4 ms a write; an fsync on the loop would
  stall every request), and so does a BEGIN that must wait for another process. So the
  writer is a plain sqlite3 connection with an executor of one thread: aiosqlite runs a
  connection only on its own thread.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosqlite
import pydantic_core

from ..models import Event
from ..ondisk import create_private
from .retention import EventRetention

Row = sqlite3.Row
Params = Sequence[Any]


def _containers_as_documents(conn: sqlite3.Connection) -> None:
    """Schema 4: each container's document (the API's JSON, as pydantic wrote it for the
    container of schema 4's day) in container_documents; of its columns, those filters
    read (the head) stay, the others go. Apart, the head columns are a narrow table for
    filters to scan.

    The document is spelled here, not taken from today's model: its members in their
    order then, written by pydantic-core's serializer as `model_dump_json` wrote them
    (UTF-8, NaN and infinities as null, timestamps in ISO 8601 with `Z` for UTC)."""
    conn.execute("""
        CREATE TABLE container_documents (
            namespace  TEXT NOT NULL,
            id         TEXT NOT NULL,
            doc        TEXT NOT NULL,
            PRIMARY KEY (namespace, id),
            FOREIGN KEY (namespace, id) REFERENCES containers(namespace, id) ON DELETE CASCADE
        )
    """)
    rows = conn.execute(
        "SELECT namespace, id, labels, image, runtime, spec, snapshotter, snapshot_key, extensions, created_at,"
        " updated_at FROM containers"
    ).fetchall()
    for row in rows:
        runtime = json.loads(row[4])
        if runtime["name"] not in ("runc", "crun"):  # the runtimes schema 4 knew
            raise ValueError(f"{runtime['name']!r} is not a valid runtime name")
        document = {
            "id": row[1], "labels": json.loads(row[2]), "image": row[3],
            "runtime": {"name": runtime["name"], "options": runtime.get("options", {})},
            "spec": json.loads(row[5]), "snapshotter": row[6], "snapshot_key": row[7], "extensions": json.loads(row[8]),
            "created_at": datetime.fromisoformat(row[9]), "updated_at": datetime.fromisoformat(row[10]),
        }
        doc = pydantic_core.to_json(document, inf_nan_mode="null").decode()
        conn.execute("INSERT INTO container_documents VALUES (?, ?, ?)", (row[0], row[1], doc))
    for column in ("spec", "extensions", "created_at", "updated_at"):
        conn.execute(f"ALTER TABLE containers DROP COLUMN {column}")


# Each entry upgrades the schema by one version (PRAGMA user_version): a script, or a
# function for a step that needs Python. Append only.
MIGRATIONS: tuple[str | Callable[[sqlite3.Connection], None], ...] = (
    """
    CREATE TABLE namespaces (
        name        TEXT PRIMARY KEY,
        labels      TEXT NOT NULL,
        created_at  TEXT NOT NULL,
        updated_at  TEXT NOT NULL
    );
    CREATE TABLE containers (
        namespace    TEXT NOT NULL REFERENCES namespaces(name) ON DELETE RESTRICT,
        id           TEXT NOT NULL,
        labels       TEXT NOT NULL,
        image        TEXT NOT NULL,
        runtime      TEXT NOT NULL,
        spec         TEXT NOT NULL,
        snapshotter  TEXT NOT NULL,
        snapshot_key TEXT NOT NULL,
        extensions   TEXT NOT NULL,
        created_at   TEXT NOT NULL,
        updated_at   TEXT NOT NULL,
        PRIMARY KEY (namespace, id)
    );
    CREATE TABLE events (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        timestamp  TEXT NOT NULL,
        namespace  TEXT NOT NULL,
        topic      TEXT NOT NULL,
        payload    TEXT NOT NULL
    );
    """,
    """
    CREATE TABLE snapshots (
        namespace    TEXT NOT NULL REFERENCES namespaces(name) ON DELETE RESTRICT,
        snapshotter  TEXT NOT NULL,
        key          TEXT NOT NULL,
        kind         TEXT NOT NULL CHECK (kind IN ('active', 'view', 'committed')),
        parent       TEXT,
        labels       TEXT NOT NULL,
        dir          TEXT NOT NULL UNIQUE,
        created_at   TEXT NOT NULL,
        updated_at   TEXT NOT NULL,
        PRIMARY KEY (namespace, snapshotter, key),
        FOREIGN KEY (namespace, snapshotter, parent)
            REFERENCES snapshots(namespace, snapshotter, key) ON DELETE RESTRICT
    );
    CREATE INDEX snapshots_by_parent ON snapshots(namespace, snapshotter, parent);
    CREATE INDEX containers_by_snapshot ON containers(namespace, snapshotter, snapshot_key);
    """,
    """
    CREATE TABLE tasks (
        namespace   TEXT NOT NULL,
        id          TEXT NOT NULL,
        pid         INTEGER NOT NULL,
        conmon_pid  INTEGER NOT NULL,
        status      TEXT NOT NULL,
        runtime     TEXT NOT NULL,
        created_at  TEXT NOT NULL,
        started_at  TEXT,
        exited      INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (namespace, id),
        FOREIGN KEY (namespace, id) REFERENCES containers(namespace, id) ON DELETE RESTRICT
    );
    CREATE TABLE processes (
        namespace   TEXT NOT NULL,
        task_id     TEXT NOT NULL,
        exec_id     TEXT NOT NULL,
        pid         INTEGER,
        conmon_pid  INTEGER,
        status      TEXT NOT NULL,
        spec        TEXT NOT NULL,
        created_at  TEXT NOT NULL,
        PRIMARY KEY (namespace, task_id, exec_id),
        FOREIGN KEY (namespace, task_id) REFERENCES tasks(namespace, id) ON DELETE CASCADE
    );
    CREATE TABLE exits (
        seq          INTEGER PRIMARY KEY AUTOINCREMENT,
        namespace    TEXT NOT NULL,
        id           TEXT NOT NULL,
        exec_id      TEXT NOT NULL DEFAULT '',
        pid          INTEGER NOT NULL,
        exit_status  INTEGER NOT NULL,
        exited_at    TEXT NOT NULL,
        oom_killed   INTEGER NOT NULL
    );
    CREATE INDEX exits_by_process ON exits(namespace, id, exec_id, seq);
    """,
    _containers_as_documents,
    # The OOM kills of a task already published (/tasks/oom), so a restart does not publish them again.
    "ALTER TABLE tasks ADD COLUMN oom_kills INTEGER NOT NULL DEFAULT 0",
    # Images (issue 13): a name -> a target descriptor in the content store. size, platforms and
    # config_digest are what the pull found, kept so a list reads no blob.
    """
    CREATE TABLE images (
        namespace         TEXT NOT NULL REFERENCES namespaces(name) ON DELETE RESTRICT,
        name              TEXT NOT NULL,
        target_media_type TEXT NOT NULL,
        target_digest     TEXT NOT NULL,
        target_size       INTEGER NOT NULL,
        labels            TEXT NOT NULL,
        size              INTEGER NOT NULL,
        platforms         TEXT NOT NULL,
        config_digest     TEXT,
        created_at        TEXT NOT NULL,
        updated_at        TEXT NOT NULL,
        PRIMARY KEY (namespace, name)
    );
    """,
    # Networks (issue 15): CNI bridge networks, global (a bridge is the host's), and each
    # task's attachment: its ports reserved before CNI ADD, its result kept for the DEL.
    """
    CREATE TABLE networks (
        name        TEXT PRIMARY KEY,
        bridge      TEXT NOT NULL UNIQUE,
        subnet      TEXT NOT NULL,
        gateway     TEXT NOT NULL,
        labels      TEXT NOT NULL,
        created_at  TEXT NOT NULL
    );
    CREATE TABLE network_attachments (
        namespace     TEXT NOT NULL,
        task_id       TEXT NOT NULL,
        network       TEXT NOT NULL REFERENCES networks(name) ON DELETE RESTRICT,
        cni_id        TEXT NOT NULL,
        netns         TEXT NOT NULL,
        ports         TEXT NOT NULL,
        result        TEXT,
        created_at    TEXT NOT NULL,
        PRIMARY KEY (namespace, task_id)
    );
    CREATE TABLE published_ports (
        host_ip    TEXT NOT NULL,
        host_port  INTEGER NOT NULL,
        protocol   TEXT NOT NULL,
        namespace  TEXT NOT NULL,
        task_id    TEXT NOT NULL,
        PRIMARY KEY (host_port, protocol, host_ip),
        FOREIGN KEY (namespace, task_id) REFERENCES network_attachments(namespace, task_id) ON DELETE CASCADE
    );
    """,
)


def utcnow() -> datetime:
    return datetime.now(UTC)


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


class Tx:
    """An open write transaction (statements run at once, on the calling thread).
    Collects the events it appends for after COMMIT."""

    def __init__(self, conn: sqlite3.Connection, retention: EventRetention) -> None:
        self._conn = conn
        self._retention = retention
        self.events: list[Event] = []
        # Payload bytes this transaction added to the events table (less what it pruned).
        self.event_bytes = 0

    def execute(self, sql: str, *params: Any) -> int:
        """Run a statement; return the number of rows it changed."""
        return self._conn.execute(sql, params).rowcount

    def insert(self, sql: str, *params: Any) -> int:
        """Run an INSERT; return the new row's id."""
        row_id = self._conn.execute(sql, params).lastrowid
        assert row_id is not None
        return row_id

    def one(self, sql: str, *params: Any) -> Row | None:
        row: Row | None = self._conn.execute(sql, params).fetchone()
        return row

    def all(self, sql: str, *params: Any) -> list[Row]:
        return self._conn.execute(sql, params).fetchall()

    def exists(self, sql: str, *params: Any) -> bool:
        return self.one(sql, *params) is not None

    def append_event(self, namespace: str, topic: str, payload: dict[str, Any]) -> Event:
        """Store an event in this transaction; it is published once the transaction commits."""
        timestamp = utcnow()
        payload, text = self._retention.cut(payload)  # bounded: the store's and subscribers' payload
        event_id = self.insert(
            "INSERT INTO events (timestamp, namespace, topic, payload) VALUES (?, ?, ?, ?)",
            timestamp.isoformat(), namespace, topic, text,
        )
        self.event_bytes += len(text.encode())
        # Prune in steps rather than on every insert; the bounds are approximate by design.
        self.event_bytes += self._retention.prune(self._conn, event_id, self.event_bytes)
        event = Event(
            id=event_id, timestamp=timestamp, namespace=namespace, topic=topic, event=payload
        )
        self.events.append(event)
        return event


class Database:
    """One writer connection behind a lock; readers: one on its own thread, one on the loop for
    one-row reads by key; all in WAL mode."""

    def __init__(
        self,
        writer: sqlite3.Connection,
        reader: aiosqlite.Connection,
        looker: sqlite3.Connection,
        retention: EventRetention,
    ) -> None:
        self._writer = writer
        self._looker = looker  # the loop's own reader, for `one`
        # One thread, so the writer connection is only ever used by one thread at a time.
        self._writer_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-writer")
        self._reader = reader
        self._write_lock = asyncio.Lock()
        self._retention = retention
        self.on_commit: Callable[[list[Event]], None] | None = None

    @classmethod
    async def open(
        cls,
        path: Path,
        event_retention: int = 100_000,
        event_retention_bytes: int = 256 * 1024 * 1024,
        event_max_payload_bytes: int = 64 * 1024,
    ) -> Database:
        """Events are kept while under `event_retention` events and `event_retention_bytes`
        of payload; each payload is cut to `event_max_payload_bytes` (see `retention`)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        retention = EventRetention(event_retention, event_retention_bytes, event_max_payload_bytes)
        writer = await asyncio.to_thread(_open_writer, path, retention)
        try:
            reader = await _connect(path)
        except BaseException:
            writer.close()
            raise
        return cls(writer, reader, _open_looker(path), retention)

    async def close(self) -> None:
        async with self._write_lock:
            self._looker.close()
            await self._reader.close()
            await self._in_writer_thread(self._writer.close)
            self._writer_thread.shutdown()

    @asynccontextmanager
    async def write(self) -> AsyncIterator[Tx]:
        """A write transaction; commits on normal exit, rolls back on any exception."""
        async with self._write_lock:
            await self._begin()
            tx = Tx(self._writer, self._retention)
            try:
                yield tx
            except BaseException:
                self._writer.rollback()
                raise
            # Shielded: once COMMIT is sent, its events must reach the bus even if the
            # request that wrote them is cancelled meanwhile; and the lock is held until
            # it is done, as the connection is in use.
            committing = asyncio.ensure_future(self._commit(tx))
            try:
                await asyncio.shield(committing)
            except asyncio.CancelledError:
                await asyncio.wait([committing])
                raise

    async def _begin(self) -> None:
        try:
            self._writer.execute("BEGIN IMMEDIATE")  # busy_timeout 0: never waits here
        except sqlite3.OperationalError as error:
            if error.sqlite_errorcode != sqlite3.SQLITE_BUSY:
                raise
            # Another process holds the database: wait for it, but not on the loop.
            await self._in_writer_thread(_begin_waiting, self._writer)

    async def _commit(self, tx: Tx) -> None:
        try:
            await self._in_writer_thread(self._writer.commit)
        except BaseException:
            self._writer.rollback()
            raise
        self._retention.stored_bytes += tx.event_bytes
        if tx.events and self.on_commit is not None:
            self.on_commit(tx.events)

    async def _in_writer_thread(self, function: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._writer_thread, function, *args)

    async def one(self, sql: str, *params: Any) -> Row | None:
        """The first row of a statement that reads one row by an indexed key, run on the
        loop (see the module's docstring); on the reader's thread if it would wait for a lock."""
        try:
            row: Row | None = self._looker.execute(sql, params).fetchone()
        except sqlite3.OperationalError as error:
            if error.sqlite_errorcode != sqlite3.SQLITE_BUSY:
                raise
            return await _fetch_one(self._reader, sql, params)
        return row

    async def all(self, sql: str, *params: Any) -> list[Row]:
        return await _fetch_all(self._reader, sql, params)


async def _fetch_all(conn: aiosqlite.Connection, sql: str, params: tuple[Any, ...]) -> list[Row]:
    # One trip to the connection's thread: execute + fetchone through a cursor takes three.
    return list(await conn.execute_fetchall(sql, params))


async def _fetch_one(conn: aiosqlite.Connection, sql: str, params: tuple[Any, ...]) -> Row | None:
    rows = await _fetch_all(conn, sql, params)
    return rows[0] if rows else None


# FULL: an acknowledged write survives a power cut, not only a daemon crash.
_PRAGMAS = ("PRAGMA journal_mode = WAL", "PRAGMA synchronous = FULL", "PRAGMA foreign_keys = ON")
BUSY_TIMEOUT_MS = 5000


async def _connect(path: Path) -> aiosqlite.Connection:
    # isolation_level=None: we issue BEGIN/COMMIT ourselves, sqlite3 must not.
    conn = await aiosqlite.connect(path, isolation_level=None)
    conn.row_factory = sqlite3.Row
    for pragma in (*_PRAGMAS, f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}"):
        await conn.execute(pragma)
    return conn


def _open_writer(path: Path, retention: EventRetention) -> sqlite3.Connection:
    """The writer: used from the loop and the writer thread, one at a time (the write lock)."""
    # 0600 before SQLite creates it with the umask's mode: the rows hold the specs' env.
    create_private(path)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        for pragma in _PRAGMAS:
            conn.execute(pragma)
        _migrate(conn)
        retention.load(conn)
        conn.execute("PRAGMA busy_timeout = 0")  # see Database._begin
    except BaseException:
        conn.close()
        raise
    return conn


def _open_looker(path: Path) -> sqlite3.Connection:
    """The connection `Database.one` reads with on the loop: autocommit (each statement
    its own read transaction), and a busy timeout of 0, so it never waits there."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.row_factory = sqlite3.Row
    for pragma in (*_PRAGMAS, "PRAGMA busy_timeout = 0"):
        conn.execute(pragma)
    return conn


def _begin_waiting(conn: sqlite3.Connection) -> None:
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    try:
        conn.execute("BEGIN IMMEDIATE")
    finally:
        conn.execute("PRAGMA busy_timeout = 0")


def _migrate(conn: sqlite3.Connection) -> None:
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version > len(MIGRATIONS):
        raise RuntimeError(
            f"database schema version {version} is newer than this daemon knows "
            f"({len(MIGRATIONS)}); upgrade cargohold"
        )
    for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            if callable(script):
                script(conn)
            else:
                for statement in filter(str.strip, script.split(";")):
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number}")
        except BaseException:
            conn.rollback()
            raise
        conn.commit()
