"""Unpack: an image's layers as committed snapshots named by chain id (containerd's `core/unpack`).

The chain id of a layer names the whole stack up to it, as the OCI image spec defines:

    chainID(L0) = diffID(L0)
    chainID(Ln) = sha256(chainID(Ln-1) + " " + diffID(Ln))

so two images sharing their first layers share those snapshots. Each layer is applied over
its parent chain id by `SnapshotService.import_layer` (the same streamed, bounded, safe
import as a tar upload), its decompressed digest checked against the config's diff id; a
chain id already unpacked is reused without reading the layer. Layers are read from the
content store, so they must have been fetched first.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncGenerator, Callable, Sequence
from contextlib import aclosing

from ..content import ContentStore
from ..errors import invalid
from ..gc import Lease
from ..snapshots.service import SnapshotService
from .descriptors import DOCKER_LAYER_GZIP, OCI_LAYER, OCI_LAYER_GZIP, OCI_LAYER_ZSTD, Descriptor

log = logging.getLogger(__name__)

DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
# Layer media types unpack applies (the compression is sniffed from the bytes themselves).
LAYER_TYPES = frozenset({OCI_LAYER, OCI_LAYER_GZIP, OCI_LAYER_ZSTD, DOCKER_LAYER_GZIP, DOCKER_LAYER})


def chain_ids(diff_ids: Sequence[str]) -> list[str]:
    """The chain id of each layer, bottom first."""
    chain: list[str] = []
    for diff_id in diff_ids:
        if not chain:
            chain.append(diff_id)
        else:
            chain.append(f"sha256:{hashlib.sha256(f'{chain[-1]} {diff_id}'.encode()).hexdigest()}")
    return chain


def check_layers(layers: Sequence[Descriptor], diff_ids: Sequence[str], what: str) -> None:
    """INVALID_ARGUMENT unless every layer is of a type unpack applies and the config names
    one diff id per layer."""
    for layer in layers:
        if layer.media_type not in LAYER_TYPES:
            raise invalid(f"{what}: layer {layer.digest} has media type {layer.media_type[:100]!r}, which Cargohold "
                          "does not unpack (OCI or Docker tar layers: plain, gzip or zstd)")
    if len(layers) != len(diff_ids):
        raise invalid(f"{what}: the manifest has {len(layers)} layers but the config names {len(diff_ids)} diff ids")


async def unpack(namespace: str, snapshotter: str | None, store: ContentStore, snapshots: SnapshotService,
                 layers: Sequence[Descriptor], diff_ids: Sequence[str], lease: Lease,
                 done: Callable[[Descriptor, str, bool], None] | None = None) -> list[str]:
    """Apply `layers` (fetched into `store`) as committed snapshots; return their chain ids,
    bottom first. Each chain id is held in `lease` before it is looked for, so a collection
    cannot take a reused one from under the next layer. A failure leaves the layers below it
    unpacked (and, once the lease ends, GC's to reclaim) and nothing of the failing one.
    `done(layer, chain_id, made)` is called after each layer."""
    chain = chain_ids(diff_ids)
    snapshotter_name = snapshots.snapshotter(snapshotter).name
    parent: str | None = None
    for layer, diff_id, chain_id in zip(layers, diff_ids, chain, strict=True):
        await lease.hold_snapshot(namespace, snapshotter_name, chain_id)
        async with aclosing(_blob(store, layer.digest)) as body:
            _, made = await snapshots.import_layer(namespace, snapshotter, chain_id, parent, body, diff_id)
        log.debug("layer %s: %s snapshot %s", layer.digest, "unpacked as" if made else "reused", chain_id)
        if done is not None:
            done(layer, chain_id, made)
        parent = chain_id
    return chain


async def _blob(store: ContentStore, digest: str) -> AsyncGenerator[bytes, None]:
    """The blob's bytes, its file opened only once they are asked for: a layer whose snapshot
    exists already is never opened (closing an unstarted generator runs none of its code)."""
    chunks = await store.stream(digest)
    async with aclosing(chunks):
        async for chunk in chunks:
            yield chunk
