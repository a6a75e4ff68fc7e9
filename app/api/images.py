"""Routes for /images: HTTP shape only; the rules are in ImageService.

Image names are normalized references holding `/` and `:`
(`docker.io/library/busybox:latest`), so the routes take them whole as a path
(`GET /images/docker.io/library/busybox:latest`). A stored name always ends in a tag or a
digest, never in `/config`, `/export` or `/push`, so `/images/{name}/config` (and the others)
cannot be mistaken for a name.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Path, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel

from ..daemon import Daemon
from ..images.archive import ArchiveLimits
from ..models import Image, ImageList, ImagePatch, ImagePull, ImagePush, ImagePushResult
from ..streams import ClientStreams
from .deps import DaemonDep, ImageFilters, Images, NamespaceHeader, PageQuery, Streams, client_key, link_next_page
from .problems import problems
from .sse import Report, event_source, held_while_sent, progress_frames

log = logging.getLogger(__name__)

router = APIRouter(prefix="/images", tags=["images"])

ImageName = Annotated[
    str,
    Path(description="the image's name, slashes and all, e.g. docker.io/library/busybox:latest "
         "(a short form such as busybox is normalized)"),
]


# The 200 answer a route with `progress_stream` documents beside its JSON one.
PROGRESS_STREAM: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}},
}


def progress_stream(
    run: Callable[[Report], Coroutine[Any, Any, BaseModel]], what: str, daemon: Daemon, streams: ClientStreams,
    request: Request,
) -> Response:
    """`run`'s progress as server-sent events (`sse.progress_frames`), one of the client's streams
    while it is sent (429 past --max-streams-per-client)."""
    release = streams.acquire(client_key(request), f"a {what} progress stream")
    return held_while_sent(event_source(progress_frames(run, what), daemon.settings), release)


@router.post(
    "/pull",
    status_code=201,
    summary="Pull an image from a registry",
    description="Resolves the reference, picks the manifest of `platform` (default: the host's) from an "
    "index, fetches the manifest, config and layers into the content store (each verified by digest and "
    "size), unpacks the layers as committed snapshots named by chain id, then creates or updates the image. "
    "A failed pull creates no image. 404: no such image in the registry; 401: credentials missing or "
    "refused; 503: the registry is unreachable or failed.\n\n"
    "With `Accept: text/event-stream` the answer is 200 and a stream of progress: `resolved` "
    "(`{reference, target}`), `progress` per blob (`{digest, media_type, bytes, total}`), `unpacked` per "
    "layer (`{layer, chain_id, reused}`), then `done` with the Image or `error` with a problem+json body "
    "(its `status` what the plain call would answer). Closing the stream abandons the pull. It counts "
    "against --max-streams-per-client (429).",
    response_model=Image,
    responses={**PROGRESS_STREAM, **problems(400, 401, 404, 413, 422, 429, 503)},
)
async def pull_image(
    body: ImagePull,
    images: Images,
    namespace: NamespaceHeader,
    daemon: DaemonDep,
    streams: Streams,
    request: Request,
    accept: Annotated[str, Header()] = "",
) -> Response:
    if "text/event-stream" in accept:

        async def pulled(report: Report) -> Image:
            image, _ = await images.pull(namespace, body, report)
            return image

        return progress_stream(pulled, "pull", daemon, streams, request)
    image, _ = await images.pull(namespace, body)
    return JSONResponse(image.model_dump(mode="json"), 201, headers={"Location": f"/images/{image.name}"})


@router.post(
    "/import",
    status_code=201,
    summary="Import images from an OCI image layout tar or a docker save archive",
    description="The body is an OCI image layout as a tar (`oci-layout`, `index.json`, `blobs/...`, as "
    "`skopeo copy ... oci-archive:FILE` or `GET /images/{name}/export` write it) or a `docker save` archive "
    "(`manifest.json`), plain or compressed with gzip, zstd, bzip2 or xz (told from its bytes); any content "
    "type is accepted. The upload is spooled to an unnamed file in a private directory of the daemon (never "
    "held in memory, gone when the import ends) and counted against `--import-max-size`, the tar again once "
    "decompressed (413), with at most `--import-archive-max-members` members (413). Every blob goes into the "
    "content store with its digest and size verified: an OCI layout's against their descriptors; a docker "
    "save's config and layer tars are hashed as they are stored and get a Docker schema 2 manifest "
    "(`application/vnd.docker.image.rootfs.diff.tar` layers). From an index, the manifest of the daemon's "
    "platform is imported, as a pull does. The layers are unpacked as committed snapshots named by chain id; "
    "a layer that would write outside its root is a 400.\n\n"
    "Names, as containerd's import: an index.json entry's `io.containerd.image.name` annotation, else its "
    "`org.opencontainers.image.ref.name` when that is a full reference (holding `/`, `:` or `@`); a docker "
    "save image's `RepoTags` (one image per tag); normalized as pulled names are. `name` names the rest: an "
    "entry whose ref name is a bare tag (`latest`, as umoci writes) becomes `name:tag`, an image with no name "
    "at all becomes `name` (`:latest` if it has no tag); an image left without a name is a 400. An existing "
    "name is pointed at the imported image (`/images/update`).\n\n"
    "201: the images made or updated, in the archive's order. A refused import (400: not a tar, a truncated "
    "tar, broken compression, a missing blob, a digest or size mismatch, an unknown media type, a platform "
    "the index lacks; 413) creates no image and leaves no partial blob; blobs and layers it had stored are "
    "reclaimed by garbage collection.",
    openapi_extra={
        "requestBody": {
            "required": True,
            # Any Content-Type is read as the archive; octet-stream is what generated clients send.
            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        }
    },
    responses=problems(400, 413, 422),
)
async def import_images(
    request: Request,
    images: Images,
    namespace: NamespaceHeader,
    daemon: DaemonDep,
    name: Annotated[str | None, Query(description="the repository (or whole name) of images the archive does "
                                      "not name fully, e.g. example.com/app")] = None,
    snapshotter: Annotated[str | None, Query(description="overlayfs or native; default: the daemon's "
                                             "snapshotter")] = None,
) -> list[Image]:
    limits = ArchiveLimits.from_settings(daemon.settings)
    return [*await images.import_archive(namespace, request.stream(), limits, name, snapshotter)]


@router.get(
    "",
    summary="List images",
    description="A page at a time, by name. `filter` as `GET /containers`, over `name`, "
    "`target.digest`, `target.mediatype` and `labels.<key>`.",
    responses=problems(400, 404, 422),
)
async def list_images(
    images: Images,
    namespace: NamespaceHeader,
    page: PageQuery,
    request: Request,
    response: Response,
    filters: ImageFilters = [],  # noqa: B006
) -> ImageList:
    found = await images.list(namespace, filters, page)
    link_next_page(request, response, found.next_cursor)
    return ImageList(images=found.items, next_cursor=found.next_cursor)


@router.post(
    "/{name:path}/push",
    summary="Push an image to a registry",
    description="Uploads the image's config and layers, then its manifest, then (for an index) the index, "
    "and tags it with the reference's tag (or names it by digest). A blob the registry already has is not "
    "sent again (each is asked for with HEAD first); one it lacks is mounted from the image's own "
    "repository when the image came from the same registry (cross-repository mount), else uploaded from "
    "the content store. An index whose manifests are not all in the content store (a pull keeps only the "
    "platform it chose) is pushed as the pulled platform's manifest alone, under the tag, as Docker pushes "
    "a single-platform image; `digest` in the answer says what the reference now names. Nothing changes in "
    "the daemon. 404: no such image (or the registry said so); 409: the image's content is incomplete; "
    "401: credentials missing or refused; 503: the registry is unreachable or failed.\n\n"
    "With `Accept: text/event-stream` the answer is a stream of progress, as a pull's: `progress` per blob "
    "as it is sent (`{digest, media_type, bytes, total}`; once, at its size, for a blob not sent), `pushed` "
    "per blob (`{digest, media_type, size, outcome}`, outcome `uploaded`, `mounted` or `exists`), "
    "`manifest` per manifest put (`{digest, media_type, tag}`, the top last), then `done` with the "
    "ImagePushResult or `error` with a problem+json body (its `status` what the plain call would answer). "
    "Closing the stream abandons the push. It counts against --max-streams-per-client (429).",
    response_model=ImagePushResult,
    responses={**PROGRESS_STREAM, **problems(400, 401, 404, 409, 413, 422, 429, 503)},
)
async def push_image(
    name: ImageName,
    body: ImagePush,
    images: Images,
    namespace: NamespaceHeader,
    daemon: DaemonDep,
    streams: Streams,
    request: Request,
    accept: Annotated[str, Header()] = "",
) -> Response:
    if "text/event-stream" in accept:
        return progress_stream(lambda report: images.push(namespace, name, body, report), "push", daemon, streams,
                               request)
    result = await images.push(namespace, name, body)
    return JSONResponse(result.model_dump(mode="json"))


@router.get(
    "/{name:path}/export",
    summary="Export an image as an OCI image layout tar",
    description="An OCI image layout as a tar (sent as `application/octet-stream`, streamed, its length "
    "announced): "
    "`oci-layout`, `index.json`, then each blob once as `blobs/sha256/<hex>`; what `skopeo` "
    "(`oci-archive:FILE`), `umoci` (on the extracted directory) and `POST /images/import` read. index.json "
    "holds one entry annotated with the image's name (`io.containerd.image.name`) and tag "
    "(`org.opencontainers.image.ref.name`), so an import names it as it was. The entry is the image's target, "
    "or, for an index whose manifests are not all in the content store (a pull keeps only the platform it "
    "chose), the pulled platform's manifest alone, as `docker save` does. 404: no such image; 409: its "
    "content is incomplete.",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
               **problems(400, 404, 409)},
)
async def export_image(name: ImageName, images: Images, namespace: NamespaceHeader) -> StreamingResponse:
    image, size, chunks = await images.export(namespace, name)
    filename = image.name.translate(_FILENAME_SAFE)
    return StreamingResponse(chunks, media_type="application/octet-stream", headers={
        "Content-Length": str(size), "Content-Disposition": f'attachment; filename="{filename}.tar"'})


# A name's characters a file name should not hold (a name is [A-Za-z0-9._-/:@] and IPv6 brackets).
_FILENAME_SAFE = str.maketrans("/:@[]", "_____")


@router.get(
    "/{name:path}/config",
    summary="Get an image's config",
    description="The OCI image config (entrypoint, cmd, env, rootfs ...) of the platform pulled.",
    responses=problems(400, 404),
)
async def get_image_config(name: ImageName, images: Images, namespace: NamespaceHeader) -> dict[str, Any]:
    return await images.config(namespace, name)


@router.get("/{name:path}", summary="Get an image", responses=problems(400, 404))
async def get_image(name: ImageName, images: Images, namespace: NamespaceHeader) -> Image:
    return await images.get(namespace, name)


@router.patch(
    "/{name:path}",
    summary="Update an image's labels with a JSON merge patch",
    description='Only `labels` can change: `{"labels": {"team": "web", "old": null}}`.',
    responses=problems(400, 404, 413, 422),
)
async def update_image(
    name: ImageName,
    patch: Annotated[ImagePatch, Body(media_type="application/merge-patch+json")],
    images: Images,
    namespace: NamespaceHeader,
) -> Image:
    return await images.patch(namespace, name, patch)


@router.delete(
    "/{name:path}",
    status_code=204,
    summary="Delete an image",
    description="The name goes; its content and snapshots stay until garbage collection (to come) finds "
    "nothing else needs them.",
    responses=problems(400, 404),
)
async def delete_image(name: ImageName, images: Images, namespace: NamespaceHeader) -> Response:
    await images.delete(namespace, name)
    return Response(status_code=204)
