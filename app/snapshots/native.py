"""The native snapshotter: every snapshot is a full copy of its parent (`cp -a`), mounted
with a bind mount. Works on any filesystem; costs the copy."""

from __future__ import annotations

import subprocess
from pathlib import Path

from ..models import Mount, SnapshotKind


class NativeSnapshotter:
    name = "native"

    def create(self, data: Path, parents: list[Path]) -> None:
        fs = data / "fs"
        fs.mkdir(parents=True)
        if parents:
            # cp -a keeps owners, modes, links, devices and xattrs, as a root filesystem needs.
            subprocess.run(
                ["cp", "-a", "--reflink=auto", f"{parents[0] / 'fs'}/.", str(fs)],
                check=True, capture_output=True,
            )

    def mounts(self, data: Path, parents: list[Path], kind: SnapshotKind) -> list[Mount]:
        mode = "ro" if kind is SnapshotKind.VIEW else "rw"
        return [Mount(type="bind", source=str(data / "fs"), options=[mode, "rbind"])]
