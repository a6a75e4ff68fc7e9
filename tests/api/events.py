"""What the event tests share: an SSE reader (frames, each wait bounded), the stored
history, and a container created in a namespace (the simplest change that publishes).
Not a test module: test modules import it, never each other."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.conftest import container_body

# --- SSE parsing -------------------------------------------------------------------


@dataclass
class Frame:
    """One server-sent event: the fields of one blank-line-terminated block."""

    id: str | None = None
    event: str | None = None
    data: str | None = None
    comments: list[str] = field(default_factory=list)

    @property
    def envelope(self) -> dict[str, Any]:
        assert self.data is not None, f"frame without data: {self}"
        decoded: dict[str, Any] = json.loads(self.data)
        return decoded


class SSEReader:
    """Reads frames off a streamed httpx response, one at a time, each wait bounded."""

    def __init__(self, response: httpx.Response) -> None:
        assert response.status_code == 200, response.status_code
        assert response.headers["content-type"].startswith("text/event-stream")
        self._lines = response.aiter_lines()

    async def frame(self) -> Frame | None:
        """The next frame (comment-only ones included); None at the end of the stream."""
        frame = Frame()
        empty = True
        while True:
            try:
                line = await anext(self._lines)
            except StopAsyncIteration:
                return None if empty else frame
            if line == "":
                if not empty:
                    return frame
                continue
            empty = False
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "":
                frame.comments.append(value)
            elif name == "id":
                frame.id = value
            elif name == "event":
                frame.event = value
            elif name == "data":
                frame.data = value if frame.data is None else f"{frame.data}\n{value}"

    async def events(self, count: int, within: float = 5.0) -> list[Frame]:
        """The next `count` event frames (heartbeats skipped); fails after `within` seconds."""
        found: list[Frame] = []
        async with asyncio.timeout(within):
            while len(found) < count:
                frame = await self.frame()
                assert frame is not None, f"stream ended after {len(found)} of {count} events"
                if frame.data is not None or frame.event is not None or frame.id is not None:
                    found.append(frame)
        return found


@asynccontextmanager
async def sse(
    client: httpx.AsyncClient,
    params: Any = None,
    headers: dict[str, str] | None = None,
    within: float = 5.0,
) -> AsyncIterator[SSEReader]:
    """GET /events as a stream; opening it is bounded by `within` seconds."""
    async with AsyncExitStack() as stack:
        async with asyncio.timeout(within):
            response = await stack.enter_async_context(client.stream("GET", "/events", params=params, headers=headers))
        yield SSEReader(response)


def check_frame(frame: Frame) -> dict[str, Any]:
    """A frame's `id:` and `event:` agree with its envelope; return the envelope."""
    envelope = frame.envelope
    assert set(envelope) == {"id", "timestamp", "namespace", "topic", "event"}
    assert frame.id == str(envelope["id"])
    assert frame.event == envelope["topic"]
    return envelope


async def history(client: httpx.AsyncClient, since: int = 0, **params: Any) -> list[dict[str, Any]]:
    """Every stored event after `since` (all pages)."""
    found: list[dict[str, Any]] = []
    while True:
        response = await client.get("/events/history", params={"since": since, "limit": 1000, **params})
        assert response.status_code == 200, response.text
        page = response.json()
        found.extend(page["events"])
        if page["last_id"] == since:
            return found
        since = page["last_id"]


async def create(client: httpx.AsyncClient, namespace: str, container_id: str, **fields: Any) -> None:
    response = await client.post(
        "/containers", json=container_body(container_id, **fields), headers={"Cargohold-Namespace": namespace}
    )
    assert response.status_code == 201, response.text


def assert_increasing(ids: Sequence[int]) -> None:
    assert all(a < b for a, b in zip(ids, ids[1:], strict=False)), ids
