"""Pure ASGI middleware: bearer-token authentication on TCP, the request body limit, and
routing on raw path segments.

Both answer with problem+json themselves and never buffer a body.
"""

from __future__ import annotations

import hmac
from collections.abc import Collection
from urllib.parse import unquote

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import CargoholdError, ErrorKind
from .problems import problem_response


class TokenAuthMiddleware:
    """Require `Authorization: Bearer <token>` on requests that came over TCP.

    Unix-socket requests are trusted as Docker's socket is: its file mode is the gate.
    uvicorn reports a unix socket's `server` as (path, None): no port tells them apart.
    """

    def __init__(self, app: ASGIApp, token: str, public_paths: Collection[str]) -> None:
        self.app = app
        self._token = token.encode()
        self._public_paths = frozenset(public_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        server = scope.get("server")
        over_tcp = server is not None and server[1] is not None
        if scope["type"] != "http" or not over_tcp or scope["path"] in self._public_paths:
            await self.app(scope, receive, send)
            return
        supplied = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, credentials = supplied.partition(b" ")
        # The scheme is case-insensitive (RFC 9110 11.1); the token is compared in constant time.
        if scheme.lower() == b"bearer" and hmac.compare_digest(credentials.strip(), self._token):
            await self.app(scope, receive, send)
            return
        detail = (
            "wrong bearer token" if supplied else
            "this endpoint needs 'Authorization: Bearer <token>' over TCP; "
            "the token is in the daemon's --token-file (default: <state>/token)"
        )
        response = problem_response(
            401, detail, ErrorKind.UNAUTHENTICATED.value, headers={"WWW-Authenticate": "Bearer"}
        )
        await response(scope, receive, send)


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
