"""ContainerService: the rules for containers as pure metadata.

Create, get, list (with containerd filters), merge-patch update with `If-Match`, and
delete. No runtime state and no runtime lock: these work whether or not a runtime is
installed. SQL lives in `store.containers`; HTTP shape lives in `api.containers`.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from typing import Any

from . import filters
from .errors import CargoholdError, ErrorKind, invalid
from .images.service import ImageService
from .mergepatch import apply_merge_patch
from .models import (
    FIRST_PAGE,
    Container,
    ContainerCreate,
    ContainerFields,
    ContainerHead,
    Page,
    PageRequest,
    ProcessOverride,
    SnapshotCreate,
    SnapshotKind,
)
from .policy import SpecPolicy
from .runtime.defaults import DEFAULT_PATH, with_defaults
from .runtime.logs import TaskLogs
from .snapshots.service import SnapshotService
from .store.containers import ContainerStore
from .store.snapshots import DataDir

# Members a merge-patch may name but never change.
_IMMUTABLE = ("id", "created_at", "updated_at")


def etag_of(container: Container) -> str:
    """A strong entity tag derived from the container's whole content."""
    return etag_of_document(container.model_dump_json())


def etag_of_document(document: str) -> str:
    """The ETag of a container stored as `document` (its `model_dump_json()`)."""
    digest = hashlib.sha256(document.encode()).hexdigest()
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


def _strings(config: dict[str, Any], key: str, image: str) -> list[str]:
    value = config.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise invalid(f'the config of image "{image}" has a {key} that is not a list of strings')
    return value


def _image_user(user: object, image: str) -> dict[str, int]:
    """The OCI user of an image config's `User`: "", "root", "uid" or "uid:gid" (numeric)."""
    if not user or user == "root":
        return {"uid": 0, "gid": 0}
    text = str(user)
    uid, _, gid = text.partition(":")
    if uid.isdigit() and (not gid or gid.isdigit()):
        return {"uid": int(uid), "gid": int(gid or uid)}
    raise invalid(f'image "{image}" runs as user "{text[:100]}", a name Cargohold does not look up in the image; '
                  'give a numeric "process": {"user": {"uid": ..., "gid": ...}}')


def spec_from_image(config: dict[str, Any], image: str) -> dict[str, Any]:
    """A minimal spec running what the image config says (entrypoint + cmd, env, working dir,
    user), as `docker run IMAGE` would; the daemon's defaults fill in the rest."""
    settings = config.get("config") or {}
    if not isinstance(settings, dict):
        raise invalid(f'the config of image "{image}" has a "config" that is not an object')
    args = _strings(settings, "Entrypoint", image) + _strings(settings, "Cmd", image)
    env = _strings(settings, "Env", image) or [DEFAULT_PATH]
    working_dir = settings.get("WorkingDir")
    process: dict[str, Any] = {
        "args": args,
        "env": env,
        "cwd": working_dir if isinstance(working_dir, str) and working_dir.startswith("/") else "/",
        "user": _image_user(settings.get("User"), image),
    }
    return {"ociVersion": "1.0.2", "root": {"path": "rootfs"}, "process": process}


def _override(spec: dict[str, Any], process: ProcessOverride | None, image: str) -> dict[str, Any]:
    """`spec` with the request's process fields over its own (env merged by NAME)."""
    current = dict(spec.get("process") or {})
    if process is not None:
        given = process.model_dump(exclude_unset=True, exclude_none=True)
        if "env" in given:
            names = {entry.partition("=")[0] for entry in given["env"]}
            kept = [entry for entry in current.get("env") or [] if entry.partition("=")[0] not in names]
            given["env"] = kept + given["env"]
        current.update(given)
    if not current.get("args"):
        if image:
            raise invalid(f'image "{image}" names no command (neither entrypoint nor cmd): '
                          'give "process": {"args": [...]}')
        raise invalid('the spec has no process: give "process": {"args": [...]}')
    return {**spec, "process": current}


class ContainerService:
    def __init__(
        self, store: ContainerStore, snapshots: SnapshotService, logs: TaskLogs, policy: SpecPolicy,
        images: ImageService | None = None,
    ) -> None:
        self._store = store
        self._policy = policy
        self._snapshots = snapshots
        self._logs = logs
        self._images = images

    async def create(self, namespace: str, body: ContainerCreate) -> str:
        """Returns the new container's stored document (`get_document`). Raises
        ALREADY_EXISTS, VALIDATION (no such snapshot, or a spec the policy refuses); appends
        /containers/create (and /namespaces/create on first use). The snapshot named
        by `snapshot_key` is pinned.

        With `image` naming a pulled image and no `snapshot_key`, an active snapshot keyed by
        the container's id is prepared on the image's top layer (appends /snapshot/prepare),
        owned by the container: it goes when the container is deleted, and if the create
        fails. With no `spec`, the spec is built from the image config over the daemon's
        defaults; `process` overrides its process either way."""
        snapshotter = self._snapshots.snapshotter(body.snapshotter)  # an unknown snapshotter is bad input
        members = body.model_dump(exclude={"id", "process"}, exclude_unset=True)
        parent: str | None = None
        from_image = False
        if body.image and not body.snapshot_key and self._images is not None:
            try:
                image, config, parent = await self._images.chain_id(namespace, body.image)
            except CargoholdError as error:
                if error.kind is not ErrorKind.NOT_FOUND:
                    raise
                # With a spec, an image never pulled stays a label, as before images existed.
                if body.spec is None:
                    raise CargoholdError(ErrorKind.VALIDATION, f'image "{body.image[:300]}" is not in namespace '
                                         f'"{namespace}": pull it first (POST /images/pull), or give a spec') from None
            else:
                from_image = True
                members["image"] = image.name
                members["snapshot_key"] = body.id
                if body.spec is None:
                    members["spec"] = with_defaults(_override(spec_from_image(config, image.name), body.process,
                                                              image.name))
        if body.spec is None and not from_image:  # no image service: the spec is needed
            raise CargoholdError(ErrorKind.VALIDATION, "body.spec: field required")
        if body.process is not None and "spec" in members and body.spec is not None:
            members["spec"] = _override(members["spec"], body.process, body.image)
        fields = ContainerFields.model_validate(members)
        await self._policy.check_spec(namespace, _spec_document(fields))
        if not from_image:
            return await self._store.create(namespace, body.id, fields)
        try:
            await self._store.get(namespace, body.id)
        except CargoholdError as error:
            if error.kind is not ErrorKind.NOT_FOUND:
                raise
        else:
            raise CargoholdError(ErrorKind.ALREADY_EXISTS, f'container "{body.id}" already exists in namespace '
                                 f'"{namespace}"')
        try:
            await self._snapshots.prepare(namespace, snapshotter.name, SnapshotCreate(
                key=body.id, parent=parent, kind=SnapshotKind.ACTIVE, labels={"cargohold.container": body.id}))
        except CargoholdError as refused:
            if refused.kind is ErrorKind.VALIDATION and parent is not None and parent in refused.detail:
                raise CargoholdError(ErrorKind.VALIDATION, f'the layers of image "{members["image"]}" are not '
                                     f'unpacked in snapshotter "{snapshotter.name}": pull it with "unpack": true '
                                     "(and this snapshotter)") from None
            raise
        try:
            return await self._store.create(namespace, body.id, fields)
        except BaseException:
            await asyncio.shield(self._snapshots.remove(namespace, snapshotter.name, body.id))
            raise

    async def get(self, namespace: str, container_id: str) -> Container:
        return await self._store.get(namespace, container_id)

    async def get_document(self, namespace: str, container_id: str) -> str:
        """The container as its stored JSON document, for serving without a model built."""
        return await self._store.get_document(namespace, container_id)

    async def list_documents(
        self, namespace: str, filter_exprs: Sequence[str] = (), page: PageRequest = FIRST_PAGE
    ) -> Page[bytes]:
        """A page of the containers matching any of `filter_exprs`, each as its JSON
        document (`ContainerStore.list_documents`). Raises INVALID_ARGUMENT for a bad
        filter (before touching the store) and NOT_FOUND for an unknown namespace."""
        match = filters.parse(filter_exprs)
        if match is filters.MATCH_ALL:
            return await self._store.list_documents(namespace, page=page)
        # The store narrows with the filter's equalities in SQL; `matches` still decides.
        return await self._store.list_documents(
            namespace, lambda head: match.matches(container_field(head)), match.equalities(), page
        )

    async def update(
        self,
        namespace: str,
        container_id: str,
        patch: dict[str, Any],
        if_match: str | None = None,
    ) -> str:
        """Apply a JSON merge patch; returns the new stored document. Raises
        PRECONDITION_FAILED when `if_match` does not match the current ETag, INVALID_ARGUMENT
        for an attempt to change id or timestamps, pydantic's ValidationError when the result
        is not a valid container, VALIDATION when a changed spec is one the policy refuses."""
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
        await self._release(released)
        return updated

    async def delete(self, namespace: str, container_id: str) -> None:
        """Raises NOT_FOUND; appends /containers/delete, then /snapshot/remove when its
        active snapshot is used by nothing else (committed images are kept). The log of its
        last task goes too."""
        released = await self._store.delete(namespace, container_id)
        self._logs.forget(namespace, container_id)  # its last task's log goes with it
        await self._release(released)

    async def _release(self, released: list[DataDir]) -> None:
        """Delete the data of the snapshots a container let go; the image chain under them
        may now be unreached, which is the collector's to judge."""
        if released:
            await self._snapshots.remove_data(released)
            self._snapshots.after_release()
