"""The spec policy under real runc: what it refuses really reaches the host when allowed
(a createRuntime hook writes a host file as root, a bind of a host directory outside
--allow-bind is read, CAP_SYS_ADMIN mounts), the default seccomp profile is in force
(`Seccomp: 2`, a syscall refused even with the capability), and the rules are checked
again at task create and exec, after the namespace's label is gone or a bind source
has become a symlink to `/`.

Each test runs its own daemon on a unix socket (a root-equivalent caller, which may set
the namespace label); `runtime_settings` then asserts nothing was left behind.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app import policy
from app.config import Settings
from app.runtime.defaults import DEFAULT_CAPABILITIES, DEFAULT_MOUNTS
from tests.conftest import leftovers
from tests.runtime.conftest import import_busybox, make_container, serving, settings_with
from tests.runtime.tasks import SERVE, create, gone, log_lines, problem, ready, texts, topics, wait_exec, wait_exit

pytestmark = [pytest.mark.anyio, pytest.mark.runtime]

LABEL = "cargohold.policy"
MERGE_PATCH = {"Content-Type": "application/merge-patch+json"}
SYS_ADMIN = {kind: [*DEFAULT_CAPABILITIES, "CAP_SYS_ADMIN"] for kind in ("bounding", "effective", "permitted")}
CAP_SYS_ADMIN_BIT = 1 << 21


@pytest.fixture
def allowed(tmp_path: Path) -> Path:
    directory = tmp_path / "allowed"
    directory.mkdir()
    return directory


@pytest.fixture
async def api(
    runtime_settings: Settings, allowed: Path, busybox_tar: Path, ns_headers: dict[str, str]
) -> AsyncIterator[httpx.AsyncClient]:
    """A daemon with --allow-bind <tmp>/allowed; busybox imported in the test's namespace,
    which holds no label yet."""
    async with serving(settings_with(runtime_settings, allowed_bind_roots=(allowed,))) as client:
        await import_busybox(client, busybox_tar, ns_headers)
        yield client


async def label(client: httpx.AsyncClient, namespace: str, value: str | None) -> None:
    response = await client.patch(
        f"/namespaces/{namespace}", content=json.dumps({"labels": {LABEL: value}}), headers=MERGE_PATCH
    )
    assert response.status_code == 200, response.text


async def run_to_exit(
    client: httpx.AsyncClient, headers: dict[str, str], task_id: str, script: str, **spec: Any
) -> tuple[int, list[str]]:
    """Run `sh -c script` in a new container to its exit: (exit status, output lines)."""
    await make_container(client, headers, task_id, ["sh", "-c", script], **spec)
    await create(client, headers, task_id)
    started = await client.post(f"/tasks/{task_id}/start", headers=headers)
    assert started.status_code == 200, started.text
    status = (await wait_exit(client, headers, task_id))["exit_status"]
    await gone(client, headers, task_id)
    return status, texts(await log_lines(client, headers, f"/tasks/{task_id}/logs"))


async def refused_at_create(
    client: httpx.AsyncClient, headers: dict[str, str], task_id: str, field: str, **spec: Any
) -> None:
    body = {"id": task_id, "spec": {"ociVersion": "1.0.2", "root": {"path": "rootfs"},
                                    "process": {"args": ["true"]}, **spec}}
    response = await client.post("/containers", json=body, headers=headers)
    assert field in problem(response, 422)["detail"]
    assert (await client.get(f"/containers/{task_id}", headers=headers)).status_code == 404


class TestDefaults:
    async def test_default_seccomp_profile_is_in_force(
        self, api: httpx.AsyncClient, ns_headers: dict[str, str]
    ) -> None:
        status, output = await run_to_exit(api, ns_headers, "probe", "grep '^Seccomp:' /proc/self/status")
        assert status == 0, output
        assert output == ["Seccomp:\t2"], output  # 2: a filter is loaded

    async def test_a_syscall_the_profile_refuses_is_refused_even_with_the_capability(
        self, api: httpx.AsyncClient, namespace: str, ns_headers: dict[str, str]
    ) -> None:
        # swapoff(2) checks CAP_SYS_ADMIN, then the path: ENOENT proves the call reached
        # the kernel; EPERM with the capability granted can only be the filter.
        await label(api, namespace, "privileged")
        script = "swapoff /no-such-swap; echo status=$?"
        _, filtered = await run_to_exit(api, ns_headers, "filtered", script, process={
            "args": ["sh", "-c", script], "capabilities": SYS_ADMIN})
        assert any("Operation not permitted" in line for line in filtered), filtered
        _, unfiltered = await run_to_exit(api, ns_headers, "unfiltered", script, process={
            "args": ["sh", "-c", script], "capabilities": SYS_ADMIN},
            linux={"seccomp": {"defaultAction": "SCMP_ACT_ALLOW"}})
        assert any("No such file or directory" in line for line in unfiltered), unfiltered

    async def test_bind_inside_allow_bind_runs_with_its_resolved_source(
        self, api: httpx.AsyncClient, allowed: Path, ns_headers: dict[str, str]
    ) -> None:
        (allowed / "data").mkdir()
        (allowed / "data" / "greeting").write_text("hello from the host\n")
        os.symlink(allowed / "data", allowed / "link-to-data")  # resolves inside: allowed
        mounts = [*DEFAULT_MOUNTS, {"destination": "/mnt", "type": "bind", "source": str(allowed / "link-to-data"),
                                    "options": ["rbind", "ro"]}]
        status, output = await run_to_exit(api, ns_headers, "reader", "cat /mnt/greeting", mounts=mounts)
        assert (status, output) == (0, ["hello from the host"])


class TestPrivilegedReachesTheHost:
    """Each refused by default, and really reaching the host once the namespace is labelled."""

    async def test_create_runtime_hook(
        self, api: httpx.AsyncClient, tmp_path: Path, namespace: str, ns_headers: dict[str, str]
    ) -> None:
        marker = tmp_path / "hook-ran"
        hooks = {"createRuntime": [{"path": "/bin/sh", "args": ["sh", "-c", f"id -u > {marker}"]}]}
        await refused_at_create(api, ns_headers, "hooked", "spec.hooks.createRuntime", hooks=hooks)
        assert not marker.exists()
        await label(api, namespace, "privileged")
        status, _ = await run_to_exit(api, ns_headers, "hooked", "true", hooks=hooks)
        assert status == 0
        assert marker.read_text() == "0\n", "the hook ran on the host, as root"

    async def test_bind_outside_allow_bind(
        self, api: httpx.AsyncClient, tmp_path: Path, namespace: str, ns_headers: dict[str, str]
    ) -> None:
        outside = tmp_path / "outside"
        outside.mkdir()
        (outside / "secret").write_text("host secret\n")
        mounts = [*DEFAULT_MOUNTS, {"destination": "/mnt", "type": "bind", "source": str(outside),
                                    "options": ["rbind", "ro"]}]
        await refused_at_create(api, ns_headers, "reader", f"spec.mounts[{len(DEFAULT_MOUNTS)}].source", mounts=mounts)
        await label(api, namespace, "privileged")
        status, output = await run_to_exit(api, ns_headers, "reader", "cat /mnt/secret", mounts=mounts)
        assert (status, output) == (0, ["host secret"])

    async def test_cap_sys_admin_mounts(
        self, api: httpx.AsyncClient, namespace: str, ns_headers: dict[str, str]
    ) -> None:
        script = "mkdir -p /m && mount -t tmpfs none /m && echo mounted"
        process = {"args": ["sh", "-c", script], "capabilities": SYS_ADMIN}
        await refused_at_create(api, ns_headers, "admin", "spec.process.capabilities.bounding", process=process)
        # What the default lets a container do: the same mount fails.
        status, output = await run_to_exit(api, ns_headers, "plain", script)
        assert status != 0 and "mounted" not in output, output
        await label(api, namespace, "privileged")
        status, output = await run_to_exit(api, ns_headers, "admin", script, process=process)
        assert (status, output) == (0, ["mounted"])


class TestCheckedAgain:
    async def test_no_task_once_the_label_is_gone(
        self, api: httpx.AsyncClient, runtime_settings: Settings, tmp_path: Path, namespace: str,
        ns_headers: dict[str, str],
    ) -> None:
        marker = tmp_path / "hook-ran"
        hooks = {"createRuntime": [{"path": "/bin/sh", "args": ["sh", "-c", f"touch {marker}"]}]}
        await label(api, namespace, "privileged")
        await make_container(api, ns_headers, "hooked", ["true"], hooks=hooks)
        await label(api, namespace, None)

        response = await api.post("/tasks", json={"container_id": "hooked"}, headers=ns_headers)
        assert "spec.hooks.createRuntime" in problem(response, 422)["detail"]
        assert not marker.exists(), "the hook did not run"
        assert (await api.get("/tasks", headers=ns_headers)).json()["tasks"] == []
        assert "/tasks/create" not in await topics(api, namespace)
        assert leftovers(runtime_settings) == {}
        assert not (runtime_settings.state / "tasks" / namespace / "hooked").exists()

        await label(api, namespace, "privileged")  # the same container, allowed again
        await create(api, ns_headers, "hooked")
        assert marker.exists()
        await api.delete("/tasks/hooked", headers=ns_headers)
        await gone(api, ns_headers, "hooked")

    async def test_bind_source_swapped_for_a_symlink_to_root(
        self, api: httpx.AsyncClient, runtime_settings: Settings, allowed: Path, namespace: str,
        ns_headers: dict[str, str],
    ) -> None:
        (allowed / "data").mkdir()
        mounts = [*DEFAULT_MOUNTS, {"destination": "/mnt", "type": "bind", "source": str(allowed / "data"),
                                    "options": ["rbind"]}]
        await make_container(api, ns_headers, "swapped", ["ls", "/mnt"], mounts=mounts)
        shutil.rmtree(allowed / "data")
        os.symlink("/", allowed / "data")

        response = await api.post("/tasks", json={"container_id": "swapped"}, headers=ns_headers)
        assert f"spec.mounts[{len(DEFAULT_MOUNTS)}].source: host path / (resolved)" in problem(response, 422)["detail"]
        assert (await api.get("/tasks", headers=ns_headers)).json()["tasks"] == []
        assert "/tasks/create" not in await topics(api, namespace)
        assert leftovers(runtime_settings) == {}

    async def test_exec_capabilities(
        self, api: httpx.AsyncClient, namespace: str, ns_headers: dict[str, str]
    ) -> None:
        await make_container(api, ns_headers, "web", SERVE)
        await create(api, ns_headers, "web")
        assert (await api.post("/tasks/web/start", headers=ns_headers)).status_code == 200
        await ready(api, ns_headers, "web")
        probe = ["sh", "-c", "grep CapEff /proc/self/status"]
        admin = {"args": probe, "capabilities": SYS_ADMIN}

        refused = await api.post("/tasks/web/processes", json={"exec_id": "admin", "process": admin},
                                 headers=ns_headers)
        assert "process.capabilities.bounding: CAP_SYS_ADMIN" in problem(refused, 422)["detail"]
        assert "/tasks/exec-added" not in await topics(api, namespace)

        await label(api, namespace, "privileged")
        added = await api.post("/tasks/web/processes", json={"exec_id": "admin", "process": admin},
                               headers=ns_headers)
        assert added.status_code == 201, added.text
        await label(api, namespace, None)
        refused = await api.post("/tasks/web/processes/admin/start", headers=ns_headers)
        assert "process.capabilities" in problem(refused, 422)["detail"]
        assert "/tasks/exec-started" not in await topics(api, namespace)

        await label(api, namespace, "privileged")
        started = await api.post("/tasks/web/processes/admin/start", headers=ns_headers)
        assert started.status_code == 200, started.text
        assert (await wait_exec(api, ns_headers, "web", "admin"))["exit_status"] == 0
        (line,) = texts(await log_lines(api, ns_headers, "/tasks/web/processes/admin/logs"))
        assert int(line.split()[1], 16) & CAP_SYS_ADMIN_BIT, line
        await api.delete("/tasks/web", headers=ns_headers)
        await gone(api, ns_headers, "web")


class TestProfileFile:
    async def test_without_the_default_profile_task_create_says_what_to_install(
        self, runtime_settings: Settings, busybox_tar: Path, tmp_path: Path, namespace: str,
        ns_headers: dict[str, str], monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        monkeypatch.setattr(policy, "DEFAULT_PROFILE_PATH", tmp_path / "not-installed.json")
        async with serving(runtime_settings) as client:
            await import_busybox(client, busybox_tar, ns_headers)
            await make_container(client, ns_headers, "web", ["true"])  # the metadata API keeps working
            response = await client.post("/tasks", json={"container_id": "web"}, headers=ns_headers)
            assert "apt-get install golang-github-containers-common" in problem(response, 503)["detail"]
            assert (await client.get("/tasks", headers=ns_headers)).json()["tasks"] == []
            assert "/tasks/create" not in await topics(client, namespace)
            assert leftovers(runtime_settings) == {}

    async def test_a_named_profile_is_the_default(
        self, runtime_settings: Settings, busybox_tar: Path, tmp_path: Path, ns_headers: dict[str, str]
    ) -> None:
        profile = tmp_path / "profile.json"
        profile.write_text(json.dumps({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]}))
        async with serving(settings_with(runtime_settings, seccomp_profile=profile)) as client:
            await import_busybox(client, busybox_tar, ns_headers)
            _, output = await run_to_exit(client, ns_headers, "probe", "mkdir /tmp/new; echo status=$?")
        # stderr and stdout reach the log through two pipes: their order between them is not kept.
        assert sorted(output) == ["mkdir: can't create directory '/tmp/new': Operation not permitted", "status=1"]
