"""Tasks under a real runtime (runc, and crun where the host lets it run): create, start,
kill, pause/resume, pids, live resource updates, wait, delete, events and bad input.

Every test runs its own daemon (`runtime_client`); `runtime_settings` then asserts that
nothing was left behind: no conmon, no runc state, no cgroup, no mount, no task dir.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.config import Settings
from app.runtime.cgroups import daemon_cgroup_parent
from app.snapshots.mounts import mount_points_under
from tests.conftest import leftovers, wait_for
from tests.runtime.conftest import import_busybox, make_container
from tests.runtime.tasks import (
    SERVE,
    SIGKILL_STATUS,
    SIGTERM_STATUS,
    conmon_of,
    create,
    gone,
    problem,
    ready,
    run,
    task_events,
    topics,
    wait_exit,
)

pytestmark = [pytest.mark.anyio, pytest.mark.runtime]

CGROUP_ROOT = Path("/sys/fs/cgroup")


# (case, body, status) for POST /tasks/{id}/kill
REFUSED_KILLS: list[tuple[str, bytes, int]] = [
    ("unknown-name", b'{"signal": "SIGNOPE"}', 400),
    ("unknown-short-name", b'{"signal": "NOPE"}', 400),
    ("unknown-number", b'{"signal": 999}', 400),
    ("unknown-number-string", b'{"signal": "999"}', 400),
    ("zero", b'{"signal": 0}', 400),
    ("negative", b'{"signal": -9}', 400),
    ("empty", b'{"signal": ""}', 400),
    ("malformed", b"{", 400),
    ("float", b'{"signal": 1.5}', 422),
    ("list", b'{"signal": [9]}', 422),
    ("null", b'{"signal": null}', 422),
    ("all-not-bool", b'{"signal": 9, "all": "every"}', 422),
    ("unknown-field", b'{"sig": 9}', 422),
]

# (case, body, statuses) for PATCH /tasks/{id}
REFUSED_UPDATES: list[tuple[str, Any, tuple[int, ...]]] = [
    ("memory-1-byte", {"resources": {"memory": {"limit": 1}}}, (422,)),
    ("memory-negative", {"resources": {"memory": {"limit": -5}}}, (422,)),
    ("shares-1", {"resources": {"cpu": {"shares": 1}}}, (422,)),
    ("shares-huge", {"resources": {"cpu": {"shares": 10**6}}}, (422,)),
    ("period-too-small", {"resources": {"cpu": {"period": 10}}}, (422,)),
    ("pids-negative", {"resources": {"pids": {"limit": -5}}}, (422,)),
    ("pids-without-limit", {"resources": {"pids": {}}}, (422,)),
    ("empty-resources", {"resources": {}}, (400, 422)),
    ("no-resources", {}, (422,)),
    ("resources-null", {"resources": None}, (422,)),
    ("memory-not-int", {"resources": {"memory": {"limit": "lots"}}}, (422,)),
    ("unknown-resource", {"resources": {"disk": {"limit": 1}}}, (422,)),
    ("one-bad-of-two", {"resources": {"memory": {"limit": 64 << 20}, "cpu": {"shares": 1}}}, (422,)),
    ("malformed", b"{nope", (400,)),
]


# --- helpers -------------------------------------------------------------------------


def cgroup(controller: str, namespace: str, task_id: str) -> Path:
    """The task's cgroup below its daemon's parent (`/cargohold/<key>`; the namespace is
    this test's own, so one daemon's at most)."""
    found = sorted((CGROUP_ROOT / controller / "cargohold").glob(f"*/{namespace}/{task_id}"))
    return found[0] if found else CGROUP_ROOT / controller / "cargohold" / "none" / namespace / task_id


def read_cgroup(controller: str, namespace: str, task_id: str, name: str) -> str:
    return (cgroup(controller, namespace, task_id) / name).read_text().strip()


def runtime_states(settings: Settings, runtime: str) -> list[str]:
    root = settings.state / "runtimes" / runtime
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


@pytest.fixture
async def api(runtime_client: httpx.AsyncClient, busybox_tar: Path, ns_headers: dict[str, str]) -> httpx.AsyncClient:
    """The daemon's client, with the busybox image imported in the test's namespace."""
    await import_busybox(runtime_client, busybox_tar, ns_headers)
    return runtime_client


# --- create / start --------------------------------------------------------------------


class TestCreate:
    @pytest.mark.parametrize("runtime", [pytest.param("runc", id="runc"), pytest.param("crun", id="crun")])
    async def test_lifecycle(
        self,
        api: httpx.AsyncClient,
        runtime_settings: Settings,
        namespace: str,
        ns_headers: dict[str, str],
        runtime: str,
    ) -> None:
        await make_container(api, ns_headers, "web", SERVE, runtime=runtime)
        response = await api.post("/tasks", json={"container_id": "web"}, headers=ns_headers)
        if response.status_code >= 400 and runtime == "crun":
            detail = problem(response, 422, 503)["detail"]
            # Nothing half-made stays: no task, no conmon, no crun state, cgroup or mount.
            assert (await api.get("/tasks", headers=ns_headers)).json()["tasks"] == []
            assert runtime_states(runtime_settings, "crun") == []
            assert leftovers(runtime_settings) == {}
            assert "/tasks/create" not in await topics(api, namespace)
            if "crun" in detail and ("hybrid" in detail or "not supported" in detail):
                pytest.skip(f"crun cannot run tasks on this host: {detail}")
        assert response.status_code == 201, response.text
        assert response.headers["location"] == "/tasks/web"
        task = response.json()
        assert task["id"] == "web" and task["namespace"] == namespace
        assert task["status"] == "created" and task["runtime"] == runtime
        assert task["started_at"] is None and task["processes"] == []
        pid = task["pid"]
        assert pid > 0 and Path(f"/proc/{pid}").exists()

        # The bundle: the container's spec with Cargohold's cgroup and the mounted rootfs.
        bundle = runtime_settings.state / "tasks" / namespace / "web" / "bundle"
        config = json.loads((bundle / "config.json").read_text())
        assert config["linux"]["cgroupsPath"] == f"{daemon_cgroup_parent(runtime_settings.state)}/{namespace}/web"
        assert config["process"]["args"] == SERVE
        assert bundle / "rootfs" in mount_points_under(bundle)
        assert (bundle / "rootfs" / "bin" / "busybox").exists()
        # Its cgroup, with the init process in it; one conmon for it; runtime state.
        memory = cgroup("memory", namespace, "web")
        assert memory.is_dir()
        assert str(pid) in (memory / "cgroup.procs").read_text().split()
        assert len(conmon_of(runtime_settings, f"{namespace}+web")) == 1
        # runc ids are namespace-qualified: the same id may run in two namespaces.
        assert runtime_states(runtime_settings, runtime) == [f"{namespace}+web"]

        started = await api.post("/tasks/web/start", headers=ns_headers)
        assert started.status_code == 200, started.text
        assert started.json()["status"] == "running" and started.json()["started_at"] is not None
        assert started.json()["pid"] == pid
        await ready(api, ns_headers, "web")
        got = (await api.get("/tasks/web", headers=ns_headers)).json()
        assert got["status"] == "running"
        listed = (await api.get("/tasks", headers=ns_headers)).json()["tasks"]
        assert [t["id"] for t in listed] == ["web"]

        killed = await api.post("/tasks/web/kill", json={"signal": "SIGTERM"}, headers=ns_headers)
        assert killed.status_code == 204, killed.text
        exit_ = await wait_exit(api, ns_headers, "web")
        assert exit_["exit_status"] == SIGTERM_STATUS and exit_["pid"] == pid
        await gone(api, ns_headers, "web")
        assert not memory.exists()
        assert conmon_of(runtime_settings, f"{namespace}+web") == []
        assert runtime_states(runtime_settings, runtime) == []
        assert leftovers(runtime_settings) == {}

    async def test_one_task_per_container(self, api: httpx.AsyncClient, ns_headers: dict[str, str]) -> None:
        await make_container(api, ns_headers, "web", SERVE)
        first = await create(api, ns_headers, "web")
        again = await api.post("/tasks", json={"container_id": "web"}, headers=ns_headers)
        assert "already has a task" in problem(again, 409)["detail"]
        # The first task is untouched and still runs to its end.
        assert (await api.post("/tasks/web/start", headers=ns_headers)).status_code == 200
        await ready(api, ns_headers, "web")
        await api.post("/tasks/web/kill", json={"signal": "TERM"}, headers=ns_headers)
        assert (await wait_exit(api, ns_headers, "web"))["pid"] == first["pid"]

    async def test_concurrent_creates_make_one_task(
        self, api: httpx.AsyncClient, runtime_settings: Settings, namespace: str, ns_headers: dict[str, str]
    ) -> None:
        """Two POST /tasks racing for one container: one 201, one 409, and the winner's task
        is intact (its bundle, rootfs mount, log and runtime state are not undone by the loser)."""
        await make_container(api, ns_headers, "web", SERVE)
        responses = await asyncio.gather(
            *(api.post("/tasks", json={"container_id": "web"}, headers=ns_headers) for _ in range(2))
        )
        statuses = sorted(r.status_code for r in responses)
        winner = next(r.json() for r in responses if r.status_code == 201)
        # The winner's task is whole: its bundle and rootfs, its conmon, its runtime state.
        bundle = runtime_settings.state / "tasks" / namespace / "web" / "bundle"
        intact = {
            "config.json": (bundle / "config.json").exists(),
            "rootfs mounted once": mount_points_under(bundle).count(bundle / "rootfs") == 1,
            "conmon": len(conmon_of(runtime_settings, f"{namespace}+web")) == 1,
            "runc state": runtime_states(runtime_settings, "runc") == [f"{namespace}+web"],
            "init alive": Path(f"/proc/{winner['pid']}").exists(),
        }
        started = await api.post("/tasks/web/start", headers=ns_headers)
        assert intact == dict.fromkeys(intact, True), intact
        assert started.status_code == 200, started.text
        await ready(api, ns_headers, "web")
        await api.post("/tasks/web/kill", json={"signal": "TERM"}, headers=ns_headers)
        assert (await wait_exit(api, ns_headers, "web"))["exit_status"] == SIGTERM_STATUS
        # The loser is told there is a task already (409), not that the spec is invalid.
        assert statuses == [201, 409], [r.text for r in responses]

    async def test_start_twice_conflicts(self, api: httpx.AsyncClient, ns_headers: dict[str, str]) -> None:
        await run(api, ns_headers, "web")
        again = await api.post("/tasks/web/start", headers=ns_headers)
        assert "only a created task can be started" in problem(again, 409)["detail"]

    async def test_missing_container(
        self, runtime_client: httpx.AsyncClient, namespace: str, ns_headers: dict[str, str]
    ) -> None:
        assert (await runtime_client.post("/namespaces", json={"name": namespace})).status_code == 201
        response = await runtime_client.post("/tasks", json={"container_id": "nothing"}, headers=ns_headers)
        assert "nothing" in problem(response, 404)["detail"]

    async def test_container_without_rootfs(self, api: httpx.AsyncClient, ns_headers: dict[str, str]) -> None:
        body = {"id": "bare", "spec": {"ociVersion": "1.0.2", "root": {"path": "rootfs"},
                                       "process": {"args": ["true"]}}}
        assert (await api.post("/containers", json=body, headers=ns_headers)).status_code == 201
        response = await api.post("/tasks", json={"container_id": "bare"}, headers=ns_headers)
        assert "snapshot_key" in problem(response, 422)["detail"]
        assert (await api.get("/tasks", headers=ns_headers)).json()["tasks"] == []

    @pytest.mark.parametrize(
        "args, says",
        [
            pytest.param(["/nope"], "/nope", id="missing-executable"),
            pytest.param(["/etc/passwd"], "permission denied", id="not-executable"),
        ],
    )
    async def test_runtime_refusal_leaves_nothing(
        self,
        api: httpx.AsyncClient,
        runtime_settings: Settings,
        namespace: str,
        ns_headers: dict[str, str],
        args: list[str],
        says: str,
    ) -> None:
        await make_container(api, ns_headers, "broken", args)
        response = await api.post("/tasks", json={"container_id": "broken"}, headers=ns_headers)
        detail = problem(response, 400, 422)["detail"]
        assert "runc" in detail and says in detail, detail
        assert (await api.get("/tasks", headers=ns_headers)).json()["tasks"] == []
        problem(await api.get("/tasks/broken", headers=ns_headers), 404)
        assert "/tasks/create" not in await topics(api, namespace)
        assert leftovers(runtime_settings) == {}
        assert not (runtime_settings.state / "tasks" / namespace / "broken").exists()
        # The container itself is unharmed.
        assert (await api.get("/containers/broken", headers=ns_headers)).status_code == 200

    async def test_failed_create_keeps_the_last_runs_log(
        self, api: httpx.AsyncClient, ns_headers: dict[str, str]
    ) -> None:
        """A refused POST /tasks changes nothing: the previous run's log stays readable."""
        await run(api, ns_headers, "web", ["sh", "-c", "echo first-run"])
        await wait_exit(api, ns_headers, "web")
        await gone(api, ns_headers, "web")
        patched = await api.patch(
            "/containers/web",
            content=json.dumps({"spec": {"process": {"args": ["/nope"]}}}),
            headers={**ns_headers, "Content-Type": "application/merge-patch+json"},
        )
        assert patched.status_code == 200, patched.text
        problem(await api.post("/tasks", json={"container_id": "web"}, headers=ns_headers), 400, 422)
        logs = await api.get("/tasks/web/logs", headers=ns_headers)
        assert logs.status_code == 200, logs.text
        assert [json.loads(line)["line"] for line in logs.text.splitlines()] == ["first-run"]

    @pytest.mark.parametrize(
        "body, spec, flags",
        [
            pytest.param({"terminal": True}, {}, {"-t"}, id="request-terminal"),
            pytest.param({"stdin": True}, {}, {"-i"}, id="request-stdin"),
            pytest.param({}, {"terminal": True}, {"-t"}, id="spec-terminal"),
            pytest.param({"terminal": True, "stdin": True}, {}, {"-t", "-i", "--leave-stdin-open"}, id="both"),
        ],
    )
    async def test_terminal_and_stdin(
        self,
        api: httpx.AsyncClient,
        runtime_settings: Settings,
        namespace: str,
        ns_headers: dict[str, str],
        body: dict[str, Any],
        spec: dict[str, Any],
        flags: set[str],
    ) -> None:
        """conmon gets -t (runc a console socket) and -i as asked; attach is tests/runtime/test_attach.py's."""
        await make_container(api, ns_headers, "tty", ["sh"])
        if spec:
            patched = await api.patch(
                "/containers/tty",
                content=json.dumps({"spec": {"process": spec}}),
                headers={**ns_headers, "Content-Type": "application/merge-patch+json"},
            )
            assert patched.status_code == 200, patched.text
        response = await api.post("/tasks", json={"container_id": "tty", **body}, headers=ns_headers)
        assert response.status_code == 201, response.text
        [conmon] = conmon_of(runtime_settings, f"{namespace}+tty")
        argv = {arg.decode() for arg in Path(f"/proc/{conmon}/cmdline").read_bytes().split(b"\0")}
        assert flags <= argv and not ({"-t", "-i", "--leave-stdin-open"} - flags) & argv, argv
        bundle = runtime_settings.state / "tasks" / namespace / "tty" / "bundle"
        config = json.loads((bundle / "config.json").read_text())
        assert config["process"]["terminal"] is ("-t" in flags)

    @pytest.mark.parametrize(
        "content, status",
        [
            pytest.param(b"{not json", 400, id="malformed"),
            pytest.param(b"", 422, id="empty-body"),
            pytest.param(b"[]", 422, id="array"),
            pytest.param(b'{"container_id": 7}', 422, id="id-not-string"),
            pytest.param(b'{"container_id": "bad..id"}', 422, id="invalid-id"),
            pytest.param(b'{"container_id": "web", "terminal": "yes please"}', 422, id="terminal-not-bool"),
            pytest.param(b'{"container_id": "web", "tty": false}', 422, id="unknown-field"),
        ],
    )
    async def test_bad_body(
        self, runtime_client: httpx.AsyncClient, namespace: str, ns_headers: dict[str, str], content: bytes,
        status: int,
    ) -> None:
        assert (await runtime_client.post("/namespaces", json={"name": namespace})).status_code == 201
        response = await runtime_client.post(
            "/tasks", content=content, headers={**ns_headers, "Content-Type": "application/json"}
        )
        problem(response, status)
        assert (await runtime_client.get("/tasks", headers=ns_headers)).json()["tasks"] == []


# --- kill ---------------------------------------------------------------------------


class TestKill:
    @pytest.mark.parametrize(
        "body, status",
        [
            pytest.param({"signal": "SIGTERM"}, SIGTERM_STATUS, id="SIGTERM"),
            pytest.param({"signal": "TERM"}, SIGTERM_STATUS, id="TERM"),
            pytest.param({"signal": "term"}, SIGTERM_STATUS, id="lowercase"),
            pytest.param({"signal": 15}, SIGTERM_STATUS, id="15"),
            pytest.param({}, SIGTERM_STATUS, id="default-SIGTERM"),
            pytest.param({"signal": "9"}, SIGKILL_STATUS, id="string-9"),
            pytest.param({"signal": "SIGKILL", "all": True}, SIGKILL_STATUS, id="all-SIGKILL"),
            pytest.param({"signal": "SIGTERM", "all": True}, SIGTERM_STATUS, id="all-SIGTERM"),
        ],
    )
    async def test_signal(
        self, api: httpx.AsyncClient, ns_headers: dict[str, str], body: dict[str, Any], status: int
    ) -> None:
        await run(api, ns_headers, "web")
        response = await api.post("/tasks/web/kill", json=body, headers=ns_headers)
        assert response.status_code == 204, response.text
        assert response.content == b""
        assert (await wait_exit(api, ns_headers, "web"))["exit_status"] == status

    async def test_all_reaches_every_process(self, api: httpx.AsyncClient, ns_headers: dict[str, str]) -> None:
        """`all: true` signals every process in the cgroup; without it only init."""
        # init has no SIGTERM handler (so ignores it) and waits for its child: only a
        # SIGTERM that reaches the child ends the task, with init's own status 3.
        await run(api, ns_headers, "web", ["sh", "-c", "sleep 30 & wait $!; exit 3"])

        async def child_started() -> bool:
            return len((await api.get("/tasks/web/pids", headers=ns_headers)).json()["pids"]) >= 2

        await wait_for(child_started, "the child has started", 5)
        init_only = await api.post("/tasks/web/kill", json={"signal": "TERM"}, headers=ns_headers)
        assert init_only.status_code == 204, init_only.text
        # A negative (the task must not end) has nothing to wait for: a grace period.
        await asyncio.sleep(0.3)
        assert (await api.get("/tasks/web", headers=ns_headers)).json()["status"] == "running"
        everyone = await api.post("/tasks/web/kill", json={"signal": "TERM", "all": True}, headers=ns_headers)
        assert everyone.status_code == 204, everyone.text
        assert (await wait_exit(api, ns_headers, "web"))["exit_status"] == 3

    async def test_refused_signals_send_nothing(self, api: httpx.AsyncClient, ns_headers: dict[str, str]) -> None:
        """Unknown signals are 400, wrong shapes 400/422; the task never sees any of them."""
        await run(api, ns_headers, "web")
        for case, content, status in REFUSED_KILLS:
            response = await api.post(
                "/tasks/web/kill", content=content, headers={**ns_headers, "Content-Type": "application/json"}
            )
            detail = problem(response, status)["detail"]
            if status == 400 and case != "malformed":
                assert "signal" in detail, (case, detail)
            task = (await api.get("/tasks/web", headers=ns_headers)).json()
            assert task["status"] == "running", (case, task)
        await api.post("/tasks/web/kill", json={"signal": "TERM"}, headers=ns_headers)
        assert (await wait_exit(api, ns_headers, "web"))["exit_status"] == SIGTERM_STATUS

    async def test_kill_exited_task(self, api: httpx.AsyncClient, ns_headers: dict[str, str]) -> None:
        await run(api, ns_headers, "web", ["true"])
        await wait_exit(api, ns_headers, "web")
        # Exiting (teardown under way) and deleted alike: 404.
        problem(await api.post("/tasks/web/kill", json={"signal": 9}, headers=ns_headers), 404)
        await gone(api, ns_headers, "web")
        problem(await api.post("/tasks/web/kill", json={"signal": 9}, headers=ns_headers), 404)

    async def test_kill_created_task(self, api: httpx.AsyncClient, ns_headers: dict[str, str]) -> None:
        await make_container(api, ns_headers, "web", SERVE)
        await create(api, ns_headers, "web")
        response = await api.post("/tasks/web/kill", json={"signal": "SIGKILL"}, headers=ns_headers)
        assert response.status_code == 204, response.text
        assert (await wait_exit(api, ns_headers, "web"))["exit_status"] == SIGKILL_STATUS


# --- pause / resume / pids ------------------------------------------------------------


class TestPause:
    async def test_pause_and_resume(self, api: httpx.AsyncClient, namespace: str, ns_headers: dict[str, str]) -> None:
        await run(api, ns_headers, "web")
        paused = await api.post("/tasks/web/pause", headers=ns_headers)
        assert paused.status_code == 200, paused.text
        assert paused.json()["status"] == "paused"
        assert read_cgroup("freezer", namespace, "web", "freezer.state") == "FROZEN"
        assert (await api.get("/tasks/web", headers=ns_headers)).json()["status"] == "paused"
        again = await api.post("/tasks/web/pause", headers=ns_headers)
        assert "paused" in problem(again, 409)["detail"]

        resumed = await api.post("/tasks/web/resume", headers=ns_headers)
        assert resumed.status_code == 200, resumed.text
        assert resumed.json()["status"] == "running"
        assert read_cgroup("freezer", namespace, "web", "freezer.state") == "THAWED"
        again = await api.post("/tasks/web/resume", headers=ns_headers)
        assert "running" in problem(again, 409)["detail"]

        found = await topics(api, namespace)
        assert found[-2:] == ["/tasks/paused", "/tasks/resumed"]
        # Still alive and signalable after the thaw.
        await api.post("/tasks/web/kill", json={"signal": "TERM"}, headers=ns_headers)
        assert (await wait_exit(api, ns_headers, "web"))["exit_status"] == SIGTERM_STATUS

    async def test_created_task_cannot_pause_or_resume(
        self, api: httpx.AsyncClient, ns_headers: dict[str, str]
    ) -> None:
        await make_container(api, ns_headers, "web", SERVE)
        await create(api, ns_headers, "web")
        problem(await api.post("/tasks/web/pause", headers=ns_headers), 409)
        problem(await api.post("/tasks/web/resume", headers=ns_headers), 409)

    async def test_delete_paused_task(
        self, api: httpx.AsyncClient, runtime_settings: Settings, namespace: str, ns_headers: dict[str, str]
    ) -> None:
        await run(api, ns_headers, "web")
        assert (await api.post("/tasks/web/pause", headers=ns_headers)).status_code == 200
        deleted = await api.delete("/tasks/web", headers=ns_headers)
        assert deleted.status_code == 200, deleted.text
        assert deleted.json()["exit_status"] == SIGKILL_STATUS
        assert leftovers(runtime_settings) == {}


class TestPids:
    async def test_lists_init(self, api: httpx.AsyncClient, ns_headers: dict[str, str]) -> None:
        task = await run(api, ns_headers, "web")
        response = await api.get("/tasks/web/pids", headers=ns_headers)
        assert response.status_code == 200, response.text
        pids = response.json()["pids"]
        assert task["pid"] in pids
        assert all(isinstance(pid, int) and pid > 0 for pid in pids)


# --- PATCH resources -------------------------------------------------------------------


class TestUpdate:
    @pytest.mark.parametrize(
        "resources, files",
        [
            pytest.param({"memory": {"limit": 64 << 20}}, {("memory", "memory.limit_in_bytes"): str(64 << 20)},
                         id="memory-limit"),
            pytest.param({"cpu": {"shares": 512}}, {("cpu", "cpu.shares"): "512"}, id="cpu-shares"),
            pytest.param({"cpu": {"quota": 50000, "period": 100000}},
                         {("cpu", "cpu.cfs_quota_us"): "50000", ("cpu", "cpu.cfs_period_us"): "100000"},
                         id="cpu-quota"),
            pytest.param({"pids": {"limit": 20}}, {("pids", "pids.max"): "20"}, id="pids-limit"),
            pytest.param(
                {"memory": {"limit": 32 << 20}, "cpu": {"shares": 256}, "pids": {"limit": 7}},
                {("memory", "memory.limit_in_bytes"): str(32 << 20), ("cpu", "cpu.shares"): "256",
                 ("pids", "pids.max"): "7"},
                id="all-at-once",
            ),
        ],
    )
    async def test_applies_to_cgroup(
        self,
        api: httpx.AsyncClient,
        namespace: str,
        ns_headers: dict[str, str],
        resources: dict[str, Any],
        files: dict[tuple[str, str], str],
    ) -> None:
        await run(api, ns_headers, "web")
        response = await api.patch("/tasks/web", json={"resources": resources}, headers=ns_headers)
        assert response.status_code == 200, response.text
        assert response.json()["id"] == "web" and response.json()["status"] == "running"
        for (controller, name), value in files.items():
            assert read_cgroup(controller, namespace, "web", name) == value, name

    async def test_pids_limit_unlimited(
        self, api: httpx.AsyncClient, namespace: str, ns_headers: dict[str, str]
    ) -> None:
        """-1 and 0 both mean unlimited (the API's own documentation of pids.limit)."""
        await run(api, ns_headers, "web")
        for limit in (20, -1, 20, 0):
            response = await api.patch("/tasks/web", json={"resources": {"pids": {"limit": limit}}}, headers=ns_headers)
            assert response.status_code == 200, response.text
            expected = str(limit) if limit > 0 else "max"
            assert read_cgroup("pids", namespace, "web", "pids.max") == expected, f"after limit {limit}"

    async def test_refused_and_cgroup_unchanged(
        self, api: httpx.AsyncClient, namespace: str, ns_headers: dict[str, str]
    ) -> None:
        await run(api, ns_headers, "web")
        watched = [("memory", "memory.limit_in_bytes"), ("cpu", "cpu.shares"), ("cpu", "cpu.cfs_quota_us"),
                   ("cpu", "cpu.cfs_period_us"), ("pids", "pids.max")]

        def files() -> dict[str, str]:
            return {name: read_cgroup(controller, namespace, "web", name) for controller, name in watched}

        before = files()
        for case, content, statuses in REFUSED_UPDATES:
            raw = content if isinstance(content, bytes) else json.dumps(content).encode()
            response = await api.patch(
                "/tasks/web", content=raw, headers={**ns_headers, "Content-Type": "application/json"}
            )
            assert response.status_code in statuses, (case, response.status_code, response.text)
            problem(response, *statuses)
            assert files() == before, case


# --- wait / exit / delete ---------------------------------------------------------------


class TestWait:
    async def test_long_polls_to_the_exit(
        self, api: httpx.AsyncClient, runtime_settings: Settings, namespace: str, ns_headers: dict[str, str]
    ) -> None:
        task = await run(api, ns_headers, "web", ["sh", "-c", "sleep 0.5; exit 3"])
        began = time.monotonic()
        exit_ = await wait_exit(api, ns_headers, "web")
        assert time.monotonic() - began >= 0.3  # it waited for the exit
        assert exit_["id"] == "web" and exit_["exec_id"] is None and exit_["pid"] == task["pid"]
        assert exit_["exit_status"] == 3 and exit_["oom_killed"] is False
        exited_at = datetime.fromisoformat(exit_["exited_at"])
        assert exited_at.tzinfo is not None
        assert datetime.fromisoformat(task["started_at"]) <= exited_at <= datetime.now(UTC)

        # Exit means delete: the task is gone, the container stays, wait still answers.
        problem(await api.get("/tasks/web", headers=ns_headers), 404)
        await gone(api, ns_headers, "web")
        problem(await api.get("/tasks/web", headers=ns_headers), 404)
        assert (await api.get("/containers/web", headers=ns_headers)).status_code == 200
        assert await wait_exit(api, ns_headers, "web") == exit_
        assert leftovers(runtime_settings) == {}

        events = await topics(api, namespace)  # final: `gone` above waited for /tasks/delete
        assert events == ["/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete"]
        payloads = {e["topic"]: e["event"] for e in await task_events(api, namespace)}
        assert payloads["/tasks/create"] == {"container_id": "web", "pid": task["pid"]}
        assert payloads["/tasks/exit"]["exit_status"] == 3
        assert payloads["/tasks/exit"]["container_id"] == "web"
        assert payloads["/tasks/delete"]["exit_status"] == 3

    async def test_concurrent_waiters_agree(self, api: httpx.AsyncClient, ns_headers: dict[str, str]) -> None:
        await run(api, ns_headers, "web")
        waiters = [asyncio.create_task(api.post("/tasks/web/wait", headers=ns_headers)) for _ in range(5)]
        await asyncio.sleep(0.3)  # a negative (no answer yet) has nothing to wait for: a grace period
        assert not any(w.done() for w in waiters)  # long-polling, all of them
        await api.post("/tasks/web/kill", json={"signal": "SIGTERM"}, headers=ns_headers)
        answers = await asyncio.wait_for(asyncio.gather(*waiters), 5)
        assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
        bodies = [a.json() for a in answers]
        assert bodies[0]["exit_status"] == SIGTERM_STATUS
        assert all(b == bodies[0] for b in bodies)

    async def test_exit_of_each_run_is_kept(self, api: httpx.AsyncClient, ns_headers: dict[str, str]) -> None:
        """A second task for the same container: wait answers with the newest exit."""
        await make_container(api, ns_headers, "web", ["sh", "-c", "echo x >> /tmp/runs; exit $(wc -l < /tmp/runs)"])
        statuses = []
        for _ in range(2):
            await create(api, ns_headers, "web")
            await api.post("/tasks/web/start", headers=ns_headers)
            statuses.append((await wait_exit(api, ns_headers, "web"))["exit_status"])
            await gone(api, ns_headers, "web")
            assert (await wait_exit(api, ns_headers, "web"))["exit_status"] == statuses[-1]
        assert statuses == [1, 2]


class TestDelete:
    async def test_delete_running_task(
        self, api: httpx.AsyncClient, runtime_settings: Settings, namespace: str, ns_headers: dict[str, str]
    ) -> None:
        task = await run(api, ns_headers, "web")
        deleted = await api.delete("/tasks/web", headers=ns_headers)
        assert deleted.status_code == 200, deleted.text
        exit_ = deleted.json()
        assert exit_["exit_status"] == SIGKILL_STATUS and exit_["pid"] == task["pid"]
        # The teardown is done when DELETE answers.
        assert (await api.get("/tasks", headers=ns_headers)).json()["tasks"] == []
        assert leftovers(runtime_settings) == {}
        assert not cgroup("memory", namespace, "web").exists()
        assert await wait_exit(api, ns_headers, "web") == exit_
        assert (await topics(api, namespace))[-2:] == ["/tasks/exit", "/tasks/delete"]
        problem(await api.delete("/tasks/web", headers=ns_headers), 404)

    async def test_delete_created_task(
        self, api: httpx.AsyncClient, runtime_settings: Settings, namespace: str, ns_headers: dict[str, str]
    ) -> None:
        await make_container(api, ns_headers, "web", SERVE)
        await create(api, ns_headers, "web")
        deleted = await api.delete("/tasks/web", headers=ns_headers)
        assert deleted.status_code == 200, deleted.text
        assert deleted.json()["exit_status"] == SIGKILL_STATUS
        assert leftovers(runtime_settings) == {}

    async def test_container_delete_waits_for_its_task(
        self, api: httpx.AsyncClient, runtime_settings: Settings, namespace: str, ns_headers: dict[str, str]
    ) -> None:
        await run(api, ns_headers, "web")
        refused = await api.delete("/containers/web", headers=ns_headers)
        assert "task" in problem(refused, 409)["detail"]
        assert (await api.get("/tasks/web", headers=ns_headers)).json()["status"] == "running"
        assert (await api.delete("/tasks/web", headers=ns_headers)).status_code == 200
        assert (await api.delete("/containers/web", headers=ns_headers)).status_code == 204
        problem(await api.get("/containers/web", headers=ns_headers), 404)
        assert leftovers(runtime_settings) == {}

    async def test_namespaces_are_separate(
        self, api: httpx.AsyncClient, namespace: str, ns_headers: dict[str, str]
    ) -> None:
        await run(api, ns_headers, "web")
        assert (await api.post("/namespaces", json={"name": f"{namespace}-other"})).status_code == 201
        other = {"Cargohold-Namespace": f"{namespace}-other"}
        assert (await api.get("/tasks", headers=other)).json()["tasks"] == []
        problem(await api.get("/tasks/web", headers=other), 404)
        problem(await api.post("/tasks/web/kill", json={"signal": 9}, headers=other), 404)
        problem(await api.delete("/tasks/web", headers=other), 404)
        assert (await api.get("/tasks/web", headers=ns_headers)).json()["status"] == "running"


# --- missing tasks, bad paths -------------------------------------------------------------

TASK_ENDPOINTS = [
    pytest.param("GET", "/tasks/{}", None, id="get"),
    pytest.param("POST", "/tasks/{}/start", None, id="start"),
    pytest.param("POST", "/tasks/{}/kill", {"signal": 9}, id="kill"),
    pytest.param("POST", "/tasks/{}/pause", None, id="pause"),
    pytest.param("POST", "/tasks/{}/resume", None, id="resume"),
    pytest.param("GET", "/tasks/{}/pids", None, id="pids"),
    pytest.param("PATCH", "/tasks/{}", {"resources": {"pids": {"limit": 5}}}, id="patch"),
    pytest.param("POST", "/tasks/{}/wait", None, id="wait"),
    pytest.param("DELETE", "/tasks/{}", None, id="delete"),
]

# a double dot, a leading dash, a space, a trailing underscore, 77 characters
INVALID_IDS = ["bad..id", "-web", "we%20b", "web_", "a" * 77]


class TestBadPath:
    @pytest.mark.parametrize("method, path, body", TASK_ENDPOINTS)
    async def test_missing_task(
        self,
        runtime_client: httpx.AsyncClient,
        ns_headers: dict[str, str],
        method: str,
        path: str,
        body: dict[str, Any] | None,
    ) -> None:
        response = await runtime_client.request(method, path.format("nothing"), json=body, headers=ns_headers)
        assert '"nothing"' in problem(response, 404)["detail"]

    @pytest.mark.parametrize("method, path, body", TASK_ENDPOINTS)
    async def test_invalid_id(
        self,
        runtime_client: httpx.AsyncClient,
        ns_headers: dict[str, str],
        method: str,
        path: str,
        body: dict[str, Any] | None,
    ) -> None:
        for task_id in INVALID_IDS:
            response = await runtime_client.request(method, path.format(task_id), json=body, headers=ns_headers)
            assert "not a valid identifier" in problem(response, 400)["detail"], task_id
