"""`/proc/self/mountinfo`: the one parser, for everyone who asks what is mounted where.

A line is `<id> <parent> <major:minor> <root> <mount point> <options> [<optional>...] -
<fstype> <source> <super options>` (proc(5)). The kernel writes a space, tab, newline or
backslash inside a field as a three-digit octal escape (`\\040`, `\\011`, `\\012`,
`\\134`); every such escape is decoded here, byte by byte, and the result is decoded as
the filesystem names it (`os.fsdecode`), so a mount point whose name is not UTF-8 still
names the same path. Reads a file and nothing else: callable from threads; the snapshots
(mount points to unmount) and the runtime (where the cgroup hierarchies are) both use it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import NamedTuple

MOUNTINFO = Path("/proc/self/mountinfo")

# An escaped byte: a backslash and three octal digits, at most \377.
_ESCAPE = re.compile(rb"\\([0-3][0-7]{2})")


class MountInfo(NamedTuple):
    """One mount, its fields decoded (paths as text, a tuple: most lines are only compared)."""

    mount_id: int
    parent_id: int
    root: str
    mount_point: str
    fstype: str
    source: str


def unescape(field: bytes) -> str:
    """A mountinfo field as the name it stands for: every octal escape decoded."""
    if b"\\" in field:
        field = _ESCAPE.sub(lambda match: bytes((int(match[1], 8),)), field)
    return os.fsdecode(field)


def parse(text: bytes) -> list[MountInfo]:
    """The mounts `text` (a mountinfo file's content) lists, in its order."""
    mounts: list[MountInfo] = []
    for line in text.splitlines():
        fields = line.split(b" ")
        # The optional fields end with a lone "-"; after it: fstype, source, super options.
        if len(fields) < 10 or b"-" not in fields[6:]:
            continue  # not a mount line: the kernel writes none such, but a copy may have one
        separator = fields.index(b"-", 6)
        mounts.append(MountInfo(
            mount_id=int(fields[0]),
            parent_id=int(fields[1]),
            root=unescape(fields[3]),
            mount_point=unescape(fields[4]),
            fstype=unescape(fields[separator + 1]),
            source=unescape(fields[separator + 2]),
        ))
    return mounts


def read_mounts(path: Path = MOUNTINFO) -> list[MountInfo]:
    """This process's mounts, read now."""
    return parse(path.read_bytes())
