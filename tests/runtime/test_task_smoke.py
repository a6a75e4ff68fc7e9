"""A busybox task runs to completion under runc + conmon: exit status, logs, events."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tests.runtime.conftest import import_busybox, make_container

pytestmark = [pytest.mark.anyio, pytest.mark.runtime]


async def test_run_to_completion(
    runtime_client: httpx.AsyncClient, busybox_tar: Path, ns_headers: dict[str, str]
) -> None:
    client = runtime_client
    await import_busybox(client, busybox_tar, ns_headers)
    await make_container(client, ns_headers, "hello", ["sh", "-c", "echo hello; echo oops >&2; exit 7"])
    created = await client.post("/tasks", json={"container_id": "hello"}, headers=ns_headers)
    assert created.status_code == 201, created.text
    assert created.json()["status"] == "created"
    started = await client.post("/tasks/hello/start", headers=ns_headers)
    assert started.json()["status"] == "running"
    exit_ = (await client.post("/tasks/hello/wait", headers=ns_headers)).json()
    assert exit_["exit_status"] == 7 and exit_["oom_killed"] is False
    logs = [json.loads(line) for line in (await client.get("/tasks/hello/logs", headers=ns_headers)).text.splitlines()]
    # Two pipes: the order between stdout and stderr lines is not kept, within each it is.
    assert sorted((line["stream"], line["line"], line["partial"]) for line in logs) == [
        ("stderr", "oops", False), ("stdout", "hello", False)
    ]
