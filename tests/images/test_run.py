"""Containers from pulled images, run through real runc + conmon: the spec built from the image
config, `process` overrides, and the container's own snapshot on the image's top layer."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.config import Listener, Settings
from app.images.descriptors import OCI_CONFIG, OCI_MANIFEST
from app.images.unpack import chain_ids
from tests.conftest import leftovers, running_server, uds_client
from tests.images.conftest import REPOSITORY, Registry
from tests.runtime.conftest import delete_all_tasks, history, require_runtime
from tests.runtime.tasks import gone

pytestmark = [pytest.mark.anyio, pytest.mark.registry, pytest.mark.runtime]

Json = dict[str, Any]


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """A real daemon on a unix socket (as tests/runtime's), left with no task, mount or cgroup."""
    require_runtime()
    settings = Settings(root=tmp_path / "root", state=tmp_path / "state",
                        listeners=(Listener.parse(f"unix://{tmp_path / 'state' / 'cargohold.sock'}"),))
    async with running_server(settings), uds_client(settings, timeout=60) as client:
        try:
            yield client
        finally:
            await delete_all_tasks(client)
    assert leftovers(settings) == {}


async def pull(client: httpx.AsyncClient, headers: dict[str, str], reference: str) -> Json:
    response = await client.post("/images/pull", json={"reference": reference, "plain_http": True}, headers=headers)
    assert response.status_code == 201, response.text
    image: Json = response.json()
    return image


async def run(client: httpx.AsyncClient, headers: dict[str, str], container_id: str) -> tuple[int, list[str]]:
    """Create, start and wait for the task of `container_id`, then for its teardown (an exited
    task is deleted by the daemon); its exit status and log lines."""
    created = await client.post("/tasks", json={"container_id": container_id}, headers=headers)
    assert created.status_code == 201, created.text
    assert (await client.post(f"/tasks/{container_id}/start", headers=headers)).status_code == 200
    exit_ = (await client.post(f"/tasks/{container_id}/wait", headers=headers)).json()
    logs = (await client.get(f"/tasks/{container_id}/logs", headers=headers)).text.splitlines()
    await gone(client, headers, container_id)
    return exit_["exit_status"], [json.loads(line)["line"] for line in logs]


def push_configured_image(registry: Registry, tag: str, settings: Json) -> str:
    """`library/busybox:latest`'s layer under a config of `settings` (Entrypoint, Cmd, Env ...)."""
    manifest = json.loads(registry.raw_manifest(f"{registry.host}/{REPOSITORY}:latest"))
    base = json.loads(registry.blob_data(manifest["config"]["digest"]).read_bytes())
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": settings,
                         "rootfs": base["rootfs"]}).encode()
    digest = registry.put_blob(REPOSITORY, config)
    manifest["config"] = {"mediaType": OCI_CONFIG, "digest": digest, "size": len(config)}
    registry.put_manifest(REPOSITORY, tag, OCI_MANIFEST, json.dumps(manifest).encode())
    return f"{registry.host}/{REPOSITORY}:{tag}"


async def test_run_a_pulled_image_with_other_args(daemon: httpx.AsyncClient, ns_headers: dict[str, str],
                                                  namespace: str, registry: Registry) -> None:
    client = daemon
    reference = f"{registry.host}/{REPOSITORY}:latest"
    image = await pull(client, ns_headers, reference)
    body = {"id": "web", "image": reference,
            "process": {"args": ["sh", "-c", "echo from-image; pwd; id -u; echo $PATH; ls /bin/busybox"]}}
    created = await client.post("/containers", json=body, headers=ns_headers)
    assert created.status_code == 201, created.text
    container = created.json()
    assert (container["image"], container["snapshot_key"]) == (image["name"], "web")
    process = container["spec"]["process"]
    assert process["args"] == body["process"]["args"]  # type: ignore[index]
    assert (process["env"], process["cwd"], process["user"]) == (["PATH=/bin"], "/", {"uid": 0, "gid": 0})
    assert container["spec"]["mounts"], "the stored spec is the full one, the daemon's defaults included"
    config = (await client.get(f"/images/{reference}/config", headers=ns_headers)).json()
    top = chain_ids(config["rootfs"]["diff_ids"])[-1]
    snapshot = (await client.get("/snapshots/web", headers=ns_headers)).json()
    assert (snapshot["kind"], snapshot["parent"]) == ("active", top)

    assert await run(client, ns_headers, "web") == (0, ["from-image", "/", "0", "/bin", "/bin/busybox"])

    # The container's snapshot goes with it; the image's layers stay.
    assert (await client.delete("/containers/web", headers=ns_headers)).status_code == 204
    assert (await client.get("/snapshots/web", headers=ns_headers)).status_code == 404
    keys = [s["key"] for s in (await client.get("/snapshots", headers=ns_headers)).json()["snapshots"]]
    assert keys == [top]
    topics = [event["topic"] for event in await history(client, namespace)]
    assert topics.count("/snapshot/prepare") == 1 and topics.count("/snapshot/remove") == 1


async def test_the_spec_comes_from_the_image_config(daemon: httpx.AsyncClient, ns_headers: dict[str, str],
                                                    registry: Registry) -> None:
    client = daemon
    reference = push_configured_image(registry, "configured", {
        "Entrypoint": ["/bin/sh", "-c"], "Cmd": ["echo $GREETING from $(pwd) as $(id -u):$(id -g)"],
        "Env": ["PATH=/bin", "GREETING=hi"], "WorkingDir": "/etc", "User": "1000:1001"})
    await pull(client, ns_headers, reference)
    created = await client.post("/containers", json={"id": "plain", "image": reference}, headers=ns_headers)
    assert created.status_code == 201, created.text
    assert await run(client, ns_headers, "plain") == (0, ["hi from /etc as 1000:1001"])

    overridden = {"id": "other", "image": reference,
                  "process": {"env": ["GREETING=bye"], "cwd": "/bin", "user": {"uid": 7, "gid": 8}}}
    created = await client.post("/containers", json=overridden, headers=ns_headers)
    assert created.status_code == 201, created.text
    assert created.json()["spec"]["process"]["env"] == ["PATH=/bin", "GREETING=bye"]
    assert await run(client, ns_headers, "other") == (0, ["bye from /bin as 7:8"])
    for container_id in ("plain", "other"):
        assert (await client.delete(f"/containers/{container_id}", headers=ns_headers)).status_code == 204


async def test_bad_requests_change_nothing(daemon: httpx.AsyncClient, ns_headers: dict[str, str],
                                           namespace: str, registry: Registry) -> None:
    client = daemon
    reference = f"{registry.host}/{REPOSITORY}:latest"
    await pull(client, ns_headers, reference)
    named_user = push_configured_image(registry, "named-user", {"Cmd": ["true"], "User": "nobody"})
    no_command = push_configured_image(registry, "no-command", {"Env": ["PATH=/bin"]})
    await pull(client, ns_headers, named_user)
    await pull(client, ns_headers, no_command)
    before = await history(client, namespace)
    snapshots_before = (await client.get("/snapshots", headers=ns_headers)).json()
    cases = [
        ({"id": "a", "image": "never/pulled"}, 422, "pull it first"),
        ({"id": "b"}, 422, "body.spec"),
        ({"id": "c", "image": named_user}, 400, 'user "nobody"'),
        ({"id": "d", "image": no_command}, 400, "neither entrypoint nor cmd"),
        ({"id": "e", "image": reference, "process": {"args": []}}, 422, "body.process.args"),
        ({"id": "f", "image": reference, "process": {"bogus": 1}}, 422, "body.process.bogus"),
    ]
    for body, status, fragment in cases:
        response = await client.post("/containers", json=body, headers=ns_headers)
        assert response.status_code == status, (body, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        assert fragment in response.json()["detail"], (body, response.json())
    # An id already taken: 409, and the container's snapshot is not touched.
    assert (await client.post("/containers", json={"id": "web", "image": reference},
                              headers=ns_headers)).status_code == 201
    again = await client.post("/containers", json={"id": "web", "image": reference}, headers=ns_headers)
    assert again.status_code == 409
    assert (await client.get("/snapshots/web", headers=ns_headers)).status_code == 200
    assert (await client.delete("/containers/web", headers=ns_headers)).status_code == 204
    assert (await client.get("/snapshots", headers=ns_headers)).json() == snapshots_before
    assert [e["topic"] for e in await history(client, namespace)][len(before):] == [
        "/snapshot/prepare", "/containers/create", "/containers/delete", "/snapshot/remove"]
