"""The HTTP floor: uvicorn (httptools, as the daemon runs it) serving an ASGI app that
does nothing but answer 200 with a JSON body of the size asked for in the request's
`Body-Bytes` header (1,000 bytes without it). Whatever a workload costs against this
server is the cost of the client and of HTTP itself; the daemon's cost is what it takes
beyond that.

    python -m uvicorn bench.null_server:app --uds /path.sock --http httptools --lifespan off
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Message = MutableMapping[str, Any]

BODY_BYTES_HEADER = b"body-bytes"
DEFAULT_BODY_BYTES = 1000


@functools.cache
def response(size: int) -> tuple[list[tuple[bytes, bytes]], bytes]:
    body = b'{"padding":"' + b"x" * max(0, size - 14) + b'"}'
    return [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())], body


async def app(
    scope: Message, receive: Callable[[], Awaitable[Message]], send: Callable[[Message], Awaitable[None]]
) -> None:
    while (await receive()).get("more_body"):
        pass  # the request body is read, as the daemon reads it, and dropped
    size = next((int(value) for name, value in scope["headers"] if name == BODY_BYTES_HEADER), DEFAULT_BODY_BYTES)
    headers, body = response(size)
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
