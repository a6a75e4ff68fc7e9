"""W6's images: OCI layouts written here, a local registry to serve them, and the floor.

`build_layout` writes one OCI image layout (oci-layout, index.json, blobs) holding:
  big      3 gzip layers: 20,000 small files; 2 large files; 2 more large files
  shared   big's first two layers and a new one (its pull should fetch only that one)
  huge     one layer of one large file (200 MiB; the daemon's RSS is watched while it is pulled)
  tiny     one layer of 10 small files (a fresh daemon's first pull, to warm it up)
With `quick` every size is about a tenth. The large files are 3/4 random bytes and 1/4
zeros (gzip gets them to about 75 %), the small ones slices of a pseudo-text (about 30 %):
what gzip meets in real images, and as registries serve them.

`bench_registry` runs Debian's docker-registry (the image tests' `running_registry`) on
127.0.0.1 with its storage in a temporary directory; `push` copies the layout's images
into it with skopeo. `blob_bytes` reads the registry's access log: what a pull downloaded.

The floor (`fetch_to_disk`, `untar`): the same manifest, config and layers fetched by a
plain httpx client, all layers at once, each streamed to a file and fsynced (a durable
store must, and Cargohold's does); then `tar -xzf` of each layer into a directory of its
own, in order, as a snapshotter applies them, each followed by a timed `sync -f` (syncfs:
what the daemon does after each layer; it flushes the whole filesystem, other people's
writes on a shared machine too, so it is reported apart).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import random
import re
import shutil
import subprocess
import tarfile
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from app.images.descriptors import OCI_INDEX, OCI_LAYER_GZIP, OCI_MANIFEST
from app.images.documents import host_platform_name
from tests.images.conftest import Registry, running_registry

REPOSITORY = "bench/big"
TAGS = ("big", "shared", "huge", "tiny")
REGISTRY_BINARIES = ("docker-registry", "skopeo")
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
CHUNK = 1024 * 1024


@dataclass(frozen=True)
class Blob:
    digest: str
    size: int
    media_type: str


@dataclass(frozen=True)
class Layer(Blob):
    diff_id: str
    what: str  # e.g. "20,000 small files"
    unpacked: int  # bytes of the uncompressed tar


@dataclass(frozen=True)
class BenchImage:
    tag: str
    manifest: Blob
    config: Blob
    layers: tuple[Layer, ...]

    @property
    def size(self) -> int:
        """Bytes of the manifest, the config and the layers: what a cold pull downloads."""
        return self.manifest.size + self.config.size + sum(layer.size for layer in self.layers)


@dataclass(frozen=True)
class Layout:
    directory: Path
    images: dict[str, BenchImage]

    def blob_path(self, digest: str) -> Path:
        return self.directory / "blobs" / "sha256" / digest.removeprefix("sha256:")


# --- building the layout ----------------------------------------------------------------------


class _Generated(io.RawIOBase):
    """`size` bytes of `rng`'s making, read in chunks (never whole in memory): each 64 KiB
    period is `random_share` random bytes, then zeros."""

    PERIOD = 65536

    def __init__(self, rng: random.Random, size: int, random_share: float) -> None:
        self._rng, self._left, self._offset = rng, size, 0
        self._random = int(self.PERIOD * random_share)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        wanted = min(len(buffer), self._left)
        out = bytearray()
        while len(out) < wanted:
            at = self._offset % self.PERIOD
            take = min(wanted - len(out), self.PERIOD - at)
            noise = min(take, max(0, self._random - at))
            out += self._rng.randbytes(noise) + bytes(take - noise)
            self._offset += take
        buffer[:wanted] = out
        self._left -= wanted
        return wanted


def _pseudo_text(rng: random.Random, size: int) -> bytes:
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
             for _ in range(4000)]
    text = bytearray()
    while len(text) < size:
        line = " ".join(rng.choice(words) for _ in range(12))
        text += f"{line} {rng.getrandbits(32):08x}\n".encode()
    return bytes(text[:size])


def _info(name: str, size: int = 0, directory: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.uid, info.gid = size, 1_700_000_000, 0, 0
    info.type, info.mode = (tarfile.DIRTYPE, 0o755) if directory else (tarfile.REGTYPE, 0o644)
    return info


def _small_files_tar(path: Path, rng: random.Random, count: int) -> str:
    text = _pseudo_text(rng, 1024 * 1024)
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as archive:
        archive.addfile(_info("usr", directory=True))
        archive.addfile(_info("usr/share", directory=True))
        for index in range(count):
            if index % 100 == 0:
                archive.addfile(_info(f"usr/share/d{index // 100:03d}", directory=True))
            size = rng.randint(200, 3000)
            start = rng.randrange(0, len(text) - size)
            name = f"usr/share/d{index // 100:03d}/f{index:05d}.txt"
            archive.addfile(_info(name, size), io.BytesIO(text[start:start + size]))
    return f"{count:,} small files"


def _large_files_tar(path: Path, rng: random.Random, directory: str, files: int, size: int,
                     random_share: float) -> str:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as archive:
        archive.addfile(_info(directory, directory=True))
        for index in range(files):
            archive.addfile(_info(f"{directory}/blob{index}.bin", size), _Generated(rng, size, random_share))
    return f"{files} file{'s' if files > 1 else ''} of {size / 2**20:.3g} MiB"


def _gzip_into(layout: Path, tar: Path) -> tuple[Blob, str, int]:
    """gzip `tar` (level 6, as docker and skopeo) into the layout's blobs; (blob, diff id, tar size)."""
    diff = hashlib.sha256()
    compressed = hashlib.sha256()
    squeeze = zlib.compressobj(6, zlib.DEFLATED, 31)
    staging = layout / "blobs" / "staging"
    size = 0
    with open(tar, "rb") as source, open(staging, "wb") as target:
        while chunk := source.read(CHUNK):
            diff.update(chunk)
            out = squeeze.compress(chunk)
            compressed.update(out)
            target.write(out)
            size += len(out)
        out = squeeze.flush()
        compressed.update(out)
        target.write(out)
        size += len(out)
    digest = f"sha256:{compressed.hexdigest()}"
    staging.rename(layout / "blobs" / "sha256" / compressed.hexdigest())
    unpacked = tar.stat().st_size
    tar.unlink()
    return Blob(digest, size, OCI_LAYER_GZIP), f"sha256:{diff.hexdigest()}", unpacked


def _put_json(layout: Path, document: object, media_type: str) -> Blob:
    data = json.dumps(document, separators=(",", ":")).encode()
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return Blob(f"sha256:{digest}", len(data), media_type)


def _descriptor(blob: Blob) -> dict[str, object]:
    return {"mediaType": blob.media_type, "digest": blob.digest, "size": blob.size}


def build_layout(directory: Path, quick: bool) -> Layout:
    """Write the OCI layout of big, shared and huge (see the module docstring)."""
    scale = 10 if quick else 1
    (directory / "blobs" / "sha256").mkdir(parents=True)
    (directory / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    rng = random.Random(6)

    def layer(write: Callable[[Path], str]) -> Layer:
        tar = directory / "layer.tar"
        what = write(tar)
        blob, diff_id, unpacked = _gzip_into(directory, tar)
        return Layer(blob.digest, blob.size, blob.media_type, diff_id, what, unpacked)

    def large(name: str, files: int, mib: int, random_share: float) -> Layer:
        return layer(lambda tar: _large_files_tar(tar, rng, f"opt/{name}", files, mib * 2**20 // scale, random_share))

    small = layer(lambda tar: _small_files_tar(tar, rng, 20_000 // scale))
    large_a, large_b = large("a", 2, 28, 0.75), large("b", 2, 28, 0.75)
    new = large("new", 1, 8, 0.75)
    one = large("huge", 1, 200, 1.0)
    few = layer(lambda tar: _small_files_tar(tar, rng, 10))
    os_name, architecture = host_platform_name().split("/")
    images: dict[str, BenchImage] = {}
    entries = []
    for tag, layers in (("big", (small, large_a, large_b)), ("shared", (small, large_a, new)), ("huge", (one,)),
                         ("tiny", (few,))):
        config = _put_json(directory, {
            "architecture": architecture, "os": os_name,
            "config": {"Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"], "Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": [item.diff_id for item in layers]},
        }, OCI_CONFIG)
        manifest = _put_json(directory, {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": _descriptor(config),
                                         "layers": [_descriptor(item) for item in layers]}, OCI_MANIFEST)
        images[tag] = BenchImage(tag, manifest, config, layers)
        entries.append({**_descriptor(manifest), "annotations": {"org.opencontainers.image.ref.name": tag}})
    (directory / "index.json").write_text(json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX,
                                                      "manifests": entries}))
    return Layout(directory, images)


# --- the registry -------------------------------------------------------------------------------


def missing_tools() -> list[str]:
    return [binary for binary in REGISTRY_BINARIES if shutil.which(binary) is None]


@contextmanager
def bench_registry(directory: Path, layout: Layout) -> Iterator[Registry]:
    """docker-registry on 127.0.0.1 (stopped by pid afterwards) holding the layout's images
    as <host>/bench/big:<tag>."""
    with running_registry(directory) as registry:
        for tag in TAGS:
            registry.push_layout(layout.directory, tag, REPOSITORY)
        yield registry


def reference(registry: Registry, tag: str) -> str:
    return f"{registry.host}/{REPOSITORY}:{tag}"


# "GET /v2/bench/big/blobs/sha256:... HTTP/1.1" 200 5000
ACCESS_LINE = re.compile(r'"GET /v2/\S+/(blobs|manifests)/(\S+) HTTP/[\d.]+" (\d{3}) (\d+)')


def log_offset(registry: Registry) -> int:
    return (registry.directory / "registry.log").stat().st_size


def blob_bytes(registry: Registry, since: int) -> dict[str, int]:
    """Bytes the registry sent per blob digest (and per manifest reference) since the log
    offset `since`, from its access log: one line per request, with the bytes written."""
    with open(registry.directory / "registry.log", "rb") as log:
        log.seek(since)
        text = log.read().decode(errors="replace")
    sent: dict[str, int] = {}
    for match in ACCESS_LINE.finditer(text):
        kind, name, _, written = match.groups()
        key = name if kind == "blobs" else f"manifest {name}"
        sent[key] = sent.get(key, 0) + int(written)
    return sent


# --- the floor ----------------------------------------------------------------------------------------


async def fetch_to_disk(registry: Registry, image: BenchImage, destination: Path) -> float:
    """The floor's download: the manifest, the config, then every layer at once, each
    streamed to a file and fsynced. Returns the seconds it took."""
    destination.mkdir(parents=True)
    base = f"{registry.url}/v2/{REPOSITORY}"
    started = time.perf_counter()
    async with httpx.AsyncClient(trust_env=False, timeout=120) as client:
        manifest = await client.get(f"{base}/manifests/{image.tag}", headers={"Accept": OCI_MANIFEST})
        manifest.raise_for_status()
        document = manifest.json()

        async def fetch(digest: str) -> None:
            async with client.stream("GET", f"{base}/blobs/{digest}") as response:
                response.raise_for_status()
                with open(destination / digest.removeprefix("sha256:"), "wb") as file:
                    async for chunk in response.aiter_raw(CHUNK):
                        file.write(chunk)
                    file.flush()
                    os.fsync(file.fileno())

        await fetch(document["config"]["digest"])
        await asyncio.gather(*(fetch(layer["digest"]) for layer in document["layers"]))
    return time.perf_counter() - started


def untar(image: BenchImage, blobs: Path, destination: Path) -> list[tuple[float, float]]:
    """`tar -xzf` each layer into a directory of its own, bottom first, then `sync -f`
    (syncfs, as the daemon after each layer); (tar, syncfs) seconds per layer."""
    spent = []
    for index, layer in enumerate(image.layers):
        target = destination / str(index)
        target.mkdir(parents=True)
        started = time.perf_counter()
        subprocess.run(["tar", "-xzf", str(blobs / layer.digest.removeprefix("sha256:")), "-C", str(target)],
                       check=True)
        extracted = time.perf_counter()
        subprocess.run(["sync", "-f", str(target)], check=True)
        spent.append((extracted - started, time.perf_counter() - extracted))
    return spent
