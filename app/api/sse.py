"""Server-sent event responses that end cleanly when the daemon shuts down, and the
per-client count of open streams.

sse-starlette notices uvicorn's shutdown and sets a `shutdown_event`; a stream that then
finishes within the grace period gets a proper end (the final chunk) instead of being
cut. `event_source` wires that up: the frames are read until the event is set.
`held_while_sent` releases a client's stream slot (`ClientStreams`) when its response
ends, however it ends.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import anyio
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from ..config import Settings

SHUTDOWN_GRACE_SECONDS = 2.0


def event_source(frames: AsyncIterator[ServerSentEvent], settings: Settings) -> EventSourceResponse:
    shutdown = anyio.Event()
    return EventSourceResponse(
        _until(shutdown, frames),
        ping=settings.heartbeat_seconds,
        send_timeout=settings.sse_send_timeout,
        shutdown_event=shutdown,
        shutdown_grace_period=SHUTDOWN_GRACE_SECONDS,
    )


class _Held(Response):
    """`inner`, sent as it is; once it is done (sent, failed, or the client gone) its body
    iterator is closed, at once rather than whenever the garbage collector gets to it
    (its files and subscriptions with it), and `release` runs. Only the headers are
    shared, so FastAPI can add to them."""

    def __init__(self, inner: Response, release: Callable[[], None]) -> None:  # no super(): a wrapper
        self._inner = inner
        self._release = release
        self.status_code = inner.status_code
        self.raw_headers = inner.raw_headers
        self.background = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self._inner(scope, receive, send)
        finally:
            try:
                aclose = getattr(getattr(self._inner, "body_iterator", None), "aclose", None)
                if aclose is not None:
                    with anyio.CancelScope(shield=True):
                        await aclose()
            finally:
                self._release()


def held_while_sent(response: Response, release: Callable[[], None]) -> Response:
    return _Held(response, release)


async def _until(shutdown: anyio.Event, frames: AsyncIterator[ServerSentEvent]) -> AsyncIterator[ServerSentEvent]:
    """`frames`, ending as soon as `shutdown` is set (even while waiting for the next)."""
    stop = asyncio.ensure_future(shutdown.wait())
    following: asyncio.Future[ServerSentEvent] | None = None
    try:
        while True:
            following = asyncio.ensure_future(anext(frames))
            done, _ = await asyncio.wait({following, stop}, return_when=asyncio.FIRST_COMPLETED)
            if following not in done:
                return
            try:
                frame = following.result()
            except StopAsyncIteration:
                return
            yield frame
    finally:
        stop.cancel()
        if following is not None and not following.done():
            # Still reading the next frame (shutdown, or the client went away): stop it
            # before closing the generator it runs in.
            following.cancel()
            await asyncio.gather(following, return_exceptions=True)
        aclose = getattr(frames, "aclose", None)
        if aclose is not None:
            await aclose()
