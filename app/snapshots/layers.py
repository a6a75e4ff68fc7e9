"""Applying a tar layer to a directory: streamed, refusing traversal, honouring whiteouts.

The tar is read sequentially (`r|*`: plain, gzip, bzip2 or xz), so a layer of any size
needs only a small buffer. Every member is checked before it touches the disk:

- its name must stay inside the target: no absolute path, no `..`, and no parent
  directory that resolves (through a symlink already extracted) outside the target;
- a hard link must point at a path inside the layer's target;
- a relative symlink must not climb above the root. Absolute symlinks are kept: in a
  root filesystem `/bin/sh -> /bin/busybox` means the container's own /bin, and nothing
  here ever follows one (the parent check above resolves them as host paths and so
  refuses to write through them).

Whiteouts (OCI image layers, as containerd's `archive.Apply`): `.wh.NAME` deletes NAME
from the lower layers; `.wh..wh..opq` empties its directory of what lower layers put
there. The target is expected to be the merged view (an overlay mount, or a native
copy), so a deletion there becomes the snapshotter's own whiteout.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import tarfile
from pathlib import Path
from typing import BinaryIO

from ..errors import invalid

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"


def _clean_name(name: str) -> str:
    """The member's path relative to the root, or INVALID_ARGUMENT if it could escape."""
    if name.startswith("/"):
        raise invalid(f"tar member {name!r} has an absolute path; layers hold paths relative to the root")
    normal = posixpath.normpath(name)
    if normal == ".." or normal.startswith("../") or "/../" in f"/{name}/":
        raise invalid(f"tar member {name!r} climbs out of the root with '..'")
    return "" if normal == "." else normal


def _check_inside(target: Path, relative: str, member: str) -> Path:
    """target/relative, after checking its parent directory resolves inside target."""
    path = target / relative
    parent = os.path.realpath(path.parent)
    root = os.path.realpath(target)
    if os.path.commonpath([parent, root]) != root:
        raise invalid(f"tar member {member!r} would be written through a link that leads outside the root")
    return path


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def apply_layer(stream: BinaryIO, target: Path) -> int:
    """Extract the tar read from `stream` into `target`; return the number of members.

    Raises INVALID_ARGUMENT for an unsafe member, a truncated or unreadable tar. What was
    written before the error stays: the caller discards the whole target."""
    written_in_layer: set[str] = set()
    count = 0
    try:
        with tarfile.open(fileobj=stream, mode="r|*") as archive:
            for member in archive:
                count += 1
                name = _clean_name(member.name)
                if not name:
                    continue  # "./" itself: the root exists already
                directory, base = posixpath.split(name)
                if base == OPAQUE_MARKER:
                    _make_opaque(_check_inside(target, directory or ".", member.name), directory, written_in_layer)
                    continue
                if base.startswith(WHITEOUT_PREFIX):
                    hidden = posixpath.join(directory, base.removeprefix(WHITEOUT_PREFIX))
                    _remove(_check_inside(target, hidden, member.name))
                    continue
                path = _check_inside(target, name, member.name)
                if member.islnk():
                    member.linkname = _checked_hardlink(target, member)
                elif member.issym():
                    _check_symlink(name, member)
                if (path.exists() or path.is_symlink()) and not (member.isdir() and path.is_dir()):
                    _remove(path)  # a later layer's entry replaces an earlier one's
                archive.extract(member, target, set_attrs=True, numeric_owner=True, filter="fully_trusted")
                written_in_layer.add(name)
    except tarfile.ReadError as error:
        raise invalid(f"the body is not a readable tar archive (or it is truncated): {error}") from error
    except EOFError as error:
        raise invalid(f"the tar archive is truncated: {error}") from error
    return count


def _checked_hardlink(target: Path, member: tarfile.TarInfo) -> str:
    linked = _clean_name(member.linkname)
    _check_inside(target, linked, member.name)
    return linked


def _check_symlink(name: str, member: tarfile.TarInfo) -> None:
    if member.linkname.startswith("/"):
        return
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(name), member.linkname))
    if resolved == ".." or resolved.startswith("../"):
        raise invalid(f"tar member {member.name!r} is a symlink to {member.linkname!r}, outside the root")


def _make_opaque(path: Path, directory: str, keep: set[str]) -> None:
    """Empty `path` of entries that lower layers put there (this layer's own stay)."""
    if not path.is_dir():
        return
    for child in path.iterdir():
        if posixpath.join(directory, child.name) not in keep:
            _remove(child)
