"""SnapshotService: prepare, view, commit, remove, mounts, usage and tar import.

Rows live in the store (`store.snapshots`); data lives under
`<root>/snapshots/<snapshotter>/<dir>/`. Data is made before its row is written and
removed after its row is deleted, so a crash at any point leaves at worst an orphan
directory (or mount) that `remove_orphans()` clears at start-up: never a row without
data, never a half-made snapshot visible through the API. An import's data is synced
(syncfs) before its row commits, so a crash cannot leave a committed row over data that
never reached the disk.

Imports run on an executor of their own (`ImportLimits.concurrency` threads): a stalled
upload holds one of those threads, never one of the default executor's that mounts,
teardown, the monitor and log reads share; and an upload that sends nothing for
`ImportLimits.idle_timeout` seconds is refused and cleaned up.
"""

from __future__ import annotations

import asyncio
import collections
import ctypes
import ctypes.util
import hashlib
import io
import logging
import os
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

from ..config import Settings
from ..content.digests import hasher, validate_digest
from ..errors import CargoholdError, ErrorKind, invalid
from ..identifiers import validate_identifier
from ..models import FIRST_PAGE, Mount, Page, PageRequest, Snapshot, SnapshotCommit, SnapshotCreate, SnapshotKind, Usage
from ..store.snapshots import DataDir, SnapshotStore
from .layers import LayerLimits, apply_layer, is_private, walk_tree
from .mounts import mount_all, unmount_and_remove, unmount_under

log = logging.getLogger(__name__)

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
# Chunks of the body waiting for the extraction thread: with uvicorn's 64 KiB reads, 1 MiB.
_PIPE_DEPTH = 16


@dataclass(frozen=True)
class ImportLimits:
    """What a tar import may cost (see Settings for each)."""

    max_bytes: int
    max_entries: int
    idle_timeout: float
    concurrency: int

    @classmethod
    def from_settings(cls, settings: Settings) -> ImportLimits:
        return cls(
            settings.import_max_bytes, settings.import_max_entries, settings.import_idle_timeout,
            settings.import_concurrency,
        )


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
        limits: ImportLimits,
    ) -> None:
        self._store = store
        self._root = root
        self._snapshotters = snapshotters
        self.default = default
        self._limits = limits
        self._imports = ThreadPoolExecutor(limits.concurrency, thread_name_prefix="cargohold-import")
        # Run after a removal that may leave chain snapshots unreached (the daemon sets it to
        # schedule a garbage collection; the collector is built on this service).
        self.after_release: Callable[[], None] = lambda: None

    def close(self) -> None:
        """Stop the import threads once their imports end (each in-flight one is ended by
        its request, which the server cancels or finishes first)."""
        self._imports.shutdown(wait=False, cancel_futures=True)

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
            await asyncio.shield(asyncio.to_thread(unmount_and_remove, data))
            raise

    async def commit(self, namespace: str, snapshotter_name: str | None, key: str, body: SnapshotCommit) -> Snapshot:
        snapshotter = self.snapshotter(snapshotter_name)
        return await self._store.commit(namespace, snapshotter.name, key, body.name, body.labels)

    async def get(self, namespace: str, snapshotter_name: str | None, key: str) -> Snapshot:
        return (await self._store.get(namespace, self.snapshotter(snapshotter_name).name, key)).snapshot

    async def find(
        self, namespace: str, snapshotter_name: str | None, page: PageRequest = FIRST_PAGE
    ) -> Page[Snapshot]:
        return await self._store.list_in(namespace, self.snapshotter(snapshotter_name).name, page)

    async def remove(self, namespace: str, snapshotter_name: str | None, key: str) -> None:
        """Appends /snapshot/remove. Raises NOT_FOUND, CONFLICT while in use."""
        data = await self._store.remove(namespace, self.snapshotter(snapshotter_name).name, key)
        await self.remove_data([data])
        self.after_release()

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
        new committed snapshot `name`, synced to disk before its row commits. Appends
        /snapshot/commit. Raises INVALID_ARGUMENT (unsafe or broken tar, an upload idle too
        long), TOO_LARGE (bytes, decompressed bytes, entries, a header), ALREADY_EXISTS,
        VALIDATION (bad parent). On any error nothing is left: no data dir, mount or row."""
        validate_identifier("snapshot name", name)
        return await self._import(namespace, snapshotter_name, name, parent, body, None)

    async def import_layer(
        self,
        namespace: str,
        snapshotter_name: str | None,
        chain_id: str,
        parent: str | None,
        body: AsyncIterator[bytes],
        diff_id: str,
    ) -> tuple[Snapshot, bool]:
        """An image layer as the committed snapshot named by its chain id (`sha256:...`), over
        the committed `parent` chain id; through the same import as `import_tar`, and
        refused (INVALID_ARGUMENT, nothing left) when the decompressed tar's digest is not
        `diff_id`. Returns the snapshot and whether it was made now: one already there
        (unpacked before, or by a concurrent pull that won the race) is reused as it is."""
        validate_digest(chain_id)
        snapshotter = self.snapshotter(snapshotter_name)
        try:
            return (await self._store.get(namespace, snapshotter.name, chain_id)).snapshot, False
        except CargoholdError as error:
            if error.kind is not ErrorKind.NOT_FOUND:
                raise
        try:
            return await self._import(namespace, snapshotter.name, chain_id, parent, body, diff_id), True
        except CargoholdError as raced:
            if raced.kind is not ErrorKind.ALREADY_EXISTS:
                raise
        return (await self._store.get(namespace, snapshotter.name, chain_id)).snapshot, False

    async def _import(
        self,
        namespace: str,
        snapshotter_name: str | None,
        name: str,
        parent: str | None,
        body: AsyncIterator[bytes],
        diff_id: str | None,
    ) -> Snapshot:
        snapshotter = self.snapshotter(snapshotter_name)
        parents = await self._parent_dirs(namespace, snapshotter.name, parent)
        data = self._new_data_dir(snapshotter.name)
        target = data / "mnt"
        try:
            await snapshotter.create(data, parents)
            target.mkdir()
            await asyncio.to_thread(mount_all, snapshotter.mounts(data, parents, SnapshotKind.ACTIVE), target)
            try:
                await self._stream_into(body, target, data, diff_id)
            finally:
                await asyncio.shield(asyncio.to_thread(unmount_and_remove, target))
            await asyncio.get_running_loop().run_in_executor(self._imports, _sync_filesystem, data)
            return await self._store.insert(
                namespace, snapshotter.name, name, SnapshotKind.COMMITTED, parent, {}, data.name
            )
        except BaseException:
            await asyncio.shield(asyncio.to_thread(unmount_and_remove, data))
            raise

    async def remove_data(self, dirs: list[DataDir]) -> None:
        """Delete released snapshots' data (their rows are gone already)."""
        for data in dirs:
            await asyncio.to_thread(unmount_and_remove, self._path(data))

    async def remove_orphans(self) -> list[Path]:
        """At start-up: unmount what a crash left mounted under the snapshot root and delete
        data dirs that no row owns (a crash mid-prepare or mid-import). Returns what went."""
        removed: list[Path] = []
        snapshots_root = self._root / "snapshots"
        if not snapshots_root.exists():
            return removed
        await asyncio.to_thread(unmount_under, snapshots_root)
        for name in self._snapshotters:
            owned = await self._store.data_dirs(name)
            base = snapshots_root / name
            if not base.is_dir():
                continue
            for entry in base.iterdir():
                if entry.name not in owned:
                    await asyncio.to_thread(unmount_and_remove, entry)
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

    async def _stream_into(self, body: AsyncIterator[bytes], target: Path, data: Path, diff_id: str | None) -> None:
        """Feed the request body to `apply_layer` running on the import executor, through a
        bounded pipe: memory stays at a few chunks whatever the size of the tar. With
        `diff_id`, the decompressed tar must have that digest (INVALID_ARGUMENT if not)."""
        limits = self._limits
        pipe = _ChunkPipe(asyncio.get_running_loop())
        diff = hasher(diff_id) if diff_id is not None else None
        extraction = asyncio.get_running_loop().run_in_executor(
            self._imports, _extract, io.BufferedReader(pipe, 1 << 16), target, data, limits, diff
        )
        extraction.add_done_callback(lambda _: pipe.close_reader())
        chunks = aiter(body)
        received = 0
        try:
            while True:
                try:
                    async with asyncio.timeout(limits.idle_timeout):
                        chunk = await anext(chunks)
                except StopAsyncIteration:
                    await pipe.put(None)
                    break
                except TimeoutError:
                    raise invalid(
                        f"the upload sent nothing for {limits.idle_timeout:g} seconds (--import-idle-timeout); "
                        "the import was abandoned"
                    ) from None
                received += len(chunk)
                if received > limits.max_bytes:
                    raise CargoholdError(
                        ErrorKind.TOO_LARGE, f"the tar is larger than the {limits.max_bytes}-byte import limit"
                    )
                if not await pipe.put(chunk):
                    break  # the extraction has stopped: its outcome says why
            await extraction
            if diff is not None and f"{diff.name}:{diff.hexdigest()}" != diff_id:
                raise invalid(f"the layer's uncompressed content has digest {diff.name}:{diff.hexdigest()}, "
                              f"but the image config says its diff id is {diff_id}; nothing was unpacked")
        finally:
            pipe.abort()
            # The thread cannot be cancelled; wait for it so nothing writes after cleanup.
            await asyncio.shield(asyncio.wait([extraction]))
            if not extraction.cancelled():
                extraction.exception()  # retrieved: the error that matters is already raised


def _extract(stream: IO[bytes], target: Path, data: Path, limits: ImportLimits, diff: hashlib._Hash | None) -> int:
    # Device nodes only where no other user can reach them (the snapshots dir is 0700).
    layer = LayerLimits(limits.max_bytes, limits.max_entries, devices=is_private(data))
    return apply_layer(stream, target, layer, diff)


def _sync_filesystem(data: Path) -> None:
    """syncfs(2) on the filesystem holding `data`: every file, directory, link and
    whiteout of the import reaches the disk in one call, however many there are."""
    fd = os.open(data, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if _libc.syncfs(fd) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"syncfs {data}: {os.strerror(error)}")
    finally:
        os.close(fd)


class _ChunkPipe(io.RawIOBase):
    """A byte stream written by the event loop and read by the extraction thread. The
    loop never blocks a thread to wait for room: the reader wakes it through the loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._chunks: collections.deque[bytes | None] = collections.deque()
        self._ready = threading.Condition()
        self._room = asyncio.Event()
        self._current = memoryview(b"")
        self._aborted = False
        self._ended = False
        self._reader_gone = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._current:
            if self._ended:
                return 0  # stays at the end: readers may ask again after a short read
            with self._ready:
                while not self._chunks and not self._aborted:
                    self._ready.wait()
                if self._aborted:
                    raise EOFError("the upload was interrupted")
                chunk = self._chunks.popleft()
            self._loop.call_soon_threadsafe(self._room.set)
            if chunk is None:
                self._ended = True
                return 0
            self._current = memoryview(chunk)
        size = min(len(buffer), len(self._current))
        buffer[:size] = self._current[:size]
        self._current = self._current[size:]
        return size

    async def put(self, chunk: bytes | None) -> bool:
        """Queue a chunk (None: end of stream) once there is room; False once the reader
        has stopped."""
        while True:
            with self._ready:
                if self._reader_gone or self._aborted:
                    return False
                if len(self._chunks) < _PIPE_DEPTH:
                    self._chunks.append(chunk)
                    self._ready.notify()
                    return True
                self._room.clear()
            await self._room.wait()

    def close_reader(self) -> None:
        """The reader has stopped (done or failed): wake a writer waiting for room."""
        self._reader_gone = True
        self._room.set()

    def abort(self) -> None:
        """Wake the reader and make it fail (the upload stopped); harmless once it has ended."""
        with self._ready:
            self._aborted = True
            self._chunks.clear()
            self._ready.notify_all()


def _disk_usage(path: Path) -> Usage:
    size = inodes = 0
    seen: set[tuple[int, int]] = set()

    def count(fd: int, entries: list[os.DirEntry[str]]) -> None:
        nonlocal size, inodes
        for entry in entries:
            info = entry.stat(follow_symlinks=False)
            if (info.st_dev, info.st_ino) in seen:
                continue
            seen.add((info.st_dev, info.st_ino))
            inodes += 1
            size += info.st_blocks * 512

    parent = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        walk_tree(parent, path.name, count, lambda fd, name: None)
    finally:
        os.close(parent)
    return Usage(size=size, inodes=inodes)
