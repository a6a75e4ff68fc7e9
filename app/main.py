"""`create_app(settings)`: the FastAPI application, its lifespan, routers and handlers.

The lifespan builds the daemon (`daemon.open_daemon`) and hands it to the routers as
`request.state.daemon`; on shutdown it closes it. Only this module and `api/` import
FastAPI.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute
from prometheus_client import CollectorRegistry
from prometheus_fastapi_instrumentator import Instrumentator

from . import __version__
from .api import attach, containers, content, events, images, namespaces, networks, snapshots, system, tasks, ui
from .api.middleware import BodyLimitMiddleware, EncodedSlashMiddleware, TokenAuthMiddleware
from .api.problems import add_problem_handlers, document_problems
from .config import Settings
from .daemon import open_daemon
from .metrics import DaemonMetrics
from .monitor.collector import ContainerCollector
from .network.collector import NetworkCollector
from .ondisk import PRIVATE_FILE, PUBLIC_DIR, StartupError, ensure_dir, ensure_file

log = logging.getLogger(__name__)


def _operation_id(route: APIRoute) -> str:
    return route.name


def create_app(settings: Settings) -> FastAPI:
    registry = CollectorRegistry()
    metrics = DaemonMetrics(registry)
    containers_collector = ContainerCollector()
    registry.register(containers_collector)
    network_collector = NetworkCollector()
    registry.register(network_collector)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        async with open_daemon(settings, on_event=metrics.count_event, observe_poll=metrics.observe_poll) as daemon:
            metrics.count_subscribers_with(lambda: daemon.bus.subscriber_count)
            containers_collector.monitor = daemon.monitor
            network_collector.networks = daemon.networks
            # Called by the server as soon as a stop is asked for (see cli._Server).
            app.state.stop_waiting = daemon.tasks.stop_waiting
            try:
                yield {"daemon": daemon}
            finally:
                containers_collector.monitor = None
                network_collector.networks = None
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
    for module in (containers, namespaces, snapshots, images, content, tasks, attach, events, system, networks):
        app.include_router(module.router)
    app.include_router(ui.router)  # the web view's files (issue 19)
    app.add_middleware(ui.SameOriginMiddleware)  # requests from browser pages of other origins: 403
    Instrumentator(registry=registry, excluded_handlers=["/metrics"]).instrument(app)
    app.add_middleware(EncodedSlashMiddleware)
    # The imports (a snapshot, an image archive) stream their tars against their own, larger limit.
    app.add_middleware(
        BodyLimitMiddleware, max_bytes=settings.max_body_bytes, unlimited={"/snapshots/import", "/images/import"}
    )
    if settings.has_tcp_listener:
        public = {"/healthz", "/metrics"} if settings.metrics_public else {"/healthz"}
        public |= ui.PUBLIC_PATHS  # the web view's files load without the token
        app.add_middleware(TokenAuthMiddleware, token=load_token(settings), public_paths=public)
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    app.openapi_schema = document_problems(FastAPI.openapi(app), is_public=_public_without_token)
    return app.openapi_schema


def _public_without_token(path: str) -> bool:
    """Paths the description shows without the bearer scheme: those the token middleware lets
    through on every daemon. `/metrics` needs the token unless --metrics-public, so it is
    documented with it; the web view's static files load without one."""
    return path == "/healthz" or path == "/ui" or path.startswith("/ui/")


# Shorter tokens are refused at start. 16 characters: the generated token has 43 (32
# random bytes, base64url); a hand-written one shorter than 16 is a typo, a truncated
# file or a guessable word, never a secret worth guarding root-equivalent access with.
MIN_TOKEN_LENGTH = 16


def load_token(settings: Settings) -> str:
    """The bearer token for TCP listeners: --token-file, or `<state>/token`, generated when
    absent. Raises StartupError for a token shorter than MIN_TOKEN_LENGTH (an empty one
    included): a daemon never serves TCP with an empty token.

    A generated token is written whole or not at all (a temp file, fsync, then a link to
    its name), so an interrupted start leaves no empty token; an empty `<state>/token`
    that an older version left is replaced, with a warning. A short non-empty one was
    written by someone: it is refused, not silently replaced."""
    if settings.token_file is not None:
        path = settings.token_file
        try:
            token = path.read_text().strip()
        except OSError as error:
            raise StartupError(f"cannot read --token-file {path}: {error.strerror}") from error
        _check_token(token, f"--token-file {path}", "write one of at least {n} characters there")
        if path.stat().st_mode & 0o077:
            log.warning("--token-file %s is readable by other users; chmod 0600 it", path)
        return token
    path = settings.default_token_path
    ensure_dir(settings.state, PUBLIC_DIR)
    if not (path.exists() or path.is_symlink()):
        return _generate_token(path)
    ensure_file(path, PRIVATE_FILE)  # ours, not a link, 0600
    token = path.read_text().strip()
    if not token:
        log.warning("%s was empty (a start interrupted while writing it); generated a new token", path)
        return _generate_token(path, replace=True)
    _check_token(token, str(path), "delete it to have a new one generated, or write one of at least {n} characters")
    return token


def _check_token(token: str, source: str, fix: str) -> None:
    if len(token) < MIN_TOKEN_LENGTH:
        what = "is empty" if not token else f"holds a token of {len(token)} characters"
        raise StartupError(
            f"{source} {what}; TCP listeners need a bearer token of at least {MIN_TOKEN_LENGTH} characters: "
            + fix.format(n=MIN_TOKEN_LENGTH)
        )


def _generate_token(path: Path, replace: bool = False) -> str:
    """Write a new token to `path` atomically; if another daemon made `path` meanwhile
    (and `replace` is false), use its token instead."""
    token = secrets.token_urlsafe(32)
    temp = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, PRIVATE_FILE)
    try:
        with os.fdopen(fd, "w") as file:
            os.fchmod(fd, PRIVATE_FILE)  # whatever the umask
            file.write(token + "\n")
            file.flush()
            os.fsync(fd)
        if replace:
            os.replace(temp, path)
        else:
            try:
                os.link(temp, path)  # never clobbers a token another daemon just wrote
            except FileExistsError:
                return _read_token(path)
    finally:
        temp.unlink(missing_ok=True)
    _fsync_dir(path.parent)
    return token


def _read_token(path: Path) -> str:
    """The token at `path`, checked as at start."""
    token = path.read_text().strip()
    _check_token(token, str(path), "delete it to have a new one generated")
    return token


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
