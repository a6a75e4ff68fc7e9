"""NamespaceService: namespaces and their labels.

A namespace is also created implicitly by the first write inside it (see the stores);
it can only be deleted once empty. The label `cargohold.policy` decides what the
namespace's specs may ask of the host (see `policy`): only a caller on the unix socket,
root-equivalent already, may set, change or remove it.
"""

from __future__ import annotations

from .errors import CargoholdError, ErrorKind, invalid
from .mergepatch import apply_merge_patch
from .models import FIRST_PAGE, Namespace, NamespaceCreate, NamespaceLabels, NamespacePatch, Page, PageRequest
from .policy import POLICY_LABEL, POLICY_VALUES
from .store.namespaces import NamespaceStore


class NamespaceService:
    def __init__(self, store: NamespaceStore) -> None:
        self._store = store

    async def create(self, body: NamespaceCreate, from_unix: bool) -> Namespace:
        """Raises ALREADY_EXISTS, VALIDATION (the policy label, unless `from_unix`);
        appends /namespaces/create."""
        _check_policy_label({}, body.labels, from_unix)
        return await self._store.create(body.name, body.labels)

    async def get(self, name: str) -> Namespace:
        return await self._store.get(name)

    async def find(self, page: PageRequest = FIRST_PAGE) -> Page[Namespace]:
        return await self._store.list_all(page)

    async def update(self, name: str, patch: NamespacePatch, from_unix: bool) -> Namespace:
        """Merge-patch the labels (`{"labels": {"k": null}}` deletes k; `"labels": null` all).
        Raises INVALID_ARGUMENT for a rename, pydantic's ValidationError for bad labels,
        VALIDATION for a change of the policy label unless `from_unix`."""
        if "name" in patch.model_fields_set and patch.name != name:
            raise invalid("the name of a namespace cannot be changed")
        fields = patch.model_dump(exclude_unset=True)

        def new_labels(current: Namespace) -> dict[str, str]:
            merged = apply_merge_patch({"labels": current.labels}, {"labels": fields.get("labels", {})})
            labels = NamespaceLabels.model_validate({"labels": merged.get("labels", {})}).labels
            _check_policy_label(current.labels, labels, from_unix)
            return labels

        return await self._store.update(name, new_labels)

    async def delete(self, name: str) -> None:
        """Raises NOT_FOUND, or CONFLICT while it holds objects; appends /namespaces/delete."""
        await self._store.delete(name)


def _check_policy_label(current: dict[str, str], labels: dict[str, str], from_unix: bool) -> None:
    """The policy label may only take a known value, and only a unix-socket caller may set,
    change or remove it (422 rather than 403: DESIGN's statuses, as the policy's own refusals)."""
    field = f'labels."{POLICY_LABEL}"'
    value = labels.get(POLICY_LABEL)
    if value == current.get(POLICY_LABEL):
        return
    if not from_unix:
        raise CargoholdError(
            ErrorKind.VALIDATION,
            f"{field} decides what the namespace's specs may do to the host: it can be set, changed or "
            "removed only over the daemon's unix socket",
        )
    if value is not None and value not in POLICY_VALUES:
        raise CargoholdError(ErrorKind.VALIDATION, f"{field} must be one of {', '.join(POLICY_VALUES)}, not {value!r}")
