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
import sys
import tarfile
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.config import Settings
from app.runtime.cgroups import daemon_cgroup_parent, hierarchies
from app.runtime.defaults import with_defaults
from app.snapshots.mounts import mount_points_under, unmount
from tests.conftest import BASE_URL
from tests.runtime.conftest import (
    conmon_pids_under,
    history,
    import_busybox,
    leftovers,
    make_container,
    require_runtime,
)

pytestmark = pytest.mark.anyio

CARGOHOLD = Path(sys.executable).parent / "cargohold"
READY_SECONDS = 30.0
STOP_SECONDS = 20.0
LONG = ["sleep", "1000"]
# Exits 3 on SIGTERM (as pid 1 of its pid namespace, a shell without a trap ignores it).
TRAPS_TERM = ["sh", "-c", "trap 'exit 3' TERM; echo ready; sleep 1000 & wait"]


# --- the daemon as a subprocess ----------------------------------------------------------


class DaemonProcess:
    """`cargohold serve` on `<state>/s.sock`, started and stopped (SIGTERM or SIGKILL) at will."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.root = base / "root"
        self.state = base / "state"
        self.socket = self.state / "s.sock"
        self.process: asyncio.subprocess.Process | None = None
        self.client: httpx.AsyncClient | None = None
        self.starts = 0

    @property
    def settings(self) -> Settings:
        return Settings(root=self.root, state=self.state, listeners=())

    @property
    def runc_root(self) -> Path:
        return self.state / "runtimes" / "runc"

    @property
    def log(self) -> Path:
        return self.base / f"daemon-{self.starts}.log"

    def logs(self) -> str:
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')[-6000:]}"
            for path in sorted(self.base.glob("daemon-*.log"))
        )

    async def start(self) -> httpx.AsyncClient:
        assert self.process is None, "the daemon is running already"
        self.starts += 1
        with open(self.log, "wb") as log:
            self.process = await asyncio.create_subprocess_exec(
                str(CARGOHOLD), "serve", "--root", str(self.root), "--state", str(self.state),
                "--listen", f"unix://{self.socket}", "--log-level", "info",
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        client = httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=str(self.socket)), base_url=BASE_URL, timeout=60
        )
        self.client = client
        deadline = asyncio.get_running_loop().time() + READY_SECONDS
        while True:
            if self.process.returncode is not None:
                raise AssertionError(f"the daemon exited with {self.process.returncode}:\n{self.logs()}")
            with suppress(httpx.TransportError):
                if (await client.get("/healthz")).status_code == 200:
                    return client
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"the daemon did not answer within {READY_SECONDS} s:\n{self.logs()}")
            await asyncio.sleep(0.05)

    async def stop(self, how: signal.Signals) -> None:
        """SIGTERM (graceful: must exit 0) or SIGKILL (a crash)."""
        assert self.process is not None
        process, self.process = self.process, None
        if self.client is not None:
            await self.client.aclose()
            self.client = None
        with suppress(ProcessLookupError):
            os.kill(process.pid, how)
        code = await asyncio.wait_for(process.wait(), STOP_SECONDS)
        if how is signal.SIGTERM:
            # uvicorn re-raises the SIGTERM it caught once it has shut down: -15 is a clean exit.
            assert code in (0, -signal.SIGTERM), f"SIGTERM: the daemon exited with {code}:\n{self.logs()}"
            # uvicorn's words for a finished shutdown (the lifespan's own, when uvicorn runs it).
            text = self.log.read_text()
            assert "Application shutdown complete" in text or "Finished server process" in text, self.logs()

    async def restart(self, how: signal.Signals) -> httpx.AsyncClient:
        await self.stop(how)
        return await self.start()

    async def kill_if_running(self) -> None:
        if self.process is not None:
            with suppress(Exception):
                await self.stop(signal.SIGKILL)


@asynccontextmanager
async def daemon_in(base: Path, namespace: str) -> AsyncIterator[DaemonProcess]:
    """A daemon process for one test; afterwards it is killed and its debris scrubbed."""
    require_runtime()
    daemon = DaemonProcess(base)
    try:
        yield daemon
    finally:
        await daemon.kill_if_running()
        scrub(daemon, namespace)


def scrub(daemon: DaemonProcess, namespace: str) -> None:
    """Remove by force whatever a (failed) test left: conmon, containers, mounts, cgroups."""
    for pid in conmon_pids_under(daemon.state):
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for container_id in runc_ids(daemon.runc_root):
        subprocess.run(["runc", f"--root={daemon.runc_root}", "delete", "--force", container_id],
                       capture_output=True, timeout=30, check=False)
    ours = sorted(cgroups_of({namespace, f"{namespace}-b"}), key=lambda p: len(p.parts), reverse=True)
    for path in ours:
        with suppress(OSError):
            for member in (path / "cgroup.procs").read_text().split():
                with suppress(ProcessLookupError):
                    os.kill(int(member), signal.SIGKILL)
    for path in ours:
        for _ in range(50):
            try:
                path.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:
                subprocess.run(["sleep", "0.1"], check=False)
    for point in mount_points_under(daemon.base):
        with suppress(OSError):
            unmount(point)


# --- looking at the host -----------------------------------------------------------------


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def runc_ids(runc_root: Path) -> list[str]:
    if not runc_root.is_dir():
        return []
    listed = subprocess.run(["runc", f"--root={runc_root}", "list", "--format", "json"],
                            capture_output=True, timeout=30, check=True)
    return [entry["id"] for entry in json.loads(listed.stdout or b"[]") or []]


def task_dirs(daemon: DaemonProcess) -> list[Path]:
    tasks = daemon.state / "tasks"
    return sorted(tasks.glob("*/*")) if tasks.is_dir() else []


def cgroups_of(namespaces: set[str]) -> list[Path]:
    """Every cgroup dir of these namespaces (`/cargohold/<daemon key>/<namespace>` and below,
    whichever daemon's), in every hierarchy. os.walk, unlike `leftover_cgroups()`'s rglob,
    shrugs off a directory that another daemon on this host removes during the walk."""
    found: list[Path] = []
    for hierarchy in hierarchies():
        for namespace in namespaces:
            for top in (hierarchy / "cargohold").glob(f"*/{namespace}"):
                found.extend(Path(path) for path, _, _ in os.walk(top))
    return found


def leftovers_of(settings: Settings, namespace: str) -> dict[str, Any]:
    """`leftovers(settings)` with its cgroups narrowed to `namespace` below this daemon's
    cgroup parent, found by os.walk: `leftover_cgroups()` fails when a cgroup is removed
    during its walk (then: look again)."""
    for attempt in range(20):
        try:
            left = leftovers(settings)
            break
        except FileNotFoundError:
            if attempt == 19:
                raise
    left.pop("cgroups", None)
    parent = daemon_cgroup_parent(settings.state) + "/"
    cgroups = [str(p) for p in cgroups_of({namespace}) if parent in str(p)]
    if cgroups:
        left["cgroups"] = cgroups
    return left


def everything_left(daemon: DaemonProcess, namespace: str) -> dict[str, Any]:
    """`leftovers()` (see `leftovers_of`) plus what it does not look at: mounts under the
    state dir (task rootfs mounts live there, not under the root) and runc states seen by
    `runc list`."""
    left = leftovers_of(daemon.settings, namespace)
    mounts = [str(p) for p in mount_points_under(daemon.state)] if daemon.state.exists() else []
    if mounts:
        left["mounts under state"] = mounts
    listed = runc_ids(daemon.runc_root)
    if listed:
        left["runc list"] = listed
    return left


async def ends(pid: int, within: float = 10.0) -> bool:
    """Whether process `pid` is gone within `within` seconds."""
    deadline = asyncio.get_running_loop().time() + within
    while alive(pid):
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def eventually(condition: Callable[[], Awaitable[bool]], what: str, within: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not await condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not within {within} s: {what}")
        await asyncio.sleep(0.05)


# --- the API -----------------------------------------------------------------------------


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


async def run_task(client: httpx.AsyncClient, headers: dict[str, str], container_id: str) -> dict[str, Any]:
    created = await client.post("/tasks", json={"container_id": container_id}, headers=headers)
    assert created.status_code == 201, created.text
    started = await client.post(f"/tasks/{container_id}/start", headers=headers)
    assert started.status_code == 200, started.text
    task: dict[str, Any] = started.json()
    return task


async def start_exec(client: httpx.AsyncClient, headers: dict[str, str], task_id: str, exec_id: str,
                     args: list[str]) -> dict[str, Any]:
    added = await client.post(f"/tasks/{task_id}/processes",
                              json={"exec_id": exec_id, "process": {"args": args}}, headers=headers)
    assert added.status_code == 201, added.text
    started = await client.post(f"/tasks/{task_id}/processes/{exec_id}/start", headers=headers)
    assert started.status_code == 200, started.text
    process: dict[str, Any] = started.json()
    return process


async def wait_status(client: httpx.AsyncClient, headers: dict[str, str], path: str) -> int:
    response = await client.post(f"{path}/wait", headers=headers)
    assert response.status_code == 200, response.text
    status: int = response.json()["exit_status"]
    return status


async def no_tasks(client: httpx.AsyncClient, headers: dict[str, str]) -> bool:
    response = await client.get("/tasks", headers=headers)
    return response.status_code == 200 and response.json()["tasks"] == []


def conmon_pid_of(daemon: DaemonProcess, namespace: str, task_id: str, exec_id: str | None = None) -> int:
    work_dir = daemon.state / "tasks" / namespace / task_id
    if exec_id:
        work_dir = work_dir / "execs" / exec_id
    return int((work_dir / "conmon.pid").read_text().strip())


STOPS = [pytest.param(signal.SIGTERM, id="sigterm"), pytest.param(signal.SIGKILL, id="kill-9")]


# --- 1. tasks keep running across a restart ---------------------------------------------


@pytest.mark.parametrize("how", STOPS)
async def test_tasks_survive_and_are_readopted(
    tmp_path: Path, busybox_tar: Path, namespace: str, ns_headers: dict[str, str], how: signal.Signals
) -> None:
    async with daemon_in(tmp_path, namespace) as daemon:
        client = await daemon.start()
        await import_busybox(client, busybox_tar, ns_headers)
        await make_container(client, ns_headers, "term", TRAPS_TERM)
        await make_container(client, ns_headers, "host", LONG)
        term = await run_task(client, ns_headers, "term")
        host = await run_task(client, ns_headers, "host")
        before = await start_exec(client, ns_headers, "host", "before", LONG)
        conmons = {
            "term": conmon_pid_of(daemon, namespace, "term"),
            "host": conmon_pid_of(daemon, namespace, "host"),
            "before": conmon_pid_of(daemon, namespace, "host", "before"),
        }
        pids = {"term": term["pid"], "host": host["pid"], "before": before["pid"]}

        await daemon.stop(how)
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
        await start_exec(client, ns_headers, "host", "after", ["sh", "-c", "exit 5"])
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
        await asyncio.sleep(0.1)  # the waits are pending before the kills
        for task_id, sig in (("term", "SIGTERM"), ("host", "SIGKILL")):
            response = await client.post(f"/tasks/{task_id}/kill", json={"signal": sig}, headers=ns_headers)
            assert response.status_code == 204, response.text
        assert await asyncio.gather(*waits) == [3, 137]
        await eventually(lambda: no_tasks(client, ns_headers), "the exited tasks are torn down")

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
        assert everything_left(daemon, namespace) == {}


# --- 2. an exit while the daemon is down ------------------------------------------------


@pytest.mark.parametrize("how", STOPS)
async def test_exit_while_down_is_published_once_with_its_status(
    tmp_path: Path, busybox_tar: Path, namespace: str, ns_headers: dict[str, str], how: signal.Signals
) -> None:
    async with daemon_in(tmp_path, namespace) as daemon:
        client = await daemon.start()
        await import_busybox(client, busybox_tar, ns_headers)
        await make_container(client, ns_headers, "brief", ["sh", "-c", "sleep 1; exit 42"])
        task = await run_task(client, ns_headers, "brief")
        conmon = conmon_pid_of(daemon, namespace, "brief")
        exit_file = daemon.state / "tasks" / namespace / "brief" / "exit" / f"{namespace}+brief"

        await daemon.stop(how)
        await asyncio.sleep(2)
        assert await ends(task["pid"]) and await ends(conmon), "the task should have ended while the daemon was down"
        assert exit_file.read_text().strip() == "42", "conmon wrote the status"

        client = await daemon.start()
        assert await wait_status(client, ns_headers, "/tasks/brief") == 42
        await eventually(lambda: no_tasks(client, ns_headers), "the exited task is torn down")

        def check(events: list[dict[str, Any]]) -> None:
            exits = topics_for(events, "/tasks/exit", "brief")
            assert [(e["exit_status"], e["pid"]) for e in exits] == [(42, task["pid"])], exits
            deletes = topics_for(events, "/tasks/delete", "brief")
            assert [e["exit_status"] for e in deletes] == [42], deletes

        check(await history(client, namespace))
        assert everything_left(daemon, namespace) == {}

        # Once more: nothing is published twice, the exit is still answered.
        client = await daemon.restart(how)
        await asyncio.sleep(0.5)  # any (wrong) second exit would be handled by now
        check(await history(client, namespace))
        assert await wait_status(client, ns_headers, "/tasks/brief") == 42
        await daemon.stop(signal.SIGTERM)
        assert everything_left(daemon, namespace) == {}


async def test_exit_recorded_but_teardown_interrupted_is_finished(
    tmp_path: Path, busybox_tar: Path, namespace: str, ns_headers: dict[str, str]
) -> None:
    """A crash between `record_exit` and the teardown (the row is marked exited, the exit
    and /tasks/exit are stored): recovery tears down, publishes /tasks/delete, no second exit.
    The crash point is made by writing what `record_exit` writes, as it would have."""
    async with daemon_in(tmp_path, namespace) as daemon:
        client = await daemon.start()
        await import_busybox(client, busybox_tar, ns_headers)
        await make_container(client, ns_headers, "half", ["sh", "-c", "sleep 1; exit 42"])
        task = await run_task(client, ns_headers, "half")
        await daemon.stop(signal.SIGKILL)
        await asyncio.sleep(2)
        assert await ends(task["pid"]) and await ends(conmon_pid_of(daemon, namespace, "half"))
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
        assert everything_left(daemon, namespace) == {}


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
    async with daemon_in(tmp_path, namespace) as daemon:
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
        await asyncio.sleep(0.2)
        for name, pid in must_die.items():
            assert not alive(pid), f"{name} ({pid}) is still running"
        if "orphan-dir" in kinds:
            assert not orphan.exists()
            assert (daemon.base / "orphan-source" / "file").read_text() == "keep me", "unmounted before removal"
        left = everything_left(daemon, namespace)
        await daemon.stop(signal.SIGTERM)
        assert left == {}
        assert everything_left(daemon, namespace) == {}


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
    async with daemon_in(tmp_path, namespace) as daemon:
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
        await eventually(lambda: no_tasks(client, ns_headers), "the task is deleted")
        print(f"killed at {point}: reply pending {hit}, task listed after restart {bool(listed)}")
        left = everything_left(daemon, namespace)
        await daemon.stop(signal.SIGTERM)
        assert left == {}, f"killed at {point} (reached before the reply: {hit}); task listed: {bool(listed)}"
        assert everything_left(daemon, namespace) == {}


# --- more restart cases ------------------------------------------------------------------


async def test_created_and_paused_tasks_keep_their_state(
    tmp_path: Path, busybox_tar: Path, namespace: str, ns_headers: dict[str, str]
) -> None:
    """A created (not started) task and a paused one are re-adopted as they were and can
    still be started / resumed."""
    async with daemon_in(tmp_path, namespace) as daemon:
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
        await eventually(lambda: no_tasks(client, ns_headers), "the tasks are torn down")
        events = await history(client, namespace)
        for task_id, status in (("fresh", 9), ("frozen", 137)):
            assert [e["exit_status"] for e in topics_for(events, "/tasks/exit", task_id)] == [status]
            assert [e["exit_status"] for e in topics_for(events, "/tasks/delete", task_id)] == [status]
        await daemon.stop(signal.SIGTERM)
        assert everything_left(daemon, namespace) == {}


async def test_exec_that_ends_while_down_is_collected(
    tmp_path: Path, busybox_tar: Path, namespace: str, ns_headers: dict[str, str]
) -> None:
    async with daemon_in(tmp_path, namespace) as daemon:
        client = await daemon.start()
        await import_busybox(client, busybox_tar, ns_headers)
        await make_container(client, ns_headers, "host", LONG)
        await run_task(client, ns_headers, "host")
        process = await start_exec(client, ns_headers, "host", "brief", ["sh", "-c", "sleep 1; exit 7"])
        await daemon.stop(signal.SIGKILL)
        await asyncio.sleep(2)
        assert await ends(process["pid"]) and await ends(conmon_pid_of(daemon, namespace, "host", "brief"))

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
        await eventually(lambda: no_tasks(client, ns_headers), "the task is torn down")
        await daemon.stop(signal.SIGTERM)
        assert everything_left(daemon, namespace) == {}


async def test_cleanup_spares_the_same_id_in_another_namespace(
    tmp_path: Path, busybox_tar: Path, namespace: str, ns_headers: dict[str, str]
) -> None:
    """A half-made task dir `<other>/web` (a crash right after its bundle was written) is
    removed on start; the live task `<namespace>/web` must survive that cleanup."""
    other = f"{namespace}-b"
    async with daemon_in(tmp_path, namespace) as daemon:
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
        await asyncio.sleep(0.5)
        survived = {"task": alive(task["pid"]), "conmon": alive(conmon)}
        listed = [t["id"] for t in (await client.get("/tasks", headers=ns_headers)).json()["tasks"]]
        events = await history(client, namespace)
        exits = topics_for(events, "/tasks/exit", "web")
        assert survived == {"task": True, "conmon": True}, f"cleaning {other}/web killed {namespace}/web: {exits}"
        assert listed == ["web"] and exits == []
        deleted = await client.delete("/tasks/web", headers=ns_headers)
        assert deleted.status_code == 200 and deleted.json()["exit_status"] == 137, deleted.text
        await eventually(lambda: no_tasks(client, ns_headers), "the task is torn down")
        await daemon.stop(signal.SIGTERM)
        assert everything_left(daemon, namespace) == {}


async def test_same_id_in_two_namespaces(
    tmp_path: Path, busybox_tar: Path, namespace: str, ns_headers: dict[str, str]
) -> None:
    """The root of the cleanup case above, without a restart: objects in one namespace are
    invisible from another (DESIGN: Namespaces), so `<other>/web` can run beside
    `<namespace>/web`; at the least, failing to create it must not kill `<namespace>/web`."""
    other = f"{namespace}-b"
    other_headers = {"Cargohold-Namespace": other}
    async with daemon_in(tmp_path, namespace) as daemon:
        client = await daemon.start()
        for headers in (ns_headers, other_headers):
            await import_busybox(client, busybox_tar, headers)
            await make_container(client, headers, "web", LONG)
        first = await run_task(client, ns_headers, "web")
        second = await client.post("/tasks", json={"container_id": "web"}, headers=other_headers)
        await asyncio.sleep(0.5)
        first_alive = alive(first["pid"])
        still_listed = [t["id"] for t in (await client.get("/tasks", headers=ns_headers)).json()["tasks"]]
        for headers in (ns_headers, other_headers):
            for task in (await client.get("/tasks", headers=headers)).json()["tasks"]:
                await client.delete(f"/tasks/{task['id']}", headers=headers)
        await eventually(lambda: no_tasks(client, ns_headers), "the tasks are torn down")
        await eventually(lambda: no_tasks(client, other_headers), "the tasks are torn down")
        await daemon.stop(signal.SIGTERM)
        assert everything_left(daemon, namespace) == {} and everything_left(daemon, other) == {}
        assert first_alive and still_listed == ["web"], f"creating {other}/web ({second.status_code}: " \
            f"{second.text}) killed {namespace}/web"
        assert second.status_code == 201, second.text


async def test_sigterm_with_a_pending_wait(
    tmp_path: Path, busybox_tar: Path, namespace: str, ns_headers: dict[str, str]
) -> None:
    """A client long-polling `wait` does not keep the daemon from stopping, nor is it told
    the task exited: the task keeps running and the next daemon re-adopts it."""
    async with daemon_in(tmp_path, namespace) as daemon:
        client = await daemon.start()
        await import_busybox(client, busybox_tar, ns_headers)
        await make_container(client, ns_headers, "web", LONG)
        task = await run_task(client, ns_headers, "web")
        pending = asyncio.ensure_future(client.post("/tasks/web/wait", headers=ns_headers))
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
        await eventually(lambda: no_tasks(client, ns_headers), "the task is torn down")
        await daemon.stop(signal.SIGTERM)
        assert everything_left(daemon, namespace) == {}
        problems = []
        if took >= 5:
            problems.append(f"a pending wait held the daemon's stop for {took:.1f} s")
        if isinstance(answer, httpx.Response) and answer.status_code == 500:
            problems.append(f"the waiter was answered 500: {answer.text}")
        assert problems == []
