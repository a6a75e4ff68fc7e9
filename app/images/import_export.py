"""Import and export: images from and to archives (containerd's `client.Import` / `Export`).

An import walks each image of a spooled archive (`archive.py` reads the formats) as a pull
walks a registry: an index's manifest for this daemon's platform, its config, its layers
(verified by their descriptors), the manifest last, then unpacked; a `docker save` image's
layer tars are stored as they hash and a Docker schema 2 manifest is made for them. Every
blob and chain snapshot is held in the caller's lease; the caller writes the image rows.

An export is an OCI image layout tar of an image's plan (`push.plan`: the same choice as a
push for an index pulled for one platform), its blobs streamed from the content store.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..content import ContentStore
from ..errors import CargoholdError, ErrorKind, invalid
from ..gc import Lease, Leases
from ..models import Image
from ..snapshots.service import SnapshotService
from .archive import (
    MAX_MANIFEST_BYTES,
    Archive,
    ArchivedImage,
    Chunks,
    LayoutTar,
    archived_images,
    docker_manifest,
    exported,
    image_names,
    layout_index,
    store_saved_layer,
)
from .descriptors import INDEX_TYPES, MANIFEST_TYPES, Descriptor
from .documents import MAX_CONFIG_BYTES, Manifest, Platform, choose_manifest, diff_ids_in, image_draft, parse_json
from .push import plan
from .references import Reference
from .unpack import unpack


class Importer:
    """One import: the images of one archive into one namespace, under one lease."""

    def __init__(self, content: ContentStore, snapshots: SnapshotService, lease: Lease, namespace: str,
                 platform: Platform, snapshotter: str | None) -> None:
        self._content = content
        self._snapshots = snapshots
        self._lease = lease
        self._namespace = namespace
        self._platform = platform
        self._snapshotter = snapshotter
        self._saved_layers: dict[str, Descriptor] = {}  # docker save layers stored, by member name

    async def images(self, archive: Archive, base: Reference | None) -> list[Image]:
        """The archive's images, stored and unpacked, one row (not yet written) per name."""
        # Every image named before any blob is stored.
        found = [(image, image_names(image, base)) for image in await archived_images(archive)]
        made: dict[str, Image] = {}
        for image, names in found:
            if image.target is not None:
                draft = await self._layout_image(archive, image.target, image.where)
            else:
                draft = await self._saved_image(archive, image)
            for name in names:
                if name in made and made[name].target != draft.target:
                    raise invalid(f'the archive holds two different images named "{name}"')
                made[name] = draft.model_copy(update={"name": name})
        return list(made.values())

    async def _layout_image(self, archive: Archive, target: Descriptor, where: str) -> Image:
        """One index.json entry. Everything is checked present and well-formed before a blob
        is stored. Returns the image, unnamed."""
        size, manifest_desc = 0, target
        platforms: list[str] = []
        index_data: bytes | None = None
        if target.media_type in INDEX_TYPES:
            index_data = await archive.read_blob(target, MAX_MANIFEST_BYTES, where)
            manifest_desc, platforms = choose_manifest(index_data, self._platform, f"{where}: index {target.digest}")
            size = target.size
        elif target.media_type not in MANIFEST_TYPES:
            raise invalid(f"{where} is a {target.media_type[:100]!r}, not an image manifest or index")
        manifest_data = await archive.read_blob(manifest_desc, MAX_MANIFEST_BYTES, where)
        what = f"{where}: manifest {manifest_desc.digest}"
        manifest = Manifest.parse(manifest_data, what)
        config_data = await archive.read_blob(manifest.config, MAX_CONFIG_BYTES, what)
        config = parse_json(config_data, f"{what}: config")
        diff_ids = manifest.diff_ids(config, what)
        members = [archive.blob(layer, what) for layer in manifest.layers]
        own = Platform.of(config)
        platforms = platforms or ([str(own)] if own is not None else [])
        if index_data is not None:
            await self._put(index_data, target.digest)
        await self._put(config_data, manifest.config.digest)
        for layer, member in zip(manifest.layers, members, strict=True):
            await archive.store(member, self._content, self._lease, what, layer)
        # The manifest goes in last of the blobs, as a pull's: a manifest in the store means its parts are there.
        await self._put(manifest_data, manifest_desc.digest)
        await self._unpack(manifest.layers, diff_ids, what)
        return image_draft("", target, size + manifest_desc.size + manifest.size, platforms, manifest.config.digest)

    async def _saved_image(self, archive: Archive, image: ArchivedImage) -> Image:
        """One image of a docker save: its layer tars stored as they hash (those of earlier
        images kept), its config, and a Docker schema 2 manifest made for them, then
        unpacked. Returns the image, unnamed."""
        what = image.where
        assert image.config is not None  # a docker save image always names its config
        config_data = await archive.read(image.config, MAX_CONFIG_BYTES, what)
        config = parse_json(config_data, f"{what}: config")
        diff_ids = diff_ids_in(config, f"{what}: config")
        if len(image.layers) != len(diff_ids):
            raise invalid(f"{what} lists {len(image.layers)} layers but its config names {len(diff_ids)} diff ids")
        layers = []
        for member in image.layers:
            if member.name not in self._saved_layers:
                self._saved_layers[member.name] = await store_saved_layer(archive, member, self._content,
                                                                          self._lease, what)
            layers.append(self._saved_layers[member.name])
        manifest_desc, manifest_data, config_desc = docker_manifest(config_data, layers)
        await self._put(config_data, config_desc.digest)
        await self._put(manifest_data, manifest_desc.digest)
        await self._unpack(layers, diff_ids, what)
        own = Platform.of(config)
        size = manifest_desc.size + config_desc.size + sum(layer.size for layer in layers)
        return image_draft("", manifest_desc, size, [str(own)] if own is not None else [], config_desc.digest)

    async def _put(self, data: bytes, digest: str) -> None:
        await self._lease.hold_content(digest)
        await self._content.put(data, digest)

    async def _unpack(self, layers: Sequence[Descriptor], diff_ids: Sequence[str], what: str) -> None:
        try:
            await unpack(self._namespace, self._snapshotter, self._content, self._snapshots, layers, diff_ids,
                         self._lease)
        except CargoholdError as error:
            if error.kind is not ErrorKind.INVALID_ARGUMENT:
                raise
            raise invalid(f"{what}: a layer was refused: {error.detail}") from None


async def export(content: ContentStore, leases: Leases, image: Image) -> tuple[int, Chunks]:
    """`image` as an OCI image layout tar: its length and its chunks. index.json names one
    entry, annotated with the image's full name and tag. Raises before the first chunk."""
    async with leases.lease("export") as lease:
        layout = await plan(content, image, lease)
    blobs = [(layout.top.digest, layout.top.size)] if layout.top.media_type in INDEX_TYPES else []
    blobs += [(blob.digest, blob.size) for manifest in layout.manifests for blob in (manifest.desc, *manifest.blobs)]
    tar = LayoutTar(layout_index(layout.top, image.name), blobs)
    return tar.size, exported(tar, content, leases)
