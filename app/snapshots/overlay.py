"""The overlayfs snapshotter: each snapshot stores only its own changes (`fs`, the upper
dir); its parents are stacked below it as lower dirs, as containerd's overlay snapshotter."""

from __future__ import annotations

from pathlib import Path

from ..models import Mount, SnapshotKind


def overlay_supported() -> bool:
    try:
        return any(line.split()[-1] == "overlay" for line in Path("/proc/filesystems").read_text().splitlines())
    except OSError:
        return False


class OverlaySnapshotter:
    name = "overlayfs"

    async def create(self, data: Path, parents: list[Path]) -> None:
        (data / "fs").mkdir(parents=True)
        (data / "work").mkdir()

    def mounts(self, data: Path, parents: list[Path], kind: SnapshotKind) -> list[Mount]:
        """`parents` are the ancestors' data dirs, nearest first."""
        lower = ":".join(str(parent / "fs") for parent in parents)
        if kind is SnapshotKind.VIEW:
            if not parents:
                return [Mount(type="bind", source=str(data / "fs"), options=["ro", "rbind"])]
            if len(parents) == 1:
                return [Mount(type="bind", source=str(parents[0] / "fs"), options=["ro", "rbind"])]
            return [Mount(type="overlay", source="overlay", options=[f"lowerdir={lower}"])]
        if not parents:
            return [Mount(type="bind", source=str(data / "fs"), options=["rw", "rbind"])]
        return [
            Mount(
                type="overlay",
                source="overlay",
                options=[f"workdir={data / 'work'}", f"upperdir={data / 'fs'}", f"lowerdir={lower}"],
            )
        ]
