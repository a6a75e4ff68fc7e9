"""Routes about the daemon itself: /healthz, /version, /metrics and /gc."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from ..metrics import DaemonMetrics
from ..models import GcResult, Health, VersionInfo
from .deps import DaemonDep

router = APIRouter(tags=["system"])


@router.get("/healthz", summary="Liveness check (no token needed)")
async def get_health() -> Health:
    return Health()


@router.get("/version", summary="Daemon, runtime and host versions")
async def get_version(daemon: DaemonDep) -> VersionInfo:
    return daemon.version


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={
        200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}, "description": "Prometheus text format"}
    },
)
async def get_metrics(request: Request, daemon: DaemonDep) -> Response:
    registry: CollectorRegistry = request.app.state.registry
    metrics: DaemonMetrics = request.app.state.metrics
    metrics.set_task_counts(await daemon.tasks.count_by_status())
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


@router.post(
    "/gc",
    summary="Run garbage collection now",
    description="Removes the blobs no image reaches, the chain snapshots (`sha256:...`) no image, container or "
    "other snapshot reaches, and abandoned ingests; work in progress (a pull, an import) is never touched. "
    "A collection also runs at start-up and after each delete of an image, a container or a snapshot; this "
    "one waits for any in progress, then runs and says what it removed. Daemon-wide: content is shared by "
    "every namespace.",
)
async def collect_garbage(daemon: DaemonDep) -> GcResult:
    return await daemon.collector.collect()
