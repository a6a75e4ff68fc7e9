"""Fixtures for tests that run real containers (runc + conmon, root, overlayfs).

Without the runtime these tests skip on a developer machine and FAIL under CI=true, so
CI can never pass by not running them; they are marked `runtime` (`pytest -m "not runtime"`
leaves them out). Every test gets a daemon of its own (tmp root and state) and,
afterwards, the check that it left nothing behind (`leftovers`): no conmon, no runtime
state, no cgroup, no mount under its root or state, no task dir.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.config import Listener, Settings
from tests.conftest import leftovers, running_server, uds_client
from tests.rootfs import write_busybox_tar

REQUIRED = ("runc", "conmon", "busybox")


def require_runtime() -> None:
    missing = [binary for binary in REQUIRED if shutil.which(binary) is None]
    problem = f"missing {', '.join(missing)}" if missing else ("not root" if os.geteuid() != 0 else None)
    if problem is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"runtime tests cannot run ({problem}); CI must install runc, conmon, busybox-static")
    pytest.skip(f"runtime tests need root, runc, conmon and busybox ({problem})")


@pytest.fixture(scope="session")
def busybox_tar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_runtime()
    return write_busybox_tar(tmp_path_factory.mktemp("rootfs") / "busybox.tar")


@pytest.fixture
def runtime_settings(tmp_path: Path) -> Iterator[Settings]:
    require_runtime()
    settings = Settings(
        root=tmp_path / "root",
        state=tmp_path / "state",
        listeners=(Listener.parse(f"unix://{tmp_path / 'state' / 'cargohold.sock'}"),),
    )
    yield settings
    left = leftovers(settings)
    assert left == {}, f"the test left these behind: {left}"


@asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """A client of a real daemon on `settings`' unix socket; its tasks are deleted afterwards."""
    async with running_server(settings), uds_client(settings, timeout=60) as client:
        try:
            yield client
        finally:
            await delete_all_tasks(client)


@pytest.fixture
async def runtime_client(runtime_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """A client of a real daemon on a unix socket; its tasks are deleted afterwards."""
    async with serving(runtime_settings) as client:
        yield client


async def delete_all_tasks(client: httpx.AsyncClient) -> None:
    namespaces = (await client.get("/namespaces")).json()["namespaces"]
    for namespace in namespaces:
        headers = {"Cargohold-Namespace": namespace["name"]}
        for task in (await client.get("/tasks", headers=headers)).json()["tasks"]:
            await client.delete(f"/tasks/{task['id']}", headers=headers)


async def import_busybox(client: httpx.AsyncClient, tar: Path, headers: dict[str, str], name: str = "busybox") -> None:
    response = await client.post(f"/snapshots/import?name={name}", content=tar.read_bytes(), headers=headers)
    assert response.status_code == 201, response.text


async def make_container(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    container_id: str,
    args: list[str],
    runtime: str = "runc",
    parent: str = "busybox",
    **spec: Any,
) -> dict[str, Any]:
    """A container on a fresh active snapshot of `parent`, running `args`."""
    key = f"{container_id}-rootfs"
    prepared = await client.post("/snapshots", json={"key": key, "parent": parent}, headers=headers)
    assert prepared.status_code == 201, prepared.text
    body = {
        "id": container_id,
        "snapshot_key": key,
        "runtime": {"name": runtime},
        "spec": {"ociVersion": "1.0.2", "root": {"path": "rootfs"}, "process": {"args": args}, **spec},
    }
    created = await client.post("/containers", json=body, headers=headers)
    assert created.status_code == 201, created.text
    result: dict[str, Any] = created.json()
    return result


def settings_with(settings: Settings, **changes: Any) -> Settings:
    return replace(settings, **changes)


async def history(client: httpx.AsyncClient, namespace: str) -> list[dict[str, Any]]:
    """Every stored event of `namespace`, oldest first."""
    found: list[dict[str, Any]] = []
    since = 0
    while True:
        response = await client.get("/events/history", params={"since": since, "limit": 1000})
        assert response.status_code == 200, response.text
        page = response.json()
        found.extend(event for event in page["events"] if event["namespace"] == namespace)
        if len(page["events"]) < 1000:
            return found
        since = page["last_id"]
