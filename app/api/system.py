"""Routes about the daemon itself: /healthz, /version and /metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from ..metrics import DaemonMetrics
from ..models import Health, VersionInfo
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
