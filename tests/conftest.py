"""Shared fixtures: settings in a temp dir, an in-process client, and a real uvicorn on a
unix socket (for SSE, concurrency and anything streamed: ASGITransport buffers whole
responses)."""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.types import Receive, Scope, Send

from app.api.middleware import ListenerMark
from app.config import Listener, Settings
from app.main import create_app

BASE_URL = "http://cargohold"
_namespace_numbers = itertools.count()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def spec(**overrides: Any) -> dict[str, Any]:
    """A minimal valid OCI runtime spec."""
    document: dict[str, Any] = {
        "ociVersion": "1.0.2",
        "root": {"path": "rootfs"},
        "process": {"args": ["/bin/sh", "-c", "true"], "cwd": "/"},
    }
    document.update(overrides)
    return document


def container_body(container_id: str, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"id": container_id, "spec": spec()}
    body.update(fields)
    return body


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(root=tmp_path / "root", state=tmp_path / "state", listeners=())


@pytest.fixture
def namespace() -> str:
    """A namespace of this test's own, so tests never see each other's objects."""
    return f"test-{os.getpid()}-{next(_namespace_numbers)}"


@pytest.fixture
def ns_headers(namespace: str) -> dict[str, str]:
    return {"Cargohold-Namespace": namespace}


@asynccontextmanager
async def in_process_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client calling the app in-process, with its lifespan run around it."""
    app = create_app(settings)
    async with app.router.lifespan_context(app) as state:

        async def with_state(scope: Scope, receive: Receive, send: Send) -> None:
            scope["state"] = dict(state or {})
            await app(scope, receive, send)

        transport = httpx.ASGITransport(app=with_state)
        async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as client:
            yield client


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with in_process_client(settings) as client:
        yield client


async def wait_for(condition: Callable[[], bool], within: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(0.01)


@asynccontextmanager
async def running_server(settings: Settings) -> AsyncIterator[uvicorn.Server]:
    """A real uvicorn serving `create_app(settings)` on `settings.state / cargohold.sock`,
    its requests marked as a unix listener's."""
    sock = settings.state / "cargohold.sock"
    sock.parent.mkdir(parents=True, exist_ok=True)
    # Marked as `cargohold serve` marks a unix listener's requests (came_over_unix).
    app = ListenerMark(create_app(settings), "unix")
    server = uvicorn.Server(uvicorn.Config(app, uds=str(sock), log_level="warning", lifespan="on"))
    serving = asyncio.create_task(server.serve(), name="test.uvicorn")
    try:
        await wait_for(lambda: server.started or serving.done())
        if serving.done():
            serving.result()
        yield server
    finally:
        server.should_exit = True
        await serving


def uds_client(settings: Settings, **kwargs: Any) -> httpx.AsyncClient:
    transport = httpx.AsyncHTTPTransport(uds=str(settings.state / "cargohold.sock"))
    return httpx.AsyncClient(transport=transport, base_url=BASE_URL, **kwargs)


@pytest.fixture
async def uds_server(settings: Settings) -> AsyncIterator[uvicorn.Server]:
    unix = replace(settings, listeners=(Listener.parse(f"unix://{settings.state / 'cargohold.sock'}"),))
    async with running_server(unix) as server:
        yield server


@pytest.fixture
async def live_client(settings: Settings, uds_server: uvicorn.Server) -> AsyncIterator[httpx.AsyncClient]:
    """A client of a real uvicorn on a unix socket."""
    async with uds_client(settings, timeout=30) as client:
        yield client
