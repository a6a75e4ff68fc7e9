"""The cgroup readers (app/monitor/cgroup_stats.py) on files as the kernel writes them.

v2: copies of real v2 files in fixtures/cgroup_v2 (SOURCES.md says where each format
comes from), laid out in a fake unified tree for `read_v2`. v1: files captured on this
host (kernel 6.18, cgroup v1 controllers) from a cgroup that ran a 12 MiB process under
a CPU quota, did 4 MiB of direct I/O under a blkio throttle, and one that was OOM-killed
under a 32 MiB limit. `detect_mode` on fake trees and on the real /sys/fs/cgroup, and
the parser on a real v2 `cpu.stat` of a cgroup made under this host's unified mount.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from app.monitor.cgroup_stats import (
    CGROUP_ROOT,
    CgroupMode,
    CgroupStats,
    detect_mode,
    parse_flat_keyed,
    parse_limit,
    parse_v1_blkio,
    parse_v2_io,
    pick_flat_keyed,
    read_v1,
    read_v2,
)

FIXTURES = Path(__file__).parent / "fixtures" / "cgroup_v2"
V2_FILES = (
    "memory.events", "memory.stat", "cpu.stat", "io.stat", "pids.current", "pids.max",
    "memory.max", "memory.current", "memory.peak",
)
TASK = "/cargohold/default/web"

# --- v1 files captured on this host (cat of each, byte for byte) -------------------------

V1_MEMORY_STAT = """\
cache 94208
rss 19812352
rss_huge 0
shmem 0
mapped_file 0
dirty 4096
writeback 0
workingset_refault_anon 0
workingset_refault_file 0
swap 0
swapcached 0
pgpgin 8562
pgpgout 3702
pgfault 13452
pgmajfault 1
inactive_anon 19730432
active_anon 8192
inactive_file 4096
active_file 90112
unevictable 0
hierarchical_memory_limit 67108864
hierarchical_memsw_limit 9223372036854771712
total_cache 94208
total_rss 19812352
total_rss_huge 0
total_shmem 0
total_mapped_file 0
total_dirty 4096
total_writeback 0
total_workingset_refault_anon 0
total_workingset_refault_file 0
total_swap 0
total_swapcached 0
total_pgpgin 8562
total_pgpgout 3702
total_pgfault 13452
total_pgmajfault 1
total_inactive_anon 19730432
total_active_anon 8192
total_inactive_file 4096
total_active_file 90112
total_unevictable 0
"""
V1_OOM_CONTROL = "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n"
V1_OOM_CONTROL_AFTER_KILL = "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n"
V1_CPU_STAT = "nr_periods 15\nnr_throttled 13\nthrottled_time 975143428\nnr_bursts 0\nburst_time 0\n"
V1_BLKIO_SERVICE_BYTES = """\
254:0 Read 4194304
254:0 Write 4194304
254:0 Sync 8392704
254:0 Async 0
254:0 Discard 4096
254:0 Total 8392704
Total 8392704
"""
# A cgroup that did no throttled I/O: the kernel writes the total line alone.
V1_BLKIO_IDLE = "Total 0\n"
V1_UNLIMITED = "9223372036854771712\n"  # memory.limit_in_bytes of a cgroup without a limit (4 KiB pages)

V1_FILES: dict[str, dict[str, str]] = {
    "memory": {
        "memory.usage_in_bytes": "20639744\n",
        "memory.limit_in_bytes": "67108864\n",
        "memory.max_usage_in_bytes": "20819968\n",
        "memory.failcnt": "0\n",
        "memory.stat": V1_MEMORY_STAT,
        "memory.oom_control": V1_OOM_CONTROL,
    },
    "cpuacct": {"cpuacct.usage": "273364955\n"},
    "cpu": {"cpu.stat": V1_CPU_STAT},
    "blkio": {"blkio.throttle.io_service_bytes": V1_BLKIO_SERVICE_BYTES},
    "pids": {"pids.current": "3\n", "pids.max": "64\n"},
}


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def v2_tree(root: Path, relative: str = TASK, **replaced: str) -> Path:
    """A fake unified mount at `root` with the fixture files in cgroup `relative`;
    `replaced` overrides files by name (dots as underscores)."""
    group = root / relative.lstrip("/")
    group.mkdir(parents=True)
    for name in V2_FILES:
        shutil.copyfile(FIXTURES / name, group / name)
    for key, text in replaced.items():
        (group / key.replace("_", ".", 1)).write_text(text)
    return group


def v1_tree(root: Path, files: dict[str, dict[str, str]], relative: str = TASK) -> None:
    for controller, contents in files.items():
        group = root / controller / relative.lstrip("/")
        group.mkdir(parents=True)
        for name, text in contents.items():
            (group / name).write_text(text)


# --- v2 parsers -------------------------------------------------------------------------


def test_fixtures_are_written_as_the_kernel_writes_them() -> None:
    for name in V2_FILES:
        text = fixture(name)
        assert text.endswith("\n") and not text.endswith("\n\n"), name
        assert "\t" not in text and "\r" not in text, name


def test_memory_events() -> None:
    assert parse_flat_keyed(fixture("memory.events")) == {
        "low": 0, "high": 0, "max": 85, "oom": 2, "oom_kill": 1, "oom_group_kill": 0, "sock_throttled": 0,
    }


def test_memory_stat_v2_every_key() -> None:
    text = fixture("memory.stat")
    parsed = parse_flat_keyed(text)
    assert list(parsed) == [line.split()[0] for line in text.splitlines()]  # nothing dropped, order kept
    assert parsed["anon"] == 790425600
    assert parsed["file"] == 6502666240
    # Keys that share a prefix with the ones read are separate entries.
    assert parsed["anon_thp"] == 438304768 and parsed["file_mapped"] == 656187392
    assert parsed["thp_collapse_alloc"] == 443


def test_pick_flat_keyed_takes_the_keys_asked_and_agrees_with_the_full_parse() -> None:
    for text in (fixture("memory.stat"), V1_MEMORY_STAT):
        full = parse_flat_keyed(text)
        keys = [line.split()[0] for line in text.splitlines()]
        # First line, last line, and keys that are prefixes of others (anon / anon_thp, rss / rss_huge).
        assert pick_flat_keyed(text, *keys) == full
        assert pick_flat_keyed(text.rstrip("\n"), keys[-1]) == {keys[-1]: full[keys[-1]]}
    assert pick_flat_keyed(fixture("memory.stat"), "anon", "file") == {"anon": 790425600, "file": 6502666240}
    assert pick_flat_keyed(V1_MEMORY_STAT, "rss", "total_rss") == {"rss": parse_flat_keyed(V1_MEMORY_STAT)["rss"],
                                                                   "total_rss": 19812352}


def test_pick_flat_keyed_leaves_out_what_is_missing_or_not_a_number() -> None:
    assert pick_flat_keyed("anon 5\nfile x\n", "file", "shmem", "ano") == {}
    assert pick_flat_keyed("delta -3\n", "delta") == {"delta": -3}
    assert pick_flat_keyed("", "anon") == {}


def test_cpu_stat_v2() -> None:
    assert parse_flat_keyed(fixture("cpu.stat")) == {
        "usage_usec": 273364, "user_usec": 251093, "system_usec": 22271, "nice_usec": 0,
        "nr_periods": 15, "nr_throttled": 13, "throttled_usec": 975143, "nr_bursts": 0, "burst_usec": 0,
    }


def test_io_stat_sums_every_device() -> None:
    assert parse_v2_io(fixture("io.stat")) == {
        "read": 1459200 + 90430464,
        "write": 314773504 + 299008000,
    }


def test_io_stat_of_a_cgroup_without_io_is_empty() -> None:
    assert parse_v2_io("") == {}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("max\n", None),  # v2 memory.max / pids.max default
        ("33554432\n", 33554432),
        ("0\n", 0),
        ("64\n", 64),
        (V1_UNLIMITED, None),  # v1: the page-aligned LONG_MAX means no limit
        ("9223372036854775807\n", None),  # v1 memory.limit_in_bytes on 64 KiB-page kernels
        ("", None),
    ],
)
def test_parse_limit(text: str, expected: int | None) -> None:
    assert parse_limit(text) == expected


def test_single_value_files() -> None:
    assert int(fixture("memory.current")) == 20639744
    assert int(fixture("memory.peak")) == 33554432
    assert int(fixture("pids.current")) == 3
    assert parse_limit(fixture("memory.max")) is None
    assert parse_limit(fixture("pids.max")) is None


# --- read_v2 on a fake unified tree -----------------------------------------------------------


def test_read_v2_maps_every_field(tmp_path: Path) -> None:
    v2_tree(tmp_path)
    stats = read_v2(TASK, tmp_path)
    assert stats == CgroupStats(
        memory_usage_bytes=20639744,  # memory.current
        memory_limit_bytes=None,  # memory.max: max
        memory_max_usage_bytes=33554432,  # memory.peak
        memory_rss_bytes=790425600,  # memory.stat anon
        memory_cache_bytes=6502666240,  # memory.stat file
        memory_failcnt=85,  # memory.events max
        oom_kill_count=1,  # memory.events oom_kill
        cpu_usage_seconds=0.273364,  # cpu.stat usage_usec
        cpu_throttled_seconds=0.975143,  # cpu.stat throttled_usec
        cpu_throttled_periods=13,  # cpu.stat nr_throttled
        pids_current=3,
        pids_limit=None,  # pids.max: max
        blkio_bytes={"read": 91889664, "write": 613781504},
    )


def test_read_v2_with_limits(tmp_path: Path) -> None:
    v2_tree(tmp_path, memory_max="33554432\n", pids_max="100\n")
    stats = read_v2(TASK, tmp_path)
    assert stats is not None
    assert stats.memory_limit_bytes == 33554432
    assert stats.pids_limit == 100


def test_read_v2_without_the_cpu_controller(tmp_path: Path) -> None:
    """cpu.stat exists without the controller, with its three (6.x: four) base stats only."""
    v2_tree(tmp_path, cpu_stat="usage_usec 1500000\nuser_usec 1000000\nsystem_usec 500000\nnice_usec 0\n")
    stats = read_v2(TASK, tmp_path)
    assert stats is not None
    assert stats.cpu_usage_seconds == pytest.approx(1.5)
    assert stats.cpu_throttled_seconds is None and stats.cpu_throttled_periods is None


def test_read_v2_of_a_gone_cgroup_is_none(tmp_path: Path) -> None:
    assert read_v2(TASK, tmp_path) is None


def test_read_v2_of_a_cgroup_without_controllers(tmp_path: Path) -> None:
    (tmp_path / TASK.lstrip("/")).mkdir(parents=True)
    assert read_v2(TASK, tmp_path) == CgroupStats()


def test_read_v2_accepts_a_path_without_leading_slash(tmp_path: Path) -> None:
    v2_tree(tmp_path)
    assert read_v2(TASK.lstrip("/"), tmp_path) == read_v2(TASK, tmp_path)


# --- v1 parsers and read_v1 ---------------------------------------------------------------


def test_memory_stat_v1() -> None:
    parsed = parse_flat_keyed(V1_MEMORY_STAT)
    assert len(parsed) == len(V1_MEMORY_STAT.splitlines())
    assert parsed["total_rss"] == 19812352 and parsed["total_cache"] == 94208
    assert parsed["hierarchical_memsw_limit"] == 9223372036854771712


def test_oom_control_v1() -> None:
    assert parse_flat_keyed(V1_OOM_CONTROL) == {"oom_kill_disable": 0, "under_oom": 0, "oom_kill": 0}
    assert parse_flat_keyed(V1_OOM_CONTROL_AFTER_KILL)["oom_kill"] == 1


def test_cpu_stat_v1() -> None:
    assert parse_flat_keyed(V1_CPU_STAT) == {
        "nr_periods": 15, "nr_throttled": 13, "throttled_time": 975143428, "nr_bursts": 0, "burst_time": 0,
    }


def test_blkio_v1_counts_read_and_write_only() -> None:
    # Sync/Async split the same bytes again, Discard is not a read or a write, Total sums them.
    assert parse_v1_blkio(V1_BLKIO_SERVICE_BYTES) == {"read": 4194304, "write": 4194304}
    assert parse_v1_blkio(V1_BLKIO_IDLE) == {}


def test_blkio_v1_sums_devices() -> None:
    text = "254:0 Read 100\n254:0 Write 10\n254:0 Total 110\n8:0 Read 1\n8:0 Write 2\n8:0 Total 3\nTotal 113\n"
    assert parse_v1_blkio(text) == {"read": 101, "write": 12}


def test_read_v1_maps_every_field(tmp_path: Path) -> None:
    v1_tree(tmp_path, V1_FILES)
    assert read_v1(TASK, tmp_path) == CgroupStats(
        memory_usage_bytes=20639744,
        memory_limit_bytes=67108864,
        memory_max_usage_bytes=20819968,
        memory_rss_bytes=19812352,  # total_rss
        memory_cache_bytes=94208,  # total_cache
        memory_failcnt=0,
        oom_kill_count=0,
        cpu_usage_seconds=0.273364955,  # cpuacct.usage, ns
        cpu_throttled_seconds=0.975143428,  # cpu.stat throttled_time, ns
        cpu_throttled_periods=13,
        pids_current=3,
        pids_limit=64,
        blkio_bytes={"read": 4194304, "write": 4194304},
    )


def test_read_v1_after_an_oom_kill(tmp_path: Path) -> None:
    """The files of the cgroup a busybox shell was OOM-killed in (32 MiB limit), as read here."""
    files = {
        "memory": {
            "memory.usage_in_bytes": "139264\n",
            "memory.limit_in_bytes": "33554432\n",
            "memory.max_usage_in_bytes": "33554432\n",
            "memory.failcnt": "85\n",
            "memory.oom_control": V1_OOM_CONTROL_AFTER_KILL,
        }
    }
    v1_tree(tmp_path, files)
    stats = read_v1(TASK, tmp_path)
    assert stats is not None
    assert (stats.oom_kill_count, stats.memory_limit_bytes, stats.memory_max_usage_bytes, stats.memory_failcnt) == (
        1, 33554432, 33554432, 85,
    )
    # Controllers whose files are missing leave their figures None.
    assert stats.cpu_usage_seconds is None and stats.pids_current is None and stats.blkio_bytes == {}
    assert stats.memory_rss_bytes is None


def test_read_v1_unlimited(tmp_path: Path) -> None:
    files = {
        "memory": {**V1_FILES["memory"], "memory.limit_in_bytes": V1_UNLIMITED},
        "pids": {"pids.current": "1\n", "pids.max": "max\n"},
        "blkio": {"blkio.throttle.io_service_bytes": V1_BLKIO_IDLE},
    }
    v1_tree(tmp_path, files)
    stats = read_v1(TASK, tmp_path)
    assert stats is not None
    assert stats.memory_limit_bytes is None and stats.pids_limit is None and stats.blkio_bytes == {}


def test_read_v1_of_a_gone_cgroup_is_none(tmp_path: Path) -> None:
    # Only the memory hierarchy decides: the task's cgroup goes from all of them at once.
    v1_tree(tmp_path, {"pids": V1_FILES["pids"]})
    assert read_v1(TASK, tmp_path) is None


def test_read_v1_on_this_hosts_root_cgroup_formats() -> None:
    """The parsers read this machine's own v1 files (the root cgroup's, always present)."""
    memory = CGROUP_ROOT / "memory"
    if not (memory / "memory.stat").exists():
        pytest.skip("no cgroup v1 memory hierarchy here")
    assert {"total_rss", "total_cache", "rss", "cache"} <= set(parse_flat_keyed((memory / "memory.stat").read_text()))
    assert set(parse_flat_keyed((memory / "memory.oom_control").read_text())) >= {"oom_kill_disable", "oom_kill"}
    cpu_stat = CGROUP_ROOT / "cpu" / "cpu.stat"
    if cpu_stat.exists():
        assert {"nr_periods", "nr_throttled", "throttled_time"} <= set(parse_flat_keyed(cpu_stat.read_text()))
    blkio = CGROUP_ROOT / "blkio" / "blkio.throttle.io_service_bytes"
    if blkio.exists():
        text = blkio.read_text()
        assert text.splitlines()[-1].startswith("Total ")
        assert set(parse_v1_blkio(text)) <= {"read", "write"}


# --- detect_mode ------------------------------------------------------------------------------


def test_detect_mode_unified(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids rdma misc\n")
    (tmp_path / "cgroup.subtree_control").write_text("cpu io memory pids\n")
    assert detect_mode(tmp_path) is CgroupMode.UNIFIED
    assert CgroupMode.UNIFIED.uses_v2


def test_detect_mode_hybrid(tmp_path: Path) -> None:
    for controller in ("memory", "cpu", "cpuacct", "blkio", "pids", "systemd"):
        (tmp_path / controller).mkdir()
    (tmp_path / "memory" / "memory.stat").write_text(V1_MEMORY_STAT)
    (tmp_path / "unified").mkdir()
    (tmp_path / "unified" / "cgroup.controllers").write_text("")  # v2 mounted, every controller on v1
    assert detect_mode(tmp_path) is CgroupMode.HYBRID
    assert not CgroupMode.HYBRID.uses_v2  # runc uses the v1 controllers there


def test_detect_mode_legacy(tmp_path: Path) -> None:
    for controller in ("memory", "cpu", "cpuacct", "blkio", "pids", "systemd"):
        (tmp_path / controller).mkdir()
    (tmp_path / "memory" / "memory.stat").write_text(V1_MEMORY_STAT)
    assert detect_mode(tmp_path) is CgroupMode.LEGACY
    assert not CgroupMode.LEGACY.uses_v2


def mounted_mode() -> CgroupMode:
    """The mode as /proc/self/mountinfo tells it, independently of detect_mode."""
    kinds: dict[str, str] = {}
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            before, _, after = line.partition(" - ")
            kinds[before.split()[4]] = after.split()[0]
    if kinds.get("/sys/fs/cgroup") == "cgroup2":
        return CgroupMode.UNIFIED
    if kinds.get("/sys/fs/cgroup/unified") == "cgroup2":
        return CgroupMode.HYBRID
    return CgroupMode.LEGACY


def test_detect_mode_on_this_host() -> None:
    mode = detect_mode()
    assert mode is mounted_mode()
    if os.environ.get("CARGOHOLD_EXPECT_CGROUP_MODE"):
        assert mode.value == os.environ["CARGOHOLD_EXPECT_CGROUP_MODE"]


# --- a real v2 cgroup under this host's unified mount ---------------------------------------


def unified_mount() -> Path:
    for candidate in (CGROUP_ROOT, CGROUP_ROOT / "unified"):
        if (candidate / "cgroup.controllers").exists():
            return candidate
    pytest.skip("no cgroup v2 mount here")


def test_real_v2_cpu_stat(tmp_path: Path) -> None:
    """mkdir a v2 cgroup (cpu.stat exists whether or not the cpu controller is on), run a
    process in it that uses CPU, read it with parse_flat_keyed and read_v2, rmdir it."""
    root = unified_mount()
    if os.geteuid() != 0:
        pytest.skip("creating a cgroup needs root")
    relative = f"cargohold-test-{os.getpid()}"
    group = root / relative
    group.mkdir()
    try:
        fresh = parse_flat_keyed((group / "cpu.stat").read_text())
        assert {"usage_usec", "user_usec", "system_usec"} <= set(fresh)
        assert fresh["usage_usec"] == 0
        burn = (
            "import sys, time\n"
            "open(sys.argv[1] + '/cgroup.procs', 'w').write('0')\n"
            "t = time.process_time()\n"
            "while time.process_time() - t < 0.3: pass\n"
        )
        subprocess.run([sys.executable, "-c", burn, str(group)], check=True, timeout=30)
        text = (group / "cpu.stat").read_text()
        parsed = parse_flat_keyed(text)
        assert list(parsed) == [line.split()[0] for line in text.splitlines()]
        assert parsed["usage_usec"] >= 250_000
        assert parsed["usage_usec"] >= parsed["user_usec"]
        stats = read_v2(relative, root)
        assert stats is not None
        assert stats.cpu_usage_seconds is not None and stats.cpu_usage_seconds >= 0.25
        controllers = (root / "cgroup.controllers").read_text().split()
        if "memory" not in controllers:  # hybrid: memory is on v1, so no memory.* here
            assert stats.memory_usage_bytes is None and stats.oom_kill_count is None
        if "pids" not in controllers:
            assert stats.pids_current is None
    finally:
        group.rmdir()
    assert read_v2(relative, root) is None
