"""Routes for /events: the SSE stream (replay, then live) and JSON history pages."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Query
from sse_starlette import EventSourceResponse, ServerSentEvent

from ..errors import invalid
from ..models import Event, EventPage
from .deps import DaemonDep, Events
from .problems import problems
from .sse import event_source

router = APIRouter(prefix="/events", tags=["events"])

FILTER_DOC = (
    'containerd filter syntax over the envelope, e.g. `topic~="^/containers/"`, '
    "`namespace==default`, `event.id==web`. Repeat to OR."
)


MAX_EVENT_ID = 2**63 - 1  # SQLite's largest integer


def _event_id(value: str, name: str) -> int:
    if not value.isascii() or not value.isdigit() or int(value) > MAX_EVENT_ID:
        raise invalid(f"{name} must be an event id from 0 to {MAX_EVENT_ID}, not {value!r}")
    return int(value)


def _sse(events: AsyncIterator[Event]) -> AsyncIterator[ServerSentEvent]:
    async def frames() -> AsyncIterator[ServerSentEvent]:
        async for event in events:
            yield ServerSentEvent(data=event.model_dump_json(), event=event.topic, id=str(event.id))

    return frames()


@router.get(
    "",
    summary="Stream events (server-sent events)",
    description="Each event is `id: <id>`, `event: <topic>`, `data: <envelope>`. Resume with "
    "`Last-Event-ID` (or `since`): every later event is replayed once, in order, then live "
    "ones follow. Without either, only new events are sent. Idle streams get heartbeat comments.",
    response_class=EventSourceResponse,
    responses={200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}}, **problems(400)},
)
async def stream_events(
    events: Events,
    daemon: DaemonDep,
    filters: Annotated[list[str], Query(alias="filter", description=FILTER_DOC)] = [],  # noqa: B006
    since: Annotated[str | None, Query(description="replay events after this id")] = None,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> EventSourceResponse:
    # A reconnecting browser sends Last-Event-ID for the URL it first used: it wins.
    if last_event_id is not None:
        start: int | None = _event_id(last_event_id, "Last-Event-ID")
    elif since is not None:
        start = _event_id(since, "since")
    else:
        start = None
    stream = await events.stream(filters, start)
    return event_source(_sse(stream), daemon.settings)


@router.get("/history", summary="Read stored events, a page at a time", responses=problems(400, 422))
async def list_events(
    events: Events,
    filters: Annotated[list[str], Query(alias="filter", description=FILTER_DOC)] = [],  # noqa: B006
    since: Annotated[int, Query(ge=0, le=MAX_EVENT_ID, description="events after this id")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> EventPage:
    return await events.history(filters, since, limit)
