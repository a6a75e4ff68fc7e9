"""Descriptors and media types of OCI and Docker images (as containerd's `core/images/mediatypes.go`).

A descriptor names a blob: its media type, digest and size, plus what an index says of it
(platform, annotations, urls). Nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..content.digests import validate_digest
from ..errors import CargoholdError, invalid

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_FOREIGN_LAYER = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
# What a registry may answer a manifest request with, in our order of preference.
MANIFEST_ACCEPT = (OCI_INDEX, DOCKER_MANIFEST_LIST, OCI_MANIFEST, DOCKER_MANIFEST)


@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor."""

    media_type: str
    digest: str
    size: int
    platform: dict[str, Any] | None = None
    annotations: dict[str, str] | None = None
    urls: tuple[str, ...] = field(default=())

    @property
    def is_manifest(self) -> bool:
        """An index, a manifest list or an image manifest (fetched from /manifests/)."""
        return self.media_type in INDEX_TYPES or self.media_type in MANIFEST_TYPES

    def to_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.platform is not None:
            document["platform"] = self.platform
        if self.annotations:
            document["annotations"] = self.annotations
        if self.urls:
            document["urls"] = list(self.urls)
        return document

    @classmethod
    def from_json(cls, document: object, where: str = "descriptor") -> Descriptor:
        """Parse an OCI descriptor object; INVALID_ARGUMENT naming the bad field."""
        if not isinstance(document, dict):
            raise invalid(f"{where} is not a JSON object")
        media_type, digest, size = document.get("mediaType"), document.get("digest"), document.get("size")
        if not isinstance(media_type, str) or not media_type:
            raise invalid(f"{where}: mediaType must be a non-empty string")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise invalid(f"{where}: size must be a non-negative integer")
        try:
            digest = validate_digest(digest)
        except CargoholdError as error:
            raise invalid(f"{where}: {error.detail}") from None
        platform = document.get("platform")
        annotations = document.get("annotations")
        urls = document.get("urls") or ()
        if platform is not None and not isinstance(platform, dict):
            raise invalid(f"{where}: platform must be an object")
        if annotations is not None and not (isinstance(annotations, dict)
                                            and all(isinstance(v, str) for v in annotations.values())):
            raise invalid(f"{where}: annotations must map strings to strings")
        if not isinstance(urls, list | tuple) or not all(isinstance(u, str) for u in urls):
            raise invalid(f"{where}: urls must be a list of strings")
        return cls(media_type, digest, size, platform, annotations, tuple(urls))
