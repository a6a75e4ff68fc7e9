"""`cargohold ui`: the web view (DESIGN "The web view") for a daemon the browser cannot reach
by itself, as one that listens only on its unix socket (the default).

A small proxy listens on 127.0.0.1 (a free port, or `--port`) with a token of its own, made
fresh for this run, and passes HTTP (server-sent events included: bodies are streamed, never
buffered) and the attach WebSocket on to the daemon where `--host` says it is, adding the
daemon's own access there (nothing over the unix socket; the bearer token over tcp://).
The browser is opened on the page with the fresh token in the URL's fragment, which browsers
never send to a server; the page keeps it in the tab's session storage. The proxy asks for
that token exactly as the daemon does over TCP: on everything but the page's files (`/ui`)
and `/healthz`, as `Authorization: Bearer` or, on a WebSocket, the Kubernetes subprotocol;
and it refuses (403) a browser page of another origin, then sends the request on without
its `Origin` (it is the client the daemon sees). Ctrl-C stops it.

So that the token does not show in the process list (a browser's command line is readable
by every user), the browser is given a file (0600, in a private temporary directory, removed
at the end) that redirects to the page, as Jupyter does.

Registered by one line at the end of app/client/commands.py. The proxy's server (uvicorn)
and WebSocket client are imported only when the command runs, so other commands start as
fast as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import webbrowser
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from pathlib import Path
from types import FrameType
from typing import Annotated, Any
from urllib.parse import unquote, urlsplit

import httpx
import typer

from ..bearer import K8S_TOKEN_SUBPROTOCOL, bearer_matches, subprotocol_matches
from .api import CONNECT_SECONDS, Client
from .commands import _state, app

# Receive, Send and Scope of ASGI, without importing starlette into the client.
Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# Headers that belong to one connection (RFC 9110 7.6.1), and those the proxy sets itself.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "transfer-encoding",
    "upgrade", "host", "authorization", "origin",
})
WS_HEADERS = frozenset({
    "sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions", "sec-websocket-protocol",
    "sec-websocket-accept",
})


class UiProxy:
    """The ASGI app: checks the proxy's token and the page's origin, then passes each request
    and WebSocket on to `client`'s daemon."""

    def __init__(self, client: Client, token: str) -> None:
        self._client = client
        self._token = token.encode()
        self._http: httpx.AsyncClient | None = None
        # Set when a stop is asked for: streams (events, log follows, terminals) end then,
        # as they would never end by themselves and the server waits for them.
        self.stopping = asyncio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._proxy_http(scope, receive, send)
        elif scope["type"] == "websocket":
            await self._proxy_websocket(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                endpoint = self._client.endpoint
                transport = httpx.AsyncHTTPTransport(uds=str(endpoint.socket)) if endpoint.socket else None
                self._http = httpx.AsyncClient(
                    base_url=endpoint.base_url, transport=transport, trust_env=False,
                    timeout=httpx.Timeout(None, connect=CONNECT_SECONDS),
                    verify=self._client.ssl_context if self._client.ssl_context is not None else True,
                )
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._http is not None:
                    await self._http.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # --- the checks ------------------------------------------------------------------------

    def _refusal(self, scope: Scope) -> tuple[int, str] | None:
        """(status, detail) when the request may not pass, else None."""
        headers = _headers(scope)
        origin = headers.get("origin")
        if origin is not None:
            parts = urlsplit(origin)
            host = headers.get("host", "")
            if parts.scheme != "http" or not host or parts.netloc.lower() != host.lower():
                return 403, f"a request from origin {origin!r} is refused: only the page this proxy serves may call it"
        path = scope["path"]
        # httpx removes dot segments before it sends: `/ui/../tasks` would pass as the page's
        # file and reach the daemon as `/tasks`. Browsers never send them.
        if any(segment in (".", "..") for segment in unquote(path).split("/")):
            return 400, f"a path with . or .. segments is refused: {path!r}"
        if path in ("/ui", "/healthz") or path.startswith("/ui/"):
            return None
        if bearer_matches(headers.get("authorization", ""), self._token):
            return None
        if scope["type"] == "websocket" and any(subprotocol_matches(p, self._token) for p in _subprotocols(scope)):
            return None
        tried = "authorization" in headers or any(p.startswith(K8S_TOKEN_SUBPROTOCOL) for p in _subprotocols(scope))
        return 401, ("wrong bearer token" if tried else
                     "this proxy needs 'Authorization: Bearer <token>': the token `cargohold ui` printed")

    def _upstream_headers(self, scope: Scope, *, websocket: bool) -> dict[str, str]:
        headers = {name: value for name, value in _headers(scope).items()
                   if name not in HOP_BY_HOP and not (websocket and name in WS_HEADERS)}
        if self._client.token:
            headers["authorization"] = f"Bearer {self._client.token}"
        return headers

    # --- HTTP --------------------------------------------------------------------------------

    async def _proxy_http(self, scope: Scope, receive: Receive, send: Send) -> None:
        refused = self._refusal(scope)
        if refused is not None:
            await _send_problem(send, *refused)
            return
        assert self._http is not None
        disconnected = asyncio.Event()

        async def body() -> AsyncIterator[bytes]:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    disconnected.set()
                    return
                yield message.get("body", b"")
                if not message.get("more_body", False):
                    return

        has_body = "content-length" in _headers(scope) or "transfer-encoding" in _headers(scope)
        request = self._http.build_request(scope["method"], _target(scope),
                                           headers=self._upstream_headers(scope, websocket=False),
                                           content=body() if has_body else None)
        try:
            response = await self._http.send(request, stream=True)
        except httpx.TransportError as error:
            await _send_problem(send, 502, f"the daemon at {self._client.endpoint.url} did not answer: {error}")
            return
        try:
            await send({"type": "http.response.start", "status": response.status_code, "headers": [
                (name.encode("latin-1"), value.encode("latin-1"))
                for name, value in response.headers.multi_items() if name.lower() not in HOP_BY_HOP
            ]})

            async def relay() -> None:
                async for chunk in response.aiter_raw():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})

            async def watch() -> None:
                # A stream (events, a log follow) ends when the browser goes: stop reading it.
                if not disconnected.is_set():
                    while (await receive())["type"] != "http.disconnect":
                        pass

            relaying, _, stopping = await _first_of(relay(), watch(), self.stopping.wait())
            if _ended(stopping) or (_ended(relaying) and relaying.exception() is None):
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await response.aclose()

    # --- WebSocket ---------------------------------------------------------------------------

    async def _proxy_websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        from websockets.asyncio.client import connect, unix_connect
        from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

        if (await receive())["type"] != "websocket.connect":
            return
        refused = self._refusal(scope)
        if refused is not None:
            await _deny(scope, send, *refused)
            return
        offered = [p for p in _subprotocols(scope) if not p.startswith(K8S_TOKEN_SUBPROTOCOL)]
        path = _target(scope)
        endpoint = self._client.endpoint
        options: dict[str, Any] = {
            "subprotocols": offered or None, "additional_headers": self._upstream_headers(scope, websocket=True),
            "max_size": None, "compression": None, "open_timeout": CONNECT_SECONDS,
        }
        try:
            if endpoint.socket is not None:
                upstream = await unix_connect(str(endpoint.socket), uri=f"ws://cargohold{path}", **options)
            else:
                upstream = await connect(f"{endpoint.ws_base_url}{path}", ssl=self._client.ssl_context, **options)
        except InvalidStatus as error:
            await _deny(scope, send, error.response.status_code, _detail(error.response.body))
            return
        except (OSError, WebSocketException, TimeoutError) as error:
            await _deny(scope, send, 502, f"the daemon at {endpoint.url} did not answer: {error}")
            return
        await send({"type": "websocket.accept", "subprotocol": upstream.subprotocol})

        async def downstream() -> None:  # the daemon's messages to the browser
            with contextlib.suppress(ConnectionClosed):
                async for message in upstream:
                    key = "bytes" if isinstance(message, bytes) else "text"
                    await send({"type": "websocket.send", key: message})

        async def upward() -> None:  # the browser's messages to the daemon
            while True:
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    return
                data = message.get("bytes")
                await upstream.send(data if data is not None else message.get("text", ""))

        try:
            going_down, _, stopping = await _first_of(downstream(), upward(), self.stopping.wait())
        finally:
            await upstream.close()
        if _ended(stopping):
            with contextlib.suppress(Exception):
                await send({"type": "websocket.close", "code": 1001, "reason": "cargohold ui is stopping"})
            return
        if _ended(going_down):  # the daemon closed: pass its close code and reason on
            code = upstream.close_code if upstream.close_code not in (None, 1005, 1006) else 1000
            with contextlib.suppress(Exception):
                await send({"type": "websocket.close", "code": code, "reason": upstream.close_reason or ""})


async def _first_of(*sides: Coroutine[Any, Any, Any]) -> list[asyncio.Future[Any]]:
    """Run `sides` until the first ends; the others are cancelled and awaited. Their futures,
    in order, for `_ended` to tell which ended by themselves."""
    futures: list[asyncio.Future[Any]] = [asyncio.ensure_future(side) for side in sides]
    try:
        await asyncio.wait(futures, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for future in futures:
            future.cancel()
        await asyncio.gather(*futures, return_exceptions=True)
    return futures


def _ended(future: asyncio.Future[Any]) -> bool:
    """Whether a side of `_first_of` ended by itself (every side is done afterwards: the
    others were cancelled)."""
    return not future.cancelled()


def _headers(scope: Scope) -> dict[str, str]:
    # Repeated headers are joined, as RFC 9110 5.3 allows for the ones passed on here.
    headers: dict[str, str] = {}
    for raw_name, raw_value in scope["headers"]:
        name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return headers


def _target(scope: Scope) -> str:
    """The request's path and query as the browser sent them (still percent-encoded)."""
    path: bytes = scope.get("raw_path") or scope["path"].encode()
    query: bytes = scope.get("query_string", b"")
    return path.decode("latin-1") + ("?" + query.decode("latin-1") if query else "")


def _subprotocols(scope: Scope) -> list[str]:
    return [str(p) for p in scope.get("subprotocols", [])]


def _problem(status: int, detail: str) -> bytes:
    kind = {400: "invalid-argument", 401: "unauthenticated", 403: "permission-denied"}.get(status)
    return json.dumps({
        "type": f"urn:cargohold:problem:{kind}" if kind else "about:blank",
        "title": {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 502: "Bad Gateway"}.get(status, "Error"),
        "status": status, "detail": detail,
    }).encode()


def _detail(body: bytes | bytearray | None) -> str:
    with contextlib.suppress(ValueError, AttributeError):
        return str(json.loads(body or b"").get("detail") or "refused")
    return "refused"


async def _send_problem(send: Send, status: int, detail: str) -> None:
    headers = [(b"content-type", b"application/problem+json")]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": _problem(status, detail)})


async def _deny(scope: Scope, send: Send, status: int, detail: str) -> None:
    """Refuse a WebSocket before accepting it: problem+json where the server can answer with
    a response (uvicorn can), else a close with 1008 (policy violation)."""
    if "websocket.http.response" in scope.get("extensions", {}):
        await send({"type": "websocket.http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/problem+json")]})
        await send({"type": "websocket.http.response.body", "body": _problem(status, detail)})
    else:
        await send({"type": "websocket.close", "code": 1008, "reason": detail[:120]})


def _redirect_file(directory: Path, url: str) -> Path:
    """A page that sends the browser on to `url`, readable by us alone."""
    path = directory / "cargohold-ui.html"
    quoted = html.escape(url, quote=True)
    path.write_text(f'<!doctype html><meta charset="utf-8"><meta http-equiv="refresh" content="0;url={quoted}">'
                    f'<title>Cargohold</title><p><a href="{quoted}">Open the Cargohold web view</a></p>\n')
    path.chmod(0o600)
    return path


async def _serve(proxy: UiProxy, listener: socket.socket) -> None:
    import uvicorn

    loop = asyncio.get_running_loop()

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            loop.call_soon_threadsafe(proxy.stopping.set)  # from a signal handler
            # uvicorn raises the signal it caught again once it has stopped: a SIGTERM ends
            # as a Ctrl-C does, with the temporary file removed and status 0.
            super().handle_exit(signal.SIGINT if sig == signal.SIGTERM else sig, frame)

    config = uvicorn.Config(proxy, log_level="warning", lifespan="on", timeout_graceful_shutdown=5)
    await Server(config).serve(sockets=[listener])


@app.command()
def ui(
    ctx: typer.Context,
    port: Annotated[int, typer.Option(help="the local port (default: a free one)", min=0, max=65535)] = 0,
    no_browser: Annotated[bool, typer.Option("--no-browser", help="print the address, do not open a browser")
                          ] = False,
) -> None:
    """Open the web view in a browser, through a proxy on 127.0.0.1 with a token of its own
    (the daemon may listen on its unix socket only). Ctrl-C stops it.

    Example: cargohold ui;  cargohold ui --port 8700 --no-browser
    """
    client = _state(ctx)
    client.request("GET", "/version")  # the daemon answers (else ClientError says where it looked)
    token = secrets.token_urlsafe(32)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(("127.0.0.1", port))
        listener.listen(128)  # connections wait in the backlog until the server takes them
    except OSError as error:
        listener.close()
        raise typer.BadParameter(f"cannot listen on 127.0.0.1:{port}: {error.strerror}", param_hint="--port"
                                 ) from None
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/ui/#token={token}"
    print(f"The web view of {client.endpoint.url}, until Ctrl-C:\n  {url}", flush=True)
    directory = Path(tempfile.mkdtemp(prefix="cargohold-ui-"))  # 0700
    try:
        if not no_browser:
            opened = webbrowser.open(_redirect_file(directory, url).as_uri())
            if not opened:
                print("No browser could be opened here: open the address above in one.", file=sys.stderr)
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_serve(UiProxy(client, token), listener))
    finally:
        listener.close()
        shutil.rmtree(directory, ignore_errors=True)
