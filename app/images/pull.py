"""Pull: an image from a registry into the content store and the snapshots (containerd's `client.Pull`).

A pull walks what the reference names, storing every blob in the content store as it goes:

    resolve -> the target (index or manifest) -> the manifest of the platform chosen from an
    index (the host's by default) -> its config -> its layers (fetched concurrently, at most
    `PULL_CONCURRENCY` at once) -> unpacked as chain-id snapshots

Every blob and chain snapshot is held in the caller's lease before it is looked for or
stored, so a collection running meanwhile takes none of them; the caller writes the image
row (last) and then ends the lease. A pull that fails at any step leaves no image; what it
stored is garbage collection's once the lease ends.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..content import ContentStore
from ..errors import invalid
from ..gc import Lease
from ..models import Image, ImagePull
from ..snapshots.service import SnapshotService
from .descriptors import INDEX_TYPES, MANIFEST_TYPES, Descriptor
from .documents import Manifest, Platform, choose_manifest, image_draft, parse_json
from .references import Reference
from .registry import Repository, each_at_most
from .unpack import unpack

# What a pull reports as it goes, for a progress stream: (kind, data), kind one of
# "resolved" {reference, target}, "progress" {digest, media_type, bytes, total}, "unpacked"
# {layer, chain_id, reused}.
PullProgress = Callable[[str, dict[str, Any]], None]

# Blobs of one pull downloaded at once.
PULL_CONCURRENCY = 3


async def pull(content: ContentStore, snapshots: SnapshotService, repository: Repository, lease: Lease,
               namespace: str, body: ImagePull, reference: Reference, wanted: Platform,
               progress: PullProgress | None = None) -> Image:
    """Fetch (and with `body.unpack`, unpack) the image; return its row, not yet stored.
    Raises what the registry, the documents and unpack raise (see `ImageService.pull`)."""
    report: PullProgress = progress or (lambda kind, data: None)
    target = await repository.resolve()
    report("resolved", {"reference": str(reference), "target": {
        "media_type": target.media_type, "digest": target.digest, "size": target.size}})

    def fetched(desc: Descriptor, done: int) -> None:
        report("progress", {"digest": desc.digest, "media_type": desc.media_type, "bytes": done, "total": desc.size})

    size = 0  # of the index (if any) and of what the chosen manifest reaches
    manifest_desc = target
    platforms: list[str] = []
    if target.media_type in INDEX_TYPES:
        index_data = await repository.fetch_manifest(target)
        await lease.hold_content(target.digest)
        await content.put(index_data, target.digest)
        manifest_desc, platforms = choose_manifest(index_data, wanted, f'index {target.digest} of "{reference}"')
        size += target.size
    elif target.media_type not in MANIFEST_TYPES:
        raise invalid(f'image "{reference}" is a {target.media_type[:100]}, not an image manifest or index')
    manifest_data = await repository.fetch_manifest(manifest_desc)
    what = f'manifest {manifest_desc.digest} of "{reference}"'
    manifest = Manifest.parse(manifest_data, what)
    await lease.hold_content(manifest_desc.digest, manifest.config.digest)
    await repository.fetch(manifest.config, content, fetched)
    config = parse_json(await content.read(manifest.config.digest), f"{what}: config")
    diff_ids = manifest.diff_ids(config, what)
    if not platforms:
        own = Platform.of(config)
        platforms = [str(own)] if own is not None else []
        # A platform asked for by name must be the image's (the host's default is not enforced
        # on a plain manifest, as Docker pulls it and leaves running it to the runtime).
        if body.platform is not None and own is not None and not wanted.matches(own):
            raise invalid(f'image "{reference}" is for platform {own}, not {wanted}')
    await lease.hold_content(*(layer.digest for layer in manifest.layers))
    await each_at_most(PULL_CONCURRENCY, manifest.layers, lambda layer: repository.fetch(layer, content, fetched))
    # The manifest goes in last of the blobs: a manifest in the store means its parts are there.
    await content.put(manifest_data, manifest_desc.digest)
    if body.unpack:
        await unpack(namespace, body.snapshotter, content, snapshots, manifest.layers, diff_ids, lease,
                     lambda layer, chain_id, made: report("unpacked", {
                         "layer": layer.digest, "chain_id": chain_id, "reused": not made}))
    size += manifest_desc.size + manifest.size
    return image_draft(str(reference), target, size, platforms, manifest.config.digest)
