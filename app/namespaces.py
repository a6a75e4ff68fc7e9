"""NamespaceService: namespaces and their labels.

A namespace is also created implicitly by the first write inside it (see the stores);
it can only be deleted once empty.
"""

from __future__ import annotations

from .errors import invalid
from .mergepatch import apply_merge_patch
from .models import Namespace, NamespaceCreate, NamespaceLabels, NamespacePatch
from .store.namespaces import NamespaceStore


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

    async def update(self, name: str, patch: NamespacePatch) -> Namespace:
        """Merge-patch the labels (`{"labels": {"k": null}}` deletes k; `"labels": null` all).
        Raises INVALID_ARGUMENT for a rename, pydantic's ValidationError for bad labels."""
        if "name" in patch.model_fields_set and patch.name != name:
            raise invalid("the name of a namespace cannot be changed")
        fields = patch.model_dump(exclude_unset=True)

        def new_labels(current: Namespace) -> dict[str, str]:
            merged = apply_merge_patch({"labels": current.labels}, {"labels": fields.get("labels", {})})
            return NamespaceLabels.model_validate({"labels": merged.get("labels", {})}).labels

        return await self._store.update(name, new_labels)

    async def delete(self, name: str) -> None:
        """Raises NOT_FOUND, or CONFLICT while it holds objects; appends /namespaces/delete."""
        await self._store.delete(name)
