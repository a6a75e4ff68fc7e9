"""Event topics and the in-memory fan-out bus.

Events are created by the store inside the transaction of the change they describe
(so an acknowledged change always has its event and a failed one never does) and are
handed to `EventBus.publish` only after that transaction commits, in id order.

The bus never blocks a publisher: each subscriber has a bounded queue. A subscriber
that falls behind is marked `lagging` and its queue dropped; the reader then catches
up from the store (which has every event) instead of the daemon's memory growing.
This module knows nothing of SQL or HTTP.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any

from .filters import FieldGetter, Filter
from .filters import parse as parse_filters
from .models import Event, EventPage
from .store.events import EventStore


class EventsLostError(Exception):
    """A stream cannot go on without a gap: the events after `since` up to `oldest_id - 1`
    were pruned from the store (retention) before they could be replayed."""

    def __init__(self, since: int, oldest_id: int) -> None:
        self.since = since
        self.oldest_id = oldest_id
        super().__init__(
            f"events {since + 1} to {oldest_id - 1} were pruned (retention) before this stream could "
            f"replay them; the oldest event kept is {oldest_id}. Read the current state again, then "
            f"stream with since={oldest_id - 1}, or without since for new events only"
        )


class Subscription:
    """One subscriber's bounded view of the live event flow."""

    def __init__(self, maxsize: int) -> None:
        self._queue: asyncio.Queue[Event] = asyncio.Queue(maxsize)
        self._wakeup = asyncio.Event()
        self.lagging = False

    def _offer(self, event: Event) -> None:
        if self.lagging:
            return
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            # Drop what is buffered: the reader will re-read from the store.
            self.lagging = True
            self._queue = asyncio.Queue(self._queue.maxsize)
        self._wakeup.set()

    async def next_batch(self) -> list[Event]:
        """Wait for live events and return them; [] means `lagging` was set."""
        while self._queue.empty() and not self.lagging:
            self._wakeup.clear()
            await self._wakeup.wait()
        batch: list[Event] = []
        while not self._queue.empty():
            batch.append(self._queue.get_nowait())
        return batch

    def resume(self) -> None:
        """Accept live events again after the reader caught up from the store."""
        self.lagging = False


class EventBus:
    """Fans committed events out to subscribers without ever waiting on one."""

    def __init__(self, queue_size: int, on_publish: Callable[[Event], None] | None = None) -> None:
        self._queue_size = queue_size
        self._subscribers: set[Subscription] = set()
        self._on_publish = on_publish

    def publish(self, events: Iterable[Event]) -> None:
        for event in events:
            if self._on_publish is not None:
                self._on_publish(event)
            for subscriber in self._subscribers:
                subscriber._offer(event)

    def subscribe(self) -> Subscription:
        subscription = Subscription(self._queue_size)
        self._subscribers.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscribers.discard(subscription)

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)


def event_field(event: Event) -> FieldGetter:
    """The filter adaptor for event envelopes: topic, namespace, id, event.<path>."""

    def field(path: Sequence[str]) -> str | None:
        if not path:
            return None
        head, rest = path[0], path[1:]
        if head in ("topic", "namespace") and not rest:
            return str(getattr(event, head))
        if head == "id" and not rest:
            return str(event.id)
        if head != "event":
            return None
        value: Any = event.event
        for key in rest:
            if not isinstance(value, dict) or key not in value:
                return None
            value = value[key]
        if isinstance(value, str):
            return value
        return json.dumps(value, separators=(",", ":"), sort_keys=True)

    return field


class EventService:
    """Reads events: pages from the store, and streams that replay then follow live."""

    # Events read from the store per query while replaying or paging.
    PAGE = 500

    def __init__(self, store: EventStore, bus: EventBus) -> None:
        self._store = store
        self._bus = bus

    async def history(self, filter_exprs: Sequence[str], since: int, limit: int) -> EventPage:
        """Up to `limit` matching events after `since`; `last_id` is where the scan stopped."""
        match = parse_filters(filter_exprs)
        found: list[Event] = []
        last_id = since
        while len(found) < limit:
            batch = await self._store.after(last_id, self.PAGE)
            last_id = batch[-1].id if batch else last_id
            for event in await match.select(batch, event_field):
                found.append(event)
                if len(found) == limit:
                    last_id = event.id
                    break
            if len(batch) < self.PAGE:
                break
        return EventPage(events=found, last_id=last_id)

    async def stream(self, filter_exprs: Sequence[str], since: int | None) -> AsyncIterator[Event]:
        """Every matching event after `since` (None: after the last one stored now), then live
        ones: in id order, none twice, none missing. The starting point is fixed before this
        returns, so an event committed once the caller has its stream is never skipped.
        Raises INVALID_ARGUMENT for a bad filter before anything is streamed; the stream
        raises EventsLostError (and ends) when events it should replay were pruned, whether
        asked for by `since` or missed while the subscriber lagged."""
        match = parse_filters(filter_exprs)
        start = await self._store.last_id() if since is None else since
        return self._follow(match, start)

    async def _follow(self, match: Filter, since: int) -> AsyncIterator[Event]:
        # Subscribe before reading the store, so nothing committed in between is missed;
        # ids already sent are skipped instead.
        subscription = self._bus.subscribe()
        try:
            last_id = since
            while True:
                async for stored in self._replay(last_id):
                    last_id = stored[-1].id
                    for event in await match.select(stored, event_field):
                        yield event
                while True:
                    batch = await subscription.next_batch()
                    if not batch:  # lagging: fall back to the store, then follow again
                        subscription.resume()
                        break
                    fresh = [event for event in batch if event.id > last_id]
                    if fresh:
                        last_id = fresh[-1].id
                    for event in await match.select(fresh, event_field):
                        yield event
        finally:
            self._bus.unsubscribe(subscription)

    async def _replay(self, since: int) -> AsyncIterator[list[Event]]:
        """Stored events after `since`, a page at a time (never an empty one). Raises
        EventsLostError when some were pruned: ids are contiguous (one writer; a rolled-back
        id is used again), so a first id past `since + 1` means the ones between are gone."""
        first = True
        while True:
            batch = await self._store.after(since, self.PAGE)
            if first and batch and batch[0].id > since + 1:
                raise EventsLostError(since, batch[0].id)
            first = False
            if batch:
                yield batch
            if len(batch) < self.PAGE:
                return
            since = batch[-1].id
