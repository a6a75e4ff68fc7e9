"""Layer tars built member by member, and hostile ones: the escapes that aim at a host
directory and file outside the target (`ESCAPES`, each given a `Host`), a gzip bomb, a
giant PAX or GNU header. Used by the unit tests of `apply_layer` and by the API tests
of snapshot import. Not a test module: test modules import it, never each other."""

from __future__ import annotations

import io
import os
import tarfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

HOST_DATA = b"host data that no tar may touch\n"


OLD = 1_000_000_000  # the host file's and directory's times: a layer setting "now" would show


LAYER_TIME = 1_500_000_000


EVIL_UID = 1234


Member = tuple[tarfile.TarInfo, bytes | None]


def entry(name: str, kind: bytes, mode: int = 0o644, data: bytes | None = None, **fields: Any) -> Member:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.mtime = LAYER_TIME
    info.size = len(data) if data is not None else 0
    for key, value in fields.items():
        setattr(info, key, value)
    return info, data


def reg(name: str, data: bytes = b"", mode: int = 0o644, **fields: Any) -> Member:
    return entry(name, tarfile.REGTYPE, mode, data, **fields)


def dir_(name: str, mode: int = 0o755, **fields: Any) -> Member:
    return entry(name, tarfile.DIRTYPE, mode, **fields)


def sym(name: str, target: str, **fields: Any) -> Member:
    return entry(name, tarfile.SYMTYPE, 0o777, linkname=target, **fields)


def link(name: str, target: str, mode: int = 0o644, **fields: Any) -> Member:
    return entry(name, tarfile.LNKTYPE, mode, linkname=target, **fields)


def tar(*members: Member, fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as archive:
        for info, data in members:
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


@dataclass(frozen=True)
class Host:
    """A real host directory and file outside the target, with everything a layer could change."""

    directory: Path
    file: Path

    def state(self) -> dict[str, Any]:
        def of(path: Path) -> tuple[int, int, int, int, int, int]:
            info = os.lstat(path)
            return (info.st_mode, info.st_uid, info.st_gid, info.st_mtime_ns, info.st_nlink, info.st_ino)

        return {
            "listing": sorted(os.listdir(self.directory)),
            "file": of(self.file),
            "directory": of(self.directory),
            "content": self.file.read_bytes(),
        }


# Each builds a layer aimed at the host; the layer is refused (400) or applied, and either
# way the host is as it was.
Escape = Callable[[Host], list[Member]]


ESCAPES: list[Any] = [
    pytest.param(lambda h: [sym("evil", str(h.file)), link("x", "evil", 0o4777, uid=EVIL_UID, gid=EVIL_UID)],
                 id="hardlink_to_symlink_to_host_file_setuid"),
    pytest.param(lambda h: [sym("a", "b"), sym("b", str(h.file)), link("x", "a", 0o4777, uid=EVIL_UID)],
                 id="hardlink_to_symlink_chain"),
    pytest.param(lambda h: [sym("evil", str(h.directory)), link("x", "evil", 0o777, uid=EVIL_UID)],
                 id="hardlink_to_symlink_to_host_dir"),
    pytest.param(lambda h: [sym("evil", str(h.file)), reg("evil", b"pwned", 0o4777, uid=EVIL_UID)],
                 id="symlink_replaced_then_written"),
    pytest.param(lambda h: [sym("a", "b"), sym("b", str(h.file)), reg("a", b"pwned", 0o4777, uid=EVIL_UID)],
                 id="symlink_chain_replaced_then_written"),
    pytest.param(lambda h: [sym("evil", str(h.file), uid=EVIL_UID, gid=EVIL_UID)], id="symlink_own_attributes"),
    pytest.param(lambda h: [sym("evil", str(h.directory)), dir_("evil", 0o777, uid=EVIL_UID)],
                 id="dir_over_symlink_to_host_dir"),
    pytest.param(lambda h: [sym("evil", str(h.file)), entry("evil", tarfile.FIFOTYPE, 0o4777, uid=EVIL_UID)],
                 id="fifo_over_symlink"),
    pytest.param(lambda h: [sym("evil", str(h.file)),
                            entry("evil", tarfile.CHRTYPE, 0o666, devmajor=1, devminor=3, uid=EVIL_UID)],
                 id="device_over_symlink"),
    pytest.param(lambda h: [sym("evil", str(h.directory)), reg("evil/secret", b"pwned", 0o777)],
                 id="file_through_symlink_to_host_dir"),
    pytest.param(lambda h: [sym("evil", str(h.directory)), dir_("evil/sub")], id="dir_through_symlink"),
    pytest.param(lambda h: [sym("a", "b"), sym("b", str(h.directory)), reg("a/secret", b"pwned")],
                 id="file_through_symlink_chain"),
    pytest.param(lambda h: [sym("evil", str(h.directory)), link("x", "evil/secret")],
                 id="hardlink_through_symlink_to_host_dir"),
    pytest.param(lambda h: [link("x", str(h.file))], id="hardlink_to_absolute_host_path"),
    pytest.param(lambda h: [link("x", f"../{h.directory.name}/secret")], id="hardlink_dotdot"),
    pytest.param(lambda h: [reg(str(h.file), b"pwned")], id="absolute_name"),
    pytest.param(lambda h: [reg(f"../{h.directory.name}/secret", b"pwned")], id="dotdot_name"),
    pytest.param(lambda h: [dir_("a"), reg(f"a/../../{h.directory.name}/secret", b"pwned")],
                 id="nested_dotdot_name"),
    pytest.param(lambda h: [sym("up", f"../{h.directory.name}")], id="relative_symlink_climbing_out"),
    pytest.param(lambda h: [sym("evil", str(h.directory)), reg("evil/.wh.secret")], id="whiteout_through_symlink"),
    pytest.param(lambda h: [sym("evil", str(h.directory)), reg("evil/.wh..wh..opq")], id="opaque_through_symlink"),
    pytest.param(lambda h: [sym("a", "b"), sym("b", str(h.directory)), reg("a/.wh..wh..opq")],
                 id="opaque_through_symlink_chain"),
    pytest.param(lambda h: [dir_("d"), reg(".wh.d"), sym("d", str(h.directory))],
                 id="dir_times_set_after_dir_became_symlink"),
    pytest.param(lambda h: [dir_("d"), reg(".wh.d"), sym("d", str(h.file)), link("e", "d", 0o4777, uid=EVIL_UID)],
                 id="dir_whited_out_then_symlink_then_hardlink"),
    pytest.param(lambda h: [sym("evil", str(h.file)), link("x", "evil"), reg("x", b"pwned", 0o4777)],
                 id="hardlink_to_symlink_then_written"),
    pytest.param(lambda h: [sym("lnk", str(h.directory)), reg(".wh.lnk")], id="whiteout_of_a_symlink_to_host_dir"),
    pytest.param(lambda h: [dir_("d"), sym("d/l", str(h.directory)), sym("d/f", str(h.file)), reg("d/.wh.l"),
                            reg("d/.wh.f")], id="whiteouts_of_symlinks_in_a_dir"),
]


def gzip_bomb(uncompressed: int) -> bytes:
    """A tar of one file of `uncompressed` zero bytes, gzipped without holding it whole."""
    header = tarfile.TarInfo("zeros")
    header.size = uncompressed
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    parts = [compressor.compress(header.tobuf(tarfile.USTAR_FORMAT))]
    block = bytes(1 << 20)
    for _ in range(uncompressed // len(block)):
        parts.append(compressor.compress(block))
    parts.append(compressor.flush())
    return b"".join(parts)


def giant_special_header(kind: bytes, size: int) -> Iterator[bytes]:
    """A special header (PAX `x`, GNU long name `L`) of `size` bytes, then a file."""
    header = tarfile.TarInfo("././@LongLink" if kind == tarfile.GNUTYPE_LONGNAME else "././@PaxHeader")
    header.type = kind
    header.size = size
    yield header.tobuf(tarfile.USTAR_FORMAT)
    if kind == tarfile.XHDTYPE:
        digits = len(str(size))
        record = b"%d comment=" % size
        yield record
        remaining = size - len(record) - 1
        assert len(str(size)) == digits
    else:
        remaining = size
    while remaining > 0:
        step = min(remaining, 1 << 20)
        yield b"a" * step
        remaining -= step
    if kind == tarfile.XHDTYPE:
        yield b"\n"
    yield bytes(-size % 512)
    yield reg("after", b"x")[0].tobuf(tarfile.USTAR_FORMAT)


def gzipped(parts: Iterator[bytes]) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    return b"".join([*(compressor.compress(part) for part in parts), compressor.flush()])
