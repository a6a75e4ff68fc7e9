"""mount(2) and umount2(2) for the mount lists snapshotters hand out, and the one way to
unmount and remove a directory (`unmount_and_remove`), for snapshots and task dirs alike.

A mount list is what a runtime needs to assemble a root filesystem: one `overlay`
mount, or one `bind` mount (with `ro` for a view). Called from threads: these are
blocking syscalls.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
from pathlib import Path

from ..models import Mount
from ..mountinfo import read_mounts
from .layers import remove_tree

log = logging.getLogger(__name__)

MS_RDONLY = 0x1
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MNT_DETACH = 0x2

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _mount(source: str, target: Path, fstype: str | None, flags: int, data: str | None) -> None:
    _check(
        _libc.mount(
            source.encode(), str(target).encode(), fstype.encode() if fstype else None, flags,
            data.encode() if data else None,
        ),
        f"mount {fstype or 'bind'} {source} on {target}",
    )


def mount_all(mounts: list[Mount], target: Path) -> None:
    """Mount each of `mounts` on `target` (in order, as a runtime would)."""
    for mount in mounts:
        if mount.type == "bind":
            readonly = "ro" in mount.options
            _mount(mount.source, target, None, MS_BIND | MS_REC, None)
            if readonly:
                _mount("", target, None, MS_REMOUNT | MS_BIND | MS_RDONLY, None)
        else:
            _mount(mount.source, target, mount.type, 0, ",".join(mount.options))


def unmount(target: Path) -> None:
    """Unmount `target`; lazily (detach) if it is busy, so cleanup never hangs on a user."""
    if _libc.umount2(str(target).encode(), 0) == 0:
        return
    errno = ctypes.get_errno()
    if errno == 16:  # EBUSY
        _check(_libc.umount2(str(target).encode(), MNT_DETACH), f"umount {target}")
        return
    if errno in (22, 2):  # EINVAL: not a mount point; ENOENT: gone
        return
    raise OSError(errno, f"umount {target}: {os.strerror(errno)}")


def mount_points_under(root: Path) -> list[Path]:
    """Mount points at or below `root`, deepest first (the order to unmount them)."""
    prefix = str(root.resolve()).rstrip("/") + "/"
    found = [Path(mount.mount_point) for mount in read_mounts() if f"{mount.mount_point}/".startswith(prefix)]
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def unmount_under(root: Path) -> None:
    """Unmount whatever is mounted at or below `root`, deepest first."""
    for point in mount_points_under(root):
        unmount(point)


def unmount_and_remove(path: Path, attempts: int = 5) -> None:
    """Unmount whatever is mounted at or below `path`, then delete it and all below it,
    whatever its depth (a container may nest directories past Python's stack). Retried:
    something may still be writing into it. What stays is logged, and cleared by the next
    start's sweep (snapshot orphans, task dirs no task owns)."""
    for _ in range(attempts):
        if not path.exists():
            return
        unmount_under(path)
        with contextlib.suppress(OSError):
            remove_tree(path)
    if path.exists():
        log.warning("could not remove %s entirely; it is removed at the next start", path)
