"""The collector: remove content and chain snapshots that nothing reaches, as containerd's GC.

Reached, and kept:
- content: every blob an image reaches from its target (an index, the manifests of it
  that are in the store, each manifest's config and layers), and every blob a lease holds;
- snapshots: a user's own (any key that is not a chain id), a container's, the top chain
  id of an image in the same namespace, one a lease holds, and every parent of those;
- ingests: those a writer holds now.
Everything else goes: blobs with a /content/delete event, snapshot rows with
/snapshot/remove (then their data), idle ingests.

A collection runs under the leases' lock and reads what the leases hold before it reads
the images: an image written after that read was held by its pull's lease until then, so
it is never missed (app/gc/leases.py says why holding takes the lock). Collections are
serialised; `schedule()` coalesces the requests made after deletes into one run in the
background, `collect()` runs one now (`POST /gc`, start-up).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time

from ..content import ContentStore
from ..errors import CargoholdError
from ..images.descriptors import INDEX_TYPES, MANIFEST_TYPES
from ..images.unpack import chain_ids
from ..models import GcResult, SnapshotRef
from ..snapshots.service import SnapshotService
from ..store.gc import GcStore, ImageRoot
from .leases import Leases

log = logging.getLogger(__name__)

# Manifests, indexes and configs are read whole; real ones are a few KiB (the pull caps
# what it accepts at these sizes too).
_MAX_DOCUMENT_BYTES = 8 * 1024 * 1024


class Collector:
    def __init__(self, store: GcStore, content: ContentStore, snapshots: SnapshotService, leases: Leases) -> None:
        self._store = store
        self._content = content
        self._snapshots = snapshots
        self._leases = leases
        # Blobs never change, so what a manifest or config says is read once.
        self._children: dict[str, list[tuple[str, str]]] = {}
        self._top_chain: dict[str, str | None] = {}
        self._scheduled: asyncio.Task[None] | None = None

    async def collect(self) -> GcResult:
        """Run a collection now (after any in progress) and say what it removed."""
        started = time.monotonic()
        async with self._leases.lock:
            held = self._leases.held()
            images = await self._store.image_roots()
            reached_content = set(held.content)
            image_chains: set[tuple[str, str]] = set()
            for image in images:
                reached_content |= await self._reached_by(image)
                top = await self._top_chain_id(image)
                if top is not None:
                    image_chains.add((image.namespace, top))
            removed = await self._store.remove_unreached_snapshots(image_chains, held.snapshots)
            unreached = [info.digest for info in await self._content.walk() if info.digest not in reached_content]
            await self._store.content_removed(unreached)
            for digest in unreached:
                with contextlib.suppress(CargoholdError):  # gone already
                    await self._content.delete(digest)
                self._children.pop(digest, None)
                self._top_chain.pop(digest, None)
            ingests = await self._content.remove_idle_ingests()
            # Under the lock too, so that a collection that waited for this one finds it done.
            await self._snapshots.remove_data([snapshot.data_dir for snapshot in removed])
        result = GcResult(
            content=unreached,
            snapshots=[SnapshotRef(namespace=s.namespace, snapshotter=s.snapshotter, key=s.key) for s in removed],
            ingests=len(ingests),
            duration_ms=round((time.monotonic() - started) * 1000, 3),
        )
        if result.content or result.snapshots or result.ingests:
            log.info("gc removed %d blobs, %d snapshots, %d ingests in %.1f ms", len(result.content),
                     len(result.snapshots), result.ingests, result.duration_ms)
        return result

    def schedule(self) -> None:
        """Collect soon, in the background (after a delete). Requests made while one is
        waiting to run join it."""
        if self._scheduled is not None and not self._scheduled.done():
            return
        self._scheduled = asyncio.get_running_loop().create_task(self._collect_logged(), name="cargohold.gc")

    async def _collect_logged(self) -> None:
        try:
            await self.collect()
        except Exception:
            log.exception("garbage collection failed; the next one retries")

    async def close(self) -> None:
        """Wait for a scheduled collection (a delete's clean-up is not abandoned at shutdown)."""
        if self._scheduled is not None:
            await asyncio.wait([self._scheduled])

    async def _reached_by(self, image: ImageRoot) -> set[str]:
        reached: set[str] = set()
        pending = [(image.target_digest, image.target_media_type)]
        if image.config_digest is not None:
            reached.add(image.config_digest)
        while pending:
            digest, media_type = pending.pop()
            if digest in reached:
                continue
            reached.add(digest)
            # An index entry may omit its media type; its document says what it is.
            if media_type in INDEX_TYPES or media_type in MANIFEST_TYPES or not media_type:
                pending.extend(await self._children_of(digest))
        return reached

    async def _children_of(self, digest: str) -> list[tuple[str, str]]:
        """The descriptors an index or manifest names, as (digest, media type)."""
        if digest not in self._children:
            document = await self._document(digest)
            if document is None:
                return []  # a child manifest of an index that was not pulled: nothing to keep
            children: list[tuple[str, str]] = []
            for member in ("manifests", "config", "layers"):
                value = document.get(member)
                for item in value if isinstance(value, list) else [value]:
                    if isinstance(item, dict) and isinstance(item.get("digest"), str):
                        children.append((item["digest"], str(item.get("mediaType", ""))))
            self._children[digest] = children
        return self._children[digest]

    async def _top_chain_id(self, image: ImageRoot) -> str | None:
        digest = image.config_digest
        if digest is None:
            return None
        if digest not in self._top_chain:
            config = await self._document(digest)
            rootfs = config.get("rootfs") if config is not None else None
            diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
            if not isinstance(diff_ids, list) or not diff_ids or not all(isinstance(d, str) for d in diff_ids):
                return None
            self._top_chain[digest] = chain_ids(diff_ids)[-1]
        return self._top_chain[digest]

    async def _document(self, digest: str) -> dict[str, object] | None:
        """A JSON blob, or None when it is absent or not a JSON object."""
        try:
            info = await self._content.info(digest)
            if info.size > _MAX_DOCUMENT_BYTES:
                return None
            document = json.loads(await self._content.read(digest))
        except (CargoholdError, ValueError):
            return None
        return document if isinstance(document, dict) else None
