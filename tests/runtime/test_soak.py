"""Soak: 50 create/start/kill/wait cycles, 10 tasks at a time, on a real daemon; afterwards
not one process, mount, cgroup, runc state or task dir is left, and every exit and delete
was published exactly once (DESIGN: Tasks, "Exit means delete")."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from app.config import Settings
from tests.conftest import leftovers, wait_for
from tests.runtime.conftest import history, import_busybox, make_container

pytestmark = [pytest.mark.anyio, pytest.mark.runtime]

CYCLES = 50
AT_ONCE = 10
BUDGET_SECONDS = 60.0
CONTAINER_DELETE_SECONDS = 10.0


def is_busybox_sleep(pid: int) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z" and argv[:1] == [b"sleep"]


class Cycle:
    """One container's life: create, start, SIGKILL, wait (137), delete the container."""

    def __init__(self, client: httpx.AsyncClient, headers: dict[str, str], container_id: str) -> None:
        self.client = client
        self.headers = headers
        self.id = container_id
        self.pid = 0
        self.delete_conflicts = 0

    async def run(self) -> None:
        client, headers = self.client, self.headers
        await make_container(client, headers, self.id, ["sleep", "1000"])
        created = await client.post("/tasks", json={"container_id": self.id}, headers=headers)
        assert created.status_code == 201, created.text
        self.pid = created.json()["pid"]
        started = await client.post(f"/tasks/{self.id}/start", headers=headers)
        assert started.status_code == 200, started.text
        # `runc start` returns before the init has exec'd: until then it is `runc init`.
        await wait_for(lambda: is_busybox_sleep(self.pid), f"{self.id}: pid {self.pid} runs sleep", 2, every=0.01)
        killed = await client.post(f"/tasks/{self.id}/kill", json={"signal": "SIGKILL"}, headers=headers)
        assert killed.status_code == 204, killed.text
        waited = await client.post(f"/tasks/{self.id}/wait", headers=headers)
        assert waited.status_code == 200, waited.text
        assert waited.json()["exit_status"] == 137, waited.json()
        # Exit means delete: once wait has answered, the task is gone (404) ...
        gone = await client.get(f"/tasks/{self.id}", headers=headers)
        assert gone.status_code == 404, gone.text
        # ... so the container can go. A 409 ("has a task") here is the teardown still
        # running after wait answered: counted, retried, reported by the caller.
        deadline = time.monotonic() + CONTAINER_DELETE_SECONDS
        while True:
            deleted = await client.delete(f"/containers/{self.id}", headers=headers)
            if deleted.status_code != 409 or time.monotonic() > deadline:
                break
            self.delete_conflicts += 1
            await asyncio.sleep(0.02)
        assert deleted.status_code == 204, deleted.text


async def test_soak_create_start_kill_wait(
    runtime_client: httpx.AsyncClient,
    runtime_settings: Settings,
    busybox_tar: Path,
    namespace: str,
    ns_headers: dict[str, str],
) -> None:
    client = runtime_client
    await import_busybox(client, busybox_tar, ns_headers)
    cycles = [Cycle(client, ns_headers, f"soak{n}") for n in range(CYCLES)]
    began = time.monotonic()
    for first in range(0, CYCLES, AT_ONCE):
        await asyncio.gather(*(cycle.run() for cycle in cycles[first:first + AT_ONCE]))
    elapsed = time.monotonic() - began
    conflicts = sum(cycle.delete_conflicts for cycle in cycles)
    print(f"\nsoak: {CYCLES} cycles, {AT_ONCE} at once, in {elapsed:.1f} s "
          f"({elapsed / CYCLES * 1000:.0f} ms a cycle); container deletes answered 409 after wait: {conflicts}")

    assert leftovers(runtime_settings) == {}
    assert [cycle.pid for cycle in cycles if is_busybox_sleep(cycle.pid)] == []
    assert (await client.get("/tasks", headers=ns_headers)).json()["tasks"] == []
    assert (await client.get("/containers", headers=ns_headers)).json()["containers"] == []
    snapshots = (await client.get("/snapshots", headers=ns_headers)).json()["snapshots"]
    assert [s["key"] for s in snapshots] == ["busybox"]

    events = await history(client, namespace)
    topics = Counter(event["topic"] for event in events)
    for topic in ("/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete", "/containers/delete"):
        assert topics[topic] == CYCLES, (topic, topics)
    for topic in ("/tasks/exit", "/tasks/delete"):
        per_container = Counter(event["event"]["container_id"] for event in events if event["topic"] == topic)
        assert per_container == Counter({cycle.id: 1 for cycle in cycles}), topic
        statuses = {event["event"]["exit_status"] for event in events if event["topic"] == topic}
        assert statuses == {137}, topic
    assert elapsed < BUDGET_SECONDS, f"the soak took {elapsed:.1f} s"


async def test_container_can_be_deleted_once_wait_has_answered(
    runtime_client: httpx.AsyncClient, busybox_tar: Path, ns_headers: dict[str, str]
) -> None:
    """After `wait` answers, the task is gone for the API (GET /tasks/<id> is 404, and so is
    DELETE /tasks/<id>), so DELETE /containers/<id> must not answer 409 "has a task; delete
    the task first": the client has no task left to delete and nothing to wait on."""
    client = runtime_client
    await import_busybox(client, busybox_tar, ns_headers)
    answers = []
    for n in range(5):
        container_id = f"quick{n}"
        await make_container(client, ns_headers, container_id, ["sh", "-c", "exit 3"])
        created = await client.post("/tasks", json={"container_id": container_id}, headers=ns_headers)
        assert created.status_code == 201, created.text
        started = await client.post(f"/tasks/{container_id}/start", headers=ns_headers)
        assert started.status_code == 200, started.text
        waited = await client.post(f"/tasks/{container_id}/wait", headers=ns_headers)
        assert waited.json()["exit_status"] == 3, waited.text
        deleted = await client.delete(f"/containers/{container_id}", headers=ns_headers)
        task = await client.get(f"/tasks/{container_id}", headers=ns_headers)
        task_delete = await client.delete(f"/tasks/{container_id}", headers=ns_headers)
        answers.append((deleted.status_code, task.status_code, task_delete.status_code))
        if deleted.status_code == 409:  # let the teardown finish, then delete for real

            async def deleted_now(path: str = f"/containers/{container_id}") -> bool:
                return (await client.delete(path, headers=ns_headers)).status_code == 204

            await wait_for(deleted_now, f"container {container_id} is deleted")
    # (DELETE /containers, GET /tasks/<id>, DELETE /tasks/<id>) right after wait answered.
    assert answers == [(204, 404, 404)] * 5, answers
