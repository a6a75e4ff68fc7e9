"""Exec processes in a running task, and task logs: JSON lines, tail, since, follow, SSE,
their lifetime (kept after the exit, fresh for a new task, gone with the container) and
their bounded size (conmon's --log-size-max) under a task that prints 20 MB.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.config import Settings
from tests.conftest import leftovers, running_server, uds_client
from tests.runtime.conftest import delete_all_tasks, import_busybox, make_container
from tests.runtime.tasks import (
    NDJSON,
    SERVE,
    SIGKILL_STATUS,
    add_exec,
    conmon_of,
    create,
    exec_body,
    gone,
    log_lines,
    problem,
    run,
    start_exec,
    task_events,
    texts,
    topics,
    vm_rss_kib,
    wait_exec,
    wait_exit,
)

pytestmark = [pytest.mark.anyio, pytest.mark.runtime]


@pytest.fixture
async def api(runtime_client: httpx.AsyncClient, busybox_tar: Path, ns_headers: dict[str, str]) -> httpx.AsyncClient:
    """The daemon's client, with the busybox image imported in the test's namespace."""
    await import_busybox(runtime_client, busybox_tar, ns_headers)
    return runtime_client


# (case, body, status) for POST /tasks/{id}/processes
REFUSED_EXECS: list[tuple[str, bytes, int]] = [
    ("malformed", b"{", 400),
    ("no-process", b'{"exec_id": "x"}', 422),
    ("empty-args", b'{"exec_id": "x", "process": {"args": []}}', 422),
    ("args-not-list", b'{"exec_id": "x", "process": {"args": "sh"}}', 422),
    ("invalid-exec-id", b'{"exec_id": "x..y", "process": {"args": ["true"]}}', 422),
    ("no-exec-id", b'{"process": {"args": ["true"]}}', 422),
    ("stdin-not-bool", b'{"exec_id": "x", "process": {"args": ["true"]}, "stdin": "maybe"}', 422),
    ("unknown-field", b'{"exec_id": "x", "process": {"args": ["true"]}, "tty": 1}', 422),
]


# --- exec ------------------------------------------------------------------------------


class TestExec:
    async def test_lifecycle(self, api: httpx.AsyncClient, namespace: str, ns_headers: dict[str, str]) -> None:
        await run(api, ns_headers, "web")
        response = await api.post(
            "/tasks/web/processes",
            json=exec_body("probe", ["sh", "-c", "echo out; sleep 0.05; echo err >&2; exit 4"]),
            headers=ns_headers,
        )
        assert response.status_code == 201, response.text
        assert response.headers["location"] == "/tasks/web/processes/probe"
        added = response.json()
        assert added["exec_id"] == "probe" and added["pid"] is None and added["status"] == "created"
        assert (await task_events(api, namespace))[-1]["topic"] == "/tasks/exec-added"
        assert (await task_events(api, namespace))[-1]["event"] == {"container_id": "web", "exec_id": "probe"}
        processes = (await api.get("/tasks/web", headers=ns_headers)).json()["processes"]
        assert [(p["exec_id"], p["status"]) for p in processes] == [("probe", "created")]

        again = await api.post("/tasks/web/processes", json=exec_body("probe", ["true"]), headers=ns_headers)
        assert "probe" in problem(again, 409)["detail"]

        started = await start_exec(api, ns_headers, "web", "probe")
        assert started["exec_id"] == "probe" and started["status"] == "running"
        assert isinstance(started["pid"], int) and started["pid"] > 0
        exit_ = await wait_exec(api, ns_headers, "web", "probe")
        assert exit_["id"] == "web" and exit_["exec_id"] == "probe"
        assert exit_["exit_status"] == 4 and exit_["pid"] == started["pid"] and exit_["oom_killed"] is False

        events = await task_events(api, namespace)
        by_topic = {e["topic"]: e["event"] for e in events}
        assert by_topic["/tasks/exec-started"] == {"container_id": "web", "exec_id": "probe", "pid": started["pid"]}
        assert [e["topic"] for e in events][-3:] == ["/tasks/exec-added", "/tasks/exec-started", "/tasks/exit"]
        assert by_topic["/tasks/exit"]["id"] == "probe" and by_topic["/tasks/exit"]["exit_status"] == 4

        lines = await log_lines(api, ns_headers, "/tasks/web/processes/probe/logs")
        assert [(line["stream"], line["line"]) for line in lines] == [("stdout", "out"), ("stderr", "err")]
        # Recorded like the task's exit: wait after the fact answers the same; the task runs on.
        assert await wait_exec(api, ns_headers, "web", "probe") == exit_
        task = (await api.get("/tasks/web", headers=ns_headers)).json()
        assert task["status"] == "running" and task["processes"] == []
        assert "/tasks/delete" not in await topics(api, namespace)

    async def test_exec_pid_is_the_tasks(self, api: httpx.AsyncClient, ns_headers: dict[str, str]) -> None:
        await run(api, ns_headers, "web")
        await add_exec(api, ns_headers, "web", "nap", ["sleep", "30"])
        pid = (await start_exec(api, ns_headers, "web", "nap"))["pid"]
        assert pid in (await api.get("/tasks/web/pids", headers=ns_headers)).json()["pids"]
        again = await api.post("/tasks/web/processes/nap/start", headers=ns_headers)
        assert "started already" in problem(again, 409)["detail"]

    @pytest.mark.parametrize(
        "signal, status",
        [
            pytest.param("SIGKILL", SIGKILL_STATUS, id="SIGKILL"),
            pytest.param(9, SIGKILL_STATUS, id="9"),
            pytest.param("TERM", 128 + 15, id="TERM"),
        ],
    )
    async def test_kill(
        self, api: httpx.AsyncClient, ns_headers: dict[str, str], signal: str | int, status: int
    ) -> None:
        await run(api, ns_headers, "web")
        await add_exec(api, ns_headers, "web", "nap", ["sleep", "30"])
        refused = await api.post("/tasks/web/processes/nap/kill", json={"signal": signal}, headers=ns_headers)
        assert "not been started" in problem(refused, 409)["detail"]
        await start_exec(api, ns_headers, "web", "nap")
        bad = await api.post("/tasks/web/processes/nap/kill", json={"signal": "SIGNOPE"}, headers=ns_headers)
        problem(bad, 400)
        killed = await api.post("/tasks/web/processes/nap/kill", json={"signal": signal}, headers=ns_headers)
        assert killed.status_code == 204, killed.text
        assert (await wait_exec(api, ns_headers, "web", "nap"))["exit_status"] == status
        # Only the exec process died.
        assert (await api.get("/tasks/web", headers=ns_headers)).json()["status"] == "running"
        problem(await api.post("/tasks/web/processes/nap/kill", json={"signal": 9}, headers=ns_headers), 404, 409)

    async def test_exec_needs_a_running_task(self, api: httpx.AsyncClient, ns_headers: dict[str, str]) -> None:
        await make_container(api, ns_headers, "web", SERVE)
        await create(api, ns_headers, "web")
        response = await api.post("/tasks/web/processes", json=exec_body("probe", ["true"]), headers=ns_headers)
        assert "running" in problem(response, 409)["detail"]
        assert (await api.get("/tasks/web", headers=ns_headers)).json()["processes"] == []

    async def test_exec_into_paused_task(self, api: httpx.AsyncClient, ns_headers: dict[str, str]) -> None:
        await run(api, ns_headers, "web")
        assert (await api.post("/tasks/web/pause", headers=ns_headers)).status_code == 200
        response = await api.post("/tasks/web/processes", json=exec_body("probe", ["true"]), headers=ns_headers)
        problem(response, 409)

    async def test_exec_of_exited_task(self, api: httpx.AsyncClient, ns_headers: dict[str, str]) -> None:
        await run(api, ns_headers, "web", ["true"])
        await wait_exit(api, ns_headers, "web")
        response = await api.post("/tasks/web/processes", json=exec_body("probe", ["true"]), headers=ns_headers)
        problem(response, 404)
        problem(await api.post("/tasks/web/processes/probe/wait", headers=ns_headers), 404)

    async def test_missing_executable(
        self, api: httpx.AsyncClient, runtime_settings: Settings, namespace: str, ns_headers: dict[str, str]
    ) -> None:
        await run(api, ns_headers, "web")
        await add_exec(api, ns_headers, "web", "broken", ["/nope"])
        response = await api.post("/tasks/web/processes/broken/start", headers=ns_headers)
        detail = problem(response, 400, 422)["detail"]
        assert "runc" in detail and "/nope" in detail, detail
        assert "/tasks/exec-started" not in await topics(api, namespace)
        assert conmon_of(runtime_settings, "web-broken") == []
        # The task is unharmed.
        assert (await api.get("/tasks/web", headers=ns_headers)).json()["status"] == "running"
        assert (await api.delete("/tasks/web", headers=ns_headers)).status_code == 200
        assert leftovers(runtime_settings) == {}

    async def test_exec_running_when_the_task_exits(
        self, api: httpx.AsyncClient, runtime_settings: Settings, namespace: str, ns_headers: dict[str, str]
    ) -> None:
        """Execs die with the task's pid namespace; each exit is recorded with its true status."""
        await run(api, ns_headers, "web")
        await add_exec(api, ns_headers, "web", "nap", ["sleep", "30"])
        await start_exec(api, ns_headers, "web", "nap")
        waiting = asyncio.create_task(api.post("/tasks/web/processes/nap/wait", headers=ns_headers))
        # Meant to have the wait pending before the delete; either order answers the same.
        await asyncio.sleep(0.1)
        deleted = await api.delete("/tasks/web", headers=ns_headers)
        assert deleted.status_code == 200, deleted.text
        answer = await asyncio.wait_for(waiting, 5)
        assert answer.status_code == 200, answer.text
        assert answer.json()["exit_status"] == SIGKILL_STATUS, answer.json()
        assert (await wait_exec(api, ns_headers, "web", "nap")) == answer.json()
        assert leftovers(runtime_settings) == {}

    async def test_exec_never_started_has_no_exit(
        self, api: httpx.AsyncClient, namespace: str, ns_headers: dict[str, str]
    ) -> None:
        """An exec added but never started did not run: deleting the task records no exit
        for it (no made-up status 255), and waiting on it afterwards finds none."""
        await run(api, ns_headers, "web")
        await add_exec(api, ns_headers, "web", "idle", ["true"])
        deleted = await api.delete("/tasks/web", headers=ns_headers)
        assert deleted.status_code == 200, deleted.text
        exits = [e["event"] for e in await task_events(api, namespace) if e["topic"] == "/tasks/exit"]
        assert [e["id"] for e in exits] == ["web"], exits  # an exec's exit carries its exec id as `id`
        problem(await api.post("/tasks/web/processes/idle/wait", headers=ns_headers), 404)

    async def test_bad_body(self, api: httpx.AsyncClient, ns_headers: dict[str, str]) -> None:
        await run(api, ns_headers, "web")
        for case, content, status in REFUSED_EXECS:
            response = await api.post(
                "/tasks/web/processes", content=content, headers={**ns_headers, "Content-Type": "application/json"}
            )
            assert response.status_code == status, (case, response.text)
            problem(response, status)
        assert (await api.get("/tasks/web", headers=ns_headers)).json()["processes"] == []
        for method, path in [("POST", "/tasks/web/processes/bad..id/start"), ("POST", "/tasks/web/processes/-x/wait"),
                             ("POST", "/tasks/web/processes/x_/kill"), ("GET", "/tasks/web/processes/bad..id/logs")]:
            body = {"signal": 9} if path.endswith("/kill") else None
            response = await api.request(method, path, json=body, headers=ns_headers)
            assert "exec id" in problem(response, 400)["detail"], path

    async def test_missing_exec(self, api: httpx.AsyncClient, ns_headers: dict[str, str]) -> None:
        await run(api, ns_headers, "web")
        for method, path, body in [
            ("POST", "/tasks/web/processes/ghost/start", None),
            ("POST", "/tasks/web/processes/ghost/wait", None),
            ("POST", "/tasks/web/processes/ghost/kill", {"signal": 9}),
            ("GET", "/tasks/web/processes/ghost/logs", None),
            ("POST", "/tasks/nothing/processes", exec_body("x", ["true"])),
        ]:
            response = await api.request(method, path, json=body, headers=ns_headers)
            problem(response, 404)


# --- logs ------------------------------------------------------------------------------

COUNT_TO_FIVE = ["sh", "-c", "for i in 1 2 3 4 5; do echo $i; done"]


class TestLogs:
    async def test_stdout_and_stderr(self, api: httpx.AsyncClient, ns_headers: dict[str, str]) -> None:
        # (stdout and stderr are separate pipes: the pauses make their order certain)
        await run(api, ns_headers, "web", ["sh", "-c", "echo one; sleep 0.05; echo two >&2; sleep 0.05; echo three"])
        await wait_exit(api, ns_headers, "web")
        lines = await log_lines(api, ns_headers, "/tasks/web/logs")
        assert [(line["stream"], line["line"]) for line in lines] == [
            ("stdout", "one"), ("stderr", "two"), ("stdout", "three"),
        ]
        assert all(set(line) == {"time", "stream", "line", "partial"} and not line["partial"] for line in lines)
        times = [datetime.fromisoformat(line["time"]) for line in lines]
        assert times == sorted(times) and all(t.tzinfo is not None for t in times)
        # Still readable once the task is deleted.
        await gone(api, ns_headers, "web")
        problem(await api.get("/tasks/web", headers=ns_headers), 404)
        assert await log_lines(api, ns_headers, "/tasks/web/logs") == lines

    async def test_last_line_without_newline(self, api: httpx.AsyncClient, ns_headers: dict[str, str]) -> None:
        """Output that does not end in a newline (conmon writes it as a partial `P` record
        when the task exits) is still part of the log."""
        await run(api, ns_headers, "web", ["sh", "-c", "echo one; sleep 0.05; printf 'no newline'"])
        await wait_exit(api, ns_headers, "web")
        await gone(api, ns_headers, "web")
        assert texts(await log_lines(api, ns_headers, "/tasks/web/logs")) == ["one", "no newline"]

    async def test_long_line_is_joined(self, api: httpx.AsyncClient, ns_headers: dict[str, str]) -> None:
        """conmon splits long lines into partial records; they come back as one line."""
        await run(api, ns_headers, "web", ["sh", "-c", "head -c 50000 /dev/zero | tr '\\0' x; echo; echo end"])
        await wait_exit(api, ns_headers, "web")
        lines = texts(await log_lines(api, ns_headers, "/tasks/web/logs"))
        assert lines == ["x" * 50000, "end"]

    async def test_tail(self, api: httpx.AsyncClient, ns_headers: dict[str, str]) -> None:
        await run(api, ns_headers, "web", COUNT_TO_FIVE)
        await wait_exit(api, ns_headers, "web")
        for tail, expected in [(2, ["4", "5"]), (0, []), (1, ["5"]), (100, ["1", "2", "3", "4", "5"])]:
            assert texts(await log_lines(api, ns_headers, "/tasks/web/logs", tail=tail)) == expected, tail

    async def test_since(self, api: httpx.AsyncClient, ns_headers: dict[str, str]) -> None:
        await run(api, ns_headers, "web", ["sh", "-c", "echo a; sleep 0.2; echo b; sleep 0.2; echo c"])
        await wait_exit(api, ns_headers, "web")
        lines = await log_lines(api, ns_headers, "/tasks/web/logs")
        assert texts(lines) == ["a", "b", "c"]
        after_a = await log_lines(api, ns_headers, "/tasks/web/logs", since=lines[0]["time"])
        assert texts(after_a) == ["b", "c"]
        assert texts(await log_lines(api, ns_headers, "/tasks/web/logs", since=lines[2]["time"])) == []
        assert texts(await log_lines(api, ns_headers, "/tasks/web/logs", since="2000-01-01T00:00:00Z")) == [
            "a", "b", "c"]
        combined = await log_lines(api, ns_headers, "/tasks/web/logs", since=lines[0]["time"], tail=1)
        assert texts(combined) == ["c"]

    async def test_bad_query(self, api: httpx.AsyncClient, ns_headers: dict[str, str]) -> None:
        await run(api, ns_headers, "web", COUNT_TO_FIVE)
        await wait_exit(api, ns_headers, "web")
        refused: list[dict[str, str | int]] = [{"tail": -1}, {"tail": "some"}, {"since": "yesterday"},
                                               {"follow": "perhaps"}]
        for params in refused:
            response = await api.get("/tasks/web/logs", params=params, headers=ns_headers)
            assert response.status_code in (400, 422), (params, response.text)
            problem(response, 400, 422)

    async def test_follow_streams_while_it_runs(
        self, api: httpx.AsyncClient, ns_headers: dict[str, str]
    ) -> None:
        count = 15
        await run(api, ns_headers, "web", ["sh", "-c", f"for i in $(seq 1 {count}); do echo line $i; sleep 0.1; done"])
        received: list[str] = []
        running_at_first_line: bool | None = None
        began = time.monotonic()
        async with api.stream("GET", "/tasks/web/logs", params={"follow": "true"}, headers=ns_headers) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith(NDJSON)
            async with asyncio.timeout(5):
                async for raw in response.aiter_lines():
                    if not raw:
                        continue
                    received.append(json.loads(raw)["line"])
                    if running_at_first_line is None:
                        task = await api.get("/tasks/web", headers=ns_headers)
                        running_at_first_line = task.status_code == 200 and task.json()["status"] == "running"
        ended = time.monotonic() - began
        assert running_at_first_line is True  # lines arrive as they are printed
        assert received == [f"line {i}" for i in range(1, count + 1)]
        assert ended >= 0.1 * (count - 3)  # the stream lasted as long as the task
        # The stream ended because the task did.
        exit_ = await api.post("/tasks/web/wait", headers=ns_headers)
        assert exit_.json()["exit_status"] == 0

    async def test_follow_of_an_exited_task_ends(self, api: httpx.AsyncClient, ns_headers: dict[str, str]) -> None:
        await run(api, ns_headers, "web", COUNT_TO_FIVE)
        await wait_exit(api, ns_headers, "web")
        async with asyncio.timeout(3):
            lines = await log_lines(api, ns_headers, "/tasks/web/logs", follow="true")
        assert texts(lines) == ["1", "2", "3", "4", "5"]

    async def test_follow_as_server_sent_events(self, api: httpx.AsyncClient, ns_headers: dict[str, str]) -> None:
        await run(api, ns_headers, "web", ["sh", "-c", "echo one; sleep 0.2; echo two >&2; sleep 0.2; echo three"])
        frames: list[dict[str, str]] = []
        frame: dict[str, str] = {}
        headers = {**ns_headers, "Accept": "text/event-stream"}
        async with api.stream("GET", "/tasks/web/logs", params={"follow": "true"}, headers=headers) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            async with asyncio.timeout(5):
                async for raw in response.aiter_lines():
                    if raw == "":
                        if frame:
                            frames.append(frame)
                        frame = {}
                    elif not raw.startswith(":"):
                        field, _, value = raw.partition(":")
                        frame[field] = value.strip()
        data = [json.loads(f["data"]) for f in frames if "data" in f]
        assert [(d["stream"], d["line"]) for d in data] == [("stdout", "one"), ("stderr", "two"), ("stdout", "three")]
        assert [f.get("event") for f in frames if "data" in f] == ["stdout", "stderr", "stdout"]

    async def test_new_task_starts_a_fresh_log(self, api: httpx.AsyncClient, ns_headers: dict[str, str]) -> None:
        await make_container(api, ns_headers, "web", ["sh", "-c", "echo x >> /tmp/runs; echo run $(wc -l < /tmp/runs)"])
        for run_number in (1, 2):
            await create(api, ns_headers, "web")
            assert (await api.post("/tasks/web/start", headers=ns_headers)).status_code == 200
            await wait_exit(api, ns_headers, "web")
            await gone(api, ns_headers, "web")
            assert texts(await log_lines(api, ns_headers, "/tasks/web/logs")) == [f"run {run_number}"]

    async def test_deleting_the_container_removes_its_log(
        self, api: httpx.AsyncClient, runtime_settings: Settings, namespace: str, ns_headers: dict[str, str]
    ) -> None:
        await run(api, ns_headers, "web", ["sh", "-c", "echo secret"])
        await wait_exit(api, ns_headers, "web")
        await gone(api, ns_headers, "web")
        assert texts(await log_lines(api, ns_headers, "/tasks/web/logs")) == ["secret"]
        assert (await api.delete("/containers/web", headers=ns_headers)).status_code == 204
        problem(await api.get("/tasks/web/logs", headers=ns_headers), 404)
        assert not (runtime_settings.root / "logs" / namespace / "web.log").exists()
        # A new container of the same id does not inherit it either.
        await make_container(api, ns_headers, "web", ["true"], parent="busybox")
        problem(await api.get("/tasks/web/logs", headers=ns_headers), 404)

    async def test_no_log_before_a_run(self, api: httpx.AsyncClient, ns_headers: dict[str, str]) -> None:
        await make_container(api, ns_headers, "web", ["true"])
        assert "not run" in problem(await api.get("/tasks/web/logs", headers=ns_headers), 404)["detail"]
        problem(await api.get("/tasks/nothing/logs", headers=ns_headers), 404)
        problem(await api.get("/tasks/bad..id/logs", headers=ns_headers), 400)


# --- a task that prints 20 MB ------------------------------------------------------------

TWENTY_MB = 20_000_000
LINE = "0123456789" * 7
FLOOD = ["sh", "-c", f"yes {LINE} | head -c {TWENTY_MB}; echo; echo done"]


@pytest.fixture
async def small_log_client(
    runtime_settings: Settings, busybox_tar: Path, ns_headers: dict[str, str]
) -> AsyncIterator[httpx.AsyncClient]:
    """A daemon whose task logs are capped at 1 MiB (conmon's --log-size-max)."""
    settings = replace(runtime_settings, log_max_bytes=1 << 20)
    async with running_server(settings), uds_client(settings, timeout=60) as client:
        try:
            await import_busybox(client, busybox_tar, ns_headers)
            yield client
        finally:
            await delete_all_tasks(client)


class TestBoundedLog:
    async def test_log_stays_small_and_reads_in_little_memory(
        self,
        small_log_client: httpx.AsyncClient,
        runtime_settings: Settings,
        namespace: str,
        ns_headers: dict[str, str],
    ) -> None:
        client = small_log_client
        log_file = runtime_settings.root / "logs" / namespace / "flood.log"
        await run(client, ns_headers, "flood", FLOOD)
        largest = 0
        waiting = asyncio.create_task(client.post("/tasks/flood/wait", headers=ns_headers))
        while not waiting.done():
            try:
                largest = max(largest, log_file.stat().st_size)
            except FileNotFoundError:
                pass
            await asyncio.sleep(0.005)
        assert (await waiting).json()["exit_status"] == 0
        largest = max(largest, log_file.stat().st_size)
        assert largest < 2 << 20, f"the log grew to {largest} bytes"

        before = vm_rss_kib()
        peak = before
        count = odd = 0
        last: dict[str, Any] = {}
        async with client.stream("GET", "/tasks/flood/logs", headers=ns_headers) as response:
            assert response.status_code == 200
            async for raw in response.aiter_lines():
                if raw:
                    last = json.loads(raw)
                    count += 1
                    odd += last["line"] != LINE
                    if count % 1000 == 0:
                        peak = max(peak, vm_rss_kib())
        peak = max(peak, vm_rss_kib())
        assert last["line"] == "done"
        assert 0 < count < TWENTY_MB // len(LINE) // 10  # a bounded part of what was printed
        # Whole lines: at most a fragment at the cut, the one `head` cut short, and "done".
        assert odd <= 3, f"{odd} of {count} lines are not the line printed"
        assert peak - before < 8 * 1024, f"RSS grew by {peak - before} KiB while streaming the log"

    async def test_follow_across_rotation_gets_the_end(
        self, small_log_client: httpx.AsyncClient, ns_headers: dict[str, str]
    ) -> None:
        """Following a log that conmon rotates (--log-size-max) still delivers the last lines."""
        client = small_log_client
        await make_container(client, ns_headers, "flood", FLOOD)
        await create(client, ns_headers, "flood")
        last: dict[str, Any] = {}
        async with client.stream("GET", "/tasks/flood/logs", params={"follow": "true"}, headers=ns_headers) as response:
            assert response.status_code == 200
            assert (await client.post("/tasks/flood/start", headers=ns_headers)).status_code == 200
            async with asyncio.timeout(20):
                async for raw in response.aiter_lines():
                    if raw:
                        last = json.loads(raw)
        assert (await wait_exit(client, ns_headers, "flood"))["exit_status"] == 0
        assert last.get("line") == "done", last

