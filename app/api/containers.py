"""Routes for /containers: HTTP shape only; the rules are in ContainerService."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Request, Response

from ..containers import etag_of_document
from ..models import Container, ContainerCreate, ContainerList, Page
from .deps import ContainerFilters, ContainerId, Containers, NamespaceHeader, Networks, PageQuery, link_next_page
from .problems import problems

router = APIRouter(prefix="/containers", tags=["containers"])

@router.post(
    "",
    status_code=201,
    summary="Create a container",
    response_model=Container,
    responses=problems(400, 404, 409, 413, 422),
)
async def create_container(
    body: ContainerCreate, namespace: NamespaceHeader, containers: Containers, networks: Networks
) -> Response:
    if body.network is not None:
        await networks.check(body.network)  # 404 naming an unknown network, before anything is made
    created = await containers.create(namespace, body)
    return document_response(created, 201, Location=f"/containers/{body.id}")


@router.get(
    "",
    summary="List containers",
    description="A page at a time, by id: `limit` (default 1,000, at most 10,000) and `after` "
    "(the previous page's `next_cursor`, also in the `Link` header with `rel=\"next\"`). "
    "A page also ends once its containers reach the daemon's --list-max-size bytes.",
    response_model=ContainerList,
    responses=problems(400, 404, 422),
)
async def list_containers(
    namespace: NamespaceHeader,
    containers: Containers,
    page: PageQuery,
    request: Request,
    filters: ContainerFilters = [],  # noqa: B006
) -> Response:
    found = await containers.list_documents(namespace, filters, page)
    response = Response(content=list_body(found), media_type="application/json")
    link_next_page(request, response, found.next_cursor)
    return response


def list_body(found: Page[bytes]) -> bytes:
    """`ContainerList` (the documented response model) as FastAPI writes it, from the
    stored documents, each as `GET /containers/{id}` writes it: lists are the hot read,
    so no model is built for them."""
    cursor = b"null" if found.next_cursor is None else json.dumps(found.next_cursor).encode()
    head, tail = b'{"containers":[', b'],"next_cursor":' + cursor + b"}"
    if not found.items:
        return head + tail
    # One join, so the body (a page may be 16 MiB) is copied once.
    parts = list(found.items)
    parts[0] = head + parts[0]
    parts[-1] += tail
    return b",".join(parts)


def document_response(document: str, status: int = 200, **headers: str) -> Response:
    """A container's stored document as the body: the JSON FastAPI would write for the
    `Container` model (store.containers), served without building and checking one."""
    return Response(document, status, {"ETag": etag_of_document(document), **headers}, "application/json")


@router.get(
    "/{container_id}", summary="Get a container", response_model=Container, responses=problems(400, 404)
)
async def get_container(container_id: ContainerId, namespace: NamespaceHeader, containers: Containers) -> Response:
    # The stored document is the body as FastAPI would write the model (store.containers).
    return document_response(await containers.get_document(namespace, container_id))


@router.patch(
    "/{container_id}",
    summary="Update a container with a JSON merge patch",
    description="RFC 7396: a `null` member deletes it (e.g. a label). `id` and the "
    "timestamps cannot change. Send `If-Match` with the ETag to update only what you read.",
    response_model=Container,
    responses=problems(400, 404, 412, 413, 422),
)
async def update_container(
    container_id: ContainerId,
    patch: Annotated[dict[str, Any], Body(media_type="application/merge-patch+json")],
    namespace: NamespaceHeader,
    containers: Containers,
    if_match: Annotated[str | None, Header(alias="If-Match")] = None,
) -> Response:
    return document_response(await containers.update(namespace, container_id, patch, if_match))


@router.delete(
    "/{container_id}",
    status_code=204,
    summary="Delete a container",
    responses=problems(400, 404, 409),
)
async def delete_container(
    container_id: ContainerId,
    namespace: NamespaceHeader,
    containers: Containers,
) -> Response:
    await containers.delete(namespace, container_id)
    return Response(status_code=204)
