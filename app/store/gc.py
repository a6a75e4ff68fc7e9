"""What garbage collection reads and removes in the database: image roots and snapshot rows.

The collector (app/gc/collector.py) decides what content an image reaches (that needs the
blobs themselves); this module answers the questions that are SQL: which images exist,
and which chain snapshots nothing reaches. Snapshots are removed here in one transaction
with their /snapshot/remove events, children before parents (the parent key is a foreign
key); their data directories are the caller's to delete once the rows are gone.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..topics import Topic
from .db import Database
from .snapshots import DataDir, SnapshotAddress


@dataclass(frozen=True)
class ImageRoot:
    """What one image row says it reaches: its target and the config of the platform pulled."""

    namespace: str
    target_digest: str
    target_media_type: str
    config_digest: str | None


@dataclass(frozen=True)
class RemovedSnapshot:
    namespace: str
    snapshotter: str
    key: str
    data_dir: DataDir


def is_chain_key(key: str) -> bool:
    """Unpack names snapshots by chain id (`sha256:...`); a user's key is an identifier and
    never holds a colon, so only unpack's snapshots are ever collected."""
    return ":" in key


class GcStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def image_roots(self) -> list[ImageRoot]:
        """Every image of every namespace."""
        rows = await self._db.all(
            "SELECT namespace, target_digest, target_media_type, config_digest FROM images"
        )
        return [ImageRoot(row["namespace"], row["target_digest"], row["target_media_type"], row["config_digest"])
                for row in rows]

    async def remove_unreached_snapshots(
        self, image_chains: set[tuple[str, str]], held: frozenset[SnapshotAddress]
    ) -> list[RemovedSnapshot]:
        """Delete every chain snapshot that nothing reaches, in one transaction; return them.

        Reached: a snapshot whose key is not a chain id (a user's, or a container's own), one
        a container names, one an image's top chain id names in its namespace (`image_chains`:
        (namespace, chain id), in any snapshotter), one a lease holds; and every parent of a
        reached snapshot."""
        async with self._db.write() as tx:
            rows = tx.all("SELECT namespace, snapshotter, key, parent, dir FROM snapshots")
            pinned = {(row["namespace"], row["snapshotter"], row["snapshot_key"]) for row in tx.all(
                "SELECT namespace, snapshotter, snapshot_key FROM containers WHERE snapshot_key IS NOT NULL"
            )}
            parents: dict[SnapshotAddress, SnapshotAddress | None] = {}
            dirs: dict[SnapshotAddress, str] = {}
            for row in rows:
                ref = (row["namespace"], row["snapshotter"], row["key"])
                parent = row["parent"]
                parents[ref] = (ref[0], ref[1], parent) if parent is not None else None
                dirs[ref] = row["dir"]
            reached: set[SnapshotAddress] = set()
            for ref in parents:
                namespace, _, key = ref
                if not is_chain_key(key) or ref in pinned or ref in held or (namespace, key) in image_chains:
                    current: SnapshotAddress | None = ref
                    while current is not None and current not in reached:
                        reached.add(current)
                        current = parents.get(current)
            unreached = [ref for ref in parents if ref not in reached]
            # Children first: a parent row cannot go while a child names it.
            unreached.sort(key=lambda ref: _depth(ref, parents), reverse=True)
            removed: list[RemovedSnapshot] = []
            for namespace, snapshotter, key in unreached:
                tx.execute(
                    "DELETE FROM snapshots WHERE namespace = ? AND snapshotter = ? AND key = ?",
                    namespace, snapshotter, key,
                )
                tx.append_event(namespace, Topic.SNAPSHOT_REMOVE, {"key": key, "snapshotter": snapshotter})
                removed.append(RemovedSnapshot(namespace, snapshotter, key,
                                               DataDir(snapshotter, dirs[(namespace, snapshotter, key)])))
            return removed

    async def content_removed(self, digests: list[str]) -> None:
        """Record a /content/delete event per blob about to be removed. Content is the
        daemon's, not a namespace's, so the events carry the namespace ""."""
        if not digests:
            return
        async with self._db.write() as tx:
            for digest in digests:
                tx.append_event("", Topic.CONTENT_DELETE, {"digest": digest})


def _depth(ref: SnapshotAddress, parents: dict[SnapshotAddress, SnapshotAddress | None]) -> int:
    depth = 0
    current = parents.get(ref)
    while current is not None:
        depth += 1
        current = parents.get(current)
    return depth
