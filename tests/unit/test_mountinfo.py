"""The one /proc/self/mountinfo parser (app/mountinfo.py) and the unmount-and-remove helper
built on it (app/snapshots/mounts.py): escapes decoded, on text as the kernel writes it
and on real mounts whose names need escaping."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from app.models import Mount
from app.mountinfo import MountInfo, parse, read_mounts, unescape
from app.runtime.cgroups import hierarchies
from app.snapshots.mounts import mount_all, mount_points_under, unmount_and_remove, unmount_under

# Written as the kernel writes them (fs/proc_namespace.c: mangle() escapes " \t\n\\").
TEXT = (
    b"22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
    b"31 22 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
    b"32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime shared:5 master:2 - cgroup cgroup rw,cpu\n"
    b"33 31 0:30 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n"
    b"40 22 0:40 / /srv/with\\040space/tab\\011and\\012newline rw - tmpfs my\\040src rw\n"
    b"41 22 0:41 /sub\\134dir /srv/back\\134slash rw - overlay overlay rw,lowerdir=/a\n"
    b"42 22 0:42 / /srv/caf\\303\\251/\\377 rw - tmpfs tmpfs rw\n"
)


def test_every_field_is_decoded() -> None:
    mounts = parse(TEXT)
    assert [m.mount_point for m in mounts] == [
        "/", "/sys/fs/cgroup", "/sys/fs/cgroup/cpu", "/sys/fs/cgroup/unified",
        "/srv/with space/tab\tand\nnewline", "/srv/back\\slash", os.fsdecode(b"/srv/caf\xc3\xa9/\xff"),
    ]
    assert mounts[4] == MountInfo(
        mount_id=40, parent_id=22, root="/", mount_point="/srv/with space/tab\tand\nnewline",
        fstype="tmpfs", source="my src",
    )
    assert mounts[5].root == "/sub\\dir"
    # Optional fields (shared:, master:) of any number: fstype is what follows the "-".
    assert [m.fstype for m in mounts] == ["ext4", "tmpfs", "cgroup", "cgroup2", "tmpfs", "overlay", "tmpfs"]
    # A name that is not UTF-8 names the same bytes on disk.
    assert os.fsencode(mounts[6].mount_point) == b"/srv/caf\xc3\xa9/\xff"


@pytest.mark.parametrize(("escaped", "name"), [
    pytest.param(b"a\\040b", "a b", id="space"),
    pytest.param(b"a\\011b", "a\tb", id="tab"),
    pytest.param(b"a\\012b", "a\nb", id="newline"),
    pytest.param(b"a\\134b", "a\\b", id="backslash"),
    pytest.param(b"a\\134040b", "a\\040b", id="an escaped backslash before digits"),
    pytest.param(b"\\043x", "#x", id="any octal escape"),
    pytest.param(b"a\\b", "a\\b", id="a lone backslash stays"),
])
def test_unescape(escaped: bytes, name: str) -> None:
    assert unescape(escaped) == name


def test_lines_that_are_not_mounts_are_skipped() -> None:
    assert parse(b"\n22 1 8:1 / / rw\nnot a mount line at all\n") == []


def test_cgroup_hierarchies_are_what_mountinfo_lists() -> None:
    listed = {Path(m.mount_point) for m in read_mounts() if m.fstype in ("cgroup", "cgroup2")}
    assert set(hierarchies()) == listed


def _require_root() -> None:
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("mounting needs root, and CI runs as root")
        pytest.skip("mounting needs root")


# Names the kernel must escape in mountinfo, and one it need not.
AWKWARD = ("with space", "tab\there", "new\nline", "back\\slash", "\\040literal", "café")


@pytest.mark.parametrize("name", AWKWARD)
def test_real_mount_points_are_found_and_removed(tmp_path: Path, name: str) -> None:
    """A tmpfs mounted below a dir of an awkward name, with a file in it: found at the
    path it has on disk, unmounted, and the whole tree removed."""
    _require_root()
    base = tmp_path / name
    point = base / "inner" / name
    point.mkdir(parents=True)
    mount_all([Mount(type="tmpfs", source="tmpfs", options=["size=1m"])], point)
    try:
        (point / "file").write_text("on the tmpfs")
        assert mount_points_under(tmp_path) == [point]
        assert str(point) in {m.mount_point for m in read_mounts()}
        unmount_and_remove(base)
        assert not base.exists()
        assert mount_points_under(tmp_path) == []
    finally:
        unmount_under(tmp_path)


def test_unmount_and_remove_takes_nested_mounts_deepest_first(tmp_path: Path) -> None:
    _require_root()
    outer = tmp_path / "outer x"
    outer.mkdir()
    mount_all([Mount(type="tmpfs", source="tmpfs", options=["size=1m"])], outer)
    inner = outer / "in\tner"
    try:
        inner.mkdir()
        mount_all([Mount(type="tmpfs", source="tmpfs", options=["size=1m"])], inner)
        assert mount_points_under(tmp_path) == [inner, outer]
        unmount_and_remove(outer)
        assert not outer.exists() and mount_points_under(tmp_path) == []
    finally:
        unmount_under(tmp_path)


def test_unmount_and_remove_of_nothing_is_nothing(tmp_path: Path) -> None:
    unmount_and_remove(tmp_path / "never made")
    assert list(tmp_path.iterdir()) == []
