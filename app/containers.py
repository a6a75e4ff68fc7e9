"""ContainerService: the rules for containers as pure metadata.

Create, get, list (with containerd filters), merge-patch update with `If-Match`, and
delete. No runtime state and no runtime lock: these work whether or not a runtime is
installed. SQL lives in `store.containers`; HTTP shape lives in `api.containers`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from . import filters
from .errors import CargoholdError, ErrorKind, invalid
from .mergepatch import apply_merge_patch
from .models import FIRST_PAGE, Container, ContainerCreate, ContainerFields, ContainerHead, PageRequest
from .policy import SpecPolicy
from .runtime.tasks import TaskService
from .snapshots.service import SnapshotService
from .store.containers import ContainerStore

# Members a merge-patch may name but never change.
_IMMUTABLE = ("id", "created_at", "updated_at")


def etag_of(container: Container) -> str:
    """A strong entity tag derived from the container's whole content."""
    digest = hashlib.sha256(container.model_dump_json().encode()).hexdigest()
    return f'"{digest[:32]}"'


def if_match_allows(if_match: str | None, etag: str) -> bool:
    """RFC 9110 If-Match with strong comparison: absent or `*` allows any current state."""
    if if_match is None:
        return True
    candidates = [tag.strip() for tag in if_match.split(",")]
    return "*" in candidates or etag in candidates


def container_field(container: ContainerHead) -> filters.FieldGetter:
    """The filter adaptor for containers, as containerd's `adaptContainer`."""

    def field(path: Sequence[str]) -> str | None:
        if not path:
            return None
        head, rest = path[0], path[1:]
        if head == "id" and not rest:
            return container.id
        if head == "image" and not rest:
            return container.image
        if head == "runtime" and (not rest or list(rest) == ["name"]):
            return container.runtime
        if head == "snapshotter" and not rest:
            return container.snapshotter
        if head == "snapshot_key" and not rest:
            return container.snapshot_key
        if head == "labels" and len(rest) == 1:
            return container.labels.get(rest[0])
        return None

    return field


def _spec_document(fields: ContainerFields) -> dict[str, Any]:
    """The spec as the store keeps it."""
    return fields.spec.model_dump(mode="json", exclude_unset=True)


class ContainerService:
    def __init__(
        self, store: ContainerStore, snapshots: SnapshotService, tasks: TaskService, policy: SpecPolicy
    ) -> None:
        self._store = store
        self._policy = policy
        self._snapshots = snapshots
        self._tasks = tasks

    async def create(self, namespace: str, body: ContainerCreate) -> Container:
        """Raises ALREADY_EXISTS, VALIDATION (no such snapshot, or a spec the policy refuses);
        appends /containers/create (and /namespaces/create on first use). The snapshot named
        by `snapshot_key` is pinned."""
        self._snapshots.snapshotter(body.snapshotter)  # an unknown snapshotter is bad input
        fields = ContainerFields.model_validate(body.model_dump(exclude={"id"}, exclude_unset=True))
        await self._policy.check_spec(namespace, _spec_document(fields))
        return await self._store.create(namespace, body.id, fields)

    async def get(self, namespace: str, container_id: str) -> Container:
        return await self._store.get(namespace, container_id)

    async def list_json(
        self, namespace: str, filter_exprs: Sequence[str] = (), page: PageRequest = FIRST_PAGE
    ) -> tuple[bytes, str | None]:
        """The JSON of `ContainerList` for a page of the containers matching any of
        `filter_exprs`, and its next cursor. Raises INVALID_ARGUMENT for a bad filter
        (before touching the store) and NOT_FOUND for an unknown namespace."""
        match = filters.parse(filter_exprs)
        if match is filters.MATCH_ALL:
            return await self._store.list_json(namespace, page=page)
        # The store narrows with the filter's equalities in SQL; `matches` still decides.
        return await self._store.list_json(
            namespace, lambda head: match.matches(container_field(head)), match.equalities(), page
        )

    async def update(
        self,
        namespace: str,
        container_id: str,
        patch: dict[str, Any],
        if_match: str | None = None,
    ) -> Container:
        """Apply a JSON merge patch. Raises PRECONDITION_FAILED when `if_match` does not match
        the current ETag, INVALID_ARGUMENT for an attempt to change id or timestamps,
        pydantic's ValidationError when the result is not a valid container, VALIDATION when
        a changed spec is one the policy refuses."""
        privileged = await self._policy.privileged(namespace)  # read before the write transaction

        def patched(current: Container) -> ContainerFields:
            etag = etag_of(current)
            if not if_match_allows(if_match, etag):
                raise CargoholdError(
                    ErrorKind.PRECONDITION_FAILED,
                    f'container "{container_id}" has changed: its ETag is {etag}, '
                    f"not {if_match}; GET it again and retry",
                )
            document = current.model_dump(mode="json")
            for member in _IMMUTABLE:
                if member in patch and patch[member] != document[member]:
                    raise invalid(f'"{member}" of a container cannot be changed')
            result = apply_merge_patch(document, patch)
            for member in _IMMUTABLE:
                result.pop(member, None)
            fields = ContainerFields.model_validate(result)
            self._snapshots.snapshotter(fields.snapshotter)
            spec = _spec_document(fields)
            if spec != current.spec:  # a labels-only patch adds nothing the policy judges
                self._policy.check(namespace, spec, privileged)
            return fields

        updated, released = await self._store.update(namespace, container_id, patched)
        await self._snapshots.remove_data(released)
        return updated

    async def delete(self, namespace: str, container_id: str) -> None:
        """Raises NOT_FOUND; appends /containers/delete, then /snapshot/remove when its
        active snapshot is used by nothing else (committed images are kept)."""
        released = await self._store.delete(namespace, container_id)
        self._tasks.forget_logs(namespace, container_id)
        await self._snapshots.remove_data(released)
