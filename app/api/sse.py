"""Server-sent event responses that end cleanly when the daemon shuts down, and the
per-client count of open streams.

sse-starlette notices uvicorn's shutdown and sets a `shutdown_event`; a stream that then
finishes within the grace period gets a proper end (the final chunk) instead of being
cut. `event_source` wires that up: the frames are read until the event is set.
`held_while_sent` releases a client's stream slot (`ClientStreams`) when its response
ends, however it ends. `progress_frames` turns an operation that reports progress through
a callback (a pull) into frames: each report, then `done` or `error`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from http import HTTPStatus
from typing import Any

import anyio
from pydantic import BaseModel
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from ..config import Settings
from ..errors import CargoholdError
from .problems import STATUS

log = logging.getLogger(__name__)

# What an operation reports as it goes: (event name, JSON data).
Report = Callable[[str, dict[str, Any]], None]

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


async def progress_frames(
    run: Callable[[Report], Coroutine[Any, Any, BaseModel]], what: str
) -> AsyncIterator[ServerSentEvent]:
    """`run(report)` as SSE frames: every report as an event of its name, then `done` with
    the result, or `error` with a problem+json body (its `status` what the plain call would
    answer). The operation runs as a task of its own, cancelled if the client goes (the
    generator is closed); `what` names it in the log."""
    queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
    running: asyncio.Task[BaseModel] = asyncio.create_task(
        run(lambda kind, data: queue.put_nowait((kind, data))), name=f"cargohold.{what}")
    try:
        while True:
            following = asyncio.ensure_future(queue.get())
            await asyncio.wait({following, running}, return_when=asyncio.FIRST_COMPLETED)
            if not following.done():
                following.cancel()
                break
            kind, data = following.result()
            yield ServerSentEvent(data=json.dumps(data), event=kind)
        while not queue.empty():
            kind, data = queue.get_nowait()
            yield ServerSentEvent(data=json.dumps(data), event=kind)
        try:
            result = running.result()
        except CargoholdError as error:
            yield _error_frame(STATUS[error.kind], error.detail, f"urn:cargohold:problem:{error.kind.value}")
            return
        except Exception:
            log.exception("%s failed", what)
            yield _error_frame(500, f"the {what} failed on an internal error; the daemon's log says more")
            return
        yield ServerSentEvent(data=result.model_dump_json(), event="done")
    finally:
        if not running.done():
            running.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.shield(asyncio.wait([running]))


def _error_frame(status: int, detail: str, kind: str = "about:blank") -> ServerSentEvent:
    problem = {"type": kind, "title": HTTPStatus(status).phrase, "status": status, "detail": detail}
    return ServerSentEvent(data=json.dumps(problem), event="error")
