"""ContentStore: blobs by digest on the filesystem, as containerd's `core/content/local` store.

Layout under the store's root (`<daemon root>/content`), every directory 0700:

    blobs/<algorithm>/<hex>     a committed blob, 0400, never changed after its rename
    ingest/<sha256 of ref>/     one write in progress: `data` (0600) and `meta.json`

The filesystem is the index: a blob exists when its file exists, and nothing else is
recorded. A blob is only ever written through an ingest: bytes are appended to
`ingest/.../data` while hashed; `commit(size, digest)` checks both, fsyncs the data, then
hard-links it to `blobs/...` (atomic, and never over an existing blob) and fsyncs the
directory, so a blob is either whole and verified or absent. A mismatch removes the ingest
and leaves no blob. An ingest left behind (a writer that failed or a daemon killed
mid-write) can be resumed by the next writer of the same ref, which rehashes what is there,
or removed with `abort(ref)`; deciding which ingests are stale is garbage collection's job.

The ingest directory is named by the sha256 of the ref, as containerd does, so any ref
string is safe as a path; the ref itself is kept in `meta.json`.

Writers of one ref are serialised in this process: a second `writer(ref)` waits until the
first one is done, then finds the expected blob committed (ALREADY_EXISTS: nothing to do)
or the ingest left to resume. The registry client names refs by digest, so two pulls of
the same blob download it once.

All file I/O runs in worker threads; the event loop only waits. This module knows digests
and files, nothing of images or registries.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import time
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from ..errors import CargoholdError, ErrorKind, invalid, not_found
from .digests import HEX_LENGTHS, SHA256, hasher, split_digest, validate_digest

DIR_MODE = 0o700
INGEST_FILE_MODE = 0o600
BLOB_FILE_MODE = 0o400
# Bytes handed to a worker thread per read when streaming a blob out.
READ_CHUNK = 1024 * 1024
# Refs name ingests in listings and errors; keep them printable and short.
MAX_REF_LENGTH = 256


@dataclass(frozen=True)
class Info:
    """A committed blob."""

    digest: str
    size: int
    created_at: datetime


@dataclass(frozen=True)
class IngestStatus:
    """A write in progress (or abandoned): how far it got and what it expects."""

    ref: str
    offset: int
    total: int | None
    expected: str | None
    started_at: datetime
    updated_at: datetime


def validate_ref(ref: object) -> str:
    if not isinstance(ref, str) or not ref:
        raise invalid("ingest ref must be a non-empty string")
    if len(ref) > MAX_REF_LENGTH or not ref.isprintable():
        raise invalid(f"ingest ref must be printable and at most {MAX_REF_LENGTH} characters")
    return ref


def _mkdirs(path: Path) -> None:
    """mkdir -p with every created directory 0700, whatever the umask."""
    missing: list[Path] = []
    for parent in (path, *path.parents):
        if parent.is_dir():
            break
        missing.append(parent)
    for directory in reversed(missing):
        try:
            os.mkdir(directory, DIR_MODE)
        except FileExistsError:
            continue
        os.chmod(directory, DIR_MODE)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _timestamp(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


@dataclass
class _RefLock:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


class Writer:
    """Appends to one ingest and commits it. Obtained from `ContentStore.writer()` only.

    Not safe for concurrent use by several tasks; the store guarantees a single writer
    per ref.
    """

    def __init__(self, store: ContentStore, ref: str, directory: Path, file: IO[bytes], hashed: Any,
                 offset: int, total: int | None, expected: str | None) -> None:
        self._store = store
        self.ref = ref
        self._directory = directory
        self._file: IO[bytes] | None = file
        self._hash = hashed
        self.offset = offset
        self.total = total
        self.expected = expected
        self.committed: str | None = None

    @property
    def digest(self) -> str:
        """The digest of the bytes written so far."""
        return f"{self._hash.name}:{self._hash.hexdigest()}"

    def _open_file(self) -> IO[bytes]:
        if self._file is None:
            raise CargoholdError(ErrorKind.CONFLICT, f'ingest "{self.ref}" is closed (committed or aborted)')
        return self._file

    async def write(self, data: bytes) -> None:
        """Append `data`. Going past the expected total aborts the ingest (INVALID_ARGUMENT)."""
        file = self._open_file()
        if self.total is not None and self.offset + len(data) > self.total:
            await self.abort()
            raise invalid(f'ingest "{self.ref}": more than the expected {self.total} bytes were written; '
                          "the ingest was removed")
        await asyncio.to_thread(self._append, file, data)

    def _append(self, file: IO[bytes], data: bytes) -> None:
        file.write(data)
        # hashlib releases the GIL on large buffers, so hashing here costs the loop nothing.
        self._hash.update(data)
        self.offset += len(data)

    async def reset(self) -> None:
        """Drop what was written and start again at offset 0 (a server ignored a Range)."""
        file = self._open_file()

        def truncate() -> None:
            file.seek(0)
            file.truncate()
        await asyncio.to_thread(truncate)
        self._hash = hashlib.new(self._hash.name)
        self.offset = 0

    async def commit(self, size: int | None = None, expected: str | None = None) -> str:
        """Verify size and digest (defaults: those given to `writer()`), then publish the blob.

        Returns the digest. A mismatch removes the ingest and raises INVALID_ARGUMENT; a blob
        committed meanwhile by another ref removes this ingest and raises ALREADY_EXISTS.
        """
        file = self._open_file()
        size = self.total if size is None else size
        expected = self.expected if expected is None else validate_digest(expected)
        if size is not None and self.offset != size:
            await self.abort()
            raise invalid(f'ingest "{self.ref}": got {self.offset} bytes, expected {size}; nothing was stored')
        actual = self.digest
        if expected is not None:
            if split_digest(expected)[0] != self._hash.name:
                await asyncio.to_thread(file.flush)
                actual = f"{split_digest(expected)[0]}:{await asyncio.to_thread(self._rehash, expected)}"
            if actual != expected:
                await self.abort()
                raise invalid(f'ingest "{self.ref}": content has digest {actual}, expected {expected}; '
                              "nothing was stored")
        target = self._store.blob_path(actual)
        self._file = None
        await asyncio.to_thread(self._publish, file, target)
        self.committed = actual
        return actual

    def _rehash(self, expected: str) -> str:
        hashed = hasher(expected)
        with open(self._directory / "data", "rb") as source:
            while chunk := source.read(READ_CHUNK):
                hashed.update(chunk)
        return hashed.hexdigest()

    def _publish(self, file: IO[bytes], target: Path) -> None:
        data = self._directory / "data"
        try:
            file.flush()
            os.fsync(file.fileno())
        finally:
            file.close()
        os.chmod(data, BLOB_FILE_MODE)
        _mkdirs(target.parent)
        try:
            # link, not rename: atomic and never replaces a blob another ref committed first.
            os.link(data, target)
        except FileExistsError:
            shutil.rmtree(self._directory, ignore_errors=True)
            raise CargoholdError(ErrorKind.ALREADY_EXISTS, f"content {target.parent.name}:{target.name} "
                                 "already exists") from None
        _fsync_dir(target.parent)
        shutil.rmtree(self._directory, ignore_errors=True)

    async def abort(self) -> None:
        """Remove the ingest and everything written to it."""
        file, self._file = self._file, None
        directory = self._directory

        def remove() -> None:
            if file is not None:
                file.close()
            shutil.rmtree(directory, ignore_errors=True)
        await asyncio.to_thread(remove)

    async def close(self) -> None:
        """Stop writing but keep the ingest, so a later writer of the same ref resumes it."""
        file, self._file = self._file, None
        if file is not None:
            await asyncio.to_thread(file.close)


class ContentStore:
    """Blobs by digest under `root`; see the module docstring for the layout and guarantees."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._locks: dict[str, _RefLock] = {}

    # paths

    def blob_path(self, digest: str) -> Path:
        """Where the blob of `digest` lives (whether or not it exists). INVALID_ARGUMENT on a bad digest."""
        algorithm, encoded = split_digest(digest)
        return self.root / "blobs" / algorithm / encoded

    def _ingest_dir(self, ref: str) -> Path:
        return self.root / "ingest" / hashlib.sha256(ref.encode()).hexdigest()

    # blobs

    async def info(self, digest: str) -> Info:
        """Size and time of a committed blob; NOT_FOUND if absent."""
        path = self.blob_path(digest)
        try:
            stat = await asyncio.to_thread(os.stat, path)
        except FileNotFoundError:
            raise not_found(f"content {digest} not found") from None
        return Info(digest=digest, size=stat.st_size, created_at=_timestamp(stat.st_mtime))

    async def exists(self, digest: str) -> bool:
        return await asyncio.to_thread(self.blob_path(digest).is_file)

    async def read(self, digest: str, offset: int = 0, length: int | None = None) -> bytes:
        """The bytes of a blob from `offset`, at most `length` of them (clipped at the end)."""
        chunks = [chunk async for chunk in await self.stream(digest, offset, length)]
        return b"".join(chunks)

    async def stream(self, digest: str, offset: int = 0, length: int | None = None,
                     chunk_size: int = READ_CHUNK) -> AsyncGenerator[bytes, None]:
        """Stream a blob, or the range [offset, offset+length) of it, in chunks.

        The blob is opened before this returns, so NOT_FOUND and a bad range (INVALID_ARGUMENT)
        are raised here, not in the middle of a stream. The file is closed when the stream ends
        or is closed (`contextlib.aclosing`).
        """
        path = self.blob_path(digest)
        try:
            file = await asyncio.to_thread(open, path, "rb")
        except FileNotFoundError:
            raise not_found(f"content {digest} not found") from None
        try:
            size = (await asyncio.to_thread(os.fstat, file.fileno())).st_size
            if offset < 0 or offset > size or (length is not None and length < 0):
                raise invalid(f"range offset {offset}, length {length} is outside content {digest} of {size} bytes")
            await asyncio.to_thread(file.seek, offset)
        except BaseException:
            file.close()
            raise
        remaining = size - offset if length is None else min(length, size - offset)
        return _stream(file, remaining, chunk_size)

    async def delete(self, digest: str) -> None:
        """Remove a committed blob; NOT_FOUND if absent."""
        path = self.blob_path(digest)
        try:
            await asyncio.to_thread(os.unlink, path)
        except FileNotFoundError:
            raise not_found(f"content {digest} not found") from None

    async def walk(self) -> list[Info]:
        """Every committed blob, sorted by digest. Files that are not blobs are ignored."""
        return await asyncio.to_thread(self._walk)

    def _walk(self) -> list[Info]:
        found: list[Info] = []
        for algorithm, length in HEX_LENGTHS.items():
            directory = self.root / "blobs" / algorithm
            if not directory.is_dir():
                continue
            for entry in os.scandir(directory):
                if len(entry.name) != length or not entry.is_file(follow_symlinks=False):
                    continue
                digest = f"{algorithm}:{entry.name}"
                try:
                    validate_digest(digest)
                    stat = entry.stat(follow_symlinks=False)
                except (CargoholdError, FileNotFoundError):
                    continue
                found.append(Info(digest=digest, size=stat.st_size, created_at=_timestamp(stat.st_mtime)))
        return sorted(found, key=lambda info: info.digest)

    async def put(self, data: bytes, expected: str | None = None, ref: str | None = None) -> str:
        """Store a small blob held in memory (a manifest, a config); return its digest.

        Already present: nothing is written. A mismatch with `expected` stores nothing.
        """
        expected = validate_digest(expected) if expected is not None else None
        digest = expected or f"{SHA256}:{hashlib.sha256(data).hexdigest()}"
        try:
            async with self.writer(ref or f"put-{digest}", total=len(data), expected=expected) as writer:
                if writer.offset:
                    await writer.reset()
                await writer.write(data)
                return await writer.commit()
        except CargoholdError as error:
            if error.kind is ErrorKind.ALREADY_EXISTS:
                return digest
            raise

    # ingests

    @asynccontextmanager
    async def writer(self, ref: str, *, total: int | None = None, expected: str | None = None,
                     wait: bool = True) -> AsyncIterator[Writer]:
        """Open (or resume) the ingest `ref` for writing.

        `total` and `expected` are checked by `commit()` and bound `write()`. If `expected`
        is already committed, raises ALREADY_EXISTS (nothing to write). A writer of the same
        ref in progress is waited for, or CONFLICT when `wait` is false. On leaving the block
        without commit, the ingest is kept for a later writer to resume (see `abort`).
        """
        validate_ref(ref)
        if expected is not None:
            validate_digest(expected)
        if total is not None and total < 0:
            raise invalid(f"ingest {ref!r}: expected size {total} is negative")
        entry = self._locks.setdefault(ref, _RefLock())
        if not wait and entry.lock.locked():
            raise CargoholdError(ErrorKind.CONFLICT, f'ingest "{ref}" is being written by another operation')
        entry.users += 1
        try:
            async with entry.lock:
                if expected is not None and await self.exists(expected):
                    raise CargoholdError(ErrorKind.ALREADY_EXISTS, f"content {expected} already exists")
                writer = await asyncio.to_thread(self._open_ingest, ref, total, expected)
                try:
                    yield writer
                finally:
                    await writer.close()
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._locks[ref]

    def _open_ingest(self, ref: str, total: int | None, expected: str | None) -> Writer:
        directory = self._ingest_dir(ref)
        _mkdirs(directory)
        meta_path = directory / "meta.json"
        data_path = directory / "data"
        algorithm = split_digest(expected)[0] if expected else SHA256
        meta = _read_meta(meta_path)
        resumable = (meta is not None and meta.get("ref") == ref and meta.get("total") == total
                     and meta.get("expected") == expected and data_path.is_file())
        if not resumable:
            meta = {"ref": ref, "total": total, "expected": expected, "started_at": time.time()}
            _write_meta(meta_path, meta)
        fd = os.open(data_path, os.O_RDWR | os.O_CREAT | (0 if resumable else os.O_TRUNC), INGEST_FILE_MODE)
        file = os.fdopen(fd, "r+b")
        hashed = hashlib.new(algorithm)
        offset = 0
        try:
            # Resuming: the hash state is not saved, so rehash what is already there.
            while chunk := file.read(READ_CHUNK):
                hashed.update(chunk)
                offset += len(chunk)
            if total is not None and offset > total:
                file.seek(0)
                file.truncate()
                hashed, offset = hashlib.new(algorithm), 0
        except BaseException:
            file.close()
            raise
        return Writer(self, ref, directory, file, hashed, offset, total, expected)

    async def ingests(self) -> list[IngestStatus]:
        """Every ingest on disk (in progress or abandoned), sorted by ref."""
        return await asyncio.to_thread(self._ingests)

    def _ingests(self) -> list[IngestStatus]:
        root = self.root / "ingest"
        if not root.is_dir():
            return []
        found = []
        for directory in root.iterdir():
            meta = _read_meta(directory / "meta.json")
            try:
                stat = (directory / "data").stat()
            except FileNotFoundError:
                continue
            if meta is None or not isinstance(meta.get("ref"), str):
                continue
            found.append(IngestStatus(ref=meta["ref"], offset=stat.st_size, total=meta.get("total"),
                                      expected=meta.get("expected"),
                                      started_at=_timestamp(float(meta.get("started_at", stat.st_mtime))),
                                      updated_at=_timestamp(stat.st_mtime)))
        return sorted(found, key=lambda status: status.ref)

    async def status(self, ref: str) -> IngestStatus:
        validate_ref(ref)
        for status in await self.ingests():
            if status.ref == ref:
                return status
        raise not_found(f'ingest "{ref}" not found')

    async def remove_idle_ingests(self) -> list[str]:
        """Remove every ingest no writer holds (abandoned by a failed or interrupted write, or
        half-made by a crash); return the directory names removed. Garbage collection's: an
        interrupted pull leaves no partial blob once it has run."""
        root = self.root / "ingest"
        names = await asyncio.to_thread(lambda: sorted(os.listdir(root)) if root.is_dir() else [])
        # A writer registers its ref on the loop before it touches its directory, so checking
        # and renaming it away here, in one step of the loop, cannot race one.
        busy = {self._ingest_dir(ref).name for ref, entry in self._locks.items() if entry.users}
        idle = [name for name in names if name not in busy]
        doomed: list[Path] = []
        for name in idle:
            away = root / f".removing-{name}"
            try:
                os.rename(root / name, away)
            except FileNotFoundError:
                continue
            doomed.append(away)
        for path in doomed:
            await asyncio.to_thread(shutil.rmtree, path, True)
        return [path.name.removeprefix(".removing-") for path in doomed]

    async def abort(self, ref: str) -> None:
        """Remove the ingest `ref`: NOT_FOUND if there is none, CONFLICT while a writer holds it."""
        validate_ref(ref)
        entry = self._locks.get(ref)
        if entry is not None and entry.lock.locked():
            raise CargoholdError(ErrorKind.CONFLICT, f'ingest "{ref}" is being written; it cannot be aborted now')
        directory = self._ingest_dir(ref)
        if not await asyncio.to_thread(directory.is_dir):
            raise not_found(f'ingest "{ref}" not found')
        await asyncio.to_thread(shutil.rmtree, directory, True)


async def _stream(file: IO[bytes], remaining: int, chunk_size: int) -> AsyncGenerator[bytes, None]:
    try:
        while remaining > 0:
            chunk = await asyncio.to_thread(file.read, min(chunk_size, remaining))
            if not chunk:
                break
            remaining -= len(chunk)
            yield chunk
    finally:
        file.close()


def _read_meta(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _write_meta(path: Path, meta: dict[str, Any]) -> None:
    temporary = path.with_suffix(".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, INGEST_FILE_MODE)
    with os.fdopen(fd, "w") as file:
        json.dump(meta, file)
    os.replace(temporary, path)
