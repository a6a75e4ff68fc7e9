"""Unpack's parts without a registry: chain ids as the OCI spec defines them, and what
`apply_layer` does for image layers (zstd, the diff id, a tar ended as Go's archive/tar allows)."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
from pathlib import Path

import pytest
import zstandard

from app.errors import CargoholdError, ErrorKind
from app.images.unpack import chain_ids
from app.snapshots.layers import LayerLimits, apply_layer
from tests.rootfs import files_tar

LIMITS = LayerLimits(max_bytes=1 << 30, max_entries=1000)




def sha256(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def test_chain_ids_follow_the_oci_definition() -> None:
    a, b, c = (sha256(x) for x in (b"a", b"b", b"c"))
    ab = sha256(f"{a} {b}".encode())
    assert chain_ids([a, b, c]) == [a, ab, sha256(f"{ab} {c}".encode())]
    assert chain_ids([]) == []


@pytest.mark.parametrize("compress", [
    pytest.param(lambda data: data, id="plain"),
    pytest.param(gzip.compress, id="gzip"),
    pytest.param(lambda data: zstandard.ZstdCompressor().compress(data), id="zstd"),
    # Two frames, as a parallel zstd writes: read across them.
    pytest.param(lambda data: zstandard.ZstdCompressor().compress(data[:1000])
                 + zstandard.ZstdCompressor().compress(data[1000:]), id="zstd_frames"),
])
def test_layer_applies_and_its_diff_id_covers_every_byte(tmp_path: Path, compress: object) -> None:
    tar = files_tar({"etc/hello": b"hello\n" * 300, "etc/other": b"x"})
    hashed = hashlib.sha256()
    assert callable(compress)
    assert apply_layer(io.BytesIO(compress(tar)), tmp_path, LIMITS, hashed) == 2
    assert (tmp_path / "etc" / "hello").read_bytes() == b"hello\n" * 300
    # The whole tar, its end-of-archive blocks and tarfile's padding to 10 KiB included.
    assert f"sha256:{hashed.hexdigest()}" == sha256(tar)


def test_zstd_bomb_stops_at_the_limit(tmp_path: Path) -> None:
    bomb = zstandard.ZstdCompressor().compress(files_tar({"big": bytes(4 << 20)}))
    with pytest.raises(CargoholdError) as refused:
        apply_layer(io.BytesIO(bomb), tmp_path, LayerLimits(max_bytes=1 << 20, max_entries=10))
    assert refused.value.kind is ErrorKind.TOO_LARGE


@pytest.mark.parametrize("cut", [5, 20, 1000, 10_000, -300, -4, -1])
def test_truncated_zstd_is_invalid(tmp_path: Path, cut: int) -> None:
    """zstandard reads a stream cut inside a frame as a short, clean end; the frame walk does not."""
    files = {f"f{i}": os.urandom(2000) + b"z" * 30_000 for i in range(8)}  # several blocks
    data = zstandard.ZstdCompressor(write_checksum=True).compress(files_tar(files))
    with pytest.raises(CargoholdError) as refused:
        apply_layer(io.BytesIO(data[:cut]), tmp_path, LIMITS)
    assert refused.value.kind is ErrorKind.INVALID_ARGUMENT
    assert "zstd" in refused.value.detail


def test_zstd_after_a_skippable_frame(tmp_path: Path) -> None:
    tar = files_tar({"f": b"data"})
    skippable = b"\x50\x2a\x4d\x18" + (3).to_bytes(4, "little") + b"abc"
    # A skippable frame first would hide the magic number from the sniffing: it comes second.
    data = zstandard.ZstdCompressor().compress(tar) + skippable
    apply_layer(io.BytesIO(data), tmp_path, LIMITS)
    assert (tmp_path / "f").read_bytes() == b"data"


def test_tar_ending_right_after_the_last_data_is_read_as_go_does(tmp_path: Path) -> None:
    """umoci writes such layers (no padding after the last file, no end blocks); Go's
    archive/tar, so containerd, reads them as ended."""
    tar = files_tar({"a": b"first", "etc/hello": b"hello\n"})
    cut = tar[:512 * 3 + 6]  # a's header and data block, etc/hello's header and its 6 bytes
    assert cut.endswith(b"hello\n")
    hashed = hashlib.sha256()
    apply_layer(io.BytesIO(gzip.compress(cut)), tmp_path, LIMITS, hashed)
    assert (tmp_path / "etc" / "hello").read_bytes() == b"hello\n"
    assert f"sha256:{hashed.hexdigest()}" == sha256(cut)


@pytest.mark.parametrize("keep", [512 * 3 + 3, 512 * 2 + 100, 512 + 2])
def test_tar_cut_inside_a_member_is_still_refused(tmp_path: Path, keep: int) -> None:
    tar = files_tar({"a": b"first", "etc/hello": b"hello\n"})
    with pytest.raises(CargoholdError) as refused:
        apply_layer(io.BytesIO(tar[:keep]), tmp_path, LIMITS)
    assert refused.value.kind is ErrorKind.INVALID_ARGUMENT
