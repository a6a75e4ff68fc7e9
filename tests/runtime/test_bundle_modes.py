"""DESIGN "On disk" for a real task: its bundle's config.json (the spec, env included) is
0600 under a 0700 tasks dir, whatever the daemon's umask; its log dir is 0700."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import httpx
import pytest

from app.config import Settings
from tests.runtime.conftest import import_busybox, make_container

pytestmark = [pytest.mark.anyio, pytest.mark.runtime]


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


async def test_a_created_tasks_config_json_is_0600(
    runtime_settings: Settings, runtime_client: httpx.AsyncClient, busybox_tar: Path, namespace: str,
    ns_headers: dict[str, str],
) -> None:
    client = runtime_client
    await import_busybox(client, busybox_tar, ns_headers)
    await make_container(client, ns_headers, "secret", ["sh", "-c", "sleep 30"])
    patch = json.dumps({"spec": {"process": {"env": ["PATH=/bin", "PASSWORD=hunter2"]}}})
    headers = {**ns_headers, "Content-Type": "application/merge-patch+json"}
    assert (await client.patch("/containers/secret", content=patch, headers=headers)).status_code == 200
    old = os.umask(0)  # the daemon runs in this process: a umask of 0 must not open anything
    try:
        created = await client.post("/tasks", json={"container_id": "secret"}, headers=ns_headers)
    finally:
        os.umask(old)
    assert created.status_code == 201, created.text
    config = runtime_settings.state / "tasks" / namespace / "secret" / "bundle" / "config.json"
    assert json.loads(config.read_text())["process"]["env"] == ["PATH=/bin", "PASSWORD=hunter2"]
    assert mode_of(config) == 0o600
    assert mode_of(runtime_settings.state / "tasks") == 0o700
    assert mode_of(runtime_settings.root / "logs") == 0o700
    assert mode_of(runtime_settings.root / "snapshots") == 0o700
    assert (await client.delete("/tasks/secret", headers=ns_headers)).status_code in (200, 204)
