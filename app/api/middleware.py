"""Pure ASGI middleware: which listener a request came over, bearer-token authentication
(HTTP and WebSocket) off the unix socket, the request body limit, and routing on raw path
segments.

Those that refuse answer with problem+json themselves and never buffer a body.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Literal
from urllib.parse import unquote

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..bearer import K8S_TOKEN_SUBPROTOCOL, bearer_matches, subprotocol_matches
from ..errors import CargoholdError, ErrorKind
from .problems import problem_response

# The scope key `ListenerMark` sets: "unix" or "tcp", as the listener was bound.
LISTENER_KEY = "cargohold.listener"


def came_over_unix(scope: Scope) -> bool:
    """True when the request or WebSocket arrived on a unix-socket listener: a caller as
    trusted as root, since the socket's file mode is the gate (as Docker's socket).

    Told by how the listener was bound, not by what the server reports of its address:
    each listener's app is wrapped in a `ListenerMark` (cli.serve, tests' running_server).
    A scope without the mark (an in-process client, a server that did not mark) is not
    trusted."""
    return scope.get(LISTENER_KEY) == "unix"


class ListenerMark:
    """Marks each request and WebSocket with how the listener that took it was bound;
    one per listener (uvicorn serves each with its own `Server`)."""

    def __init__(self, app: ASGIApp, kind: Literal["unix", "tcp"]) -> None:
        self.app = app
        self.kind = kind

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            scope[LISTENER_KEY] = self.kind
        await self.app(scope, receive, send)


class TokenAuthMiddleware:
    """Require the bearer token on requests and WebSockets that did not come over a unix
    socket (`came_over_unix`), but on `public_paths` (one ending in `*`: every path it begins).

    HTTP: `Authorization: Bearer <token>`, else 401 problem+json. A WebSocket may also
    send it as the Kubernetes subprotocol (`K8S_TOKEN_SUBPROTOCOL`), which is then taken
    out of the offered subprotocols so the app never echoes it; a refused WebSocket is
    answered before it is accepted: the same 401 where the server has the WebSocket
    Denial Response extension (uvicorn has), else a close with 1008 (policy violation).
    """

    def __init__(self, app: ASGIApp, token: str, public_paths: Collection[str]) -> None:
        self.app = app
        self._token = token.encode()
        self._public_paths = frozenset(public_paths)
        self._public_prefixes = tuple(path.removesuffix("*") for path in public_paths if path.endswith("*"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket") or came_over_unix(scope) or scope["path"] in self._public_paths or (
            scope["path"].startswith(self._public_prefixes)
        ):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        supplied = headers.get("authorization", "")
        accepted = bearer_matches(supplied, self._token)
        tried = bool(supplied)
        if kind == "websocket":
            offered = [p.strip() for p in headers.get("sec-websocket-protocol", "").split(",") if p.strip()]
            in_subprotocol = [p for p in offered if p.startswith(K8S_TOKEN_SUBPROTOCOL)]
            if in_subprotocol:
                tried = True
                accepted = accepted or any(subprotocol_matches(p, self._token) for p in in_subprotocol)
                scope = _without_subprotocols(scope, in_subprotocol)
        if accepted:
            await self.app(scope, receive, send)
            return
        detail = (
            "wrong bearer token" if tried else
            "this endpoint needs 'Authorization: Bearer <token>' over TCP; "
            "the token is in the daemon's --token-file (default: <state>/token)"
        )
        response = problem_response(
            401, detail, ErrorKind.UNAUTHENTICATED.value, headers={"WWW-Authenticate": "Bearer"}
        )
        if kind == "websocket" and "websocket.http.response" not in scope.get("extensions", {}):
            await send({"type": "websocket.close", "code": 1008, "reason": "unauthenticated"})
            return
        await response(scope, receive, send)


def _without_subprotocols(scope: Scope, removed: list[str]) -> Scope:
    """`scope` with `removed` taken out of its subprotocols and its header."""
    kept = [p for p in scope.get("subprotocols", []) if p not in removed]
    headers = [(name, value) for name, value in scope["headers"] if name.lower() != b"sec-websocket-protocol"]
    if kept:
        headers.append((b"sec-websocket-protocol", ", ".join(kept).encode("latin-1")))
    return {**scope, "subprotocols": kept, "headers": headers}


class BodyLimitMiddleware:
    """Refuse request bodies larger than `max_bytes` with 413, by header or as they stream.
    Paths in `unlimited` stream their bodies and enforce their own limits."""

    def __init__(self, app: ASGIApp, max_bytes: int, unlimited: Collection[str] = ()) -> None:
        self.app = app
        self._max_bytes = max_bytes
        self._unlimited = frozenset(unlimited)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self._unlimited:
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self._max_bytes:
            await problem_response(413, self._detail(), ErrorKind.TOO_LARGE.value)(scope, receive, send)
            return
        received = 0
        exceeded = False
        answered = False

        async def limited_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self._max_bytes:
                    exceeded = True
                    # The route fails reading the body; whatever it then answers, the
                    # client gets our 413 instead (see guarded_send).
                    raise CargoholdError(ErrorKind.TOO_LARGE, self._detail())
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal answered
            if not exceeded:
                await send(message)
            elif not answered and message["type"] == "http.response.start":
                answered = True
                await problem_response(413, self._detail(), ErrorKind.TOO_LARGE.value)(scope, receive, send)

        await self.app(scope, limited_receive, guarded_send)

    def _detail(self) -> str:
        return f"request body is larger than the limit of {self._max_bytes} bytes"


class EncodedSlashMiddleware:
    """Keep an encoded slash (`%2F`) inside its path segment when routing.

    Starlette routes on the decoded path, so `/containers/..%2Fx` would become
    `/containers/../x` and match no route (a 404). Every path parameter here is an
    identifier, so the segment is kept whole (`..%2Fx`) and the identifier check
    answers 400 naming it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw_path: bytes = scope.get("raw_path") or b""
        if scope["type"] == "http" and b"%2f" in raw_path.lower():
            segments = raw_path.split(b"?", 1)[0].decode("latin-1").split("/")
            path = "/".join(unquote(segment).replace("/", "%2F") for segment in segments)
            scope = {**scope, "path": path}
        await self.app(scope, receive, send)
