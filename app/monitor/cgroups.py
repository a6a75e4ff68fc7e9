"""Reading a task's cgroup into `CgroupStats`, for cgroup v1 (and hybrid hosts, where
runc uses the v1 controllers) and v2 (unified).

Parsers take file *contents* so they are tested on copies of real files; `read_v1` and
`read_v2` do the (blocking, small) reads and are meant for a worker thread. A file that
is missing or unreadable leaves its figure None: a cgroup can vanish mid-read when its
task exits, and that is not an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
# v1's "no limit" is the largest page-aligned value; anything this large means unlimited.
V1_UNLIMITED = 1 << 62


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
    values: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            values[parts[0]] = int(parts[1])
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


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _int(path: Path) -> int | None:
    text = _read(path)
    return int(text.strip()) if text is not None and text.strip().lstrip("-").isdigit() else None


def read_oom_kill_count(relative: str, mode: CgroupMode, root: Path = CGROUP_ROOT) -> int | None:
    """Only the OOM kill counter (one small file): the cheap check before a full read.
    `root` as for read_v1 or read_v2, by `mode`. None if the cgroup is gone."""
    if mode.uses_v2:
        path = root / relative.lstrip("/") / "memory.events"
    else:
        path = root / "memory" / relative.lstrip("/") / "memory.oom_control"
    text = _read(path)
    return None if text is None else parse_flat_keyed(text).get("oom_kill", 0)


def read_v1(relative: str, root: Path = CGROUP_ROOT) -> CgroupStats | None:
    """The figures of v1 cgroup `relative` (e.g. /cargohold/ns/id); None if it is gone."""
    memory = root / "memory" / relative.lstrip("/")
    if not memory.is_dir():
        return None
    stats = CgroupStats()
    stats.memory_usage_bytes = _int(memory / "memory.usage_in_bytes")
    limit = _read(memory / "memory.limit_in_bytes")
    stats.memory_limit_bytes = parse_limit(limit) if limit is not None else None
    stats.memory_max_usage_bytes = _int(memory / "memory.max_usage_in_bytes")
    stats.memory_failcnt = _int(memory / "memory.failcnt")
    memory_stat = parse_flat_keyed(_read(memory / "memory.stat") or "")
    stats.memory_rss_bytes = memory_stat.get("total_rss", memory_stat.get("rss"))
    stats.memory_cache_bytes = memory_stat.get("total_cache", memory_stat.get("cache"))
    stats.oom_kill_count = parse_flat_keyed(_read(memory / "memory.oom_control") or "").get("oom_kill")
    usage_ns = _int(root / "cpuacct" / relative.lstrip("/") / "cpuacct.usage")
    stats.cpu_usage_seconds = usage_ns / 1e9 if usage_ns is not None else None
    cpu_stat = parse_flat_keyed(_read(root / "cpu" / relative.lstrip("/") / "cpu.stat") or "")
    if "throttled_time" in cpu_stat:
        stats.cpu_throttled_seconds = cpu_stat["throttled_time"] / 1e9
        stats.cpu_throttled_periods = cpu_stat.get("nr_throttled")
    pids = root / "pids" / relative.lstrip("/")
    stats.pids_current = _int(pids / "pids.current")
    pids_max = _read(pids / "pids.max")
    stats.pids_limit = parse_limit(pids_max) if pids_max is not None else None
    stats.blkio_bytes = parse_v1_blkio(_read(root / "blkio" / relative.lstrip("/") / "blkio.throttle.io_service_bytes")
                                       or "")
    return stats


def read_v2(relative: str, root: Path = CGROUP_ROOT) -> CgroupStats | None:
    """The figures of v2 cgroup `relative` under the unified mount `root`; None if gone."""
    group = root / relative.lstrip("/")
    if not group.is_dir():
        return None
    stats = CgroupStats()
    stats.memory_usage_bytes = _int(group / "memory.current")
    limit = _read(group / "memory.max")
    stats.memory_limit_bytes = parse_limit(limit) if limit is not None else None
    stats.memory_max_usage_bytes = _int(group / "memory.peak")
    memory_stat = parse_flat_keyed(_read(group / "memory.stat") or "")
    stats.memory_rss_bytes = memory_stat.get("anon")
    stats.memory_cache_bytes = memory_stat.get("file")
    events = parse_flat_keyed(_read(group / "memory.events") or "")
    stats.memory_failcnt = events.get("max")
    stats.oom_kill_count = events.get("oom_kill")
    cpu_stat = parse_flat_keyed(_read(group / "cpu.stat") or "")
    if "usage_usec" in cpu_stat:
        stats.cpu_usage_seconds = cpu_stat["usage_usec"] / 1e6
    if "throttled_usec" in cpu_stat:
        stats.cpu_throttled_seconds = cpu_stat["throttled_usec"] / 1e6
        stats.cpu_throttled_periods = cpu_stat.get("nr_throttled")
    stats.pids_current = _int(group / "pids.current")
    pids_max = _read(group / "pids.max")
    stats.pids_limit = parse_limit(pids_max) if pids_max is not None else None
    stats.blkio_bytes = parse_v2_io(_read(group / "io.stat") or "")
    return stats
