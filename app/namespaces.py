"""NamespaceService: namespaces and their labels.

A namespace is also created implicitly by the first write inside it (see the stores);
it can only be deleted once empty.
"""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter

from .errors import invalid
from .mergepatch import apply_merge_patch
from .models import Labels, Namespace, NamespaceCreate
from .store.namespaces import NamespaceStore

_labels = TypeAdapter(Labels)


class NamespaceService:
    def __init__(self, store: NamespaceStore) -> None:
        self._store = store

    async def create(self, body: NamespaceCreate) -> Namespace:
        """Raises ALREADY_EXISTS; appends /namespaces/create."""
        return await self._store.create(body.name, body.labels)

    async def get(self, name: str) -> Namespace:
        return await self._store.get(name)

    async def find(self) -> list[Namespace]:
        return await self._store.list_all()

    async def update(self, name: str, patch: dict[str, Any]) -> Namespace:
        """Merge-patch the labels (`{"labels": {"k": null}}` deletes k). Only labels change."""
        unknown = sorted(set(patch) - {"labels", "name"})
        if unknown:
            raise invalid(f"only the labels of a namespace can be changed, not {', '.join(unknown)}")
        if "name" in patch and patch["name"] != name:
            raise invalid("the name of a namespace cannot be changed")
        if "labels" in patch and patch["labels"] is not None and not isinstance(patch["labels"], dict):
            raise invalid('"labels" must be an object of string values')

        def new_labels(current: Namespace) -> dict[str, str]:
            merged = apply_merge_patch(current.labels, patch.get("labels", {}))
            return _labels.validate_python(merged if merged is not None else {})

        return await self._store.update(name, new_labels)

    async def delete(self, name: str) -> None:
        """Raises NOT_FOUND, or CONFLICT while it holds objects; appends /namespaces/delete."""
        await self._store.delete(name)
