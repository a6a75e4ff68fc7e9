"""Shared fixtures: settings in a temp dir, an in-process client, and a real uvicorn on a
unix socket (for SSE, concurrency and anything streamed: ASGITransport buffers whole
responses); the one polling helper (`wait_for`, `wait_for_sync`) and the one check that
a daemon left nothing behind (`leftovers`).

Markers (pyproject.toml): `runtime` tests need runc, conmon and root, `registry` tests
the registry tools; `pytest -m "not runtime"` runs the rest, the fast part. A test that
uses `runtime_settings` (a daemon that runs tasks) must be marked `runtime`: collection
fails otherwise, so the fast part never starts a container.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import os
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar, overload

import httpx
import pytest
import uvicorn
from starlette.types import Receive, Scope, Send

from app.api.middleware import ListenerMark
from app.config import Listener, Settings
from app.main import create_app
from app.runtime.cgroups import daemon_cgroup_parent, hierarchies
from app.snapshots.mounts import mount_points_under

BASE_URL = "http://cargohold"
_namespace_numbers = itertools.count()
T = TypeVar("T")
# Fixtures that start a daemon able to run tasks (runc, conmon): only `runtime` tests may use them.
RUNTIME_FIXTURES = frozenset({"runtime_settings"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    unmarked = [
        item.nodeid for item in items
        if RUNTIME_FIXTURES & set(getattr(item, "fixturenames", ())) and item.get_closest_marker("runtime") is None
    ]
    if unmarked:
        raise pytest.UsageError(f"these tests run tasks but are not marked runtime: {unmarked}")


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


@overload
async def wait_for(
    condition: Callable[[], Awaitable[T | None]], what: str, within: float = ..., every: float = ...
) -> T: ...


@overload
async def wait_for(condition: Callable[[], T | None], what: str, within: float = ..., every: float = ...) -> T: ...


async def wait_for(condition: Callable[[], Any], what: str, within: float = 10.0, every: float = 0.02) -> Any:
    """Call `condition` (sync or async) until it returns something truthy and return that;
    fail, naming `what`, when `within` seconds pass first. The wait ends on the condition,
    never on a clock: a slow daemon makes a test wait longer, not pass without looking."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if loop.time() > deadline:
            raise AssertionError(f"not within {within} s: {what} (last seen: {result!r})")
        await asyncio.sleep(every)


def wait_for_sync(condition: Callable[[], T | None], what: str, within: float = 10.0, every: float = 0.05) -> T:
    """`wait_for` for tests that are not async (a daemon in a subprocess, Prometheus)."""
    deadline = time.monotonic() + within
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within} s: {what} (last seen: {result!r})")
        time.sleep(every)


# --- the host ------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing has bound (the kernel's pick)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def links() -> set[str]:
    """The host's network links by name (veths, bridges), for before-and-after checks."""
    out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line}


# --- what a daemon must not leave behind --------------------------------------------------


def conmon_pids_under(path: Path) -> list[int]:
    """conmon processes whose command line mentions `path` (ours, not anyone else's)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"conmon") and any(str(path).encode() in arg for arg in argv):
            found.append(int(entry.name))
    return found


def cgroups_below(parent: str, namespace: str | None = None) -> list[Path]:
    """Every cgroup directory below `parent` (only `parent/namespace` and below, when
    given), in every hierarchy. os.walk shrugs off directories that vanish while it looks
    (tasks of this or another daemon ending)."""
    found: list[Path] = []
    for hierarchy in hierarchies():
        top = hierarchy / parent.lstrip("/")
        if namespace is not None:
            top = top / namespace
            if top.is_dir():
                found.append(top)
        for directory, subdirectories, _ in os.walk(top):
            found.extend(Path(directory) / name for name in subdirectories)
    return found


def leftovers(settings: Settings, namespace: str | None = None) -> dict[str, list[str]]:
    """Whatever the daemon of `settings` left that it should not have (empty dict: clean):
    conmon processes, runtime state (runc's, crun's), cgroups below this daemon's cgroup
    parent (other daemons on the host have theirs; only `namespace`'s when given), mounts
    under its root and state, task dirs."""
    runtimes = settings.state / "runtimes"
    tasks = settings.state / "tasks"
    found = {
        "conmon": [str(pid) for pid in conmon_pids_under(settings.state)],
        "runtime state": sorted(str(p.relative_to(runtimes)) for p in runtimes.glob("*/*")),
        "cgroups": [str(p) for p in cgroups_below(daemon_cgroup_parent(settings.state), namespace)],
        "mounts": [str(p) for base in (settings.root, settings.state) if base.exists()
                   for p in mount_points_under(base)],
        "task dirs": sorted(str(p) for p in tasks.glob("*/*")),
    }
    return {kind: items for kind, items in found.items() if items}


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
        await wait_for(lambda: server.started or serving.done(), "uvicorn has started")
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


def stop_process(process: subprocess.Popen[Any], within: float = 10.0) -> None:
    """SIGTERM by pid, then SIGKILL if it is still there after `within` seconds (for the
    registries and daemons tests start as plain subprocesses)."""
    if process.poll() is not None:
        return
    os.kill(process.pid, signal.SIGTERM)
    try:
        process.wait(within)
    except subprocess.TimeoutExpired:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
