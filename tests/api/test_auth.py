"""Bearer-token rules: the token itself (never empty or short, written atomically), the
WebSocket handshake authenticated as HTTP is (header or Kubernetes' subprotocol, refused
before accept), listeners told apart by how they were bound, and `--listen` replacing
only a stale socket."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Literal

import httpx
import pytest
import uvicorn
import websockets
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket
from websockets.asyncio.client import connect, unix_connect

from app.api.middleware import LISTENER_KEY, ListenerMark, TokenAuthMiddleware, came_over_unix
from app.config import Listener, Settings
from app.main import MIN_TOKEN_LENGTH, create_app, load_token
from app.ondisk import StartupError
from tests.api.served import (
    CARGOHOLD,
    mode_of,
    serving,
)
from tests.conftest import free_port, wait_for

pytestmark = pytest.mark.anyio

TOKEN = "a-token-of-32-characters-exactly"
K8S = "base64url.bearer.authorization.k8s.io."


def k8s_subprotocol(token: str) -> str:
    return K8S + base64.urlsafe_b64encode(token.encode()).decode().rstrip("=")


# --- The token -------------------------------------------------------------------------


def tcp_settings(tmp_path: Path, **changes: object) -> Settings:
    settings = Settings(root=tmp_path / "root", state=tmp_path / "state", listeners=(Listener.parse("tcp://127.0.0.1:1"),))
    return replace(settings, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "content",
    [pytest.param("", id="empty"), pytest.param("\n  \n", id="blank"), pytest.param("short-token\n", id="short")],
)
def test_a_token_file_empty_or_short_is_refused(tmp_path: Path, content: str) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(content)
    with pytest.raises(StartupError, match=f"--token-file {token_file}.*at least {MIN_TOKEN_LENGTH} characters"):
        create_app(tcp_settings(tmp_path, token_file=token_file))
    assert not (tmp_path / "state" / "token").exists(), "no token is generated instead"


def test_a_token_file_of_16_characters_is_enough(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("x" * MIN_TOKEN_LENGTH + "\n")
    assert load_token(tcp_settings(tmp_path, token_file=token_file)) == "x" * MIN_TOKEN_LENGTH


def test_the_generated_token_is_written_whole_with_mode_0600_whatever_the_umask(tmp_path: Path) -> None:
    settings = tcp_settings(tmp_path)
    old = os.umask(0)
    try:
        token = load_token(settings)
    finally:
        os.umask(old)
    path = settings.state / "token"
    assert path.read_text() == token + "\n" and len(token) >= 43
    assert mode_of(path) == 0o600 and mode_of(settings.state) == 0o711
    assert sorted(p.name for p in settings.state.iterdir()) == ["token"], "no temp file is left"
    assert load_token(settings) == token, "the next start reads the same token"


def test_an_empty_generated_token_is_replaced(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """What an interrupted start of an older version left: an empty <state>/token. It
    disabled auth; now it is replaced by a fresh token, with a warning."""
    settings = tcp_settings(tmp_path)
    settings.state.mkdir(parents=True)
    (settings.state / "token").write_text("")
    token = load_token(settings)
    assert len(token) >= 43 and (settings.state / "token").read_text() == token + "\n"
    assert mode_of(settings.state / "token") == 0o600
    assert "was empty" in caplog.text


def test_a_short_state_token_is_refused_not_replaced(tmp_path: Path) -> None:
    settings = tcp_settings(tmp_path)
    settings.state.mkdir(parents=True)
    (settings.state / "token").write_text("hunter2\n")
    with pytest.raises(StartupError, match="delete it to have a new one generated"):
        load_token(settings)
    assert (settings.state / "token").read_text() == "hunter2\n"


def test_a_state_token_that_is_a_symlink_is_refused(tmp_path: Path) -> None:
    settings = tcp_settings(tmp_path)
    settings.state.mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("x" * 40)
    (settings.state / "token").symlink_to(elsewhere)
    with pytest.raises(StartupError, match="symbolic link"):
        load_token(settings)


async def test_cargohold_serve_refuses_an_empty_token_file(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("")
    process = await asyncio.create_subprocess_exec(
        *CARGOHOLD, "serve", "--root", str(tmp_path / "root"), "--state", str(tmp_path / "state"),
        "--listen", f"tcp://127.0.0.1:{free_port()}", "--token-file", str(token_file),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    async with asyncio.timeout(30):
        output, _ = await process.communicate()
    assert process.returncode == 1, output
    assert f"--token-file {token_file} is empty" in output.decode()


# --- WebSockets behind the middleware ---------------------------------------------------


async def echo(websocket: WebSocket) -> None:
    """Accepts with the first subprotocol offered, then says what it was offered."""
    offered = websocket.scope.get("subprotocols", [])
    await websocket.accept(subprotocol=offered[0] if offered else None)
    await websocket.send_json({"subprotocols": offered, "unix": came_over_unix(websocket.scope)})
    await websocket.close()


async def version(request: Request) -> JSONResponse:
    return JSONResponse({"unix": came_over_unix(request.scope)})


def guarded(kind: Literal["unix", "tcp"]) -> ListenerMark:
    app = Starlette(routes=[WebSocketRoute("/attach", echo), Route("/version", version)])
    return ListenerMark(TokenAuthMiddleware(app, TOKEN, public_paths={"/healthz"}), kind)


@asynccontextmanager
async def uvicorn_serving(app: ListenerMark, **where: object) -> AsyncIterator[None]:
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", **where))  # type: ignore[arg-type]
    serving_task = asyncio.create_task(server.serve())
    try:
        await wait_for(lambda: server.started or serving_task.done(), "uvicorn has started")
        yield
    finally:
        server.should_exit = True
        await serving_task


@pytest.fixture
async def tcp_port() -> AsyncIterator[int]:
    port = free_port()
    async with uvicorn_serving(guarded("tcp"), host="127.0.0.1", port=port):
        yield port


class TestWebSocketOverTCP:
    @pytest.mark.parametrize(
        "headers",
        [
            pytest.param({}, id="no-token"),
            pytest.param({"Authorization": "Bearer wrong-token-wrong-token"}, id="wrong-header"),
            pytest.param({"Sec-WebSocket-Protocol": k8s_subprotocol("wrong-token-wrong")}, id="wrong-subprotocol"),
            pytest.param({"Sec-WebSocket-Protocol": K8S + "!!not-base64!!"}, id="bad-base64"),
        ],
    )
    async def test_refused_with_401_before_accept(self, tcp_port: int, headers: dict[str, str]) -> None:
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with connect(f"ws://127.0.0.1:{tcp_port}/attach", additional_headers=headers):
                pass
        response = refused.value.response
        assert response.status_code == 401
        assert response.headers["Content-Type"] == "application/problem+json"
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert b"unauthenticated" in response.body

    async def test_the_header_token_is_accepted(self, tcp_port: int) -> None:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with connect(f"ws://127.0.0.1:{tcp_port}/attach", additional_headers=headers) as ws:
            assert await ws.recv() == '{"subprotocols":[],"unix":false}'

    async def test_the_k8s_subprotocol_token_is_accepted_and_never_reaches_the_app(self, tcp_port: int) -> None:
        subprotocols = [k8s_subprotocol(TOKEN), "v5.channel.k8s.io"]
        async with connect(
            f"ws://127.0.0.1:{tcp_port}/attach", subprotocols=subprotocols  # type: ignore[arg-type]
        ) as ws:
            assert ws.subprotocol == "v5.channel.k8s.io", "the app chose among what is left"
            assert await ws.recv() == '{"subprotocols":["v5.channel.k8s.io"],"unix":false}'

    async def test_http_needs_the_token_as_before(self, tcp_port: int) -> None:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{tcp_port}") as client:
            assert (await client.get("/version")).status_code == 401
            right = await client.get("/version", headers={"Authorization": f"Bearer {TOKEN}"})
            assert right.json() == {"unix": False}


async def test_a_websocket_over_the_unix_socket_needs_no_token(tmp_path: Path) -> None:
    sock = tmp_path / "ws.sock"
    async with uvicorn_serving(guarded("unix"), uds=str(sock)), unix_connect(str(sock), "ws://cargohold/attach") as ws:
        assert await ws.recv() == '{"subprotocols":[],"unix":true}'


async def test_an_unmarked_scope_is_not_a_unix_one(tmp_path: Path) -> None:
    """A server that does not mark its listener (here uvicorn on a unix socket, unwrapped)
    is not trusted, whatever address it reports."""
    sock = tmp_path / "plain.sock"
    app = TokenAuthMiddleware(Starlette(routes=[Route("/version", version)]), TOKEN, public_paths=())
    async with uvicorn_serving(app, uds=str(sock)):  # type: ignore[arg-type]
        transport = httpx.AsyncHTTPTransport(uds=str(sock))
        async with httpx.AsyncClient(transport=transport, base_url="http://cargohold") as client:
            assert (await client.get("/version")).status_code == 401
            right = await client.get("/version", headers={"Authorization": f"Bearer {TOKEN}"})
            assert right.json() == {"unix": False}


async def test_cargohold_serve_marks_each_listener(tmp_path: Path) -> None:
    """The real daemon: the namespace label only a unix caller may set tells them apart."""
    async with serving(tmp_path) as daemon, daemon.unix() as unix:
        token = (daemon.state / "token").read_text().strip()
        async with daemon.tcp(token) as tcp:
            body = {"name": "lab", "labels": {"cargohold.policy": "privileged"}}
            assert (await tcp.post("/namespaces", json=body)).status_code == 422
            assert (await unix.post("/namespaces", json=body)).status_code == 201


# --- --listen unix:// replaces only a stale socket ------------------------------------------


async def start(tmp_path: Path, sock: Path) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        *CARGOHOLD, "serve", "--root", str(tmp_path / "root"), "--state", str(tmp_path / "state"),
        "--listen", f"unix://{sock}", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    async with asyncio.timeout(30):
        output, _ = await process.communicate()
    assert process.returncode is not None
    return process.returncode, output.decode()


@pytest.mark.parametrize("kind", ["file", "directory", "symlink"])
async def test_listen_refuses_to_replace_what_is_not_a_socket(tmp_path: Path, kind: str) -> None:
    sock = tmp_path / "cargohold.sock"
    if kind == "file":
        sock.write_text("precious")
    elif kind == "directory":
        sock.mkdir()
        (sock / "inside").write_text("precious")
    else:
        (tmp_path / "target").write_text("precious")
        sock.symlink_to(tmp_path / "target")
    code, output = await start(tmp_path, sock)
    assert code == 1, output
    assert f"{sock} is a" in output and "replaces only a stale socket" in output
    if kind == "file":
        assert sock.read_text() == "precious"
    elif kind == "directory":
        assert (sock / "inside").read_text() == "precious"
    else:
        assert sock.is_symlink() and (tmp_path / "target").read_text() == "precious"


async def test_listen_refuses_a_socket_someone_answers_on(tmp_path: Path) -> None:
    sock = tmp_path / "cargohold.sock"
    with socket.socket(socket.AF_UNIX) as live:
        live.bind(str(sock))
        live.listen()
        code, output = await start(tmp_path, sock)
    assert code == 1 and "another daemon is serving" in output, output


async def test_listen_replaces_a_stale_socket(tmp_path: Path) -> None:
    sock = tmp_path / "state" / "cargohold.sock"
    sock.parent.mkdir()
    with socket.socket(socket.AF_UNIX) as stale:
        stale.bind(str(sock))  # bound, never listening, closed: what a killed daemon leaves
    assert stat.S_ISSOCK(sock.lstat().st_mode)
    async with serving(tmp_path, tcp=False) as daemon, daemon.unix() as client:
        assert (await client.get("/healthz")).status_code == 200


async def test_a_server_without_the_denial_extension_gets_a_1008_close_before_accept() -> None:
    """ASGI servers without the WebSocket Denial Response extension (wsproto-less setups,
    others) cannot send a 401: the refusal is a close before accept, code 1008."""
    sent: list[dict[str, object]] = []
    reached: list[str] = []

    async def app(scope: object, receive: object, send: object) -> None:
        reached.append("app")

    async def receive() -> dict[str, object]:
        return {"type": "websocket.connect"}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = {"type": "websocket", "path": "/attach", "headers": [], "extensions": {}, LISTENER_KEY: "tcp"}
    await TokenAuthMiddleware(app, TOKEN, public_paths=())(scope, receive, send)  # type: ignore[arg-type]
    assert sent == [{"type": "websocket.close", "code": 1008, "reason": "unauthenticated"}]
    assert reached == []
