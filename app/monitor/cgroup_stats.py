"""Reading a task's cgroup into `CgroupStats`, for cgroup v1 (and hybrid hosts, where
runc uses the v1 controllers) and v2 (unified).

Parsers take file *contents* so they are tested on copies of real files; `read_v1` and
`read_v2` do the (blocking, small) reads and are meant for a worker thread. A file that
is missing or unreadable leaves its figure None: a cgroup can vanish mid-read when its
task exits, and that is not an error.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
# v1's "no limit" is the largest page-aligned value; anything this large means unlimited.
V1_UNLIMITED = 1 << 62
_READ_SIZE = 65536

Reader = Callable[[str], str | None]  # a file's text, None if it can't be read


class CgroupMode(StrEnum):
    LEGACY = "legacy"
    HYBRID = "hybrid"
    UNIFIED = "unified"

    @property
    def uses_v2(self) -> bool:
        return self is CgroupMode.UNIFIED


def detect_mode(root: Path = CGROUP_ROOT) -> CgroupMode:
    """unified: v2 only; hybrid: v1 controllers plus a v2 mount (runc uses v1); legacy: v1."""
    if (root / "cgroup.controllers").exists():
        return CgroupMode.UNIFIED
    if (root / "unified" / "cgroup.controllers").exists():
        return CgroupMode.HYBRID
    return CgroupMode.LEGACY


@dataclass
class CgroupStats:
    memory_usage_bytes: int | None = None
    memory_limit_bytes: int | None = None  # None: unlimited
    memory_max_usage_bytes: int | None = None
    memory_rss_bytes: int | None = None
    memory_cache_bytes: int | None = None
    memory_failcnt: int | None = None
    oom_kill_count: int | None = None
    cpu_usage_seconds: float | None = None
    cpu_throttled_seconds: float | None = None
    cpu_throttled_periods: int | None = None
    pids_current: int | None = None
    pids_limit: int | None = None
    blkio_bytes: dict[str, int] = field(default_factory=dict)  # op ("read", "write") -> bytes


def parse_flat_keyed(text: str) -> dict[str, int]:
    """`key value` lines (memory.stat, cpu.stat, memory.events, memory.oom_control)."""
    words = text.split()
    lines = text.splitlines()
    pairs: Iterable[tuple[str, str]]
    if len(words) == 2 * len(lines):  # every line is `key value`, as the kernel writes them
        pairs = zip(words[0::2], words[1::2], strict=True)
    else:
        pairs = ((parts[0], parts[1]) for parts in map(str.split, lines) if len(parts) == 2)
    return {key: int(value) for key, value in pairs if value.lstrip("-").isdigit()}


def pick_flat_keyed(text: str, *keys: str) -> dict[str, int]:
    """Only `keys` of a flat-keyed file: memory.stat has some forty lines, and parsing them
    all was the largest part of reading a cgroup."""
    searched = "\n" + text  # so that the first key, too, follows a newline
    values: dict[str, int] = {}
    for key in keys:
        at = searched.find(f"\n{key} ")
        if at >= 0:
            start = at + len(key) + 2
            end = searched.find("\n", start)
            value = searched[start:end] if end >= 0 else searched[start:]
            if value.lstrip("-").isdigit():
                values[key] = int(value)
    return values


def parse_v1_blkio(text: str) -> dict[str, int]:
    """blkio.throttle.io_service_bytes: `MAJ:MIN Op bytes` lines, summed per op."""
    totals: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] in ("Read", "Write") and parts[2].isdigit():
            op = parts[1].lower()
            totals[op] = totals.get(op, 0) + int(parts[2])
    return totals


def parse_v2_io(text: str) -> dict[str, int]:
    """io.stat: `MAJ:MIN rbytes=N wbytes=N rios=N ...` lines, summed per op."""
    totals: dict[str, int] = {}
    for line in text.splitlines():
        for pair in line.split()[1:]:
            key, _, value = pair.partition("=")
            if key in ("rbytes", "wbytes") and value.isdigit():
                op = "read" if key == "rbytes" else "write"
                totals[op] = totals.get(op, 0) + int(value)
    return totals


def parse_limit(text: str) -> int | None:
    """A v2 limit (`max` means none) or a v1 one (a huge number means none)."""
    value = text.strip()
    if value == "max" or not value.lstrip("-").isdigit():
        return None
    number = int(value)
    return None if number >= V1_UNLIMITED else number


def _pread_all(fd: int) -> str:
    data = chunk = os.pread(fd, _READ_SIZE, 0)
    while len(chunk) == _READ_SIZE:  # only a big blkio/io.stat needs more than one read
        chunk = os.pread(fd, _READ_SIZE, len(data))
        data += chunk
    return data.decode()


def read_file(path: str) -> str | None:
    """One read of a small file (os.open/os.pread: pathlib costs several times the
    kernel's own read here)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return _pread_all(fd)
    except OSError:
        return None
    finally:
        os.close(fd)


class OpenFiles:
    """One cgroup's files kept open between polls and re-read from offset 0 (a cgroup file
    regenerates its content at every read from the start). That spares the kernel's path
    walk and the open and close: a third of the cost of opening them each time. One
    thread at a time may use it, and close() it."""

    def __init__(self) -> None:
        self._fds: dict[str, int] = {}

    def read(self, path: str) -> str | None:
        fd = self._fds.get(path)
        if fd is None:
            try:
                fd = self._fds[path] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                return None
        try:
            return _pread_all(fd)
        except OSError:  # the cgroup is gone (ENODEV)
            os.close(self._fds.pop(path))
            return None

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


def _int_of(text: str | None) -> int | None:
    if text is None:
        return None
    text = text.strip()
    return int(text) if text.lstrip("-").isdigit() else None


def read_oom_kill_count(relative: str, mode: CgroupMode, root: Path = CGROUP_ROOT) -> int | None:
    """Only the OOM kill counter (one small file): the cheap check before a full read.
    `root` as for read_v1 or read_v2, by `mode`. None if the cgroup is gone."""
    group = relative.strip("/")
    text = read_file(f"{root}/{group}/memory.events" if mode.uses_v2 else f"{root}/memory/{group}/memory.oom_control")
    return None if text is None else parse_flat_keyed(text).get("oom_kill", 0)


def read_v1(relative: str, root: Path = CGROUP_ROOT, read: Reader = read_file) -> CgroupStats | None:
    """The figures of v1 cgroup `relative` (e.g. /cargohold/ns/id); None if it is gone.
    `read` reads one file (`OpenFiles.read` to keep them open between polls)."""
    group = relative.strip("/")
    memory = f"{root}/memory/{group}"
    usage = read(f"{memory}/memory.usage_in_bytes")
    if usage is None and not os.path.isdir(memory):
        return None
    stats = CgroupStats()
    stats.memory_usage_bytes = _int_of(usage)
    limit = read(f"{memory}/memory.limit_in_bytes")
    stats.memory_limit_bytes = parse_limit(limit) if limit is not None else None
    stats.memory_max_usage_bytes = _int_of(read(f"{memory}/memory.max_usage_in_bytes"))
    stats.memory_failcnt = _int_of(read(f"{memory}/memory.failcnt"))
    memory_stat = pick_flat_keyed(read(f"{memory}/memory.stat") or "", "total_rss", "rss", "total_cache", "cache")
    stats.memory_rss_bytes = memory_stat.get("total_rss", memory_stat.get("rss"))
    stats.memory_cache_bytes = memory_stat.get("total_cache", memory_stat.get("cache"))
    stats.oom_kill_count = parse_flat_keyed(read(f"{memory}/memory.oom_control") or "").get("oom_kill")
    usage_ns = _int_of(read(f"{root}/cpuacct/{group}/cpuacct.usage"))
    stats.cpu_usage_seconds = usage_ns / 1e9 if usage_ns is not None else None
    cpu_stat = parse_flat_keyed(read(f"{root}/cpu/{group}/cpu.stat") or "")
    if "throttled_time" in cpu_stat:
        stats.cpu_throttled_seconds = cpu_stat["throttled_time"] / 1e9
        stats.cpu_throttled_periods = cpu_stat.get("nr_throttled")
    pids = f"{root}/pids/{group}"
    stats.pids_current = _int_of(read(f"{pids}/pids.current"))
    pids_max = read(f"{pids}/pids.max")
    stats.pids_limit = parse_limit(pids_max) if pids_max is not None else None
    stats.blkio_bytes = parse_v1_blkio(read(f"{root}/blkio/{group}/blkio.throttle.io_service_bytes") or "")
    return stats


def read_v2(relative: str, root: Path = CGROUP_ROOT, read: Reader = read_file) -> CgroupStats | None:
    """The figures of v2 cgroup `relative` under the unified mount `root`; None if gone."""
    group = f"{root}/{relative.strip('/')}"
    usage = read(f"{group}/memory.current")
    if usage is None and not os.path.isdir(group):
        return None
    stats = CgroupStats()
    stats.memory_usage_bytes = _int_of(usage)
    limit = read(f"{group}/memory.max")
    stats.memory_limit_bytes = parse_limit(limit) if limit is not None else None
    stats.memory_max_usage_bytes = _int_of(read(f"{group}/memory.peak"))
    memory_stat = pick_flat_keyed(read(f"{group}/memory.stat") or "", "anon", "file")
    stats.memory_rss_bytes = memory_stat.get("anon")
    stats.memory_cache_bytes = memory_stat.get("file")
    events = parse_flat_keyed(read(f"{group}/memory.events") or "")
    stats.memory_failcnt = events.get("max")
    stats.oom_kill_count = events.get("oom_kill")
    cpu_stat = parse_flat_keyed(read(f"{group}/cpu.stat") or "")
    if "usage_usec" in cpu_stat:
        stats.cpu_usage_seconds = cpu_stat["usage_usec"] / 1e6
    if "throttled_usec" in cpu_stat:
        stats.cpu_throttled_seconds = cpu_stat["throttled_usec"] / 1e6
        stats.cpu_throttled_periods = cpu_stat.get("nr_throttled")
    stats.pids_current = _int_of(read(f"{group}/pids.current"))
    pids_max = read(f"{group}/pids.max")
    stats.pids_limit = parse_limit(pids_max) if pids_max is not None else None
    stats.blkio_bytes = parse_v2_io(read(f"{group}/io.stat") or "")
    return stats
