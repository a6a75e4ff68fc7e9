"""Routes for /events: the SSE stream (replay, then live) and JSON history pages."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from http import HTTPStatus
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response
from sse_starlette import EventSourceResponse, ServerSentEvent

from ..errors import invalid
from ..events import EventsLostError
from ..models import Event, EventPage
from .deps import DaemonDep, EventFilters, Events, Streams, client_key
from .problems import problems
from .sse import event_source, held_while_sent

router = APIRouter(prefix="/events", tags=["events"])

MAX_EVENT_ID = 2**63 - 1  # SQLite's largest integer


def _event_id(value: str, name: str) -> int:
    if not value.isascii() or not value.isdigit() or int(value) > MAX_EVENT_ID:
        raise invalid(f"{name} must be an event id from 0 to {MAX_EVENT_ID}, not {value!r}")
    return int(value)


def _sse(events: AsyncIterator[Event]) -> AsyncIterator[ServerSentEvent]:
    async def frames() -> AsyncIterator[ServerSentEvent]:
        try:
            async for event in events:
                yield ServerSentEvent(data=event.model_dump_json(), event=event.topic, id=str(event.id))
        except EventsLostError as lost:
            yield events_lost_frame(lost)

    return frames()


def events_lost_frame(lost: EventsLostError) -> ServerSentEvent:
    """The stream's last frame when events it owed were pruned (DESIGN: "dropped with a
    final error event"): `event: error`, a problem+json body naming the oldest id kept.
    It has no `id:`, so a reconnecting EventSource resumes from where it was and is told
    again, rather than skipping the gap unseen."""
    problem = {
        "type": "urn:cargohold:problem:events-lost",
        "title": HTTPStatus.GONE.phrase,
        "status": HTTPStatus.GONE.value,
        "detail": str(lost),
        "oldest_id": lost.oldest_id,
    }
    return ServerSentEvent(data=json.dumps(problem), event="error")


@router.get(
    "",
    summary="Stream events (server-sent events)",
    description="Each event is `id: <id>`, `event: <topic>`, `data: <envelope>`. Resume with "
    "`Last-Event-ID` (or `since`): every later event is replayed once, in order, then live "
    "ones follow. Without either, only new events are sent. Idle streams get heartbeat comments. "
    "When events the stream owes were pruned (retention), it ends with `event: error`, a "
    "problem+json body whose `oldest_id` is the oldest event kept. A client may hold "
    "--max-streams-per-client streams (with log follows) at once: one more is a 429.",
    response_class=EventSourceResponse,
    responses={200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}}, **problems(400, 429)},
)
async def stream_events(
    events: Events,
    daemon: DaemonDep,
    streams: Streams,
    request: Request,
    filters: EventFilters = [],  # noqa: B006
    since: Annotated[str | None, Query(description="replay events after this id")] = None,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> Response:
    # A reconnecting browser sends Last-Event-ID for the URL it first used: it wins.
    if last_event_id is not None:
        start: int | None = _event_id(last_event_id, "Last-Event-ID")
    elif since is not None:
        start = _event_id(since, "since")
    else:
        start = None
    stream = await events.stream(filters, start)
    release = streams.acquire(client_key(request), "an event stream")
    return held_while_sent(event_source(_sse(stream), daemon.settings), release)


@router.get("/history", summary="Read stored events, a page at a time", responses=problems(400, 422))
async def list_events(
    events: Events,
    filters: EventFilters = [],  # noqa: B006
    since: Annotated[int, Query(ge=0, le=MAX_EVENT_ID, description="events after this id")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> EventPage:
    return await events.history(filters, since, limit)
