"""What an image's JSON documents say, read strictly: indexes, manifests, configs; platforms.

Pull, push, import and export all walk the same documents (an index names manifests by
platform, a manifest names a config and layers, a config names the layers' diff ids); this
module reads them once, the same way for all four, and says what is wrong with a bad one
(INVALID_ARGUMENT, naming the document). Nothing here does I/O.
"""

from __future__ import annotations

import json
import platform as host_platform
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ..errors import CargoholdError, ErrorKind, invalid
from ..models import Descriptor as ImageTarget
from ..models import Image
from .descriptors import MANIFEST_TYPES, Descriptor
from .unpack import check_layers

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


def parse_json(data: bytes, what: str) -> dict[str, Any]:
    """A JSON object, or INVALID_ARGUMENT naming `what`."""
    try:
        document = json.loads(data)
    except ValueError:
        raise invalid(f"{what} is not valid JSON") from None
    if not isinstance(document, dict):
        raise invalid(f"{what} is not a JSON object")
    return document


def descriptors_in(document: dict[str, Any], member: str, what: str) -> list[Descriptor]:
    """The descriptors listed under `member` (an index's manifests, a manifest's layers)."""
    items = document.get(member)
    if not isinstance(items, list):
        raise invalid(f"{what} has no {member} list")
    return [Descriptor.from_json(item, f"{what}: {member}[{i}]") for i, item in enumerate(items)]


def diff_ids_in(config: dict[str, Any], what: str) -> list[str]:
    """A config's `rootfs.diff_ids`, each a sha256 digest."""
    rootfs = config.get("rootfs")
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list) or not all(isinstance(d, str) for d in diff_ids):
        raise invalid(f"{what} has no rootfs.diff_ids list")
    for diff_id in diff_ids:
        if not diff_id.startswith("sha256:"):
            raise invalid(f"{what}: diff id {diff_id[:100]!r} is not a sha256 digest")
    return list(diff_ids)


def choose_manifest(index_data: bytes, wanted: Platform, what: str) -> tuple[Descriptor, list[str]]:
    """The manifest an index offers for `wanted`, and every platform it offers (sorted).
    INVALID_ARGUMENT, naming those offered, when none serves `wanted`."""
    entries = descriptors_in(parse_json(index_data, what), "manifests", what)
    offered = [(entry, Platform.of(entry.platform)) for entry in entries]
    platforms = sorted({str(p) for _, p in offered if p is not None})
    chosen = next((entry for entry, p in offered
                   if p is not None and wanted.matches(p) and entry.media_type in MANIFEST_TYPES), None)
    if chosen is None:
        raise invalid(f"{what} has no manifest for platform {wanted}; it offers {', '.join(platforms) or 'none'}")
    return chosen, platforms


@dataclass(frozen=True)
class Manifest:
    """A manifest's config and layers."""

    config: Descriptor
    layers: list[Descriptor]

    @classmethod
    def parse(cls, data: bytes, what: str) -> Manifest:
        """The manifest in `data`; TOO_LARGE for a config over MAX_CONFIG_BYTES."""
        document = parse_json(data, what)
        config = Descriptor.from_json(document.get("config"), f"{what}: config")
        if config.size > MAX_CONFIG_BYTES:
            raise CargoholdError(ErrorKind.TOO_LARGE, f"{what}: the config is {config.size} bytes; "
                                 f"configs are limited to {MAX_CONFIG_BYTES}")
        return cls(config, descriptors_in(document, "layers", what))

    def diff_ids(self, config: dict[str, Any], what: str) -> list[str]:
        """The config's diff ids, checked against the layers (one each, of a type unpack applies)."""
        diff_ids = diff_ids_in(config, f"{what}: config")
        check_layers(self.layers, diff_ids, what)
        return diff_ids

    @property
    def size(self) -> int:
        """Bytes of the config and layers."""
        return self.config.size + sum(layer.size for layer in self.layers)


def image_draft(name: str, target: Descriptor, size: int, platforms: list[str], config_digest: str) -> Image:
    """An image row to be stored (the store sets its times and keeps its labels)."""
    return Image(name=name, target=ImageTarget(media_type=target.media_type, digest=target.digest, size=target.size),
                 labels={}, size=size, platforms=platforms, config_digest=config_digest,
                 created_at=_EPOCH, updated_at=_EPOCH)
