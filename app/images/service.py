"""ImageService: pull, list, get, label and delete images (containerd's `core/images` + `client.Pull`).

A pull walks what the reference names, storing every blob in the content store as it goes:

    resolve -> the target (index or manifest) -> the manifest of the platform chosen from an
    index (the host's by default) -> its config -> its layers (fetched concurrently, at most
    `PULL_CONCURRENCY` at once) -> unpacked as chain-id snapshots -> the image row

The row is written last, in one transaction with its event, so a pull that fails at any
step leaves no image. What it leaves: the blobs it had verified and committed, an ingest
of a transfer cut short (the next pull resumes it), and the chain snapshots of the layers
it had unpacked before the failing one; reclaiming those is garbage collection's job (to
come), as in containerd. Names are normalized references (`references.py`).
"""

from __future__ import annotations

import asyncio
import json
import platform as host_platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .. import filters
from ..content import ContentStore
from ..errors import CargoholdError, ErrorKind, invalid, not_found
from ..identifiers import labels_problem
from ..mergepatch import apply_merge_patch
from ..models import FIRST_PAGE, Image, ImagePatch, ImagePull, Page, PageRequest
from ..models import Descriptor as ImageTarget
from ..snapshots.service import SnapshotService
from ..store.images import ImageStore
from .descriptors import INDEX_TYPES, MANIFEST_TYPES, Descriptor
from .references import parse_reference
from .registry import Credentials, RegistryClient, Repository
from .unpack import chain_ids, check_layers, unpack

# What a pull reports as it goes, for a progress stream: (kind, data), kind one of
# "resolved" {reference, target}, "progress" {digest, media_type, bytes, total}, "unpacked"
# {layer, chain_id, reused}.
PullProgress = Callable[[str, dict[str, Any]], None]

# Blobs of one pull downloaded at once.
PULL_CONCURRENCY = 3
# An image config is read whole into memory; real ones are a few KiB.
MAX_CONFIG_BYTES = 8 * 1024 * 1024
# Timestamps of an image before the store sets them.
_EPOCH = datetime.fromtimestamp(0, UTC)
# Go's GOARCH for the machine names Python reports.
_ARCHITECTURES = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64", "armv7l": "arm",
                  "i686": "386", "i386": "386", "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}


def host_platform_name() -> str:
    """`linux/<GOARCH>` of this machine."""
    machine = host_platform.machine().lower()
    return f"linux/{_ARCHITECTURES.get(machine, machine)}"


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None

    @classmethod
    def parse(cls, text: str) -> Platform:
        parts = text.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise invalid(f'platform "{text[:100]}" must be os/architecture or os/architecture/variant')
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else None)

    @classmethod
    def of(cls, document: Any) -> Platform | None:
        if not isinstance(document, dict):
            return None
        os_name, arch, variant = document.get("os"), document.get("architecture"), document.get("variant")
        if not isinstance(os_name, str) or not isinstance(arch, str):
            return None
        return cls(os_name, arch, variant if isinstance(variant, str) and variant else None)

    def matches(self, other: Platform) -> bool:
        """`other` (what an index offers) serves this platform (what was asked)."""
        if (self.os, self.architecture) != (other.os, other.architecture):
            return False
        return self.variant is None or other.variant is None or self.variant == other.variant

    def __str__(self) -> str:
        return "/".join(part for part in (self.os, self.architecture, self.variant) if part)


def _json(data: bytes, what: str) -> dict[str, Any]:
    try:
        document = json.loads(data)
    except ValueError:
        raise invalid(f"{what} is not valid JSON") from None
    if not isinstance(document, dict):
        raise invalid(f"{what} is not a JSON object")
    return document


def _descriptors(document: dict[str, Any], member: str, what: str) -> list[Descriptor]:
    items = document.get(member)
    if not isinstance(items, list):
        raise invalid(f"{what} has no {member} list")
    return [Descriptor.from_json(item, f"{what}: {member}[{i}]") for i, item in enumerate(items)]


def _diff_ids(config: dict[str, Any], what: str) -> list[str]:
    rootfs = config.get("rootfs")
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list) or not all(isinstance(d, str) for d in diff_ids):
        raise invalid(f"{what} has no rootfs.diff_ids list")
    for diff_id in diff_ids:
        if not diff_id.startswith("sha256:"):
            raise invalid(f"{what}: diff id {diff_id[:100]!r} is not a sha256 digest")
    return list(diff_ids)


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
                 snapshots: SnapshotService, platform: str | None = None) -> None:
        self._store = store
        self._content = content
        self._registry = registry
        self._snapshots = snapshots
        self.platform = Platform.parse(platform or host_platform_name())

    # pull

    async def pull(self, namespace: str, body: ImagePull,
                   progress: PullProgress | None = None) -> tuple[Image, bool]:
        """Pull (and by default unpack) `body.reference`; create or update its image row.
        Returns the image and whether it was created. Raises INVALID_ARGUMENT (a bad
        reference or platform, a digest or size mismatch, an unsupported media type, no
        manifest for the platform), NOT_FOUND (no such image in the registry),
        UNAUTHENTICATED, UNAVAILABLE, TOO_LARGE; on any of them no image row is written."""
        reference = parse_reference(body.reference)
        wanted = Platform.parse(body.platform) if body.platform is not None else self.platform
        if body.unpack:
            self._snapshots.snapshotter(body.snapshotter)  # an unknown snapshotter: before any download
        credentials = None
        if body.credentials is not None:
            given = body.credentials
            credentials = Credentials(username=given.username, password=given.password, token=given.token)
        repository = self._registry.repository(reference, credentials=credentials, plain_http=body.plain_http)
        target = await repository.resolve()
        report: PullProgress = progress or (lambda kind, data: None)
        report("resolved", {"reference": str(reference), "target": {
            "media_type": target.media_type, "digest": target.digest, "size": target.size}})

        def fetched(desc: Descriptor, done: int) -> None:
            report("progress", {"digest": desc.digest, "media_type": desc.media_type, "bytes": done,
                                "total": desc.size})

        size = 0  # of the index (if any) and of what the chosen manifest reaches
        manifest_desc = target
        platforms: list[str] = []
        if target.media_type in INDEX_TYPES:
            index_data = await repository.fetch_manifest(target)
            await self._content.put(index_data, target.digest)
            what = f'index {target.digest} of "{reference}"'
            entries = _descriptors(_json(index_data, what), "manifests", what)
            offered = [(entry, Platform.of(entry.platform)) for entry in entries]
            platforms = sorted({str(p) for _, p in offered if p is not None})
            chosen = next((entry for entry, p in offered if p is not None and wanted.matches(p)
                           and entry.media_type in MANIFEST_TYPES), None)
            if chosen is None:
                raise invalid(f'image "{reference}" has no manifest for platform {wanted}; it offers '
                              f"{', '.join(platforms) or 'none'}")
            manifest_desc = chosen
            size += target.size
        elif target.media_type not in MANIFEST_TYPES:
            raise invalid(f'image "{reference}" is a {target.media_type[:100]}, not an image manifest or index')
        manifest_data = await repository.fetch_manifest(manifest_desc)
        what = f'manifest {manifest_desc.digest} of "{reference}"'
        manifest = _json(manifest_data, what)
        config_desc = Descriptor.from_json(manifest.get("config"), f"{what}: config")
        layers = _descriptors(manifest, "layers", what)
        if config_desc.size > MAX_CONFIG_BYTES:
            raise CargoholdError(ErrorKind.TOO_LARGE, f"{what}: the config is {config_desc.size} bytes; "
                                 f"configs are limited to {MAX_CONFIG_BYTES}")
        await repository.fetch(config_desc, self._content, fetched)
        config_what = f'config {config_desc.digest} of "{reference}"'
        config = _json(await self._content.read(config_desc.digest), config_what)
        diff_ids = _diff_ids(config, config_what)
        check_layers(layers, diff_ids, what)
        if not platforms:
            own = Platform.of(config)
            platforms = [str(own)] if own is not None else []
            # A platform asked for by name must be the image's (the host's default is not enforced
            # on a plain manifest, as Docker pulls it and leaves running it to the runtime).
            if body.platform is not None and own is not None and not wanted.matches(own):
                raise invalid(f'image "{reference}" is for platform {own}, not {wanted}')
        await self._fetch_layers(repository, layers, fetched)
        # The manifest goes in last of the blobs: a manifest in the store means its parts are there.
        await self._content.put(manifest_data, manifest_desc.digest)
        if body.unpack:
            await unpack(namespace, body.snapshotter, self._content, self._snapshots, layers, diff_ids,
                         lambda layer, chain_id, made: report("unpacked", {
                             "layer": layer.digest, "chain_id": chain_id, "reused": not made}))
        size += manifest_desc.size + config_desc.size + sum(layer.size for layer in layers)
        image = Image(
            name=str(reference),
            target=ImageTarget(media_type=target.media_type, digest=target.digest, size=target.size),
            labels={}, size=size, platforms=platforms, config_digest=config_desc.digest,
            created_at=_EPOCH, updated_at=_EPOCH,  # set by the store
        )
        return await self._store.put(namespace, image)

    async def _fetch_layers(self, repository: Repository, layers: Sequence[Descriptor],
                            fetched: Callable[[Descriptor, int], None]) -> None:
        gate = asyncio.Semaphore(PULL_CONCURRENCY)

        async def fetch(layer: Descriptor) -> None:
            async with gate:
                await repository.fetch(layer, self._content, fetched)

        try:
            async with asyncio.TaskGroup() as group:
                for layer in layers:
                    group.create_task(fetch(layer))
        except BaseExceptionGroup as failed:
            # The first failure says what went wrong; the others are its echoes (cancelled siblings).
            errors = [e for e in failed.exceptions if isinstance(e, CargoholdError)]
            raise (errors[0] if errors else failed.exceptions[0]) from None

    # the rest

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
        return _json(await self._content.read(image.config_digest), f"config {image.config_digest}")

    async def chain_id(self, namespace: str, name: str) -> tuple[Image, dict[str, Any], str | None]:
        """The image, its config and the chain id of its top layer (None for no layers)."""
        image = await self.get(namespace, name)
        config = await self.config(namespace, name)
        chain = chain_ids(_diff_ids(config, f"config {image.config_digest}"))
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
        return await self._store.delete(namespace, _normalized(name))


def _normalized(name: str) -> str:
    """The stored name of `name` as a user may write it (`busybox` -> docker.io/library/busybox:latest)."""
    try:
        return str(parse_reference(name))
    except CargoholdError:
        return name  # not a reference: a name no image has, so a clean 404 follows

