"""A busybox root filesystem as a tar, built from Debian's busybox-static.

`/bin/busybox` plus a symlink per applet (`busybox --list`), the directories a runtime
mounts over (`/proc`, `/dev`, `/sys`, `/tmp`), and `/etc/passwd`, `/etc/group`.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

BUSYBOX = Path("/bin/busybox")


def busybox_path() -> Path:
    found = shutil.which("busybox")
    if found is None:
        raise FileNotFoundError("busybox is not installed: apt-get install busybox-static")
    return Path(found).resolve()


def tar_entry(name: str, kind: bytes, mode: int, **fields: object) -> tarfile.TarInfo:
    """A tar header for `name` of type `kind`, stamped now."""
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.mtime = int(time.time())
    for key, value in fields.items():
        setattr(info, key, value)
    return info


def write_busybox_tar(destination: Path) -> Path:
    busybox = busybox_path()
    applets = subprocess.run([str(busybox), "--list"], check=True, capture_output=True, text=True).stdout.split()
    files = {
        "etc/passwd": b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
        "etc/group": b"root:x:0:\nnogroup:x:65534:\n",
    }
    with tarfile.open(destination, "w") as archive:
        for directory, mode in (("bin", 0o755), ("dev", 0o755), ("etc", 0o755), ("proc", 0o555),
                                ("root", 0o700), ("sys", 0o555), ("tmp", 0o1777)):
            archive.addfile(tar_entry(directory, tarfile.DIRTYPE, mode))
        archive.add(busybox, "bin/busybox", recursive=False)
        for applet in sorted(set(applets) - {"busybox"}):
            archive.addfile(tar_entry(f"bin/{applet}", tarfile.SYMTYPE, 0o777, linkname="busybox"))
        for name, content in files.items():
            archive.addfile(tar_entry(name, tarfile.REGTYPE, 0o644, size=len(content)), io.BytesIO(content))
    return destination


def files_tar(files: dict[str, bytes]) -> bytes:
    """A PAX tar holding `files` (name -> content) as regular files of mode 0644."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()
