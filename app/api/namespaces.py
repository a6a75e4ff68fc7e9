"""Routes for /namespaces: HTTP shape only; the rules are in NamespaceService."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Request, Response

from ..models import Namespace, NamespaceCreate, NamespaceList, NamespacePatch
from .deps import NamespaceName, Namespaces, PageQuery, link_next_page
from .middleware import came_over_unix
from .problems import problems

router = APIRouter(prefix="/namespaces", tags=["namespaces"])


@router.post(
    "",
    status_code=201,
    summary="Create a namespace",
    description="The label `cargohold.policy` (`privileged` lifts the spec policy in this namespace, "
    "`restricted` is the default) can be set, changed or removed only over the daemon's unix socket: "
    "elsewhere, here and in PATCH, 422.",
    responses=problems(400, 409, 413, 422),
)
async def create_namespace(
    body: NamespaceCreate, namespaces: Namespaces, request: Request, response: Response
) -> Namespace:
    created = await namespaces.create(body, from_unix=came_over_unix(request.scope))
    response.headers["Location"] = f"/namespaces/{created.name}"
    return created


@router.get(
    "",
    summary="List namespaces",
    description="A page at a time, by name: `limit` and `after`, as `GET /containers`.",
    responses=problems(422),
)
async def list_namespaces(
    namespaces: Namespaces, page: PageQuery, request: Request, response: Response
) -> NamespaceList:
    found = await namespaces.find(page)
    link_next_page(request, response, found.next_cursor)
    return NamespaceList(namespaces=found.items, next_cursor=found.next_cursor)


@router.get("/{name}", summary="Get a namespace", responses=problems(400, 404))
async def get_namespace(name: NamespaceName, namespaces: Namespaces) -> Namespace:
    return await namespaces.get(name)


@router.patch(
    "/{name}",
    summary="Update a namespace's labels with a JSON merge patch",
    description='Only `labels` can change: `{"labels": {"team": "web", "old": null}}`.',
    responses=problems(400, 404, 413, 422),
)
async def update_namespace(
    name: NamespaceName,
    patch: Annotated[NamespacePatch, Body(media_type="application/merge-patch+json")],
    namespaces: Namespaces,
    request: Request,
) -> Namespace:
    return await namespaces.update(name, patch, from_unix=came_over_unix(request.scope))


@router.delete(
    "/{name}", status_code=204, summary="Delete an empty namespace", responses=problems(400, 404, 409)
)
async def delete_namespace(name: NamespaceName, namespaces: Namespaces) -> Response:
    await namespaces.delete(name)
    return Response(status_code=204)
