"""Routes for /networks: HTTP shape only; the rules are in NetworkService."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Response

from ..identifiers import IDENTIFIER_PATTERN, validate_identifier
from ..models import Network, NetworkCreate, NetworkList
from .deps import Networks
from .problems import problems

router = APIRouter(prefix="/networks", tags=["networks"])


async def network_name_path(name: Annotated[str, Path(json_schema_extra={"pattern": IDENTIFIER_PATTERN})]) -> str:
    return validate_identifier("network", name)


NetworkName = Annotated[str, Depends(network_name_path)]


@router.post(
    "",
    status_code=201,
    summary="Create a bridge network",
    description="Its own Linux bridge (`bridge`, default `ch-` and a hash of the name) and IPv4 `subnet` "
    "(/8 to /30; the first address is the gateway). A subnet that overlaps another network's, or a bridge "
    "name another network has, is 409; a subnet that is not a network is 422.",
    responses=problems(400, 409, 413, 422),
)
async def create_network(body: NetworkCreate, networks: Networks, response: Response) -> Network:
    created = await networks.create(body)
    response.headers["Location"] = f"/networks/{created.name}"
    return created


@router.get("", summary="List networks")
async def list_networks(networks: Networks) -> NetworkList:
    return NetworkList(networks=await networks.find())


@router.get("/{name}", summary="Get a network", responses=problems(400, 404))
async def get_network(name: NetworkName, networks: Networks) -> Network:
    return await networks.get(name)


@router.delete(
    "/{name}",
    status_code=204,
    summary="Delete a network",
    description="409 while a container (of any namespace) names it or a task is attached to it; its bridge goes too.",
    responses=problems(400, 404, 409),
)
async def delete_network(name: NetworkName, networks: Networks) -> Response:
    await networks.delete(name)
    return Response(status_code=204)
