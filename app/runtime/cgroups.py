"""Where a task's cgroup lives in each mounted hierarchy, and removing what is left."""

from __future__ import annotations

import functools
import os
from contextlib import suppress
from pathlib import Path


@functools.cache
def hierarchies() -> tuple[Path, ...]:
    """Mount points of every cgroup v1 hierarchy and of the v2 (unified) one. Read once:
    a host does not remount its cgroup hierarchies under a running daemon."""
    found = []
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            before, _, after = line.partition(" - ")
            if after.split()[0] in ("cgroup", "cgroup2"):
                found.append(Path(before.split()[4]))
    return tuple(found)


def remove_cgroup(relative: str, parents_up_to: str = "/cargohold") -> None:
    """rmdir `relative` in every hierarchy, then its parents up to and including
    `parents_up_to` while they are empty. Busy or missing directories are left alone."""
    depth = len(Path(relative).relative_to(Path(parents_up_to).parent).parts)
    for hierarchy in hierarchies():
        path = hierarchy / relative.lstrip("/")
        for _ in range(depth):
            try:
                os.rmdir(path)
            except FileNotFoundError:
                pass
            except OSError:
                break  # busy (other tasks) or not empty: leave it and its parents
            path = path.parent


def leftover_cgroups(root: str = "/cargohold") -> list[Path]:
    """Every cgroup directory below `root` in any hierarchy (for tests and recovery)."""
    found: list[Path] = []
    for hierarchy in hierarchies():
        # os.walk shrugs off directories that vanish while it looks (other tasks ending).
        for directory, subdirectories, _ in os.walk(hierarchy / root.lstrip("/")):
            found.extend(Path(directory) / name for name in subdirectories)
    return found


def remove_unowned(owned: set[tuple[str, str]], root: str = "/cargohold") -> list[Path]:
    """rmdir every `<root>/<namespace>/<id>` cgroup that no task owns, then the namespace
    and root dirs left empty. Busy ones (a process still inside) are left; returns what went."""
    removed: list[Path] = []
    for hierarchy in hierarchies():
        base = hierarchy / root.lstrip("/")
        try:
            namespaces = [entry for entry in base.iterdir() if entry.is_dir()]
        except OSError:
            continue
        for namespace in namespaces:
            with suppress(OSError):
                for group in [entry for entry in namespace.iterdir() if entry.is_dir()]:
                    if (namespace.name, group.name) not in owned:
                        with suppress(OSError):
                            os.rmdir(group)
                            removed.append(group)
            with suppress(OSError):
                os.rmdir(namespace)
        with suppress(OSError):
            os.rmdir(base)
    return removed
