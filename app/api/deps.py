"""Injected things, each named once as an `Annotated` alias for the routers.

Every dependency is `async def`: FastAPI runs a plain `def` dependency in its thread
pool, a thread hop per dependency per request for what is an attribute lookup."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Path, Request

from ..containers import ContainerService
from ..daemon import Daemon
from ..events import EventService
from ..identifiers import IDENTIFIER_PATTERN, validate_identifier
from ..namespaces import NamespaceService
from ..runtime.tasks import TaskService
from ..snapshots.service import SnapshotService


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


async def get_tasks(daemon: DaemonDep) -> TaskService:
    return daemon.tasks


Containers = Annotated[ContainerService, Depends(get_containers)]
Namespaces = Annotated[NamespaceService, Depends(get_namespaces)]
Events = Annotated[EventService, Depends(get_events)]
Snapshots = Annotated[SnapshotService, Depends(get_snapshots)]
Tasks = Annotated[TaskService, Depends(get_tasks)]


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


async def snapshot_key_path(key: Annotated[str, Path(json_schema_extra={"pattern": IDENTIFIER_PATTERN})]) -> str:
    return validate_identifier("snapshot key", key)


async def exec_id_path(exec_id: Annotated[str, Path(json_schema_extra={"pattern": IDENTIFIER_PATTERN})]) -> str:
    return validate_identifier("exec id", exec_id)


NamespaceHeader = Annotated[str, Depends(namespace_header)]
ExecId = Annotated[str, Depends(exec_id_path)]
SnapshotKey = Annotated[str, Depends(snapshot_key_path)]
ContainerId = Annotated[str, Depends(container_id_path)]
NamespaceName = Annotated[str, Depends(namespace_name_path)]
