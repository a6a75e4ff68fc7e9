"""Defaults for what a container's spec leaves out, as `runc spec` writes them.

A caller may send a minimal spec (`ociVersion`, `root`, `process.args`); the task then
gets the usual mounts (/proc, /dev, /sys ...), namespaces, masked paths, a PATH and
runc's default capabilities, so it runs like `docker run` would. Anything the spec does
give is kept as given.
"""

from __future__ import annotations

import copy
from typing import Any

DEFAULT_CAPABILITIES = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

DEFAULT_MOUNTS: list[dict[str, Any]] = [
    {"destination": "/proc", "type": "proc", "source": "proc"},
    {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
     "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
    {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
     "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
    {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
     "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
    {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
    {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
]

DEFAULT_LINUX: dict[str, Any] = {
    "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
    "maskedPaths": ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi"],
    "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
}


def with_defaults(spec: dict[str, Any]) -> dict[str, Any]:
    """A copy of `spec` with runc's defaults where it says nothing."""
    config = copy.deepcopy(spec)
    process = config.get("process")
    if isinstance(process, dict):
        process.setdefault("cwd", "/")
        process.setdefault("user", {"uid": 0, "gid": 0})
        process.setdefault("env", [DEFAULT_PATH])
        process.setdefault("capabilities", {kind: list(DEFAULT_CAPABILITIES)
                                            for kind in ("bounding", "effective", "permitted")})
        process.setdefault("noNewPrivileges", True)
    config.setdefault("mounts", copy.deepcopy(DEFAULT_MOUNTS))
    if config.get("linux") is None:  # `"linux": null` says nothing either
        config["linux"] = {}
    linux = config["linux"]
    for key, value in DEFAULT_LINUX.items():
        linux.setdefault(key, copy.deepcopy(value))
    return config
