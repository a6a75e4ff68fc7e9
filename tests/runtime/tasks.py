"""What the task tests share: the processes they run (`SERVE`, `LONG`), the API calls they
make (create, run, wait, exec, logs), the waits on the daemon's progress (`ready`, `gone`,
`no_tasks`) and the looks at the host (`alive`, `conmon_of`). Not a test module: test
modules import it, never each other."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from app.config import Settings
from tests.conftest import conmon_pids_under, wait_for
from tests.runtime.conftest import make_container

# Runs until SIGTERM (it exits 43 then: proof the signal reached it) or SIGKILL (137).
# An init process in its own pid namespace ignores signals it has no handler for, so
# nothing may send SIGTERM before it says "ready" (its trap is set): see `ready()`.
SERVE = ["sh", "-c", "trap 'exit 43' TERM; echo ready; while :; do sleep 0.05; done"]
SIGTERM_STATUS = 43
SIGKILL_STATUS = 128 + 9
LONG = ["sleep", "1000"]
PROBLEM = "application/problem+json"
NDJSON = "application/x-ndjson"


def problem(response: httpx.Response, *statuses: int) -> dict[str, Any]:
    """The problem+json body of `response`, whose status must be one of `statuses`."""
    assert response.status_code in statuses, (response.status_code, response.text)
    assert response.headers["content-type"].startswith(PROBLEM), response.headers
    body: dict[str, Any] = response.json()
    assert body["status"] == response.status_code
    assert body["title"] and body["detail"], body
    return body


# --- the host ----------------------------------------------------------------------------


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def conmon_of(settings: Settings, task_id: str) -> list[int]:
    """conmon processes of this daemon that run `task_id`."""
    found = []
    for pid in conmon_pids_under(settings.state):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if task_id.encode() in argv:
            found.append(pid)
    return found


def vm_rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


async def monitor_polls(client: httpx.AsyncClient) -> float:
    """How many polls the daemon's monitor has made (its poll histogram's count)."""
    metrics = await client.get("/metrics")
    assert metrics.status_code == 200, metrics.text
    for family in text_string_to_metric_families(metrics.text):
        for sample in family.samples:
            if sample.name == "cargohold_monitor_poll_seconds_count":
                return sample.value
    raise AssertionError("no cargohold_monitor_poll_seconds_count on /metrics")


# --- events ------------------------------------------------------------------------------


async def task_events(client: httpx.AsyncClient, namespace: str) -> list[dict[str, Any]]:
    response = await client.get(
        "/events/history",
        params={"filter": f'topic~="^/tasks/",namespace=="{namespace}"', "limit": 1000},
    )
    assert response.status_code == 200, response.text
    events: list[dict[str, Any]] = response.json()["events"]
    return events


async def topics(client: httpx.AsyncClient, namespace: str) -> list[str]:
    return [event["topic"] for event in await task_events(client, namespace)]


def topics_for(events: list[dict[str, Any]], topic: str, container_id: str, process_id: str | None = None
               ) -> list[dict[str, Any]]:
    """Payloads of `topic` for the container (and, for /tasks/exit, the process: init by default)."""
    found = []
    for event in events:
        if event["topic"] != topic or event["event"].get("container_id") != container_id:
            continue
        if topic == "/tasks/exit" and event["event"]["id"] != (process_id or container_id):
            continue
        found.append(event["event"])
    return found


# --- tasks -------------------------------------------------------------------------------


async def create(client: httpx.AsyncClient, headers: dict[str, str], task_id: str) -> dict[str, Any]:
    response = await client.post("/tasks", json={"container_id": task_id}, headers=headers)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def run_task(client: httpx.AsyncClient, headers: dict[str, str], container_id: str) -> dict[str, Any]:
    """Create and start the task of an existing container; the started task."""
    await create(client, headers, container_id)
    started = await client.post(f"/tasks/{container_id}/start", headers=headers)
    assert started.status_code == 200, started.text
    task: dict[str, Any] = started.json()
    return task


async def run(
    client: httpx.AsyncClient, headers: dict[str, str], task_id: str, args: list[str] | None = None, **spec: Any
) -> dict[str, Any]:
    """A container running `args` (default: SERVE) and its started task."""
    await make_container(client, headers, task_id, args or SERVE, **spec)
    body = await run_task(client, headers, task_id)
    if args is None or args == SERVE:
        await ready(client, headers, task_id)
    return body


async def ready(client: httpx.AsyncClient, headers: dict[str, str], task_id: str, within: float = 5) -> None:
    """Wait until a SERVE task has set its SIGTERM trap (it prints "ready" then)."""

    async def said_ready() -> bool:
        return '"line":"ready"' in (await client.get(f"/tasks/{task_id}/logs", headers=headers)).text

    await wait_for(said_ready, f"task {task_id} gets ready", within)


async def wait_exit(client: httpx.AsyncClient, headers: dict[str, str], task_id: str) -> dict[str, Any]:
    response = await client.post(f"/tasks/{task_id}/wait", headers=headers, timeout=15)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def wait_status(client: httpx.AsyncClient, headers: dict[str, str], path: str) -> int:
    """The exit status `POST {path}/wait` answers (path: a task's or an exec process's)."""
    response = await client.post(f"{path}/wait", headers=headers)
    assert response.status_code == 200, response.text
    status: int = response.json()["exit_status"]
    return status


async def gone(client: httpx.AsyncClient, headers: dict[str, str], task_id: str, within: float = 5) -> None:
    """Wait until the task's teardown has finished: every /tasks/create of it has its
    /tasks/delete (published once runtime state, cgroup, mount and bundle are gone)."""
    namespace = headers["Cargohold-Namespace"]

    async def torn_down() -> bool:
        mine = [e["topic"] for e in await task_events(client, namespace) if e["event"].get("container_id") == task_id]
        return mine.count("/tasks/delete") >= mine.count("/tasks/create")

    await wait_for(torn_down, f"task {task_id} is torn down", within)


async def no_tasks(client: httpx.AsyncClient, headers: dict[str, str]) -> bool:
    response = await client.get("/tasks", headers=headers)
    return response.status_code == 200 and response.json()["tasks"] == []


# --- exec processes and logs -------------------------------------------------------------


def exec_body(exec_id: str, args: list[str], **process: Any) -> dict[str, Any]:
    return {"exec_id": exec_id, "process": {"args": args, **process}}


async def add_exec(
    client: httpx.AsyncClient, headers: dict[str, str], task_id: str, exec_id: str, args: list[str]
) -> dict[str, Any]:
    response = await client.post(f"/tasks/{task_id}/processes", json=exec_body(exec_id, args), headers=headers)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def start_exec(client: httpx.AsyncClient, headers: dict[str, str], task_id: str, exec_id: str) -> dict[str, Any]:
    response = await client.post(f"/tasks/{task_id}/processes/{exec_id}/start", headers=headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def run_exec(client: httpx.AsyncClient, headers: dict[str, str], task_id: str, exec_id: str,
                   args: list[str]) -> dict[str, Any]:
    """Add exec process `exec_id` running `args` to the task and start it; the started process."""
    await add_exec(client, headers, task_id, exec_id, args)
    return await start_exec(client, headers, task_id, exec_id)


async def wait_exec(client: httpx.AsyncClient, headers: dict[str, str], task_id: str, exec_id: str) -> dict[str, Any]:
    response = await client.post(f"/tasks/{task_id}/processes/{exec_id}/wait", headers=headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def parse_lines(response: httpx.Response) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith(NDJSON), response.headers
    return [json.loads(line) for line in response.text.splitlines()]


async def log_lines(
    client: httpx.AsyncClient, headers: dict[str, str], path: str, **params: Any
) -> list[dict[str, Any]]:
    return parse_lines(await client.get(path, params=params, headers=headers))


def texts(lines: list[dict[str, Any]]) -> list[str]:
    return [line["line"] for line in lines]
