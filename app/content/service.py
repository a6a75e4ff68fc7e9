"""ContentService: what the /content routes read of the content store (containerd's content
service, read side): blobs listed a page at a time, their info, their bytes or a range of them.

The content store is global to the daemon, not per namespace: a blob is shared by every image
that holds it, whatever its namespace, and it is named by its digest (which a caller can only
know by having the content or a manifest naming it). Nothing here writes or deletes: blobs come
from pulls and imports and go with garbage collection.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

from ..models import Page, PageRequest
from ..pages import cut
from .digests import validate_digest
from .store import ContentStore, Info

# About the JSON bytes of one blob in a list (digest, size, created_at): what a page's byte
# bound counts per row.
INFO_BYTES = 140


class ContentService:
    def __init__(self, store: ContentStore) -> None:
        self._store = store

    async def list(self, page: PageRequest) -> Page[Info]:
        """A page of the committed blobs, by digest, after `page.after`."""
        blobs = [info for info in await self._store.walk() if info.digest > page.after]
        return cut(blobs[: page.limit + 1], page, key=lambda info: info.digest, size=lambda info: INFO_BYTES)

    async def info(self, digest: str) -> Info:
        """INVALID_ARGUMENT for a digest that does not parse, NOT_FOUND for an absent blob."""
        return await self._store.info(validate_digest(digest))

    async def read(self, digest: str, offset: int = 0, length: int | None = None) -> AsyncGenerator[bytes, None]:
        """The bytes [offset, offset + length) of a blob, streamed; the file is open when this
        returns (NOT_FOUND is raised here, never mid-stream), and a blob removed meanwhile is
        still read whole. Close the generator (`contextlib.aclosing`) to close the file."""
        return await self._store.stream(validate_digest(digest), offset, length)
