"""A task made by an earlier version, whose cgroup is `/cargohold/<namespace>/<id>` (before
each daemon had a cgroup parent of its own), is adopted with that cgroup: watched by the
monitor, and its cgroup removed when it ends, never left behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.config import Settings
from app.runtime import live as live_module
from app.runtime.cgroups import hierarchies
from tests.conftest import running_server, uds_client, wait_for
from tests.runtime.conftest import import_busybox, make_container

pytestmark = [pytest.mark.anyio, pytest.mark.runtime]


def legacy_cgroup(parent: str, namespace: str, task_id: str) -> str:
    return f"/cargohold/{namespace}/{task_id}"


def cgroup_dirs(relative: str) -> list[Path]:
    paths = [hierarchy / relative.lstrip("/") for hierarchy in hierarchies()]
    return [path for path in paths if path.is_dir()]


async def test_a_task_in_an_earlier_layout_is_adopted_and_its_cgroup_removed(
    runtime_settings: Settings, busybox_tar: Path, namespace: str, ns_headers: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    old = f"/cargohold/{namespace}/old"
    # The earlier version: the same code, with its cgroup layout.
    with monkeypatch.context() as earlier:
        earlier.setattr(live_module, "task_cgroup", legacy_cgroup)
        async with running_server(runtime_settings), uds_client(runtime_settings, timeout=60) as client:
            await import_busybox(client, busybox_tar, ns_headers)
            await make_container(client, ns_headers, "old", ["sleep", "300"])
            assert (await client.post("/tasks", json={"container_id": "old"}, headers=ns_headers)).status_code == 201
            assert (await client.post("/tasks/old/start", headers=ns_headers)).status_code == 200
    assert cgroup_dirs(old), "the earlier layout's cgroup was not made"

    # This version adopts it: the monitor reads the cgroup the task really has.
    async with running_server(runtime_settings), uds_client(runtime_settings, timeout=60) as client:
        task = await client.get("/tasks/old", headers=ns_headers)
        assert task.status_code == 200 and task.json()["status"] == "running", task.text
        metrics = await client.get("/tasks/old/metrics", headers=ns_headers)
        assert metrics.status_code == 200, metrics.text
        assert metrics.json()["pids_current"] >= 1, metrics.text
        deleted = await client.delete("/tasks/old", headers=ns_headers)
        assert deleted.status_code == 200, deleted.text
        await wait_for(lambda: not cgroup_dirs(old), "the old cgroups are removed", within=10)
        # The namespace's dir of the earlier layout went with its last task.
        assert not cgroup_dirs(f"/cargohold/{namespace}")
        assert (await client.delete("/containers/old", headers=ns_headers)).status_code == 204
