"""Server-sent event responses that end cleanly when the daemon shuts down.

sse-starlette notices uvicorn's shutdown and sets a `shutdown_event`; a stream that then
finishes within the grace period gets a proper end (the final chunk) instead of being
cut. `event_source` wires that up: the frames are read until the event is set.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import anyio
from sse_starlette import EventSourceResponse, ServerSentEvent

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
