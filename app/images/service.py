"""ImageService: the rules of images (containerd's `core/images`): pull, push, import, export,
list, get, label and delete.

Each transfer has a module of its own (`pull.py`, `push.py`, `import_export.py`); this
service gives each its lease and writes the image rows, last, in one transaction with their
events, so an operation that fails at any step leaves no image, and what it stored is
garbage collection's once its lease ends. Deleting an image schedules a collection. Names
are normalized references (`references.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from .. import filters
from ..content import ContentStore
from ..errors import CargoholdError, invalid, not_found
from ..gc import Leases
from ..identifiers import labels_problem
from ..mergepatch import apply_merge_patch
from ..models import (
    FIRST_PAGE,
    Image,
    ImagePatch,
    ImagePull,
    ImagePush,
    ImagePushResult,
    Page,
    PageRequest,
    RegistryCredentials,
)
from ..snapshots.service import SnapshotService
from ..store.images import ImageStore
from . import pull, push
from .archive import ArchiveLimits, Chunks, spooled
from .documents import Platform, diff_ids_in, host_platform_name, parse_json
from .import_export import Importer, export
from .references import parse_reference
from .registry import Credentials, RegistryClient
from .unpack import chain_ids


def image_field(image: Image) -> filters.FieldGetter:
    """The filter adaptor for images, as containerd's `adaptImage`: name, target.*, labels.*."""

    def field(path: Sequence[str]) -> str | None:
        if not path:
            return None
        head, rest = path[0], path[1:]
        if head == "name" and not rest:
            return image.name
        if head == "target" and len(rest) == 1:
            if rest[0] in ("digest", "mediatype", "media_type"):
                return image.target.digest if rest[0] == "digest" else image.target.media_type
            return None
        if head == "labels" and len(rest) == 1:
            return image.labels.get(rest[0])
        return None

    return field


class ImageService:
    def __init__(self, store: ImageStore, content: ContentStore, registry: RegistryClient,
                 snapshots: SnapshotService, leases: Leases, released: Callable[[], None] = lambda: None,
                 platform: str | None = None) -> None:
        self._store = store
        self._content = content
        self._registry = registry
        self._snapshots = snapshots
        self._leases = leases
        self._released = released  # schedules a garbage collection
        self.platform = Platform.parse(platform or host_platform_name())

    async def pull(self, namespace: str, body: ImagePull,
                   progress: pull.PullProgress | None = None) -> tuple[Image, bool]:
        """Pull (and by default unpack) `body.reference`; create or update its image row.
        Returns the image and whether it was created. Raises INVALID_ARGUMENT (a bad
        reference or platform, a digest or size mismatch, an unsupported media type, no
        manifest for the platform), NOT_FOUND (no such image in the registry),
        UNAUTHENTICATED, UNAVAILABLE, TOO_LARGE; on any of them no image row is written."""
        reference = parse_reference(body.reference)
        wanted = Platform.parse(body.platform) if body.platform is not None else self.platform
        if body.unpack:
            self._snapshots.snapshotter(body.snapshotter)  # an unknown snapshotter: before any download
        repository = self._registry.repository(reference, credentials=_credentials(body.credentials),
                                               plain_http=body.plain_http)
        async with self._leases.lease("pull") as lease:
            image = await pull.pull(self._content, self._snapshots, repository, lease, namespace, body, reference,
                                    wanted, progress)
            return await self._store.put(namespace, image)

    async def push(self, namespace: str, name: str, body: ImagePush,
                   progress: push.PushProgress | None = None) -> ImagePushResult:
        """Push image `name` to `body.reference` (see `push.py`), telling `progress` of each
        blob and manifest as it goes. Raises INVALID_ARGUMENT (a
        bad reference; a digest in it other than the one pushed), NOT_FOUND (no such image;
        or from the registry), CONFLICT (the image's content is incomplete),
        UNAUTHENTICATED, UNAVAILABLE. Nothing changes in the daemon: no row, no event; what a
        failed push uploaded stays in the registry, unreferenced."""
        reference = parse_reference(body.reference)
        image = await self.get(namespace, name)
        async with self._leases.lease("push") as lease:  # the image may be deleted meanwhile
            planned = await push.plan(self._content, image, lease)
            if reference.digest is not None and reference.digest != planned.top.digest:
                raise invalid(f'image "{image.name}" pushes as {planned.top.digest}, not {reference.digest}; '
                              "name that digest, or a tag")
            repository = self._registry.repository(reference, credentials=_credentials(body.credentials),
                                                   plain_http=body.plain_http, push=True)
            pushed = await push.push(self._content, repository, planned, push.mount_source(image.name, reference),
                                     progress)
        return ImagePushResult(reference=str(reference), digest=planned.top.digest,
                               media_type=planned.top.media_type, size=planned.top.size,
                               pushed=pushed.uploaded, mounted=pushed.mounted, existing=pushed.exists)

    async def import_archive(self, namespace: str, body: Chunks, limits: ArchiveLimits, name: str | None = None,
                             snapshotter: str | None = None) -> Sequence[Image]:
        """Import the images of an OCI image layout tar or a `docker save` archive (plain or
        compressed) streamed as `body`: one image row per name, in the archive's order, with
        one /images/create (or /update) event each.

        The body is spooled, never held in memory (`archive.spooled`); names are the
        archive's own (`archive.image_names`), `name` the repository of images that carry
        only a tag and the name of those that carry none. Raises INVALID_ARGUMENT (not a tar,
        truncated, broken compression, a missing blob, a digest or size mismatch, an unknown
        media type, a layer that escapes its root, an image with no name, an index with no
        manifest for this platform) or TOO_LARGE; then no row is written and no spool file
        or ingest is left."""
        base = parse_reference(name, default_tag=False) if name is not None else None
        self._snapshots.snapshotter(snapshotter)  # an unknown snapshotter: before the upload is read
        async with self._leases.lease("import") as lease, spooled(body, limits) as archive:
            importer = Importer(self._content, self._snapshots, lease, namespace, self.platform, snapshotter)
            made = await importer.images(archive, base)
            return [(await self._store.put(namespace, image))[0] for image in made]

    async def export(self, namespace: str, name: str) -> tuple[Image, int, Chunks]:
        """Image `name` as an OCI image layout tar: the image, the tar's length, its chunks.
        The entry is the image's target; or, for an index whose manifests are not all in the
        content store, the manifest of the platform pulled, alone, as `docker save` does (the
        same choice as a push). Raises NOT_FOUND (no such image), CONFLICT (its content is
        incomplete), INVALID_ARGUMENT (a target that is neither manifest nor index), all
        before the first chunk."""
        image = await self.get(namespace, name)
        size, chunks = await export(self._content, self._leases, image)
        return image, size, chunks

    async def get(self, namespace: str, name: str) -> Image:
        return await self._store.get(namespace, _normalized(name))

    async def list(self, namespace: str, filter_exprs: Sequence[str] = (),
                   page: PageRequest = FIRST_PAGE) -> Page[Image]:
        """A page of the images matching any of `filter_exprs` (INVALID_ARGUMENT for a bad one)."""
        match = filters.parse(filter_exprs)
        if match is filters.MATCH_ALL:
            return await self._store.list_in(namespace, page=page)
        return await self._store.list_in(namespace, lambda image: match.matches(image_field(image)), page)

    async def config(self, namespace: str, name: str) -> dict[str, Any]:
        """The OCI image config of the platform pulled."""
        image = await self.get(namespace, name)
        if image.config_digest is None:
            raise not_found(f'image "{image.name}" has no config')
        return parse_json(await self._content.read(image.config_digest), f"config {image.config_digest}")

    async def chain_id(self, namespace: str, name: str) -> tuple[Image, dict[str, Any], str | None]:
        """The image, its config and the chain id of its top layer (None for no layers)."""
        image = await self.get(namespace, name)
        config = await self.config(namespace, name)
        chain = chain_ids(diff_ids_in(config, f"config {image.config_digest}"))
        return image, config, chain[-1] if chain else None

    async def patch(self, namespace: str, name: str, body: ImagePatch) -> Image:
        """Merge-patch the labels. INVALID_ARGUMENT for an attempt to rename."""
        name = _normalized(name)
        if body.name is not None and body.name != name:
            raise invalid(f'an image cannot be renamed ("{name}" -> "{body.name[:300]}")')

        def labels(current: Image) -> dict[str, str]:
            merged: dict[str, str] = apply_merge_patch(current.labels, body.labels or {})
            problem = labels_problem(merged)
            if problem is not None:
                raise invalid(problem)
            return merged

        return await self._store.update_labels(namespace, name, labels)

    async def delete(self, namespace: str, name: str) -> Image:
        """The name goes now; what only it reached goes at the collection this schedules."""
        image = await self._store.delete(namespace, _normalized(name))
        self._released()
        return image


def _credentials(given: RegistryCredentials | None) -> Credentials | None:
    if given is None:
        return None
    return Credentials(username=given.username, password=given.password, token=given.token)


def _normalized(name: str) -> str:
    """The stored name of `name` as a user may write it (`busybox` -> docker.io/library/busybox:latest)."""
    try:
        return str(parse_reference(name))
    except CargoholdError:
        return name  # not a reference: a name no image has, so a clean 404 follows

