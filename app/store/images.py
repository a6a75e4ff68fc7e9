"""Image rows: a name in a namespace pointing at a target descriptor in the content store.

The row also keeps what the pull learnt (the size of every blob the image reaches, the
platforms its target offers, the config of the platform pulled), so a list or a get reads
no blob. Every change appends its event (`/images/create|update|delete`) in the same
transaction. What the image reaches in the content store and among the snapshots is not
this module's business: garbage collection decides what may go.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime

from ..errors import CargoholdError, not_found
from ..models import FIRST_PAGE, Descriptor, Image, Page, PageRequest
from ..pages import cut
from ..topics import Topic
from .db import Database, Row, Tx, dumps, utcnow
from .namespaces import ensure_namespace, namespace_exists_in, namespace_not_found, require_namespace

_SELECT = "SELECT * FROM images WHERE namespace = ? AND name = ?"


def image_not_found(namespace: str, name: str) -> CargoholdError:
    return not_found(f'image "{name}" not found in namespace "{namespace}"')


def _image(row: Row) -> Image:
    return Image(
        name=row["name"],
        target=Descriptor(media_type=row["target_media_type"], digest=row["target_digest"], size=row["target_size"]),
        labels=json.loads(row["labels"]),
        size=row["size"],
        platforms=json.loads(row["platforms"]),
        config_digest=row["config_digest"],
        created_at=datetime.fromisoformat(row["created_at"]),
        updated_at=datetime.fromisoformat(row["updated_at"]),
    )


def _event(image: Image) -> dict[str, object]:
    # containerd's /images/create|update carry the name and labels; the target helps a watcher.
    return {"name": image.name, "labels": image.labels, "target": image.target.digest}


class ImageStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def put(self, namespace: str, image: Image) -> tuple[Image, bool]:
        """Create the image, or point an existing name at `image`'s target (labels: the new
        ones merged over the old, created_at kept). Appends /images/create or /images/update.
        Returns the stored image and whether it was created."""
        async with self._db.write() as tx:
            ensure_namespace(tx, namespace)
            current = tx.one(_SELECT, namespace, image.name)
            now = utcnow()
            if current is None:
                tx.execute(
                    "INSERT INTO images (namespace, name, target_media_type, target_digest, target_size, labels,"
                    " size, platforms, config_digest, created_at, updated_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    namespace, image.name, *self._values(image), now.isoformat(), now.isoformat(),
                )
                stored = self._get_in(tx, namespace, image.name)
                tx.append_event(namespace, Topic.IMAGE_CREATE, _event(stored))
                return stored, True
            labels = {**json.loads(current["labels"]), **image.labels}
            merged = image.model_copy(update={"labels": labels})
            tx.execute(
                "UPDATE images SET (target_media_type, target_digest, target_size, labels, size, platforms,"
                " config_digest, updated_at) = (?, ?, ?, ?, ?, ?, ?, ?) WHERE namespace = ? AND name = ?",
                *self._values(merged), now.isoformat(), namespace, image.name,
            )
            stored = self._get_in(tx, namespace, image.name)
            tx.append_event(namespace, Topic.IMAGE_UPDATE, _event(stored))
            return stored, False

    @staticmethod
    def _values(image: Image) -> tuple[object, ...]:
        return (image.target.media_type, image.target.digest, image.target.size, dumps(image.labels), image.size,
                dumps(image.platforms), image.config_digest)

    async def get(self, namespace: str, name: str) -> Image:
        """Raises NOT_FOUND for the image or its namespace."""
        row = await self._db.one(_SELECT, namespace, name)
        if row is None:
            await require_namespace(self._db, namespace)
            raise image_not_found(namespace, name)
        return _image(row)

    async def list_in(self, namespace: str, select: Callable[[Image], bool] | None = None,
                      page: PageRequest = FIRST_PAGE) -> Page[Image]:
        """A page of the images of `namespace` that `select` keeps, by name. NOT_FOUND for an
        unknown namespace."""
        await require_namespace(self._db, namespace)
        kept: list[Image] = []
        after = page.after
        # Read in batches until the page is full: a filter may keep few of the rows read.
        while True:
            rows = await self._db.all(
                "SELECT * FROM images WHERE namespace = ? AND name > ? ORDER BY name LIMIT ?",
                namespace, after, page.limit + 1,
            )
            for row in rows:
                image = _image(row)
                if select is None or select(image):
                    kept.append(image)
            if len(rows) <= page.limit or len(kept) > page.limit:
                break
            after = rows[-1]["name"]
        chosen = cut(kept, page, key=lambda image: image.name, size=lambda image: len(image.model_dump_json()))
        return chosen

    async def update_labels(self, namespace: str, name: str, new_labels: Callable[[Image], dict[str, str]]) -> Image:
        """Replace the labels with `new_labels(current)` (which may raise); appends /images/update."""
        async with self._db.write() as tx:
            current = self._get_in(tx, namespace, name)
            labels = new_labels(current)
            tx.execute(
                "UPDATE images SET labels = ?, updated_at = ? WHERE namespace = ? AND name = ?",
                dumps(labels), utcnow().isoformat(), namespace, name,
            )
            updated = self._get_in(tx, namespace, name)
            tx.append_event(namespace, Topic.IMAGE_UPDATE, _event(updated))
            return updated

    async def delete(self, namespace: str, name: str) -> Image:
        """Delete the row; appends /images/delete. Returns what was deleted. Its content and
        snapshots stay for garbage collection to weigh."""
        async with self._db.write() as tx:
            deleted = self._get_in(tx, namespace, name)
            tx.execute("DELETE FROM images WHERE namespace = ? AND name = ?", namespace, name)
            tx.append_event(namespace, Topic.IMAGE_DELETE, {"name": name})
            return deleted

    def _get_in(self, tx: Tx, namespace: str, name: str) -> Image:
        row = tx.one(_SELECT, namespace, name)
        if row is None:
            if not namespace_exists_in(tx, namespace):
                raise namespace_not_found(namespace)
            raise image_not_found(namespace, name)
        return _image(row)

