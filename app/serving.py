"""How uvicorn serves each connection: uvicorn's httptools protocol plus three bounds.

uvicorn (0.54, httptools) bounds nothing before a request's headers are complete: its
keep-alive timeout is armed only once a response has been sent, and disarmed by the
next byte, so a client that connects and sends nothing, or its headers a byte a second,
holds the connection for as long as it likes; uvicorn has no header timeout, and
`h11_max_incomplete_event_size` applies to h11 only, while httptools buffers an
unfinished header without limit (the measurements: bench/README.md). And `limit_concurrency` answers its 503 in plain
text. So this protocol

- gives each request `header_timeout` seconds from its first byte (or from the
  connection, for the first request) to complete its headers, then answers 408 and
  closes; it is the slowloris bound Go's `ReadHeaderTimeout` and nginx's
  `client_header_timeout` are;
- closes with 431 once an unfinished request head exceeds `max_header_bytes` (plus at
  most one read, 256 KiB);
- answers `application/problem+json` 503 when connections or requests in flight reach
  `max_concurrency`, with the rule uvicorn's own `limit_concurrency` applies.

It also puts the uid of a unix-socket caller (SO_PEERCRED) in each request's scope
(`PEER_UID_KEY`), so per-client bounds can tell local users apart.

It hooks four methods of `HttpToolsProtocol` (`connection_made`, `data_received`,
`on_message_begin`, `on_headers_complete`) and one private one, `_start_asgi_task`
(where uvicorn starts a request's app); tests/api/test_serving.py checks they still
exist with the signatures used here, and fails the day uvicorn changes under it.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from http import HTTPStatus
from typing import Any, cast

from uvicorn._types import ASGI3Application, ASGIReceiveCallable, ASGISendCallable, Scope
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from .config import Settings

PROBLEM_MEDIA_TYPE = b"application/problem+json"
# The scope key holding a unix-socket caller's uid (absent over TCP).
PEER_UID_KEY = "cargohold.peer_uid"
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def _peer_uid(transport: asyncio.Transport) -> int | None:
    sock = transport.get_extra_info("socket")
    if sock is None or sock.family != socket.AF_UNIX:
        return None
    try:
        _, uid, _ = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    except OSError:
        return None
    return int(uid)


def _problem(status: int, kind: str, detail: str) -> bytes:
    return json.dumps({
        "type": f"urn:cargohold:problem:{kind}",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
    }).encode()


def _raw_response(status: int, body: bytes) -> bytes:
    """A whole HTTP/1.1 response that closes the connection (written before any app runs)."""
    return (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
        f"content-type: application/problem+json\r\ncontent-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    ).encode() + body


async def _overloaded(scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
    body = _problem(
        503, "unavailable", "the daemon is serving as many connections and requests as it allows "
        "(--max-concurrency); retry shortly",
    )
    await send({
        "type": "http.response.start",
        "status": 503,
        "headers": [
            (b"content-type", PROBLEM_MEDIA_TYPE), (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"), (b"retry-after", b"1"),
        ],
    })
    await send({"type": "http.response.body", "body": body, "more_body": False})


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header deadline, a header size cap and a
    problem+json concurrency cap. Subclasses made by `protocol_for` set the bounds."""

    header_timeout: float = 10.0
    max_header_bytes: int = 64 * 1024
    max_concurrency: int | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_deadline: asyncio.TimerHandle | None = None
        self._head_bytes = 0  # bytes received while the current request's head is incomplete
        self._head_started = False  # any byte of the current request seen
        self._peer_uid: int | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._peer_uid = _peer_uid(transport)
        self._arm(started=False)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._head_deadline is not None:
            self._head_bytes += len(data)
            self._head_started = True
        super().data_received(data)
        if self._head_deadline is not None and self._head_bytes > self.max_header_bytes:
            self._refuse(431, "too-large", f"request headers exceed {self.max_header_bytes} bytes")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._peer_uid is not None:
            cast(dict[str, Any], self.scope)[PEER_UID_KEY] = self._peer_uid
        if self._head_deadline is None:
            self._arm(started=True)

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        limit = self.max_concurrency
        # uvicorn's rule for `limit_concurrency`, which is left unset so that this one answers.
        if limit is not None and (len(self.connections) >= limit or len(self.tasks) >= limit):
            self.logger.warning("Exceeded concurrency limit.")
            app = _overloaded
        super()._start_asgi_task(cycle, app)

    def _arm(self, started: bool) -> None:
        self._disarm()
        self._head_bytes = 0
        self._head_started = started
        self._head_deadline = self.loop.call_later(self.header_timeout, self._head_timed_out)

    def _disarm(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_timed_out(self) -> None:
        self._head_deadline = None
        if not self._head_started:
            # Connected and sent nothing: no request to answer, only a socket to free.
            self.transport.close()
            return
        self._refuse(408, "timeout", f"request headers not complete within {self.header_timeout:g} seconds")

    def _refuse(self, status: int, kind: str, detail: str) -> None:
        self._disarm()
        if not self.transport.is_closing():
            self.logger.warning("Refused a request: %s", detail)
            self.transport.write(_raw_response(status, _problem(status, kind, detail)))
            self.transport.close()


def protocol_for(settings: Settings) -> type[BoundedHttpToolsProtocol]:
    """The protocol class for uvicorn's `Config(http=...)`, with `settings`' bounds."""
    return type(
        "CargoholdHttpProtocol",
        (BoundedHttpToolsProtocol,),
        {
            "header_timeout": settings.header_timeout,
            "max_header_bytes": settings.max_header_bytes,
            "max_concurrency": settings.max_concurrency,
        },
    )


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """What `uvicorn.Config` takes from `settings`: the bounded protocol (uvicorn's own
    `limit_concurrency` stays unset: the protocol applies it, answering problem+json)."""
    return {"http": protocol_for(settings), "limit_concurrency": None}
