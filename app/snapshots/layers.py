"""Applying a tar layer to a directory: streamed, confined to the root, honouring whiteouts.

The tar is read sequentially (`r|*`: plain, gzip, bzip2 or xz), so a layer of any size
needs only a small buffer. Nothing it holds can reach outside the target root:

- a member's name must be relative, without `..`;
- no directory along its path may be a symlink (one from this layer or a lower one):
  writing, whiting out or making opaque *through* a link could reach wherever it points;
- what a member replaces is examined without following it (an existing symlink is
  replaced, never written through);
- a hard link must name a real path inside the root;
- a relative symlink must not climb above the root.
  Absolute symlinks are kept: in a root filesystem `/bin/sh -> /bin/busybox` is the
  container's own /bin.

Whiteouts (OCI image layers, as containerd's `archive.Apply`): `.wh.NAME` deletes NAME
from the lower layers; `.wh..wh..opq` empties its directory of what lower layers put
there, keeping this layer's own entries wherever the marker comes. The target is the
merged view (an overlay mount, or a native copy), so a deletion there becomes the
snapshotter's own whiteout.
"""

from __future__ import annotations

import errno
import os
import posixpath
import shutil
import stat
import tarfile
from pathlib import Path
from typing import IO, Any, BinaryIO

from ..errors import CargoholdError, invalid

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
# Failures of a member against the tree so far: the tar is at fault, not the daemon.
_LAYER_ERRNOS = {errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENOENT, errno.ELOOP, errno.EXDEV, errno.EINVAL}


class _StrictTarInfo(tarfile.TarInfo):
    """tarfile takes a header cut short after the first member for the end of the archive;
    a partial header is a truncated tar here (as Go's archive/tar says)."""

    @classmethod
    def fromtarfile(cls, tarfile_: tarfile.TarFile) -> _StrictTarInfo:
        # As tarfile.TarInfo.fromtarfile (Python 3.11), plus the length check.
        fileobj: Any = tarfile_.fileobj
        buffer = fileobj.read(tarfile.BLOCKSIZE)
        if 0 < len(buffer) < tarfile.BLOCKSIZE:
            raise invalid("the tar archive is truncated (in a header)")
        member = cls.frombuf(buffer, tarfile_.encoding, tarfile_.errors)
        member.offset = fileobj.tell() - tarfile.BLOCKSIZE
        processed: _StrictTarInfo = member._proc_member(tarfile_)  # type: ignore[attr-defined]
        return processed


def _clean_name(name: str) -> str:
    """The member's path relative to the root, or INVALID_ARGUMENT if it could escape."""
    if name.startswith("/"):
        raise invalid(f"tar member {name!r} has an absolute path; layers hold paths relative to the root")
    if ".." in name.split("/"):
        raise invalid(f"tar member {name!r} climbs out of the root with '..'")
    normal = posixpath.normpath(name)
    return "" if normal == "." else normal


def real_directory(root: Path, relative: str, member: str) -> str:
    """`relative` if every directory along it is real (not a symlink); INVALID_ARGUMENT
    otherwise: a layer that writes through a link could reach anywhere the link points."""
    walked = root
    for part in [part for part in relative.split("/") if part not in ("", ".")]:
        walked = walked / part
        try:
            if stat.S_ISLNK(os.lstat(walked).st_mode):
                raise invalid(
                    f"tar member {member!r} would be written through the symlink "
                    f"{str(walked.relative_to(root))!r}; a layer must name real paths"
                )
        except FileNotFoundError:
            break  # created by tarfile as a real directory
    return relative


def _lexists(path: Path) -> bool:
    try:
        os.lstat(path)
    except FileNotFoundError:
        return False
    return True


def _remove(path: Path) -> None:
    """Remove whatever is at `path`, never following a symlink."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISDIR(mode):
        shutil.rmtree(path)
    else:
        path.unlink()


def apply_layer(stream: BinaryIO | IO[bytes], target: Path) -> int:
    """Extract the tar read from `stream` into `target`; return the number of members.

    Raises INVALID_ARGUMENT for an unsafe member, a member that does not fit the tree, or
    a truncated or unreadable tar. What was written before the error stays: the caller
    discards the whole target."""
    written: set[str] = set()
    opaque: list[str] = []
    count = 0
    try:
        with tarfile.open(fileobj=stream, mode="r|*", tarinfo=_StrictTarInfo) as archive:
            for member in archive:
                count += 1
                _apply_member(archive, member, target, written, opaque)
        # Markers are applied last, so this layer's own entries stay wherever they came.
        for directory in opaque:
            _make_opaque(target, directory, written)
    except CargoholdError:
        raise
    except (tarfile.TarError, EOFError) as error:
        raise invalid(f"the body is not a readable tar archive (or it is truncated): {error}") from error
    except KeyError as error:
        raise invalid(f"the tar has a hard link to a member it does not hold: {error}") from error
    except OSError as error:
        if error.errno in _LAYER_ERRNOS:
            raise invalid(f"a tar member does not fit the tree built so far: {error}") from error
        raise
    return count


def _apply_member(
    archive: tarfile.TarFile, member: tarfile.TarInfo, target: Path, written: set[str], opaque: list[str]
) -> None:
    name = _clean_name(member.name)
    if not name:
        return  # "./" itself: the root exists already
    directory, base = posixpath.split(name)
    parent = real_directory(target, directory, member.name)
    if base == OPAQUE_MARKER:
        opaque.append(parent)
        return
    if base.startswith(WHITEOUT_PREFIX):
        hidden = base.removeprefix(WHITEOUT_PREFIX)
        if hidden in ("", ".", "..") or "/" in hidden:
            raise invalid(f"tar member {member.name!r} is a whiteout of no valid name")
        _remove(target / parent / hidden)
        return
    relative = name
    path = target / relative
    if member.islnk():
        member.linkname = _checked_hardlink(target, member)
    elif member.issym():
        _check_symlink(relative, member)
    if _lexists(path) and not (member.isdir() and stat.S_ISDIR(os.lstat(path).st_mode)):
        _remove(path)  # a later entry replaces an earlier one (a symlink is replaced, not followed)
    member.name = relative
    archive.extract(member, target, set_attrs=True, numeric_owner=True, filter="fully_trusted")
    written.add(relative)


def _checked_hardlink(target: Path, member: tarfile.TarInfo) -> str:
    linked = _clean_name(member.linkname)
    real_directory(target, posixpath.dirname(linked), member.name)
    return linked


def _check_symlink(relative: str, member: tarfile.TarInfo) -> None:
    if member.linkname.startswith("/"):
        return
    lands = posixpath.normpath(posixpath.join(posixpath.dirname(relative), member.linkname))
    if lands == ".." or lands.startswith("../"):
        raise invalid(f"tar member {member.name!r} is a symlink to {member.linkname!r}, outside the root")


def _make_opaque(target: Path, directory: str, keep: set[str]) -> None:
    """Empty `directory` (root-relative, real) of what lower layers put there; this
    layer's own entries stay, and inside its own directories only its own entries do."""
    path = target / directory if directory else target
    try:
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            return
    except FileNotFoundError:
        return
    for child in os.listdir(path):
        relative = posixpath.join(directory, child) if directory else child
        if relative not in keep:
            _remove(path / child)
        elif stat.S_ISDIR(os.lstat(path / child).st_mode):
            _make_opaque(target, relative, keep)


