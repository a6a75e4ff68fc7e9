"""Runtime and store agree (issue 12, point 7, and its smaller points), on real runc + conmon.

Each disagreement is made for real: runc changed behind the daemon's back (as a crash
between the runtime's change and the row's leaves it), the row edited with sqlite3 while
the daemon is down, a store write made to fail by holding the database's write lock.
Then the operations must work from the state the runtime reports, the row must be
corrected with its event, and nothing may be left behind.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from app.config import Settings
from app.daemon import Daemon, open_daemon
from app.errors import CargoholdError, ErrorKind
from app.identifiers import identifier_problem
from app.main import create_app
from app.models import KillRequest, TaskCreate
from app.runtime.cgroups import cgroup_name, daemon_cgroup_parent, hierarchies, task_cgroup
from tests.conftest import BASE_URL, leftovers, wait_for
from tests.runtime.conftest import delete_all_tasks, history, import_busybox, make_container
from tests.runtime.daemon import daemon_in
from tests.runtime.tasks import LONG, alive, monitor_polls, no_tasks, run_exec, run_task, topics_for, wait_status

pytestmark = [pytest.mark.anyio, pytest.mark.runtime]

TASK_TOPICS = ("/tasks/create", "/tasks/start", "/tasks/paused", "/tasks/resumed", "/tasks/exit", "/tasks/delete")


def runc(state: Path, *args: str) -> str:
    """runc on the daemon's private state root, behind the daemon's back."""
    done = subprocess.run(["runc", f"--root={state / 'runtimes' / 'runc'}", *args],
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def runc_status(state: Path, namespace: str, task_id: str) -> str:
    status: str = json.loads(runc(state, "state", f"{namespace}+{task_id}"))["status"]
    return status


def task_topics(events: list[dict[str, Any]], task_id: str) -> list[str]:
    return [e["topic"] for e in events if e["topic"] in TASK_TOPICS and e["event"].get("container_id") == task_id
            and e["event"].get("id", task_id) == task_id]


async def status_of(client: httpx.AsyncClient, headers: dict[str, str], task_id: str) -> str:
    response = await client.get(f"/tasks/{task_id}", headers=headers)
    assert response.status_code == 200, response.text
    status: str = response.json()["status"]
    return status


@contextmanager
def decoy() -> Iterator[subprocess.Popen[bytes]]:
    """A process outside every container: no signal meant for a task may reach it."""
    process = subprocess.Popen(["sleep", "1000"])
    try:
        yield process
    finally:
        process.kill()
        process.wait()


# --- pause, resume and delete from the runtime's state -----------------------------------


async def test_runtime_changed_behind_the_daemons_back(
    runtime_client: httpx.AsyncClient, runtime_settings: Settings, busybox_tar: Path, namespace: str,
    ns_headers: dict[str, str],
) -> None:
    """The row says one thing, runc another (what a crash between them leaves): each
    operation goes by runc's state, the row is corrected with its event."""
    client, state = runtime_client, runtime_settings.state
    await import_busybox(client, busybox_tar, ns_headers)
    await make_container(client, ns_headers, "web", LONG)
    task = await run_task(client, ns_headers, "web")

    # Paused in runc, running in the row: resume works.
    runc(state, "pause", f"{namespace}+web")
    resumed = await client.post("/tasks/web/resume", headers=ns_headers)
    assert resumed.status_code == 200, resumed.text
    assert resumed.json()["status"] == "running" and runc_status(state, namespace, "web") == "running"

    # Paused in runc, running in the row: pause is refused (it is paused) and the row corrected.
    runc(state, "pause", f"{namespace}+web")
    paused = await client.post("/tasks/web/pause", headers=ns_headers)
    assert paused.status_code == 409 and "is paused" in paused.json()["detail"], paused.text
    assert await status_of(client, ns_headers, "web") == "paused"

    # Running in runc, paused in the row: resume is refused (it runs) and the row corrected.
    runc(state, "resume", f"{namespace}+web")
    again = await client.post("/tasks/web/resume", headers=ns_headers)
    assert again.status_code == 409 and "is running" in again.json()["detail"], again.text
    assert await status_of(client, ns_headers, "web") == "running"

    # Paused in runc, running in the row: delete thaws it and answers at once.
    runc(state, "pause", f"{namespace}+web")
    began = asyncio.get_running_loop().time()
    deleted = await client.delete("/tasks/web", headers=ns_headers)
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["exit_status"] == 137 and asyncio.get_running_loop().time() - began < 10
    assert not alive(task["pid"])
    assert task_topics(await history(client, namespace), "web") == [
        "/tasks/create", "/tasks/start",
        "/tasks/paused", "/tasks/resumed",  # corrected, then the resume asked for
        "/tasks/paused",  # corrected by the refused pause
        "/tasks/resumed",  # corrected by the refused resume
        "/tasks/exit", "/tasks/delete",
    ]


@contextmanager
def database_locked(settings: Settings) -> Iterator[None]:
    """Every write of the daemon fails (after its busy timeout) while this holds the lock."""
    connection = sqlite3.connect(settings.database_path, isolation_level=None)
    try:
        connection.execute("BEGIN EXCLUSIVE")
        yield
    finally:
        connection.execute("ROLLBACK")
        connection.close()


@pytest.mark.parametrize("operation", ["pause", "resume"])
async def test_a_failed_write_leaves_runtime_and_row_agreeing(
    runtime_client: httpx.AsyncClient, runtime_settings: Settings, busybox_tar: Path, namespace: str,
    ns_headers: dict[str, str], operation: str,
) -> None:
    """The row cannot be written after runc paused (resumed) the task: the runtime's change
    is undone, so both still say the same and every later operation works."""
    client, state = runtime_client, runtime_settings.state
    await import_busybox(client, busybox_tar, ns_headers)
    await make_container(client, ns_headers, "web", LONG)
    await run_task(client, ns_headers, "web")
    if operation == "resume":
        assert (await client.post("/tasks/web/pause", headers=ns_headers)).status_code == 200
    before = await status_of(client, ns_headers, "web")
    with database_locked(runtime_settings):
        failed = await client.post(f"/tasks/web/{operation}", headers=ns_headers)
    assert failed.status_code >= 500, failed.text
    assert await status_of(client, ns_headers, "web") == before
    assert runc_status(state, namespace, "web") == before
    # The operation works once the store does, and so does the other one, and delete.
    for step in (operation, "resume" if operation == "pause" else "pause"):
        answered = await client.post(f"/tasks/web/{step}", headers=ns_headers)
        assert answered.status_code == 200, answered.text
        assert answered.json()["status"] == runc_status(state, namespace, "web")
    deleted = await client.delete("/tasks/web", headers=ns_headers)
    assert deleted.status_code == 200 and deleted.json()["exit_status"] == 137, deleted.text


async def test_recovery_reconciles_with_runc_state(
    tmp_path: Path, busybox_tar: Path, namespace: str, ns_headers: dict[str, str]
) -> None:
    """While the daemon is down, runc and the rows part ways as a crash between them
    leaves them (runc changed behind its back, a row edited with sqlite3). At start the rows
    are corrected, each with its event, once; then resume, pause and delete work."""
    async with daemon_in(tmp_path) as daemon:
        client = await daemon.start()
        await import_busybox(client, busybox_tar, ns_headers)
        for name in ("frozen", "thawed", "edited", "started"):
            await make_container(client, ns_headers, name, LONG)
        for name in ("frozen", "thawed", "edited"):
            await run_task(client, ns_headers, name)
        assert (await client.post("/tasks/thawed/pause", headers=ns_headers)).status_code == 200
        created = await client.post("/tasks", json={"container_id": "started"}, headers=ns_headers)
        assert created.status_code == 201, created.text

        await daemon.stop(signal.SIGKILL)
        runc(daemon.state, "pause", f"{namespace}+frozen")  # paused: the row says running
        runc(daemon.state, "resume", f"{namespace}+thawed")  # running: the row says paused
        runc(daemon.state, "start", f"{namespace}+started")  # running: the row says created
        with sqlite3.connect(daemon.root / "metadata.db") as db:  # running: the row says paused
            db.execute("UPDATE tasks SET status = 'paused' WHERE namespace = ? AND id = 'edited'", (namespace,))
        db.close()

        client = await daemon.start()
        listed = {t["id"]: t for t in (await client.get("/tasks", headers=ns_headers)).json()["tasks"]}
        assert {name: t["status"] for name, t in listed.items()} == {
            "frozen": "paused", "thawed": "running", "edited": "running", "started": "running",
        }
        assert listed["started"]["started_at"] is not None
        expected = {
            "frozen": ["/tasks/create", "/tasks/start", "/tasks/paused"],
            "thawed": ["/tasks/create", "/tasks/start", "/tasks/paused", "/tasks/resumed"],
            "edited": ["/tasks/create", "/tasks/start", "/tasks/resumed"],
            "started": ["/tasks/create", "/tasks/start"],
        }
        events = await history(client, namespace)
        assert {name: task_topics(events, name) for name in expected} == expected

        # Once reconciled, a restart changes nothing.
        client = await daemon.restart(signal.SIGTERM)
        events = await history(client, namespace)
        assert {name: task_topics(events, name) for name in expected} == expected

        resumed = await client.post("/tasks/frozen/resume", headers=ns_headers)
        assert resumed.status_code == 200 and resumed.json()["status"] == "running", resumed.text
        for name in ("thawed", "edited", "started"):
            paused = await client.post(f"/tasks/{name}/pause", headers=ns_headers)
            assert paused.status_code == 200 and paused.json()["status"] == "paused", paused.text
        for name in expected:
            deleted = await client.delete(f"/tasks/{name}", headers=ns_headers)
            assert deleted.status_code == 200 and deleted.json()["exit_status"] == 137, deleted.text
        await wait_for(lambda: no_tasks(client, ns_headers), "the tasks are torn down", 20)
        await daemon.stop(signal.SIGTERM)
        assert leftovers(daemon.settings) == {}


# --- exec processes: started once, signalled through a pidfd ------------------------------


async def test_concurrent_exec_starts_run_it_once(
    runtime_client: httpx.AsyncClient, runtime_settings: Settings, busybox_tar: Path, namespace: str,
    ns_headers: dict[str, str],
) -> None:
    client = runtime_client
    await import_busybox(client, busybox_tar, ns_headers)
    await make_container(client, ns_headers, "host", LONG)
    await run_task(client, ns_headers, "host")
    added = await client.post("/tasks/host/processes", headers=ns_headers, json={
        "exec_id": "once", "process": {"args": ["sh", "-c", "echo ran >> /count; sleep 0.5"]},
    })
    assert added.status_code == 201, added.text
    answers = await asyncio.gather(*(
        client.post("/tasks/host/processes/once/start", headers=ns_headers) for _ in range(2)
    ))
    assert sorted(a.status_code for a in answers) == [200, 409], [a.text for a in answers]
    assert "started already" in next(a for a in answers if a.status_code == 409).json()["detail"]
    assert await wait_status(client, ns_headers, "/tasks/host/processes/once") == 0

    async def only_init_left() -> bool:  # a second run, were there one, has ended (and written)
        pids = await client.get("/tasks/host/pids", headers=ns_headers)
        assert pids.status_code == 200, pids.text
        return len(pids.json()["pids"]) == 1

    await wait_for(only_init_left, "every exec run has ended")
    rootfs = runtime_settings.state / "tasks" / namespace / "host" / "bundle" / "rootfs"
    assert (rootfs / "count").read_text() == "ran\n"
    events = await history(client, namespace)
    assert len([e for e in events if e["topic"] == "/tasks/exec-started"]) == 1
    assert len(topics_for(events, "/tasks/exit", "host", "once")) == 1


async def test_kill_exec_signals_only_its_process(
    runtime_client: httpx.AsyncClient, busybox_tar: Path, namespace: str, ns_headers: dict[str, str],
) -> None:
    client = runtime_client
    await import_busybox(client, busybox_tar, ns_headers)
    await make_container(client, ns_headers, "host", LONG)
    await run_task(client, ns_headers, "host")
    with decoy() as bystander:
        await run_exec(client, ns_headers, "host", "brief", ["true"])
        assert await wait_status(client, ns_headers, "/tasks/host/processes/brief") == 0
        events_before = await history(client, namespace)
        for sig in ("SIGKILL", "SIGTERM"):
            killed = await client.post("/tasks/host/processes/brief/kill", json={"signal": sig}, headers=ns_headers)
            assert killed.status_code == 409 and "has exited" in killed.json()["detail"], killed.text
        added = await client.post("/tasks/host/processes", headers=ns_headers,
                                  json={"exec_id": "idle", "process": {"args": LONG}})
        assert added.status_code == 201, added.text
        unstarted = await client.post("/tasks/host/processes/idle/kill", json={"signal": 9}, headers=ns_headers)
        assert unstarted.status_code == 409 and "not been started" in unstarted.json()["detail"], unstarted.text
        unknown = await client.post("/tasks/host/processes/nope/kill", json={"signal": 9}, headers=ns_headers)
        assert unknown.status_code == 404, unknown.text
        assert bystander.poll() is None, "a signal reached a process outside the task"
        assert len(await history(client, namespace)) == len(events_before) + 1  # only idle's exec-added

        process = await run_exec(client, ns_headers, "host", "long", LONG)
        killed = await client.post("/tasks/host/processes/long/kill", json={"signal": "SIGKILL"}, headers=ns_headers)
        assert killed.status_code == 204, killed.text
        assert await wait_status(client, ns_headers, "/tasks/host/processes/long") == 137
        assert not alive(process["pid"]) and bystander.poll() is None


async def test_kill_exec_after_restart_never_signals_a_reused_pid(
    tmp_path: Path, busybox_tar: Path, namespace: str, ns_headers: dict[str, str]
) -> None:
    """While the daemon is down the exec's row comes to name another process's pid (as pid
    reuse would): after the restart, kill reaches the exec and nothing else."""
    async with daemon_in(tmp_path) as daemon:
        client = await daemon.start()
        await import_busybox(client, busybox_tar, ns_headers)
        await make_container(client, ns_headers, "host", LONG)
        await run_task(client, ns_headers, "host")
        process = await run_exec(client, ns_headers, "host", "long", LONG)
        await daemon.stop(signal.SIGKILL)
        with decoy() as bystander:
            with sqlite3.connect(daemon.root / "metadata.db") as db:
                db.execute("UPDATE processes SET pid = ? WHERE namespace = ? AND exec_id = 'long'",
                           (bystander.pid, namespace))
            db.close()
            client = await daemon.start()
            killed = await client.post("/tasks/host/processes/long/kill", json={"signal": "SIGKILL"},
                                       headers=ns_headers)
            assert killed.status_code == 204, killed.text
            assert await wait_status(client, ns_headers, "/tasks/host/processes/long") == 137
            assert not alive(process["pid"])
            assert bystander.poll() is None, "the kill reached the process that has the row's pid"
            again = await client.post("/tasks/host/processes/long/kill", json={"signal": "SIGKILL"},
                                      headers=ns_headers)
            assert again.status_code == 409, again.text
            assert bystander.poll() is None
        deleted = await client.delete("/tasks/host", headers=ns_headers)
        assert deleted.status_code == 200, deleted.text
        await wait_for(lambda: no_tasks(client, ns_headers), "the task is torn down", 20)
        await daemon.stop(signal.SIGTERM)
        assert leftovers(daemon.settings) == {}


async def test_exec_run_but_not_recorded_is_adopted_not_run_again(
    tmp_path: Path, busybox_tar: Path, namespace: str, ns_headers: dict[str, str]
) -> None:
    """A crash after conmon ran an exec but before its row said so (made by setting the row
    back with sqlite3 while the daemon is down): recovery records it as started, so a
    second start is refused and kill and wait work. An exec id used before, added again
    and not started, stays unstarted (the earlier run's files do not count)."""
    async with daemon_in(tmp_path) as daemon:
        client = await daemon.start()
        await import_busybox(client, busybox_tar, ns_headers)
        await make_container(client, ns_headers, "host", LONG)
        await run_task(client, ns_headers, "host")
        process = await run_exec(client, ns_headers, "host", "cut", LONG)
        await run_exec(client, ns_headers, "host", "again", ["true"])
        assert await wait_status(client, ns_headers, "/tasks/host/processes/again") == 0
        added = await client.post("/tasks/host/processes", headers=ns_headers,
                                  json={"exec_id": "again", "process": {"args": ["sh", "-c", "exit 4"]}})
        assert added.status_code == 201, added.text
        await daemon.stop(signal.SIGKILL)
        with sqlite3.connect(daemon.root / "metadata.db") as db:
            db.execute("UPDATE processes SET status = 'created', pid = NULL, conmon_pid = NULL"
                       " WHERE namespace = ? AND exec_id = 'cut'", (namespace,))
        db.close()

        client = await daemon.start()
        task = (await client.get("/tasks/host", headers=ns_headers)).json()
        assert {p["exec_id"]: (p["status"], p["pid"]) for p in task["processes"]} == {
            "cut": ("running", process["pid"]), "again": ("created", None),
        }
        twice = await client.post("/tasks/host/processes/cut/start", headers=ns_headers)
        assert twice.status_code == 409, twice.text
        killed = await client.post("/tasks/host/processes/cut/kill", json={"signal": "SIGKILL"}, headers=ns_headers)
        assert killed.status_code == 204, killed.text
        assert await wait_status(client, ns_headers, "/tasks/host/processes/cut") == 137
        started = await client.post("/tasks/host/processes/again/start", headers=ns_headers)
        assert started.status_code == 200, started.text
        assert await wait_status(client, ns_headers, "/tasks/host/processes/again") == 4
        deleted = await client.delete("/tasks/host", headers=ns_headers)
        assert deleted.status_code == 200, deleted.text
        await wait_for(lambda: no_tasks(client, ns_headers), "the task is torn down", 20)
        await daemon.stop(signal.SIGTERM)
        assert leftovers(daemon.settings) == {}


# --- the smaller points ------------------------------------------------------------------


async def test_lock_table_keeps_no_entry_for_ids_tried(
    runtime_settings: Settings, busybox_tar: Path, namespace: str
) -> None:
    """1,000 ids tried with every operation that locks (most fail NOT_FOUND) leave no live
    task behind (its lock, watches, futures); nor does a task's whole life."""
    async with open_daemon(runtime_settings) as daemon:
        tasks = daemon.tasks
        kill = KillRequest(signal="SIGKILL")
        for number in range(1000):
            task_id = f"tried-{number}"
            attempts = [
                tasks.create(namespace, TaskCreate(container_id=task_id)),
                tasks.start(namespace, task_id),
                tasks.pause(namespace, task_id),
                tasks.resume(namespace, task_id),
                tasks.kill(namespace, task_id, kill),
                tasks.delete(namespace, task_id),
                tasks.start_exec(namespace, task_id, "x"),
                tasks.kill_exec(namespace, task_id, "x", kill),
            ]
            for attempt in attempts:
                with pytest.raises(CargoholdError) as raised:
                    await attempt
                assert raised.value.kind is ErrorKind.NOT_FOUND, raised.value.detail
        assert len(tasks._live) == 0

    async with running_daemon_client(runtime_settings) as (daemon, client):
        headers = {"Cargohold-Namespace": namespace}
        await import_busybox(client, busybox_tar, headers)
        await make_container(client, headers, "web", LONG)
        await run_task(client, headers, "web")
        await run_exec(client, headers, "web", "e", ["true"])
        for step in ("pause", "resume"):
            assert (await client.post(f"/tasks/web/{step}", headers=headers)).status_code == 200
        assert (await client.delete("/tasks/web", headers=headers)).status_code == 200
        assert len(daemon.tasks._live) == 0


@asynccontextmanager
async def running_daemon_client(settings: Settings) -> AsyncIterator[tuple[Daemon, httpx.AsyncClient]]:
    """The app in this process (its lifespan run), its `Daemon` and a client of it."""
    app = create_app(settings)
    async with app.router.lifespan_context(app) as state:
        assert state is not None

        async def with_state(scope: Scope, receive: Receive, send: Send) -> None:
            scope["state"] = dict(state)
            await app(scope, receive, send)

        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=with_state), base_url=BASE_URL,
                                     timeout=60) as client:
            try:
                yield state["daemon"], client
            finally:
                await delete_all_tasks(client)


async def test_exited_at_is_never_before_started_at(
    runtime_client: httpx.AsyncClient, busybox_tar: Path, ns_headers: dict[str, str]
) -> None:
    """A process that exits at once: conmon's exit file has the kernel's coarse time,
    taken before the daemon notes the start. The exit must not precede the start."""
    client = runtime_client
    await import_busybox(client, busybox_tar, ns_headers)
    await make_container(client, ns_headers, "quick", ["true"])
    for _ in range(8):
        created = await client.post("/tasks", json={"container_id": "quick"}, headers=ns_headers)
        assert created.status_code == 201, created.text
        started = await client.post("/tasks/quick/start", headers=ns_headers)
        assert started.status_code == 200, started.text
        exit_ = (await client.post("/tasks/quick/wait", headers=ns_headers)).json()
        started_at = datetime.fromisoformat(started.json()["started_at"])
        exited_at = datetime.fromisoformat(exit_["exited_at"])
        assert exited_at >= started_at, (started_at, exited_at)


async def test_an_oom_kill_is_published_once_across_restarts(
    tmp_path: Path, busybox_tar: Path, namespace: str, ns_headers: dict[str, str]
) -> None:
    doubling = "x=a; while true; do x=$x$x; done"
    async with daemon_in(tmp_path) as daemon:
        client = await daemon.start()
        await import_busybox(client, busybox_tar, ns_headers)
        await make_container(client, ns_headers, "survivor", ["sh", "-c", f"sh -c '{doubling}'; sleep 1000"],
                             linux={"resources": {"memory": {"limit": 32 * 1024 * 1024}}})
        await run_task(client, ns_headers, "survivor")

        async def ooms() -> list[dict[str, Any]]:
            assert daemon.client is not None
            return [e for e in await history(daemon.client, namespace) if e["topic"] == "/tasks/oom"]

        async def one_oom() -> bool:
            return len(await ooms()) == 1

        async def polled_thrice() -> bool:
            assert daemon.client is not None
            return await monitor_polls(daemon.client) >= 3

        await wait_for(one_oom, "the OOM kill is published", within=30)
        for how in (signal.SIGTERM, signal.SIGKILL):
            client = await daemon.restart(how)
            # A republished kill would come from the new daemon's monitor: at its watch or a poll.
            await wait_for(polled_thrice, "the restarted monitor has polled thrice", 30)
            assert len(await ooms()) == 1, f"after a restart ({how.name}) the old kill was published again"
        deleted = await client.delete("/tasks/survivor", headers=ns_headers)
        assert deleted.status_code == 200, deleted.text
        assert deleted.json()["oom_killed"] is True
        await wait_for(lambda: no_tasks(client, ns_headers), "the task is torn down", 20)
        await daemon.stop(signal.SIGTERM)
        assert leftovers(daemon.settings) == {}


CONTROL_FILE_NAMES = ["tasks", "cgroup.procs", "notify_on_release", "release_agent", "memory.limit_in_bytes"]


@pytest.mark.parametrize("space", ["tasks", "memory.limit_in_bytes"])
async def test_ids_named_like_cgroup_control_files(
    runtime_client: httpx.AsyncClient, busybox_tar: Path, space: str
) -> None:
    """Namespaces and ids that name cgroup control files run like any other."""
    client, headers = runtime_client, {"Cargohold-Namespace": space}
    await import_busybox(client, busybox_tar, headers)
    for task_id in CONTROL_FILE_NAMES:
        await make_container(client, headers, task_id, LONG)
        task = await run_task(client, headers, task_id)
        assert task["status"] == "running"
        figures = await client.get(f"/tasks/{task_id}/metrics", headers=headers)
        # Read from its own cgroup (a wrong path has no figures); right after the start
        # runc's init threads may still be counted.
        assert figures.status_code == 200 and figures.json()["pids_current"] >= 1, figures.text
        pids = (await client.get(f"/tasks/{task_id}/pids", headers=headers)).json()["pids"]
        assert pids == [task["pid"]]
    for task_id in CONTROL_FILE_NAMES:
        deleted = await client.delete(f"/tasks/{task_id}", headers=headers)
        assert deleted.status_code == 200 and deleted.json()["exit_status"] == 137, deleted.text


def test_cgroup_names_never_name_a_control_file() -> None:
    """Every control file of this host's cgroups that is a valid identifier is escaped, the
    escape is unambiguous (identifiers never begin with `_`), other names are kept."""
    files = {entry.name for hierarchy in hierarchies() for entry in hierarchy.iterdir() if entry.is_file()}
    assert {"tasks", "cgroup.procs", "notify_on_release"} & files, files
    for name in files:
        if identifier_problem(name) is None:
            assert cgroup_name(name) not in files and cgroup_name(name) == f"_{name}"
    assert cgroup_name("web") == "web" and cgroup_name("web-1_a") == "web-1_a"
    assert cgroup_name("web.1") == "_web.1"
    assert task_cgroup("/cargohold/k", "tasks", "cgroup.procs") == "/cargohold/k/_tasks/_cgroup.procs"


def cgroup_of(state: Path, *names: str) -> Path:
    """`names` below the daemon's cgroup parent in the memory hierarchy (v1 on this host)."""
    memory = next(h for h in hierarchies() if h.name == "memory")
    return memory / daemon_cgroup_parent(state).lstrip("/") / "/".join(names)


async def test_start_up_sweep_spares_another_daemons_cgroups(
    tmp_path: Path, busybox_tar: Path, namespace: str, ns_headers: dict[str, str]
) -> None:
    """Two daemons (other --state) on one host, the same namespace and id running in each.
    One's start-up sweep removes the cgroups no task of its own owns, and none of the other's."""
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    async with daemon_in(tmp_path / "a") as first, daemon_in(tmp_path / "b") as second:
        tasks: dict[str, dict[str, Any]] = {}
        for daemon in (first, second):
            client = await daemon.start()
            await import_busybox(client, busybox_tar, ns_headers)
            await make_container(client, ns_headers, "web", LONG)
            tasks[daemon.base.name] = await run_task(client, ns_headers, "web")
        assert cgroup_of(first.state, namespace, "web") != cgroup_of(second.state, namespace, "web")
        # Empty cgroups, as each daemon's are for a moment during a create.
        theirs = cgroup_of(second.state, namespace, "creating")
        ours = cgroup_of(first.state, namespace, "ghost")
        for group in (theirs, ours):
            group.mkdir()

        await first.restart(signal.SIGKILL)
        assert not ours.exists(), "the sweep left a cgroup of its own daemon that no task owns"
        assert theirs.exists(), "the sweep removed another daemon's cgroup"
        assert all(alive(task["pid"]) for task in tasks.values())
        await second.restart(signal.SIGTERM)
        assert not theirs.exists()

        for daemon in (first, second):
            live = daemon.client
            assert live is not None
            deleted = await live.delete("/tasks/web", headers=ns_headers)
            assert deleted.status_code == 200 and deleted.json()["exit_status"] == 137, deleted.text
            await wait_for(partial(no_tasks, live, ns_headers), "the task is torn down", 20)
            await daemon.stop(signal.SIGTERM)
            assert leftovers(daemon.settings) == {}
        with suppress(OSError):
            theirs.rmdir()

