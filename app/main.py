"""`create_app(settings)`: the FastAPI application, its lifespan, routers and handlers.

The lifespan builds the daemon (`daemon.open_daemon`) and hands it to the routers as
`request.state.daemon`; on shutdown it closes it. Only this module and `api/` import
FastAPI.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute
from prometheus_client import CollectorRegistry
from prometheus_fastapi_instrumentator import Instrumentator

from . import __version__
from .api import containers, events, namespaces, snapshots, system, tasks
from .api.middleware import BodyLimitMiddleware, EncodedSlashMiddleware, TokenAuthMiddleware
from .api.problems import add_problem_handlers, document_problems
from .config import Settings
from .daemon import open_daemon
from .metrics import DaemonMetrics
from .monitor.collector import ContainerCollector


def _operation_id(route: APIRoute) -> str:
    return route.name


def create_app(settings: Settings) -> FastAPI:
    registry = CollectorRegistry()
    metrics = DaemonMetrics(registry)
    containers_collector = ContainerCollector()
    registry.register(containers_collector)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        async with open_daemon(settings, on_event=metrics.count_event, observe_poll=metrics.observe_poll) as daemon:
            metrics.count_subscribers_with(lambda: daemon.bus.subscriber_count)
            containers_collector.monitor = daemon.monitor
            # Called by the server as soon as a stop is asked for (see cli._Server).
            app.state.stop_waiting = daemon.tasks.stop_waiting
            try:
                yield {"daemon": daemon}
            finally:
                containers_collector.monitor = None
                app.state.stop_waiting = None

    app = FastAPI(
        title="Cargohold",
        version=__version__,
        summary="A container daemon: containers as metadata, tasks on a real OCI runtime.",
        lifespan=lifespan,
        generate_unique_id_function=_operation_id,
    )
    app.openapi = lambda: app.openapi_schema or _openapi(app)  # type: ignore[method-assign]
    app.state.registry = registry
    app.state.metrics = metrics
    add_problem_handlers(app)
    for module in (containers, namespaces, snapshots, tasks, events, system):
        app.include_router(module.router)
    Instrumentator(registry=registry, excluded_handlers=["/metrics"]).instrument(app)
    app.add_middleware(EncodedSlashMiddleware)
    # The import streams its tar and counts it against its own, larger limit.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes, unlimited={"/snapshots/import"})
    if settings.has_tcp_listener:
        public = {"/healthz", "/metrics"} if settings.metrics_public else {"/healthz"}
        app.add_middleware(TokenAuthMiddleware, token=load_token(settings), public_paths=public)
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    app.openapi_schema = document_problems(FastAPI.openapi(app))
    return app.openapi_schema


def load_token(settings: Settings) -> str:
    """The bearer token for TCP listeners: --token-file, or one generated into the state dir."""
    if settings.token_file is not None:
        token = settings.token_file.read_text().strip()
        if not token:
            raise ValueError(f"token file {settings.token_file} is empty")
        return token
    path = settings.default_token_path
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    # O_EXCL + 0600: never readable by others, never clobbering a concurrent writer's token.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(token + "\n")
    return token
