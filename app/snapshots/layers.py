"""Applying a tar layer to a directory: streamed, bounded, confined to the root, honouring
whiteouts. It knows nothing of HTTP: it takes a byte stream, a target and limits.

The stream may be plain, gzip, bzip2, xz or zstd (sniffed from its first bytes); the tar in it
is read sequentially, so a layer of any size needs only a small buffer. Limits:

- the decompressed tar may hold `LayerLimits.max_bytes` (a gzip bomb stops there);
- a special header (PAX extended, GNU long name or link) may hold 1 MiB, as Go's
  archive/tar's `maxSpecialFileSize`; it is refused from its size field, before it is
  read; global PAX headers are skipped (containerd ignores them too), never merged;
- the layer may make `LayerLimits.max_entries` entries, counting the parent directories
  a member implies; what is remembered per member is a fixed-size digest, never its name.

Each member is made by this module, not by `tarfile.extract`, relative to a directory
file descriptor opened component by component with `O_NOFOLLOW`, so nothing is ever
reached through a symlink:

- a member's name must be relative, without `..`, at most PATH_MAX bytes;
- no directory along its path may be a symlink (one from this layer or a lower one):
  writing, whiting out or making opaque *through* a link could reach wherever it points;
- what a member replaces is removed without following it (a symlink is replaced, never
  written through); regular files are created with `O_CREAT|O_EXCL|O_NOFOLLOW`;
- owner, mode and times are set on the file descriptor of what was just made, or with
  the no-follow calls (`lchown`, `utimensat(AT_SYMLINK_NOFOLLOW)`); a symlink's mode is
  never set; a hard link's attributes are never set (it shares its target's inode);
- a hard link names a real path inside the root and links it without following it
  (`linkat` without `AT_SYMLINK_FOLLOW`): a link to a symlink is a second symlink;
- a relative symlink must not climb above the root. Absolute symlinks are kept: in a
  root filesystem `/bin/sh -> /bin/busybox` is the container's own /bin;
- device nodes only when `LayerLimits.devices` says the target is private (see
  `is_private`): a node in a directory others can reach would let them open the device.

Whiteouts (OCI image layers, as containerd's `archive.Apply`): `.wh.NAME` deletes NAME
from the lower layers; `.wh..wh..opq` empties its directory of what lower layers put
there when it comes, keeping this layer's own entries (containerd does the same). The
target is the merged view (an overlay mount, or a native copy), so a deletion there
becomes the snapshotter's own whiteout.
"""

from __future__ import annotations

import bz2
import errno
import gzip
import hashlib
import io
import lzma
import os
import posixpath
import shutil
import stat
import tarfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO, cast

import zstandard

from ..errors import CargoholdError, ErrorKind, invalid

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
# Go's archive/tar caps PAX and GNU long name/link headers at 1 MiB (maxSpecialFileSize).
MAX_SPECIAL_HEADER = 1024 * 1024
# Special headers one member may carry in a row (GNU tar writes 2: long link + long name);
# tarfile reads each by recursion, so a chain of them must end.
MAX_SPECIAL_CHAIN = 8
# PATH_MAX: no longer name can be made or looked up by the kernel in one piece.
MAX_NAME_BYTES = 4096
_COPY_CHUNK = 1 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_SPECIAL_TYPES = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE,
                  tarfile.SOLARIS_XHDTYPE)
_FILE_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)
# Failures of a member against the tree so far: the tar is at fault, not the daemon.
_LAYER_ERRNOS = {errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENOENT, errno.ELOOP, errno.EXDEV, errno.EINVAL,
                 errno.ENAMETOOLONG, errno.EMLINK}
_MAGIC = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd"}


@dataclass(frozen=True)
class LayerLimits:
    """What one layer may cost."""

    max_bytes: int  # of the decompressed tar (and of the stream itself)
    max_entries: int  # members plus the parent directories they imply
    devices: bool = False  # whether character and block devices may be made (see is_private)


def is_private(path: Path) -> bool:
    """Whether no other user can reach `path`: some directory on the way to it (itself
    included) is ours and has no search bit for group or others (a snapshots dir of 0700).
    Device nodes, and setuid files, are only safe in such a place (Docker's CVE-2021-41091)."""
    euid = os.geteuid()
    for directory in [path, *path.parents]:
        try:
            info = os.stat(directory)
        except FileNotFoundError:
            continue
        if info.st_uid == euid and info.st_mode & 0o011 == 0:
            return True
    return False


def apply_layer(stream: BinaryIO | IO[bytes], target: Path, limits: LayerLimits,
                diff: hashlib._Hash | None = None) -> int:
    """Extract the (possibly compressed) tar read from `stream` into `target`; return the
    number of members.

    With `diff`, every decompressed byte is fed to it, the tar's trailing padding included
    (read to the end of the stream): it then holds the layer's diff id, which the caller
    checks against the image config's `rootfs.diff_ids`.

    Raises INVALID_ARGUMENT for an unsafe member, a member that does not fit the tree, or
    a truncated or unreadable tar; TOO_LARGE past a limit. What was written before the
    error stays: the caller discards the whole target."""
    root = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        extraction = _Extraction(root, limits)
        counted = decompressed(stream, limits.max_bytes, diff)
        plain = io.BufferedReader(counted, 1 << 16)
        with tarfile.open(fileobj=plain, mode="r|", tarinfo=StrictTarInfo) as tar:
            end_of_last = 0
            while True:
                tar._cargohold_chain = 0  # type: ignore[attr-defined]
                try:
                    member = tar.next()
                except tarfile.ReadError:
                    # The stream ended right after the last member's data, without its padding
                    # or the end-of-archive blocks: Go's archive/tar (so containerd, Docker)
                    # reads that as a clean end, and umoci writes such layers. Data cut short
                    # is still refused (reading it fails first).
                    if end_of_last and counted.total == end_of_last and counted.ended:
                        break
                    raise
                if member is None:
                    break
                end_of_last = member.offset_data + (member.size if member.isreg() else 0)
                # tarfile remembers every member of a stream; nothing here needs them.
                tar.members.clear()  # type: ignore[attr-defined]
                extraction.apply(tar, member)
            if diff is not None:
                while plain.read(_COPY_CHUNK):
                    pass  # hashed (and bounded) by _Counted as it is read
        extraction.finish()
        return extraction.members
    except CargoholdError:
        raise
    except (tarfile.TarError, EOFError) as error:
        raise invalid(f"the body is not a readable tar archive (or it is truncated): {error}") from error
    except (OverflowError, ValueError) as error:
        raise invalid(f"a tar member has a field out of range (or a NUL in a name): {error}") from error
    except OSError as error:
        if error.errno in _LAYER_ERRNOS:
            raise invalid(f"a tar member does not fit the tree built so far: {error}") from error
        raise
    finally:
        os.close(root)


# --- the stream: decompressed, counted ---------------------------------------------------


def decompressed(stream: BinaryIO | IO[bytes], max_bytes: int, diff: hashlib._Hash | None = None) -> _Counted:
    head = b""
    while len(head) < 6:
        more = stream.read(6 - len(head))
        if not more:
            break
        head += more
    joined = io.BufferedReader(_Joined(head, stream), 1 << 16)
    compression = next((name for magic, name in _MAGIC.items() if head.startswith(magic)), None)
    source: IO[bytes]
    if compression is None:
        source = joined
    elif compression == "gzip":
        source = cast(IO[bytes], gzip.GzipFile(fileobj=joined, mode="rb"))
    elif compression == "bzip2":
        source = bz2.BZ2File(joined)
    elif compression == "xz":
        source = lzma.LZMAFile(joined)
    else:
        # Across frames, as zstd(1) and containerd read a layer; the window is bounded by the
        # library's default (128 MiB), so a frame cannot ask for unbounded memory.
        checked = io.BufferedReader(_ZstdFramed(joined), 1 << 16)
        source = cast(IO[bytes], zstandard.ZstdDecompressor().stream_reader(checked, read_across_frames=True))
    # The stream's own bytes are counted too: empty gzip members decompress to nothing.
    return _Counted(source, compression or "plain", max_bytes, diff)


class _Joined(io.RawIOBase):
    """`head` (already read to sniff the compression), then the rest of `stream`."""

    def __init__(self, head: bytes, stream: BinaryIO | IO[bytes]) -> None:
        self._head = memoryview(head)
        self._stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._head:
            size = min(len(buffer), len(self._head))
            buffer[:size] = self._head[:size]
            self._head = self._head[size:]
            return size
        # read1 where there is one: what has arrived, not a full buffer (an upload that
        # has sent its whole tar must not wait on more).
        data = getattr(self._stream, "read1", self._stream.read)(len(buffer))
        buffer[: len(data)] = data
        return len(data)


_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class _ZstdFramed(io.RawIOBase):
    """The compressed bytes, passed through while their zstd frames are walked (RFC 8878:
    frame headers and block headers, skipping block contents), so a stream that ends inside
    a frame is refused: the zstandard library reads such a stream as a clean, short end."""

    def __init__(self, source: IO[bytes]) -> None:
        self._source = source
        self._state = "magic"
        self._need = 4  # bytes the state reads, gathered in _held
        self._held = bytearray()
        self._skip = 0  # bytes of block content (or a skippable frame) to pass over
        self._checksum = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = getattr(self._source, "read1", self._source.read)(len(buffer))
        if not data:
            if self._skip or self._held or self._state != "magic":
                raise invalid("the body's zstd data is truncated: it ends inside a frame")
            return 0
        self._walk(memoryview(data))
        buffer[: len(data)] = data
        return len(data)

    def _walk(self, data: memoryview) -> None:
        i = 0
        while i < len(data):
            if self._skip:
                step = min(self._skip, len(data) - i)
                self._skip -= step
                i += step
                continue
            step = min(self._need - len(self._held), len(data) - i)
            self._held += data[i:i + step]
            i += step
            if len(self._held) == self._need:
                field, self._held = bytes(self._held), bytearray()
                self._advance(field)

    def _advance(self, field: bytes) -> None:
        if self._state == "magic":
            if field == _ZSTD_MAGIC:
                self._state, self._need = "descriptor", 1
            elif field[1:] == b"\x2a\x4d\x18" and field[0] & 0xF0 == 0x50:  # a skippable frame
                self._state, self._need = "skippable", 4
            else:
                raise invalid("the body's zstd data is broken: a frame does not start with zstd's magic number")
        elif self._state == "skippable":
            self._skip = int.from_bytes(field, "little")
            self._state, self._need = "magic", 4
        elif self._state == "descriptor":
            descriptor = field[0]
            single_segment = bool(descriptor & 0x20)
            content_size = (1 if single_segment else 0, 2, 4, 8)[descriptor >> 6]
            self._checksum = bool(descriptor & 0x04)
            rest = (0 if single_segment else 1) + (0, 1, 2, 4)[descriptor & 0x03] + content_size
            self._state, self._need = "block", 3
            self._skip = rest
        else:  # a block header: last flag, type, size
            header = int.from_bytes(field, "little")
            kind, size = (header >> 1) & 0x03, header >> 3
            if kind == 3:
                raise invalid("the body's zstd data is broken: a block has the reserved type")
            self._skip = 1 if kind == 1 else size  # an RLE block holds one byte
            if header & 1:  # the frame's last block
                self._skip += 4 if self._checksum else 0
                self._state, self._need = "magic", 4


class _Counted(io.RawIOBase):
    """Decompressed bytes, refused past `limit`; a broken compression is the body's fault."""

    def __init__(self, source: IO[bytes], compression: str, limit: int, diff: hashlib._Hash | None) -> None:
        self._source = source
        self._compression = compression
        self._limit = limit
        self.total = 0
        self.ended = False  # the source has said end of stream
        self._diff = diff

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            wanted = min(len(buffer), self._limit + 1 - self.total) or 1
            data = getattr(self._source, "read1", self._source.read)(wanted)
        except (OSError, EOFError, zlib.error, lzma.LZMAError, zstandard.ZstdError) as error:
            raise invalid(f"the body's {self._compression} data is broken or truncated: {error}") from error
        if not data:
            self.ended = True
        self.total += len(data)
        if self.total > self._limit:
            raise CargoholdError(
                ErrorKind.TOO_LARGE,
                f"the tar is larger than the {self._limit}-byte import limit once decompressed",
            )
        if self._diff is not None:
            self._diff.update(data)
        buffer[: len(data)] = data
        return len(data)


class StrictTarInfo(tarfile.TarInfo):
    """tarfile's header parsing, bounded: special headers are refused from their size
    field before they are read, chains of them end, global PAX headers are skipped,
    sparse files are refused (their maps are read whole); and a header cut short after
    the first member is a truncated tar, not the end of the archive (as Go's archive/tar)."""

    @classmethod
    def fromtarfile(cls, tarfile_: tarfile.TarFile) -> StrictTarInfo:
        # As tarfile.TarInfo.fromtarfile (Python 3.11), plus the length check.
        fileobj: Any = tarfile_.fileobj
        buffer = fileobj.read(tarfile.BLOCKSIZE)
        if 0 < len(buffer) < tarfile.BLOCKSIZE:
            raise invalid("the tar archive is truncated (in a header)")
        member = cls.frombuf(buffer, tarfile_.encoding, tarfile_.errors)
        member.offset = fileobj.tell() - tarfile.BLOCKSIZE
        processed: StrictTarInfo = member._proc_member(tarfile_)
        return processed

    def _proc_member(self, tarfile_: tarfile.TarFile) -> Any:
        if self.type in _SPECIAL_TYPES:
            if self.size > MAX_SPECIAL_HEADER:
                raise CargoholdError(
                    ErrorKind.TOO_LARGE,
                    f"the tar has an extended header (PAX or GNU long name) of {self.size} bytes; "
                    f"at most {MAX_SPECIAL_HEADER} are read, as Go's archive/tar does",
                )
            chain = getattr(tarfile_, "_cargohold_chain", 0) + 1
            tarfile_._cargohold_chain = chain  # type: ignore[attr-defined]
            if chain > MAX_SPECIAL_CHAIN:
                raise invalid(f"the tar has more than {MAX_SPECIAL_CHAIN} extended headers in a row")
            if self.type == tarfile.XGLTYPE:
                tarfile_.fileobj.read(self._block(self.size))  # type: ignore[attr-defined]
                return self.fromtarfile(tarfile_)
        elif self.type == tarfile.GNUTYPE_SPARSE:
            self._sparse_refused()
        return super()._proc_member(tarfile_)  # type: ignore[misc]

    def _sparse_refused(self, *args: Any) -> None:
        raise invalid("the tar holds a sparse file (a GNU sparse format); layers with sparse files are not supported")

    _proc_gnusparse_00 = _proc_gnusparse_01 = _proc_gnusparse_10 = _sparse_refused


# --- the tree ----------------------------------------------------------------------------


def _key(relative: str) -> bytes:
    """What is remembered of a path: a fixed size, whatever the name's length."""
    return hashlib.blake2b(relative.encode("utf-8", "surrogateescape"), digest_size=16).digest()


def _clean_name(name: str) -> str:
    """The member's path relative to the root, or INVALID_ARGUMENT if it could escape."""
    if len(name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        raise invalid(f"tar member {name[:64]!r}... has a name over {MAX_NAME_BYTES} bytes (PATH_MAX)")
    if name.startswith("/"):
        raise invalid(f"tar member {name!r} has an absolute path; layers hold paths relative to the root")
    if ".." in name.split("/"):
        raise invalid(f"tar member {name!r} climbs out of the root with '..'")
    normal = posixpath.normpath(name)
    return "" if normal == "." else normal


def _lstat(parent: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _remove(parent: int, name: str) -> None:
    """Remove whatever is at `name` in `parent`, never following a symlink."""
    info = _lstat(parent, name)
    if info is None:
        return
    if stat.S_ISDIR(info.st_mode):
        remove_tree_at(parent, name)
    else:
        os.unlink(name, dir_fd=parent)


def walk_tree(
    parent: int, name: str, visit: Callable[[int, list[os.DirEntry[str]]], None], leave: Callable[[int, str], None]
) -> None:
    """Walk the directory `name` below the directory descriptor `parent`, depth first,
    never following a link: `visit(fd, entries)` for each directory (its entries listed,
    `fd` open on it), then `leave(parent_fd, name)` once all below it is walked.

    Without recursion and with one descriptor at a time (it climbs back through `..`): a
    tree of any depth (a container can nest directories at will) and breadth is walked,
    where Python 3.11's shutil.rmtree and os.walk fail past about 1,000 levels."""
    fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
    stack: list[tuple[str, list[str] | None]] = [(name, None)]
    try:
        while stack:
            current, pending = stack[-1]
            if pending is None:
                with os.scandir(fd) as listing:
                    entries = list(listing)
                pending = [entry.name for entry in entries if entry.is_dir(follow_symlinks=False)]
                visit(fd, entries)
                stack[-1] = (current, pending)
            if pending:
                child = pending.pop()
                below = os.open(child, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = below
                stack.append((child, None))
                continue
            above = os.open("..", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = above
            stack.pop()
            leave(fd, current)
    finally:
        os.close(fd)


def remove_tree_at(parent: int, name: str) -> None:
    """Delete the directory `name` in `parent` and all below it, never following a link."""

    def unlink_files(fd: int, entries: list[os.DirEntry[str]]) -> None:
        for entry in entries:
            if not entry.is_dir(follow_symlinks=False):
                os.unlink(entry.name, dir_fd=fd)

    walk_tree(parent, name, unlink_files, lambda fd, directory: os.rmdir(directory, dir_fd=fd))


def remove_tree(path: Path) -> None:
    """Delete the directory at `path` (not a symlink) and all below it."""
    parent = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        remove_tree_at(parent, path.name)
    finally:
        os.close(parent)


class _Extraction:
    """One layer being applied below the directory `root` (a file descriptor)."""

    def __init__(self, root: int, limits: LayerLimits) -> None:
        self._root = root
        self._limits = limits
        self._chown = os.geteuid() == 0  # as tarfile: only root can give files away
        self.members = 0
        self._entries = 0
        self._written: set[bytes] = set()  # this layer's own entries (for opaque markers)
        self._dir_times: dict[bytes, int] = {}  # set once the layer is done (entries change them)
        self._on_the_way: set[bytes] = set()  # directories above one in _dir_times

    def apply(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        self.members += 1
        self._count(member.name)
        name = _clean_name(member.name)
        if not name:
            return  # "./" itself: the root exists already
        directory, base = posixpath.split(name)
        if base == OPAQUE_MARKER:
            with self._directory(directory, member.name, create=False) as parent:
                if parent is not None:
                    self._make_opaque(parent, directory)
            return
        if base.startswith(WHITEOUT_PREFIX):
            hidden = base.removeprefix(WHITEOUT_PREFIX)
            if hidden in ("", ".", "..") or "/" in hidden:
                raise invalid(f"tar member {member.name!r} is a whiteout of no valid name")
            with self._directory(directory, member.name, create=False) as parent:
                if parent is not None:
                    _remove(parent, hidden)
            return
        if member.type not in (*_FILE_TYPES, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.FIFOTYPE,
                               tarfile.CHRTYPE, tarfile.BLKTYPE):
            raise invalid(f"tar member {member.name!r} is of a type layers do not hold ({member.type!r})")
        if member.ischr() or member.isblk():
            if not self._limits.devices:
                raise invalid(
                    f"tar member {member.name!r} is a device node; device nodes are made only where the "
                    "snapshots directory is private (no search bit for others on the way to it)"
                )
        if member.islnk():
            self._hardlink(member, name)
        with self._directory(directory, member.name, create=True) as parent:
            assert parent is not None
            existing = _lstat(parent, base)
            if existing is not None and not (member.isdir() and stat.S_ISDIR(existing.st_mode)):
                _remove(parent, base)  # a later entry replaces an earlier one (a symlink is replaced, not followed)
            if member.isdir():
                self._make_directory(parent, base, name, member, existing)
            elif member.issym():
                _check_symlink(name, member)
                os.symlink(member.linkname, base, dir_fd=parent)
                self._set_owner(parent, base, member)
                self._set_times(parent, base, member)
            elif member.islnk():
                self._link(parent, base, member)
            elif member.isfifo() or member.ischr() or member.isblk():
                kind = stat.S_IFIFO if member.isfifo() else stat.S_IFCHR if member.ischr() else stat.S_IFBLK
                os.mknod(base, kind | 0o600, os.makedev(member.devmajor, member.devminor), dir_fd=parent)
                self._set_owner(parent, base, member)
                self._set_mode(parent, base, member)
                self._set_times(parent, base, member)
            else:
                self._make_file(tar, parent, base, member)
        self._written.add(_key(name))

    def finish(self) -> None:
        """Directory times, last: making entries in a directory changes its mtime. Only
        the directories on the way to this layer's own are listed."""
        pending = [""] if self._dir_times else []
        while pending:
            relative = pending.pop()
            with self._directory(relative, relative, create=False) as fd:
                if fd is None:
                    continue
                with os.scandir(fd) as entries:
                    directories = [entry.name for entry in entries if entry.is_dir(follow_symlinks=False)]
                for name in directories:
                    path = posixpath.join(relative, name) if relative else name
                    key = _key(path)
                    if key in self._on_the_way:
                        pending.append(path)
                    mtime = self._dir_times.get(key)
                    if mtime is not None:
                        os.utime(name, ns=(mtime, mtime), dir_fd=fd, follow_symlinks=False)

    # --- steps -------------------------------------------------------------------------

    def _count(self, what: str) -> None:
        self._entries += 1
        if self._entries > self._limits.max_entries:
            raise CargoholdError(
                ErrorKind.TOO_LARGE,
                f"the tar makes more than {self._limits.max_entries} entries (members and the parent "
                f"directories they imply; at {what[:200]!r})",
            )

    @contextmanager
    def _directory(self, relative: str, member: str, create: bool) -> Iterator[int | None]:
        """A file descriptor of the directory `relative`, reached component by component
        without following a link. Missing directories are made (0755, as containerd) when
        `create`, else None is given. INVALID_ARGUMENT if a component is a symlink or not a
        directory."""
        fd = os.dup(self._root)
        walked = ""
        try:
            for part in [part for part in relative.split("/") if part]:
                walked = posixpath.join(walked, part) if walked else part
                try:
                    next_fd = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        yield None
                        return
                    self._count(walked)
                    os.mkdir(part, 0o755, dir_fd=fd)
                    next_fd = os.open(part, _DIR_FLAGS, dir_fd=fd)
                    os.chmod(next_fd, 0o755)  # whatever the umask
                except OSError as error:
                    if error.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    info = _lstat(fd, part)
                    if info is not None and stat.S_ISLNK(info.st_mode):
                        raise invalid(
                            f"tar member {member!r} would be written through the symlink {walked!r}; "
                            "a layer must name real paths"
                        ) from error
                    raise invalid(f"tar member {member!r} is below {walked!r}, which is not a directory") from error
                os.close(fd)
                fd = next_fd
            yield fd
        finally:
            os.close(fd)

    def _make_directory(
        self, parent: int, base: str, name: str, member: tarfile.TarInfo, existing: os.stat_result | None
    ) -> None:
        if existing is None or not stat.S_ISDIR(existing.st_mode):
            os.mkdir(base, 0o700, dir_fd=parent)
        fd = os.open(base, _DIR_FLAGS, dir_fd=parent)
        try:
            if self._chown:
                os.chown(fd, member.uid, member.gid)
            os.chmod(fd, stat.S_IMODE(member.mode))
        finally:
            os.close(fd)
        self._dir_times[_key(name)] = int(member.mtime) * 1_000_000_000
        # Remember the directories above it, deepest first, up to one already remembered.
        above = posixpath.dirname(name)
        while above and (key := _key(above)) not in self._on_the_way:
            self._on_the_way.add(key)
            above = posixpath.dirname(above)

    def _make_file(self, tar: tarfile.TarFile, parent: int, base: str, member: tarfile.TarInfo) -> None:
        fd = os.open(base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=parent)
        try:
            source = tar.extractfile(member)
            if source is not None:
                with source, os.fdopen(os.dup(fd), "wb") as sink:
                    shutil.copyfileobj(source, sink, _COPY_CHUNK)
            if self._chown:
                os.chown(fd, member.uid, member.gid)
            os.chmod(fd, stat.S_IMODE(member.mode))  # after chown, which drops setuid bits
            mtime = int(member.mtime) * 1_000_000_000
            os.utime(fd, ns=(mtime, mtime))
        finally:
            os.close(fd)

    def _hardlink(self, member: tarfile.TarInfo, name: str) -> None:
        linked = _clean_name(member.linkname)
        if not linked or linked == name:
            raise invalid(f"tar member {member.name!r} is a hard link to {member.linkname!r}, which it cannot be")

    def _link(self, parent: int, base: str, member: tarfile.TarInfo) -> None:
        linked = _clean_name(member.linkname)
        directory, target = posixpath.split(linked)
        with self._directory(directory, member.name, create=False) as source:
            if source is None:
                raise invalid(f"tar member {member.name!r} is a hard link to {member.linkname!r}, which is not there")
            info = _lstat(source, target)
            if info is None or stat.S_ISDIR(info.st_mode):
                raise invalid(
                    f"tar member {member.name!r} is a hard link to {member.linkname!r}, which is not a file there"
                )
            # Without AT_SYMLINK_FOLLOW: a link to a symlink links the symlink, not where it points.
            os.link(target, base, src_dir_fd=source, dst_dir_fd=parent, follow_symlinks=False)

    def _set_owner(self, parent: int, base: str, member: tarfile.TarInfo) -> None:
        if self._chown:
            os.chown(base, member.uid, member.gid, dir_fd=parent, follow_symlinks=False)  # lchown

    def _set_mode(self, parent: int, base: str, member: tarfile.TarInfo) -> None:
        """chmod of a node that is not a symlink (Linux has no lchmod): through an O_PATH
        descriptor of the node itself, checked not to be a link."""
        fd = os.open(base, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
        try:
            if stat.S_ISLNK(os.fstat(fd).st_mode):
                raise invalid(f"tar member {member.name!r} became a symlink while it was made")
            os.chmod(f"/proc/self/fd/{fd}", stat.S_IMODE(member.mode))
        finally:
            os.close(fd)

    def _set_times(self, parent: int, base: str, member: tarfile.TarInfo) -> None:
        mtime = int(member.mtime) * 1_000_000_000
        os.utime(base, ns=(mtime, mtime), dir_fd=parent, follow_symlinks=False)

    def _make_opaque(self, directory: int, relative: str) -> None:
        """Empty `directory` (at `relative`) of what lower layers put there; this layer's
        own entries stay, and inside its own directories only its own entries do."""
        pending: list[str] = []
        self._keep_own(directory, relative, pending)
        while pending:
            path = pending.pop()
            with self._directory(path, path, create=False) as fd:
                if fd is not None:
                    self._keep_own(fd, path, pending)

    def _keep_own(self, fd: int, relative: str, pending: list[str]) -> None:
        with os.scandir(fd) as entries:
            children = [(entry.name, entry.is_dir(follow_symlinks=False)) for entry in entries]
        for name, is_dir in children:
            child = posixpath.join(relative, name) if relative else name
            if _key(child) not in self._written:
                _remove(fd, name)
            elif is_dir:
                pending.append(child)


def _check_symlink(relative: str, member: tarfile.TarInfo) -> None:
    if len(member.linkname.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        raise invalid(f"tar member {member.name!r} is a symlink to a name over {MAX_NAME_BYTES} bytes")
    if member.linkname.startswith("/"):
        return
    lands = posixpath.normpath(posixpath.join(posixpath.dirname(relative), member.linkname))
    if lands == ".." or lands.startswith("../"):
        raise invalid(f"tar member {member.name!r} is a symlink to {member.linkname!r}, outside the root")
