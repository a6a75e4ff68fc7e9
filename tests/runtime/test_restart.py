"""Restart: tasks outlive the daemon, exits that happened while it was down are published
once with their true status, and what no task owns is cleaned up (DESIGN: Tasks, "Restart").

The daemon runs as a real subprocess (`cargohold serve`) so it can be stopped with SIGTERM
or killed with SIGKILL; the client talks to it over its unix socket. Every test ends with
nothing left behind (no conmon, runc state, cgroup, mount or task dir) and stops, in a
`finally`, every process it started, scrubbing whatever a failure left so the next test
starts clean.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import tarfile
from collections.abc import Callable
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.runtime.cgroups import daemon_cgroup_parent
from app.runtime.defaults import with_defaults
from app.snapshots.mounts import mount_points_under
from tests.conftest import leftovers, wait_for
from tests.runtime.conftest import history, import_busybox, make_container
from tests.runtime.daemon import STOP_SECONDS, DaemonProcess, conmon_pid_of, daemon_in, runc_ids
from tests.runtime.tasks import LONG, alive, no_tasks, run_exec, run_task, topics_for, wait_status

pytestmark = [pytest.mark.anyio, pytest.mark.runtime]
# The teardowns these tests wait for follow a daemon start: allow a loaded machine its time.
SETTLE_SECONDS = 20.0

# Exits 3 on SIGTERM (as pid 1 of its pid namespace, a shell without a trap ignores it).
TRAPS_TERM = ["sh", "-c", "trap 'exit 3' TERM; echo ready; sleep 1000 & wait"]


STOPS = [pytest.param(signal.SIGTERM, id="sigterm"), pytest.param(signal.SIGKILL, id="kill-9")]


# --- 1. tasks keep running across a restart ---------------------------------------------


@pytest.mark.parametrize("how", STOPS)
async def test_tasks_survive_and_are_readopted(
    tmp_path: Path, busybox_tar: Path, namespace: str, ns_headers: dict[str, str], how: signal.Signals
) -> None:
    async with daemon_in(tmp_path) as daemon:
        client = await daemon.start()
        await import_busybox(client, busybox_tar, ns_headers)
        await make_container(client, ns_headers, "term", TRAPS_TERM)
        await make_container(client, ns_headers, "host", LONG)
        term = await run_task(client, ns_headers, "term")
        host = await run_task(client, ns_headers, "host")
        before = await run_exec(client, ns_headers, "host", "before", LONG)
        conmons = {
            "term": conmon_pid_of(daemon, namespace, "term"),
            "host": conmon_pid_of(daemon, namespace, "host"),
            "before": conmon_pid_of(daemon, namespace, "host", "before"),
        }
        pids = {"term": term["pid"], "host": host["pid"], "before": before["pid"]}

        await daemon.stop(how)
        # What must not happen (a death) has no event to wait for: a process killed with
        # its daemon is gone well within this grace period, and the restart below checks
        # again through the runtime.
        await asyncio.sleep(0.5)
        for name, pid in pids.items():
            assert alive(pid), f"{name}'s process {pid} died with the daemon ({how.name})"
        for name, pid in conmons.items():
            assert alive(pid), f"{name}'s conmon {pid} died with the daemon ({how.name})"

        client = await daemon.start()
        listed = {task["id"]: task for task in (await client.get("/tasks", headers=ns_headers)).json()["tasks"]}
        assert sorted(listed) == ["host", "term"]
        assert listed["term"]["pid"] == pids["term"] and listed["term"]["status"] == "running"
        assert listed["host"]["pid"] == pids["host"] and listed["host"]["status"] == "running"
        assert [(p["exec_id"], p["pid"], p["status"]) for p in listed["host"]["processes"]] == [
            ("before", pids["before"], "running")
        ]
        pids_of_host = (await client.get("/tasks/host/pids", headers=ns_headers)).json()["pids"]
        assert pids["host"] in pids_of_host and pids["before"] in pids_of_host
        logs = (await client.get("/tasks/term/logs", headers=ns_headers)).text.splitlines()
        assert [json.loads(line)["line"] for line in logs] == ["ready"]
        metrics = await client.get("/tasks/host/metrics", headers=ns_headers)
        assert metrics.status_code == 200 and metrics.json()["pids_current"] >= 2, metrics.text

        # A new exec into a re-adopted task, waited on with its true status.
        await run_exec(client, ns_headers, "host", "after", ["sh", "-c", "exit 5"])
        assert await wait_status(client, ns_headers, "/tasks/host/processes/after") == 5
        # The exec that was running across the restart: killed and waited on.
        killed = await client.post("/tasks/host/processes/before/kill", json={"signal": "SIGKILL"}, headers=ns_headers)
        assert killed.status_code == 204, killed.text
        assert await wait_status(client, ns_headers, "/tasks/host/processes/before") == 137

        # The tasks: killed through the runtime and waited on, with their true statuses.
        waits = [
            asyncio.ensure_future(wait_status(client, ns_headers, "/tasks/term")),
            asyncio.ensure_future(wait_status(client, ns_headers, "/tasks/host")),
        ]
        # Meant to have the waits pending before the kills; either order must (and does)
        # answer the same, so this pause only picks the more interesting one.
        await asyncio.sleep(0.1)
        for task_id, sig in (("term", "SIGTERM"), ("host", "SIGKILL")):
            response = await client.post(f"/tasks/{task_id}/kill", json={"signal": sig}, headers=ns_headers)
            assert response.status_code == 204, response.text
        assert await asyncio.gather(*waits) == [3, 137]
        await wait_for(lambda: no_tasks(client, ns_headers), "the exited tasks are torn down", SETTLE_SECONDS)

        events = await history(client, namespace)
        for task_id, status in (("term", 3), ("host", 137)):
            exits = topics_for(events, "/tasks/exit", task_id)
            assert [e["exit_status"] for e in exits] == [status], exits
            deletes = topics_for(events, "/tasks/delete", task_id)
            assert [e["exit_status"] for e in deletes] == [status], deletes
        for exec_id, status in (("before", 137), ("after", 5)):
            exits = topics_for(events, "/tasks/exit", "host", exec_id)
            assert [e["exit_status"] for e in exits] == [status], exits
        for name, pid in {**pids, **conmons}.items():
            assert not alive(pid), f"{name} ({pid}) is still alive"

        await daemon.stop(signal.SIGTERM)
        assert leftovers(daemon.settings) == {}


# --- 2. an exit while the daemon is down ------------------------------------------------


@pytest.mark.parametrize("how", STOPS)
async def test_exit_while_down_is_published_once_with_its_status(
    tmp_path: Path, busybox_tar: Path, namespace: str, ns_headers: dict[str, str], how: signal.Signals
) -> None:
    async with daemon_in(tmp_path) as daemon:
        client = await daemon.start()
        await import_busybox(client, busybox_tar, ns_headers)
        await make_container(client, ns_headers, "brief", ["sh", "-c", "sleep 1; exit 42"])
        task = await run_task(client, ns_headers, "brief")
        conmon = conmon_pid_of(daemon, namespace, "brief")
        exit_file = daemon.state / "tasks" / namespace / "brief" / "exit" / f"{namespace}+brief"

        await daemon.stop(how)
        await wait_for(lambda: not alive(task["pid"]) and not alive(conmon), "the task ends while the daemon is down")
        assert exit_file.read_text().strip() == "42", "conmon wrote the status"

        client = await daemon.start()
        assert await wait_status(client, ns_headers, "/tasks/brief") == 42
        await wait_for(lambda: no_tasks(client, ns_headers), "the exited task is torn down", SETTLE_SECONDS)

        def check(events: list[dict[str, Any]]) -> None:
            exits = topics_for(events, "/tasks/exit", "brief")
            assert [(e["exit_status"], e["pid"]) for e in exits] == [(42, task["pid"])], exits
            deletes = topics_for(events, "/tasks/delete", "brief")
            assert [e["exit_status"] for e in deletes] == [42], deletes

        check(await history(client, namespace))
        assert leftovers(daemon.settings) == {}

        # Once more: nothing is published twice, the exit is still answered.
        client = await daemon.restart(how)
        # A /tasks/exit is only ever recorded for a task row (`record_exit` marks it exited);
        # recovery reads the rows before the daemon answers, and every exit it handles ends
        # with the row deleted. So once no task is listed, any second exit, however slow the
        # daemon, has been published, and the history below is final.
        await wait_for(lambda: no_tasks(client, ns_headers), "any re-adopted task is torn down", SETTLE_SECONDS)
        check(await history(client, namespace))
        assert await wait_status(client, ns_headers, "/tasks/brief") == 42
        await daemon.stop(signal.SIGTERM)
        assert leftovers(daemon.settings) == {}


async def test_exit_recorded_but_teardown_interrupted_is_finished(
    tmp_path: Path, busybox_tar: Path, namespace: str, ns_headers: dict[str, str]
) -> None:
    """A crash between `record_exit` and the teardown (the row is marked exited, the exit
    and /tasks/exit are stored): recovery tears down, publishes /tasks/delete, no second exit.
    The crash point is made by writing what `record_exit` writes, as it would have."""
    async with daemon_in(tmp_path) as daemon:
        client = await daemon.start()
        await import_busybox(client, busybox_tar, ns_headers)
        await make_container(client, ns_headers, "half", ["sh", "-c", "sleep 1; exit 42"])
        task = await run_task(client, ns_headers, "half")
        conmon = conmon_pid_of(daemon, namespace, "half")
        await daemon.stop(signal.SIGKILL)
        await wait_for(lambda: not alive(task["pid"]) and not alive(conmon), "the task ends while the daemon is down")
        exited_at = datetime.now(UTC).isoformat()
        with sqlite3.connect(daemon.root / "metadata.db") as db:
            db.execute("UPDATE tasks SET exited = 1 WHERE namespace = ? AND id = ?", (namespace, "half"))
            db.execute(
                "INSERT INTO exits (namespace, id, exec_id, pid, exit_status, exited_at, oom_killed)"
                " VALUES (?, ?, '', ?, 42, ?, 0)", (namespace, "half", task["pid"], exited_at),
            )
            payload = {"container_id": "half", "id": "half", "pid": task["pid"], "exit_status": 42,
                       "exited_at": exited_at, "oom_killed": False}
            db.execute("INSERT INTO events (timestamp, namespace, topic, payload) VALUES (?, ?, '/tasks/exit', ?)",
                       (exited_at, namespace, json.dumps(payload)))
        db.close()

        client = await daemon.start()
        assert await no_tasks(client, ns_headers)
        assert await wait_status(client, ns_headers, "/tasks/half") == 42
        events = await history(client, namespace)
        assert [e["exit_status"] for e in topics_for(events, "/tasks/exit", "half")] == [42]
        assert [e["exit_status"] for e in topics_for(events, "/tasks/delete", "half")] == [42]
        await daemon.stop(signal.SIGTERM)
        assert leftovers(daemon.settings) == {}


# --- 3. what no task owns is removed on start --------------------------------------------


def plant_stray_runc(daemon: DaemonProcess, busybox_tar: Path, namespace: str) -> int:
    """A running runc container in the daemon's private runc root that no task row knows,
    in a cgroup where a task's would be. Returns its init pid."""
    bundle = daemon.base / "stray-bundle"
    rootfs = bundle / "rootfs"
    rootfs.mkdir(parents=True)
    with tarfile.open(busybox_tar) as archive:
        archive.extractall(rootfs)
    config = with_defaults({"ociVersion": "1.0.2", "root": {"path": str(rootfs)}, "process": {"args": LONG}})
    config["linux"]["cgroupsPath"] = f"{daemon_cgroup_parent(daemon.state)}/{namespace}/strayrunc"
    (bundle / "config.json").write_text(json.dumps(config))
    runc = ["runc", f"--root={daemon.runc_root}"]
    pid_file = daemon.base / "stray.pid"
    errors = daemon.base / "stray-runc.err"
    for args in (["create", "--bundle", str(bundle), "--pid-file", str(pid_file), "strayrunc"], ["start", "strayrunc"]):
        # Not a pipe: the container's init inherits runc's stdio and would hold it open.
        with open(errors, "wb") as err:
            done = subprocess.run([*runc, *args], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                  timeout=30, check=False)
        assert done.returncode == 0, errors.read_text()
    assert "strayrunc" in runc_ids(daemon.runc_root)
    return int(pid_file.read_text())


def plant_orphan_task_dir(daemon: DaemonProcess, namespace: str) -> Path:
    """A task dir with a bind mount on its bundle's rootfs and no row (as a crash mid-create leaves)."""
    source = daemon.base / "orphan-source"
    source.mkdir()
    (source / "file").write_text("keep me")
    task_dir = daemon.state / "tasks" / namespace / "orphan"
    rootfs = task_dir / "bundle" / "rootfs"
    rootfs.mkdir(parents=True)
    (task_dir / "bundle" / "config.json").write_text("{}")
    subprocess.run(["mount", "--bind", str(source), str(rootfs)], check=True, timeout=30)
    assert rootfs in mount_points_under(daemon.state)
    return task_dir


def plant_ghost_cgroup(daemon: DaemonProcess, namespace: str) -> Path:
    ghost = Path("/sys/fs/cgroup/memory") / daemon_cgroup_parent(daemon.state).lstrip("/") / namespace / "ghost"
    ghost.mkdir(parents=True)
    return ghost


async def plant_stray_conmon(
    daemon: DaemonProcess, client: httpx.AsyncClient, namespace: str, headers: dict[str, str]
) -> tuple[int, int]:
    """A real running task whose row is deleted while the daemon is down (the caller kills
    the daemon first). Returns (its pid, its conmon's pid)."""
    await make_container(client, headers, "victim", LONG)
    task = await run_task(client, headers, "victim")
    return task["pid"], conmon_pid_of(daemon, namespace, "victim")


DEBRIS = ["stray-runc", "orphan-dir", "ghost-cgroup", "stray-conmon"]


@pytest.mark.parametrize("kinds", [*([kind] for kind in DEBRIS), DEBRIS], ids=[*DEBRIS, "all"])
async def test_start_removes_what_no_task_owns(
    tmp_path: Path, busybox_tar: Path, namespace: str, ns_headers: dict[str, str], kinds: list[str]
) -> None:
    async with daemon_in(tmp_path) as daemon:
        client = await daemon.start()
        await import_busybox(client, busybox_tar, ns_headers)
        must_die: dict[str, int] = {}
        if "stray-conmon" in kinds:
            must_die["victim"], must_die["victim's conmon"] = await plant_stray_conmon(
                daemon, client, namespace, ns_headers
            )
        await daemon.stop(signal.SIGKILL)
        if "stray-conmon" in kinds:
            with sqlite3.connect(daemon.root / "metadata.db") as db:
                db.execute("DELETE FROM tasks WHERE namespace = ? AND id = ?", (namespace, "victim"))
            db.close()
        if "stray-runc" in kinds:
            must_die["stray runc container"] = plant_stray_runc(daemon, busybox_tar, namespace)
        if "orphan-dir" in kinds:
            orphan = plant_orphan_task_dir(daemon, namespace)
        if "ghost-cgroup" in kinds:
            plant_ghost_cgroup(daemon, namespace)
        for name, pid in must_die.items():
            assert alive(pid), name

        client = await daemon.start()
        assert await no_tasks(client, ns_headers)
        # Killed during the start; gone once reaped.
        await wait_for(lambda: not any(alive(pid) for pid in must_die.values()), f"these are killed: {must_die}")
        if "orphan-dir" in kinds:
            assert not orphan.exists()
            assert (daemon.base / "orphan-source" / "file").read_text() == "keep me", "unmounted before removal"
        left = leftovers(daemon.settings)
        await daemon.stop(signal.SIGTERM)
        assert left == {}
        assert leftovers(daemon.settings) == {}


# --- 4. killed in the middle of a create ------------------------------------------------


def mounted_under(path: Path) -> bool:
    return bool(path.exists() and mount_points_under(path))


CREATE_POINTS: dict[str, Callable[[Path, Path], bool]] = {
    "bundle-written": lambda task_dir, runc_root: (task_dir / "bundle" / "config.json").exists(),
    "rootfs-mounted": lambda task_dir, runc_root: mounted_under(task_dir / "bundle"),
    "conmon-started": lambda task_dir, runc_root: (task_dir / "conmon.pid").exists(),
    # Whatever id the daemon gives runc for it (the container id, or one qualified by namespace).
    "runc-state": lambda task_dir, runc_root: runc_root.is_dir() and any(
        (entry / "state.json").exists() for entry in runc_root.iterdir() if "midway" in entry.name
    ),
}


@pytest.mark.parametrize("point", list(CREATE_POINTS))
async def test_killed_during_create(
    tmp_path: Path, busybox_tar: Path, namespace: str, ns_headers: dict[str, str], point: str
) -> None:
    """Killed -9 as soon as a create has reached `point`: after restart the task either
    exists (and can be deleted) or left nothing behind."""
    reached = CREATE_POINTS[point]
    async with daemon_in(tmp_path) as daemon:
        client = await daemon.start()
        await import_busybox(client, busybox_tar, ns_headers)
        await make_container(client, ns_headers, "midway", LONG)
        task_dir = daemon.state / "tasks" / namespace / "midway"
        request = asyncio.ensure_future(client.post("/tasks", json={"container_id": "midway"}, headers=ns_headers))
        while True:  # as tight as the loop allows: the whole create takes some 50 ms
            if reached(task_dir, daemon.runc_root) or request.done():
                break
            await asyncio.sleep(0)
        hit = not request.done()
        await daemon.stop(signal.SIGKILL)
        with suppress(httpx.TransportError):
            await request
        client = await daemon.start()
        listed = (await client.get("/tasks", headers=ns_headers)).json()["tasks"]
        for task in listed:
            deleted = await client.delete(f"/tasks/{task['id']}", headers=ns_headers)
            assert deleted.status_code == 200, deleted.text
        await wait_for(lambda: no_tasks(client, ns_headers), "the task is deleted", SETTLE_SECONDS)
        print(f"killed at {point}: reply pending {hit}, task listed after restart {bool(listed)}")
        left = leftovers(daemon.settings)
        await daemon.stop(signal.SIGTERM)
        assert left == {}, f"killed at {point} (reached before the reply: {hit}); task listed: {bool(listed)}"
        assert leftovers(daemon.settings) == {}


# --- more restart cases ------------------------------------------------------------------


async def test_created_and_paused_tasks_keep_their_state(
    tmp_path: Path, busybox_tar: Path, namespace: str, ns_headers: dict[str, str]
) -> None:
    """A created (not started) task and a paused one are re-adopted as they were and can
    still be started / resumed."""
    async with daemon_in(tmp_path) as daemon:
        client = await daemon.start()
        await import_busybox(client, busybox_tar, ns_headers)
        await make_container(client, ns_headers, "fresh", ["sh", "-c", "exit 9"])
        await make_container(client, ns_headers, "frozen", LONG)
        created = await client.post("/tasks", json={"container_id": "fresh"}, headers=ns_headers)
        assert created.status_code == 201, created.text
        frozen = await run_task(client, ns_headers, "frozen")
        paused = await client.post("/tasks/frozen/pause", headers=ns_headers)
        assert paused.status_code == 200, paused.text

        client = await daemon.restart(signal.SIGKILL)
        tasks = (await client.get("/tasks", headers=ns_headers)).json()["tasks"]
        listed = {task["id"]: task["status"] for task in tasks}
        assert listed == {"fresh": "created", "frozen": "paused"}
        started = await client.post("/tasks/fresh/start", headers=ns_headers)
        assert started.status_code == 200, started.text
        assert await wait_status(client, ns_headers, "/tasks/fresh") == 9
        resumed = await client.post("/tasks/frozen/resume", headers=ns_headers)
        assert resumed.status_code == 200, resumed.text
        assert alive(frozen["pid"])
        deleted = await client.delete("/tasks/frozen", headers=ns_headers)
        assert deleted.status_code == 200, deleted.text
        assert deleted.json()["exit_status"] == 137
        await wait_for(lambda: no_tasks(client, ns_headers), "the tasks are torn down", SETTLE_SECONDS)
        events = await history(client, namespace)
        for task_id, status in (("fresh", 9), ("frozen", 137)):
            assert [e["exit_status"] for e in topics_for(events, "/tasks/exit", task_id)] == [status]
            assert [e["exit_status"] for e in topics_for(events, "/tasks/delete", task_id)] == [status]
        await daemon.stop(signal.SIGTERM)
        assert leftovers(daemon.settings) == {}


async def test_exec_that_ends_while_down_is_collected(
    tmp_path: Path, busybox_tar: Path, namespace: str, ns_headers: dict[str, str]
) -> None:
    async with daemon_in(tmp_path) as daemon:
        client = await daemon.start()
        await import_busybox(client, busybox_tar, ns_headers)
        await make_container(client, ns_headers, "host", LONG)
        await run_task(client, ns_headers, "host")
        process = await run_exec(client, ns_headers, "host", "brief", ["sh", "-c", "sleep 1; exit 7"])
        conmon = conmon_pid_of(daemon, namespace, "host", "brief")
        await daemon.stop(signal.SIGKILL)
        await wait_for(
            lambda: not alive(process["pid"]) and not alive(conmon), "the exec ends while the daemon is down"
        )

        client = await daemon.start()
        assert await wait_status(client, ns_headers, "/tasks/host/processes/brief") == 7
        task = (await client.get("/tasks/host", headers=ns_headers)).json()
        assert task["status"] == "running" and task["processes"] == []
        client = await daemon.restart(signal.SIGKILL)
        deleted = await client.delete("/tasks/host", headers=ns_headers)
        assert deleted.status_code == 200, deleted.text
        events = await history(client, namespace)
        assert [e["exit_status"] for e in topics_for(events, "/tasks/exit", "host", "brief")] == [7]
        assert [e["exit_status"] for e in topics_for(events, "/tasks/exit", "host")] == [137]
        await wait_for(lambda: no_tasks(client, ns_headers), "the task is torn down", SETTLE_SECONDS)
        await daemon.stop(signal.SIGTERM)
        assert leftovers(daemon.settings) == {}


async def test_cleanup_spares_the_same_id_in_another_namespace(
    tmp_path: Path, busybox_tar: Path, namespace: str, ns_headers: dict[str, str]
) -> None:
    """A half-made task dir `<other>/web` (a crash right after its bundle was written) is
    removed on start; the live task `<namespace>/web` must survive that cleanup."""
    other = f"{namespace}-b"
    async with daemon_in(tmp_path) as daemon:
        client = await daemon.start()
        await import_busybox(client, busybox_tar, ns_headers)
        await make_container(client, ns_headers, "web", LONG)
        task = await run_task(client, ns_headers, "web")
        conmon = conmon_pid_of(daemon, namespace, "web")
        await daemon.stop(signal.SIGKILL)
        half = daemon.state / "tasks" / other / "web" / "bundle"
        (half / "rootfs").mkdir(parents=True)
        (half / "config.json").write_text("{}")

        client = await daemon.start()
        assert not half.exists()
        # A negative (the cleanup must not kill it) has no event to wait for: a SIGKILL
        # sent during the start would have taken effect well within this grace period.
        await asyncio.sleep(0.5)
        survived = {"task": alive(task["pid"]), "conmon": alive(conmon)}
        listed = [t["id"] for t in (await client.get("/tasks", headers=ns_headers)).json()["tasks"]]
        events = await history(client, namespace)
        exits = topics_for(events, "/tasks/exit", "web")
        assert survived == {"task": True, "conmon": True}, f"cleaning {other}/web killed {namespace}/web: {exits}"
        assert listed == ["web"] and exits == []
        deleted = await client.delete("/tasks/web", headers=ns_headers)
        assert deleted.status_code == 200 and deleted.json()["exit_status"] == 137, deleted.text
        await wait_for(lambda: no_tasks(client, ns_headers), "the task is torn down", SETTLE_SECONDS)
        await daemon.stop(signal.SIGTERM)
        assert leftovers(daemon.settings) == {}


async def test_same_id_in_two_namespaces(
    tmp_path: Path, busybox_tar: Path, namespace: str, ns_headers: dict[str, str]
) -> None:
    """The root of the cleanup case above, without a restart: objects in one namespace are
    invisible from another (DESIGN: Namespaces), so `<other>/web` can run beside
    `<namespace>/web`; at the least, failing to create it must not kill `<namespace>/web`."""
    other = f"{namespace}-b"
    other_headers = {"Cargohold-Namespace": other}
    async with daemon_in(tmp_path) as daemon:
        client = await daemon.start()
        for headers in (ns_headers, other_headers):
            await import_busybox(client, busybox_tar, headers)
            await make_container(client, headers, "web", LONG)
        first = await run_task(client, ns_headers, "web")
        second = await client.post("/tasks", json={"container_id": "web"}, headers=other_headers)
        # A negative (the second create must not kill the first task): a grace period.
        await asyncio.sleep(0.5)
        first_alive = alive(first["pid"])
        still_listed = [t["id"] for t in (await client.get("/tasks", headers=ns_headers)).json()["tasks"]]
        for headers in (ns_headers, other_headers):
            for task in (await client.get("/tasks", headers=headers)).json()["tasks"]:
                await client.delete(f"/tasks/{task['id']}", headers=headers)
        await wait_for(lambda: no_tasks(client, ns_headers), "the tasks are torn down", SETTLE_SECONDS)
        await wait_for(lambda: no_tasks(client, other_headers), "the tasks are torn down", SETTLE_SECONDS)
        await daemon.stop(signal.SIGTERM)
        assert leftovers(daemon.settings) == {}
        assert first_alive and still_listed == ["web"], f"creating {other}/web ({second.status_code}: " \
            f"{second.text}) killed {namespace}/web"
        assert second.status_code == 201, second.text


async def test_sigterm_with_a_pending_wait(
    tmp_path: Path, busybox_tar: Path, namespace: str, ns_headers: dict[str, str]
) -> None:
    """A client long-polling `wait` does not keep the daemon from stopping, nor is it told
    the task exited: the task keeps running and the next daemon re-adopts it."""
    async with daemon_in(tmp_path) as daemon:
        client = await daemon.start()
        await import_busybox(client, busybox_tar, ns_headers)
        await make_container(client, ns_headers, "web", LONG)
        task = await run_task(client, ns_headers, "web")
        pending = asyncio.ensure_future(client.post("/tasks/web/wait", headers=ns_headers))
        # Time for the wait to reach the daemon: a long poll has nothing to observe while
        # it is pending (a wait that arrived late would only make this test weaker).
        await asyncio.sleep(0.2)
        began = asyncio.get_running_loop().time()
        assert daemon.process is not None
        os.kill(daemon.process.pid, signal.SIGTERM)
        try:
            answer: Any = await asyncio.wait_for(pending, STOP_SECONDS)
        except Exception as error:  # a transport error (the daemon went away) is a fine outcome
            answer = error
        await daemon.stop(signal.SIGTERM)
        took = asyncio.get_running_loop().time() - began
        print(f"SIGTERM with a pending wait: stopped in {took:.1f} s; the waiter got {answer!r}")
        assert alive(task["pid"])
        if isinstance(answer, httpx.Response):
            assert answer.status_code != 200, f"a wait answered {answer.text} though the task still runs"
        client = await daemon.start()
        assert [t["id"] for t in (await client.get("/tasks", headers=ns_headers)).json()["tasks"]] == ["web"]
        deleted = await client.delete("/tasks/web", headers=ns_headers)
        assert deleted.status_code == 200, deleted.text
        await wait_for(lambda: no_tasks(client, ns_headers), "the task is torn down", SETTLE_SECONDS)
        await daemon.stop(signal.SIGTERM)
        assert leftovers(daemon.settings) == {}
        problems = []
        if took >= 5:
            problems.append(f"a pending wait held the daemon's stop for {took:.1f} s")
        if isinstance(answer, httpx.Response) and answer.status_code == 500:
            problems.append(f"the waiter was answered 500: {answer.text}")
        assert problems == []
