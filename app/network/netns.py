"""Network namespaces kept alive by a bind mount on a file, as `ip netns add` does.

`create(path)` runs util-linux `unshare --net=PATH true`: unshare(1) forks, puts one of
its processes in a new network namespace and bind-mounts that process's
`/proc/<pid>/ns/net` on PATH, so the namespace outlives it (and no daemon thread ever
changes namespace). `remove(path)` unmounts and unlinks; the namespace ends with its last
user. Both are idempotent.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

from ..mountinfo import read_mounts
from ..snapshots.mounts import unmount


class NetnsError(Exception):
    pass


async def create(path: Path) -> None:
    """Make a new network namespace bound on `path` (its parent is made 0700)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        raise NetnsError("unshare (util-linux) is not installed: network namespaces cannot be made")
    await asyncio.to_thread(_mount_point, path)
    process = await asyncio.create_subprocess_exec(
        unshare, f"--net={path}", "true", stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _, err = await process.communicate()
    if process.returncode != 0:
        await asyncio.to_thread(remove, path)
        raise NetnsError(f"unshare --net={path} failed: {err.decode(errors='replace').strip()}")


def _mount_point(path: Path) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.touch(mode=0o600)


def remove(path: Path) -> None:
    """Unmount and unlink `path` (nothing happens if it is gone)."""
    if is_mounted(path):
        unmount(path)
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as error:  # still mounted (EBUSY) after a lazy unmount raced: say so
        raise NetnsError(f"cannot remove {path}: {os.strerror(error.errno or 0)}") from error


def is_mounted(path: Path) -> bool:
    target = str(path)
    return any(mount.mount_point == target for mount in read_mounts())
