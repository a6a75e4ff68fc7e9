"""SnapshotService: prepare, view, commit, remove, mounts, usage and tar import.

Rows live in the store (`store.snapshots`); data lives under
`<root>/snapshots/<snapshotter>/<dir>/`. Data is made before its row is written and
removed after its row is deleted, so a crash at any point leaves at worst an orphan
directory (or mount) that `remove_orphans()` clears at start-up: never a row without
data, never a half-made snapshot visible through the API.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import queue
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Protocol

from ..errors import CargoholdError, ErrorKind, invalid
from ..identifiers import validate_identifier
from ..models import Mount, Snapshot, SnapshotCommit, SnapshotCreate, SnapshotKind, Usage
from ..store.snapshots import DataDir, SnapshotStore
from .layers import apply_layer
from .mounts import mount_all, mount_points_under, unmount

log = logging.getLogger(__name__)


class Snapshotter(Protocol):
    name: str

    async def create(self, data: Path, parents: list[Path]) -> None:
        """Make the data dir of a new snapshot over `parents` (nearest first)."""

    def mounts(self, data: Path, parents: list[Path], kind: SnapshotKind) -> list[Mount]:
        """What to mount to see the snapshot."""


class SnapshotService:
    def __init__(
        self,
        store: SnapshotStore,
        root: Path,
        snapshotters: dict[str, Snapshotter],
        default: str,
        import_max_bytes: int,
    ) -> None:
        self._store = store
        self._root = root
        self._snapshotters = snapshotters
        self.default = default
        self._import_max_bytes = import_max_bytes

    def snapshotter(self, name: str | None) -> Snapshotter:
        """The snapshotter called `name` (None: the daemon's). Raises INVALID_ARGUMENT."""
        chosen = name or self.default
        if chosen not in self._snapshotters:
            raise invalid(f"unknown snapshotter {chosen!r}; this daemon has {', '.join(sorted(self._snapshotters))}")
        return self._snapshotters[chosen]

    async def prepare(self, namespace: str, snapshotter_name: str | None, body: SnapshotCreate) -> Snapshot:
        """Make an active (writable) or view (read-only) snapshot over a committed parent.
        Appends /snapshot/prepare. Raises ALREADY_EXISTS, VALIDATION (bad parent)."""
        snapshotter = self.snapshotter(snapshotter_name)
        parents = await self._parent_dirs(namespace, snapshotter.name, body.parent)
        data = self._new_data_dir(snapshotter.name)
        try:
            await snapshotter.create(data, parents)
            return await self._store.insert(
                namespace, snapshotter.name, body.key, SnapshotKind(body.kind), body.parent, body.labels, data.name
            )
        except BaseException:
            await asyncio.shield(asyncio.to_thread(_remove_tree, data))
            raise

    async def commit(self, namespace: str, snapshotter_name: str | None, key: str, body: SnapshotCommit) -> Snapshot:
        snapshotter = self.snapshotter(snapshotter_name)
        return await self._store.commit(namespace, snapshotter.name, key, body.name, body.labels)

    async def get(self, namespace: str, snapshotter_name: str | None, key: str) -> Snapshot:
        return (await self._store.get(namespace, self.snapshotter(snapshotter_name).name, key)).snapshot

    async def find(self, namespace: str, snapshotter_name: str | None) -> list[Snapshot]:
        return await self._store.list_in(namespace, self.snapshotter(snapshotter_name).name)

    async def remove(self, namespace: str, snapshotter_name: str | None, key: str) -> None:
        """Appends /snapshot/remove. Raises NOT_FOUND, CONFLICT while in use."""
        data = await self._store.remove(namespace, self.snapshotter(snapshotter_name).name, key)
        await self.remove_data([data])

    async def mounts(self, namespace: str, snapshotter_name: str | None, key: str) -> list[Mount]:
        """Raises CONFLICT for a committed snapshot: prepare or view one over it instead."""
        snapshotter = self.snapshotter(snapshotter_name)
        chain = await self._store.chain(namespace, snapshotter.name, key)
        snapshot = chain[0].snapshot
        if snapshot.kind is SnapshotKind.COMMITTED:
            raise CargoholdError(
                ErrorKind.CONFLICT,
                f'snapshot "{key}" is committed and is not mounted itself; prepare or view a snapshot on it',
            )
        dirs = [self._path(record.data_dir) for record in chain]
        return snapshotter.mounts(dirs[0], dirs[1:], snapshot.kind)

    async def usage(self, namespace: str, snapshotter_name: str | None, key: str) -> Usage:
        record = await self._store.get(namespace, self.snapshotter(snapshotter_name).name, key)
        return await asyncio.to_thread(_disk_usage, self._path(record.data_dir) / "fs")

    async def import_tar(
        self,
        namespace: str,
        snapshotter_name: str | None,
        name: str,
        parent: str | None,
        body: AsyncIterator[bytes],
    ) -> Snapshot:
        """Unpack a streamed tar layer (over committed `parent`, whiteouts honoured) into a
        new committed snapshot `name`. Appends /snapshot/commit. Raises INVALID_ARGUMENT
        (unsafe or broken tar), TOO_LARGE, ALREADY_EXISTS, VALIDATION (bad parent)."""
        validate_identifier("snapshot name", name)
        snapshotter = self.snapshotter(snapshotter_name)
        parents = await self._parent_dirs(namespace, snapshotter.name, parent)
        data = self._new_data_dir(snapshotter.name)
        target = data / "mnt"
        try:
            await snapshotter.create(data, parents)
            target.mkdir()
            await asyncio.to_thread(mount_all, snapshotter.mounts(data, parents, SnapshotKind.ACTIVE), target)
            try:
                await self._stream_into(body, target)
            finally:
                await asyncio.shield(asyncio.to_thread(_unmount_and_remove, target))
            return await self._store.insert(
                namespace, snapshotter.name, name, SnapshotKind.COMMITTED, parent, {}, data.name
            )
        except BaseException:
            await asyncio.shield(asyncio.to_thread(_remove_tree, data))
            raise

    async def remove_data(self, dirs: list[DataDir]) -> None:
        """Delete released snapshots' data (their rows are gone already)."""
        for data in dirs:
            await asyncio.to_thread(_remove_tree, self._path(data))

    async def remove_orphans(self) -> list[Path]:
        """At start-up: unmount what a crash left mounted under the snapshot root and delete
        data dirs that no row owns (a crash mid-prepare or mid-import). Returns what went."""
        removed: list[Path] = []
        snapshots_root = self._root / "snapshots"
        if not snapshots_root.exists():
            return removed
        for point in mount_points_under(snapshots_root):
            await asyncio.to_thread(unmount, point)
        for name in self._snapshotters:
            owned = await self._store.data_dirs(name)
            base = snapshots_root / name
            if not base.is_dir():
                continue
            for entry in base.iterdir():
                if entry.name not in owned:
                    await asyncio.to_thread(_remove_tree, entry)
                    removed.append(entry)
        if removed:
            log.info("removed %d orphaned snapshot directories", len(removed))
        return removed

    def _path(self, data: DataDir) -> Path:
        return self._root / "snapshots" / data.snapshotter / data.name

    def _new_data_dir(self, snapshotter: str) -> Path:
        return self._root / "snapshots" / snapshotter / uuid.uuid4().hex

    async def _parent_dirs(self, namespace: str, snapshotter: str, parent: str | None) -> list[Path]:
        if parent is None:
            return []
        try:
            chain = await self._store.chain(namespace, snapshotter, parent)
        except CargoholdError as error:
            if error.kind is not ErrorKind.NOT_FOUND:
                raise
            raise CargoholdError(
                ErrorKind.VALIDATION,
                f'parent "{parent}" names no snapshot in snapshotter "{snapshotter}" of namespace "{namespace}"',
            ) from error
        if chain[0].snapshot.kind is not SnapshotKind.COMMITTED:
            raise CargoholdError(
                ErrorKind.VALIDATION,
                f'parent "{parent}" is {chain[0].snapshot.kind.value}; only a committed snapshot can be a parent',
            )
        return [self._path(record.data_dir) for record in chain]

    async def _stream_into(self, body: AsyncIterator[bytes], target: Path) -> None:
        """Feed the request body to `apply_layer` running in a thread, through a bounded
        queue: memory stays at a few chunks whatever the size of the tar."""
        pipe = _ChunkPipe()
        extraction = asyncio.create_task(
            asyncio.to_thread(apply_layer, io.BufferedReader(pipe, 1 << 16), target), name="snapshots.import"
        )

        async def feed(chunk: bytes | None) -> bool:
            """Hand over one chunk (None: the end); False once the reader has stopped."""
            while not extraction.done():
                if await asyncio.to_thread(pipe.put, chunk):
                    return True
            return False

        received = 0
        try:
            async for chunk in body:
                received += len(chunk)
                if received > self._import_max_bytes:
                    limit = self._import_max_bytes
                    raise CargoholdError(ErrorKind.TOO_LARGE, f"the tar is larger than the {limit}-byte import limit")
                if not await feed(chunk):
                    break
            else:
                await feed(None)
            await extraction
        finally:
            pipe.abort()
            # The thread cannot be cancelled; wait for it so nothing writes after cleanup.
            await asyncio.shield(asyncio.wait([extraction]))
            if not extraction.cancelled():
                extraction.exception()  # retrieved: the error that matters is already raised


class _ChunkPipe(io.RawIOBase):
    """A byte stream written by the event loop and read by the extraction thread."""

    def __init__(self) -> None:
        self._chunks: queue.Queue[bytes | None] = queue.Queue(maxsize=16)
        self._current = memoryview(b"")
        self._aborted = False
        self._ended = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._current:
            if self._ended:
                return 0  # stays at the end: readers may ask again after a short read
            chunk = self._chunks.get()
            if chunk is None:
                if self._aborted:
                    raise EOFError("the upload was interrupted")
                self._ended = True
                return 0
            self._current = memoryview(chunk)
        size = min(len(buffer), len(self._current))
        buffer[:size] = self._current[:size]
        self._current = self._current[size:]
        return size

    def put(self, chunk: bytes | None) -> bool:
        """Queue a chunk (None: end of stream); False if no room came within a second."""
        try:
            self._chunks.put(chunk, timeout=1.0)
        except queue.Full:
            return False
        return True

    def abort(self) -> None:
        """Wake the reader and make it fail (the upload stopped); harmless once it has ended."""
        self._aborted = True
        while True:
            try:
                self._chunks.get_nowait()
            except queue.Empty:
                break
        self._chunks.put_nowait(None)


def _disk_usage(path: Path) -> Usage:
    size = inodes = 0
    seen: set[tuple[int, int]] = set()
    for directory, dirnames, filenames in os.walk(path):
        for name in [*dirnames, *filenames]:
            info = os.lstat(os.path.join(directory, name))
            if (info.st_dev, info.st_ino) in seen:
                continue
            seen.add((info.st_dev, info.st_ino))
            inodes += 1
            size += info.st_blocks * 512
    return Usage(size=size, inodes=inodes)


def _unmount_and_remove(target: Path) -> None:
    unmount(target)
    target.rmdir()


def _remove_tree(path: Path, attempts: int = 5) -> None:
    """Unmount and delete `path`. Retried: something may still be writing into it."""
    for _ in range(attempts):
        if not path.exists():
            return
        for point in mount_points_under(path):
            unmount(point)
        shutil.rmtree(path, ignore_errors=True)
    if path.exists():
        log.warning("could not remove %s entirely; it is removed at the next start", path)
