"""`apply_layer` against hostile tars, called directly: nothing outside the target changes
(content, mode, owner, times, links of a real host file and directory in tmp_path), and
the limits (decompressed bytes, entries, special headers) stop a layer before it costs
more than they allow. What a layer makes inside the target gets the owner, mode and times
its header says, set without following a link.

The API side (the same layers through POST /snapshots/import, over a real uvicorn) is in
tests/api/test_snapshot_import_limits.py.
"""

from __future__ import annotations

import gzip
import io
import lzma
import os
import shutil
import stat
import tarfile
import tempfile
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest

from app.errors import CargoholdError, ErrorKind
from app.snapshots.layers import MAX_SPECIAL_HEADER, LayerLimits, apply_layer, is_private, remove_tree, walk_tree
from tests.layers import (
    ESCAPES,
    EVIL_UID,
    HOST_DATA,
    LAYER_TIME,
    OLD,
    Escape,
    Host,
    dir_,
    entry,
    giant_special_header,
    gzip_bomb,
    gzipped,
    link,
    reg,
    sym,
    tar,
)

LIMITS = LayerLimits(max_bytes=64 * 1024 * 1024, max_entries=10_000, devices=True)


def apply(body: bytes, target: Path, limits: LayerLimits = LIMITS) -> int:
    return apply_layer(io.BytesIO(body), target, limits)


@pytest.fixture
def host(tmp_path: Path) -> Host:
    directory = tmp_path / "host"
    directory.mkdir()
    file = directory / "secret"
    file.write_bytes(HOST_DATA)
    file.chmod(0o644)
    os.utime(file, (OLD, OLD))
    directory.chmod(0o755)
    os.utime(directory, (OLD, OLD))
    return Host(directory, file)


@pytest.fixture
def target(tmp_path: Path) -> Path:
    path = tmp_path / "target"
    path.mkdir()
    return path


class TestEscapes:
    @pytest.mark.parametrize("escape", ESCAPES)
    def test_host_unchanged(self, escape: Escape, host: Host, target: Path) -> None:
        before = host.state()
        try:
            apply(tar(*escape(host)), target)
        except CargoholdError as error:
            assert error.kind is ErrorKind.INVALID_ARGUMENT, error
        assert host.state() == before

    def test_the_reported_case_links_the_symlink_itself(self, host: Host, target: Path) -> None:
        """The case of issue 12: `x`, a hard link to `evil` -> host file, mode 04777, uid 1234."""
        before = host.state()
        apply(tar(sym("evil", str(host.file)), link("x", "evil", 0o4777, uid=EVIL_UID, gid=EVIL_UID)), target)
        assert host.state() == before
        x, evil = os.lstat(target / "x"), os.lstat(target / "evil")
        assert stat.S_ISLNK(x.st_mode)
        assert (x.st_ino, x.st_nlink) == (evil.st_ino, 2)
        assert os.readlink(target / "x") == str(host.file)

    def test_layer_over_a_tree_with_host_symlinks(self, host: Host, target: Path) -> None:
        """A lower layer's absolute symlinks (legitimate: /var/run -> /run) are never reached through."""
        apply(tar(sym("lnk", str(host.directory)), sym("file", str(host.file)), dir_("real")), target)
        before = host.state()
        for members in ([reg("lnk/x", b"pwned")], [reg("lnk/.wh.secret")], [reg("lnk/.wh..wh..opq")],
                        [link("h", "lnk/secret")]):
            with pytest.raises(CargoholdError) as refused:
                apply(tar(*members), target)
            assert refused.value.kind is ErrorKind.INVALID_ARGUMENT
        apply(tar(reg("file", b"replaced", 0o4755, uid=EVIL_UID), dir_("lnk", 0o700, uid=EVIL_UID)), target)
        assert host.state() == before
        assert (target / "file").read_bytes() == b"replaced"
        assert not (target / "lnk").is_symlink()

    def test_opaque_and_whiteouts_remove_lower_symlinks_not_what_they_name(self, host: Host, target: Path) -> None:
        apply(tar(dir_("d"), sym("d/dir", str(host.directory)), sym("d/file", str(host.file)),
                  sym("top", str(host.directory))), target)
        before = host.state()
        apply(tar(dir_("d"), reg("d/.wh..wh..opq"), reg(".wh.top")), target)
        assert host.state() == before
        assert os.listdir(target / "d") == [] and not os.path.lexists(target / "top")


class TestAttributes:
    def test_owner_mode_and_times_of_each_kind(self, target: Path) -> None:
        apply(tar(
            dir_("d", 0o750, uid=EVIL_UID, gid=42),
            reg("d/suid", b"#!x", 0o4755, uid=EVIL_UID, gid=42),
            sym("d/s", "suid", uid=EVIL_UID, gid=42),
            link("d/h", "d/suid"),
            entry("d/fifo", tarfile.FIFOTYPE, 0o640, uid=EVIL_UID),
            entry("d/null", tarfile.CHRTYPE, 0o666, devmajor=1, devminor=3),
            reg("implied/deep/file", b"x"),
        ), target)
        d = os.lstat(target / "d")
        assert (stat.S_IMODE(d.st_mode), d.st_uid, d.st_gid, d.st_mtime) == (0o750, EVIL_UID, 42, LAYER_TIME)
        suid = os.lstat(target / "d" / "suid")
        assert (stat.S_IMODE(suid.st_mode), suid.st_uid, suid.st_gid, suid.st_mtime) == (0o4755, EVIL_UID, 42,
                                                                                          LAYER_TIME)
        assert suid.st_nlink == 2
        s = os.lstat(target / "d" / "s")
        assert stat.S_ISLNK(s.st_mode) and (s.st_uid, s.st_gid, s.st_mtime) == (EVIL_UID, 42, LAYER_TIME)
        fifo = os.lstat(target / "d" / "fifo")
        assert stat.S_ISFIFO(fifo.st_mode) and stat.S_IMODE(fifo.st_mode) == 0o640 and fifo.st_uid == EVIL_UID
        null = os.lstat(target / "d" / "null")
        assert stat.S_ISCHR(null.st_mode) and os.major(null.st_rdev) == 1 and os.minor(null.st_rdev) == 3
        assert stat.S_IMODE(null.st_mode) == 0o666
        implied = os.lstat(target / "implied" / "deep")
        assert stat.S_IMODE(implied.st_mode) == 0o755  # as containerd, whatever the umask

    def test_devices_refused_where_others_can_reach_the_target(self) -> None:
        public = Path(tempfile.mkdtemp(prefix="cargohold-public-"))  # /tmp, outside pytest's 0700 base
        try:
            public.chmod(0o755)
            assert not is_private(public)
            limits = LayerLimits(LIMITS.max_bytes, LIMITS.max_entries, devices=is_private(public))
            with pytest.raises(CargoholdError) as refused:
                apply(tar(reg("ok"), entry("dev/sda", tarfile.BLKTYPE, 0o660, devmajor=8, devminor=0)), public,
                      limits)
            assert refused.value.kind is ErrorKind.INVALID_ARGUMENT
            assert "device" in refused.value.detail
            assert not (public / "dev" / "sda").exists()
            apply(tar(entry("fifo", tarfile.FIFOTYPE, 0o600)), public, limits)  # a fifo is no device
            public.chmod(0o700)
            assert is_private(public) and is_private(public / "snapshots" / "native" / "x")
        finally:
            shutil.rmtree(public)


# --- limits ------------------------------------------------------------------------------


def used_bytes(path: Path) -> int:
    return sum(os.lstat(os.path.join(d, f)).st_blocks * 512 for d, _, files in os.walk(path) for f in files)


class TestLimits:
    def test_gzip_bomb_stops_at_the_decompressed_limit(self, target: Path) -> None:
        body = gzip_bomb(256 * 1024 * 1024)
        assert len(body) < 400 * 1024
        limits = LayerLimits(max_bytes=8 * 1024 * 1024, max_entries=100)
        with pytest.raises(CargoholdError) as refused:
            apply(body, target, limits)
        assert refused.value.kind is ErrorKind.TOO_LARGE
        assert "decompressed" in refused.value.detail
        assert used_bytes(target) <= limits.max_bytes

    @pytest.mark.parametrize("compress", [pytest.param(gzip.compress, id="gzip"),
                                          pytest.param(lzma.compress, id="xz")])
    def test_compressed_layers_within_the_limit(self, target: Path, compress: Callable[[bytes], bytes]) -> None:
        body = compress(tar(reg("f", bytes(100_000))))
        assert apply(body, target, LayerLimits(max_bytes=200_000, max_entries=10)) == 1
        assert (target / "f").read_bytes() == bytes(100_000)

    @pytest.mark.parametrize("kind", [pytest.param(tarfile.XHDTYPE, id="pax"),
                                      pytest.param(tarfile.GNUTYPE_LONGNAME, id="gnu_long_name")])
    def test_giant_special_header_is_refused_before_it_is_read(self, target: Path, kind: bytes) -> None:
        body = gzipped(giant_special_header(kind, 200 * 1024 * 1024))
        assert len(body) < 400 * 1024
        tracemalloc.start()
        try:
            with pytest.raises(CargoholdError) as refused:
                apply(body, target)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert refused.value.kind is ErrorKind.TOO_LARGE
        assert str(MAX_SPECIAL_HEADER) in refused.value.detail
        assert peak < 8 * 1024 * 1024, f"{peak} bytes allocated to refuse it"
        assert os.listdir(target) == []

    def test_special_header_at_the_cap_is_read(self, target: Path) -> None:
        name = "d/" + "n" * 200 + "/" + "f" * 200
        assert apply(tar(reg(name, b"x"), fmt=tarfile.GNU_FORMAT), target) == 1
        assert (target / name).read_bytes() == b"x"

    def test_chain_of_pax_headers_is_refused(self, target: Path) -> None:
        record = b"18 comment=hello\n"
        header = tarfile.TarInfo("././@PaxHeader")
        header.type = tarfile.XHDTYPE
        header.size = len(record)
        one = header.tobuf(tarfile.USTAR_FORMAT) + record + bytes(-len(record) % 512)
        with pytest.raises(CargoholdError) as refused:
            apply(one * 500 + tar(reg("f")), target)
        assert refused.value.kind is ErrorKind.INVALID_ARGUMENT

    def test_global_pax_headers_are_skipped(self, target: Path) -> None:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT,
                          pax_headers={"comment": "c" * 100_000, "uid": "1234"}) as archive:
            info, data = reg("f", b"x")
            archive.addfile(info, io.BytesIO(data or b""))
        assert apply(buffer.getvalue(), target) == 1
        assert os.lstat(target / "f").st_uid == 0  # the global uid was not applied (as Go's reader)

    def test_too_many_entries(self, target: Path) -> None:
        limits = LayerLimits(max_bytes=LIMITS.max_bytes, max_entries=50)
        assert apply(tar(*(reg(f"f{i}") for i in range(50))), target, limits) == 50
        with pytest.raises(CargoholdError) as refused:
            apply(tar(*(reg(f"g{i}") for i in range(51))), target, limits)
        assert refused.value.kind is ErrorKind.TOO_LARGE
        assert "50" in refused.value.detail

    def test_implied_parent_directories_count(self, target: Path) -> None:
        deep = "/".join(["d"] * 30) + "/file"
        with pytest.raises(CargoholdError) as refused:
            apply(tar(reg(deep)), target, LayerLimits(max_bytes=LIMITS.max_bytes, max_entries=10))
        assert refused.value.kind is ErrorKind.TOO_LARGE

    @pytest.mark.parametrize("body", [
        pytest.param(b"\x28\xb5\x2f\xfd" + bytes(100), id="zstd_garbage"),
        pytest.param(gzip.compress(tar(reg("f", b"x" * 5000)))[:-200], id="gzip_truncated"),
        pytest.param(b"\x1f\x8b" + b"garbage" * 100, id="gzip_garbage"),
        pytest.param(bytes(100), id="short_header"),
        pytest.param(tar(reg("n" * 5000, b"x")), id="name_over_path_max"),
        pytest.param(tar(entry("x", b"S", 0o644, data=b"")), id="gnu_sparse"),
        pytest.param(tar(entry("x", b"Z", 0o644, data=b"")), id="unknown_type"),
        pytest.param(tar(reg("f", b"x", uid=2**40)), id="uid_out_of_range"),
    ])
    def test_bad_layers_are_400(self, target: Path, body: bytes) -> None:
        with pytest.raises(CargoholdError) as refused:
            apply(body, target)
        assert refused.value.kind is ErrorKind.INVALID_ARGUMENT, refused.value

    def test_entries_memory_does_not_grow_with_name_length(self, target: Path) -> None:
        """What is remembered of a member is a digest: 2,000 members of 3,000-byte names
        cost well under what their names would."""
        names = [f"{'a' * 250}/{'b' * 250}/{'c' * 250}/{i:05}" for i in range(2000)]
        body = tar(dir_("a" * 250), dir_(f"{'a' * 250}/{'b' * 250}"), dir_(f"{'a' * 250}/{'b' * 250}/{'c' * 250}"),
                   *(dir_(name) for name in names))
        tracemalloc.start()
        try:
            apply(body, target)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < sum(map(len, names)), peak


class TestDeepTrees:
    """Deeper than Python's stack (shutil.rmtree and os.walk recurse in 3.11): a layer can
    make such a tree (a name of up to PATH_MAX bytes), and a container can nest further.
    Each test removes its tree itself: pytest's own clean-up of tmp_path would fail on it."""

    DEPTH = 1500

    def test_made_whited_out_and_removed(self, target: Path) -> None:
        deep = "/".join(["a"] * self.DEPTH)
        try:
            apply(tar(reg(f"{deep}/f", b"x")), target)
            assert (target / deep / "f").read_bytes() == b"x"
            assert apply(tar(reg(".wh.a")), target) == 1
            assert os.listdir(target) == []

            apply(tar(reg(f"{deep}/f", b"x"), reg("b/keep", b"k"), reg(".wh..wh..opq")), target)
            remove_tree(target)
            assert not target.exists()
        finally:
            if target.exists():
                remove_tree(target)

    def test_walk_visits_every_level_once(self, target: Path, tmp_path: Path) -> None:
        seen: list[str] = []
        left: list[str] = []
        parent = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            apply(tar(reg("/".join(["d"] * self.DEPTH) + "/f", b"x"), reg("d/g", b"y")), target)
            walk_tree(parent, target.name, lambda fd, entries: seen.extend(e.name for e in entries),
                      lambda fd, name: left.append(name))
        finally:
            os.close(parent)
            remove_tree(target)
        assert sorted(seen) == sorted(["d"] * self.DEPTH + ["f", "g"])
        assert left == ["d"] * self.DEPTH + [target.name]
