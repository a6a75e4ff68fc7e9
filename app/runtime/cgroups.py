"""Where a task's cgroup lives in each mounted hierarchy, and removing what is left.

Each daemon keeps its tasks under a cgroup parent of its own, `/cargohold/<key>`, the key
derived from its state dir: two daemons on one host (another `--state`) never share a
cgroup, even for the same namespace and id, and one's start-up sweep never sees the
other's. Namespace and id become cgroup names escaped as systemd's `cg_escape` does, so
an id such as `tasks` or `memory.limit_in_bytes` never names a control file.
"""

from __future__ import annotations

import functools
import hashlib
import os
from contextlib import suppress
from pathlib import Path

from ..mountinfo import read_mounts

# Shared by every daemon on the host and never removed by one (another may be creating
# its own parent below it at that moment).
CGROUP_ROOT_NAME = "/cargohold"
# Files of a v1 cgroup dir whose names have no dot; every other control file (v1 and v2)
# is `<controller>.<name>`.
_UNDOTTED_CONTROL_FILES = frozenset({"tasks", "notify_on_release", "release_agent"})


def daemon_cgroup_parent(state: Path) -> str:
    """`/cargohold/<key>`: this daemon's cgroup parent, the key a digest of its state dir."""
    key = hashlib.sha256(str(state.resolve()).encode()).hexdigest()[:16]
    return f"{CGROUP_ROOT_NAME}/{key}"


def cgroup_name(identifier: str) -> str:
    """A namespace or id as a cgroup dir name: `_` first when it could name a control file
    (identifiers never begin with `_`, so the escape is unambiguous), as systemd does."""
    if "." in identifier or identifier in _UNDOTTED_CONTROL_FILES:
        return f"_{identifier}"
    return identifier


def task_cgroup(parent: str, namespace: str, task_id: str) -> str:
    """The cgroup (relative to each hierarchy's mount point) of one task."""
    return f"{parent}/{cgroup_name(namespace)}/{cgroup_name(task_id)}"


@functools.cache
def hierarchies() -> tuple[Path, ...]:
    """Mount points of every cgroup v1 hierarchy and of the v2 (unified) one. Read once:
    a host does not remount its cgroup hierarchies under a running daemon."""
    return tuple(Path(mount.mount_point) for mount in read_mounts() if mount.fstype in ("cgroup", "cgroup2"))


def frozen(relative: str) -> bool:
    """Whether the freezer holds cgroup `relative` (what `runc state` calls paused), read
    from the v1 freezer's `freezer.state` or v2's `cgroup.freeze`: a file, not a process."""
    for hierarchy in hierarchies():
        group = hierarchy / relative.lstrip("/")
        for name, values in (("freezer.state", ("FROZEN", "FREEZING")), ("cgroup.freeze", ("1",))):
            with suppress(OSError):
                if (group / name).read_text().strip() in values:
                    return True
    return False


def remove_cgroup(relative: str, parents_up_to: str) -> None:
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


def remove_unowned(owned: set[tuple[str, str]], root: str) -> list[Path]:
    """rmdir every `<root>/<namespace>/<id>` cgroup (`root`: this daemon's parent) that no
    task owns, then the namespace and root dirs left empty. Busy ones (a process still
    inside) are left; returns what went. `owned` holds (namespace, id) as the API names them."""
    owned_names = {(cgroup_name(namespace), cgroup_name(task_id)) for namespace, task_id in owned}
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
                    if (namespace.name, group.name) not in owned_names:
                        with suppress(OSError):
                            os.rmdir(group)
                            removed.append(group)
            with suppress(OSError):
                os.rmdir(namespace)
        with suppress(OSError):
            os.rmdir(base)
    return removed
