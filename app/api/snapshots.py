"""Routes for /snapshots: HTTP shape only; the rules are in SnapshotService."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from ..models import Mount, Snapshot, SnapshotCommit, SnapshotCreate, SnapshotList, Usage
from .deps import NamespaceHeader, PageQuery, SnapshotKey, Snapshots, link_next_page
from .problems import problems

router = APIRouter(prefix="/snapshots", tags=["snapshots"])

SnapshotterQuery = Annotated[
    str | None, Query(description="overlayfs or native; default: the daemon's snapshotter")
]


@router.post(
    "",
    status_code=201,
    summary="Prepare (active) or view a snapshot",
    responses=problems(400, 409, 413, 422),
)
async def prepare_snapshot(
    body: SnapshotCreate,
    namespace: NamespaceHeader,
    snapshots: Snapshots,
    response: Response,
    snapshotter: SnapshotterQuery = None,
) -> Snapshot:
    created = await snapshots.prepare(namespace, snapshotter, body)
    response.headers["Location"] = f"/snapshots/{created.key}"
    return created


@router.post(
    "/import",
    status_code=201,
    summary="Import a tar stream as a committed snapshot",
    description="The body is a tar (plain, gzip, bzip2 or xz), streamed; any content type is "
    "accepted. With `parent`, it is a layer applied on that committed snapshot: `.wh.` "
    "whiteouts delete what the parent holds. Nothing in it reaches outside the snapshot: "
    "unsafe members are a 400. 413 past `--import-max-size` (the body, and the tar once "
    "decompressed), `--import-max-entries`, or a PAX/GNU long-name header over 1 MiB; 400 "
    "when the upload sends nothing for `--import-idle-timeout` seconds. A refused import "
    "leaves nothing. The data is synced to disk before the snapshot is committed.",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        }
    },
    responses=problems(400, 409, 413, 422),
)
async def import_snapshot(
    request: Request,
    namespace: NamespaceHeader,
    snapshots: Snapshots,
    response: Response,
    name: Annotated[str, Query(description="the committed snapshot to create")],
    parent: Annotated[str | None, Query(description="a committed snapshot to apply the layer on")] = None,
    snapshotter: SnapshotterQuery = None,
) -> Snapshot:
    created = await snapshots.import_tar(namespace, snapshotter, name, parent, request.stream())
    response.headers["Location"] = f"/snapshots/{created.key}"
    return created


@router.get(
    "",
    summary="List snapshots",
    description="A page at a time, by key: `limit` and `after`, as `GET /containers`.",
    responses=problems(400, 404, 422),
)
async def list_snapshots(
    namespace: NamespaceHeader,
    snapshots: Snapshots,
    page: PageQuery,
    request: Request,
    response: Response,
    snapshotter: SnapshotterQuery = None,
) -> SnapshotList:
    found = await snapshots.find(namespace, snapshotter, page)
    link_next_page(request, response, found.next_cursor)
    return SnapshotList(snapshots=found.items, next_cursor=found.next_cursor)


@router.get("/{key}", summary="Get a snapshot", responses=problems(400, 404))
async def get_snapshot(
    key: SnapshotKey, namespace: NamespaceHeader, snapshots: Snapshots, snapshotter: SnapshotterQuery = None
) -> Snapshot:
    return await snapshots.get(namespace, snapshotter, key)


@router.post(
    "/{key}/commit",
    status_code=201,
    summary="Commit an active snapshot under a name",
    responses=problems(400, 404, 409, 413, 422),
)
async def commit_snapshot(
    key: SnapshotKey,
    body: SnapshotCommit,
    namespace: NamespaceHeader,
    snapshots: Snapshots,
    response: Response,
    snapshotter: SnapshotterQuery = None,
) -> Snapshot:
    committed = await snapshots.commit(namespace, snapshotter, key, body)
    response.headers["Location"] = f"/snapshots/{committed.key}"
    return committed


@router.get("/{key}/mounts", summary="What to mount to use a snapshot", responses=problems(400, 404, 409))
async def get_snapshot_mounts(
    key: SnapshotKey, namespace: NamespaceHeader, snapshots: Snapshots, snapshotter: SnapshotterQuery = None
) -> list[Mount]:
    return await snapshots.mounts(namespace, snapshotter, key)


@router.get("/{key}/usage", summary="Disk usage of a snapshot's own layer", responses=problems(400, 404))
async def get_snapshot_usage(
    key: SnapshotKey, namespace: NamespaceHeader, snapshots: Snapshots, snapshotter: SnapshotterQuery = None
) -> Usage:
    return await snapshots.usage(namespace, snapshotter, key)


@router.delete(
    "/{key}", status_code=204, summary="Remove a snapshot that nothing uses", responses=problems(400, 404, 409)
)
async def remove_snapshot(
    key: SnapshotKey, namespace: NamespaceHeader, snapshots: Snapshots, snapshotter: SnapshotterQuery = None
) -> Response:
    await snapshots.remove(namespace, snapshotter, key)
    return Response(status_code=204)
