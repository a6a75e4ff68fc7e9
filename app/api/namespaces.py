"""Routes for /namespaces: HTTP shape only; the rules are in NamespaceService."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Response

from ..models import Namespace, NamespaceCreate, NamespaceList, NamespacePatch
from .deps import NamespaceName, Namespaces
from .problems import problems

router = APIRouter(prefix="/namespaces", tags=["namespaces"])


@router.post("", status_code=201, summary="Create a namespace", responses=problems(400, 409, 413, 422))
async def create_namespace(
    body: NamespaceCreate, namespaces: Namespaces, response: Response
) -> Namespace:
    created = await namespaces.create(body)
    response.headers["Location"] = f"/namespaces/{created.name}"
    return created


@router.get("", summary="List namespaces")
async def list_namespaces(namespaces: Namespaces) -> NamespaceList:
    return NamespaceList(namespaces=await namespaces.find())


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
) -> Namespace:
    return await namespaces.update(name, patch)


@router.delete(
    "/{name}", status_code=204, summary="Delete an empty namespace", responses=problems(400, 404, 409)
)
async def delete_namespace(name: NamespaceName, namespaces: Namespaces) -> Response:
    await namespaces.delete(name)
    return Response(status_code=204)
