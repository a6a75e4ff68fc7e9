"""Routes for /images: HTTP shape only; the rules are in ImageService.

Image names are normalized references holding `/` and `:`
(`docker.io/library/busybox:latest`), so the routes take them whole as a path
(`GET /images/docker.io/library/busybox:latest`). A stored name always ends in a tag or a
digest, never in `/config`, so `/images/{name}/config` cannot be mistaken for a name.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from http import HTTPStatus
from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from sse_starlette import ServerSentEvent

from ..errors import CargoholdError
from ..images.service import ImageService
from ..models import Image, ImageList, ImagePatch, ImagePull
from .deps import DaemonDep, Images, NamespaceHeader, PageQuery, Streams, client_key, link_next_page
from .problems import STATUS, problems
from .sse import event_source, held_while_sent

log = logging.getLogger(__name__)

router = APIRouter(prefix="/images", tags=["images"])

ImageName = Annotated[
    str,
    Path(description="the image's name, slashes and all, e.g. docker.io/library/busybox:latest "
         "(a short form such as busybox is normalized)"),
]


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
    responses={200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}},
               **problems(400, 401, 404, 413, 422, 429, 503)},
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
        release = streams.acquire(client_key(request), "a pull progress stream")
        return held_while_sent(event_source(_pull_frames(images, namespace, body), daemon.settings), release)
    image, _ = await images.pull(namespace, body)
    return JSONResponse(image.model_dump(mode="json"), 201, headers={"Location": f"/images/{image.name}"})


async def _pull_frames(images: ImageService, namespace: str, body: ImagePull) -> AsyncIterator[ServerSentEvent]:
    """The pull's progress as SSE frames; the pull runs as a task of its own, cancelled if
    the client goes (the generator is closed)."""
    queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
    pulling = asyncio.create_task(images.pull(namespace, body, lambda kind, data: queue.put_nowait((kind, data))),
                                  name="cargohold.pull")
    try:
        while True:
            following = asyncio.ensure_future(queue.get())
            await asyncio.wait({following, pulling}, return_when=asyncio.FIRST_COMPLETED)
            if not following.done():
                following.cancel()
                break
            kind, data = following.result()
            yield ServerSentEvent(data=json.dumps(data), event=kind)
        while not queue.empty():
            kind, data = queue.get_nowait()
            yield ServerSentEvent(data=json.dumps(data), event=kind)
        try:
            image, _ = pulling.result()
        except CargoholdError as error:
            yield _error_frame(STATUS[error.kind], error.detail, f"urn:cargohold:problem:{error.kind.value}")
            return
        except Exception:
            log.exception("pull of %s failed", body.reference[:300])
            yield _error_frame(500, "the pull failed on an internal error; the daemon's log says more")
            return
        yield ServerSentEvent(data=image.model_dump_json(), event="done")
    finally:
        if not pulling.done():
            pulling.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.shield(asyncio.wait([pulling]))


def _error_frame(status: int, detail: str, kind: str = "about:blank") -> ServerSentEvent:
    problem = {"type": kind, "title": HTTPStatus(status).phrase, "status": status, "detail": detail}
    return ServerSentEvent(data=json.dumps(problem), event="error")


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
    filter: Annotated[list[str], Query(description="containerd filter; repeat to OR")] = [],  # noqa: B006
) -> ImageList:
    found = await images.list(namespace, filter, page)
    link_next_page(request, response, found.next_cursor)
    return ImageList(images=found.items, next_cursor=found.next_cursor)


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
