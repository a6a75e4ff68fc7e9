"""Terminals, stdin and attach over WebSocket (issue 16), against real conmon, runc,
busybox and a real uvicorn on a unix socket, with a real WebSocket client (`websockets`):
typing into a terminal, resizing it, piping stdin, exec -it, several clients, detach and
re-attach, bad input before and after the upgrade, a client that reads nothing, and
attach/detach cycles that leave no fd behind.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect, unix_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from app.bearer import K8S_TOKEN_SUBPROTOCOL
from app.config import Settings
from tests.api.served import serving, stop
from tests.conftest import conmon_pids_under, leftovers, wait_for
from tests.runtime.conftest import import_busybox, make_container
from tests.runtime.daemon import daemon_in
from tests.runtime.tasks import PROBLEM, log_lines, no_tasks, problem, texts, wait_exec

pytestmark = [pytest.mark.anyio, pytest.mark.runtime]

V5 = "v5.channel.k8s.io"
V4 = "v4.channel.k8s.io"
STDIN, STDOUT, STDERR, ERROR, RESIZE, CLOSE = 0, 1, 2, 3, 4, 255
SUCCESS = {"metadata": {}, "status": "Success"}


@pytest.fixture
async def api(runtime_client: httpx.AsyncClient, busybox_tar: Path, ns_headers: dict[str, str]) -> httpx.AsyncClient:
    await import_busybox(runtime_client, busybox_tar, ns_headers)
    return runtime_client


@asynccontextmanager
async def attached(
    settings: Settings, namespace: str, path: str, protocols: tuple[str, ...] = (V5,), **headers: str
) -> AsyncIterator[ClientConnection]:
    """A WebSocket to `path` on the daemon's unix socket."""
    async with unix_connect(
        str(settings.state / "cargohold.sock"),
        uri=f"ws://cargohold{path}",
        subprotocols=list(protocols),
        additional_headers={"Cargohold-Namespace": namespace, **headers},
        max_size=None,
        open_timeout=10,
    ) as ws:
        yield ws


class Reader:
    """What one client has read, by channel."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.data: dict[int, bytes] = {STDOUT: b"", STDERR: b"", ERROR: b""}

    async def until(self, channel: int, needle: bytes, within: float = 10) -> bytes:
        """Read until `needle` is in what `channel` carried; all it carried."""
        async with asyncio.timeout(within):
            while needle not in self.data[channel]:
                await self.read_one()
        return self.data[channel]

    async def read_one(self) -> None:
        message = await self.ws.recv()
        assert isinstance(message, bytes), message
        self.data[message[0]] = self.data.get(message[0], b"") + message[1:]

    async def status(self, within: float = 15) -> dict[str, Any]:
        """The status message (channel 3), then the close."""
        async with asyncio.timeout(within):
            while not self.data[ERROR]:
                await self.read_one()
            with pytest.raises(ConnectionClosed):
                while True:
                    await self.read_one()
        document: dict[str, Any] = json.loads(self.data[ERROR])
        return document


async def send(ws: ClientConnection, channel: int, data: bytes) -> None:
    await ws.send(bytes((channel,)) + data)


async def terminal_task(
    api: httpx.AsyncClient, headers: dict[str, str], task_id: str, args: list[str] | None = None, **body: Any
) -> None:
    await make_container(api, headers, task_id, args or ["sh"])
    created = await api.post("/tasks", json={"container_id": task_id, "terminal": True, "stdin": True, **body},
                             headers=headers)
    assert created.status_code == 201, created.text


async def start(api: httpx.AsyncClient, headers: dict[str, str], task_id: str) -> None:
    started = await api.post(f"/tasks/{task_id}/start", headers=headers)
    assert started.status_code == 200, started.text


def refused(error: pytest.ExceptionInfo[InvalidStatus], status: int) -> dict[str, Any]:
    response = error.value.response
    assert response.status_code == status, (response.status_code, response.body)
    assert response.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = json.loads(response.body or b"")
    assert body["status"] == status and body["detail"]
    return body


class TestTerminal:
    async def test_type_and_resize(
        self, api: httpx.AsyncClient, runtime_settings: Settings, namespace: str, ns_headers: dict[str, str]
    ) -> None:
        await terminal_task(api, ns_headers, "tty")
        async with attached(runtime_settings, namespace, "/tasks/tty/attach") as ws:
            assert ws.subprotocol == V5
            await start(api, ns_headers, "tty")
            reader = Reader(ws)
            await send(ws, STDIN, b"echo $((6*7))\n")
            assert b"42\r\n" in await reader.until(STDOUT, b"42\r\n")
            await send(ws, RESIZE, json.dumps({"Width": 123, "Height": 45}).encode())
            await send(ws, STDIN, b"stty size\n")
            await reader.until(STDOUT, b"45 123\r\n")
            resized = await api.post("/tasks/tty/resize", json={"width": 77, "height": 22}, headers=ns_headers)
            assert resized.status_code == 204, resized.text
            await send(ws, STDIN, b"stty size\n")
            await reader.until(STDOUT, b"22 77\r\n")
            await send(ws, STDIN, b"exit 5\n")
            status = await reader.status()
        assert status["status"] == "Failure" and status["reason"] == "NonZeroExitCode"
        assert status["details"]["causes"] == [{"reason": "ExitCode", "message": "5"}]
        # The terminal's output went to the log as well.
        lines = texts(await log_lines(api, ns_headers, "/tasks/tty/logs"))
        assert any("42" == line.strip() for line in lines), lines

    async def test_exec_it_exits_with_its_status_and_the_task_runs_on(
        self, api: httpx.AsyncClient, runtime_settings: Settings, namespace: str, ns_headers: dict[str, str]
    ) -> None:
        await make_container(api, ns_headers, "web", ["sleep", "1000"])
        assert (await api.post("/tasks", json={"container_id": "web"}, headers=ns_headers)).status_code == 201
        await start(api, ns_headers, "web")
        added = await api.post(
            "/tasks/web/processes",
            json={"exec_id": "shell", "process": {"args": ["sh"], "terminal": True}, "stdin": True},
            headers=ns_headers,
        )
        assert added.status_code == 201, added.text
        assert (await api.post("/tasks/web/processes/shell/start", headers=ns_headers)).status_code == 200
        async with attached(runtime_settings, namespace, "/tasks/web/processes/shell/attach", (V4,)) as ws:
            assert ws.subprotocol == V4
            reader = Reader(ws)
            await send(ws, STDIN, b"tty; echo $((6*7))\n")
            output = await reader.until(STDOUT, b"42\r\n")
            assert b"/dev/pts/" in output
            resized = await api.post(
                "/tasks/web/processes/shell/resize", json={"width": 90, "height": 30}, headers=ns_headers
            )
            assert resized.status_code == 204, resized.text
            await send(ws, STDIN, b"stty size\n")
            await reader.until(STDOUT, b"30 90\r\n")
            await send(ws, STDIN, b"exit 3\n")
            status = await reader.status()
        assert status["details"]["causes"] == [{"reason": "ExitCode", "message": "3"}]
        assert (await wait_exec(api, ns_headers, "web", "shell"))["exit_status"] == 3
        task = await api.get("/tasks/web", headers=ns_headers)
        assert task.status_code == 200 and task.json()["status"] == "running"

    async def test_two_clients_detach_and_reattach(
        self, api: httpx.AsyncClient, runtime_settings: Settings, namespace: str, ns_headers: dict[str, str]
    ) -> None:
        await terminal_task(api, ns_headers, "tty")
        await start(api, ns_headers, "tty")
        path = "/tasks/tty/attach"
        async with (
            attached(runtime_settings, namespace, path) as one,
            attached(runtime_settings, namespace, path) as two,
        ):
            first, second = Reader(one), Reader(two)
            await send(one, STDIN, b"echo one-$((1+1))\n")
            await first.until(STDOUT, b"one-2\r\n")
            await second.until(STDOUT, b"one-2\r\n")
            await send(two, STDIN, b"echo two-$((2+1))\n")
            await first.until(STDOUT, b"two-3\r\n")
            await second.until(STDOUT, b"two-3\r\n")
            # A terminal's stdin is everyone's: one client closing its input ends only its own.
            await one.send(bytes((CLOSE, STDIN)))
            await send(two, STDIN, b"echo open-$((3+3))\n")
            await first.until(STDOUT, b"open-6\r\n")
        # Nobody attached: the shell runs on, and what it prints now is in the log.
        assert (await api.get("/tasks/tty", headers=ns_headers)).json()["status"] == "running"
        async with attached(runtime_settings, namespace, path) as again:
            reader = Reader(again)
            await send(again, STDIN, b"(sleep 0.3; echo while-away-$((3+4))) &\n")
        await asyncio.sleep(0.6)

        async def logged() -> bool:
            return any("while-away-7" in line for line in texts(await log_lines(api, ns_headers, "/tasks/tty/logs")))

        await wait_for(logged, "output produced while detached is in the log")
        async with attached(runtime_settings, namespace, path) as again:
            reader = Reader(again)
            await send(again, STDIN, b"echo back-$((5+5))\n")
            await reader.until(STDOUT, b"back-10\r\n")
            assert b"while-away-7" not in reader.data[STDOUT]  # what nobody saw is the log's, not replayed


class TestStdin:
    async def test_cat_echoes_stdin_and_closing_it_ends_cat(
        self, api: httpx.AsyncClient, runtime_settings: Settings, namespace: str, ns_headers: dict[str, str]
    ) -> None:
        await make_container(api, ns_headers, "cat", ["sh", "-c", "echo to-stderr >&2; cat; echo cat-done >&2"])
        created = await api.post("/tasks", json={"container_id": "cat", "stdin": True}, headers=ns_headers)
        assert created.status_code == 201, created.text
        async with attached(runtime_settings, namespace, "/tasks/cat/attach") as ws:
            await start(api, ns_headers, "cat")
            reader = Reader(ws)
            assert await reader.until(STDERR, b"to-stderr\n") == b"to-stderr\n"
            await send(ws, STDIN, b"hello through cat\n")
            assert await reader.until(STDOUT, b"cat\n") == b"hello through cat\n"
            big = os.urandom(200_000).hex().encode()  # more than one of conmon's 32 KiB packets
            await send(ws, STDIN, big)
            await reader.until(STDOUT, big[-64:], within=20)
            assert reader.data[STDOUT] == b"hello through cat\n" + big
            await ws.send(bytes((CLOSE, STDIN)))  # v5: EOF to cat
            status = await reader.status()
        assert status == SUCCESS
        assert reader.data[STDERR] == b"to-stderr\ncat-done\n"

    async def test_exec_stdin_closes_when_the_last_client_detaches(
        self, api: httpx.AsyncClient, runtime_settings: Settings, namespace: str, ns_headers: dict[str, str]
    ) -> None:
        """Without a terminal, stdin is "once" (Docker's and Kubernetes' stdinOnce): v4 has
        no close message, so leaving closes it."""
        await make_container(api, ns_headers, "web", ["sleep", "1000"])
        assert (await api.post("/tasks", json={"container_id": "web"}, headers=ns_headers)).status_code == 201
        await start(api, ns_headers, "web")
        added = await api.post(
            "/tasks/web/processes", json={"exec_id": "cat", "process": {"args": ["cat"]}, "stdin": True},
            headers=ns_headers,
        )
        assert added.status_code == 201, added.text
        assert (await api.post("/tasks/web/processes/cat/start", headers=ns_headers)).status_code == 200
        async with attached(runtime_settings, namespace, "/tasks/web/processes/cat/attach", (V4,)) as ws:
            await send(ws, STDIN, b"piped\n")
            assert await Reader(ws).until(STDOUT, b"piped\n") == b"piped\n"
        assert (await wait_exec(api, ns_headers, "web", "cat"))["exit_status"] == 0
        assert (await api.get("/tasks/web", headers=ns_headers)).json()["status"] == "running"

    async def test_without_stdin_input_is_refused_and_the_process_runs_on(
        self, api: httpx.AsyncClient, runtime_settings: Settings, namespace: str, ns_headers: dict[str, str]
    ) -> None:
        await make_container(api, ns_headers, "quiet", ["sleep", "1000"])
        assert (await api.post("/tasks", json={"container_id": "quiet"}, headers=ns_headers)).status_code == 201
        await start(api, ns_headers, "quiet")
        with pytest.raises(InvalidStatus) as error:
            async with attached(runtime_settings, namespace, "/tasks/quiet/attach?stdin=true"):
                pass
        assert "stdin: true" in refused(error, 409)["detail"]
        async with attached(runtime_settings, namespace, "/tasks/quiet/attach") as ws:
            await send(ws, STDIN, b"nobody reads this\n")
            status = await Reader(ws).status()
            assert ws.close_code == 1008
        assert status["status"] == "Failure" and "no stdin" in status["message"]
        resize = await api.post("/tasks/quiet/resize", json={"width": 80, "height": 24}, headers=ns_headers)
        assert "no terminal" in problem(resize, 409)["detail"]
        assert (await api.get("/tasks/quiet", headers=ns_headers)).json()["status"] == "running"


class TestRefused:
    async def test_before_the_upgrade(
        self, api: httpx.AsyncClient, runtime_settings: Settings, namespace: str, ns_headers: dict[str, str]
    ) -> None:
        with pytest.raises(InvalidStatus) as error:
            async with attached(runtime_settings, namespace, "/tasks/nope/attach"):
                pass
        assert "nope" in refused(error, 404)["detail"]
        await terminal_task(api, ns_headers, "tty", ["sh", "-c", "exit 0"])
        await start(api, ns_headers, "tty")
        assert (await api.post("/tasks/tty/wait", headers=ns_headers)).json()["exit_status"] == 0
        with pytest.raises(InvalidStatus) as error:
            async with attached(runtime_settings, namespace, "/tasks/tty/attach"):
                pass
        assert "exited" in refused(error, 409)["detail"]
        resize = await api.post("/tasks/tty/resize", json={"width": 80, "height": 24}, headers=ns_headers)
        assert "exited" in problem(resize, 409)["detail"]

        await terminal_task(api, ns_headers, "sh")
        await start(api, ns_headers, "sh")
        for path, protocols, headers, status in [
            ("/tasks/sh/attach", ("v3.channel.k8s.io",), {}, 400),
            ("/tasks/sh/attach", (V5,), {"Origin": "http://evil.example"}, 403),
            ("/tasks/sh/attach", (V5,), {"Origin": "null"}, 403),
            ("/tasks/sh/attach?stdin=maybe", (V5,), {}, 400),
            ("/tasks/sh..x/attach", (V5,), {}, 400),
            ("/tasks/sh/processes/none/attach", (V5,), {}, 404),
        ]:
            with pytest.raises(InvalidStatus) as error:
                async with attached(runtime_settings, namespace, path, protocols, **headers):
                    pass
            refused(error, status)
        # The daemon's own origin may attach (its web view).
        async with attached(runtime_settings, namespace, "/tasks/sh/attach", Origin="http://cargohold") as ws:
            await send(ws, STDIN, b"echo same-$((1+2))\n")
            await Reader(ws).until(STDOUT, b"same-3\r\n")
        # An exec process not started yet is no refusal: attach, then start, and its first output is there.
        added = await api.post("/tasks/sh/processes", json={"exec_id": "later", "process": {
            "args": ["echo", "early"]}}, headers=ns_headers)
        assert added.status_code == 201
        async with attached(runtime_settings, namespace, "/tasks/sh/processes/later/attach") as ws:
            started = await api.post("/tasks/sh/processes/later/start", headers=ns_headers)
            assert started.status_code == 200, started.text
            reader = Reader(ws)
            assert (await reader.status())["status"] == "Success"
            assert reader.data[STDOUT] == b"early\n"
        # One attached to and left, never started: it does not run, and its waiting conmon
        # goes with the task (runtime_settings' leftovers check: no conmon is left).
        added = await api.post("/tasks/sh/processes", json={"exec_id": "never", "process": {
            "args": ["touch", "/ran"]}}, headers=ns_headers)
        assert added.status_code == 201
        async with attached(runtime_settings, namespace, "/tasks/sh/processes/never/attach"):
            pass
        unstarted = await api.post("/tasks/sh/processes/never/kill", json={"signal": 9}, headers=ns_headers)
        assert "not been started" in problem(unstarted, 409)["detail"]
        for body in ({"width": 0, "height": 10}, {"width": 10}, {"width": "wide", "height": 10},
                     {"width": 1001, "height": 10}):
            problem(await api.post("/tasks/sh/resize", json=body, headers=ns_headers), 422)
        problem(await api.post("/tasks/nope/resize", json={"width": 8, "height": 8}, headers=ns_headers), 404)
        # The task goes (the daemon still running): "never"'s waiting conmon with it.
        assert (await api.delete("/tasks/sh", headers=ns_headers)).status_code == 200
        assert conmon_pids_under(runtime_settings.state) == []

    @pytest.mark.parametrize(
        "message, code, words",
        [
            pytest.param(bytes((9,)) + b"x", 1008, "channel 9", id="unknown-channel"),
            pytest.param(bytes((STDOUT,)) + b"x", 1008, "channel 1", id="output-channel"),
            pytest.param(b"", 1008, "empty", id="empty"),
            pytest.param(bytes((RESIZE,)) + b'{"Width": -1, "Height": 5}', 1008, "width", id="negative-resize"),
            pytest.param(bytes((RESIZE,)) + b'{"Width": 80}', 1008, "height", id="half-resize"),
            pytest.param(bytes((RESIZE,)) + b"80x24", 1008, "JSON", id="resize-not-json"),
            pytest.param(bytes((CLOSE, STDOUT)), 1008, "only stdin", id="close-stdout"),
            pytest.param("text", 1003, "binary", id="text-message"),
            pytest.param(bytes((STDIN,)) + b"x" * (1024 * 1024 + 1), 1009, "over the limit", id="too-big"),
        ],
    )
    async def test_after_the_upgrade(
        self, api: httpx.AsyncClient, runtime_settings: Settings, namespace: str, ns_headers: dict[str, str],
        message: bytes | str, code: int, words: str,
    ) -> None:
        await terminal_task(api, ns_headers, "tty")
        await start(api, ns_headers, "tty")
        async with attached(runtime_settings, namespace, "/tasks/tty/attach") as ws:
            await ws.send(message)
            status = await Reader(ws).status()
            assert ws.close_code == code
        assert status["status"] == "Failure" and words in status["message"], status
        # The process was not disturbed: another client still talks to it.
        async with attached(runtime_settings, namespace, "/tasks/tty/attach") as ws:
            await send(ws, STDIN, b"echo fine-$((2*4))\n")
            await Reader(ws).until(STDOUT, b"fine-8\r\n")


class TestBounds:
    async def test_a_client_that_reads_nothing_is_dropped_and_memory_stays_bounded(
        self, api: httpx.AsyncClient, runtime_settings: Settings, namespace: str, ns_headers: dict[str, str]
    ) -> None:
        line = b"0123456789" * 10
        await make_container(api, ns_headers, "flood", ["sh", "-c", "read go; yes " + line.decode()])
        created = await api.post("/tasks", json={"container_id": "flood", "stdin": True}, headers=ns_headers)
        assert created.status_code == 201, created.text
        await start(api, ns_headers, "flood")
        socket = str(runtime_settings.state / "cargohold.sock")
        # max_queue=1: the client library stops reading the socket once one message waits.
        async with unix_connect(
            socket, uri="ws://cargohold/tasks/flood/attach?stdin=false", subprotocols=[V5],
            additional_headers={"Cargohold-Namespace": namespace}, max_queue=1, max_size=None,
        ) as frozen, attached(runtime_settings, namespace, "/tasks/flood/attach") as reading:
            before = vm_rss_kib()
            await send(reading, STDIN, b"go\n")
            reader = Reader(reading)

            async def received_within(seconds: float) -> int:
                received = 0
                with suppress(TimeoutError):
                    async with asyncio.timeout(seconds):
                        while True:
                            await reader.read_one()
                            received += len(reader.data[STDOUT])
                            reader.data[STDOUT] = b""
                return received

            # The frozen client holds the output up for the stall timeout, then is dropped.
            assert await received_within(runtime_settings.attach_stall_seconds + 3) > 0
            assert await received_within(1) > 1024 * 1024, "the reading client carries on at speed"
            grown = vm_rss_kib() - before
            assert grown < 48 * 1024, f"the daemon grew by {grown} KiB while a client read nothing"
            with pytest.raises(ConnectionClosed) as closed:
                async with asyncio.timeout(20):
                    while True:  # what the sockets buffered, then the end
                        await frozen.recv()
            assert closed.value.rcvd is None or closed.value.rcvd.code == 1008
        assert (await api.get("/tasks/flood", headers=ns_headers)).json()["status"] == "running"

    async def test_attach_detach_cycles_leave_no_fd(
        self, api: httpx.AsyncClient, runtime_settings: Settings, namespace: str, ns_headers: dict[str, str]
    ) -> None:
        await terminal_task(api, ns_headers, "tty")
        await start(api, ns_headers, "tty")

        async def cycle(number: int) -> None:
            async with attached(runtime_settings, namespace, "/tasks/tty/attach") as ws:
                await send(ws, STDIN, f"echo cycle-$(({number}+1000))\n".encode())
                await Reader(ws).until(STDOUT, f"cycle-{number + 1000}\r\n".encode())

        def fds() -> int:
            # The daemon serves in this process. The monitor's cgroup files open as it
            # polls, in its own time: they are not attach's.
            return len([fd for fd in os.listdir("/proc/self/fd") if not _target(fd).startswith("/sys/fs/cgroup/")])

        await cycle(0)
        baseline = fds()
        for number in range(1, 51):
            await cycle(number)
        await wait_for(
            lambda: fds() <= baseline,
            f"the fd count is back to {baseline} (it is {fds()}: {sorted(map(_target, os.listdir('/proc/self/fd')))})",
        )


def _target(fd: str) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


def vm_rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


class TestRestart:
    @pytest.mark.parametrize(
        "how", [pytest.param(signal.SIGTERM, id="sigterm"), pytest.param(signal.SIGKILL, id="kill-9")]
    )
    async def test_attach_again_after_a_restart(
        self, tmp_path: Path, busybox_tar: Path, namespace: str, ns_headers: dict[str, str], how: signal.Signals
    ) -> None:
        async with daemon_in(tmp_path) as daemon:
            client = await daemon.start()
            await import_busybox(client, busybox_tar, ns_headers)
            await terminal_task(client, ns_headers, "tty")
            await start(client, ns_headers, "tty")
            socket = str(daemon.socket)

            async def talk(number: int) -> None:
                async with unix_connect(
                    socket, uri="ws://cargohold/tasks/tty/attach", subprotocols=[V5],
                    additional_headers=ns_headers,
                ) as ws:
                    await send(ws, STDIN, f"echo run-$(({number}*2))\n".encode())
                    await Reader(ws).until(STDOUT, f"run-{number * 2}\r\n".encode())

            await talk(1)
            async with unix_connect(
                socket, uri="ws://cargohold/tasks/tty/attach", subprotocols=[V5],
                additional_headers=ns_headers,
            ) as held:
                await daemon.stop(how)  # while a client is attached
                with pytest.raises(ConnectionClosed):
                    async with asyncio.timeout(10):
                        await held.recv()
            client = await daemon.start()
            await talk(2)  # conmon kept the terminal, and its stdin open
            async with unix_connect(
                socket, uri="ws://cargohold/tasks/tty/attach", subprotocols=[V5],
                additional_headers=ns_headers,
            ) as ws:
                await send(ws, STDIN, b"exit 7\n")
                status = await Reader(ws).status()
            assert status["details"]["causes"] == [{"reason": "ExitCode", "message": "7"}]
            await wait_for(lambda: no_tasks(client, ns_headers), "the task is torn down")
            await daemon.stop(signal.SIGTERM)
            assert leftovers(daemon.settings) == {}


class TestOverTCP:
    async def test_needs_the_token_and_the_daemons_own_origin(
        self, tmp_path: Path, busybox_tar: Path, namespace: str, ns_headers: dict[str, str]
    ) -> None:
        async with serving(tmp_path) as daemon:
            async with daemon.unix() as client:
                await import_busybox(client, busybox_tar, ns_headers)
                await terminal_task(client, ns_headers, "tty")
                await start(client, ns_headers, "tty")
            token = (daemon.state / "token").read_text().strip()
            assert daemon.port is not None
            uri = f"ws://127.0.0.1:{daemon.port}/tasks/tty/attach"
            in_subprotocol = K8S_TOKEN_SUBPROTOCOL + base64.urlsafe_b64encode(token.encode()).decode().rstrip("=")

            async def talk(number: int, protocols: list[str], **headers: str) -> None:
                async with connect(uri, subprotocols=protocols,  # type: ignore[arg-type]
                                   additional_headers={**ns_headers, **headers}) as ws:
                    assert ws.subprotocol == V5  # never the token's subprotocol
                    await send(ws, STDIN, f"echo tcp-$(({number}+100))\n".encode())
                    await Reader(ws).until(STDOUT, f"tcp-{number + 100}\r\n".encode())

            for protocols, headers, status in [
                ([V5], {}, 401),
                ([V5], {"Authorization": "Bearer not-the-token-at-all"}, 401),
                ([V5, K8S_TOKEN_SUBPROTOCOL + "bm90LXRoZS10b2tlbg"], {}, 401),
                ([V5], {"Authorization": f"Bearer {token}", "Origin": "http://evil.example"}, 403),
                ([V5, in_subprotocol], {"Origin": f"http://127.0.0.1:{daemon.port + 1}"}, 403),
            ]:
                with pytest.raises(InvalidStatus) as error:
                    async with connect(uri, subprotocols=protocols,  # type: ignore[arg-type]
                                       additional_headers={**ns_headers, **headers}):
                        pass
                refused(error, status)
            await talk(1, [V5], Authorization=f"Bearer {token}")
            # A browser: the token as a subprotocol, from a page the daemon served.
            await talk(2, [in_subprotocol, V5], Origin=f"http://127.0.0.1:{daemon.port}")
            async with daemon.unix() as client:
                assert (await client.delete("/tasks/tty", headers=ns_headers)).status_code == 200
            await stop(daemon.process)
            assert leftovers(Settings(root=daemon.root, state=daemon.state, listeners=())) == {}
