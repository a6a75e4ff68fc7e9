"""kill -9 of the daemon in the middle of a pull and in the middle of an unpack (a real
`cargohold serve`): after the restart there is no half-made image, the start-up collection
has reclaimed the interrupted pull's blobs, ingests and chain snapshots, and the same pull
then succeeds."""

from __future__ import annotations

import gzip
import hashlib
import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from app.images.descriptors import OCI_LAYER_GZIP
from app.images.registry import DOWNLOAD_CHUNK
from app.snapshots.mounts import mount_points_under
from tests.conftest import wait_for
from tests.images.conftest import (
    OneLayerImage,
    Registry,
    blobs,
    image_names,
    ingests,
    pull,
    push_image,
    snapshot_dirs,
    snapshots,
)
from tests.rootfs import files_tar
from tests.runtime.daemon import daemon_in

pytestmark = [pytest.mark.anyio, pytest.mark.registry]


@asynccontextmanager
async def pulling(client: httpx.AsyncClient, reference: str, until: str) -> AsyncIterator[None]:
    """A pull with a progress stream, held open from the first event line containing `until`
    to the end of the block (closing the stream would abandon the pull)."""
    body = {"reference": reference, "plain_http": True}
    async with client.stream("POST", "/images/pull", json=body, headers={"Accept": "text/event-stream"}) as response:
        assert response.status_code == 200
        # Kept referenced: a line iterator left to the garbage collector closes the response.
        lines = response.aiter_lines()
        seen: list[str] = []
        async for line in lines:
            seen.append(line)
            if until in line:
                break
        else:
            raise AssertionError(f"the pull ended before {until!r}: {seen}")
        try:
            yield
        except httpx.TransportError:
            pass  # the daemon was killed under the stream


async def test_kill_9_in_the_middle_of_a_pull(tmp_path: Path) -> None:
    tar = files_tar({"etc/big": os.urandom(4 << 20)})
    blob = gzip.compress(tar)
    with OneLayerImage(tar, blob, stall_after=len(blob) - 1000) as image:
        async with daemon_in(tmp_path) as daemon:
            client = await daemon.start()
            settings = daemon.settings

            def half_written() -> bool:
                return any(path.stat().st_size >= DOWNLOAD_CHUNK
                           for path in (settings.root / "content" / "ingest").glob("*/data"))

            async with pulling(client, image.reference, "event: progress"):
                await wait_for(half_written, "part of the layer is in an ingest")
                await daemon.stop(signal.SIGKILL)
            assert ingests(settings)
            client = await daemon.start()
            assert await image_names(client, {}) == []
            assert ingests(settings) == [] and blobs(settings) == set()
            image.stall_after = None
            response = await pull(client, {}, image.reference)
            assert response.status_code == 201, response.text
            assert image.layer in blobs(settings)


async def test_kill_9_in_the_middle_of_an_unpack(tmp_path: Path, registry: Registry) -> None:
    small = files_tar({"etc/first": b"first\n"})
    # Many small files: the second layer's unpack takes long enough to be interrupted.
    many = files_tar({f"usr/share/many/{i:05}": hashlib.sha256(str(i).encode()).digest() for i in range(6000)})
    push_image(registry, "test/gc-crash", "v1", [(small, gzip.compress(small), OCI_LAYER_GZIP),
                                                  (many, gzip.compress(many), OCI_LAYER_GZIP)])
    reference = f"{registry.host}/test/gc-crash:v1"
    async with daemon_in(tmp_path) as daemon:
        client = await daemon.start()
        settings = daemon.settings
        async with pulling(client, reference, "event: unpacked"):  # the first layer is committed
            # The second layer's data dir appears as its import starts.
            await wait_for(lambda: len(snapshot_dirs(settings)) == 2, "the second layer is being unpacked")
            await daemon.stop(signal.SIGKILL)
        client = await daemon.start()
        assert await image_names(client, {}) == []
        assert await snapshots(client, {}) == {}
        assert snapshot_dirs(settings) == set()
        assert mount_points_under(settings.root) == []
        assert blobs(settings) == set() and ingests(settings) == []
        response = await pull(client, {}, reference)
        assert response.status_code == 201, response.text
        assert len(await snapshots(client, {})) == 2
