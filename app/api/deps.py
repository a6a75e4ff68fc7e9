"""Injected things, each named once as an `Annotated` alias for the routers.

Every dependency is `async def`: FastAPI runs a plain `def` dependency in its thread
pool, a thread hop per dependency per request for what is an attribute lookup."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Header, Path, Query, Request, Response
from starlette.requests import HTTPConnection

from ..containers import ContainerService
from ..content.digests import validate_digest
from ..content.service import ContentService
from ..daemon import Daemon
from ..events import EventService
from ..identifiers import IDENTIFIER_PATTERN, validate_identifier
from ..images.service import ImageService
from ..models import DEFAULT_PAGE_LIMIT, MAX_PAGE_LIMIT, PageRequest
from ..namespaces import NamespaceService
from ..network.service import NetworkService
from ..runtime.tasks import TaskService
from ..serving import PEER_UID_KEY
from ..snapshots.service import SnapshotService
from ..streams import ClientStreams
from .middleware import came_over_unix


async def get_daemon(request: Request) -> Daemon:
    daemon: Daemon = request.state.daemon
    return daemon


DaemonDep = Annotated[Daemon, Depends(get_daemon)]


async def get_containers(daemon: DaemonDep) -> ContainerService:
    return daemon.containers


async def get_namespaces(daemon: DaemonDep) -> NamespaceService:
    return daemon.namespaces


async def get_events(daemon: DaemonDep) -> EventService:
    return daemon.events


async def get_snapshots(daemon: DaemonDep) -> SnapshotService:
    return daemon.snapshots


async def get_images(daemon: DaemonDep) -> ImageService:
    return daemon.images


async def get_content(daemon: DaemonDep) -> ContentService:
    return daemon.content


async def get_tasks(daemon: DaemonDep) -> TaskService:
    return daemon.tasks


async def get_networks(daemon: DaemonDep) -> NetworkService:
    return daemon.networks


async def get_streams(request: Request, daemon: DaemonDep) -> ClientStreams:
    return streams_of(request, daemon)


def streams_of(connection: HTTPConnection, daemon: Daemon) -> ClientStreams:
    """The app's count of streams per client (requests' and WebSockets' alike)."""
    # One count per app, made on first use (the app outlives a lifespan in tests).
    streams: ClientStreams | None = getattr(connection.app.state, "client_streams", None)
    if streams is None:
        streams = ClientStreams(daemon.settings.max_streams_per_client)
        connection.app.state.client_streams = streams
    return streams


def client_key(request: HTTPConnection) -> str:
    """Whose streams a request counts against: TCP clients by address; unix-socket callers
    by uid where the server gives it (app/serving.py), else all as one ("unix socket")."""
    if came_over_unix(request.scope) or request.client is None:
        uid = request.scope.get(PEER_UID_KEY)
        return "unix socket" if uid is None else f"uid {uid} on the unix socket"
    return request.client.host


Containers = Annotated[ContainerService, Depends(get_containers)]
Streams = Annotated[ClientStreams, Depends(get_streams)]
Namespaces = Annotated[NamespaceService, Depends(get_namespaces)]
Events = Annotated[EventService, Depends(get_events)]
Snapshots = Annotated[SnapshotService, Depends(get_snapshots)]
Tasks = Annotated[TaskService, Depends(get_tasks)]
Networks = Annotated[NetworkService, Depends(get_networks)]
Images = Annotated[ImageService, Depends(get_images)]
Content = Annotated[ContentService, Depends(get_content)]


async def namespace_header(
    cargohold_namespace: Annotated[
        str,
        Header(
            alias="Cargohold-Namespace",
            description="the namespace the request acts in",
            json_schema_extra={"pattern": IDENTIFIER_PATTERN},
        ),
    ] = "default",
) -> str:
    # Checked here, not by FastAPI's pattern, so the problem says 400 and which rule broke.
    return validate_identifier("namespace", cargohold_namespace)


async def container_id_path(
    container_id: Annotated[str, Path(json_schema_extra={"pattern": IDENTIFIER_PATTERN})],
) -> str:
    return validate_identifier("container id", container_id)


async def namespace_name_path(
    name: Annotated[str, Path(json_schema_extra={"pattern": IDENTIFIER_PATTERN})],
) -> str:
    return validate_identifier("namespace", name)


# A snapshot's key: a user's identifier, or the chain id (`sha256:<hex>`) unpack names a layer by.
SNAPSHOT_KEY_PATTERN = rf"{IDENTIFIER_PATTERN}|^sha256:[a-f0-9]{{64}}$"


async def snapshot_key_path(key: Annotated[str, Path(json_schema_extra={"pattern": SNAPSHOT_KEY_PATTERN})]) -> str:
    if key.startswith("sha256:"):
        return validate_digest(key)
    return validate_identifier("snapshot key", key)


async def exec_id_path(exec_id: Annotated[str, Path(json_schema_extra={"pattern": IDENTIFIER_PATTERN})]) -> str:
    return validate_identifier("exec id", exec_id)


NamespaceHeader = Annotated[str, Depends(namespace_header)]
ExecId = Annotated[str, Depends(exec_id_path)]
SnapshotKey = Annotated[str, Depends(snapshot_key_path)]
ContainerId = Annotated[str, Depends(container_id_path)]
NamespaceName = Annotated[str, Depends(namespace_name_path)]


async def page_query(
    daemon: DaemonDep,
    limit: Annotated[
        int,
        Query(ge=1, le=MAX_PAGE_LIMIT, description=f"at most this many objects (default {DEFAULT_PAGE_LIMIT})"),
    ] = DEFAULT_PAGE_LIMIT,
    after: Annotated[
        str | None,
        Query(max_length=1024, description="the `next_cursor` of the previous page: objects sorted after it"),
    ] = None,
) -> PageRequest:
    return PageRequest(limit=limit, after=after or "", max_bytes=daemon.settings.list_max_bytes)


PageQuery = Annotated[PageRequest, Depends(page_query)]


def _filter_query(description: str) -> Any:
    # The one `filter` query parameter: containerd's syntax (app/filters.py), repeated to
    # OR. Routes differ only in the fields their filters see, which the description names.
    # Give it `= []` in the route (FastAPI takes a query parameter's default from there).
    return Query(alias="filter", description=description)


ContainerFilters = Annotated[list[str], _filter_query(
    "containerd filter syntax, e.g. `labels.env==prod,image~=^busybox`. "
    "Repeat the parameter to OR filters; `,` inside one ANDs its selectors."
)]
EventFilters = Annotated[list[str], _filter_query(
    'containerd filter syntax over the envelope, e.g. `topic~="^/containers/"`, '
    "`namespace==default`, `event.id==web`. Repeat to OR."
)]
ImageFilters = Annotated[list[str], _filter_query("containerd filter; repeat to OR")]


def link_next_page(request: Request, response: Response, next_cursor: str | None) -> None:
    """`Link: <this list, after the cursor>; rel="next"` (RFC 8288), as GitHub's API pages."""
    if next_cursor is not None:
        url = request.url.include_query_params(after=next_cursor)
        response.headers["Link"] = f'<{url.path}?{url.query}>; rel="next"'
