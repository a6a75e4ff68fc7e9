"""Push: an image from the content store to a registry (containerd's `client.Push`), and the
plan of what an image is made of that export shares.

An image's plan is the descriptor that goes under the tag and the manifests it needs, each
with its config and layers, every blob held in the caller's lease and checked present.
An index whose manifests are not all in the content store (a pull keeps only the platform
it chose) is planned as the manifest of the platform pulled, alone, as Docker pushes and
saves a single-platform image.

A push sends the configs and layers first (a blob the registry has is not sent: HEAD
first; one in the image's own repository on the same registry is mounted instead of
uploaded), then the manifests, then the top under the reference's tag or digest, telling
its caller of each step (`PushProgress`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..content import ContentStore
from ..errors import CargoholdError, ErrorKind, invalid
from ..gc import Lease
from ..models import Image
from .descriptors import INDEX_TYPES, MANIFEST_TYPES, Descriptor
from .documents import descriptors_in, parse_json
from .references import Reference, parse_reference
from .registry import Repository, each_at_most

# Blobs of one push uploaded (or checked, or mounted) at once.
PUSH_CONCURRENCY = 3

# What a push reports as it goes, for a progress stream (as a pull's): (kind, data), kind one
# of "progress" {digest, media_type, bytes, total} per blob as it is sent (once, at its size,
# for one not sent), "pushed" {digest, media_type, size, outcome: uploaded|mounted|exists}
# per blob, "manifest" {digest, media_type, tag} per manifest put (the top last).
PushProgress = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True)
class PlannedManifest:
    """A manifest to push or export: its descriptor, its bytes, and its config and layers."""

    desc: Descriptor
    data: bytes
    blobs: list[Descriptor]


@dataclass(frozen=True)
class Plan:
    """What an image is made of: the top (an index or a manifest) and the manifests under it."""

    top: Descriptor
    top_data: bytes
    manifests: list[PlannedManifest]

    @property
    def blobs(self) -> list[Descriptor]:
        """The configs and layers of every manifest, each once."""
        return list({blob.digest: blob for manifest in self.manifests for blob in manifest.blobs}.values())


@dataclass
class Pushed:
    """What became of each blob: uploaded, mounted from another repository, or there already."""

    uploaded: list[str] = field(default_factory=list)
    mounted: list[str] = field(default_factory=list)
    exists: list[str] = field(default_factory=list)

    def record(self, outcome: str, digest: str) -> None:
        """`outcome` as `Repository.push_blob` says it: "uploaded", "mounted" or "exists"."""
        {"uploaded": self.uploaded, "mounted": self.mounted, "exists": self.exists}[outcome].append(digest)


async def plan(content: ContentStore, image: Image, lease: Lease) -> Plan:
    """The plan of `image`, every blob in it held in `lease`. Raises CONFLICT when a blob is
    missing from the content store, INVALID_ARGUMENT for a target that is neither an index
    nor a manifest."""
    target = Descriptor(image.target.media_type, image.target.digest, image.target.size)
    await lease.hold_content(target.digest)
    incomplete = CargoholdError(ErrorKind.CONFLICT, f'image "{image.name}" is incomplete in the content '
                                "store; pull it again")
    if not await content.exists(target.digest):
        raise incomplete
    data = await content.read(target.digest)
    if target.media_type in MANIFEST_TYPES:
        manifest = await _planned(content, target, data, lease)
        if manifest is None:
            raise incomplete
        return Plan(target, data, [manifest])
    if target.media_type not in INDEX_TYPES:
        raise invalid(f'image "{image.name}" is a {target.media_type[:100]}, which Cargohold does not push')
    what = f'index {target.digest} of image "{image.name}"'
    manifests, whole = [], True
    for entry in descriptors_in(parse_json(data, what), "manifests", what):
        await lease.hold_content(entry.digest)
        found = None
        if entry.media_type in MANIFEST_TYPES and await content.exists(entry.digest):
            found = await _planned(content, entry, await content.read(entry.digest), lease)
        if found is None:
            whole = False
        else:
            manifests.append(found)
    if whole:
        return Plan(target, data, manifests)
    pulled = next((m for m in manifests if m.blobs[0].digest == image.config_digest), None)
    if pulled is None:
        raise incomplete
    return Plan(pulled.desc, pulled.data, [pulled])


async def _planned(content: ContentStore, desc: Descriptor, data: bytes, lease: Lease) -> PlannedManifest | None:
    """The manifest `desc` with its config and layers; None if one of them is not in the store."""
    what = f"manifest {desc.digest}"
    manifest = parse_json(data, what)
    blobs = [Descriptor.from_json(manifest.get("config"), f"{what}: config"),
             *descriptors_in(manifest, "layers", what)]
    await lease.hold_content(*(blob.digest for blob in blobs))
    for blob in blobs:
        if not await content.exists(blob.digest):
            return None
    return PlannedManifest(desc, data, blobs)


async def push(content: ContentStore, repository: Repository, image: Plan, mount_from: str | None,
               progress: PushProgress | None = None) -> Pushed:
    """Send `image` to `repository`; the top goes under the repository reference's tag or digest."""
    pushed = Pushed()
    report: PushProgress = progress or (lambda kind, data: None)

    def sent(desc: Descriptor, done: int) -> None:
        report("progress", {"digest": desc.digest, "media_type": desc.media_type, "bytes": done, "total": desc.size})

    async def push_blob(blob: Descriptor) -> None:
        outcome = await repository.push_blob(blob, content, mount_from, sent)
        pushed.record(outcome, blob.digest)
        if outcome != "uploaded":  # nothing sent: the blob is there all the same
            sent(blob, blob.size)
        report("pushed", {"digest": blob.digest, "media_type": blob.media_type, "size": blob.size,
                          "outcome": outcome})

    blobs = image.blobs
    if blobs:
        # The first alone, so that its requests settle the auth the others reuse.
        await push_blob(blobs[0])
        await each_at_most(PUSH_CONCURRENCY, blobs[1:], push_blob)
    for manifest in image.manifests:
        if manifest.desc.digest != image.top.digest:  # an index's child: by digest, the index names it
            await repository.push_manifest(manifest.desc, manifest.data, tag=manifest.desc.digest)
            report("manifest", {"digest": manifest.desc.digest, "media_type": manifest.desc.media_type,
                                "tag": None})
    await repository.push_manifest(image.top, image.top_data)
    report("manifest", {"digest": image.top.digest, "media_type": image.top.media_type,
                        "tag": repository.reference.tag})
    return pushed


def mount_source(image_name: str, target: Reference) -> str | None:
    """The repository path a cross-repository mount can take the image's blobs from: the
    image's own, when its name is a repository on the registry pushed to (it was pulled
    from there, or pushed there before)."""
    try:
        source = parse_reference(image_name)
    except CargoholdError:
        return None
    if source.domain != target.domain or source.path == target.path:
        return None
    return source.path
