"""The native snapshotter: every snapshot is a full copy of its parent (`cp -a`), mounted
with a bind mount. Works on any filesystem; costs the copy."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import signal
from pathlib import Path

from ..models import Mount, SnapshotKind

PR_SET_PDEATHSIG = 1


def _die_with_the_daemon() -> None:
    # Runs in the child before exec: a copy must not outlive a daemon killed mid-prepare,
    # or it would keep writing into a directory that start-up is removing as an orphan.
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class NativeSnapshotter:
    name = "native"

    async def create(self, data: Path, parents: list[Path]) -> None:
        fs = data / "fs"
        fs.mkdir(parents=True)
        if not parents:
            return
        # cp -a keeps owners, modes, links, devices and xattrs, as a root filesystem needs.
        # Started from the event loop's thread, which lives as long as the daemon does.
        copy = await asyncio.create_subprocess_exec(
            "cp", "-a", "--reflink=auto", f"{parents[0] / 'fs'}/.", str(fs),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            preexec_fn=_die_with_the_daemon,
        )
        try:
            _, err = await copy.communicate()
        except BaseException:
            copy.kill()
            await copy.wait()
            raise
        if copy.returncode != 0:
            raise OSError(f"copying the parent snapshot failed: {err.decode(errors='replace').strip()}")

    def mounts(self, data: Path, parents: list[Path], kind: SnapshotKind) -> list[Mount]:
        mode = "ro" if kind is SnapshotKind.VIEW else "rw"
        return [Mount(type="bind", source=str(data / "fs"), options=[mode, "rbind"])]
